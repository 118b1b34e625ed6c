//! Memory of the status page's run history at its bound: J journeys × R kept
//! runs of S steps each (default 5), 5% failures (which keep their message
//! and steps). Runs are recorded as the agent records them, one round across
//! every journey at a time, so the allocator's pattern is the agent's.
//! Prints the process PSS (from /proc/self/smaps_rollup) before and after.
//!
//! cargo run --release --example status_history_mem -- 1000 500 5

use std::time::{Duration, SystemTime};

use vantage::browser::procs::pss_kb;
use vantage::runner::result::{ErrorType, Outcome, Phase, RunResult, StepResult};
use vantage::statuspage::history::History;

fn result(n: u64, steps: u64) -> RunResult {
    let failed = n.is_multiple_of(20);
    let started = SystemTime::now();
    let steps = (0..steps)
        .map(|i| StepResult {
            name: format!("step number {i}"),
            kind: "http",
            phase_recording: Default::default(),
            outcome: if failed && i == steps - 1 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            duration: Duration::from_millis(20 + i),
            error_type: (failed && i == steps - 1).then_some(ErrorType::HttpStatus),
            error: (failed && i == steps - 1).then(|| {
                "expected status 200, got 503 (body: {\"error\":\"upstream unavailable\"})".into()
            }),
            phases: ["dns", "connect", "tls", "ttfb", "transfer"]
                .iter()
                .map(|p| Phase {
                    name: p,
                    duration: Duration::from_millis(3),
                })
                .collect(),
            cert_remaining_secs: None,
            attempts: None,
            cleanup: false,
            skipped: false,
            started,
        })
        .collect();
    RunResult {
        journey: "j".into(),
        run_id: format!("{:032x}", n + 1),
        outcome: if failed { Outcome::Failure } else { Outcome::Success },
        duration: Duration::from_millis(120),
        error_type: failed.then_some(ErrorType::HttpStatus),
        message: failed.then(|| "step `step number 4`: expected status 200, got 503 (body: {\"error\":\"upstream unavailable\"})".into()),
        steps,
        cleanup_error: None,
        // As the agent traces a first attempt: under its run id.
        trace_id: format!("{:032x}", n + 1),
        started,
        attempts: 1,
        failed_attempts: Vec::new(),
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: JOURNEYS RUNS [STEPS]"))
        .collect();
    let (journeys, runs, steps) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(500),
        args.get(2).copied().unwrap_or(5).max(1),
    );
    let me = std::process::id();
    // Prepare the inputs first so only the history's own memory is measured.
    let samples: Vec<RunResult> = (0..runs).map(|n| result(n, steps)).collect();
    let before = pss_kb(me);
    let mut all: Vec<History> = (0..journeys).map(|_| History::new(runs as usize)).collect();
    for r in &samples {
        for h in &mut all {
            h.push(r);
        }
    }
    let after = pss_kb(me);
    let kept: usize = all.iter().map(|h| h.runs().len()).sum();
    let per_run = (after.saturating_sub(before) as f64 * 1024.0) / kept as f64;
    println!("journeys {journeys}, runs kept per journey {runs}, steps per run {steps}, failures 5%");
    println!(
        "PSS before {:.1} MB, after {:.1} MB, history {:.1} MB, {per_run:.0} bytes per kept run",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0
    );
}
