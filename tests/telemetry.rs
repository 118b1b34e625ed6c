//! What reaches a real OpenTelemetry collector (Rotel) from the `vantage`
//! binary: metric names, attributes, temporality, histogram buckets, the span
//! tree, resource attributes; secrets never; counts survive an outage.

mod common;

use common::{free_port, tempdir};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::collector::{Collector, MetricKind, MetricPoint, Temporality};
use common::target::Target;

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const WAIT: Duration = Duration::from_secs(15);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

fn attrs(p: &MetricPoint) -> Vec<&str> {
    p.attributes.keys().map(String::as_str).collect()
}

async fn run(cmd: Command) -> Output {
    let mut cmd = cmd;
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

const PROBES: &str = r#"
journeys:
  - name: checkout
    interval: 30s
    labels: {team: payments, service: shop, environment: test, tier: gold}
    buckets: [0.2, 0.75]
    steps:
      - name: home
        http: {url: "${env.BASE}/json"}
      - name: pay
        http: {url: "${env.BASE}/status/500"}
        assert: {status: 200}
  - name: healthy
    interval: 30s
    labels: {team: web, service: site, environment: test}
    steps:
      - name: home
        http: {url: "${env.BASE}/json"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_over_grpc_exports_runs_histograms_and_span_tree() {
    let t = Target::start().await;
    let col = Collector::start();
    let dir = tempdir();
    let probes = write(&dir, "probes.yaml", PROBES);
    let agent = write(&dir, "agent.yaml", "id: agent-7\nlocation: eu-test-1\nadmin: {listen: \"\"}\n");
    let mut cmd = Command::new(BIN);
    cmd.args(["once", "--format", "json", "--config"]).arg(&agent).arg(&probes).args(["--otlp-endpoint", &col.grpc_endpoint()]).env("BASE", t.url(""));
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed run exits 1\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));

    // The JSON contract of `once`.
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 2);
    let checkout = &runs[0];
    assert_eq!(checkout["journey"], "checkout");
    assert_eq!(checkout["outcome"], "failure");
    assert_eq!(checkout["error_type"], "http_status");
    assert_eq!(checkout["message"], "step `pay`: expected status 200, got 500 (body: status 500)");
    assert!(checkout["duration_ms"].as_f64().unwrap() > 0.0);
    let steps = checkout["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for key in ["name", "kind", "outcome", "duration_ms", "error"] {
        assert!(steps[1].get(key).is_some(), "step has `{key}`: {}", steps[1]);
    }
    assert_eq!(steps[1]["error"], "expected status 200, got 500 (body: status 500)");
    assert_eq!(runs[1]["outcome"], "success");
    let trace_id = checkout["trace_id"].as_str().unwrap().to_string();

    // Metrics: the failure series, and every other outcome series at 0.
    let pts = col.wait_for_metric(
        "synthetics.journey.runs",
        |p| p.attributes.get("journey.name").map(String::as_str) == Some("checkout") && p.attributes.get("outcome").map(String::as_str) == Some("failure") && p.attributes.get("error.type").map(String::as_str) == Some("http_status"),
        WAIT,
    );
    let p = &pts[0];
    assert_eq!(p.value, Some(1.0));
    assert_eq!(attrs(p), vec!["environment", "error.type", "journey.name", "outcome", "service", "synthetics.location", "team", "tier"]);
    assert_eq!(p.attributes["synthetics.location"], "eu-test-1");
    assert_eq!(p.attributes["team"], "payments");
    assert_eq!(p.kind, MetricKind::Sum);
    assert_eq!(p.temporality, Some(Temporality::Cumulative));
    assert_eq!(p.is_monotonic, Some(true));
    assert_eq!(p.resource.get("service.name").map(String::as_str), Some("vantage"));
    assert_eq!(p.resource.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(p.resource.get("service.instance.id").map(String::as_str), Some("agent-7"));
    assert_eq!(p.resource.get("cloud.region").map(String::as_str), Some("eu-test-1"));
    assert!(!p.resource.get("host.name").cloned().unwrap_or_default().is_empty());

    let all: Vec<MetricPoint> = col.metrics().into_iter().filter(|m| m.name == "synthetics.journey.runs" && m.attributes["journey.name"] == "checkout").collect();
    let mut latest: BTreeMap<(String, String), f64> = BTreeMap::new();
    for m in &all {
        latest.insert((m.attributes["outcome"].clone(), m.attributes.get("error.type").cloned().unwrap_or_default()), m.value.unwrap());
    }
    for (outcome, et) in [("success", ""), ("degraded", ""), ("failure", "timeout"), ("failure", "connect"), ("failure", "dns"), ("failure", "assertion"), ("failure", "body_too_large")] {
        assert_eq!(latest.get(&(outcome.to_string(), et.to_string())), Some(&0.0), "series outcome={outcome} error.type={et} exported at 0: {latest:?}");
    }
    let healthy = col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["journey.name"] == "healthy" && p.attributes["outcome"] == "success", WAIT);
    assert_eq!(healthy[0].value, Some(1.0));
    assert!(!healthy[0].attributes.contains_key("error.type"), "success carries no error.type");

    // Histograms: journey duration buckets sit on the journey's thresholds.
    // Every outcome's histogram exists (empty) from startup; the run landed in its own.
    let d = col.wait_for_metric("synthetics.journey.duration", |p| p.attributes["journey.name"] == "checkout" && p.attributes.get("error.type").map(String::as_str) == Some("http_status"), WAIT);
    assert_eq!(d[0].kind, MetricKind::Histogram);
    assert_eq!(d[0].unit, "s");
    assert_eq!(d[0].count, Some(1));
    assert!(d[0].explicit_bounds.contains(&0.2) && d[0].explicit_bounds.contains(&0.75), "{:?}", d[0].explicit_bounds);
    let s = col.wait_for_metric("synthetics.step.duration", |p| p.attributes["step.name"] == "pay", WAIT);
    assert_eq!(s[0].attributes["step.kind"], "http");
    assert_eq!(s[0].attributes["outcome"], "failure");
    let phases: Vec<String> = col
        .wait_for_metric("synthetics.http.phase.duration", |p| p.attributes["step.name"] == "home" && p.attributes["journey.name"] == "checkout", WAIT)
        .iter()
        .map(|p| p.attributes["phase"].clone())
        .collect();
    for phase in ["connect", "ttfb", "transfer"] {
        assert!(phases.iter().any(|p| p == phase), "phase {phase} in {phases:?}");
    }

    // Traces: root `journey checkout` (ERROR) with one child per step.
    let spans = col.wait_for_n_spans(3, |s| s.trace_id == trace_id, WAIT);
    let root = spans.iter().find(|s| s.name == "journey checkout").expect("root span");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.status_code, "STATUS_CODE_ERROR");
    assert_eq!(root.status_message, "step `pay`: expected status 200, got 500 (body: status 500)");
    assert_eq!(root.attributes["error.type"], "http_status");
    assert_eq!(root.attributes["team"], "payments");
    assert_eq!(root.attributes["journey.name"], "checkout");
    assert_eq!(root.attributes["synthetics.location"], "eu-test-1");
    assert_eq!(root.attributes["synthetics.run.attempt"], "1");
    // A first attempt is traced under its run id, so the run id finds the trace.
    assert_eq!(root.trace_id, root.attributes["synthetics.run.id"]);
    assert_eq!(checkout["run_id"].as_str(), Some(trace_id.as_str()));
    let mut children: Vec<&str> = spans.iter().filter(|s| s.parent_span_id.as_deref() == Some(root.span_id.as_str())).map(|s| s.name.as_str()).collect();
    children.sort();
    assert_eq!(children, vec!["step home", "step pay"]);
    let pay = spans.iter().find(|s| s.name == "step pay").unwrap();
    assert_eq!(pay.kind, "SPAN_KIND_CLIENT");
    assert_eq!(pay.attributes["http.response.status_code"], "500");
    assert_eq!(pay.attributes["http.request.method"], "GET");
    assert_eq!(pay.attributes["error.type"], "http_status");
    assert_eq!(pay.status_code, "STATUS_CODE_ERROR");
    // Each phase in milliseconds, under its own name; `pay` reuses the
    // connection `home` opened, so only `home` connects.
    let home = spans.iter().find(|s| s.name == "step home").unwrap();
    for (span, phases) in [(home, &["connect", "ttfb", "transfer"][..]), (pay, &["ttfb", "transfer"][..])] {
        for phase in phases {
            let ms: f64 = span.attributes.get(&format!("synthetics.phase.{phase}_ms")).unwrap_or_else(|| panic!("no {phase} phase on {:?}", span.attributes)).parse().unwrap();
            assert!((0.0..5000.0).contains(&ms), "{phase}: {ms}");
        }
    }
    assert!(!pay.attributes.contains_key("synthetics.phase.connect_ms"), "{:?}", pay.attributes);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_is_chosen_by_the_standard_environment_variables() {
    let t = Target::start().await;
    let col = Collector::start();
    let dir = tempdir();
    let probes = write(&dir, "probes.yaml", PROBES);
    let mut cmd = Command::new(BIN);
    cmd.args(["once", "--journey", "healthy"])
        .arg(&probes)
        .env("BASE", t.url(""))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", col.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let p = col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["journey.name"] == "healthy" && p.attributes["outcome"] == "success", WAIT);
    assert_eq!(p[0].value, Some(1.0));
    assert_eq!(p[0].attributes["synthetics.location"], "local");
    col.wait_for_spans(|s| s.name == "journey healthy" && s.status_code != "STATUS_CODE_ERROR", WAIT);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_output_logs_spans_or_metrics() {
    const CANARIES: [&str; 2] = ["hunter2-canary-secret", "bearer-canary-token-987"];
    let t = Target::start().await;
    let col = Collector::start();
    let dir = tempdir();
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    write(&creds, "password", "hunter2-canary-secret\n");
    let probes = write(
        &dir,
        "probes.yaml",
        r#"
journeys:
  - name: secretive
    interval: 30s
    steps:
      - name: login
        http:
          method: POST
          url: "${env.BASE}/login"
          json: {password: "${secret.password}"}
        extract:
          token: {json: "$.token", secret: true}
      - name: query with secret in url
        http:
          url: "${env.BASE}/query?pw=${secret.password}&token=${token}"
          headers: {authorization: "Bearer ${token}"}
        assert:
          body_contains: "not in the body"
"#,
    );
    for format in ["text", "json"] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-format", "json", "once", "--format", format, "--otlp-endpoint", &col.grpc_endpoint()])
            .arg(&probes)
            .env("BASE", t.url(""))
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env("VANTAGE_LOG", "debug");
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(1));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains("[REDACTED]"), "the failing step echoes the secret, redacted: {all}");
        for c in CANARIES {
            assert!(!all.contains(c), "canary {c} leaked into {format} output:\n{all}");
        }
    }
    col.wait_for_spans(|s| s.name == "step query with secret in url" && s.attributes.get("url.full").is_some_and(|u| u.contains("[REDACTED]")), WAIT);
    // Each `once` process is its own cumulative stream, so each reports 1.
    col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["outcome"] == "failure" && p.attributes["error.type"] == "assertion" && p.value == Some(1.0), WAIT);
    let log = col.raw_log();
    for c in CANARIES {
        assert!(!log.contains(c), "canary {c} reached the collector");
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn status(admin: &str) -> serde_json::Value {
    reqwest::get(format!("http://{admin}/status")).await.unwrap().json().await.unwrap()
}

/// The daemon: cumulative counts survive a collector outage, a broken reload
/// is rejected whole, a good one applies, SIGTERM flushes and exits in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_survives_collector_outage_reloads_and_shuts_down_cleanly() {
    let t = Target::start().await;
    let mut col = Collector::start();
    let dir = tempdir();
    let probes_dir = dir.join("probes.d");
    std::fs::create_dir_all(&probes_dir).unwrap();
    let good = "journeys:\n  - name: tick\n    interval: 1s\n    steps:\n      - name: home\n        http: {url: \"${env.BASE}/json\"}\n";
    write(&probes_dir, "tick.yaml", good);
    let admin = format!("127.0.0.1:{}", free_port());
    let agent = write(
        &dir,
        "agent.yaml",
        &format!(
            "id: daemon-1\nlocation: eu-test-2\nprobes: [probes.d]\nshutdown_grace: 3s\nadmin: {{listen: \"{admin}\"}}\ntelemetry:\n  otlp: {{endpoint: \"{}\", export_interval: 1s}}\n",
            col.grpc_endpoint()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&agent)
        .env("BASE", t.url(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["outcome"] == "success" && p.value.unwrap_or(0.0) >= 1.0, WAIT);
    assert_eq!(first[0].attributes["synthetics.location"], "eu-test-2");

    // Outage: runs go on; the counts come back whole with the collector.
    col.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = status(&admin).await["journeys"]["tick"]["runs"].as_u64().unwrap();
    col.restart();
    let after = col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["outcome"] == "success" && p.value.unwrap_or(0.0) >= during as f64, WAIT);
    assert!(after[0].value.unwrap() >= during as f64, "cumulative count includes the outage");

    // A broken reload is rejected whole with file:line:column; the old schedule keeps running.
    write(&probes_dir, "broken.yaml", "journeys:\n  - name: new\n    interval: 1s\n    steps:\n      - name: s\n        htpp: {}\n");
    let resp = reqwest::Client::new().post(format!("http://{admin}/-/reload")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.unwrap();
    // The reply says where, the log says what: replies never echo file contents.
    assert!(body.contains("1 problem(s) at broken.yaml:6:9"), "{body}");
    assert!(!body.contains("htpp"), "{body}");
    let runs_before = status(&admin).await["journeys"]["tick"]["runs"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(status(&admin).await["journeys"]["tick"]["runs"].as_u64().unwrap() > runs_before, "old schedule still running");
    col.wait_for_metric("synthetics.agent.config.reloads", |p| p.attributes["result"] == "failure" && p.value == Some(1.0), WAIT);

    // A good reload via SIGHUP: unchanged journey keeps its counters, a new one starts.
    write(&probes_dir, "broken.yaml", "journeys:\n  - name: new\n    interval: 1s\n    steps:\n      - name: s\n        http: {url: \"${env.BASE}/json\"}\n");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(&admin).await;
        if s["journeys"]["new"]["runs"].as_u64().unwrap_or(0) >= 1 {
            assert!(s["journeys"]["tick"]["runs"].as_u64().unwrap() > runs_before, "unchanged journey kept its counters");
            break;
        }
        assert!(Instant::now() < deadline, "new journey never ran: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let prom = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(prom.contains("probe_success{journey_name=\"tick\",synthetics_location=\"eu-test-2\"} 1"), "{prom}");
    assert!(prom.contains("probe_http_duration_seconds{journey_name=\"tick\",synthetics_location=\"eu-test-2\",phase=\"ttfb\"}"), "{prom}");

    // Removing a journey stops its series: absent from /metrics and from later OTLP exports.
    std::fs::remove_file(probes_dir.join("broken.yaml")).unwrap();
    let resp = reqwest::Client::new().post(format!("http://{admin}/-/reload")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "reloaded: 0 added, 0 changed, 1 removed\n");
    let removed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 + 200_000_000;
    let later = |p: &MetricPoint| p.time_unix_nano.unwrap_or(0) > removed_at + 1_000_000_000;
    col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["journey.name"] == "tick" && later(p), WAIT);
    assert!(
        !col.metrics().iter().any(|p| p.attributes.get("journey.name").map(String::as_str) == Some("new") && later(p)),
        "series of the removed journey are still exported"
    );
    let prom = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(!prom.contains("journey_name=\"new\""), "{prom}");

    // SIGTERM: exits 0 within the grace period, after a final export.
    let runs_at_stop = status(&admin).await["journeys"]["tick"]["runs"].as_u64().unwrap();
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(8), "shutdown took {:?}", t0.elapsed());
    col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["journey.name"] == "tick" && p.attributes["outcome"] == "success" && p.value.unwrap_or(0.0) >= runs_at_stop as f64, WAIT);
    let _ = std::fs::remove_dir_all(dir);
}
/// The canary password in every form a secret leaves in, and a token the
/// target hands out (extracted as secret by the very step that then fails).
const PW: &str = "cAnary pw/\"q\"<&>+end";
const TOKEN: &str = "tOken-canary \"json\"/<x>";

/// A target that reflects `pw` back in one encoding (`enc`), after `pad` filler characters.
async fn reflecting_target() -> std::net::SocketAddr {
    use axum::extract::{ws::WebSocketUpgrade, Query};
    use axum::routing::get;
    use base64::Engine as _;
    use std::collections::HashMap;
    let app = axum::Router::new()
        .route(
            "/reflect",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let pw = q.get("pw").cloned().unwrap_or_default();
                let pad = "x".repeat(q.get("pad").and_then(|p| p.parse().ok()).unwrap_or(0));
                let enc = match q.get("enc").map(String::as_str).unwrap_or("raw") {
                    "pct" => percent_encoding::utf8_percent_encode(
                        &pw,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string(),
                    "form" => url::form_urlencoded::byte_serialize(pw.as_bytes()).collect(),
                    "json" => serde_json::json!({ "pw": pw }).to_string(),
                    "html" => pw
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                        .replace('"', "&quot;"),
                    "basic" => format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("probe:{pw}"))
                    ),
                    _ => pw,
                };
                format!("{pad}{enc} tail")
            }),
        )
        .route(
            "/token",
            get(|| async { axum::Json(serde_json::json!({ "token": TOKEN, "user": "probe" })) }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async {
                ws.on_upgrade(|mut s| async move { while let Some(Ok(_)) = s.recv().await {} })
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Substrings no output may hold: each canary's distinctive start (in every
/// encoding but base64 it survives as is, and cut excerpts keep a prefix) and the base64 forms.
fn forbidden() -> Vec<String> {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("probe:{PW}"));
    vec!["cAn".into(), "tOk".into(), b[8..24].to_string()]
}

fn leaks(text: &str) -> Vec<String> {
    forbidden()
        .into_iter()
        .filter(|f| text.contains(f.as_str()))
        .collect()
}

/// Issue 14: every encoding of a secret (percent/form, `| urlencode`, JSON,
/// HTML, base64 of `user:password`, a prefix cut by an excerpt, the
/// WebSocket `user:password@`), in every output: `once` text and JSON, the
/// agent's logs, spans and metrics at a real collector, the daemon's `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_in_every_encoding_never_leave() {
    let addr = reflecting_target().await;
    let col = Collector::start();
    let dir = tempdir();
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    write(&creds, "password", &format!("{PW}\n"));
    let mut probes = String::from("journeys:\n");
    // "cut": the secret starts at character 197 of a 200-character excerpt.
    for (enc, pad) in [
        ("raw", 0),
        ("pct", 0),
        ("form", 0),
        ("json", 0),
        ("html", 0),
        ("basic", 0),
        ("cut", 197),
    ] {
        probes.push_str(&format!(
            r#"  - name: enc {enc}
    interval: 2s
    steps:
      - name: reflect {enc}
        http: {{url: "http://{addr}/reflect?enc={enc}&pad={pad}&pw=${{secret.password | urlencode}}"}}
        assert: {{body_contains: "absent-marker"}}
"#
        ));
    }
    probes.push_str(&format!(
        r#"  - name: extract then fail
    interval: 2s
    steps:
      - name: token
        http: {{url: "http://{addr}/token"}}
        extract: {{token: {{json: "$.token", secret: true}}}}
        assert: {{body_contains: "absent-marker"}}
  - name: websocket userinfo
    interval: 2s
    steps:
      - name: connect
        websocket: {{connection: c, connect: "ws://probe:${{secret.password | urlencode}}@{addr}/ws"}}
      - name: fail after
        http: {{url: "http://{addr}/reflect?enc=json&pw=${{secret.password | urlencode}}"}}
        assert: {{body_contains: "absent-marker"}}
"#
    ));
    let probes = write(&dir, "probes.yaml", &probes);
    for format in ["text", "json"] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--log-format",
            "json",
            "once",
            "--format",
            format,
            "--otlp-endpoint",
            &col.grpc_endpoint(),
        ])
        .arg(&probes)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("VANTAGE_LOG", "debug");
        let out = run(cmd).await;
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{all}");
        // Every journey failed and quoted the reflected body: the test sees what it guards.
        assert!(
            all.matches("[REDACTED]").count() >= 8,
            "each failing step echoes its secret, redacted:\n{all}"
        );
        assert!(all.contains(" tail"), "{all}");
        assert_eq!(
            leaks(&all),
            Vec::<String>::new(),
            "canary leaked into `once --format {format}` output or logs:\n{all}"
        );
    }
    col.wait_for_spans(
        |s| {
            s.name == "step connect"
                && s.attributes
                    .get("url.full")
                    .is_some_and(|u| u.contains("probe:[REDACTED]@"))
        },
        WAIT,
    );
    col.wait_for_spans(|s| s.name == "step reflect cut", WAIT);
    col.wait_for_metric(
        "synthetics.journey.runs",
        |p| p.attributes["journey.name"] == "enc basic" && p.attributes["outcome"] == "failure",
        WAIT,
    );
    let log = col.raw_log();
    assert_eq!(
        leaks(&log),
        Vec::<String>::new(),
        "canary reached the collector (spans or metrics)"
    );

    // The daemon: /status and its logs.
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write(
        &dir,
        "agent.yaml",
        &format!(
            "probes: [probes.yaml]\nadmin: {{listen: \"{admin}\"}}\ncredentials_dir: \"{}\"\n",
            creds.display()
        ),
    );
    let log_path = dir.join("daemon.log");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("VANTAGE_LOG", "debug")
        .stdout(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("daemon.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let st = loop {
        assert!(
            start.elapsed() < WAIT,
            "no /status with every journey failed in time"
        );
        if let Ok(r) = reqwest::get(format!("http://{admin}/status")).await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let text = v.to_string();
                if text.matches("[REDACTED]").count() >= 8 {
                    break text;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(leaks(&st), Vec::<String>::new(), "canary in /status: {st}");
    let logs = format!(
        "{}{}",
        std::fs::read_to_string(&log_path).unwrap_or_default(),
        std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default()
    );
    assert_eq!(
        leaks(&logs),
        Vec::<String>::new(),
        "canary in the daemon's logs: {logs}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 11: OTLP headers from the credentials directory (an API key) and
/// from the config reach a real collector on the wire, over gRPC (as request
/// metadata of every Export call, decoded from HTTP/2 by a TLS-terminating
/// proxy in front of Rotel, which cannot log or require headers itself) and
/// over HTTP (in every request head); the key never appears in the agent's
/// output, even at `VANTAGE_LOG=trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_headers_from_credentials_reach_the_collector_over_grpc_and_http_and_never_the_logs() {
    use common::tls::{GrpcProxy, Pki, TlsProxy};
    use base64::Engine as _;
    let t = Target::start().await;
    let col = Collector::start();
    let dir = tempdir();
    let pki = Pki::new(&dir);
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let key = format!("otlp-k3y-{}", uuid::Uuid::new_v4().simple());
    write(&creds, "otlp-api-key", &format!("{key}\n"));
    let probes = write(&dir, "probes.yaml", PROBES);
    let grpc = GrpcProxy::start(pki.server_config(false, &[b"h2"]), col.grpc_port()).await;
    let http = TlsProxy::start(pki.server_config(false, &[b"http/1.1"]), col.http_port()).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
    for (proto, port, id) in [("grpc", grpc.port, "hdr-grpc"), ("http/protobuf", http.port, "hdr-http")] {
        let cfg = write(
            &dir,
            &format!("{id}.yaml"),
            &format!(
                "id: {id}\nlocation: eu-test-1\ncredentials_dir: creds\ntelemetry:\n  otlp:\n    endpoint: \"https://localhost:{port}\"\n    protocol: {proto}\n    ca_file: ca.pem\n    headers: {{x-tenant: acme}}\n    header_credentials: {{x-api-key: otlp-api-key}}\n"
            ),
        );
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-format", "json", "once", "--journey", "healthy"])
            .arg(&probes)
            .arg("--config")
            .arg(&cfg)
            .current_dir(&dir)
            .env("BASE", t.url(""))
            .env("VANTAGE_LOG", "trace");
        let out = run(cmd).await;
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{output}");
        assert!(
            !output.contains(&key) && !output.contains(&key[9..]) && !output.contains(&b64[..24]),
            "{proto}: the API key is in the agent's output:\n{output}"
        );
        // Through the proxy to the collector, which accepted the data.
        col.wait_for_spans(|s| s.name == "journey healthy" && s.resource.get("service.instance.id").map(String::as_str) == Some(id), WAIT);
        col.wait_for_metric(
            "synthetics.journey.runs",
            |p| p.resource.get("service.instance.id").map(String::as_str) == Some(id) && p.attributes["outcome"] == "success",
            WAIT,
        );
    }
    // gRPC: every Export call carried both headers as metadata.
    for service in ["trace.v1.TraceService/Export", "metrics.v1.MetricsService/Export"] {
        let calls = grpc.requests_to(service);
        assert!(!calls.is_empty(), "no gRPC call to {service}: {:?}", grpc.requests.lock().unwrap());
        for c in &calls {
            let has = |k: &str, v: &str| c.headers.iter().any(|(hk, hv)| hk == k && hv == v);
            assert!(has("x-api-key", &key) && has("x-tenant", "acme"), "{service}: metadata {:?}", c.headers);
            assert!(has("content-type", "application/grpc"), "{c:?}");
        }
    }
    // HTTP: every request head carried both headers.
    let seen = http.seen_text();
    let heads: Vec<&str> = seen
        .split("POST /v1/")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").next().unwrap())
        .collect();
    for path in ["traces ", "metrics "] {
        assert!(heads.iter().any(|h| h.starts_with(path)), "no POST /v1/{path}in {heads:?}");
    }
    for h in &heads {
        let h = h.to_ascii_lowercase();
        assert!(
            h.contains(&format!("\r\nx-api-key: {key}\r\n")) && h.contains("\r\nx-tenant: acme\r\n"),
            "request head without the headers: {h}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
