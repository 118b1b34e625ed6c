//! One set of names: the agent's `/metrics` carries exactly the series that
//! its OTLP export gives after the Collector's standard Prometheus
//! translation. The OTLP side is what a real collector (Rotel) received,
//! translated here by the published rules (a second, independent
//! implementation); the `/metrics` side is what the agent serves, checked by
//! Debian's `promtool check metrics`.

mod common;

use common::collector::{Collector, MetricKind, MetricPoint};
use common::target::Target;
use common::{free_port, tempdir};

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const WAIT: Duration = Duration::from_secs(20);

/// The Collector's rules, as documented for `pkg/translator/prometheus`,
/// restricted to what the agent uses: `.` and other non-alphanumerics → `_`,
/// unit `s` → `_seconds`, monotonic sums → `_total`.
fn translate(p: &MetricPoint) -> (String, BTreeSet<String>) {
    let mut name: String = p.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    match p.unit.as_str() {
        "" => {}
        "s" => name.push_str("_seconds"),
        u => panic!("unit {u} of {} is not covered by this test", p.name),
    }
    if p.kind == MetricKind::Sum && p.is_monotonic == Some(true) {
        name.push_str("_total");
    }
    let labels = p.attributes.keys().map(|k| k.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()).collect();
    (name, labels)
}

/// (family, label names) of every sample in a text exposition; histogram
/// samples are folded into their family, `le` dropped.
fn exposition_series(text: &str) -> BTreeSet<(String, BTreeSet<String>)> {
    let mut types = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            types.insert(n.to_string(), t.to_string());
        }
    }
    let mut out = BTreeSet::new();
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, rest) = l.split_at(l.find(['{', ' ']).unwrap());
        let mut family = name.to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if types.get(base).map(String::as_str) == Some("histogram") {
                    family = base.to_string();
                }
            }
        }
        assert!(types.contains_key(&family), "sample without a # TYPE line: {l}");
        let mut labels = BTreeSet::new();
        if let Some(body) = rest.strip_prefix('{') {
            let body = &body[..body.rfind('}').unwrap()];
            // Label values here hold no `",` sequences, so a split is enough.
            for pair in body.split("\",") {
                let k = pair.split_once('=').unwrap().0;
                if k != "le" {
                    labels.insert(k.to_string());
                }
            }
        }
        out.insert((family, labels));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_has_the_names_of_the_translated_otlp() {
    let t = Target::start().await;
    let col = Collector::start();
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("probes.d")).unwrap();
    let probes = "journeys:\n  - name: shop \"main\"\n    interval: 1s\n    labels: {team: web, service.tier: gold}\n    buckets: [0.25, 2]\n    steps:\n      - name: home\n        http: {url: \"${env.BASE}/json\"}\n";
    std::fs::File::create(dir.join("probes.d/shop.yaml")).unwrap().write_all(probes.as_bytes()).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let agent = dir.join("agent.yaml");
    let cfg = format!("id: names-1\nlocation: eu-names\nprobes: [probes.d]\nshutdown_grace: 2s\nadmin: {{listen: \"{admin}\"}}\ntelemetry:\n  otlp: {{endpoint: \"{}\", export_interval: 1s}}\n", col.grpc_endpoint());
    std::fs::write(&agent, cfg).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent =
        Kill(Command::new(BIN).args(["run", "--config"]).arg(&agent).env("BASE", t.url("")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());

    // Every series exists at 0 from startup, before any run.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/metrics")).await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "admin endpoint never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for want in [
        "synthetics_agent_config_reloads_total{result=\"failure\",synthetics_location=\"eu-names\"} 0",
        "synthetics_callback_requests_total{result=\"unknown_token\",synthetics_location=\"eu-names\"} 0",
        "synthetics_journey_runs_total{error_type=\"timeout\",journey_name=\"shop \\\"main\\\"\",outcome=\"failure\",service_tier=\"gold\",synthetics_location=\"eu-names\",team=\"web\"} 0",
    ] {
        assert!(first.contains(want), "missing at startup: {want}\n{first}");
    }

    // After two runs, both sides carry the last-run gauge too; compare them.
    col.wait_for_metric("synthetics.journey.runs", |p| p.attributes["outcome"] == "success" && p.value.unwrap_or(0.0) >= 2.0, WAIT);
    col.wait_for_metric("synthetics.journey.last_run.timestamp", |_| true, WAIT);
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    for want in [
        "synthetics_journey_runs_total{error_type=\"timeout\",journey_name=\"shop \\\"main\\\"\",outcome=\"failure\",service_tier=\"gold\",synthetics_location=\"eu-names\",team=\"web\"} 0",
        "synthetics_journey_skipped_total{journey_name=\"shop \\\"main\\\"\"",
        "synthetics_journey_cleanup_failures_total{journey_name=\"shop \\\"main\\\"\"",
        "synthetics_journey_duration_seconds_bucket{journey_name=\"shop \\\"main\\\"\",outcome=\"success\",service_tier=\"gold\",synthetics_location=\"eu-names\",team=\"web\",le=\"2\"}",
        "synthetics_journey_duration_seconds_bucket{journey_name=\"shop \\\"main\\\"\",outcome=\"degraded\",service_tier=\"gold\",synthetics_location=\"eu-names\",team=\"web\",le=\"+Inf\"} 0",
        "# TYPE synthetics_journey_duration_seconds histogram",
        "# TYPE synthetics_journey_last_run_timestamp_seconds gauge",
        "probe_success{journey_name=\"shop \\\"main\\\"\",service_tier=\"gold\",synthetics_location=\"eu-names\",team=\"web\"} 1",
    ] {
        assert!(text.contains(want), "missing: {want}\n{text}");
    }
    let served: BTreeSet<_> = exposition_series(&text).into_iter().filter(|(n, _)| !n.starts_with("probe_")).collect();
    let received: BTreeSet<_> = col.metrics().iter().map(translate).collect();
    let only_otlp: Vec<_> = received.difference(&served).collect();
    let only_prom: Vec<_> = served.difference(&received).collect();
    assert!(only_otlp.is_empty() && only_prom.is_empty(), "names differ\nonly via OTLP: {only_otlp:?}\nonly on /metrics: {only_prom:?}");
    assert!(served.len() >= 10, "too few series to compare: {served:?}");

    // Debian's promtool lints the exposition (format, counter suffixes, …).
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; run .ci/install-test-deps)");
    lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}
