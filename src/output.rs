//! Human, JSON and JUnit renderings of run results (`once`, `demo`).

use std::fmt::Write;

use crate::steps::compile::Journey;
use crate::vocab::{fmt_dur, Outcome, RunResult};

fn mark(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "PASS",
        Outcome::Degraded => "SLOW",
        Outcome::Failure => "FAIL",
    }
}

/// A run as text, 80 columns wide: see [`text_width`].
pub fn text(r: &RunResult) -> String {
    text_width(r, 80)
}

/// A run as text: one line for the run, one per step with its phases, each
/// folded to fit `width` columns (continuation lines indented under it).
pub fn text_width(r: &RunResult, width: usize) -> String {
    let mut out = String::new();
    let mut line = |s: &str, indent: usize, hang: usize| out.push_str(&fold_with(s, width, indent, hang, false));
    let retried = if r.retried() {
        format!(", attempt {} of the run: retried", r.attempts)
    } else {
        String::new()
    };
    line(&format!("{} {} in {} (run {}, trace {}{retried})", mark(r.outcome), r.journey, fmt_dur(r.duration), r.run_id, r.trace_id), 0, 5);
    for f in &r.failed_attempts {
        line(&format!("earlier {f}"), 2, 4);
    }
    for s in &r.steps {
        let phases: Vec<String> = s.phases.iter().map(|p| format!("{} {}", p.name, fmt_dur(p.duration))).collect();
        let extra = if phases.is_empty() { String::new() } else { format!("  [{}]", phases.join(", ")) };
        let attempts = s.attempts.map(|a| format!(" after {a} attempt{}", if a == 1 { "" } else { "s" })).unwrap_or_default();
        let cleanup = match (s.cleanup, s.skipped) {
            (true, true) => " (finally, skipped: nothing to clean up)",
            (true, false) => " (finally)",
            _ => "",
        };
        line(&format!("{} {}{cleanup} {} {}{attempts}{extra}", mark(s.outcome), s.name, s.kind, fmt_dur(s.duration)), 2, 5);
        if let Some(e) = &s.error {
            line(&format!("{}: {e}", s.error_type.map(|t| t.as_str()).unwrap_or("error")), 7, 2);
        }
    }
    if let Some(m) = &r.message {
        line(&format!("error.type={}: {m}", r.error_type.map(|t| t.as_str()).unwrap_or("")), 2, 2);
    }
    if let Some(c) = &r.cleanup_error {
        line(&format!("cleanup failed: {c}"), 2, 2);
    }
    out
}

/// Columns the terminal has (`COLUMNS`), 80 when unknown; never below 40.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse().ok()).unwrap_or(80).max(40)
}

/// `s` cut to `width` characters, an ellipsis marking the cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `s` folded at spaces into lines of at most `width` characters, each
/// indented by `indent`; a word longer than a line is cut with an ellipsis.
/// Empty for an empty `s`; every line ends with a newline.
pub fn fold(s: &str, width: usize, indent: usize) -> String {
    fold_with(s, width, indent, 0, true)
}

/// [`fold`], with continuation lines indented `hang` more than the first,
/// and (unless `cut`) words longer than a line broken, not cut: a message's
/// URL must stay whole.
fn fold_with(s: &str, width: usize, indent: usize, hang: usize, cut: bool) -> String {
    let mut out = String::new();
    let mut line = String::new();
    let room = |first: bool| width.saturating_sub(indent + if first { 0 } else { hang }).max(1);
    let emit = |line: &mut String, out: &mut String| {
        let pad = if out.is_empty() { indent } else { indent + hang };
        out.push_str(&format!("{}{line}\n", " ".repeat(pad)));
        line.clear();
    };
    for word in s.split_whitespace() {
        let mut word = word.to_string();
        loop {
            let room = room(out.is_empty());
            let len = line.chars().count();
            let wlen = word.chars().count();
            let sep = usize::from(len > 0);
            if wlen > room && !cut && len + sep < room {
                // Broken where the line ends, the rest carried on.
                let take = room - len - sep;
                if sep == 1 {
                    line.push(' ');
                }
                line.extend(word.chars().take(take));
                word = word.chars().skip(take).collect();
                emit(&mut line, &mut out);
                continue;
            }
            if len > 0 && len + 1 + wlen > room {
                emit(&mut line, &mut out);
                continue;
            }
            if wlen > room {
                word = fit(&word, room);
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
            break;
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut out);
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
        "attempts": r.attempts,
        "retried": r.retried(),
        "failed_attempts": r.failed_attempts,
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

/// `once --list`: one line per journey.
pub fn journey_list(journeys: &[Journey]) -> String {
    let mut out = String::new();
    for j in journeys {
        let _ = writeln!(out, "{}\tevery {}\t{} steps, {} finally\t{}", j.name, fmt_dur(j.interval), j.steps.len(), j.finally.len(), j.source);
    }
    out
}

/// Runs as JUnit XML (the de-facto schema CI systems read): a test suite per
/// run, a test case per step; a failed step carries its error type and message.
pub fn junit(runs: &[RunResult]) -> String {
    let failures = runs.iter().filter(|r| r.outcome == Outcome::Failure).count();
    let total: f64 = runs.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites name=\"vantage\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">", runs.len());
    for r in runs {
        let failed_steps = r.steps.iter().filter(|s| s.outcome == Outcome::Failure).count();
        let skipped = r.steps.iter().filter(|s| s.skipped).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed_steps}\" skipped=\"{skipped}\" time=\"{:.3}\">",
            xml(&r.journey),
            r.steps.len().max(1),
            r.duration.as_secs_f64()
        );
        let _ = writeln!(out, "    <properties><property name=\"run_id\" value=\"{}\"/><property name=\"trace_id\" value=\"{}\"/></properties>", xml(&r.run_id), xml(&r.trace_id));
        if r.steps.is_empty() {
            // A run that failed before any step (journey variables) is still one failed case.
            let _ = writeln!(out, "    <testcase classname=\"{0}\" name=\"{0}\" time=\"{1:.3}\">", xml(&r.journey), r.duration.as_secs_f64());
            if let Some(m) = &r.message {
                let _ = writeln!(out, "      <failure type=\"{}\" message=\"{}\"/>", r.error_type.map(|t| t.as_str()).unwrap_or(""), xml(m));
            }
            out.push_str("    </testcase>\n");
        }
        for s in &r.steps {
            let name = if s.cleanup { format!("{} (finally)", s.name) } else { s.name.clone() };
            let _ = write!(out, "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"", xml(&r.journey), xml(&name), s.duration.as_secs_f64());
            if s.outcome == Outcome::Failure {
                let msg = s.error.as_deref().unwrap_or("failed");
                let _ = writeln!(out, ">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>", s.error_type.map(|t| t.as_str()).unwrap_or(""), xml(msg), xml(msg));
            } else if s.skipped {
                out.push_str(">\n      <skipped/>\n    </testcase>\n");
            } else {
                out.push_str("/>\n");
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 cannot carry.
fn xml(s: &str) -> String {
    let carried: String = s.chars().filter(|&c| matches!(c, '\t' | '\n' | '\r') || !((c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}')).collect();
    crate::vocab::escape_markup(&carried)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{fit, fold, junit, text};
    use crate::vocab::{ErrorType, Outcome, PhaseRecording, RunResult, StepResult};

    fn step(name: &str, outcome: Outcome, error: Option<&str>) -> StepResult {
        StepResult {
            name: name.into(),
            kind: "http",
            phase_recording: PhaseRecording::None,
            outcome,
            duration: Duration::from_millis(1500),
            error_type: error.map(|_| ErrorType::HttpStatus),
            error: error.map(String::from),
            phases: Vec::new(),
            cert_remaining_secs: None,
            attempts: None,
            cleanup: false,
            skipped: false,
            started: SystemTime::now(),
        }
    }

    #[test]
    fn fit_and_fold_keep_within_the_width() {
        assert_eq!(fit("incident-lifecycle", 24), "incident-lifecycle");
        assert_eq!(fit("a-very-long-journey-name-indeed", 10), "a-very-lo…");
        let folded = fold("form 12ms · login 30ms · session 4ms · logout 3ms", 24, 4);
        assert_eq!(folded, "    form 12ms · login\n    30ms · session 4ms ·\n    logout 3ms\n");
        assert!(fold("", 80, 4).is_empty());
        assert_eq!(fold(&"x".repeat(30), 20, 4), format!("    {}…\n", "x".repeat(15)));
    }

    #[test]
    fn a_run_as_text_fits_80_columns_with_long_step_names_and_messages() {
        let long_name = "submit-the-lead-form-with-every-optional-field-filled-and-wait-for-the-confirmation";
        let message = "expected status 200, got 500 from POST https://shop.example.test/api/v2/checkout/sessions/0190f0e2-8d4b-7c3a-9e1f-5a6b7c8d9e0f/confirm?with=details after 3 redirects";
        let run = RunResult {
            journey: "checkout".into(),
            run_id: "0190f0e2-8d4b-7c3a-9e1f-5a6b7c8d9e0f".into(),
            outcome: Outcome::Failure,
            duration: Duration::from_secs(2),
            error_type: Some(ErrorType::HttpStatus),
            message: Some(format!("step `{long_name}`: {message}")),
            steps: vec![step("page", Outcome::Success, None), step(long_name, Outcome::Failure, Some(message))],
            cleanup_error: None,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            started: SystemTime::now(),
            attempts: 1,
            failed_attempts: Vec::new(),
        };
        let t = text(&run);
        for l in t.lines() {
            assert!(l.chars().count() <= 80, "{} columns: {l}\n{t}", l.chars().count());
        }
        assert!(t.starts_with("FAIL checkout in 2.00s (run 0190f0e2-8d4b-7c3a-9e1f-5a6b7c8d9e0f, trace\n     4bf92f3577b34da6a3ce929d0e0e4736)\n"), "{t}");
        assert!(t.contains(&format!("\n  FAIL {}\n       {} http 1.50s\n", &long_name[..73], &long_name[73..])), "a name longer than a line is broken, not cut:\n{t}");
        // Nothing is lost: a URL broken over lines is whole again once they are joined.
        assert!(t.lines().map(str::trim).collect::<String>().contains("https://shop.example.test/api/v2/checkout/sessions/0190f0e2-8d4b-7c3a-9e1f-5a6b7c8d9e0f/confirm?with=details"), "{t}");
    }

    #[test]
    fn junit_has_a_suite_per_run_a_case_per_step_and_escaped_failures() {
        let run = RunResult {
            journey: "login <eu>".into(),
            run_id: "r1".into(),
            outcome: Outcome::Failure,
            duration: Duration::from_secs(2),
            error_type: Some(ErrorType::HttpStatus),
            message: Some("step `post`: expected status 200, got 500".into()),
            steps: vec![step("page", Outcome::Success, None), step("post", Outcome::Failure, Some("expected status 200, got 500 & \"oops\"\u{1b}[31m"))],
            cleanup_error: None,
            trace_id: "t1".into(),
            started: SystemTime::now(),
            attempts: 1,
            failed_attempts: Vec::new(),
        };
        let x = junit(&[run]);
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"vantage\" tests=\"1\" failures=\"1\" time=\"2.000\">"), "{x}");
        assert!(x.contains("<testsuite name=\"login &lt;eu&gt;\" tests=\"2\" failures=\"1\" skipped=\"0\" time=\"2.000\">"), "{x}");
        assert!(x.contains("<testcase classname=\"login &lt;eu&gt;\" name=\"page\" time=\"1.500\"/>"), "{x}");
        // The escape character of a terminal colour code cannot appear in XML 1.0.
        assert!(x.contains("<failure type=\"http_status\" message=\"expected status 200, got 500 &amp; &quot;oops&quot;[31m\">"), "{x}");
        assert!(!x.contains('\u{1b}'));
        assert_eq!(x.matches("<testcase").count(), 2);
        assert!(x.trim_end().ends_with("</testsuites>"));
    }
}
