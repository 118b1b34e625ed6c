//! Game day against the real demo service and real agent processes
//! (`vantage run`), with the game day itself as a `vantage gameday` process:
//! the report's numbers are checked against what the agents' `/events`
//! streams recorded, healing restores success, an interrupted run still
//! heals, bad scenarios inject nothing. Also the `/events` stream itself.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use vantage::daemon::admin::RunEvent;
use vantage::demo::live::{start_demo_env, DemoEnv};
use vantage::gameday::stream::SseParser;

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
/// Journey interval and timeout in the test probes.
const INTERVAL_S: f64 = 4.0;
const TIMEOUT_S: f64 = 3.0;
/// Scheduling lateness and event delivery, on top of interval + detection time.
const SLACK_S: f64 = 0.5;
/// How long the shipped scenario's faults are held in the test (10m in the file).
const HOLD_S: u64 = 20;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The shipped journeys with short intervals: incident-lifecycle everywhere,
/// lead-capture only in `eu` (the demo's CRM webhook reaches one agent).
fn write_probes(dir: &Path) {
    write_shipped_probes(dir, "\n    locations: [eu]");
}

/// [`write_probes`], with `lead_extra` added after lead-capture's timeout.
fn write_shipped_probes(dir: &Path, lead_extra: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let il = std::fs::read_to_string(format!("{root}/probes/incident-lifecycle.yaml")).unwrap();
    let il = il
        .replace("interval: 30s", "interval: 4s")
        .replace("timeout: 25s", "timeout: 3s")
        .replace("receive: 5s", "receive: 2s");
    let lc = std::fs::read_to_string(format!("{root}/probes/lead-capture.yaml")).unwrap();
    let lc = lc
        .replace("interval: 60s", "interval: 4s")
        .replace("timeout: 45s", &format!("timeout: 3s{lead_extra}"))
        .replace("within: 20s", "within: 2s")
        .replace("within: 10s", "within: 2s");
    assert!(
        il.contains("interval: 4s") && lc.contains("timeout: 3s") && !lc.contains("within: 20s"),
        "the shipped probes changed shape"
    );
    std::fs::write(dir.join("incident-lifecycle.yaml"), il).unwrap();
    std::fs::write(dir.join("lead-capture.yaml"), lc).unwrap();
}

struct Fleet {
    demo: DemoEnv,
    dir: PathBuf,
    agents: Vec<(String, String, Child)>,
    http: reqwest::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.agents {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.demo.credentials_dir);
    }
}

impl Fleet {
    async fn start() -> Fleet {
        let demo = start_demo_env().await.unwrap();
        let dir = common::tempdir();
        let probes = dir.join("probes");
        std::fs::create_dir_all(&probes).unwrap();
        write_probes(&probes);
        let mut agents = Vec::new();
        for (name, callback) in [("eu", demo.callback_port), ("us", common::free_port())] {
            let admin = common::free_port();
            let cfg = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &cfg,
                format!(
                    "id: {name}\nlocation: {name}\ncredentials_dir: {}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\ncallback: {{listen: \"127.0.0.1:{callback}\"}}\nshutdown_grace: 2s\nprobes: [{}]\n",
                    demo.credentials_dir.display(),
                    probes.display()
                ),
            )
            .unwrap();
            agents.push((name.to_string(), format!("http://127.0.0.1:{admin}"), run_agent(&cfg, &demo)));
        }
        let mut f = Fleet {
            demo,
            dir,
            agents,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        for (name, url, child) in &mut f.agents {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while f.http.get(format!("{url}/healthz")).send().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "agent {url} did not come up: {}",
                    agent_gone(&f.dir.join(format!("{name}.yaml")), child)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        f
    }

    fn target(&self) -> String {
        self.demo.server.base_url()
    }

    async fn faults(&self) -> Value {
        self.http
            .get(format!("{}/admin/faults", self.target()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn scenario(&self, body: &str) -> PathBuf {
        let mut y = String::from("name: test day\nagents:\n");
        for (name, url, _) in &self.agents {
            y.push_str(&format!("  - {{name: {name}, url: \"{url}\"}}\n"));
        }
        y.push_str(&body.replace("TARGET", &self.target()));
        let p = self
            .dir
            .join(format!("scenario-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&p, y).unwrap();
        p
    }
}

fn assert_no_faults(f: &Value) {
    assert_eq!(f["http"], serde_json::json!([]), "{f}");
    assert_eq!(f["websocket"], "normal", "{f}");
    assert_eq!(f["crm"], "normal", "{f}");
}

/// Subscribes to an agent's `/events` and records every run, independently of the game day.
fn record(url: String) -> (Arc<Mutex<Vec<RunEvent>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let resp = reqwest::get(format!("{url}/events")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut p = SseParser::default();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(30), body.next()).await
        {
            for ev in p.feed(&chunk).unwrap() {
                if ev.event == "run" {
                    s.lock()
                        .unwrap()
                        .push(serde_json::from_str::<RunEvent>(&ev.data).unwrap());
                }
            }
        }
    });
    (seen, task)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gameday_figures_match_the_agents_event_streams_and_healing_restores_success() {
    let fleet = Fleet::start().await;
    let recs: Vec<_> = fleet
        .agents
        .iter()
        .map(|(n, u, _)| (n.clone(), record(u.clone())))
        .collect();
    let scenario = fleet.scenario(
        r#"faults:
  - name: ACK endpoint failing
    inject: {http: {method: POST, url: "TARGET/admin/faults/http", json: {route: "POST /api/incidents/{id}/ack", status: 500}}}
    hold: 6s
    heal: {http: {method: DELETE, url: "TARGET/admin/faults"}}
    expect: {journeys: [incident-lifecycle]}
    settle: 20s
    recover_within: 20s
  - name: CRM stall
    inject: {http: {url: "TARGET/admin/faults/crm", json: {mode: stall}}}
    hold: 6s
    heal: {http: {url: "TARGET/admin/faults/crm", json: {mode: normal}}}
    expect: {journeys: [lead-capture]}
    settle: 20s
    recover_within: 20s
"#,
    );
    let out = fleet.dir.join("report");
    let run = run_gameday(&scenario, &out, Duration::from_secs(150)).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("INJECT") && stderr.contains("KNOW +") && stderr.contains("HEALED"),
        "live progress on stderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ACK endpoint failing") && stdout.contains("all faults healed"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("## 2. CRM stall"));

    let expected_agents = [
        ("ACK endpoint failing", vec!["eu", "us"]),
        ("CRM stall", vec!["eu"]),
    ];
    for (f, (name, agents)) in report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected_agents)
    {
        assert_eq!(f["name"], name);
        let journey = f["expected_journeys"][0].as_str().unwrap();
        let (ti, th) = (
            f["injected_unix_ms"].as_i64().unwrap(),
            f["healed_unix_ms"].as_i64().unwrap(),
        );
        assert!(f["healed"].as_bool().unwrap(), "{f}");
        assert_eq!(f["false_journeys"], serde_json::json!([]), "{name}: {f}");
        assert_eq!(f["missed"]["journeys"], serde_json::json!([]), "{name}");
        // Time-to-know from our own recording of each agent's stream.
        let mut overall = f64::MAX;
        let mut recover = 0.0f64;
        for (agent, (seen, _)) in &recs {
            let seen = seen.lock().unwrap();
            let mine: Vec<&RunEvent> = seen.iter().filter(|e| e.journey == journey).collect();
            let first_fail = mine
                .iter()
                .filter(|e| {
                    e.outcome == "failure" && e.ended_unix_ms >= ti && e.started_unix_ms < th
                })
                .map(|e| e.ended_unix_ms)
                .min();
            let first_ok = mine
                .iter()
                .filter(|e| e.outcome == "success" && e.ended_unix_ms >= th)
                .map(|e| e.ended_unix_ms)
                .min();
            let by_agent = &f["time_to_know_by_agent"][agent.as_str()];
            if !agents.contains(&agent.as_str()) {
                assert!(
                    by_agent.is_null() && first_fail.is_none(),
                    "{name}: {agent} does not run {journey}"
                );
                continue;
            }
            let know = secs(
                first_fail
                    .unwrap_or_else(|| panic!("{name}: {agent} recorded no failure of {journey}"))
                    - ti,
            );
            assert!(
                (by_agent.as_f64().unwrap() - know).abs() <= 0.011,
                "{name}@{agent}: report {by_agent} vs stream {know}"
            );
            assert!(know <= INTERVAL_S + TIMEOUT_S + SLACK_S, "{name}@{agent}: time-to-know {know}s exceeds one interval + the journey's detection time");
            overall = overall.min(know);
            // Healing restores success, and the report's recovery figure is the slowest agent's.
            let ok = secs(
                first_ok.unwrap_or_else(|| {
                    panic!("{name}: {agent} never passed {journey} again after healing")
                }) - th,
            );
            assert!(
                (f["time_to_recover_by_agent"][agent.as_str()]
                    .as_f64()
                    .unwrap()
                    - ok)
                    .abs()
                    <= 0.011,
                "{name}@{agent}"
            );
            recover = recover.max(ok);
        }
        assert!(
            (f["time_to_know_s"].as_f64().unwrap() - overall).abs() <= 0.011,
            "{name}: {} vs {overall}",
            f["time_to_know_s"]
        );
        assert!(
            (f["time_to_recover_s"].as_f64().unwrap() - recover).abs() <= 0.011,
            "{name}"
        );
        let svg = std::fs::read_to_string(out.join(f["svg"].as_str().unwrap())).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("inject +0.0s")
                && svg.contains("heal +")
                && svg.contains(&format!("{journey} @ eu")),
            "{svg}"
        );
    }
    assert_no_faults(&fleet.faults().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_gameday_still_heals_and_says_so() {
    let fleet = Fleet::start().await;
    let scenario = fleet.scenario(
        r#"faults:
  - name: WebSocket drop
    inject: {http: {url: "TARGET/admin/faults/websocket", json: {mode: drop}}}
    hold: 5m
    heal: {http: {url: "TARGET/admin/faults/websocket", json: {mode: normal}}}
    expect: {journeys: [incident-lifecycle]}
    settle: 20s
"#,
    );
    let out = fleet.dir.join("report");
    let mut child = Command::new(BIN)
        .arg("gameday")
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let injected = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            log.push_str(&l);
            log.push('\n');
            if l.contains("INJECT") {
                return;
            }
        }
    })
    .await;
    assert!(injected.is_ok(), "never injected:\n{log}");
    assert_eq!(
        fleet.faults().await["websocket"],
        "drop",
        "the fault is active while the game day holds it"
    );
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = String::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            rest.push_str(&l);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("the game day ends soon after SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{log}{rest}");
    assert!(rest.contains("SIGINT") && rest.contains("HEALED"), "{rest}");
    assert_no_faults(&fleet.faults().await);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], "SIGINT");
    assert_eq!(report["faults"][0]["healed"], true);
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("Stopped early by SIGINT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scenario_fails_before_injecting_anything_with_locations() {
    let fleet = Fleet::start().await;
    let dead = common::free_port();
    // Unknown journey, unknown team, unreachable Prometheus.
    let bad = fleet.scenario(&format!(
        r#"prometheus: {{url: "http://127.0.0.1:{dead}"}}
faults:
  - name: CRM stall
    inject: {{http: {{url: "TARGET/admin/faults/crm", json: {{mode: stall}}}}}}
    hold: 5s
    heal: {{http: {{url: "TARGET/admin/faults/crm", json: {{mode: normal}}}}}}
    expect:
      journeys: [lead-capture, lead-captrue]
      team: marketting
"#
    ));
    let out = Command::new(BIN)
        .arg("gameday")
        .arg(&bad)
        .arg("--out")
        .arg(fleet.dir.join("r1"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:5:13: prometheus: cannot reach http://127.0.0.1:{dead}/api/v1/alerts: cannot connect: Connection refused (os error 111)\n"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:12:32: fault `CRM stall`: `expect.journeys`: no agent runs a journey `lead-captrue` (they run: incident-lifecycle, lead-capture)")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:13:13: fault `CRM stall`: `expect.team`: no journey on the agents has `team: marketting` (teams: incidents, marketing)")), "{stderr}");
    assert!(
        stderr.contains("3 problems found") && stderr.contains("nothing was injected"),
        "{stderr}"
    );
    assert!(
        !fleet.dir.join("r1").exists(),
        "no report for a refused scenario"
    );

    // An unreachable agent.
    let p = fleet.dir.join("dead-agent.yaml");
    std::fs::write(
        &p,
        format!("agents:\n  - url: \"http://127.0.0.1:{dead}\"\nfaults:\n  - name: f\n    inject: {{http: {{url: \"{t}/admin/faults/crm\", json: {{mode: stall}}}}}}\n    hold: 5s\n    heal: {{http: {{url: \"{t}/admin/faults/crm\", json: {{mode: normal}}}}}}\n    expect: {{journeys: [lead-capture]}}\n", t = fleet.target()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("gameday")
        .arg(&p)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:5: agent `127.0.0.1:{dead}`: cannot reach http://127.0.0.1:{dead}/status",
            p.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was injected"), "{stderr}");
    assert_no_faults(&fleet.faults().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_runs_as_they_finish_and_caps_subscribers() {
    let fleet = Fleet::start().await;
    let (_, url, _) = &fleet.agents[0];
    let (seen, _task) = record(url.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<RunEvent> = seen.lock().unwrap().clone();
        if ["incident-lifecycle", "lead-capture"]
            .iter()
            .all(|j| got.iter().any(|e| e.journey == *j))
        {
            for e in &got {
                assert_eq!(
                    (e.location.as_str(), e.agent_id.as_str(), e.outcome.as_str()),
                    ("eu", "eu", "success"),
                    "{e:?}"
                );
                assert_eq!(e.trace_id.len(), 32);
                assert!(
                    !e.run_id.is_empty()
                        && e.duration_ms > 0.0
                        && e.ended_unix_ms >= e.started_unix_ms,
                    "{e:?}"
                );
                // Sent as the run finished: its end is recent, not a replay.
                assert!(e.ended_unix_ms > vantage::gameday::now_ms() - 20_000);
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no runs streamed: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One stream is open (the recorder); fill the rest, then one more is refused.
    let mut open = Vec::new();
    for _ in 1..vantage::daemon::admin::MAX_SUBSCRIBERS {
        let r = fleet
            .http
            .get(format!("{url}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let refused = fleet
        .http
        .get(format!("{url}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("too many /events subscribers"));
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = fleet
            .http
            .get(format!("{url}/events"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// What Alertmanager's webhooks delivered: (arrival, path, body).
type Hooks = Arc<Mutex<Vec<(i64, String, Value)>>>;

async fn webhook_receiver() -> (u16, Hooks) {
    use axum::extract::{Path as UrlPath, State};
    let hooks: Hooks = Default::default();
    let app =
        axum::Router::new()
            .route(
                "/{receiver}",
                axum::routing::post(
                    |State(h): State<Hooks>,
                     UrlPath(r): UrlPath<String>,
                     body: axum::Json<Value>| async move {
                        h.lock()
                            .unwrap()
                            .push((vantage::gameday::now_ms(), r, body.0));
                        "ok"
                    },
                ),
            )
            .with_state(hooks.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (port, hooks)
}

async fn wait_ready(http: &reqwest::Client, url: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not become ready at {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Real Prometheus scraping both agents every second with a hand-written
/// rule, real Alertmanager routing by team to a webhook: the game day's
/// time-to-detect matches when the page reached the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_detect_matches_prometheus_and_the_pages_alertmanager_delivered() {
    for bin in [PROMETHEUS, ALERTMANAGER] {
        assert!(Path::new(bin).exists(), "{bin} is missing: run .ci/install-test-deps (installs Debian's prometheus and prometheus-alertmanager)");
    }
    let fleet = Fleet::start().await;
    let (hook_port, hooks) = webhook_receiver().await;
    let dir = fleet.dir.join("alerting");
    std::fs::create_dir_all(&dir).unwrap();
    let (am_port, prom_port) = (common::free_port(), common::free_port());
    std::fs::write(
        dir.join("am.yml"),
        format!(
            r#"route:
  receiver: default
  group_by: [alertname, team]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - matchers: ['team="incidents"']
      receiver: incidents-pager
receivers:
  - name: default
    webhook_configs: [{{url: "http://127.0.0.1:{hook_port}/default", send_resolved: true}}]
  - name: incidents-pager
    webhook_configs: [{{url: "http://127.0.0.1:{hook_port}/incidents-pager", send_resolved: true}}]
"#
        ),
    )
    .unwrap();
    // A failure in the last 10 s, per team: simple on purpose (the shipped rules use 5m windows).
    std::fs::write(
        dir.join("rules.yml"),
        r#"groups:
  - name: gameday-test
    interval: 1s
    rules:
      - alert: JourneyFailing
        expr: sum by (team) (increase(synthetics_journey_runs_total{outcome="failure"}[10s])) > 0
        labels: {severity: page}
"#,
    )
    .unwrap();
    let targets: Vec<String> = fleet
        .agents
        .iter()
        .map(|(_, u, _)| format!("\"{}\"", u.trim_start_matches("http://")))
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\nalerting: {{alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{am_port}\"]}}]}}]}}\nscrape_configs:\n  - job_name: vantage\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let _am = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", dir.join("am.yml").display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _prom = Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(
        &fleet.http,
        &format!("http://127.0.0.1:{am_port}/-/ready"),
        "Alertmanager",
    )
    .await;
    wait_ready(
        &fleet.http,
        &format!("http://127.0.0.1:{prom_port}/-/ready"),
        "Prometheus",
    )
    .await;
    let scenario = fleet.scenario(&format!(
        r#"prometheus: {{url: "http://127.0.0.1:{prom_port}", match_labels: {{alertname: JourneyFailing}}}}
alertmanager: {{url: "http://127.0.0.1:{am_port}", match_labels: {{alertname: JourneyFailing}}}}
faults:
  - name: ACK endpoint failing
    inject: {{http: {{method: POST, url: "TARGET/admin/faults/http", json: {{route: "POST /api/incidents/{{id}}/ack", status: 500}}}}}}
    hold: 12s
    heal: {{http: {{method: DELETE, url: "TARGET/admin/faults"}}}}
    expect: {{journeys: [incident-lifecycle], team: incidents}}
    settle: 30s
    recover_within: 40s
"#
    ));
    let out = fleet.dir.join("report");
    let run = run_gameday(&scenario, &out, Duration::from_secs(150)).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&run.stdout)
    );
    // The measured table, for the README (visible with --nocapture).
    println!("{}", String::from_utf8_lossy(&run.stdout));
    assert!(
        stderr.contains("DETECT +") && stderr.contains("PAGE +"),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let f = &report["faults"][0];
    let ti = f["injected_unix_ms"].as_i64().unwrap();
    let th = f["healed_unix_ms"].as_i64().unwrap();
    let know = f["time_to_know_s"].as_f64().unwrap();
    let fired = f["prometheus"]["after_s"]
        .as_f64()
        .expect("Prometheus fired");
    let paged = f["alertmanager"]["after_s"]
        .as_f64()
        .expect("Alertmanager accepted the page");
    // Order of the pipeline: a failed run, then a scrape + rule evaluation (1 s each), then Alertmanager.
    assert!(
        know < fired && fired <= know + 6.0,
        "know {know}s, fired {fired}s"
    );
    assert!(
        paged >= fired - 1.0 && paged <= fired + 3.0,
        "fired {fired}s, paged {paged}s"
    );
    assert_eq!(
        f["alertmanager"]["alert"]["receivers"],
        serde_json::json!(["incidents-pager"])
    );
    assert_eq!(f["alertmanager"]["alert"]["labels"]["team"], "incidents");
    assert_eq!(f["false_pages"], serde_json::json!([]), "{f}");
    assert_eq!(f["missed"]["team"], Value::Null);
    // The receiver's log: the first firing notification arrived within group_wait (1 s) + polling (1 s) of the page.
    let log = hooks.lock().unwrap().clone();
    let firing = log
        .iter()
        .find(|(_, r, b)| r == "incidents-pager" && b["status"] == "firing")
        .expect("a firing page reached incidents-pager");
    let page_at = ti + (paged * 1000.0) as i64;
    assert!(
        (firing.0 - page_at).abs() <= 2_500,
        "webhook at +{:.1}s, report says paged at +{paged}s",
        secs(firing.0 - ti)
    );
    assert!(
        log.iter().all(|(_, r, _)| r == "incidents-pager"),
        "no other team was paged: {log:?}"
    );
    // Resolution: reported after healing, and the receiver got the resolved notification.
    let resolved = f["alertmanager"]["resolved_after_heal_s"]
        .as_f64()
        .expect("page resolved");
    assert!(
        resolved > 0.0 && f["prometheus"]["resolved_after_heal_s"].as_f64().is_some(),
        "{f}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !hooks
        .lock()
        .unwrap()
        .iter()
        .any(|(_, r, b)| r == "incidents-pager" && b["status"] == "resolved")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no resolved notification reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(th > ti);
    // To look at (and for the README): GAMEDAY_KEEP_REPORT=DIR keeps this report.
    if let Some(keep) = std::env::var_os("GAMEDAY_KEEP_REPORT") {
        std::fs::create_dir_all(&keep).unwrap();
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), Path::new(&keep).join(e.file_name())).unwrap();
        }
    }
    assert_no_faults(&fleet.faults().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overall_timeout_stops_the_gameday_and_heals() {
    let fleet = Fleet::start().await;
    let scenario = fleet.scenario(
        r#"timeout: 15s
faults:
  - name: CRM stall
    inject: {http: {url: "TARGET/admin/faults/crm", json: {mode: stall}}}
    hold: 5m
    heal: {http: {url: "TARGET/admin/faults/crm", json: {mode: normal}}}
    expect: {journeys: [lead-capture]}
    settle: 10s
"#,
    );
    let out = fleet.dir.join("report");
    let run = Command::new(BIN)
        .arg("gameday")
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let started = tokio::time::Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the timeout stops it")
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("overall timeout of 15s reached")
            && stderr.contains("HEALED")
            && stderr.contains("early because of timeout"),
        "{stderr}"
    );
    assert_no_faults(&fleet.faults().await);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], "timeout");
    assert_eq!(report["faults"][0]["healed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_gameday_reports_all_three_faults_known_and_healed() {
    let dir = common::tempdir();
    let out = dir.join("report");
    let run = Command::new(BIN)
        .args(["demo", "--gameday", "--out"])
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("demo game day finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("Time to know") && stdout.contains("all faults healed"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let faults = report["faults"].as_array().unwrap();
    let names: Vec<&str> = faults.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["CRM stall", "ACK endpoint failing", "WebSocket drop"]
    );
    for f in faults {
        let know = f["time_to_know_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("{} not known: {f}", f["name"]));
        // Demo journeys run every 5 s with a 4 s timeout.
        assert!(know <= 5.0 + 4.0 + SLACK_S, "{}: {know}s", f["name"]);
        assert!(
            f["time_to_recover_s"].as_f64().is_some() && f["healed"] == true,
            "{f}"
        );
        assert!(out.join(f["svg"].as_str().unwrap()).exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `text` with every `from` replaced by `to`, checking that the shipped file
/// still has exactly `count` of them (so a change to it fails here loudly
/// instead of leaving the production value in the test).
fn swap(text: &str, from: &str, to: &str, count: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "the shipped file changed: expected {count} of `{from}`"
    );
    text.replace(from, to)
}

/// The demo's CRM sends one `lead.created` webhook, but every location's
/// lead-capture waits for its own: a loopback relay hands it to each agent's
/// callback listener (what a fleet does with one webhook URL per site).
async fn webhook_relay(callbacks: Vec<u16>) -> u16 {
    use axum::http::HeaderMap;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let (client, callbacks) = (client.clone(), callbacks.clone());
            async move {
                let sends = callbacks.iter().map(|port| {
                    let mut req = client
                        .post(format!("http://127.0.0.1:{port}{}", uri.path()))
                        .header("content-type", "application/json")
                        .body(body.clone());
                    for h in ["x-synthetic-run", "x-callback-token"] {
                        if let Some(v) = headers.get(h) {
                            req = req.header(h, v.clone());
                        }
                    }
                    req.send()
                });
                let ok = futures_util::future::join_all(sends)
                    .await
                    .iter()
                    .any(|r| r.as_ref().is_ok_and(|r| r.status().is_success()));
                if ok {
                    axum::http::StatusCode::ACCEPTED
                } else {
                    axum::http::StatusCode::NOT_FOUND
                }
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

/// The shipped scenario (`packaging/examples/gameday-demo.yaml`) end to end
/// with the shipped alerting setup, on the real engines: three `vantage run`
/// agents as the three locations of the shipped SLO config
/// (`packaging/examples/prometheus/agent-slo.yaml`), rules from `vantage slo
/// generate` on that config (time-compressed 60x), Debian's Prometheus with
/// the shipped scrape config and Alertmanager with the shipped routing, its
/// receivers pointed at a loopback webhook receiver. Every file is derived
/// from the shipped one by replacing addresses and durations (checked to be
/// there), so an edit to the shipped files is tested, not a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_gameday_scenario_pages_the_owning_team_with_generated_rules() {
    for bin in [PROMETHEUS, ALERTMANAGER] {
        assert!(Path::new(bin).exists(), "{bin} is missing: run .ci/install-test-deps (installs Debian's prometheus and prometheus-alertmanager)");
    }
    assert!(
        std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()),
        "curl is missing (the shipped scenario's WebSocket fault runs it): run .ci/install-test-deps"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = |p: &str| std::fs::read_to_string(format!("{root}/packaging/examples/{p}")).unwrap();
    let demo = start_demo_env().await.unwrap();
    let target = demo.server.base_url();
    let dir = common::tempdir();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // The shipped journeys at a 4 s interval, lead-capture in every location.
    let probes = dir.join("probes");
    std::fs::create_dir_all(&probes).unwrap();
    write_shipped_probes(&probes, "");

    // Agents: the shipped SLO config, one per location it names.
    let slo_cfg = shipped("prometheus/agent-slo.yaml");
    let locations = ["eu-west-1", "us-east-1", "ap-southeast-1"];
    assert!(slo_cfg.contains("locations: [eu-west-1, us-east-1, ap-southeast-1]"), "{slo_cfg}");
    let slo_cfg = swap(
        &slo_cfg,
        "probes: [../../../probes]",
        &format!("probes: [\"{}\"]", probes.display()),
        1,
    );
    let mut agents = Vec::new();
    let mut callbacks = Vec::new();
    for loc in locations {
        let (admin, callback) = (common::free_port(), common::free_port());
        let cfg = dir.join(format!("{loc}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "{}\nid: {loc}\ncredentials_dir: \"{}\"\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\ncallback: {{listen: \"127.0.0.1:{callback}\"}}\nshutdown_grace: 2s\n",
                swap(&slo_cfg, "location: eu-west-1", &format!("location: {loc}"), 1),
                demo.credentials_dir.display()
            ),
        )
        .unwrap();
        let agent = run_agent(&cfg, &demo);
        agents.push((loc, admin, cfg, agent));
        callbacks.push(callback);
    }
    let relay = webhook_relay(callbacks).await;
    let r = http
        .put(format!("{target}/admin/webhook"))
        .json(&serde_json::json!({"url": format!("http://127.0.0.1:{relay}/hooks/crm")}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT /admin/webhook: {}", r.status());

    // Rules from the shipped config, every window and `for` divided by 60, evaluated every second.
    let slo = dir.join("slo");
    let gen = Command::new(BIN)
        .args(["slo", "generate", "--time-scale", "60", "--interval", "1s", "--config"])
        .arg(&agents[0].2)
        .arg("--out")
        .arg(&slo)
        .output()
        .await
        .unwrap();
    assert!(gen.status.success(), "slo generate: {}", text(&gen.stderr));

    // Alertmanager: the shipped routing and inhibition; receivers on loopback, waits in seconds.
    let (hook_port, hooks) = webhook_receiver().await;
    let (am_port, prom_port) = (common::free_port(), common::free_port());
    let am = shipped("alertmanager.yml");
    let am = swap(&am, "group_wait: 30s", "group_wait: 1s", 1);
    let am = swap(&am, "group_interval: 5m", "group_interval: 1s", 1);
    // The CRM's Sunday-night maintenance window would make this test depend on the weekday.
    let am = swap(&am, "      mute_time_intervals: [crm-maintenance]\n", "", 1);
    let mut receiver = String::new();
    let mut urls = 0;
    let am: String = am
        .lines()
        .map(|l| {
            if let Some(n) = l.trim().strip_prefix("- name: ") {
                receiver = n.to_string();
            }
            match l.split_once("- url: https://") {
                Some((indent, _)) => {
                    urls += 1;
                    format!("{indent}- url: http://127.0.0.1:{hook_port}/{receiver}\n")
                }
                None => format!("{l}\n"),
            }
        })
        .collect();
    assert_eq!(urls, 6, "the shipped Alertmanager config changed its receivers");
    std::fs::write(dir.join("alertmanager.yml"), am).unwrap();
    // Prometheus: the shipped scrape config, every second, on the agents and the generated rules.
    let prom = shipped("prometheus/prometheus.yml");
    let prom = swap(&prom, "scrape_interval: 15s", "scrape_interval: 1s", 1);
    let prom = swap(&prom, "evaluation_interval: 1m", "evaluation_interval: 1s", 1);
    let prom = swap(
        &prom,
        "/etc/prometheus/vantage/rules/*.yaml",
        &format!("{}/rules/*.yaml", slo.display()),
        1,
    );
    let prom = swap(&prom, "\"127.0.0.1:9093\"", &format!("\"127.0.0.1:{am_port}\""), 1);
    let targets: Vec<String> = agents.iter().map(|a| format!("\"127.0.0.1:{}\"", a.1)).collect();
    let prom = swap(
        &prom,
        "\"probe-eu-west-1.example:9464\", \"probe-us-east-1.example:9464\", \"probe-ap-southeast-1.example:9464\"",
        &targets.join(", "),
        1,
    );
    std::fs::write(dir.join("prometheus.yml"), prom).unwrap();
    let _am = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _prom = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prom-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--rules.alert.resend-delay=1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(&http, &format!("http://127.0.0.1:{am_port}/-/ready"), "Alertmanager").await;
    wait_ready(&http, &format!("http://127.0.0.1:{prom_port}/-/ready"), "Prometheus").await;
    for a in &agents {
        wait_ready(&http, &format!("http://127.0.0.1:{}/healthz", a.1), "agent").await;
    }
    // A game day starts from a quiet pipeline. Prometheus scrapes only ~5 s
    // after it is ready (target discovery), while its rules run at once: until
    // then JourneyNoResults is pending, and with the compressed `for: 5s` it
    // can fire just after the first injection, as if the fault had caused it.
    // So: every agent scraped, and no page pending or firing, for 3 s in a row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut quiet = 0;
    while quiet < 3 {
        let get = |q: String| {
            let http = http.clone();
            async move { http.get(q).send().await.ok()?.json::<Value>().await.ok() }
        };
        let up = get(format!("http://127.0.0.1:{prom_port}/api/v1/query?query=sum(up)")).await;
        let alerts = get(format!("http://127.0.0.1:{prom_port}/api/v1/alerts")).await;
        let pages: Vec<Value> = alerts
            .as_ref()
            .and_then(|a| a["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["severity"] == "page")
            .collect();
        let all_up = up.as_ref().and_then(|u| u["data"]["result"][0]["value"][1].as_str().map(|v| v == "3")) == Some(true);
        quiet = if all_up && alerts.is_some() && pages.is_empty() { quiet + 1 } else { 0 };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no quiet start within 90 s: up {up:?}, pages {pages:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The shipped scenario, pointed at this test's addresses, holds in seconds.
    let sc = shipped("gameday-demo.yaml");
    let agent_lines: Vec<String> =
        agents.iter().map(|a| format!("  - {{name: {}, url: \"http://127.0.0.1:{}\"}}", a.0, a.1)).collect();
    let sc = swap(&sc, "  - {name: demo, url: \"http://127.0.0.1:9464\"}", &agent_lines.join("\n"), 1);
    let sc = swap(&sc, "url: http://127.0.0.1:9090", &format!("url: http://127.0.0.1:{prom_port}"), 1);
    let sc = swap(&sc, "url: http://127.0.0.1:9093", &format!("url: http://127.0.0.1:{am_port}"), 1);
    let sc = swap(&sc, "http://127.0.0.1:8080", &target, 6);
    let sc = swap(&sc, "timeout: 1h", "timeout: 6m", 1);
    let sc = swap(&sc, "hold: 10m", &format!("hold: {HOLD_S}s"), 3);
    let sc = swap(&sc, "settle: 2m", "settle: 30s", 1);
    let sc = swap(&sc, "recover_within: 15m", "recover_within: 75s", 3);
    let scenario = dir.join("gameday-demo.yaml");
    std::fs::write(&scenario, &sc).unwrap();

    let out = dir.join("report");
    let run = run_gameday(&scenario, &out, Duration::from_secs(330)).await;
    let stderr = text(&run.stderr);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The measured table (visible with --nocapture).
    println!("{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let faults = report["faults"].as_array().unwrap();
    let expected = [
        ("CRM stall", "lead-capture", "marketing"),
        ("ACK endpoint failing", "incident-lifecycle", "incidents"),
        ("WebSocket drop", "incident-lifecycle", "incidents"),
    ];
    assert_eq!(faults.len(), expected.len());
    let log = hooks.lock().unwrap().clone();
    for (f, (name, journey, team)) in faults.iter().zip(expected) {
        assert_eq!(f["name"], name);
        assert_eq!(f["expected_journeys"], serde_json::json!([journey]), "{name}");
        assert_eq!(f["expected_team"], team, "{name}");
        assert!(f["healed"].as_bool().unwrap() && f["warnings"] == serde_json::json!([]), "{name}: {f}");
        // Nothing missed, nothing false.
        assert_eq!(f["missed"]["journeys"], serde_json::json!([]), "{name}: {f}");
        assert_eq!(f["missed"]["team"], Value::Null, "{name}: {f}");
        assert_eq!(f["false_journeys"], serde_json::json!([]), "{name}: {f}");
        assert_eq!(f["false_pages"], serde_json::json!([]), "{name}: {f}");
        // Time-to-know: every location knew, within one interval + the journey's detection time.
        let know = f["time_to_know_s"].as_f64().unwrap_or_else(|| panic!("{name} never known: {f}"));
        for loc in locations {
            let k = f["time_to_know_by_agent"][loc]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {loc} never knew: {f}"));
            assert!(k >= know && k <= INTERVAL_S + TIMEOUT_S + SLACK_S, "{name}@{loc}: time-to-know {k}s");
        }
        // Time-to-detect. A page needs min_locations = 2 locations burning: the
        // second location knows at most one interval + detection time after the
        // injection; then a scrape (1 s), the SLI and ratio recordings and the
        // alert rule (groups evaluated every 1 s, independently), `for: 2s`, and
        // the game day's 1 s alert polling.
        let fired = f["prometheus"]["after_s"].as_f64().unwrap_or_else(|| panic!("{name}: Prometheus never fired: {f}"));
        let paged = f["alertmanager"]["after_s"].as_f64().unwrap_or_else(|| panic!("{name}: never paged: {f}"));
        assert!(know < fired && fired <= INTERVAL_S + TIMEOUT_S + SLACK_S + 8.0, "{name}: know {know}s, fired {fired}s");
        assert!(paged >= fired - 1.0 && paged <= fired + 3.0, "{name}: fired {fired}s, paged {paged}s");
        let alert = &f["alertmanager"]["alert"];
        assert_eq!(alert["receivers"], serde_json::json!([format!("{team}-pager")]), "{name}: {alert}");
        assert_eq!(alert["labels"]["team"], team, "{name}");
        assert_eq!(alert["labels"]["journey_name"], journey, "{name}");
        assert_eq!(alert["labels"]["severity"], "page", "{name}");
        // The page reached the team's receiver on loopback, when the report says.
        let (ti, th, end) = (
            f["injected_unix_ms"].as_i64().unwrap(),
            f["healed_unix_ms"].as_i64().unwrap(),
            f["ended_unix_ms"].as_i64().unwrap(),
        );
        let pager = format!("{team}-pager");
        let during = |(at, _, _): &&(i64, String, Value)| *at >= ti && *at <= end;
        let firing = log
            .iter()
            .filter(during)
            .find(|(_, r, b)| *r == pager && b["status"] == "firing" && b["commonLabels"]["journey_name"] == journey)
            .unwrap_or_else(|| panic!("{name}: no page reached {pager}: {log:?}"));
        let page_at = ti + (paged * 1000.0) as i64;
        assert!(
            (firing.0 - page_at).abs() <= 2_500,
            "{name}: webhook at +{:.1}s, report says paged at +{paged}s",
            secs(firing.0 - ti)
        );
        // No other pager rang (tickets may: the slow burn windows see the fault too).
        let others: Vec<_> = log
            .iter()
            .filter(during)
            .filter(|(_, r, b)| r.ends_with("-pager") && *r != pager && b["status"] == "firing")
            .collect();
        assert!(others.is_empty(), "{name}: other teams paged: {others:?}");
        // Recovery: journeys pass again, the alert resolves in Prometheus and Alertmanager,
        // and the receiver got the resolved notification.
        // The CRM worker first drains the leads queued during the stall (one per
        // run per location, 400 ms + up to 10% each, deleted ones included) before
        // a new lead gets through.
        let backlog = if journey == "lead-capture" {
            locations.len() as f64 * (HOLD_S as f64 / INTERVAL_S + 1.0).ceil() * 0.44
        } else {
            0.0
        };
        let recover = f["time_to_recover_s"].as_f64().unwrap_or_else(|| panic!("{name}: never recovered: {f}"));
        assert!(recover <= backlog + INTERVAL_S + TIMEOUT_S + SLACK_S, "{name}: recover {recover}s");
        let resolved = f["alertmanager"]["resolved_after_heal_s"].as_f64().unwrap_or_else(|| panic!("{name}: page never resolved: {f}"));
        assert!(resolved > 0.0 && f["prometheus"]["resolved_after_heal_s"].as_f64().is_some(), "{name}: {f}");
        // Alertmanager sends it at the group's next flush (group_interval, 1 s) after
        // the alert resolved, which for the last fault can be after the game day exited.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !hooks.lock().unwrap().iter().any(|(at, r, b)| {
            *at >= th && *r == pager && b["status"] == "resolved" && b["commonLabels"]["journey_name"] == journey
        }) {
            assert!(tokio::time::Instant::now() < deadline, "{name}: no resolved notification reached {pager}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if let Some(keep) = std::env::var_os("GAMEDAY_KEEP_REPORT") {
        std::fs::create_dir_all(&keep).unwrap();
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), Path::new(&keep).join(e.file_name())).unwrap();
        }
    }
    let f: Value = http.get(format!("{target}/admin/faults")).send().await.unwrap().json().await.unwrap();
    assert_no_faults(&f);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&demo.credentials_dir);
}

/// `vantage gameday SCENARIO --out OUT`, killed if it outlives `limit`.
async fn run_gameday(scenario: &std::path::Path, out: &std::path::Path, limit: Duration) -> std::process::Output {
    let run = Command::new(BIN).arg("gameday").arg(scenario).arg("--out").arg(out).kill_on_drop(true).output();
    tokio::time::timeout(limit, run).await.expect("game day finishes").unwrap()
}

/// `vantage run --config CFG` against the demo (its environment overrides), killed on drop; its
/// errors go to CFG.stderr, for [`agent_gone`].
fn run_agent(cfg: &Path, demo: &DemoEnv) -> Child {
    let stderr = std::fs::File::create(stderr_of(cfg)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(cfg)
        .env("VANTAGE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    cmd.envs(&demo.overrides);
    cmd.spawn().unwrap()
}

fn stderr_of(cfg: &Path) -> PathBuf {
    let mut p = cfg.as_os_str().to_owned();
    p.push(".stderr");
    p.into()
}

/// Why an agent started by [`run_agent`] does not answer: its exit status (if
/// it exited) and what it wrote to stderr.
fn agent_gone(cfg: &Path, child: &mut Child) -> String {
    let status = match child.try_wait() {
        Ok(Some(s)) => format!("exited with {s}"),
        Ok(None) => "still running".to_string(),
        Err(e) => format!("status unknown: {e}"),
    };
    let stderr = std::fs::read_to_string(stderr_of(cfg)).unwrap_or_default();
    format!("{status}; stderr: {stderr:?}")
}
