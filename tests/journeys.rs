//! The shipped journeys (probes/) against the embedded demo service: each
//! passes, each fails with the right error.type and message when the matching
//! fault is injected, cleanup leaves nothing behind, telemetry reaches a real
//! collector, and `vantage demo` runs them all.

mod common;

use common::free_port;

use std::sync::Arc;
use std::time::Duration;

use common::collector::Collector;
use vantage::config::{AgentConfig, Journey};
use vantage::demo::live::{demo_journeys, start_demo_env, DemoEnv};
use vantage::runner::context::RunEnv;
use vantage::runner::result::{ErrorType, Outcome, RunResult};
use vantage::steps::callback::CallbackHub;

struct Setup {
    demo: DemoEnv,
    env: Arc<RunEnv>,
    journeys: Vec<Journey>,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let demo = start_demo_env().await.unwrap();
    let agent = AgentConfig { id: "journeys-test".into(), location: "test".into(), credentials_dir: Some(demo.credentials_dir.clone()), ..AgentConfig::default() };
    let hub = CallbackHub::start(format!("127.0.0.1:{}", demo.callback_port).parse().unwrap(), Default::default(), None).await.unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
    let env = Arc::new(vantage::daemon::build_env(&agent, tracer, Some(hub), demo.overrides.clone()).unwrap());
    Setup { journeys: demo_journeys().unwrap(), demo, env, http: reqwest::Client::new() }
}

impl Setup {
    async fn run(&self, name: &str) -> RunResult {
        let j = self.journeys.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no journey {name}"));
        vantage::runner::run_journey(j, self.env.clone(), &Default::default()).await.unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.demo.server.base_url())
    }

    async fn admin(&self, path: &str, body: serde_json::Value) {
        let r = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        self.http.get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    /// No synthetic incident is left open.
    async fn assert_no_open_incidents(&self) {
        let token = self.login_token().await;
        let open: serde_json::Value = self.http.get(self.url("/api/incidents?status=open")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        let left: Vec<&serde_json::Value> = open["incidents"].as_array().unwrap().iter().filter(|i| i["title"].as_str().unwrap_or("").starts_with("Synthetic check")).collect();
        assert!(left.is_empty(), "open synthetic incidents left behind: {left:?}");
    }

    async fn login_token(&self) -> String {
        let password = std::fs::read_to_string(self.demo.credentials_dir.join("demo_password")).unwrap();
        let r: serde_json::Value = self
            .http
            .post(self.url("/api/login"))
            .json(&serde_json::json!({"username": "oncall@demo.test", "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }

    async fn crm_leads(&self) -> Vec<serde_json::Value> {
        self.json("/crm/leads").await["leads"].as_array().unwrap().clone()
    }
}

fn step<'a>(r: &'a RunResult, name: &str) -> &'a vantage::runner::result::StepResult {
    r.steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name} in {:?}", r.steps.iter().map(|s| &s.name).collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_journey_passes_against_the_demo() {
    let s = setup().await;
    for j in &s.journeys {
        let r = s.run(&j.name).await;
        assert_eq!(r.outcome, Outcome::Success, "{}: {:?}", j.name, r.message);
        assert_eq!(r.cleanup_error, None, "{}", j.name);
    }
    // Time to first notification and ACK round-trip are measured from the causing step.
    let r = s.run("incident-lifecycle").await;
    for name in ["notified", "ack echoed"] {
        let st = step(&r, name);
        assert!(st.duration < Duration::from_secs(1), "{name}: {:?}", st.duration);
        assert!(st.phases.iter().any(|p| p.name == "message"));
    }
    let r = s.run("lead-capture").await;
    assert_eq!(step(&r, "lead in CRM").attempts.map(|a| a >= 1), Some(true));
    assert!(step(&r, "webhook received").phases.iter().any(|p| p.name == "callback"));
    assert!(step(&r, "delete test lead").cleanup);
    s.assert_no_open_incidents().await;
    assert!(s.crm_leads().await.is_empty(), "test leads left in the CRM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_crm_worker_fails_lead_capture_naming_the_step_and_attempts_and_leaves_no_lead() {
    let s = setup().await;
    s.admin("/admin/faults/crm", serde_json::json!({"mode": "stall"})).await;
    let r = s.run("lead-capture").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.error_type, Some(ErrorType::Assertion));
    let msg = r.message.clone().unwrap();
    // The configured wait (`within: 20s` in probes/lead-capture.yaml), not the time it took.
    assert!(msg.starts_with("step `lead in CRM`: did not succeed within 20.00s (its `within`): "), "{msg}");
    assert!(msg.contains(" attempts of `find lead`; last attempt: expected JSON path `$.leads[0].email` to equal \"lead+"), "{msg}");
    assert!(step(&r, "lead in CRM").attempts.unwrap() >= 5);
    assert_eq!(step(&r, "delete test lead").outcome, Outcome::Success, "cleanup ran");
    // The stalled lead was tombstoned by the cleanup: it never lands once the worker resumes.
    s.admin("/admin/faults/crm", serde_json::json!({"mode": "normal"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.crm_leads().await.is_empty(), "a test lead landed after cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_dropped_mid_journey_fails_with_websocket_error() {
    let s = setup().await;
    s.admin("/admin/faults/websocket", serde_json::json!({"mode": "drop"})).await;
    let r = s.run("incident-lifecycle").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.error_type, Some(ErrorType::Websocket), "{:?}", r.message);
    let msg = r.message.clone().unwrap();
    assert!(msg.starts_with("step `notified`: connection `timeline` closed by the server (code 1011"), "{msg}");
    assert_eq!(step(&r, "ensure resolved").outcome, Outcome::Success);
    s.assert_no_open_incidents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_that_never_arrives_fails_with_callback_error() {
    let s = setup().await;
    let r = s.http.put(s.url("/admin/webhook")).json(&serde_json::json!({"url": null})).send().await.unwrap();
    assert!(r.status().is_success());
    let r = s.run("lead-capture").await;
    assert_eq!(r.error_type, Some(ErrorType::Callback), "{:?}", r.message);
    let want = format!("step `webhook received`: expected an inbound request carrying the run token on 127.0.0.1:{} within 10.00s, none arrived", s.demo.callback_port);
    assert_eq!(r.message.as_deref(), Some(want.as_str()));
    assert!(s.crm_leads().await.is_empty(), "cleanup deleted the lead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_endpoint_returning_500_fails_with_http_status_and_cleanup_resolves() {
    let s = setup().await;
    s.admin("/admin/faults/http", serde_json::json!({"route": "POST /api/incidents/{id}/ack", "status": 500})).await;
    let r = s.run("incident-lifecycle").await;
    assert_eq!(r.error_type, Some(ErrorType::HttpStatus));
    assert_eq!(r.message.as_deref(), Some("step `ack`: expected status 200, got 500 (body: {\"error\":\"injected fault\"})"));
    assert_eq!(step(&r, "ensure resolved").outcome, Outcome::Success);
    s.assert_no_open_incidents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_login_is_degraded_not_failed() {
    let s = setup().await;
    s.admin("/admin/faults/http", serde_json::json!({"route": "POST /api/login", "latency_ms": 700})).await;
    let r = s.run("login").await;
    assert_eq!(r.outcome, Outcome::Degraded, "{:?}", r.message);
    assert_eq!(step(&r, "api login").outcome, Outcome::Degraded);
    assert!(step(&r, "api login").duration >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_and_malformed_callbacks_are_rejected_and_counted() {
    let s = setup().await;
    let hub = s.env.callbacks().cloned().unwrap();
    let base = format!("http://127.0.0.1:{}", s.demo.callback_port);
    let r = s.http.post(format!("{base}/hooks/crm")).header("x-synthetic-run", "nobody-waits-for-this").body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = s.http.post(format!("{base}/hooks/crm")).body(vec![b'x'; 300 * 1024]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let r = s.http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(hub.counters.unknown_token.load(Relaxed) + hub.counters.no_token.load(Relaxed), 2);
    assert_eq!(hub.counters.too_large.load(Relaxed), 1);
    // The agent still works.
    assert_eq!(s.run("lead-capture").await.outcome, Outcome::Success);
}

/// The real binary: `vantage once` over the shipped probes, telemetry to a real collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_journeys_export_per_step_durations_to_the_collector() {
    let s = setup().await;
    let col = Collector::start();
    let dir = s.demo.credentials_dir.clone();
    let agent = dir.join("agent.yaml");
    let port = free_port();
    std::fs::write(&agent, format!("id: once-test\nlocation: test-1\ncallback: {{listen: \"127.0.0.1:{port}\"}}\n")).unwrap();
    // The demo's webhook points at the in-process hub; the child process has its own listener.
    s.http.put(s.url("/admin/webhook")).json(&serde_json::json!({"url": format!("http://127.0.0.1:{port}/hooks/crm")})).send().await.unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/probes")).args(["--otlp-endpoint", &col.grpc_endpoint()]);
    cmd.env("CREDENTIALS_DIRECTORY", &dir);
    for (k, v) in &s.demo.overrides {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let wait = Duration::from_secs(15);
    for (journey, st) in [("incident-lifecycle", "notified"), ("incident-lifecycle", "ack echoed"), ("lead-capture", "lead in CRM"), ("lead-capture", "webhook received"), ("demo-tls", "certificate"), ("demo-dns", "A record")] {
        let p = col.wait_for_metric("synthetics.step.duration", |p| p.attributes["journey.name"] == journey && p.attributes["step.name"] == st, wait);
        assert_eq!(p[0].count, Some(1), "{journey}/{st}");
        assert_eq!(p[0].attributes["outcome"], "success");
    }
    let cert = col.wait_for_metric("synthetics.tls.cert.remaining", |p| p.attributes["journey.name"] == "demo-tls", wait);
    let days = cert[0].value.unwrap() / 86400.0;
    assert!(days > 89.0 && days <= 90.0, "demo certificate is valid 90 days, got {days}");
    let spans = col.wait_for_spans(|sp| sp.name == "step notified", wait);
    assert_eq!(spans[0].attributes["step.kind"], "websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vantage_demo_runs_every_shipped_journey() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    cmd.args(["demo", "--duration", "32"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for j in ["login", "user-search", "incident-lifecycle", "lead-capture", "demo-dns", "demo-tls"] {
        assert!(stdout.lines().any(|l| l.starts_with(j) && l.contains(" success ")), "{j} did not succeed in:\n{stdout}");
    }
    assert!(stdout.contains(", 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_fails_as_dns() {
    let s = setup().await;
    let dns = s.demo.overrides["VANTAGE_DEMO_DNS"].clone();
    // The agent's own resolver points at the demo's DNS server (loopback only).
    let mut env = vantage::daemon::build_env(&AgentConfig::default(), opentelemetry::trace::TracerProvider::tracer(&opentelemetry_sdk::trace::SdkTracerProvider::builder().build(), "t"), None, Default::default()).unwrap();
    env.set_resolver(vantage::steps::dns::uncached_resolver(Some(dns.parse().unwrap())).unwrap());
    let yaml = format!(
        "journeys:\n  - name: nx\n    interval: 10s\n    steps:\n      - name: fetch\n        http: {{url: \"http://nope.vantage.test:{}/\"}}\n  - name: nx-dns\n    interval: 10s\n    steps:\n      - name: lookup\n        dns: {{name: nope.vantage.test, resolver: \"{dns}\"}}\n",
        s.demo.callback_port
    );
    let js = vantage::config::validate::compile_files(&[("nx.yaml".into(), yaml)]).unwrap();
    let env = Arc::new(env);
    let r = vantage::runner::run_journey(&js[0], env.clone(), &Default::default()).await.unwrap();
    assert_eq!(r.error_type, Some(ErrorType::Dns));
    assert_eq!(r.message.as_deref(), Some("step `fetch`: could not resolve `nope.vantage.test`: no such domain (NXDOMAIN)"));
    let r = vantage::runner::run_journey(&js[1], env, &Default::default()).await.unwrap();
    assert_eq!(r.error_type, Some(ErrorType::Dns));
    assert_eq!(r.message.as_deref(), Some("step `lookup`: expected NOERROR for A nope.vantage.test, got NXDOMAIN"));
}
