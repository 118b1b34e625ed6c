//! From a failing run to the right team's pager, on the real engines: the
//! demo target; three `vantage run` agents as three locations; Debian's
//! Prometheus scraping their `/metrics` with rules from `vantage slo
//! generate` (time-compressed 60x: 1h windows become 1m); Debian's
//! Alertmanager routing by `team` to webhook receivers this test runs.
//! Faults go through the demo's fault API; every assertion reads what a
//! receiver got. Everything listens on loopback and is killed at the end.

mod common;

use common::{free_port, tempdir};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vantage::demo::{DemoOptions, DemoServer};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const INSTALL: &str = "install Debian's prometheus and prometheus-alertmanager (run .ci/install-test-deps)";

/// A child process killed (and reaped) on drop, whatever the test did.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &'static str, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Proc(cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}; {INSTALL}")))
}

/// One notification about one alert, as a receiver got it.
#[derive(Debug, Clone)]
struct Note {
    receiver: String,
    status: String,
    labels: BTreeMap<String, String>,
    summary: String,
    at: Instant,
}

type Notes = Arc<Mutex<Vec<Note>>>;

/// Per-team webhook receivers: POST /hook/{team} with Alertmanager's payload.
async fn receivers(notes: Notes) -> SocketAddr {
    use axum::extract::{Path as P, State};
    use axum::routing::post;
    async fn hook(State(notes): State<Notes>, P(team): P<String>, body: axum::Json<Value>) -> &'static str {
        for a in body["alerts"].as_array().cloned().unwrap_or_default() {
            let labels =
                a["labels"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect()).unwrap_or_default();
            let note = Note {
                receiver: team.clone(),
                status: a["status"].as_str().unwrap_or("").into(),
                labels,
                summary: a["annotations"]["summary"].as_str().unwrap_or("").into(),
                at: Instant::now(),
            };
            notes.lock().unwrap().push(note);
        }
        "ok"
    }
    let app = axum::Router::new().route("/hook/{team}", post(hook)).with_state(notes);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

const PROBES: &str = r#"journeys:
  - name: lead-capture
    interval: 1s
    timeout: 1s
    labels: {team: marketing}
    buckets: [0.5]
    vars:
      base: "${env.VANTAGE_TARGET}"
      email: "lead+${run.id}@synthetic.vantage.test"
    steps:
      - name: submit lead
        http:
          method: POST
          url: "${base}/leads"
          json: {name: Vantage Probe, email: "${email}", company: Vantage Synthetic, plan: team, message: "run ${run.id}"}
        assert: {status: 202}
      - name: lead in CRM
        eventually:
          within: 700ms
          backoff: 50ms
          max_backoff: 100ms
          step:
            name: find lead
            http: {url: "${base}/crm/leads?email=${email | urlencode}"}
            assert:
              json: [{path: "$.leads[0].email", equals: "${email}"}]
    finally:
      - name: delete test lead
        http: {method: DELETE, url: "${base}/crm/leads?email=${email | urlencode}"}
  - name: incident-ack
    interval: 1s
    timeout: 1s
    labels: {team: incident}
    vars:
      base: "${env.VANTAGE_TARGET}"
    steps:
      - name: login
        http:
          method: POST
          url: "${base}/api/login"
          json: {username: "oncall@demo.test", password: "correct-horse-battery"}
        extract:
          token: {json: "$.token"}
      - name: create incident
        http:
          method: POST
          url: "${base}/api/alerts"
          headers: {x-integration-key: demo-integration-key}
          json: {title: "Synthetic ${run.id}", severity: critical, source: vantage, dedup_key: "vantage-${run.id}"}
        assert: {status: 201}
        extract:
          incident_id: {json: "$.incident.id"}
      - name: ack
        http:
          method: POST
          url: "${base}/api/incidents/${incident_id}/ack"
          headers: {authorization: "Bearer ${token}"}
        assert: {status: 200}
    finally:
      - name: resolve
        http:
          method: POST
          url: "${base}/api/incidents/${incident_id}/resolve"
          headers: {authorization: "Bearer ${token}"}
"#;

fn agent_config(dir: &Path, location: &str, admin: &str) -> PathBuf {
    let p = dir.join(format!("agent-{location}.yaml"));
    let cfg = format!(
        "id: agent-{location}\nlocation: {location}\nprobes: [probes]\nshutdown_grace: 1s\nadmin: {{listen: \"{admin}\"}}\nslo:\n  availability: {{objective: 99.5, window: 30d}}\n  team: sre\n  locations: [loc-a, loc-b, loc-c]\n"
    );
    std::fs::write(&p, cfg).unwrap();
    p
}

fn start_agent(dir: &Path, location: &str, admin: &str, target: &str) -> Proc {
    let cfg = agent_config(dir, location, admin);
    spawn(
        Command::new(BIN).args(["run", "--log-format", "text", "--config"]).arg(cfg).env("VANTAGE_TARGET", target),
        "vantage agent",
        &dir.join(format!("agent-{location}.log")),
    )
}

async fn ready(url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} not ready at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a notification matches; returns it. Panics with everything received otherwise.
async fn wait_note(notes: &Notes, within: Duration, what: &str, f: impl Fn(&Note) -> bool) -> Note {
    let deadline = Instant::now() + within;
    loop {
        if let Some(n) = notes.lock().unwrap().iter().find(|n| f(n)) {
            return n.clone();
        }
        if Instant::now() > deadline {
            let all = notes.lock().unwrap().clone();
            let lines: Vec<String> = all.iter().map(|n| format!("{} {} {:?}", n.receiver, n.status, n.labels)).collect();
            panic!("timed out after {within:?} waiting for {what}; received:\n{}", lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is(n: &Note, receiver: &str, status: &str, alert: &str, journey: &str, severity: &str) -> bool {
    n.receiver == receiver
        && n.status == status
        && n.labels.get("alertname").map(String::as_str) == Some(alert)
        && n.labels.get("journey_name").map(String::as_str) == Some(journey)
        && n.labels.get("severity").map(String::as_str) == Some(severity)
}

fn pages_since(notes: &Notes, since: Instant, receiver: &str) -> Vec<Note> {
    notes
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.at >= since && n.receiver == receiver && n.status == "firing" && n.labels.get("severity").map(String::as_str) == Some("page"))
        .cloned()
        .collect()
}

async fn fault(demo: &str, method: reqwest::Method, path: &str, body: Value) {
    let r = reqwest::Client::new().request(method, format!("{demo}{path}")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "fault API {path}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_journeys_page_the_owning_team_through_prometheus_and_alertmanager() {
    for bin in [PROMETHEUS, ALERTMANAGER, "/usr/bin/promtool"] {
        assert!(Path::new(bin).exists(), "{bin} missing: {INSTALL}");
    }
    let demo =
        DemoServer::start(DemoOptions { crm_delay: Duration::from_millis(30), https_addr: None, dns_addr: None, ..DemoOptions::default() }).await.unwrap();
    let target = demo.base_url();
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("probes")).unwrap();
    std::fs::write(dir.join("probes/journeys.yaml"), PROBES).unwrap();

    // Agents: three locations.
    let locations = ["loc-a", "loc-b", "loc-c"];
    let admins: Vec<String> = locations.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut agents: Vec<Option<Proc>> = locations.iter().zip(&admins).map(|(l, a)| Some(start_agent(&dir, l, a, &target))).collect();

    // Rules, time-compressed: 1h → 1m, evaluated every second.
    let o = Command::new(BIN)
        .args(["slo", "generate", "--time-scale", "60", "--interval", "1s", "--config"])
        .arg(agent_config(&dir, "loc-a", &admins[0]))
        .arg("--out")
        .arg(dir.join("slo"))
        .output()
        .unwrap();
    assert!(o.status.success(), "slo generate: {}", String::from_utf8_lossy(&o.stderr));
    let t = Command::new("promtool").args(["test", "rules", "tests/vantage-slo.test.yaml"]).current_dir(dir.join("slo")).output().unwrap();
    assert!(t.status.success(), "generated promtool tests: {}", String::from_utf8_lossy(&t.stdout));

    // Receivers and Alertmanager, routing by team; a page inhibits the same journey's ticket.
    let notes: Notes = Arc::default();
    let hooks = receivers(notes.clone()).await;
    let am_port = free_port();
    let hook = |team: &str| format!("  - name: {team}\n    webhook_configs: [{{url: \"http://{hooks}/hook/{team}\", send_resolved: true}}]\n");
    let am_cfg = format!(
        "route:\n  receiver: sre\n  group_by: [alertname, journey_name, severity, synthetics_location]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n  routes:\n    - matchers: ['team=\"marketing\"']\n      receiver: marketing\n    - matchers: ['team=\"incident\"']\n      receiver: incident\nreceivers:\n{}{}{}inhibit_rules:\n  - source_matchers: ['severity=\"page\"']\n    target_matchers: ['severity=\"ticket\"']\n    equal: [journey_name]\n",
        hook("sre"),
        hook("marketing"),
        hook("incident")
    );
    std::fs::write(dir.join("alertmanager.yml"), am_cfg).unwrap();
    std::fs::create_dir_all(dir.join("am-data")).unwrap();
    let _am = spawn(
        Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
        "alertmanager",
        &dir.join("alertmanager.log"),
    );
    let prom_port = free_port();
    let targets: Vec<String> = admins.iter().map(|a| format!("\"{a}\"")).collect();
    let prom_cfg = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\nrule_files: [\"{}\"]\nalerting:\n  alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{am_port}\"]}}]}}]\nscrape_configs:\n  - job_name: vantage\n    static_configs: [{{targets: [{}]}}]\n",
        dir.join("slo/rules/vantage-slo.yaml").display(),
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), prom_cfg).unwrap();
    let _prom = spawn(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prom-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--rules.alert.resend-delay=1s"),
        "prometheus",
        &dir.join("prometheus.log"),
    );
    ready(&format!("http://127.0.0.1:{am_port}/-/ready"), "alertmanager").await;
    ready(&format!("http://127.0.0.1:{prom_port}/-/ready"), "prometheus").await;
    for a in &admins {
        ready(&format!("http://{a}/healthz"), "agent").await;
    }
    // Healthy everywhere: no page to anyone.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let t0 = Instant::now() - Duration::from_secs(60);
    for r in ["marketing", "incident", "sre"] {
        assert!(pages_since(&notes, t0, r).is_empty(), "healthy fleet paged {r}: {:?}", pages_since(&notes, t0, r));
    }

    // 1. One location's network broken (its agent points at a dead address): a ticket, no page.
    let t1 = Instant::now();
    agents[2] = None;
    let dead = format!("http://127.0.0.1:{}", free_port());
    agents[2] = Some(start_agent(&dir, "loc-c", &admins[2], &dead));
    let ticket = wait_note(&notes, Duration::from_secs(60), "lead-capture ticket from loc-c", |n| {
        n.at >= t1 && is(n, "marketing", "firing", "JourneyAvailabilityBudgetBurn", "lead-capture", "ticket")
    })
    .await;
    assert!(
        ticket.summary.contains("lead-capture") && ticket.summary.contains("failing in the last 30s: loc-c;") && ticket.summary.contains("last error: connect"),
        "{}",
        ticket.summary
    );
    assert_eq!(ticket.labels["team"], "marketing");
    wait_note(&notes, Duration::from_secs(20), "incident-ack ticket from loc-c", |n| {
        n.at >= t1 && is(n, "incident", "firing", "JourneyAvailabilityBudgetBurn", "incident-ack", "ticket")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in ["marketing", "incident", "sre"] {
        assert!(pages_since(&notes, t1, r).is_empty(), "one broken location paged {r}: {:?}", pages_since(&notes, t1, r));
    }
    agents[2] = None;
    agents[2] = Some(start_agent(&dir, "loc-c", &admins[2], &target));

    // 2. CRM pipeline stalled: marketing gets the lead-capture page, nobody else is paged.
    let t2 = Instant::now();
    fault(&target, reqwest::Method::POST, "/admin/faults/crm", json!({"mode": "stall"})).await;
    let page = wait_note(&notes, Duration::from_secs(45), "lead-capture page to marketing", |n| {
        n.at >= t2 && is(n, "marketing", "firing", "JourneyAvailabilityBudgetBurn", "lead-capture", "page")
    })
    .await;
    assert!(page.summary.starts_with("lead-capture: availability error budget burning fast"), "{}", page.summary);
    assert!(page.summary.contains("loc-a") && page.summary.contains("loc-b"), "{}", page.summary);
    for r in ["incident", "sre"] {
        assert!(pages_since(&notes, t2, r).is_empty(), "CRM stall paged {r}: {:?}", pages_since(&notes, t2, r));
    }
    // Fault cleared: the page resolves.
    fault(&target, reqwest::Method::DELETE, "/admin/faults", json!({})).await;
    let t2c = Instant::now();
    wait_note(&notes, Duration::from_secs(75), "lead-capture page resolved", |n| {
        n.at >= t2c && is(n, "marketing", "resolved", "JourneyAvailabilityBudgetBurn", "lead-capture", "page")
    })
    .await;

    // 3. ACK endpoint failing: the incident team is paged.
    let t3 = Instant::now();
    fault(&target, reqwest::Method::POST, "/admin/faults/http", json!({"route": "POST /api/incidents/{id}/ack", "status": 500, "latency_ms": 0})).await;
    let page = wait_note(&notes, Duration::from_secs(45), "incident-ack page to incident", |n| {
        n.at >= t3 && is(n, "incident", "firing", "JourneyAvailabilityBudgetBurn", "incident-ack", "page")
    })
    .await;
    assert!(page.summary.contains("last error: http_status"), "{}", page.summary);
    assert!(pages_since(&notes, t3, "marketing").is_empty(), "ACK failure paged marketing");
    fault(&target, reqwest::Method::DELETE, "/admin/faults", json!({})).await;
    let t3c = Instant::now();
    wait_note(&notes, Duration::from_secs(75), "incident-ack page resolved", |n| {
        n.at >= t3c && is(n, "incident", "resolved", "JourneyAvailabilityBudgetBurn", "incident-ack", "page")
    })
    .await;

    // 4. Every agent killed: "no results" pages the owning teams instead of going quiet.
    let t4 = Instant::now();
    for a in agents.iter_mut() {
        *a = None;
    }
    let silent = wait_note(&notes, Duration::from_secs(45), "no-results page for lead-capture", |n| {
        n.at >= t4 && is(n, "marketing", "firing", "JourneyNoResults", "lead-capture", "page")
    })
    .await;
    assert!(silent.summary.contains("no results from any location"), "{}", silent.summary);
    wait_note(&notes, Duration::from_secs(15), "no-results page for incident-ack", |n| {
        n.at >= t4 && is(n, "incident", "firing", "JourneyNoResults", "incident-ack", "page")
    })
    .await;

    drop(_prom);
    drop(_am);
    demo.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
