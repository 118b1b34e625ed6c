//! The HTTP client against servers that misbehave like real ones
//! (tests/common/hostile.rs): each case asserts the outcome, `error.type` and
//! the words of the message. Timing-dependent cases run 50 times.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::collector::Collector;
use common::hostile::{flaky, forward_proxy, h2_only, hostile, openssl_cert, refusing_proxy, revocation_pki, test_cert, ws_echo};
use vantage::config::{AgentConfig, Journey};
use vantage::runner::context::RunEnv;
use vantage::runner::result::{ErrorType, Outcome, RunResult};

const RUNS: usize = 50;

fn env() -> Arc<RunEnv> {
    env_for(&AgentConfig::default())
}

fn env_for(agent: &AgentConfig) -> Arc<RunEnv> {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
    Arc::new(vantage::daemon::build_env(agent, tracer, None, HashMap::new()).unwrap())
}

/// An agent config parsed (and checked) from `yaml`, in `dir`.
fn agent(dir: &std::path::Path, yaml: &str) -> AgentConfig {
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    vantage::config::parse_agent(&path).unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
}

/// One journey `j` with these steps (YAML list items, indented by 6).
fn journey(steps: &str) -> Journey {
    let dir = common::tempdir();
    let path = dir.join("j.yaml");
    std::fs::write(&path, format!("journeys:\n  - name: j\n    interval: 60s\n    steps:\n{steps}")).unwrap();
    let loaded = vantage::config::load(None, &[path]).unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
    let _ = std::fs::remove_dir_all(dir);
    loaded.journeys.into_iter().next().unwrap()
}

async fn run(j: &Journey, env: &Arc<RunEnv>) -> RunResult {
    tokio::time::timeout(Duration::from_secs(30), vantage::runner::run_journey(j, env.clone(), &Default::default())).await.expect("the run ends by itself").expect("a result")
}

fn get(url: &str) -> String {
    format!("      - name: s\n        http: {{url: \"{url}\", proxy: none}}\n")
}

#[track_caller]
fn assert_fails(r: &RunResult, t: ErrorType, words: &[&str]) {
    assert_eq!(r.outcome, Outcome::Failure, "{:?}", r.message);
    assert_eq!(r.error_type, Some(t), "{:?}", r.message);
    let m = r.message.clone().unwrap_or_default();
    for w in words {
        assert!(m.contains(w), "expected `{w}` in: {m}");
    }
}

#[track_caller]
fn assert_ok(r: &RunResult) {
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.message);
}

#[tokio::test]
async fn stale_kept_alive_connections_are_retried_on_a_fresh_one_50_runs() {
    let s = hostile(None).await;
    let env = env();
    // Every hop's second request lands on a connection the server has silently dropped.
    let j = journey(&format!("{}        assert: {{body_contains: arrived}}\n", get(&format!("http://127.0.0.1:{}/silent/chain/5", s.port()))));
    for i in 0..RUNS {
        let r = run(&j, &env).await;
        assert_ok(&r);
        let names: Vec<&str> = r.steps[0].phases.iter().map(|p| p.name).collect();
        assert!(names.contains(&"connect") && names.contains(&"ttfb") && names.contains(&"transfer"), "run {i}: {names:?}");
    }
    // One fresh connection per hop: the retries used new connections, and only once each.
    assert_eq!(*s.accepted.lock().unwrap(), (RUNS * 6) as u32);
}

#[tokio::test]
async fn a_post_already_sent_on_a_stale_connection_is_not_replayed() {
    let s = hostile(None).await;
    let post = format!("      - name: p\n        http: {{method: POST, url: \"http://127.0.0.1:{}/silent/ok\", body: x, proxy: none}}\n", s.port());
    let j = journey(&format!("{post}{}", post.replace("name: p", "name: q")));
    let r = run(&j, &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["no response from", "closed the connection before responding"]);
    assert_eq!(r.steps[0].outcome, Outcome::Success);
}

#[tokio::test]
async fn a_redirect_loop_fails_naming_the_chain() {
    let s = hostile(None).await;
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/loop", s.port()))), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["expected at most 10 redirects, got more", "a loop", "/loop` → `http://127.0.0.1"]);
}

#[tokio::test]
async fn ten_redirects_are_followed() {
    let s = hostile(None).await;
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/chain/10", s.port()))), &env()).await;
    assert_ok(&r);
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/chain/11", s.port()))), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["expected at most 10 redirects", "/chain/11`", "/chain/0`"]);
}

fn with_credentials(url: &str) -> String {
    format!(
        "      - name: s\n        http:\n          url: \"{url}\"\n          proxy: none\n          headers: {{authorization: \"Bearer t0ken\", cookie: \"hand=set\", proxy-authorization: \"Basic cHg=\", x-keep: kept}}\n"
    )
}

#[tokio::test]
async fn credentials_are_not_sent_to_another_origin_after_a_redirect() {
    let a = hostile(None).await;
    let b = hostile(None).await;
    let cross = format!("http://127.0.0.1:{}/to?302&http%3A%2F%2F127.0.0.1%3A{}%2Fecho", a.port(), b.port());
    let j = journey(&format!("{}        assert: {{body_contains: \"x-keep: kept\"}}\n", with_credentials(&cross)));
    assert_ok(&run(&j, &env()).await);
    let echoed = b.seen().join("\n").to_ascii_lowercase();
    assert!(echoed.contains("x-keep: kept"), "{echoed}");
    for h in ["authorization:", "cookie:", "t0ken", "hand=set"] {
        assert!(!echoed.contains(h), "`{h}` reached the other origin: {echoed}");
    }
    // Same origin: kept.
    let same = format!("http://127.0.0.1:{}/to?302&%2Fecho", a.port());
    let j = journey(&format!("{}        assert: {{body_contains: \"Bearer t0ken\"}}\n", with_credentials(&same)));
    assert_ok(&run(&j, &env()).await);
}

#[tokio::test]
async fn https_to_http_redirects_are_refused_unless_allowed() {
    let cert = test_cert();
    let tls = hostile(Some(&cert)).await;
    let plain = hostile(None).await;
    let from = format!("https://127.0.0.1:{}/to?302&http%3A%2F%2F127.0.0.1%3A{}%2Fok", tls.port(), plain.port());
    let step = |allow: bool| format!("      - name: s\n        http: {{url: \"{from}\", tls_verify: false, proxy: none, allow_insecure_redirects: {allow}}}\n");
    let r = run(&journey(&step(false)), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["refused to follow the redirect from `https://127.0.0.1:", "` to `http://127.0.0.1:", "allow_insecure_redirects: true"]);
    assert!(plain.seen().is_empty(), "nothing was sent over plain http");
    assert_ok(&run(&journey(&step(true)), &env()).await);
    assert_eq!(plain.seen().len(), 1);
}

#[tokio::test]
async fn see_other_and_redirected_posts_become_bodiless_gets_307_keeps_them() {
    let s = hostile(None).await;
    let step = |status: u16| format!("      - name: s\n        http: {{method: POST, url: \"http://127.0.0.1:{}/to?{status}&%2Fecho\", json: {{a: 1}}, proxy: none}}\n", s.port());
    for status in [301, 302, 303] {
        let r = run(&journey(&format!("{}        assert: {{body_contains: \"GET /echo\"}}\n", step(status))), &env()).await;
        assert_ok(&r);
        let last = s.seen().last().unwrap().to_ascii_lowercase();
        assert!(!last.contains("content-type") && !last.contains("content-length"), "{status}: {last}");
    }
    let r = run(&journey(&format!("{}        assert: {{body_contains: \"POST /echo\", body_regex: \"\\\\{{\\\"a\\\":1\\\\}}$\"}}\n", step(307))), &env()).await;
    assert_ok(&r);
}

#[tokio::test]
async fn the_cookie_jar_applies_cookies_by_path() {
    let s = hostile(None).await;
    let base = format!("http://127.0.0.1:{}", s.port());
    let j = journey(&format!(
        "{}{}        assert: {{body_contains: \"sid=abc\", body_not_contains: \"other=1\"}}\n{}        assert: {{body_not_contains: \"sid=abc\"}}\n",
        get(&format!("{base}/set-cookie")),
        get(&format!("{base}/app/echo")).replace("name: s", "name: in-path"),
        get(&format!("{base}/echo")).replace("name: s", "name: outside")
    ));
    assert_ok(&run(&j, &env()).await);
}

/// The jar follows domain and path across redirects to another origin: a
/// cookie of 127.0.0.1 is not sent to 127.0.0.2 (another host, the cookie's
/// domain), and comes back on a redirect to its own host only within its path.
#[tokio::test]
async fn the_cookie_jar_applies_domain_and_path_across_origins_in_redirects() {
    let (a, b) = (hostile(None).await, common::hostile::hostile_on("127.0.0.2", None).await);
    let (ao, bo) = (format!("http://127.0.0.1:{}", a.port()), format!("http://127.0.0.2:{}", b.port()));
    let to = |from: &str, target: String| format!("{from}/to?302&{}", url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>());
    let step = |name: &str, url: String, assert: &str| get(&url).replace("name: s", &format!("name: {name}")) + &format!("        assert: {{{assert}}}\n");
    let j = journey(
        &[
            get(&format!("{ao}/set-cookie")),
            step("a-to-b", to(&ao, format!("{bo}/app/echo")), "body_contains: \"GET /app/echo\", body_not_contains: \"sid=abc\""),
            step("b-to-a-in-path", to(&bo, format!("{ao}/app/echo")), "body_contains: \"sid=abc\", body_not_contains: \"other=1\""),
            step("b-to-a-outside", to(&bo, format!("{ao}/b/echo")), "body_contains: \"GET /b/echo\", body_not_contains: \"sid=abc\""),
        ]
        .concat(),
    );
    assert_ok(&run(&j, &env()).await);
    let on_b = b.seen();
    assert_eq!(on_b.len(), 3, "{on_b:?}");
    assert!(on_b.iter().all(|h| !h.to_ascii_lowercase().contains("\r\ncookie:")), "a cookie of 127.0.0.1 reached 127.0.0.2: {on_b:?}");
    let on_a = a.seen();
    assert!(on_a.iter().any(|h| h.starts_with("GET /app/echo") && h.contains("cookie: sid=abc\r\n")), "{on_a:?}");
    assert!(on_a.iter().any(|h| h.starts_with("GET /b/echo") && !h.contains("sid=abc")), "{on_a:?}");
}

#[tokio::test]
async fn a_server_lying_about_the_length_is_named_50_runs() {
    let s = hostile(None).await;
    let (j, env) = (journey(&get(&format!("http://127.0.0.1:{}/lie-length", s.port()))), env());
    for _ in 0..RUNS {
        let r = run(&j, &env).await;
        assert_fails(&r, ErrorType::Protocol, &["the response body broke off after", "the server declared 5000 bytes and closed after 5"]);
        let names: Vec<&str> = r.steps[0].phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["connect", "ttfb", "transfer"]);
    }
}

#[tokio::test]
async fn a_reset_mid_body_is_named_50_runs() {
    let s = hostile(None).await;
    let (j, env) = (journey(&get(&format!("http://127.0.0.1:{}/reset-mid-body", s.port()))), env());
    for _ in 0..RUNS {
        let r = run(&j, &env).await;
        assert_fails(&r, ErrorType::Protocol, &["connection reset by peer after 3 bytes"]);
    }
}

#[tokio::test]
async fn a_refused_connection_is_named() {
    let port = common::free_port();
    let r = run(&journey(&get(&format!("http://127.0.0.1:{port}/"))), &env()).await;
    assert_fails(&r, ErrorType::Connect, &["connection refused"]);
    assert!(!r.message.unwrap().contains("os error"));
}

#[tokio::test]
async fn a_header_flood_is_refused() {
    let s = hostile(None).await;
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/header-flood", s.port()))), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["response headers are too large"]);
}

#[tokio::test]
async fn a_decompression_bomb_fails_body_too_large() {
    let wire = common::hostile::bomb().await.len();
    assert!(wire < 64 * 1024, "{wire} bytes on the wire");
    let s = hostile(None).await;
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/bomb", s.port()))), &env()).await;
    assert_fails(&r, ErrorType::BodyTooLarge, &["expected a decoded body of at most 1048576 bytes (max_body)"]);
}

/// Summed PSS of a process, in bytes (/proc/PID/smaps_rollup).
fn pss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map(|kb| kb * 1024)
}

/// A 1 GiB gzip bomb (about 1 MiB on the wire) against `vantage once`: the
/// step fails `body_too_large` at `max_body` of decoded bytes, and the
/// process's memory (PSS, polled while it runs) stays far below the bomb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_decompression_bomb_fails_body_too_large_in_bounded_memory() {
    let wire = common::hostile::gib_bomb().len();
    assert!((512 * 1024..4 * 1024 * 1024).contains(&wire), "{wire} bytes on the wire");
    // The bomb is real: its first MiB decodes to zeros, and it declares 1 GiB.
    let mut d = flate2::read::GzDecoder::new(common::hostile::gib_bomb());
    let mut head = vec![1u8; 1 << 20];
    std::io::Read::read_exact(&mut d, &mut head).unwrap();
    assert!(head.iter().all(|b| *b == 0));
    assert_eq!(u32::from_le_bytes(common::hostile::gib_bomb()[wire - 4..].try_into().unwrap()), 1 << 30);

    let s = hostile(None).await;
    let dir = common::tempdir();
    let probes = dir.join("p.yaml");
    std::fs::write(&probes, format!("journeys:\n  - name: bomb\n    interval: 60s\n    steps:\n      - name: s\n        http: {{url: \"http://127.0.0.1:{}/bomb-gib\", proxy: none}}\n", s.port())).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json"]).arg(&probes).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let (mut peak, mut samples) = (0u64, 0u32);
    let wait = child.wait_with_output();
    tokio::pin!(wait);
    let out = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                out = &mut wait => break out.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {
                    if let Some(p) = pss(pid) {
                        peak = peak.max(p);
                        samples += 1;
                    }
                }
            }
        }
    })
    .await
    .expect("vantage once ends by itself");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["error_type"], "body_too_large", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("expected a decoded body of at most 1048576 bytes (max_body)"), "{msg}");
    assert!(samples > 0, "the process was never measured");
    assert!(peak < 100 * 1024 * 1024, "peak PSS {} MiB over {samples} samples", peak >> 20);
    eprintln!("gib bomb: peak PSS {:.1} MiB over {samples} samples", peak as f64 / 1048576.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bodies_are_decoded_for_assertions_and_kept_raw_on_request() {
    let s = hostile(None).await;
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let j = journey(&format!(
            "{}        assert: {{body_contains: \"hello {coding} decoded\", headers: {{content-encoding: {{equals: {coding}}}}}}}\n",
            get(&format!("http://127.0.0.1:{}/encoded/{coding}", s.port()))
        ));
        assert_ok(&run(&j, &env()).await);
        assert!(s.seen().last().unwrap().contains("accept-encoding: gzip, deflate, br, zstd"), "{:?}", s.seen().last());
    }
    let raw = format!("      - name: s\n        http: {{url: \"http://127.0.0.1:{}/encoded/gzip\", raw_body: true, proxy: none}}\n        assert: {{body_contains: decoded}}\n", s.port());
    let r = run(&journey(&raw), &env()).await;
    assert_fails(&r, ErrorType::Assertion, &["decoded"]);
    let r = run(&journey(&get(&format!("http://127.0.0.1:{}/corrupt-gzip", s.port()))), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &["declared `Content-Encoding: gzip` but does not decode as gzip"]);
}

#[tokio::test]
async fn a_stalled_server_times_out_naming_what_was_awaited_50_runs() {
    let s = hostile(None).await;
    let j = journey(&format!("      - name: s\n        timeout: 200ms\n        http: {{url: \"http://127.0.0.1:{}/stall\", proxy: none}}\n", s.port()));
    let env = env();
    for _ in 0..RUNS {
        let r = run(&j, &env).await;
        assert_fails(&r, ErrorType::Timeout, &["timed out after ", "ms while waiting for the response headers (time to first byte)"]);
        let names: Vec<&str> = r.steps[0].phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["connect"], "phases up to the one that failed");
    }
}

#[tokio::test]
async fn http2_only_servers_are_reached_through_alpn_or_prior_knowledge() {
    let cert = test_cert();
    let tls = h2_only(Some(&cert)).await;
    let j = |url: String, version: &str| {
        journey(&format!("      - name: s\n        http: {{url: \"{url}\", tls_verify: false, proxy: none, http_version: {version}}}\n        assert: {{body_contains: h2 only}}\n"))
    };
    assert_ok(&run(&j(format!("https://127.0.0.1:{}/a", tls.port()), "auto"), &env()).await);
    assert_ok(&run(&j(format!("https://127.0.0.1:{}/b", tls.port()), "\"2\""), &env()).await);
    assert_eq!(tls.seen(), ["GET https://127.0.0.1:{p}/a HTTP/2.0".replace("{p}", &tls.port().to_string()), "GET https://127.0.0.1:{p}/b HTTP/2.0".replace("{p}", &tls.port().to_string())]);
    // HTTP/1.1 only: the server refuses the handshake; dns/connect are kept.
    let r = run(&j(format!("https://127.0.0.1:{}/c", tls.port()), "\"1.1\""), &env()).await;
    assert_fails(&r, ErrorType::Tls, &["TLS handshake"]);
    assert_eq!(r.steps[0].phases.iter().map(|p| p.name).collect::<Vec<_>>(), ["connect"]);
    // Cleartext: prior knowledge with "2"; `auto` speaks HTTP/1.1 there, which this server cannot answer.
    let h2c = h2_only(None).await;
    assert_ok(&run(&j(format!("http://127.0.0.1:{}/d", h2c.port()), "\"2\""), &env()).await);
    let r = run(&j(format!("http://127.0.0.1:{}/e", h2c.port()), "auto"), &env()).await;
    assert_fails(&r, ErrorType::Protocol, &[]);
    // An HTTP/1.1-only TLS server and "2": refused in words.
    let h1 = hostile(Some(&cert)).await;
    // (rustls refuses a client that offers only protocols it does not serve.)
    let r = run(&j(format!("https://127.0.0.1:{}/ok", h1.port()), "\"2\""), &env()).await;
    assert_fails(&r, ErrorType::Tls, &["TLS handshake"]);
    assert!(h1.seen().is_empty());
}

#[tokio::test]
async fn http_and_https_go_through_a_forward_proxy() {
    let cert = test_cert();
    let plain = hostile(None).await;
    let tls = hostile(Some(&cert)).await;
    let proxy = forward_proxy().await;
    let step = |url: String| {
        journey(&format!("      - name: s\n        http: {{url: \"{url}\", tls_verify: false, proxy: \"http://u:p@127.0.0.1:{}\"}}\n        assert: {{body_contains: hello}}\n", proxy.port()))
    };
    assert_ok(&run(&step(format!("http://127.0.0.1:{}/ok", plain.port())), &env()).await);
    assert_ok(&run(&step(format!("https://127.0.0.1:{}/ok", tls.port())), &env()).await);
    let seen = proxy.seen();
    assert!(seen[0].starts_with(&format!("GET http://127.0.0.1:{}/ok HTTP/1.1\r\n", plain.port())), "{seen:?}");
    assert!(seen[0].to_ascii_lowercase().contains("proxy-authorization: basic dtpw"), "{seen:?}");
    assert!(seen[1].starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", tls.port())), "{seen:?}");
    assert_eq!(plain.seen().len(), 1);
    assert_eq!(tls.seen().len(), 1, "the https request went through the tunnel");
}

/// `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` from the agent's environment (a child
/// `vantage once`, so this test's own environment stays untouched).
#[tokio::test]
async fn proxies_come_from_the_environment_and_no_proxy_bypasses_them() {
    let plain = hostile(None).await;
    let proxy = forward_proxy().await;
    let dir = common::tempdir();
    let path = dir.join("p.yaml");
    std::fs::write(&path, format!("journeys:\n  - name: j\n    interval: 60s\n    steps:\n      - name: s\n        http: {{url: \"http://127.0.0.1:{}/ok\"}}\n", plain.port())).unwrap();
    let once = |no_proxy: &str| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
        c.arg("once").arg(&path).kill_on_drop(true).env_remove("http_proxy").env_remove("https_proxy").env_remove("ALL_PROXY").env_remove("all_proxy").env_remove("no_proxy");
        c.env("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port())).env("NO_PROXY", no_proxy);
        c
    };
    let out = tokio::time::timeout(Duration::from_secs(30), once("example.invalid").output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(proxy.seen().len(), 1, "through the proxy");
    let out = tokio::time::timeout(Duration::from_secs(30), once("127.0.0.1").output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY bypassed the proxy");
    assert_eq!(plain.seen().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// The collector's spans once `n` distinct span ids arrived (at most 15 s):
/// an export retried after a slow acknowledgement delivers a span twice.
fn distinct_spans(col: &Collector, n: usize) -> Vec<common::collector::SpanRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let spans = col.spans();
        let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        if ids.len() >= n || std::time::Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PROXY_USER: &str = "agent-user";
const PROXY_PASS: &str = "Pr0xy-pass-9f3k";

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// A credentials directory holding `proxy-auth` = `user:password`.
fn proxy_credentials() -> std::path::PathBuf {
    let dir = common::tempdir();
    std::fs::write(dir.join("proxy-auth"), format!("{PROXY_USER}:{PROXY_PASS}\n")).unwrap();
    dir
}

/// The agent's `proxy:` (credentials from a file) replaces the environment's
/// for every http step; CONNECT for https; a step's own `proxy:` wins;
/// `no_proxy` sends matching hosts direct.
#[tokio::test]
async fn the_agent_wide_proxy_carries_file_credentials_and_honours_no_proxy() {
    let cert = test_cert();
    let plain = hostile(None).await;
    let tls = hostile(Some(&cert)).await;
    let proxy = forward_proxy().await;
    let other = forward_proxy().await;
    let creds = proxy_credentials();
    let steps = format!(
        "      - name: plain\n        http: {{url: \"http://127.0.0.1:{p}/ok\"}}\n        assert: {{body_contains: hello}}\n\
         \x20     - name: tls\n        http: {{url: \"https://127.0.0.1:{t}/ok\", tls_verify: false}}\n        assert: {{body_contains: hello}}\n\
         \x20     - name: direct\n        http: {{url: \"http://127.0.0.1:{p}/echo\", proxy: none}}\n        assert: {{body_not_contains: \"Via:\"}}\n\
         \x20     - name: own\n        http: {{url: \"http://127.0.0.1:{p}/echo\", proxy: {{url: \"http://127.0.0.1:{o}\"}}}}\n        assert: {{body_contains: \"Via: 1.1 test-proxy\"}}\n",
        p = plain.port(),
        t = tls.port(),
        o = other.port()
    );
    let j = journey(&steps);
    let yaml = |no_proxy: &str| format!("credentials_dir: {}\nproxy:\n  url: \"http://127.0.0.1:{}\"\n  credentials: proxy-auth\n  no_proxy: {no_proxy}\n", creds.display(), proxy.port());
    let a = agent(&creds, &yaml("[10.0.0.0/8, example.test]"));
    let r = run(&j, &env_for(&a)).await;
    assert_ok(&r);
    // Through the tunnel: connecting includes CONNECT, then TLS end to end.
    assert_eq!(r.steps[1].phases.iter().map(|p| p.name).collect::<Vec<_>>(), ["connect", "tls", "ttfb", "transfer"]);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "plain and tls through the agent's proxy, the others not: {seen:?}");
    assert!(seen[0].starts_with(&format!("GET http://127.0.0.1:{}/ok HTTP/1.1\r\n", plain.port())), "{seen:?}");
    assert!(seen[1].starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", tls.port())), "{seen:?}");
    let auth = format!("proxy-authorization: basic {}", basic(PROXY_USER, PROXY_PASS)).to_ascii_lowercase();
    for s in &seen {
        assert!(s.to_ascii_lowercase().contains(&auth), "credentials from the file: {s}");
    }
    assert_eq!(tls.seen().len(), 1, "https went through the tunnel");
    assert_eq!(other.seen().len(), 1, "the step's own proxy");
    assert!(!other.seen()[0].to_ascii_lowercase().contains("proxy-authorization"), "the agent's credentials stay with the agent's proxy");

    // `no_proxy` naming the target: direct.
    let a = agent(&creds, &yaml("[\"127.0.0.0/8\"]"));
    let j = journey(&format!("      - name: plain\n        http: {{url: \"http://127.0.0.1:{}/echo\"}}\n        assert: {{body_not_contains: \"Via:\"}}\n", plain.port()));
    assert_ok(&run(&j, &env_for(&a)).await);
    assert_eq!(proxy.seen().len(), 2, "bypassed");
    let _ = std::fs::remove_dir_all(creds);
}

/// A proxy that refuses and echoes the request (credentials included): the
/// password never reaches the output of `vantage once`, its log, spans or
/// metrics at a real collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_never_reach_messages_logs_or_spans() {
    let cert = test_cert();
    let plain = hostile(None).await;
    let tls = hostile(Some(&cert)).await;
    let proxy = refusing_proxy().await;
    let col = Collector::start();
    let dir = proxy_credentials();
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(&agent_yaml, format!("id: t\nadmin: {{listen: \"\"}}\ncredentials_dir: {}\nproxy: {{url: \"http://127.0.0.1:{}\", credentials: proxy-auth}}\n", dir.display(), proxy.port())).unwrap();
    let probes = dir.join("p.yaml");
    // One step with the credentials in its own URL, percent-encoded as users write them.
    std::fs::write(
        &probes,
        format!(
            "journeys:\n  - name: via-file\n    interval: 60s\n    steps:\n      - name: plain\n        http: {{url: \"http://127.0.0.1:{p}/ok\"}}\n\
             \x20 - name: via-file-tls\n    interval: 60s\n    steps:\n      - name: tls\n        http: {{url: \"https://127.0.0.1:{t}/ok\", tls_verify: false}}\n\
             \x20 - name: via-url\n    interval: 60s\n    steps:\n      - name: plain\n        http: {{url: \"http://127.0.0.1:{p}/ok\", proxy: \"http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{x}\"}}\n",
            p = plain.port(),
            t = tls.port(),
            x = proxy.port()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--verbose", "--format", "json", "--config"]).arg(&agent_yaml).arg(&probes).args(["--otlp-endpoint", &col.grpc_endpoint()]).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // The credentials did reach the proxy (so there was something to leak) …
    let sent = proxy.seen();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let b64 = basic(PROXY_USER, PROXY_PASS);
    assert!(sent.iter().all(|s| s.contains(&b64)), "{sent:?}");
    // … the refusals are named, the echoed credentials redacted …
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["error_type"], "http_status", "{stdout}");
    assert!(runs[0]["message"].as_str().unwrap().contains("got 407") && runs[0]["message"].as_str().unwrap().contains("[REDACTED]"), "{stdout}");
    assert_eq!(runs[1]["error_type"], "connect", "{stdout}");
    assert!(runs[1]["message"].as_str().unwrap().contains(&format!("proxy `http://127.0.0.1:{}` refused CONNECT 127.0.0.1:{}: 407 Proxy Authentication Required", proxy.port(), tls.port())), "{stdout}");
    assert!(runs[2]["message"].as_str().unwrap().contains("[REDACTED]"), "{stdout}");
    // … and nothing that carries them leaves.
    let spans = distinct_spans(&col, 6);
    assert!(spans.iter().any(|s| s.status_message.contains("got 407")), "{spans:?}");
    let raw = col.raw_log();
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr), ("collector", &raw)] {
        for secret in [PROXY_PASS, b64.as_str(), &b64[..b64.len() - 4]] {
            assert!(!text.contains(secret), "`{secret}` leaked to {what}: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `websocket` steps take the same proxies as `http` steps (agent-wide with
/// file credentials, or their own `proxy:`): ws:// and wss:// through a
/// CONNECT tunnel, TLS inside it. A refusing or absent proxy is named, its
/// credentials never shown. A child `vantage once`, so the wss:// server's
/// certificate can be trusted through `SSL_CERT_FILE` without touching this
/// test's own environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_go_through_the_proxy_with_its_credentials() {
    let cert = test_cert();
    let (ws, wss) = (ws_echo(None).await, ws_echo(Some(&cert)).await);
    let (proxy, refusing) = (forward_proxy().await, refusing_proxy().await);
    let down = common::free_port();
    let dir = proxy_credentials();
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(&agent_yaml, format!("id: t\nadmin: {{listen: \"\"}}\ncredentials_dir: {}\nproxy: {{url: \"http://127.0.0.1:{}\", credentials: proxy-auth}}\n", dir.display(), proxy.port())).unwrap();
    let journey = |name: &str, url: String, proxy: &str| {
        format!("  - name: {name}\n    interval: 60s\n    steps:\n      - name: echo\n        websocket: {{connect: \"{url}\", send: hello, receive: 2s{proxy}}}\n        assert: {{body_contains: hello}}\n")
    };
    let probes = dir.join("p.yaml");
    let text = [
        journey("ws", format!("ws://127.0.0.1:{}/feed", ws.port()), ""),
        journey("wss", format!("wss://127.0.0.1:{}/feed", wss.port()), ""),
        journey("refused", format!("ws://127.0.0.1:{}/feed", ws.port()), &format!(", proxy: \"http://{PROXY_USER}:{PROXY_PASS}@127.0.0.1:{}\"", refusing.port())),
        journey("down", format!("wss://127.0.0.1:{}/feed", wss.port()), &format!(", proxy: \"http://127.0.0.1:{down}\"")),
        journey("direct", format!("ws://127.0.0.1:{}/feed", ws.port()), ", proxy: none"),
    ]
    .concat();
    std::fs::write(&probes, format!("journeys:\n{text}")).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent_yaml).arg(&probes).env("SSL_CERT_FILE", &cert.pem_path).kill_on_drop(true);
    for v in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_DIR"] {
        cmd.env_remove(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    let runs: HashMap<String, serde_json::Value> = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).map(|v| (v["journey"].as_str().unwrap().to_string(), v)).collect();
    assert_eq!(runs.len(), 5, "{stdout}\n{stderr}");
    for ok in ["ws", "wss", "direct"] {
        assert_eq!(runs[ok]["outcome"], "success", "{ok}: {stdout}\n{stderr}");
    }
    // Both through the agent's proxy, as CONNECT tunnels carrying its credentials.
    let seen = proxy.seen();
    let auth = format!("proxy-authorization: basic {}", basic(PROXY_USER, PROXY_PASS)).to_ascii_lowercase();
    let mut lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap()).collect();
    lines.sort();
    let mut want = vec![format!("CONNECT 127.0.0.1:{} HTTP/1.1", ws.port()), format!("CONNECT 127.0.0.1:{} HTTP/1.1", wss.port())];
    want.sort();
    assert_eq!(lines, want, "{seen:?}");
    assert!(seen.iter().all(|h| h.to_ascii_lowercase().contains(&auth)), "{seen:?}");
    // The tunnel's time counts as connecting, and wss:// did its TLS inside it.
    let phases = &runs["wss"]["steps"][0]["phases"];
    assert!(phases.get("connect").is_some() && phases.get("tls").is_some() && phases.get("handshake").is_some(), "{phases}");
    // The WebSocket server got the handshakes (ws and direct; wss on its own server), never the proxy's credentials.
    assert_eq!((ws.seen().len(), wss.seen().len()), (2, 1));
    assert!(ws.seen().iter().chain(wss.seen().iter()).all(|h| h.starts_with("GET /feed") && !h.to_ascii_lowercase().contains("proxy-authorization")), "{:?}", ws.seen());
    // Failures name the proxy and what it did, never its credentials.
    assert_eq!(runs["refused"]["error_type"], "connect", "{stdout}");
    let refused = runs["refused"]["message"].as_str().unwrap();
    assert!(refused.contains(&format!("proxy `http://127.0.0.1:{}` refused CONNECT 127.0.0.1:{}: 407 Proxy Authentication Required", refusing.port(), ws.port())), "{refused}");
    assert_eq!(refusing.seen().len(), 1);
    assert!(refusing.seen()[0].to_ascii_lowercase().contains(&auth), "the URL's credentials were offered");
    assert_eq!(runs["down"]["error_type"], "connect", "{stdout}");
    let down_msg = runs["down"]["message"].as_str().unwrap();
    assert!(down_msg.contains(&format!("proxy `http://127.0.0.1:{down}`: ")) && down_msg.contains("connection refused"), "{down_msg}");
    for secret in [PROXY_PASS, basic(PROXY_USER, PROXY_PASS).as_str()] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "`{secret}` leaked: {stdout}\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `crl_file` with verification off would never find a certificate
/// revoked: `vantage check` says so at the `crl_file` value's file:line:column.
#[test]
fn a_crl_file_with_verification_off_is_a_check_error() {
    let dir = common::tempdir();
    let probes = dir.join("p.yaml");
    std::fs::write(
        &probes,
        "journeys:\n  - name: j\n    interval: 60s\n    steps:\n      - name: page\n        http: {url: \"https://a.test/\", tls_verify: false, crl_file: crl.pem}\n      - name: cert\n        tls: {address: \"a.test:443\", verify: false, crl_file: crl.pem}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&probes).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    let file = probes.display();
    for (at, key) in [("6:69", "http.crl_file"), ("8:63", "tls.crl_file")] {
        let want = format!("{file}:{at}: journey `j`, step `{}`: `{key}`: a CRL cannot be checked when certificate verification is off (`tls_verify: false`/`verify: false`): no certificate would ever be found revoked; remove `crl_file` or turn verification on", if key.starts_with("http") { "page" } else { "cert" });
        assert!(text.contains(&want), "expected `{want}` in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A failed TLS handshake keeps the phases before it: `vantage once --format
/// json` prints `dns` and `connect` for the http and tls steps (a name, so
/// there is a lookup; the self-signed certificate is not trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_failure_still_reports_dns_and_connect() {
    let cert = test_cert();
    let tls = hostile(Some(&cert)).await;
    let dir = common::tempdir();
    let probes = dir.join("p.yaml");
    std::fs::write(
        &probes,
        format!(
            "journeys:\n  - name: page\n    interval: 60s\n    steps:\n      - name: s\n        http: {{url: \"https://localhost:{p}/ok\", proxy: none}}\n\
             \x20 - name: cert\n    interval: 60s\n    steps:\n      - name: s\n        tls: {{address: \"localhost:{p}\"}}\n",
            p = tls.port()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json"]).arg(&probes).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 2, "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for r in &runs {
        assert_eq!((r["outcome"].as_str(), r["error_type"].as_str()), (Some("failure"), Some("tls")), "{r}");
        let phases = r["steps"][0]["phases"].as_object().unwrap();
        let names: Vec<&str> = phases.keys().map(String::as_str).collect();
        assert!(names.contains(&"dns") && names.contains(&"connect") && !names.contains(&"ttfb"), "{r}");
        for p in ["dns", "connect"] {
            let ms = phases[p].as_f64().unwrap();
            assert!((0.0..10_000.0).contains(&ms), "{p} = {ms} ms: {r}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Bad `proxy:` settings are `check` errors at their file:line:column, never
/// repeating a password.
#[test]
fn bad_proxy_settings_are_check_errors_with_their_location() {
    let dir = common::tempdir();
    let path = dir.join("agent.yaml");
    std::fs::write(&path, "id: a\nproxy:\n  url: \"socks5://u:hunter2hunter@p.test:1080\"\n  credentials: ../shadow\n  no_proxy: [\"a b\"]\n").unwrap();
    let diags: Vec<String> = vantage::config::parse_agent(&path).unwrap_err().iter().map(|d| d.to_string()).collect();
    let file = path.display().to_string();
    assert_eq!(diags.len(), 3, "{diags:?}");
    assert!(diags[0].starts_with(&format!("{file}:3:8: `proxy.url`: expected `none` or an http://host:port proxy URL, got `socks5://u:[REDACTED]@p.test:1080`")), "{diags:?}");
    assert!(diags[1].starts_with(&format!("{file}:4:16: `proxy.credentials`: expected a file name in the credentials directory")), "{diags:?}");
    assert!(diags[2].starts_with(&format!("{file}:5:13: `proxy.no_proxy`: expected host names")), "{diags:?}");
    std::fs::write(&path, "proxy: ftp://p.test\n").unwrap();
    let diags: Vec<String> = vantage::config::parse_agent(&path).unwrap_err().iter().map(|d| d.to_string()).collect();
    assert!(diags[0].starts_with(&format!("{file}:1:8: `proxy`: expected `none` or an http://host:port proxy URL, got `ftp://p.test`")), "{diags:?}");

    let probes = dir.join("p.yaml");
    std::fs::write(&probes, "journeys:\n  - name: j\n    interval: 60s\n    steps:\n      - name: s\n        http: {url: \"http://a.test/\", proxy: {url: \"http://u:hunter2hunter@p.test:3128/path\", typo: 1}}\n").unwrap();
    let diags: Vec<String> = vantage::config::load(None, std::slice::from_ref(&probes)).unwrap_err().iter().map(|d| d.to_string()).collect();
    assert!(diags.iter().any(|d| d.starts_with(&format!("{}:6:", probes.display())) && d.contains("typo")), "{diags:?}");
    std::fs::write(&probes, "journeys:\n  - name: j\n    interval: 60s\n    steps:\n      - name: s\n        http: {url: \"http://a.test/\", proxy: {url: \"http://u:hunter2hunter@p.test:3128/path\", credentials: c}}\n").unwrap();
    let diags: Vec<String> = vantage::config::load(None, std::slice::from_ref(&probes)).unwrap_err().iter().map(|d| d.to_string()).collect();
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert!(diags[0].starts_with(&format!("{}:6:52: journey `j`, step `s`: `http.proxy.url`: expected a proxy URL without a path", probes.display())), "{diags:?}");
    assert!(diags[1].contains("`http.proxy.credentials`: give the proxy's credentials either in the URL or in `credentials`, not both"), "{diags:?}");
    assert!(diags.iter().all(|d| !d.contains("hunter2hunter")), "{diags:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A `tls` and an `http` step against `port`, trusting `ca`, with `extra` step fields.
fn tls_journey(port: u16, ca: &std::path::Path, extra: &str) -> Journey {
    journey(&format!(
        "      - name: cert\n        tls: {{address: \"127.0.0.1:{port}\", ca_file: \"{ca}\"{extra}}}\n\
         \x20     - name: page\n        http: {{url: \"https://127.0.0.1:{port}/ok\", ca_file: \"{ca}\", proxy: none{extra}}}\n",
        ca = ca.display()
    ))
}

#[track_caller]
fn assert_no_debug_output(m: &str) {
    assert!(!m.contains("Context") && !m.contains("InvalidCertificate") && !m.contains('{'), "library debug output: {m}");
}

/// A leaf signed with SHA-1, or by a CA with a 1024-bit RSA key (both made by
/// openssl): the failure says so in words, for `tls` and `http` steps.
#[tokio::test]
async fn weak_signatures_and_weak_issuer_keys_are_named() {
    let sha1 = openssl_cert(2048, "sha1");
    let s = hostile(Some(&sha1)).await;
    let j = tls_journey(s.port(), &sha1.pem_path, "");
    let r = run(&j, &env()).await;
    assert_fails(&r, ErrorType::Tls, &["step `cert`: TLS handshake with `127.0.0.1` failed: the certificate of `127.0.0.1` is not trusted: the server's certificate is signed with SHA-1 (sha1WithRSAEncryption), a weak signature algorithm that is no longer accepted"]);
    assert_no_debug_output(r.message.as_deref().unwrap());
    let r = run(&journey(&format!("      - name: page\n        http: {{url: \"https://127.0.0.1:{}/ok\", ca_file: \"{}\", proxy: none}}\n", s.port(), sha1.pem_path.display())), &env()).await;
    assert_fails(&r, ErrorType::Tls, &["signed with SHA-1 (sha1WithRSAEncryption), a weak signature algorithm"]);
    assert_eq!(r.steps[0].phases.iter().map(|p| p.name).collect::<Vec<_>>(), ["connect"], "connect is kept");

    let weak_ca = openssl_cert(1024, "sha256");
    let s = hostile(Some(&weak_ca)).await;
    let r = run(&tls_journey(s.port(), &weak_ca.pem_path, ""), &env()).await;
    assert_fails(&r, ErrorType::Tls, &["the certificate of `127.0.0.1` is not trusted: its issuer `CN=Vantage weak test CA` signs with a 1024-bit RSA key, too weak to be accepted (at least 2048 bits)"]);
    assert_no_debug_output(r.message.as_deref().unwrap());

    // The same tooling with SHA-256 and a 2048-bit CA passes: the weakness is what fails.
    let fine = openssl_cert(2048, "sha256");
    let s = hostile(Some(&fine)).await;
    assert_ok(&run(&tls_journey(s.port(), &fine.pem_path, ""), &env()).await);
    for c in [sha1, weak_ca, fine] {
        let _ = std::fs::remove_dir_all(c.pem_path.parent().unwrap());
    }
}

/// `crl_file`: a leaf on its issuer's CRL fails as revoked (tls and http
/// steps); one that is not on it passes; without the CRL both pass.
#[tokio::test]
async fn a_certificate_on_the_crl_is_revoked() {
    let pki = revocation_pki();
    let revoked = hostile(Some(&pki.revoked)).await;
    let good = hostile(Some(&pki.good)).await;
    let crl = format!(", crl_file: \"{}\"", pki.crl_pem.display());
    let r = run(&tls_journey(revoked.port(), &pki.ca_pem, &crl), &env()).await;
    assert_fails(&r, ErrorType::Tls, &["step `cert`: TLS handshake with `127.0.0.1` failed: the certificate of `127.0.0.1` (serial 2a) has been revoked by its issuer"]);
    assert_no_debug_output(r.message.as_deref().unwrap());
    let page = format!("      - name: page\n        http: {{url: \"https://127.0.0.1:{}/ok\", ca_file: \"{}\", proxy: none{crl}}}\n", revoked.port(), pki.ca_pem.display());
    assert_fails(&run(&journey(&page), &env()).await, ErrorType::Tls, &["has been revoked by its issuer"]);
    assert_ok(&run(&tls_journey(good.port(), &pki.ca_pem, &crl), &env()).await);
    assert_ok(&run(&tls_journey(revoked.port(), &pki.ca_pem, ""), &env()).await);
    // A CRL file that is not one is a config failure naming it.
    let r = run(&tls_journey(good.port(), &pki.ca_pem, &format!(", crl_file: \"{}\"", pki.ca_pem.display())), &env()).await;
    assert_fails(&r, ErrorType::Config, &["CRL file `", "ca.pem`"]);
    let _ = std::fs::remove_dir_all(pki.ca_pem.parent().unwrap());
}

/// Retries through the real binary and a real collector: a target that fails
/// once then recovers makes one successful run that needed a retry; one that
/// always fails makes one failed run (not one per attempt) with the last
/// attempt's message. Each attempt has its own root span, tied by the run id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_the_agent_count_each_run_once() {
    let recovers = flaky(1).await;
    let broken = flaky(u32::MAX).await;
    let col = Collector::start();
    let dir = common::tempdir();
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(&agent_yaml, "id: t\nlocation: test-1\nadmin: {listen: \"\"}\n").unwrap();
    let probes = dir.join("p.yaml");
    let j = |name: &str, port: u16| {
        format!("  - name: {name}\n    interval: 60s\n    timeout: 5s\n    retries: {{attempts: 3, delay: 100ms}}\n    steps:\n      - name: get\n        http: {{url: \"http://127.0.0.1:{port}/x\", proxy: none}}\n        assert: {{body_contains: recovered}}\n")
    };
    std::fs::write(&probes, format!("journeys:\n{}{}", j("recovers", recovers.port()), j("broken", broken.port()))).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent_yaml).arg(&probes).args(["--otlp-endpoint", &col.grpc_endpoint()]).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 2, "one result per run, not per attempt: {stdout}");
    let (ok, bad) = (&runs[0], &runs[1]);
    assert_eq!((ok["journey"].as_str(), ok["outcome"].as_str(), ok["attempts"].as_u64(), ok["retried"].as_bool()), (Some("recovers"), Some("success"), Some(2), Some(true)), "{stdout}");
    let earlier = ok["failed_attempts"].as_array().unwrap();
    assert_eq!(earlier.len(), 1, "{stdout}");
    assert!(earlier[0].as_str().unwrap().starts_with("attempt 1: http_status: step `get`: ") && earlier[0].as_str().unwrap().contains("got 503"), "{stdout}");
    assert_eq!((bad["journey"].as_str(), bad["outcome"].as_str(), bad["error_type"].as_str(), bad["attempts"].as_u64()), (Some("broken"), Some("failure"), Some("http_status"), Some(3)), "{stdout}");
    assert!(bad["message"].as_str().unwrap().contains("got 503 (body: not yet    3)"), "the last attempt's message: {stdout}");
    assert_eq!(bad["failed_attempts"].as_array().unwrap().len(), 2, "{stdout}");
    assert_eq!((recovers.seen().len(), broken.seen().len()), (2, 3), "attempts made");

    let wait = Duration::from_secs(15);
    let last = |name: &str, journey: &str, want: &[(&str, &str)]| -> f64 {
        let pts = col.wait_for_metric(name, |p| p.attributes.get("journey.name").map(String::as_str) == Some(journey) && want.iter().all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v)), wait);
        pts.last().unwrap().value.unwrap()
    };
    assert_eq!(last("synthetics.journey.runs", "recovers", &[("outcome", "success")]), 1.0);
    assert_eq!(last("synthetics.journey.runs", "recovers", &[("outcome", "failure"), ("error.type", "http_status")]), 0.0, "the failed attempt is not a run");
    assert_eq!(last("synthetics.journey.runs", "broken", &[("outcome", "failure"), ("error.type", "http_status")]), 1.0, "three attempts, one failed run");
    assert_eq!(last("synthetics.journey.retried", "recovers", &[("result", "recovered")]), 1.0);
    assert_eq!(last("synthetics.journey.retried", "broken", &[("result", "failed")]), 1.0);

    // 5 attempts: a root span and a step span each.
    let spans = distinct_spans(&col, 10);
    for (journey, attempts, run) in [("recovers", 2, ok), ("broken", 3, bad)] {
        let mut roots: Vec<_> = spans.iter().filter(|s| s.name == format!("journey {journey}") && s.parent_span_id.is_none()).collect();
        // An export retried after a slow acknowledgement delivers a span twice (at least once): count span ids.
        roots.sort_by_key(|s| (s.attributes.get("synthetics.run.attempt").cloned(), s.span_id.clone()));
        roots.dedup_by_key(|s| s.span_id.clone());
        let numbers: Vec<&str> = roots.iter().map(|s| s.attributes["synthetics.run.attempt"].as_str()).collect();
        let want: Vec<String> = (1..=attempts).map(|i| i.to_string()).collect();
        assert_eq!(numbers, want, "{journey}: {roots:?}");
        assert!(roots.iter().all(|s| s.attributes["synthetics.run.id"] == run["run_id"].as_str().unwrap()), "{journey}: one run id for all attempts: {roots:?}");
        // Each attempt has a trace of its own; the first one's is the run id; the run reports its last one's.
        let traces: std::collections::BTreeSet<&str> = roots.iter().map(|s| s.trace_id.as_str()).collect();
        assert_eq!(traces.len(), attempts, "{journey}: {roots:?}");
        assert_eq!(roots[0].trace_id, run["run_id"].as_str().unwrap(), "{journey}");
        assert_eq!(roots[attempts - 1].trace_id, run["trace_id"].as_str().unwrap(), "{journey}");
        for (i, s) in roots.iter().enumerate() {
            let failed = s.status_code == "STATUS_CODE_ERROR";
            assert_eq!(failed, journey == "broken" || i == 0, "{journey} attempt {}: {}", i + 1, s.status_code);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Through the binary and a real collector: the span records the HTTP version
/// used (`2` through ALPN, `1.1`), and a certificate failure is the step's
/// message only, not also an ERROR/WARN line of the TLS libraries on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_record_the_http_version_and_tls_failures_stay_out_of_the_log() {
    let cert = test_cert();
    let h2 = h2_only(Some(&cert)).await;
    let h1 = hostile(None).await;
    let selfsigned = hostile(Some(&cert)).await;
    let col = Collector::start();
    let dir = common::tempdir();
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(&agent_yaml, "id: t\nadmin: {listen: \"\"}\n").unwrap();
    let probes = dir.join("p.yaml");
    let j = |name: &str, url: String, extra: &str| format!("  - name: {name}\n    interval: 60s\n    steps:\n      - name: get\n        http: {{url: \"{url}\", proxy: none{extra}}}\n");
    std::fs::write(
        &probes,
        format!(
            "journeys:\n{}{}{}",
            j("h2", format!("https://127.0.0.1:{}/a", h2.port()), ", tls_verify: false"),
            j("h1", format!("http://127.0.0.1:{}/ok", h1.port()), ""),
            j("badcert", format!("https://127.0.0.1:{}/ok", selfsigned.port()), "")
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent_yaml).arg(&probes).args(["--otlp-endpoint", &col.grpc_endpoint()]).env_remove("VANTAGE_LOG").env_remove("RUST_LOG").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect::<Vec<_>>(), ["success", "success", "failure"], "{stdout}");
    assert!(runs[2]["message"].as_str().unwrap().contains("is self-signed"), "{stdout}");
    for noise in ["Sending fatal alert", "failed to verify TLS certificate", "rustls", "BadCertificate", "UnknownIssuer"] {
        assert!(!stderr.contains(noise), "`{noise}` in the agent's log:\n{stderr}");
    }
    let spans = distinct_spans(&col, 6);
    let version = |trace: &serde_json::Value| spans.iter().find(|s| s.name == "step get" && s.trace_id == trace.as_str().unwrap()).map(|s| s.attributes.get("network.protocol.version").cloned());
    assert_eq!(version(&runs[0]["trace_id"]), Some(Some("2".to_string())), "{spans:?}");
    assert_eq!(version(&runs[1]["trace_id"]), Some(Some("1.1".to_string())), "{spans:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A wss:// server with a private certificate: trusted through the step's
/// `ca_file`, accepted unverified with `tls_verify: false`, and without either
/// a `tls` failure that says why, the same words as for `http` steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_steps_take_a_private_ca_or_skip_verification() {
    let cert = test_cert();
    let wss = ws_echo(Some(&cert)).await;
    let dir = common::tempdir();
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(&agent_yaml, "id: t\nadmin: {listen: \"\"}\n").unwrap();
    let url = format!("wss://127.0.0.1:{}/feed", wss.port());
    let j = |name: &str, extra: &str| {
        format!("  - name: {name}\n    interval: 60s\n    steps:\n      - name: echo\n        websocket: {{connect: \"{url}\", send: hello, receive: 2s, proxy: none{extra}}}\n        assert: {{body_contains: hello}}\n")
    };
    let probes = dir.join("p.yaml");
    let ca = format!(", ca_file: \"{}\"", cert.pem_path.display());
    std::fs::write(&probes, format!("journeys:\n{}{}{}", j("pinned", &ca), j("unverified", ", tls_verify: false"), j("untrusted", ""))).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent_yaml).arg(&probes).env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR").env_remove("VANTAGE_LOG").env_remove("RUST_LOG").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let runs: HashMap<String, serde_json::Value> = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).map(|v| (v["journey"].as_str().unwrap().to_string(), v)).collect();
    assert_eq!(runs.len(), 3, "{stdout}\n{stderr}");
    assert_eq!((runs["pinned"]["outcome"].as_str(), runs["unverified"]["outcome"].as_str()), (Some("success"), Some("success")), "{stdout}");
    assert_eq!((runs["untrusted"]["outcome"].as_str(), runs["untrusted"]["error_type"].as_str()), (Some("failure"), Some("tls")), "{stdout}");
    let msg = runs["untrusted"]["message"].as_str().unwrap();
    assert!(msg.starts_with("step `echo`: TLS handshake with `127.0.0.1` failed: the certificate of `127.0.0.1` is self-signed (`CN=rcgen self signed cert`) and not trusted: add it to `ca_file`, or set `tls_verify: false`"), "{msg}");
    // Only the two that connected reached the server's WebSocket handshake.
    assert_eq!(wss.seen().len(), 2, "{:?}", wss.seen());
    for noise in ["Sending fatal alert", "rustls", "BadCertificate", "UnknownIssuer"] {
        assert!(!stderr.contains(noise) && !msg.contains(noise), "`{noise}` in the output:\n{stderr}\n{msg}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
