//! Browser-step benchmark: runs a login → timeline journey N times against a
//! loopback test server with real headless Chromium, at browser concurrency
//! 1 and 2, and prints journey wall time (median, p95), session start time
//! (median) and the peak memory of agent + chromedriver + Chromium as the sum
//! of PSS (/proc/PID/smaps_rollup) over this process tree.
//!
//!     cargo run --release --example browser_bench -- [RUNS]   (default 40)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;

use vantage::browser::procs;
use vantage::config::AgentConfig;
use vantage::runner::result::Outcome;

const LOGIN: &str = r#"<!doctype html><title>Sign in</title><form method="post" action="/login">
<input id="username" name="username"><input id="password" name="password" type="password">
<button id="login-submit" type="submit">Sign in</button></form>"#;

const TIMELINE: &str = r#"<!doctype html><title>Incident timeline</title><h1>Timeline</h1>
<ul id="timeline" elementtiming="timeline"></ul><script>
fetch('/api/incidents').then(r => r.json()).then(list => {
  const ul = document.getElementById('timeline');
  for (const i of list) { const li = document.createElement('li'); li.dataset.incidentId = i.id; li.textContent = i.title; ul.appendChild(li); }
  performance.mark('timeline-rendered');
});
</script>"#;

const PROBE: &str = r##"
journeys:
  - name: timeline
    interval: 60s
    timeout: 30s
    vars: { base: "BASE" }
    steps:
      - name: find incident
        http: { url: "${base}/api/incident" }
        extract: { incident_id: { json: "$.id" } }
      - name: open login
        browser: { navigate: "${base}/login" }
      - name: user
        browser: { fill: { selector: "#username", text: "oncall@demo.test" } }
      - name: password
        browser: { fill: { selector: "#password", text: "not-a-secret" } }
      - name: submit
        browser: { click: "#login-submit" }
      - name: incident shown
        browser: { wait_for: { selector: "li[data-incident-id='${incident_id}']", within: 10s } }
      - name: render time
        browser: { eval: "return performance.getEntriesByName('timeline-rendered')[0]?.startTime" }
        extract: { render_ms: { json: "$" } }
"##;

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sum of PSS (kB) of this process and every descendant.
fn tree_pss_kb() -> u64 {
    let me = std::process::id();
    procs::pss_kb(me) + procs::descendants(me).into_iter().map(procs::pss_kb).sum::<u64>()
}

async fn bench(base: &str, runs: usize, concurrency: usize) {
    let mut agent = AgentConfig::default();
    agent.browser.max_concurrent = concurrency;
    agent.artifacts_dir = Some(std::env::temp_dir().join("vantage-bench-artifacts"));
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("bench");
    let env = Arc::new(vantage::daemon::build_env(&agent, tracer, None, HashMap::new()).expect("env"));
    let yaml = PROBE.replace("BASE", base);
    let journeys = Arc::new(vantage::config::validate::compile_files(&[(PathBuf::from("bench.yaml"), yaml)]).expect("probe compiles"));

    // Warm-up run (starts chromedriver; not counted).
    let r = vantage::runner::run_journey(&journeys[0], env.clone(), &CancellationToken::new()).await.unwrap();
    assert_eq!(r.outcome, Outcome::Success, "{}", vantage::output::text(&r));

    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(tree_pss_kb(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (env, journeys) = (env.clone(), journeys.clone());
        let n = runs / concurrency + usize::from(w < runs % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = vantage::runner::run_journey(&journeys[0], env.clone(), &CancellationToken::new()).await.unwrap();
                let session = r.steps.iter().flat_map(|s| &s.phases).find(|p| p.name == "session_start").map(|p| p.duration.as_secs_f64());
                out.push((r.outcome, r.duration.as_secs_f64(), session, vantage::output::text(&r)));
            }
            out
        }));
    }
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let total = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    env.shutdown().await;

    let failed: Vec<_> = results.iter().filter(|r| r.0 != Outcome::Success).collect();
    if let Some(f) = failed.first() {
        eprintln!("{} failed runs; first:\n{}", failed.len(), f.3);
    }
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        if let Some(slowest) = results.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            eprintln!("slowest run:\n{}", slowest.3);
        }
    }
    let mut wall: Vec<f64> = results.iter().map(|r| r.1).collect();
    wall.sort_by(f64::total_cmp);
    let mut sess: Vec<f64> = results.iter().filter_map(|r| r.2).collect();
    sess.sort_by(f64::total_cmp);
    println!(
        "concurrency {concurrency}: {runs} runs in {:.1}s ({} failed) | journey median {:.0} ms, p95 {:.0} ms | session start median {:.0} ms | peak PSS (agent+chromedriver+chromium) {:.0} MB",
        total.as_secs_f64(),
        failed.len(),
        pct(&wall, 0.5) * 1000.0,
        pct(&wall, 0.95) * 1000.0,
        pct(&sess, 0.5) * 1000.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
    );
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    if let Some(m) = vantage::browser::missing_binaries("/usr/bin/chromedriver".as_ref(), "/usr/bin/chromium".as_ref()) {
        eprintln!("{m}");
        std::process::exit(2);
    }
    let app = Router::new()
        .route("/login", get(|| async { Html(LOGIN) }))
        .route("/login", post(|| async { Redirect::to("/incidents/timeline") }))
        .route("/incidents/timeline", get(|| async { Html(TIMELINE) }))
        .route("/api/incidents", get(|| async { Json(serde_json::json!([{ "id": "inc-1", "title": "Checkout latency" }])) }))
        .route("/api/incident", get(|| async { Json(serde_json::json!({ "id": "inc-1" })) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    println!("browser_bench: {runs} runs per concurrency level, {} CPUs", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    for c in [1, 2] {
        bench(&base, runs, c).await;
    }
}
