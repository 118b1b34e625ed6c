//! Generative test: seeded random journeys through the real parser, the
//! compiler/validation and the runner against loopback servers (HTTP target,
//! the agent's callback listener), with extreme durations, nested `eventually`,
//! `finally`, templates (built-ins, vars, filters, unknown names), retries,
//! unicode and terminal escapes. Fixed budget: at most `FUZZ_CASES` (default
//! 160, at most 256) cases and 60 s. Every file in `tests/fuzz/corpus/` is
//! replayed first; a failing generated case is printed with its seed and YAML
//! to add there.
//!
//! A panic anywhere in the process counts, even one the runner turns into an
//! `internal` failure, because a panic hook records every one. The test also
//! fails when too few generated cases get past `check` to reach the runner, so
//! it cannot silently test only the validator.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Mostly valid durations, the edges of what `check` accepts, and garbage.
const SHORT: &[&str] = &["1ns", "1ms", "20ms", "50ms", "100ms", "200ms", "300ms"];
const EXTREME: &[&str] = &[
    "1h",
    "1d",
    "100d",
    "365d",
    "365d 1ns",
    "8760h",
    "31536000s",
    "31536000000ms",
    "300000000000y",
    "584942417355y",
    "18446744073709551615s",
    "18446744073709551615ns",
    "999999999999999999ns",
    "1y 1y",
    "-1s",
    "1.5s",
    "",
    " ",
    "NaN",
    "1e400s",
    "0x10s",
];

fn dur(r: &mut Rng) -> String {
    let d = if r.chance(92) { r.pick(SHORT) } else { r.pick(EXTREME) };
    format!("\"{d}\"")
}

/// Two durations, usually in the order `check` wants (first shorter).
fn ordered(r: &mut Rng) -> (String, String) {
    let (a, b) = (dur(r), dur(r));
    if r.chance(15) {
        return (a, b);
    }
    let pos = |d: &str| SHORT.iter().position(|s| format!("\"{s}\"") == d);
    match (pos(&a), pos(&b)) {
        (Some(x), Some(y)) if x > y => (b, a),
        (Some(x), Some(y)) if x == y => ("\"1ns\"".into(), a),
        _ => (a, b),
    }
}

/// Text with templates, unicode, escapes and long runs (cut points in the middle of characters).
fn text(r: &mut Rng) -> String {
    let parts = [
        "${run.id}",
        "${uuid}",
        "${now.unix}",
        "${now}",
        "${run.callback_token}",
        "${word}",
        "${word | urlencode}",
        "$${literal}",
        "ünïcødé ✓",
        "\\u001b[31mred\\u001b]0;title\\u0007",
        "\\r\\nX-Injected: 1",
        "日本語テキスト",
        "🦀🦀🦀",
        "%00%ff",
        "a",
    ];
    // Names `check` must reject, now and then.
    let unknown = ["${nope}", "${run.nope}", "${word | nofilter}", "${env.FUZZ_NOPE}"];
    let mut s = String::new();
    for _ in 0..1 + r.below(4) {
        let p = if r.chance(3) { r.pick(&unknown) } else { r.pick(&parts) };
        let times = if r.chance(30) { 40 + r.below(120) } else { 1 };
        for _ in 0..times {
            s.push_str(p);
        }
    }
    s
}

fn http(r: &mut Rng) -> String {
    match r.below(7) {
        0 => format!("http: {{url: \"${{env.FUZZ_TARGET}}/status/{}\"}}", r.pick(&["200", "500", "404", "204"])),
        1 => format!("http: {{url: \"${{env.FUZZ_TARGET}}/delay/{}\"}}", r.pick(&["0", "30", "150", "5000"])),
        2 => format!("http: {{url: \"${{env.FUZZ_TARGET}}/query?q={}\"}}", text(r)),
        // A body that fails its assertion is excerpted into the message: cut points in long multi-byte text.
        3 => format!("http: {{method: POST, url: \"${{env.FUZZ_TARGET}}/echo\", body: \"{}\"}}, assert: {{body_contains: never-there}}", text(r)),
        4 => format!("http: {{url: \"${{env.FUZZ_TARGET}}/big/{}\", max_body: {}}}", r.pick(&["0", "10", "70000", "2000000"]), r.pick(&["1", "1024", "1MiB"])),
        5 => "http: {url: \"${env.FUZZ_TARGET}/json\"}, extract: {tok: {json: \"$.token\"}}".to_string(),
        _ => "http: {url: \"${env.FUZZ_TARGET}/redirect\"}".to_string(),
    }
}

fn assert_part(r: &mut Rng) -> String {
    match r.below(5) {
        0 => {
            let (degraded, max) = ordered(r);
            format!(", assert: {{max_duration: {max}, degraded_after: {degraded}}}")
        }
        1 => format!(", assert: {{status: 200, body_contains: \"{}\"}}", text(r)),
        2 => ", assert: {status: 200}".to_string(),
        _ => String::new(),
    }
}

fn step(r: &mut Rng, name: &str, depth: u32) -> String {
    let timeout = if r.chance(40) { format!(", timeout: {}", dur(r)) } else { String::new() };
    let kinds = if depth >= 2 { 4 } else { 6 };
    let kind = match r.below(kinds) {
        0 | 1 => {
            let h = http(r);
            let a = if h.contains("assert:") { String::new() } else { assert_part(r) };
            format!("{h}{a}")
        }
        2 => format!("tcp: {{address: \"${{env.FUZZ_ADDR}}\", send: \"{}\", expect: \"{}\"}}", r.pick(&["GET / HTTP/1.0\\r\\n\\r\\n", ""]), r.pick(&["HTTP", "never-there", "ü"])),
        3 => {
            let token = match r.below(4) {
                0 => ", token: \"\"".to_string(),
                1 => format!(", token: \"{}\"", text(r)),
                _ => String::new(),
            };
            format!("callback: {{within: {}{token}}}", dur(r))
        }
        4 => format!("dns: {{name: localhost, resolver: \"127.0.0.1:{}\"}}", 1 + r.below(3)),
        _ => {
            let (backoff, max_backoff) = ordered(r);
            format!("eventually: {{within: {}, backoff: {backoff}, max_backoff: {max_backoff}, step: {{{}}}}}", dur(r), step(r, &format!("{name}-inner"), depth + 1))
        }
    };
    format!("name: {name}{timeout}, {kind}")
}

fn journey(r: &mut Rng, i: u64) -> String {
    let interval = if r.chance(80) { "\"1h\"".to_string() } else { dur(r) };
    let mut y = format!("journeys:\n  - name: j{i}\n    interval: {interval}\n");
    if r.chance(50) {
        y.push_str(&format!("    timeout: {}\n", dur(r)));
    }
    if r.chance(30) {
        y.push_str(&format!("    retries: {{attempts: {}, delay: {}}}\n", r.pick(&["0", "1", "2", "3", "10", "11", "4294967296"]), dur(r)));
    }
    if r.chance(95) {
        y.push_str(&format!("    vars: {{word: \"{}\"}}\n", text(r).replace("${word}", "w").replace("${word | urlencode}", "w").replace("${word | nofilter}", "w")));
    }
    y.push_str("    steps:\n");
    for s in 0..1 + r.below(3) {
        y.push_str(&format!("      - {{{}}}\n", step(r, &format!("s{s}"), 0)));
    }
    if r.chance(40) {
        y.push_str("    finally:\n");
        for s in 0..1 + r.below(2) {
            y.push_str(&format!("      - {{{}}}\n", step(r, &format!("cleanup{s}"), 0)));
        }
    }
    y
}

/// Every panic in the process, whoever catches it afterwards.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Counts {
    compiled: AtomicU64,
    rejected: AtomicU64,
    ran: AtomicU64,
}

/// Parses, compiles and (when valid) runs `yaml` once, cut off after `budget`.
async fn exercise(yaml: &str, env: &Arc<vantage::steps::context::RunEnv>, budget: Duration, counts: &Counts) {
    let journeys = match vantage::config::validate::compile_files(&[("fuzz.yaml".into(), yaml.to_string())]) {
        Ok(j) => j,
        Err(diags) => {
            assert!(!diags.is_empty(), "rejected without saying why");
            if std::env::var_os("FUZZ_VERBOSE").is_some() {
                eprintln!("rejected: {}", diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "));
            }
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    counts.compiled.fetch_add(1, Ordering::Relaxed);
    for j in &journeys {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let run = vantage::runner::run_journey(j, env.clone(), &cancel);
        // A run longer than the budget is cut by cancellation, as at shutdown.
        let r = tokio::select! {
            r = run => r,
            _ = async { tokio::time::sleep(budget).await; stop.cancel(); std::future::pending::<()>().await } => None,
        };
        if let Some(r) = r {
            counts.ran.fetch_add(1, Ordering::Relaxed);
            let internal = r.error_type.is_some_and(|e| e.as_str() == "internal");
            assert!(!internal, "internal error: {}", r.message.as_deref().unwrap_or(""));
            for text in r.message.iter().chain(r.steps.iter().filter_map(|s| s.error.as_ref())) {
                assert!(!text.contains('\u{1b}') && !text.contains('\n'), "a control character reached a message: {text:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_journeys_never_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(info.to_string());
        default_hook(info);
    }));
    let t = Target::start().await;
    let url = t.url("");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = vantage::steps::callback::CallbackHub::start(([127, 0, 0, 1], 0).into(), stop.clone(), None).await.unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "fuzz");
    let overrides = [("FUZZ_TARGET".to_string(), url.trim_end_matches('/').to_string()), ("FUZZ_ADDR".to_string(), addr)].into_iter().collect();
    let env = Arc::new(vantage::daemon::build_env(&vantage::config::AgentConfig::default(), tracer, Some(hub), overrides).unwrap());
    let per_run = Duration::from_millis(300);
    let counts = Arc::new(Counts { compiled: AtomicU64::new(0), rejected: AtomicU64::new(0), ran: AtomicU64::new(0) });
    let check_panics = |what: &str| {
        let p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(p.is_empty(), "{what} panicked: {}", p.join("\n"));
    };

    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 2, "the corpus in {} is missing", corpus.display());
    for f in &files {
        let yaml = std::fs::read_to_string(f).unwrap();
        let h = tokio::spawn({
            let (env, counts) = (env.clone(), counts.clone());
            async move { exercise(&yaml, &env, per_run, &counts).await }
        });
        h.await.unwrap_or_else(|e| panic!("corpus file {}: {e}", f.display()));
        check_panics(&format!("corpus file {}", f.display()));
    }
    assert!(counts.ran.load(Ordering::Relaxed) > 0, "no corpus journey reached the runner");

    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_abcd_0001);
    let cases: u64 = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(160).min(256);
    let wall = Instant::now();
    let mut rng = Rng(seed);
    let mut done = 0;
    for i in 0..cases {
        if wall.elapsed() > Duration::from_secs(60) {
            break; // fixed budget
        }
        let yaml = journey(&mut rng, i);
        let h = tokio::spawn({
            let (env, yaml, counts) = (env.clone(), yaml.clone(), counts.clone());
            async move { exercise(&yaml, &env, per_run, &counts).await }
        });
        if let Err(e) = h.await {
            panic!("case {i} (FUZZ_SEED={seed}) failed: {e}\nadd it to tests/fuzz/corpus/:\n{yaml}");
        }
        let p = PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(p.is_empty(), "case {i} (FUZZ_SEED={seed}) panicked: {}\nadd it to tests/fuzz/corpus/:\n{yaml}", p.join("\n"));
        done += 1;
    }
    let (compiled, rejected, ran) = (counts.compiled.load(Ordering::Relaxed), counts.rejected.load(Ordering::Relaxed), counts.ran.load(Ordering::Relaxed));
    eprintln!("fuzz: {done} generated cases in {:.1} s: {compiled} compiled (corpus included), {rejected} rejected by check, {ran} runs finished", wall.elapsed().as_secs_f64());
    // Generated cases must exercise the runner, not only the validator.
    assert!(done >= 40, "only {done} cases fit in the budget");
    assert!(compiled * 3 >= done, "only {compiled} of {done} cases passed check: the generator no longer reaches the runner");
    assert!(rejected * 10 >= done, "only {rejected} of {done} cases were rejected: the generator no longer tries invalid input");
    stop.cancel();
}
