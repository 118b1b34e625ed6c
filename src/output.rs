//! Human and JSON renderings of run results (`once`, `demo`).

use std::fmt::Write;

use crate::vocab::{fmt_dur, Outcome, RunResult};

fn mark(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "PASS",
        Outcome::Degraded => "SLOW",
        Outcome::Failure => "FAIL",
    }
}

/// A run as text: one line for the run, one per step with its phases.
pub fn text(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {} in {} (run {}, trace {})", mark(r.outcome), r.journey, fmt_dur(r.duration), r.run_id, r.trace_id);
    for s in &r.steps {
        let phases: Vec<String> = s.phases.iter().map(|p| format!("{} {}", p.name, fmt_dur(p.duration))).collect();
        let extra = if phases.is_empty() { String::new() } else { format!("  [{}]", phases.join(", ")) };
        let attempts = s.attempts.map(|a| format!(" after {a} attempt{}", if a == 1 { "" } else { "s" })).unwrap_or_default();
        let cleanup = match (s.cleanup, s.skipped) {
            (true, true) => " (finally, skipped: nothing to clean up)",
            (true, false) => " (finally)",
            _ => "",
        };
        let _ = writeln!(out, "  {} {}{cleanup} {} {}{attempts}{extra}", mark(s.outcome), s.name, s.kind, fmt_dur(s.duration));
        if let Some(e) = &s.error {
            let _ = writeln!(out, "       {}: {e}", s.error_type.map(|t| t.as_str()).unwrap_or("error"));
        }
    }
    if let Some(m) = &r.message {
        let _ = writeln!(out, "  error.type={}: {m}", r.error_type.map(|t| t.as_str()).unwrap_or(""));
    }
    if let Some(c) = &r.cleanup_error {
        let _ = writeln!(out, "  cleanup failed: {c}");
    }
    out
}

/// A run as one JSON object (the `once --format json` contract).
pub fn json(r: &RunResult) -> serde_json::Value {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    serde_json::json!({
        "journey": r.journey,
        "run_id": r.run_id,
        "trace_id": r.trace_id,
        "outcome": r.outcome,
        "duration_ms": ms(r.duration),
        "error_type": r.error_type,
        "message": r.message,
        "cleanup_error": r.cleanup_error,
        "steps": r.steps.iter().map(|s| serde_json::json!({
            "name": s.name,
            "kind": s.kind,
            "outcome": s.outcome,
            "duration_ms": ms(s.duration),
            "error_type": s.error_type,
            "error": s.error,
            "cleanup": s.cleanup,
            "skipped": s.skipped,
            "attempts": s.attempts,
            "phases": s.phases.iter().map(|p| (p.name.to_string(), serde_json::json!(ms(p.duration)))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}
