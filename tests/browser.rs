//! Browser steps against real headless Chromium and chromedriver (no mocks),
//! driven through the public pipeline: `compile_files` → `run_journey`, with
//! a `RunEnv` from `daemon::build_env`. A tiny loopback axum server mimics the
//! demo service's `/login` → `/incidents/timeline` flow.
//!
//! Chromium missing is a failure, never a skip: every test panics with the
//! install command (`.ci/install-test-deps` installs it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;

use vantage::browser::{missing_binaries, procs};
use vantage::config::validate::compile_files;
use vantage::config::{AgentConfig, Journey};
use vantage::runner::context::RunEnv;
use vantage::runner::result::{ErrorType, Outcome, RunResult};

/// Browser tests share the machine's processes: one at a time, so the process counts are ours.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_chromium() {
    if let Some(m) = missing_binaries(Path::new("/usr/bin/chromedriver"), Path::new("/usr/bin/chromium")) {
        panic!("{m}. For the tests: run `.ci/install-test-deps` (it runs `apt-get install -y chromium chromium-driver`)");
    }
}

const LOGIN: &str = r#"<!doctype html><title>Sign in</title>
<form method="post" action="/login">
  <input id="username" name="username"><input id="password" name="password" type="password">
  <select id="plan" name="plan"><option value="solo">Solo</option><option value="team">Team</option></select>
  <button id="login-submit" type="submit">Sign in</button>
</form>"#;

fn timeline(render: bool) -> String {
    let script = if render {
        r#"setTimeout(() => {
  fetch('/api/incidents').then(r => r.json()).then(list => {
    const ul = document.getElementById('timeline');
    for (const i of list) { const li = document.createElement('li'); li.dataset.incidentId = i.id; li.textContent = i.title; ul.appendChild(li); }
    performance.mark('timeline-rendered');
    document.getElementById('ws-state').textContent = 'connected';
  });
}, 150);"#
    } else {
        "console.error('timeline: backend unavailable');"
    };
    format!(
        r#"<!doctype html><title>Incident timeline</title><h1>Timeline</h1>
<span id="ws-state">connecting</span><ul id="timeline" elementtiming="timeline"></ul><script>{script}</script>"#
    )
}

async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/login", get(|| async { Html(LOGIN) }))
        .route(
            "/login",
            post(|Form(f): Form<HashMap<String, String>>| async move {
                if f.get("username").map(String::as_str) == Some("oncall@demo.test") && f.get("password").map(String::as_str) == Some("hunter2-secret") {
                    Redirect::to("/incidents/timeline").into_response()
                } else {
                    Html("<title>Denied</title><p id=error>wrong password</p>").into_response()
                }
            }),
        )
        .route("/incidents/timeline", get(|| async { Html(timeline(true)) }))
        .route("/broken/timeline", get(|| async { Html(timeline(false)) }))
        .route("/api/incidents", get(|| async { Json(serde_json::json!([{ "id": "inc-1", "title": "Checkout latency" }, { "id": "inc-2", "title": "DNS" }])) }))
        .route("/api/incident", get(|| async { Json(serde_json::json!({ "id": "inc-1" })) }))
        .route("/api/echo", get(|Query(q): Query<HashMap<String, String>>| async move { Json(q) }))
        .route("/failing/timeline", get(|| async { Html("<!doctype html><title>Incident timeline</title><ul id=timeline></ul><script>fetch('/api/timeline').then(r => r.json()).then(() => {}).catch(e => console.error('timeline: ' + e));</script>") }))
        .route("/api/timeline", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Setup {
    env: Arc<RunEnv>,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(edit: impl FnOnce(&mut AgentConfig)) -> Setup {
    let dir = std::env::temp_dir().join(format!("vantage-browser-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    std::fs::write(dir.join("creds/password"), "hunter2-secret\n").unwrap();
    let mut agent = AgentConfig {
        credentials_dir: Some(dir.join("creds")),
        artifacts_dir: Some(dir.join("artifacts")),
        step_timeout: vantage::config::Dur(Duration::from_secs(10)),
        ..Default::default()
    };
    edit(&mut agent);
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("test");
    let env = vantage::daemon::build_env(&agent, tracer, None, HashMap::new()).unwrap();
    Setup { env: Arc::new(env), dir }
}

fn compile(yaml: &str) -> Vec<Journey> {
    compile_files(&[(PathBuf::from("browser-test.yaml"), yaml.to_string())]).unwrap_or_else(|d| panic!("probe does not compile: {d:#?}"))
}

async fn run(j: &Journey, env: &Arc<RunEnv>) -> RunResult {
    vantage::runner::run_journey(j, env.clone(), &CancellationToken::new()).await.expect("not cancelled")
}

fn journeys(base: &str) -> Vec<Journey> {
    compile(&format!(
        r##"
journeys:
  - name: timeline
    interval: 60s
    timeout: 45s
    vars:
      base: "{base}"
    steps:
      - name: find incident
        http: {{ url: "${{base}}/api/incident" }}
        assert: {{ status: 200 }}
        extract: {{ incident_id: {{ json: "$.id" }} }}
      - name: open login
        browser: {{ navigate: "${{base}}/login" }}
        assert: {{ status: 200 }}
      - name: user
        browser: {{ fill: {{ selector: "#username", text: "oncall@demo.test" }} }}
      - name: password
        browser: {{ fill: {{ selector: "#password", text: "${{secret.password}}" }} }}
      - name: plan
        browser: {{ select: {{ selector: "#plan", value: team }} }}
      - name: submit
        browser: {{ click: "#login-submit" }}
      - name: incident shown
        browser: {{ wait_for: {{ selector: "li[data-incident-id='${{incident_id}}']", within: 10s }} }}
      - name: on timeline
        browser: {{ assert: {{ url_contains: /incidents/timeline }} }}
      - name: live
        browser: {{ assert: {{ selector: "#ws-state", text: connected }} }}
      - name: heading visible
        browser: {{ assert: {{ selector: h1, visible: true }} }}
      - name: render time
        browser: {{ eval: "return performance.getEntriesByName('timeline-rendered')[0]?.startTime" }}
        extract: {{ render_ms: {{ json: "$" }} }}
      - name: report
        http: {{ url: "${{base}}/api/echo?render_ms=${{render_ms}}&incident=${{incident_id}}" }}
        assert:
          json:
            - {{ path: "$.incident", equals: inc-1 }}
      - name: snap
        browser: {{ screenshot: timeline }}
  - name: broken timeline
    interval: 60s
    timeout: 30s
    steps:
      - name: open timeline
        browser: {{ navigate: "{base}/broken/timeline" }}
      - name: incident shown
        browser: {{ wait_for: {{ selector: "li[data-incident-id='inc-1']", within: 2s }} }}
  - name: slow wait
    interval: 60s
    timeout: 30s
    steps:
      - name: open timeline
        browser: {{ navigate: "{base}/broken/timeline" }}
      - name: never
        browser: {{ wait_for: {{ text: "never there", within: 15s }} }}
"##
    ))
}

fn by_name<'a>(js: &'a [Journey], name: &str) -> &'a Journey {
    js.iter().find(|j| j.name == name).unwrap()
}

fn describe(r: &RunResult) -> String {
    vantage::output::text(r)
}

/// Live chromedriver/Chromium processes descended from this test process.
fn browser_processes() -> Vec<u32> {
    procs::descendants(std::process::id())
        .into_iter()
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = comm.trim();
            comm.starts_with("chrom") || comm == "headless_shell"
        })
        .collect()
}

/// Waits (briefly) for the process count to drop to `want`.
async fn settle(want: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = browser_processes().len();
        if n <= want || start.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_http_and_browser_journey_passes_and_shares_variables() {
    let _g = SERIAL.lock().await;
    require_chromium();
    let addr = serve().await;
    let s = setup(|_| {});
    let js = journeys(&format!("http://{addr}"));
    let r = run(by_name(&js, "timeline"), &s.env).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", describe(&r));
    let open = r.steps.iter().find(|s| s.name == "open login").unwrap();
    let phases: Vec<&str> = open.phases.iter().map(|p| p.name).collect();
    for p in ["session_start", "ttfb", "dom_content_loaded", "load", "fcp"] {
        assert!(phases.contains(&p), "navigate lacks phase {p}: {phases:?}");
    }
    let session = open.phases.iter().find(|p| p.name == "session_start").unwrap().duration;
    assert!(session < Duration::from_secs(5), "session start took {session:?}");
    let wait = r.steps.iter().find(|s| s.name == "incident shown").unwrap();
    assert!(wait.phases.iter().any(|p| p.name == "wait_selector"), "{:?}", wait.phases);
    // The secret typed into the form never shows up in results.
    assert!(!describe(&r).contains("hunter2-secret"));
    let shots: Vec<_> = std::fs::read_dir(s.dir.join("artifacts")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(shots.iter().any(|p| p.to_string_lossy().ends_with("-timeline.png")), "{shots:?}");
    s.env.browser().shutdown().await;
    assert_eq!(settle(0).await, 0, "browser processes left after shutdown: {:?}", browser_processes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_that_never_renders_fails_with_browser_error_and_screenshot() {
    let _g = SERIAL.lock().await;
    require_chromium();
    let addr = serve().await;
    let s = setup(|_| {});
    let js = journeys(&format!("http://{addr}"));
    let r = run(by_name(&js, "broken timeline"), &s.env).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.error_type, Some(ErrorType::Browser), "{}", describe(&r));
    let msg = r.message.clone().unwrap();
    assert!(msg.contains("expected `li[data-incident-id='inc-1']` to appear within 2.00s; it did not"), "{msg}");
    assert!(msg.contains("/broken/timeline") && msg.contains("Incident timeline"), "page URL and title missing: {msg}");
    assert!(msg.contains("timeline: backend unavailable"), "console error missing: {msg}");
    let path = msg.split("screenshot: ").nth(1).expect("screenshot path in the message").trim();
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("screenshot {path}: {e}"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(path.starts_with(s.dir.join("artifacts").to_str().unwrap()));
    let notes = std::fs::read_to_string(Path::new(path).with_extension("txt")).unwrap();
    assert!(notes.contains("timeline: backend unavailable"), "{notes}");
    s.env.browser().shutdown().await;
    assert_eq!(settle(0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_chromedriver_fails_that_run_and_the_next_run_passes() {
    let _g = SERIAL.lock().await;
    require_chromium();
    let addr = serve().await;
    let tmp_before = chromium_temp_dirs();
    let s = setup(|_| {});
    let js = journeys(&format!("http://{addr}"));
    let env = s.env.clone();
    let slow = tokio::spawn({
        let (env, base) = (env.clone(), format!("http://{addr}"));
        async move { run(by_name(&journeys(&base), "slow wait"), &env).await }
    });
    // Wait until the run's session exists and it is waiting, then kill chromedriver's whole group.
    let start = Instant::now();
    let pid = loop {
        if let (Some(pid), (1, _)) = (env.browser().driver_pid(), env.browser().counts()) {
            break pid;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no browser session started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    procs::kill_group(pid, procs::SIGKILL);
    let r = slow.await.unwrap();
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.error_type, Some(ErrorType::Browser), "{}", describe(&r));
    assert!(r.message.as_deref().unwrap_or_default().contains("chromedriver"), "{}", describe(&r));
    let r = run(by_name(&js, "timeline"), &env).await;
    assert_eq!(r.outcome, Outcome::Success, "the run after the kill: {}", describe(&r));
    assert_eq!(env.browser().counts().1, 2, "a new chromedriver was started");
    env.browser().shutdown().await;
    assert_eq!(settle(0).await, 0);
    // A killed Chromium cannot remove its singleton socket directory: it
    // went to chromedriver's own TMPDIR, removed with the driver.
    let left: Vec<String> = chromium_temp_dirs().into_iter().filter(|d| !tmp_before.contains(d)).collect();
    assert!(left.is_empty(), "left in {}: {left:?}", std::env::temp_dir().display());
}

/// Chromium's and the agent's chromedriver directories in the temp dir.
fn chromium_temp_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("org.chromium.") || n.starts_with("vantage-chromedriver-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_processes_left_after_twenty_runs_and_shutdown() {
    let _g = SERIAL.lock().await;
    require_chromium();
    let addr = serve().await;
    let baseline = browser_processes().len();
    let s = setup(|a| a.browser.restart_after_sessions = 5);
    let js = journeys(&format!("http://{addr}"));
    for i in 0..20 {
        // Mostly passing runs, some failing ones (their failure path saves artifacts).
        let j = if i % 5 == 4 { by_name(&js, "broken timeline") } else { by_name(&js, "timeline") };
        let r = run(j, &s.env).await;
        let want = if i % 5 == 4 { Outcome::Failure } else { Outcome::Success };
        assert_eq!(r.outcome, want, "run {i}: {}", describe(&r));
    }
    let (sessions, drivers) = s.env.browser().counts();
    assert_eq!(sessions, 20);
    assert!(drivers >= 4, "chromedriver restarted every 5 sessions: {drivers} started");
    // Between runs only the idle chromedriver remains.
    let after_runs = settle(baseline + 1).await;
    assert_eq!(after_runs, baseline + 1, "after 20 runs: {:?}", browser_processes());
    s.env.browser().shutdown().await;
    assert_eq!(settle(baseline).await, baseline, "after shutdown: {:?}", browser_processes());
    let profiles: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vantage-chromium-"))
        .collect();
    assert!(profiles.is_empty(), "profiles left: {profiles:?}");
}

#[tokio::test]
async fn missing_chromium_fails_browser_steps_with_the_install_command() {
    let s = setup(|a| a.browser.chromium = "/nonexistent/chromium".into());
    let js = journeys("http://127.0.0.1:9");
    let r = run(by_name(&js, "broken timeline"), &s.env).await;
    assert_eq!(r.error_type, Some(ErrorType::Browser), "{}", describe(&r));
    let msg = r.message.unwrap();
    assert!(msg.contains("apt-get install chromium chromium-driver") && msg.contains("/nonexistent/chromium"), "{msg}");
    let m = vantage::browser::missing_for(&vantage::config::BrowserConfig { chromium: "/nonexistent/chromium".into(), ..Default::default() }, &js).unwrap();
    assert!(m.contains("apt-get install chromium chromium-driver"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_names_the_request_that_failed_in_plain_words() {
    let _g = SERIAL.lock().await;
    require_chromium();
    let addr = serve().await;
    let s = setup(|_| {});
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let js = compile(&format!(
        r##"
journeys:
  - name: failing api
    interval: 60s
    timeout: 30s
    steps:
      - name: open
        browser: {{navigate: "http://{addr}/failing/timeline"}}
      - name: first incident
        browser: {{wait_for: {{selector: "#timeline li", within: 2s}}}}
  - name: refused
    interval: 60s
    timeout: 30s
    steps:
      - name: open
        browser: {{navigate: "http://{refused}/"}}
"##
    ));
    let r = run(by_name(&js, "failing api"), &s.env).await;
    assert_eq!(r.outcome, Outcome::Failure);
    let msg = r.message.clone().unwrap();
    let named = format!("expected `#timeline li` to appear within 2.00s; it did not (no element matched); GET http://{addr}/api/timeline returned 500 (page http://{addr}/failing/timeline");
    assert!(msg.contains(&named), "{msg}");
    assert!(!msg.contains("Failed to load resource"), "{msg}");
    let r = run(by_name(&js, "refused"), &s.env).await;
    assert_eq!(r.outcome, Outcome::Failure);
    let msg = r.message.clone().unwrap();
    assert!(msg.contains(&format!("loading http://{refused}/: the page did not load: connection refused")), "{msg}");
    assert!(!msg.contains("unknown error") && !msg.contains("net::ERR_"), "{msg}");
    s.env.browser().shutdown().await;
    assert_eq!(settle(0).await, 0);
}
