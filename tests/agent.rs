//! End-to-end tests of the agent core against real loopback targets:
//! journeys, variables, cookies, assertions, failure categories and messages,
//! timeouts, cleanup and the scheduler.

mod common;

use common::tempdir;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::target::Target;
use vantage::config::validate::compile_files;
use vantage::config::{AgentConfig, Journey};
use vantage::runner::context::RunEnv;
use vantage::runner::result::{ErrorType, Outcome, RunResult};
use vantage::runner::run_journey;

fn journeys(yaml: &str) -> Vec<Journey> {
    match compile_files(&[(PathBuf::from("test.yaml"), yaml.to_string())]) {
        Ok(j) => j,
        Err(d) => panic!("probe file did not compile:\n{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

fn env_with(creds: Option<PathBuf>, overrides: HashMap<String, String>) -> Arc<RunEnv> {
    let agent = AgentConfig { id: "test-agent".into(), location: "test-region".into(), credentials_dir: creds, ..AgentConfig::default() };
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&tracer, "test");
    Arc::new(vantage::daemon::build_env(&agent, tracer, None, overrides).unwrap())
}

async fn run_one(yaml: &str, env: Arc<RunEnv>) -> RunResult {
    let js = journeys(yaml);
    run_journey(&js[0], env, &Default::default()).await.expect("not cancelled")
}

fn vars(t: &Target) -> HashMap<String, String> {
    HashMap::from([("BASE".to_string(), t.url(""))])
}

#[tokio::test]
async fn http_journey_shares_variables_cookies_and_marks_requests() {
    let t = Target::start().await;
    let r = run_one(
        r#"
journeys:
  - name: shop
    interval: 30s
    labels: {team: web, service: shop, environment: test}
    vars:
      base: "${env.BASE}"
    steps:
      - name: get token
        http: {url: "${base}/json"}
        assert:
          status: 200
          json:
            - {path: "$.user.name", equals: probe}
            - {path: /user/id, equals: 7}
            - {path: "$.items[2]", exists: true}
          headers: {content-type: {contains: json}}
        extract:
          token: {json: "$.token"}
      - name: session
        http: {url: "${base}/set-cookie"}
        extract:
          sid: {cookie: sid}
      - name: uses cookie
        http: {url: "${base}/need-cookie"}
        assert: {status: 200, body_contains: welcome}
      - name: follows redirect
        http: {url: "${base}/redirect"}
        assert: {status: "2xx", body_contains: tok-123}
      - name: redirect not followed
        http: {url: "${base}/redirect", follow_redirects: false}
        assert: {status: 302, headers: {location: {equals: /json}}}
      - name: echo
        http:
          method: POST
          url: "${base}/echo"
          json: {token: "${token}", sid: "${sid}", run: "${run.id}"}
        assert:
          json:
            - {path: "$.token", equals: "${token}"}
            - {path: "$.sid", equals: s3ss10n}
      - name: headers
        http: {url: "${base}/headers"}
        assert:
          json:
            - {path: "$['x-synthetic-run']", equals: "${run.id}"}
            - {path: "$['user-agent']", matches: "^Vantage/"}
            - {path: "$.traceparent", matches: "^00-[0-9a-f]{32}-[0-9a-f]{16}-01$"}
"#,
        env_with(None, vars(&t)),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.message);
    assert_eq!(r.steps.len(), 7);
    let seen = t.seen.lock().unwrap();
    let (_, h) = &seen.requests[0];
    assert_eq!(h["x-synthetic-run"], r.run_id);
    // The target's trace joins the run's trace.
    assert!(h["traceparent"].contains(&r.trace_id), "{} vs {}", h["traceparent"], r.trace_id);
    let first = &r.steps[0];
    let phases: Vec<&str> = first.phases.iter().map(|p| p.name).collect();
    assert_eq!(phases, vec!["connect", "ttfb", "transfer"], "an IP target has no dns phase");
    // The connection is reused within the run: no connect phase on the second request.
    assert!(!r.steps[1].phases.iter().any(|p| p.name == "connect"), "{:?}", r.steps[1].phases);
}

#[tokio::test]
async fn failures_are_categorised_with_messages_naming_step_expected_and_actual() {
    let t = Target::start().await;
    let env = env_with(None, vars(&t));
    let cases: &[(&str, ErrorType, &str)] = &[
        ("http: {url: \"${env.BASE}/status/503\"}\n        assert: {status: 200}", ErrorType::HttpStatus, "step `s`: expected status 200, got 503 (body: status 503)"),
        ("http: {url: \"${env.BASE}/status/404\"}", ErrorType::HttpStatus, "step `s`: expected status 200-399, got 404 (body: status 404)"),
        ("http: {url: \"${env.BASE}/json\"}\n        assert: {json: [{path: \"$.user.name\", equals: robot}]}", ErrorType::Assertion, "step `s`: expected JSON path `$.user.name` to equal \"robot\", got \"probe\""),
        ("http: {url: \"${env.BASE}/json\"}\n        assert: {body_regex: \"^nope\"}", ErrorType::Assertion, "step `s`: expected body to match /^nope/, got: {"),
        ("http: {url: \"${env.BASE}/big/5000\", max_body: 1KiB}", ErrorType::BodyTooLarge, "step `s`: expected a body of at most 1024 bytes (max_body), the response was larger"),
        ("http: {url: \"${env.BASE}/flood\"}", ErrorType::BodyTooLarge, "step `s`: expected a body of at most 1048576 bytes"),
        ("http: {url: \"http://127.0.0.1:1/\"}", ErrorType::Connect, "step `s`: could not connect to 127.0.0.1:1 (127.0.0.1:1): connection refused"),
        ("http: {url: \"${env.BASE}/json\"}\n        extract: {x: {json: \"$.missing\"}}", ErrorType::Assertion, "step `s`: could not extract `x`: JSON path `$.missing` matched nothing"),
        ("http: {url: \"${env.BASE}/delay/400\"}\n        assert: {max_duration: 100ms}", ErrorType::Assertion, "step `s`: expected to finish within 100ms, took"),
        ("http: {url: \"${env.NOT_SET_ANYWHERE}/x\"}", ErrorType::Config, "step `s`: environment variable `NOT_SET_ANYWHERE` is not set"),
    ];
    for (step, want_type, want_msg) in cases {
        let yaml = format!("journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: s\n        {step}\n");
        let r = run_one(&yaml, env.clone()).await;
        assert_eq!(r.outcome, Outcome::Failure, "{step}");
        assert_eq!(r.error_type, Some(*want_type), "{step}: {:?}", r.message);
        let msg = r.message.clone().unwrap();
        assert!(msg.starts_with(want_msg), "{step}\n  got:  {msg}\n  want: {want_msg}…");
    }
}

#[tokio::test]
async fn a_target_that_accepts_and_never_answers_times_out_naming_the_wait() {
    let t = Target::start().await;
    let yaml = format!(
        "journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: silent\n        timeout: 300ms\n        http: {{url: \"http://{}/\"}}\n",
        t.silent
    );
    let r = run_one(&yaml, env_with(None, vars(&t))).await;
    assert_eq!(r.error_type, Some(ErrorType::Timeout));
    assert_eq!(r.message.as_deref(), Some("step `silent`: timed out after 300ms while waiting for the response headers (time to first byte)"));
    assert!(r.duration < Duration::from_secs(2), "{:?}", r.duration);
}

#[tokio::test]
async fn whole_run_timeout_stops_the_journey_and_finally_steps_still_run() {
    let t = Target::start().await;
    let r = run_one(
        r#"
journeys:
  - name: slow
    interval: 10s
    timeout: 1s
    steps:
      - name: ok
        http: {url: "${env.BASE}/json"}
      - name: hangs
        http: {url: "${env.BASE}/hang"}
      - name: never reached
        http: {url: "${env.BASE}/json"}
    finally:
      - name: cleanup
        http: {url: "${env.BASE}/headers"}
"#,
        env_with(None, vars(&t)),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.error_type, Some(ErrorType::Timeout));
    assert_eq!(r.message.as_deref(), Some("step `hangs`: journey timeout of 1.00s reached while waiting for the response headers (time to first byte)"));
    let names: Vec<(&str, Outcome, bool)> = r.steps.iter().map(|s| (s.name.as_str(), s.outcome, s.cleanup)).collect();
    assert_eq!(names, vec![("ok", Outcome::Success, false), ("hangs", Outcome::Failure, false), ("cleanup", Outcome::Success, true)]);
    assert_eq!(t.seen.lock().unwrap().requests.len(), 1, "the cleanup step reached the target");
}

#[tokio::test]
async fn slow_but_within_limits_is_degraded_not_failed() {
    let t = Target::start().await;
    let r = run_one(
        "journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: slow\n        http: {url: \"${env.BASE}/delay/250\"}\n        assert: {status: 200, degraded_after: 100ms, max_duration: 5s}\n",
        env_with(None, vars(&t)),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Degraded);
    assert_eq!(r.error_type, None);
    assert_eq!(r.steps[0].outcome, Outcome::Degraded);
}

#[tokio::test]
async fn cleanup_failures_are_reported_apart_and_do_not_hide_the_result() {
    let t = Target::start().await;
    let r = run_one(
        "journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: fine\n        http: {url: \"${env.BASE}/json\"}\n    finally:\n      - name: delete\n        http: {url: \"${env.BASE}/status/500\"}\n        assert: {status: 204}\n",
        env_with(None, vars(&t)),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.cleanup_error.as_deref(), Some("cleanup step `delete`: expected status 204, got 500 (body: status 500)"));
}

#[tokio::test]
async fn secrets_are_redacted_from_messages_and_extractions_can_be_secret() {
    let t = Target::start().await;
    let creds = tempdir();
    std::fs::write(creds.join("password"), "hunter2-canary-secret\n").unwrap();
    let r = run_one(
        r#"
journeys:
  - name: j
    interval: 10s
    steps:
      - name: login
        http:
          method: POST
          url: "${env.BASE}/login"
          json: {password: "${secret.password}"}
        extract:
          token: {json: "$.token", secret: true}
      - name: echo
        http: {method: POST, url: "${env.BASE}/echo", body: "token=${token} password=${secret.password}"}
        assert: {body_contains: "this is not there"}
"#,
        env_with(Some(creds.clone()), vars(&t)),
    )
    .await;
    let msg = r.message.unwrap();
    assert_eq!(msg, "step `echo`: expected body to contain `this is not there`, got: token=[REDACTED] password=[REDACTED]");
    let _ = std::fs::remove_dir_all(creds);
}

#[tokio::test]
async fn missing_secret_says_where_it_looked() {
    let creds = tempdir();
    let r = run_one(
        "journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: s\n        http: {url: \"http://127.0.0.1:1/${secret.api_key}\"}\n",
        env_with(Some(creds.clone()), HashMap::new()),
    )
    .await;
    assert_eq!(r.error_type, Some(ErrorType::Config));
    let want = format!("step `s`: cannot read secret `api_key` from {}/api_key: No such file or directory (os error 2)", creds.display());
    let _ = std::fs::remove_dir_all(&creds);
    assert_eq!(r.message.as_deref(), Some(want.as_str()));
}

#[tokio::test]
async fn tcp_step_sends_and_expects() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let _ = s.write_all(format!("+PONG {}\r\n", String::from_utf8_lossy(&buf[..n]).trim()).as_bytes()).await;
        }
    });
    let ok = format!("journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - name: ping\n        tcp: {{address: \"{addr}\", send: \"PING\\r\\n\", expect: \"+PONG PING\"}}\n");
    let r = run_one(&ok, env_with(None, HashMap::new())).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.message);
    let bad = ok.replace("+PONG PING", "+OK");
    let r = run_one(&bad, env_with(None, HashMap::new())).await;
    assert_eq!(r.error_type, Some(ErrorType::Assertion));
    assert_eq!(r.message.as_deref(), Some("step `ping`: expected `+OK`, the peer closed the connection after 12 bytes: +PONG PING  "));
}

#[test]
fn validation_reports_every_problem_with_its_location() {
    let yaml = r#"journeys:
  - name: a
    interval: 10s
    steps:
      - name: one
        http: {url: "http://x/${tokn}"}
        extract:
          token: {json: "$.token"}
      - name: two
        http: {url: "http://x/${token}"}
      - name: two
        dns: {name: example.com}
        http: {url: "http://x/"}
  - name: b
    interval: 500ms
    timeout: 1s
    labels: {"bad-key": x, outcome: y}
    steps: []
"#;
    let diags = compile_files(&[(PathBuf::from("p.yaml"), yaml.into())]).unwrap_err();
    let got: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    // Each at the value (or label name) at fault, not at its step or journey.
    let want = [
        "p.yaml:6:21: journey `a`, step `one`: `http.url`: unknown variable `${tokn}`: expected one defined by `vars` or an earlier step's `extract` (defined here: none; built-ins: run.id, run.callback_token, uuid, now, now.unix, env.NAME, secret.NAME)",
        "p.yaml:11:15: journey `a`, step `two`: `name`: duplicate step name in this journey: step names label metrics, so they must be unique",
        "p.yaml:11:9: journey `a`, step `two`: expected exactly one step kind (http, dns, tcp, tls, websocket, eventually, callback, browser, grpc), got http, dns",
        "p.yaml:15:15: journey `b`: `interval`: expected at least 1s, got 500ms",
        "p.yaml:16:14: journey `b`: `timeout`: must not exceed `interval`: a journey never overlaps itself, so a longer timeout only skips runs",
        "p.yaml:17:14: journey `b`: `labels.bad-key`: expected a label name of letters, digits, `_` and `.`, starting with a letter or `_`",
        "p.yaml:17:28: journey `b`: `labels.outcome`: this name is set by the agent itself; choose another label name",
        "p.yaml:18:12: journey `b`: `steps`: expected at least one step",
    ];
    assert_eq!(got, want);
}

#[test]
fn malformed_yaml_and_unknown_keys_point_at_file_line_column() {
    let cases = [
        ("journeys:\n  - name: a\n    interval: 10s\n    steps:\n      - name: s\n        htp: {url: x}\n", "p.yaml:6:9: unknown field `htp`, expected one of"),
        ("journeys:\n  - name: a\n    interval: 10s\n    steps:\n      - name: s\n        http: {url: \"x\"\n", "p.yaml:6:15: unclosed bracket '{'"),
        ("journeys:\n  - name: a\n    interval: soon\n    steps: []\n", "p.yaml:3:15: expected a duration like `500ms`, `10s` or `1m`, got `soon`"),
        ("journeys:\n  - name: a\n    interval: 10s\n    steps:\n      - name: s\n        http: {url: \"http://x/\"}\n        assert: {status: 700}\n", "p.yaml:7:26: expected a status code (200), a class (\"2xx\"), a range (\"200-299\") or a list of them, got `700`"),
    ];
    for (yaml, want) in cases {
        let d = compile_files(&[(PathBuf::from("p.yaml"), yaml.into())]).unwrap_err();
        assert_eq!(d.len(), 1, "{d:?}");
        let got = d[0].to_string();
        assert!(got.starts_with(want), "\n  got:  {got}\n  want: {want}…");
    }
}

#[test]
fn first_runs_spread_deterministically_over_the_interval() {
    use vantage::scheduler::first_offset;
    let i = Duration::from_secs(60);
    assert_eq!(first_offset("agent-a", "login", i), first_offset("agent-a", "login", i));
    assert_ne!(first_offset("agent-a", "login", i), first_offset("agent-b", "login", i), "regions must not fire at once");
    let offsets: Vec<Duration> = (0..600).map(|n| first_offset("agent-a", &format!("journey-{n}"), i)).collect();
    // Spread: every 6 s slice of the minute gets some journeys, none gets more than 3x its share.
    let mut slices = [0usize; 10];
    for o in &offsets {
        assert!(*o < i);
        slices[(o.as_secs() / 6) as usize] += 1;
    }
    assert!(slices.iter().all(|&n| n > 20 && n < 180), "{slices:?}");
}

#[test]
fn shards_split_journeys_stably_and_locations_filter_them() {
    use vantage::scheduler::select;
    let mut yaml = String::from("journeys:\n");
    for i in 0..60 {
        let loc = if i % 10 == 0 { "    locations: [us-east-1]\n" } else { "" };
        yaml.push_str(&format!("  - name: j{i}\n    interval: 10s\n{loc}    steps:\n      - name: s\n        http: {{url: \"http://127.0.0.1/\"}}\n"));
    }
    let agent = |shard: Option<&str>| AgentConfig { location: "eu-west-1".into(), shard: shard.map(str::to_string), ..AgentConfig::default() };
    let all: Vec<String> = select(journeys(&yaml), &agent(None)).into_iter().map(|j| j.name).collect();
    assert_eq!(all.len(), 54, "journeys limited to us-east-1 do not run in eu-west-1");
    let mut union = Vec::new();
    for i in 1..=3 {
        let part: Vec<String> = select(journeys(&yaml), &agent(Some(&format!("{i}/3")))).into_iter().map(|j| j.name).collect();
        assert!(part.len() > 8 && part.len() < 30, "shard {i}/3 has {} journeys", part.len());
        // Stable: the same shard gets the same journeys every time.
        assert_eq!(part, select(journeys(&yaml), &agent(Some(&format!("{i}/3")))).into_iter().map(|j| j.name).collect::<Vec<_>>());
        union.extend(part);
    }
    union.sort();
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(union, all_sorted, "the shards partition the journeys");
}

#[test]
fn cli_check_reports_all_problems_and_exits_1() {
    let dir = tempdir();
    std::fs::write(dir.join("a.yaml"), "journeys:\n  - name: a\n    interval: 10s\n    steps:\n      - name: s\n        htp: {url: x}\n").unwrap();
    std::fs::write(dir.join("b.yaml"), "journeys:\n  - name: b\n    interval: 10s\n    steps:\n      - name: s\n        http: {url: \"http://x/${nope}\"}\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a probe file").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let a = format!("error: {}/a.yaml:6:9: unknown field `htp`, expected one of", dir.display());
    let b = format!("error: {}/b.yaml:6:21: journey `b`, step `s`: `http.url`: unknown variable `${{nope}}`", dir.display());
    assert!(err.contains(&a) && err.contains(&b) && err.contains("2 problems found"), "{err}");
    std::fs::write(dir.join("a.yaml"), "journeys: []\n").unwrap();
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok: 0 journeys, 0 steps\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// A run still going at the next tick makes that tick `skipped`, never queued;
/// the scheduler's shutdown lets the in-flight run finish within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ticks_are_skipped_not_queued() {
    let t = Target::start().await;
    let yaml = "journeys:\n  - name: slow\n    interval: 1s\n    steps:\n      - name: quick\n        http: {url: \"${env.BASE}/json\"}\n    finally:\n      - name: slow cleanup\n        timeout: 5s\n        http: {url: \"${env.BASE}/delay/2500\"}\n";
    let env = env_with(None, vars(&t));
    let telemetry = Arc::new(vantage::telemetry::Telemetry::init(&AgentConfig::default(), None, &[]).unwrap());
    let mut sched = vantage::scheduler::Scheduler::new(env, telemetry, 4, None);
    sched.apply(journeys(yaml));
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let status = sched.status();
    let (runs, skipped) = {
        let board = status.lock().unwrap();
        (board["slow"].runs, board["slow"].skipped)
    };
    assert!((1..=2).contains(&runs), "runs={runs}");
    assert!(skipped >= 2, "skipped={skipped}");
    let stats = sched.stats();
    let started = stats.runs_started.load(std::sync::atomic::Ordering::Relaxed);
    assert!(started <= 3, "ticks were queued: {started} runs started in 5 s of 2.5 s runs");
    let in_flight = sched.shutdown(Duration::from_secs(4), Duration::from_secs(5)).await;
    assert!(in_flight <= 1);
    assert_eq!(stats.runs_started.load(std::sync::atomic::Ordering::Relaxed), stats.runs_finished.load(std::sync::atomic::Ordering::Relaxed), "every started run finished within the grace");
}
