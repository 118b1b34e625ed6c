//! Generative test: random journeys (extreme durations above all) through the
//! parser, the compiler and the runner against a loopback target, with a fixed
//! budget (cases and wall time). Every file in `tests/fuzz/corpus/` runs first;
//! a failing generated case is printed with its seed and YAML: add it there.
//! `FUZZ_SEED` / `FUZZ_CASES` change the seed and the count.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::target::Target;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const DURATIONS: &[&str] = &[
    "0s", "0ns", "1ns", "1ms", "50ms", "200ms", "1s", "2s", "5s", "10m", "1h", "100d", "584942417355y", "18446744073709551615s", "18446744073709551615ms", "999999999999999999ns", "1y 1y",
    "-1s", "1.5s", "",
];

fn dur(r: &mut Rng) -> String {
    format!("\"{}\"", r.pick(DURATIONS))
}

fn step(r: &mut Rng, name: &str, depth: u32) -> String {
    let timeout = if r.below(2) == 0 { format!(", timeout: {}", dur(r)) } else { String::new() };
    let assert = match r.below(4) {
        0 => format!(", assert: {{max_duration: {}, degraded_after: {}}}", dur(r), dur(r)),
        1 => ", assert: {status: 200, body_contains: status}".to_string(),
        _ => String::new(),
    };
    let kind = match r.below(if depth == 0 { 6 } else { 4 }) {
        0 => format!("http: {{url: \"${{env.FUZZ_TARGET}}/{}\"}}", r.pick(&["status/200", "status/500", "delay/30", "json", "redirect", "big/2000000"])),
        1 => "tcp: {address: \"${env.FUZZ_ADDR}\", send: \"GET / HTTP/1.0\\r\\n\\r\\n\", expect: HTTP}".to_string(),
        2 => format!("dns: {{name: localhost, resolver: \"127.0.0.1:{}\"}}", 1 + r.below(3)),
        3 => format!("callback: {{within: {}}}", dur(r)),
        _ => format!("eventually: {{within: {}, backoff: {}, max_backoff: {}, step: {{{}}}}}", dur(r), dur(r), dur(r), step(r, "inner", depth + 1)),
    };
    format!("name: {name}{timeout}{assert}, {kind}")
}

fn journey(r: &mut Rng, i: u64) -> String {
    let mut y = format!("journeys:\n  - name: j{i}\n    interval: {}\n", dur(r));
    if r.below(2) == 0 {
        y.push_str(&format!("    timeout: {}\n", dur(r)));
    }
    y.push_str("    steps:\n");
    for s in 0..1 + r.below(3) {
        y.push_str(&format!("      - {{{}}}\n", step(r, &format!("s{s}"), 0)));
    }
    if r.below(3) == 0 {
        y.push_str(&format!("    finally:\n      - {{{}}}\n", step(r, "cleanup", 0)));
    }
    y
}

/// Parses, compiles and (when valid) runs `yaml` once, within `budget`.
async fn exercise(yaml: &str, env: &Arc<vantage::steps::context::RunEnv>, budget: Duration) {
    let Ok(journeys) = vantage::config::validate::compile_files(&[("fuzz.yaml".into(), yaml.to_string())]) else { return };
    for j in &journeys {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let run = vantage::runner::run_journey(j, env.clone(), &cancel);
        // A run longer than the budget is cut by cancellation, as at shutdown; what matters is that nothing panics.
        let r = tokio::select! {
            r = run => r,
            _ = async { tokio::time::sleep(budget).await; stop.cancel(); std::future::pending::<()>().await } => None,
        };
        if let Some(r) = r {
            assert!(!r.journey.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_journeys_never_panic() {
    let t = Target::start().await;
    let url = t.url("");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = vantage::steps::callback::CallbackHub::start(([127, 0, 0, 1], 0).into(), stop.clone(), None).await.unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "fuzz");
    let overrides = [("FUZZ_TARGET".to_string(), url.trim_end_matches('/').to_string()), ("FUZZ_ADDR".to_string(), addr)].into_iter().collect();
    let env = Arc::new(vantage::daemon::build_env(&vantage::config::AgentConfig::default(), tracer, Some(hub), overrides).unwrap());
    let per_run = Duration::from_millis(400);

    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus in {} is empty", corpus.display());
    for f in &files {
        let yaml = std::fs::read_to_string(f).unwrap();
        let h = tokio::spawn({
            let env = env.clone();
            async move { exercise(&yaml, &env, per_run).await }
        });
        h.await.unwrap_or_else(|e| panic!("corpus file {} panicked: {e}", f.display()));
    }

    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_abcd_0001);
    let cases: u64 = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let wall = Instant::now();
    let mut rng = Rng(seed);
    for i in 0..cases {
        if wall.elapsed() > Duration::from_secs(40) {
            break; // fixed budget: the rest waits for the next seed
        }
        let yaml = journey(&mut rng, i);
        let h = tokio::spawn({
            let (env, yaml) = (env.clone(), yaml.clone());
            async move { exercise(&yaml, &env, per_run).await }
        });
        if let Err(e) = h.await {
            panic!("case {i} (FUZZ_SEED={seed}) panicked: {e}\nadd it to tests/fuzz/corpus/:\n{yaml}");
        }
    }
    stop.cancel();
}
