//! The agent's inbound listeners against hostile clients, with a real agent
//! process and real slow/idle clients over loopback: connection floods,
//! forged and replayed callbacks, DNS-rebinding hosts, the admin token, and
//! error replies that echo nothing (issue 14).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::target::Target;
use common::{free_port, tempdir};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const TOKEN: &str = "admin-token-canary-5f1e";
const FILE_CANARY: &str = "file-content-canary-9c2d";

/// The agent process; killed and its directory removed on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    callback: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PROBES: &str = r#"
journeys:
  - name: hook
    interval: 1s
    timeout: 1s
    steps:
      - name: leak
        http: {url: "${env.BASE}/headers", headers: {X-Callback-Token: "${run.callback_token}"}}
      - name: send
        http:
          method: POST
          url: "${env.CB}/hook"
          headers: {X-Callback-Token: "${run.callback_token}"}
          body: "done"
        assert: {status: 202}
      - name: webhook
        callback: {within: 900ms, since_step: send}
  - name: api
    interval: 1s
    steps:
      - name: fetch
        http: {url: "${env.BASE}/json"}
"#;

fn start(target: &Target, admin_token: bool) -> Agent {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    if admin_token {
        std::fs::write(dir.join("creds/vantage-admin-token"), format!("{TOKEN}\n")).unwrap();
    }
    std::fs::write(dir.join("probes.yaml"), PROBES).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let callback: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("id: inbound-test\nprobes: [probes.yaml]\ncredentials_dir: {}\nadmin: {{listen: \"{admin}\"}}\ncallback: {{listen: \"{callback}\"}}\n", dir.join("creds").display());
    std::fs::write(dir.join("agent.yaml"), config).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("agent.yaml"))
        .env("BASE", target.url(""))
        .env("CB", format!("http://{callback}"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, dir, admin, callback };
    let t0 = Instant::now();
    while request(admin, "GET /healthz", &[], b"").is_none() {
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("the agent exited at start ({status}); run `vantage check` on the test's config");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent
}

/// One request on a fresh connection, `Host` set to the listener unless given: (status, body).
fn request(addr: SocketAddr, line: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String)> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = format!("{line} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// (runs, failures) of a journey from `/status`.
fn runs(agent: &Agent, journey: &str) -> (u64, u64) {
    let (_, body) = request(agent.admin, "GET /status", &[], b"").expect("/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
    let j = &v["journeys"][journey];
    (j["runs"].as_u64().unwrap_or(0), j["failures"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_need_the_runs_own_token_and_forgeries_get_404() {
    let target = Target::start().await;
    let agent = start(&target, false);
    let t0 = Instant::now();
    while runs(&agent, "hook").0 < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no run of `hook`");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The real journey gets its callback with ${run.callback_token}.
    assert_eq!(runs(&agent, "hook").1, 0, "the run's own callback failed");
    // Replayed: a token of a run that has ended (the target saw it), and the run
    // id every target sees as X-Synthetic-Run.
    let (old_token, run_id) = {
        let seen = target.seen.lock().unwrap();
        let (_, h) = seen.requests.iter().find(|(p, _)| p == "/headers").expect("the target saw `leak`");
        (h["x-callback-token"].clone(), h["x-synthetic-run"].clone())
    };
    assert!(!old_token.is_empty() && old_token != run_id);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for replay in [&old_token, &run_id] {
        let (status, body) = request(agent.callback, "POST /hook", &[("X-Callback-Token", replay)], b"replayed").unwrap();
        assert_eq!(status, 404, "replayed {replay}: {body}");
    }
    // Tokens nobody was given: empty, a run-id-shaped guess, a path trick.
    for forged in ["", "0123456789abcdef0123456789abcdef", "x/../../etc/passwd"] {
        let (status, body) = request(agent.callback, "POST /hook", &[("X-Callback-Token", forged)], b"forged").unwrap();
        assert_eq!(status, 404, "forged token {forged:?}: {body}");
        let (status, _) = request(agent.callback, &format!("POST /hook/{forged}"), &[], b"forged").unwrap();
        assert!(status == 404 || status == 400, "forged path token {forged:?}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_need_the_token_a_local_host_and_replies_echo_nothing() {
    let target = Target::start().await;
    let agent = start(&target, true);
    let auth = format!("Bearer {TOKEN}");
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    let (status, body) = request(agent.admin, "POST /-/reload", &[("Host", &format!("evil.example:{}", agent.admin.port())), ("Authorization", &auth)], b"").unwrap();
    assert_eq!(status, 421, "{body}");
    let (status, _) = request(agent.admin, "GET /status", &[("Host", "evil.example")], b"").unwrap();
    assert_eq!(status, 421);
    // With the credential present, writes need it, on loopback too; reads do not.
    let (status, body) = request(agent.admin, "POST /-/reload", &[], b"").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(TOKEN));
    let (status, _) = request(agent.admin, "POST /-/reload", &[("Authorization", "Bearer wrong")], b"").unwrap();
    assert_eq!(status, 401);
    let (status, _) = request(agent.admin, "POST /-/reset-stats", &[], b"").unwrap();
    assert_eq!(status, 401);
    assert_eq!(request(agent.admin, "GET /status", &[], b"").unwrap().0, 200);
    let (status, body) = request(agent.admin, "POST /-/reload", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    // `vantage reload` (the unit's ExecReload) sends the token from the same credentials directory.
    let out = Command::new(BIN).args(["reload", "--config"]).arg(agent.dir.join("agent.yaml")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vantage reload: {stdout}{stderr}");
    assert!(stdout.starts_with("reloaded"), "{stdout}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "{stdout}{stderr}");
    // A rejected reload names where the problem is, never the file's contents.
    std::fs::write(agent.dir.join("probes.yaml"), format!("journeys:\n  - name: broken\n    interval: {FILE_CANARY}\n    steps: []\n")).unwrap();
    let (status, body) = request(agent.admin, "POST /-/reload", &[("Authorization", &auth)], b"").unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("probes.yaml:"), "{body}");
    assert!(!body.contains(FILE_CANARY) && !body.contains(TOKEN), "{body}");
}
