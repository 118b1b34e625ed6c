//! Fleet readiness, end to end with the `vantage` binary: identity under the
//! unit's /proc sandbox, fleet warnings, OTLP over TLS/mTLS to a real
//! collector, reload and shutdown that tell the truth, signed probe bundles
//! from a loopback HTTPS server, and the PID-1 init.

mod common;

use common::collector::Collector;
use common::target::Target;
use common::tls::{BundleServer, Pki, TlsProxy};
use common::{free_port, tempdir};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const WAIT: Duration = Duration::from_secs(20);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `vantage run` child, killed on drop; stderr goes to a file.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, envs: &[(&str, String)]) -> Agent {
        let log = config.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple()));
        let err = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--log-format", "text", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(err)
            .env("VANTAGE_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Agent {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }
    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success());
    }
    async fn wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || c.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn status(admin: &str) -> serde_json::Value {
    reqwest::get(format!("http://{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(
    admin: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/status")).await {
            if let Ok(s) = r.json::<serde_json::Value>().await {
                if pred(&s) {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: {s}"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: admin endpoint not answering"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn journey_names(s: &serde_json::Value) -> Vec<String> {
    s["journeys"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

const ONE_JOURNEY: &str = "journeys:\n  - name: tick\n    interval: 1s\n    steps:\n      - name: closed\n        tcp: {address: \"127.0.0.1:1\"}\n";

/// The shipped unit sets ProcSubset=pid, which hides /proc/sys/kernel/hostname.
/// Reproduced here: private UTS, mount and PID namespaces, /proc mounted
/// `subset=pid`. The agent must still know the host name (gethostname(2)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_id_is_the_host_name_under_proc_subset_pid() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root: it creates mount/PID/UTS namespaces with unshare(1) to mount /proc with subset=pid like the unit's ProcSubset=pid; run the tests as root (CI does)");
    let col = Collector::start();
    let dir = tempdir();
    write(&dir, "probes.yaml", ONE_JOURNEY);
    let cfg = write(
        &dir,
        "agent.yaml",
        &format!(
            "location: eu-test-1\ntelemetry:\n  otlp: {{endpoint: \"{}\"}}\n",
            col.grpc_endpoint()
        ),
    );
    let sandbox = |inner: String| {
        let mut c = Command::new("unshare");
        c.args(["--uts", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c"]).arg(format!(
            "set -e; hostname vantage-fleet-eu1; mount -t proc -o subset=pid proc /proc; \
             if [ -e /proc/sys/kernel/hostname ]; then echo 'subset=pid did not hide /proc/sys' >&2; exit 97; fi; {inner}"
        ));
        c
    };
    let probes = dir.join("probes.yaml");
    let out = output(sandbox(format!(
        "exec {BIN} check --config {} {}",
        cfg.display(),
        probes.display()
    )))
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "unshare/mount failed or check failed (needs CAP_SYS_ADMIN; in a container run it privileged): {err}");
    assert!(
        err.contains("this agent is `vantage-fleet-eu1` (its host name)"),
        "{err}"
    );

    let out = output(sandbox(format!(
        "exec {BIN} once {} --config {}",
        probes.display(),
        cfg.display()
    )))
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the journey fails (closed port); {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("connect: could not connect to 127.0.0.1:1"),
        "{}",
        text(&out.stdout)
    );
    let spans = col.wait_for_spans(|s| s.name == "journey tick", WAIT);
    assert_eq!(
        spans[0].resource["service.instance.id"], "vantage-fleet-eu1",
        "{:?}",
        spans[0].resource
    );
    assert_eq!(spans[0].resource["host.name"], "vantage-fleet-eu1");
    let _ = std::fs::remove_dir_all(dir);
}

/// Each fleet warning points at its place in the file, and `check` still passes.
#[test]
fn check_warns_about_configs_that_cannot_work_in_a_fleet() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("probes.d")).unwrap();
    let cfg = write(&dir, "agent.yaml", "# shipped defaults\nid: \"\"\nlocation: local\nprobes: [probes.d]\nadmin:\n  listen: 127.0.0.1:9464\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!(
            "warning: {f}:2:5: `id` is not set, so this agent is `"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: {f}:3:11: `location` is still the placeholder `local`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("warning: {f}:6:11: no result leaves this host")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: {f}:4:9: zero journeys to run for location `local`"
        )),
        "{err}"
    );

    // A config fit for a fleet has no warnings.
    write(&dir, "probes.d/p.yaml", ONE_JOURNEY);
    write(&dir, "agent.yaml", "id: eu-1a\nlocation: eu-west-1\nprobes: [probes.d]\ntelemetry:\n  otlp: {endpoint: \"https://collector.example:4317\"}\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stderr)),
        (Some(0), String::new())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Unparsable OTLP settings are `check` errors with locations, never silently dropped.
#[test]
fn check_rejects_unusable_otlp_settings() {
    let dir = tempdir();
    let cfg = write(
        &dir,
        "agent.yaml",
        "id: a\nlocation: eu-west-1\ntelemetry:\n  otlp:\n    endpoint: \"collector:4317\"\n    headers: {\"bad header\": x}\n    header_credentials: {x-api-key: ../key}\n    client_cert: client.crt\n    compression: brotli\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:5:15: `telemetry.otlp.endpoint`: expected a URL like"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:6:14: `telemetry.otlp.headers`: `bad header` is not a valid header name"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:7:25: `telemetry.otlp.header_credentials`: `x-api-key`: expected a file name"
        )),
        "{err}"
    );
    assert!(
        err.contains("mutual TLS needs both `client_cert` and `client_key`"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:9:18: `telemetry.otlp.compression`: expected `gzip` or `none`, got `brotli`"
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// OTLP over TLS with a private CA and mutual TLS, to a real collector (Rotel
/// behind a TLS-terminating proxy that requires a client certificate), gRPC and HTTP.
/// Over HTTP the proxy also sees the API-key header from the credentials
/// directory and gzip bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_mutual_tls_reaches_a_real_collector() {
    let col = Collector::start();
    let dir = tempdir();
    let pki = Pki::new(&dir);
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    write(&creds, "otlp.crt", &pki.client_cert_pem);
    write(&creds, "otlp.key", &pki.client_key_pem);
    write(&creds, "otlp-api-key", "k3y-from-credentials\n");
    let probes = write(&dir, "probes.yaml", ONE_JOURNEY);
    let grpc = TlsProxy::start(pki.server_config(true, &[b"h2"]), col.grpc_port()).await;
    let http = TlsProxy::start(pki.server_config(true, &[b"http/1.1"]), col.http_port()).await;
    for (proto, port, id) in [
        ("grpc", grpc.port, "tls-grpc"),
        ("http/protobuf", http.port, "tls-http"),
    ] {
        let cfg = write(
            &dir,
            &format!("{id}.yaml"),
            &format!(
                "id: {id}\nlocation: eu-test-1\ncredentials_dir: creds\ntelemetry:\n  otlp:\n    endpoint: \"https://localhost:{port}\"\n    protocol: {proto}\n    ca_file: ca.pem\n    client_cert: otlp.crt\n    client_key: otlp.key\n    header_credentials: {{x-api-key: otlp-api-key}}\n    compression: gzip\n"
            ),
        );
        let out = output({
            let mut c = Command::new(BIN);
            c.arg("once")
                .arg(&probes)
                .arg("--config")
                .arg(&cfg)
                .current_dir(&dir);
            c
        })
        .await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        col.wait_for_spans(
            |s| {
                s.name == "journey tick"
                    && s.resource.get("service.instance.id").map(String::as_str) == Some(id)
            },
            WAIT,
        );
        col.wait_for_metric(
            "synthetics.journey.runs",
            |p| {
                p.resource.get("service.instance.id").map(String::as_str) == Some(id)
                    && p.attributes["outcome"] == "failure"
                    && p.value == Some(1.0)
            },
            WAIT,
        );
    }
    assert!(
        grpc.client_certs.load(Ordering::Relaxed) >= 1
            && http.client_certs.load(Ordering::Relaxed) >= 1,
        "mutual TLS was not used"
    );
    let seen = http.seen_text().to_ascii_lowercase();
    assert!(
        seen.contains("x-api-key: k3y-from-credentials"),
        "API key header missing on the wire"
    );
    assert!(
        seen.contains("content-encoding: gzip"),
        "bodies not gzip-compressed"
    );

    // Without the client certificate the collector is not reached, and `once` says so.
    let cfg = write(&dir, "nocert.yaml", &format!("id: nocert\ntelemetry:\n  otlp:\n    endpoint: \"https://localhost:{}\"\n    ca_file: ca.pem\n", grpc.port));
    let out = output({
        let mut c = Command::new(BIN);
        c.arg("once")
            .arg(&probes)
            .arg("--config")
            .arg(&cfg)
            .current_dir(&dir);
        c
    })
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains("export failed")
            || err.contains("export failing")
            || err.contains("final trace export"),
        "{err}"
    );
    assert!(!col
        .spans()
        .iter()
        .any(|s| s.resource.get("service.instance.id").map(String::as_str) == Some("nocert")));
    let _ = std::fs::remove_dir_all(dir);
}

/// Traces made while the collector is down are buffered up to
/// `max_buffered_spans` and delivered when it is back; what did not fit is
/// counted as dropped; the failure and the recovery are each logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_survive_a_collector_outage_within_the_buffer_and_drops_are_counted() {
    let mut col = Collector::start();
    let dir = tempdir();
    write(&dir, "probes.yaml", ONE_JOURNEY);
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write(
        &dir,
        "agent.yaml",
        &format!(
            "id: outage-1\nlocation: eu-test-1\nprobes: [probes.yaml]\nadmin: {{listen: \"{admin}\"}}\ntelemetry:\n  otlp: {{endpoint: \"{}\", export_interval: 1s, max_buffered_spans: 8}}\n",
            col.grpc_endpoint()
        ),
    );
    let mut agent = Agent::start(&cfg, &[]);
    col.wait_for_spans(|s| s.name == "journey tick", WAIT);
    let nanos = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    col.stop();
    let stopped_at = nanos();
    let before = status(&admin).await["journeys"]["tick"]["runs"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during = status(&admin).await["journeys"]["tick"]["runs"]
        .as_u64()
        .unwrap();
    assert!(
        during >= before + 5,
        "runs went on during the outage: {before} -> {during}"
    );
    let restarted_at = nanos();
    col.restart();
    // The newest spans of the outage (2 per run, 8 kept) arrive after it.
    let late = col.wait_for_n_spans(
        3,
        |s| {
            s.name == "journey tick"
                && s.start_time_unix_nano
                    .is_some_and(|t| t > stopped_at + 500_000_000 && t < restarted_at)
        },
        WAIT,
    );
    assert!(late.len() >= 3);
    let dropped = col.wait_for_metric(
        "synthetics.agent.telemetry.dropped",
        |p| p.attributes["signal"] == "traces" && p.value.unwrap_or(0.0) >= 2.0,
        WAIT,
    );
    assert!(
        dropped[0].value.unwrap() <= 2.0 * (during - before + 2) as f64,
        "{:?}",
        dropped[0].value
    );
    agent.signal("-TERM");
    assert_eq!(agent.wait().await.code(), Some(0));
    let log = agent.log();
    assert_eq!(log.matches("trace export failing").count(), 1, "{log}");
    assert_eq!(log.matches("trace export recovered").count(), 1, "{log}");
    assert_eq!(log.matches("metrics export failing").count(), 1, "{log}");
    assert_eq!(log.matches("metrics export recovered").count(), 1, "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Reload reports agent-config changes; a comment line restarts nothing;
/// `vantage reload` (the unit's ExecReload) fails when the agent rejects the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_tells_what_it_applied_and_vantage_reload_fails_on_rejection() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("probes.d")).unwrap();
    let probe = write(&dir.join("probes.d"), "p.yaml", &format!("{ONE_JOURNEY}  - name: tock\n    interval: 1s\n    steps:\n      - name: closed\n        tcp: {{address: \"127.0.0.1:1\"}}\n"));
    let admin = format!("127.0.0.1:{}", free_port());
    let base = format!(
        "id: reload-1\nlocation: eu-test-1\nprobes: [probes.d]\nadmin: {{listen: \"{admin}\"}}\n"
    );
    let cfg = write(&dir, "agent.yaml", &base);
    let _agent = Agent::start(&cfg, &[]);
    wait_status(&admin, "first runs", |s| {
        s["journeys"]["tock"]["runs"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let reload = || {
        let mut c = Command::new(BIN);
        c.args(["reload", "--config"]).arg(&cfg);
        output(c)
    };

    // A comment line above the journeys: nothing changes.
    let original = std::fs::read_to_string(&probe).unwrap();
    std::fs::write(&probe, format!("# owned by team web\n\n{original}")).unwrap();
    let out = reload().await;
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (
            Some(0),
            "reloaded: 0 added, 0 changed, 0 removed\n".to_string()
        ),
        "{}",
        text(&out.stderr)
    );

    // Agent-config changes: applied ones and those that need a restart are named.
    write(
        &dir,
        "agent.yaml",
        &format!(
            "{base}shutdown_grace: 3s\nconcurrency: 8\ntelemetry:\n  otlp: {{compression: gzip}}\n"
        ),
    );
    let out = reload().await;
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(said, "reloaded: 0 added, 0 changed, 0 removed; applied: shutdown_grace; not applied, need a restart: concurrency, telemetry.otlp.compression\n");
    // Still true on the next reload: the agent runs with the old values.
    assert!(text(&reload().await.stdout)
        .contains("need a restart: concurrency, telemetry.otlp.compression"));

    // Rejected: exit 1 with every problem at its place; the old journeys keep running.
    std::fs::write(&probe, "journeys:\n  - name: tick\n    interval: 1s\n    steps:\n      - name: s\n        htpp: {}\n").unwrap();
    let out = reload().await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reload rejected, old config kept")
            && err.contains("p.yaml:6:9: unknown field `htpp`"),
        "{err}"
    );
    assert_eq!(journey_names(&status(&admin).await), ["tick", "tock"]);

    // No agent listening: a clear error, exit 1.
    let out = output({
        let mut c = Command::new(BIN);
        c.args(["reload", "--admin", &format!("127.0.0.1:{}", free_port())])
            .arg("--config")
            .arg(&cfg);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot reach the agent's admin endpoint"));
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent id whose first runs of these journeys start within `within` of startup.
fn id_with_early_starts(names: &[&str], interval: Duration, within: Duration) -> String {
    (0..100_000)
        .map(|i| format!("stop-{i}"))
        .find(|id| {
            names
                .iter()
                .all(|n| vantage::scheduler::first_offset(id, n, interval) < within)
        })
        .expect("an id with early first runs")
}

/// SIGTERM with runs in flight and a hung collector: the runs are cancelled
/// after `shutdown_grace`, their `finally` steps run within `cleanup_budget`
/// (one that cannot is abandoned and said so), each cut-short run is logged,
/// and the process exits within grace + budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_cleanup_within_the_budget_even_with_a_hung_collector() {
    let t = Target::start().await;
    let dir = tempdir();
    let names = ["tidy", "stuck"];
    let id = id_with_early_starts(&names, Duration::from_secs(60), Duration::from_millis(300));
    write(
        &dir,
        "probes.yaml",
        "journeys:\n\
        \x20 - name: tidy\n    interval: 60s\n    timeout: 50s\n    steps:\n      - {name: hang, timeout: 50s, http: {url: \"${env.BASE}/hang\"}}\n    finally:\n      - {name: slow cleanup, timeout: 5s, http: {url: \"${env.BASE}/delay/800\"}}\n      - {name: mark, http: {url: \"${env.BASE}/headers\"}}\n\
        \x20 - name: stuck\n    interval: 60s\n    timeout: 50s\n    steps:\n      - {name: hang, timeout: 50s, http: {url: \"${env.BASE}/hang\"}}\n    finally:\n      - {name: endless cleanup, timeout: 40s, http: {url: \"${env.BASE}/hang\"}}\n",
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write(
        &dir,
        "agent.yaml",
        &format!(
            "id: {id}\nlocation: eu-test-1\nprobes: [probes.yaml]\nshutdown_grace: 1s\ncleanup_budget: 4s\nadmin: {{listen: \"{admin}\"}}\ntelemetry:\n  otlp: {{endpoint: \"http://{}\", export_interval: 1s}}\n",
            t.silent
        ),
    );
    let mut agent = Agent::start(&cfg, &[("BASE", t.url(""))]);
    wait_status(&admin, "both runs in flight", |s| {
        s["scheduler"]["runs_started"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let t0 = Instant::now();
    agent.signal("-TERM");
    let code = agent.wait().await;
    let took = t0.elapsed();
    let log = agent.log();
    assert_eq!(code.code(), Some(0), "{log}");
    // 1s grace + 4s cleanup budget; 300 ms for signal delivery and process teardown as seen from here.
    assert!(
        took <= Duration::from_millis(5_300),
        "exit took {took:?}, budget is 1s grace + 4s cleanup: {log}"
    );
    assert!(
        took >= Duration::from_millis(3_500),
        "did not wait for the abandoned cleanup ({took:?}): {log}"
    );
    assert!(
        log.contains("journey=tidy")
            && log.contains("run cut short by shutdown; its finally steps ran"),
        "{log}"
    );
    assert!(
        log.contains("journey=stuck")
            && log.contains(
                "run abandoned: its finally steps did not finish within the cleanup budget"
            ),
        "{log}"
    );
    let marks = t
        .seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(p, _)| p == "/headers")
        .count();
    assert_eq!(
        marks, 1,
        "the finally steps of the cancelled run ran to the end"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempdir();
    for (n, t) in files {
        write(&dir, n, t);
    }
    let out = dir.join("b.tar.gz");
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(&dir)
        .args(&names)
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    data
}

/// Signs `data` with the `vantage bundle sign` CLI; returns the signature text.
fn sign(dir: &Path, key: &Path, data: &[u8]) -> String {
    let f = write(
        dir,
        &format!("bundle-{}.tar.gz", uuid::Uuid::new_v4().simple()),
        "",
    );
    std::fs::write(&f, data).unwrap();
    let out = Command::new(BIN)
        .args(["bundle", "sign"])
        .arg(&f)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::read_to_string(format!("{}.minisig", f.display())).unwrap()
}

fn journey(name: &str) -> String {
    format!("journeys:\n  - name: {name}\n    interval: 1s\n    steps:\n      - name: closed\n        tcp: {{address: \"127.0.0.1:1\"}}\n")
}

/// A signed bundle from a loopback HTTPS server: applied; a bad signature, a
/// broken archive and an outage keep the running journeys and are counted; a
/// restart without network runs the last good bundle from the state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundles_are_fetched_verified_applied_and_kept() {
    let col = Collector::start();
    let dir = tempdir();
    let pki = Pki::new(&dir);
    let srv = BundleServer::start(pki.server_config(false, &[b"http/1.1"])).await;
    let out = Command::new(BIN)
        .args(["bundle", "keygen"])
        .arg(dir.join("fleet"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pubkey = text(&out.stdout).split('"').nth(1).unwrap().to_string();
    let out = Command::new(BIN)
        .args(["bundle", "keygen"])
        .arg(dir.join("intruder"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (key, intruder) = (dir.join("fleet.key"), dir.join("intruder.key"));

    let publish = |data: Vec<u8>, signer: &Path| {
        let sig = sign(&dir, signer, &data);
        // Atomically: a fetch between the two would see new data with the old signature.
        srv.put_all(vec![
            ("/fleet.tar.gz", data),
            ("/fleet.tar.gz.minisig", sig.into_bytes()),
        ]);
    };
    publish(tarball(&[("alpha.yaml", &journey("alpha"))]), &key);

    // `vantage bundle verify` agrees, and refuses another key.
    let f = write(&dir, "check.tar.gz", "");
    std::fs::write(&f, tarball(&[("alpha.yaml", &journey("alpha"))])).unwrap();
    assert!(Command::new(BIN)
        .args(["bundle", "sign"])
        .arg(&f)
        .arg("--key")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let out = Command::new(BIN)
        .args(["bundle", "verify"])
        .arg(&f)
        .arg("--public-key")
        .arg(dir.join("fleet.pub"))
        .output()
        .unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "ok: signature good; 1 files, 1 journeys\n".into()),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["bundle", "verify"])
        .arg(&f)
        .arg("--public-key")
        .arg(dir.join("intruder.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write(
        &dir,
        "agent.yaml",
        &format!(
            "id: bundle-1\nlocation: eu-test-1\nprobes: [\"{}\"]\nstate_dir: state\nbundles:\n  trusted_keys: [\"{pubkey}\"]\n  interval: 1s\n  ca_file: ca.pem\nadmin: {{listen: \"{admin}\"}}\ntelemetry:\n  otlp: {{endpoint: \"{}\", export_interval: 1s}}\n",
            srv.url("/fleet.tar.gz"),
            col.grpc_endpoint()
        ),
    );
    let mut agent = Agent::start(&cfg, &[]);
    wait_status(&admin, "alpha from the bundle", |s| {
        journey_names(s) == ["alpha"]
    })
    .await;
    // Unchanged: the server answers 304 to If-None-Match.
    let deadline = Instant::now() + WAIT;
    while srv.not_modified.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "no conditional request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetches = |result: &'static str, n: f64| {
        let col = &col;
        async move {
            col.wait_for_metric(
                "synthetics.agent.config.fetches",
                |p| p.attributes["result"] == result && p.value.unwrap_or(0.0) >= n,
                WAIT,
            )
        }
    };
    let fetch = |result: &'static str| fetches(result, 1.0);

    // Signed by an untrusted key: refused, alpha keeps running.
    publish(tarball(&[("beta.yaml", &journey("beta"))]), &intruder);
    // Fetched and refused again at every interval (the signature might be fixed), logged once.
    fetches("bad_signature", 3.0).await;
    assert_eq!(
        agent
            .log()
            .matches("signature matches none of the 1 trusted key")
            .count(),
        1,
        "{}",
        agent.log()
    );
    assert_eq!(journey_names(&status(&admin).await), ["alpha"]);
    // A broken archive, properly signed: refused.
    let mut broken = tarball(&[("beta.yaml", &journey("beta"))]);
    broken.truncate(broken.len() / 2);
    publish(broken, &key);
    fetch("invalid").await;
    // Valid signature, invalid journeys: refused like a reload.
    publish(tarball(&[("beta.yaml", "journeys:\n  - name: beta\n    interval: 1s\n    steps:\n      - name: s\n        htpp: {}\n")]), &key);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        agent.log().contains("unknown field `htpp`")
            && agent
                .log()
                .contains("fleet.tar.gz#beta.yaml line=6 column=9"),
        "{}",
        agent.log()
    );
    assert_eq!(journey_names(&status(&admin).await), ["alpha"]);
    // A good one: applied whole.
    publish(
        tarball(&[
            ("beta.yaml", &journey("beta")),
            ("gamma.yaml", &journey("gamma")),
        ]),
        &key,
    );
    wait_status(&admin, "beta and gamma", |s| {
        journey_names(s) == ["beta", "gamma"]
    })
    .await;
    fetch("updated").await;
    // Outage: counted, journeys unchanged.
    srv.down.store(true, Ordering::Relaxed);
    fetch("unreachable").await;
    assert_eq!(journey_names(&status(&admin).await), ["beta", "gamma"]);
    agent.signal("-TERM");
    assert_eq!(agent.wait().await.code(), Some(0));

    // Restart without the server: the last good bundle from the state directory runs.
    let mut again = Agent::start(&cfg, &[]);
    wait_status(&admin, "cached bundle after restart", |s| {
        journey_names(s) == ["beta", "gamma"]
    })
    .await;
    assert!(
        again
            .log()
            .contains("running the last good bundle from the state directory"),
        "{}",
        again.log()
    );
    again.signal("-TERM");
    assert_eq!(again.wait().await.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

/// The container image's entrypoint as PID 1 of a PID namespace: it reaps
/// orphans re-parented to it and forwards SIGTERM. Without the init
/// (VANTAGE_NO_INIT=1) the orphan stays a zombie, so the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_as_pid1_reaps_orphans_and_forwards_sigterm() {
    let containerfile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/container/Containerfile"
    ))
    .unwrap();
    let entry_line = containerfile
        .lines()
        .rfind(|l| l.starts_with("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry_line.trim_start_matches("ENTRYPOINT "))
        .expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry[0], "/usr/bin/vantage");
    for (init, expect_zombie) in [(true, false), (false, true)] {
        let dir = tempdir();
        write(&dir, "probes.yaml", ONE_JOURNEY);
        let admin = format!("127.0.0.1:{}", free_port());
        let cfg = write(&dir, "agent.yaml", &format!("id: pid1\nlocation: eu-test-1\nprobes: [probes.yaml]\nadmin: {{listen: \"{admin}\"}}\n"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", BIN])
            .args(&entry[1..])
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !init {
            cmd.env("VANTAGE_NO_INIT", "1");
        }
        let mut unshare = KillOnDrop(cmd.spawn().expect("unshare(1) from util-linux"));
        wait_status(&admin, "agent up", |s| s["journeys"]["tick"].is_object()).await;
        let ns_init = children(unshare.0.id())
            .into_iter()
            .next()
            .expect("PID 1 of the namespace");
        // An orphan: nsenter's shell starts a short sleep in the namespace and exits.
        let st = Command::new("nsenter")
            .args([
                "-t",
                &ns_init.to_string(),
                "-p",
                "-m",
                "--",
                "sh",
                "-c",
                "sleep 0.3 & exit 0",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let zombies: Vec<u32> = children(ns_init)
            .into_iter()
            .filter(|p| state(*p) == Some('Z'))
            .collect();
        assert_eq!(
            !zombies.is_empty(),
            expect_zombie,
            "init={init}: zombies under PID 1: {zombies:?}"
        );
        // SIGTERM to PID 1 (what the container runtime sends) stops the agent cleanly.
        assert!(Command::new("kill")
            .args(["-TERM", &ns_init.to_string()])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(s) = unshare.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "init={init}: no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(code.code(), Some(0), "init={init}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

fn state(pid: u32) -> Option<char> {
    stat_fields(pid).map(|(s, _)| s)
}

fn children(ppid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p| stat_fields(*p).is_some_and(|(_, pp)| pp == ppid))
        .collect();
    v.sort();
    v
}

/// Kubernetes examples and the Containerfile: YAML parses, and every file they name exists.
#[test]
fn packaging_manifests_parse_and_reference_existing_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let k8s = root.join("packaging/kubernetes");
    let mut kinds = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
    {
        let t = std::fs::read_to_string(p).unwrap();
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for d in docs {
            if let Some(k) = d["kind"].as_str() {
                kinds.push(k.to_string());
            }
            if d["kind"] == "Kustomization" {
                for r in d["resources"].as_array().unwrap() {
                    assert!(
                        k8s.join(r.as_str().unwrap()).exists(),
                        "kustomization names missing {r}"
                    );
                }
                for g in d["configMapGenerator"].as_array().into_iter().flatten() {
                    for f in g["files"].as_array().unwrap() {
                        let f = f.as_str().unwrap();
                        let f = f.split_once('=').map(|(_, p)| p).unwrap_or(f);
                        assert!(k8s.join(f).exists(), "configMapGenerator names missing {f}");
                    }
                }
            }
            if d["kind"] == "ConfigMap" {
                for (k, v) in d["data"].as_object().into_iter().flatten() {
                    if k.ends_with(".yaml") {
                        serde_saphyr::from_str::<serde_json::Value>(v.as_str().unwrap())
                            .unwrap_or_else(|e| panic!("{}: ConfigMap key {k}: {e}", p.display()));
                    }
                }
            }
            if d["kind"] == "Deployment" {
                let c = &d["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(
                    d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
                    true
                );
            }
        }
    }
    for k in ["Deployment", "ConfigMap", "Kustomization"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "no {k} in packaging/kubernetes: {kinds:?}"
        );
    }
    assert!(
        kinds.iter().filter(|k| *k == "Deployment").count() >= 3,
        "one Deployment per location"
    );
    for cf in ["Containerfile", "Containerfile.chromium"] {
        let t = std::fs::read_to_string(root.join("packaging/container").join(cf)).unwrap();
        assert!(t.contains("USER "), "{cf}: runs as root");
        assert!(t.contains("HEALTHCHECK"), "{cf}: no HEALTHCHECK");
        // `vantage run` looks for the agent binary in ../libexec/vantage/ from /usr/bin.
        assert!(
            t.contains("COPY --from=build /src/target/release/vantage /usr/bin/vantage\n")
                && t.contains("COPY --from=build /src/target/release/vantage-agent /usr/libexec/vantage/vantage-agent\n"),
            "{cf}: the image must hold /usr/bin/vantage and /usr/libexec/vantage/vantage-agent"
        );
        for l in t
            .lines()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        {
            let parts: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for src in &parts[1..parts.len() - 1] {
                assert!(
                    root.join(src).exists(),
                    "{cf}: COPY source {src} does not exist"
                );
            }
        }
    }
}

/// A chromedriver that crashes between runs is noticed and reaped at once,
/// not left a zombie until the next browser run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_chromedriver_is_reaped_at_once() {
    if let Some(m) = vantage::browser::missing_binaries(
        Path::new("/usr/bin/chromedriver"),
        Path::new("/usr/bin/chromium"),
    ) {
        panic!("{m}. For the tests: run `.ci/install-test-deps` (it runs `apt-get install -y chromium chromium-driver`)");
    }
    let t = Target::start().await;
    let dir = tempdir();
    let id = id_with_early_starts(
        &["page"],
        Duration::from_secs(600),
        Duration::from_millis(300),
    );
    write(&dir, "probes.yaml", "journeys:\n  - name: page\n    interval: 600s\n    timeout: 60s\n    steps:\n      - name: open\n        timeout: 50s\n        browser: {navigate: \"${env.BASE}/json\"}\n");
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write(&dir, "agent.yaml", &format!("id: {id}\nlocation: eu-test-1\nprobes: [probes.yaml]\nartifacts_dir: artifacts\nadmin: {{listen: \"{admin}\"}}\n"));
    let mut agent = Agent::start(&cfg, &[("BASE", t.url(""))]);
    let s = wait_status(&admin, "the browser run", |s| {
        s["journeys"]["page"]["runs"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(s["journeys"]["page"]["last_outcome"], "success", "{s}");
    let agent_pid: u32 = agent.pid().parse().unwrap();
    let driver = children(agent_pid)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "chromedriver")
        })
        .expect("chromedriver is a child of the agent");
    assert!(Command::new("kill")
        .args(["-KILL", &driver.to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        stat_fields(driver).is_none(),
        "chromedriver {driver} still in the process table (state {:?}) 1 s after it died",
        state(driver)
    );
    assert!(
        agent.log().contains("chromedriver exited unexpectedly"),
        "{}",
        agent.log()
    );
    agent.signal("-TERM");
    assert_eq!(agent.wait().await.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}
