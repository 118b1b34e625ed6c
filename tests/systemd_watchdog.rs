//! `vantage run` under systemd's notify protocol: a unix datagram socket the
//! test binds stands in for systemd (`NOTIFY_SOCKET`), `WATCHDOG_USEC` asks
//! for watchdog pings. Timing-dependent: run 50 times in a row, 0 failures.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const AGENT_BIN: &str = env!("CARGO_BIN_EXE_vantage-agent");

/// A `vantage run` child, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dir/agent.yaml` (agent `id`, admin endpoint on `admin`, "" for off) and
/// `dir/p.yaml`, whose one journey connects every second to the returned listener.
fn write_configs(dir: &Path, id: &str, admin: &str) -> std::net::TcpListener {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!("journeys:\n  - name: j\n    interval: 1s\n    steps:\n      - name: s\n        tcp: {{address: \"{}\"}}\n", target.local_addr().unwrap()),
    )
    .unwrap();
    std::fs::write(dir.join("agent.yaml"), format!("id: {id}\nprobes: [p.yaml]\nadmin: {{listen: \"{admin}\"}}\nshutdown_grace: 1s\n")).unwrap();
    target
}

/// The notify socket in `dir`, and an agent whose one journey connects to a loopback listener.
fn start(dir: &Path, envs: &[(&str, String)]) -> (UnixDatagram, Agent, std::net::TcpListener) {
    start_bin(BIN, dir, envs)
}

fn start_bin(bin: &str, dir: &Path, envs: &[(&str, String)]) -> (UnixDatagram, Agent, std::net::TcpListener) {
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = write_configs(dir, "w", "");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"])
        .arg(dir.join("agent.yaml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .env("NOTIFY_SOCKET", &sock_path);
    cmd.env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    (sock, Agent(cmd.spawn().unwrap()), target)
}

/// The notifications received until `until` holds or `within` passes, each with its arrival time.
fn receive(
    sock: &UnixDatagram,
    within: Duration,
    until: impl Fn(&[(Instant, String)]) -> bool,
) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            let at = Instant::now();
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                got.push((at, line.to_string()));
            }
        }
    }
    got
}

fn pings_after_ready(got: &[(Instant, String)]) -> Vec<Instant> {
    let Some(ready) = got.iter().position(|(_, m)| m == "READY=1") else {
        return Vec::new();
    };
    got[ready..]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect()
}

/// READY=1, then WATCHDOG=1 at about half of WATCHDOG_USEC (3 s) while the
/// scheduler's heartbeat moves, then STOPPING=1 on SIGTERM.
#[test]
fn run_reports_ready_then_feeds_the_watchdog_and_says_stopping() {
    let dir = common::tempdir();
    let (sock, agent, _target) = start(&dir, &[("WATCHDOG_USEC", "3000000".to_string())]);
    let got = receive(&sock, Duration::from_secs(15), |g| {
        pings_after_ready(g).len() >= 3
    });
    let pings = pings_after_ready(&got);
    let msgs: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert!(
        pings.len() >= 3,
        "expected READY=1 then 3 WATCHDOG=1, got {msgs:?}"
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        // Paced at WATCHDOG_USEC / 2, and never as late as WATCHDOG_USEC.
        assert!(
            gap > Duration::from_millis(1000) && gap < Duration::from_millis(3000),
            "ping gap {gap:?}: {msgs:?}"
        );
    }
    assert!(Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let got = receive(&sock, Duration::from_secs(10), |g| {
        g.iter().any(|(_, m)| m == "STOPPING=1")
    });
    assert!(got.iter().any(|(_, m)| m == "STOPPING=1"), "{got:?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

/// `WATCHDOG_PID` naming another process (the watchdog is meant for it): READY=1, no pings.
#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let dir = common::tempdir();
    let (sock, agent, _target) = start(
        &dir,
        &[
            ("WATCHDOG_USEC", "1000000".to_string()),
            ("WATCHDOG_PID", std::process::id().to_string()),
        ],
    );
    let mut got = receive(&sock, Duration::from_secs(15), |g| {
        g.iter().any(|(_, m)| m == "READY=1")
    });
    // Pings would come every 0.5 s from the start: 2 s more shows there are none.
    got.extend(receive(&sock, Duration::from_secs(2), |_| false));
    let msgs: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert!(msgs.contains(&"READY=1"), "{msgs:?}");
    assert!(!msgs.contains(&"WATCHDOG=1"), "{msgs:?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

/// A short watchdog (1 s, pings every 0.5 s) is fed at every check of a healthy
/// agent: the heartbeat beats faster than the pings, so none is withheld and no
/// false "stalled" error is logged.
#[test]
fn a_short_watchdog_is_fed_at_every_check_without_false_stall_errors() {
    let dir = common::tempdir();
    let (sock, agent, _target) = start(&dir, &[("WATCHDOG_USEC", "1000000".to_string())]);
    let got = receive(&sock, Duration::from_secs(15), |g| {
        pings_after_ready(g).len() >= 8
    });
    let pings = pings_after_ready(&got);
    let msgs: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert!(pings.len() >= 8, "expected READY=1 then 8 WATCHDOG=1, got {msgs:?}");
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap < Duration::from_millis(900), "ping gap {gap:?} (a withheld ping): {msgs:?}");
    }
    drop(agent);
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(!log.contains("stalled") && !log.contains("wedged"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `vantage health` (a container's `HEALTHCHECK`) passes on a live agent,
/// whose admin endpoint runs on a thread of its own, and says what is wrong
/// when the agent is gone.
#[test]
fn vantage_health_passes_on_a_live_agent_and_names_what_is_wrong_when_it_is_gone() {
    let dir = common::tempdir();
    let port = common::free_port();
    let _target = write_configs(&dir, "h", &format!("127.0.0.1:{port}"));
    let agent = Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(dir.join("agent.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .env_remove("NOTIFY_SOCKET")
            .spawn()
            .unwrap(),
    );
    let admin = format!("127.0.0.1:{port}");
    let health = || Command::new(BIN).args(["health", "--admin", &admin]).output().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = health();
    while !out.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        out = health();
    }
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\nagent log:\n{}", String::from_utf8_lossy(&out.stderr), log());
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", agent.0.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "vantage-admin"), "no admin thread among {threads:?}");
    drop(agent);
    let out = health();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("error: cannot reach {admin}/healthz")), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

fn exe_of(agent: &Agent) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{}/exe", agent.0.id())).unwrap()
}

/// `vantage run` replaces itself with `vantage-agent` (the agent without the
/// other commands): the PID systemd watches is the agent's, ready and fed.
#[test]
fn run_hands_over_to_vantage_agent_in_the_same_process() {
    let dir = common::tempdir();
    let (sock, agent, _target) = start(&dir, &[("WATCHDOG_USEC", "2000000".to_string())]);
    let got = receive(&sock, Duration::from_secs(15), |g| !pings_after_ready(g).is_empty());
    assert!(!pings_after_ready(&got).is_empty(), "no READY=1 then WATCHDOG=1: {got:?}");
    assert_eq!(exe_of(&agent), std::fs::canonicalize(AGENT_BIN).unwrap());
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(!log.contains("another build") && !log.contains("warning:"), "{log}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent binary from another build than the `vantage` that started it (a
/// partial rebuild or upgrade) hands back: the agent runs inside `vantage`, and says why.
#[test]
fn an_agent_binary_of_another_build_hands_back_to_vantage() {
    let dir = common::tempdir();
    let from = format!("0.0.0-another:{}", std::fs::canonicalize(BIN).unwrap().display());
    let (sock, agent, _target) = start_bin(AGENT_BIN, &dir, &[("VANTAGE_AGENT_FROM", from)]);
    let got = receive(&sock, Duration::from_secs(15), |g| g.iter().any(|(_, m)| m == "READY=1"));
    assert!(got.iter().any(|(_, m)| m == "READY=1"), "{got:?}");
    assert_eq!(exe_of(&agent), std::fs::canonicalize(BIN).unwrap());
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    let first = log.lines().next().unwrap_or_default();
    assert!(first.starts_with("warning: ") && first.contains(&format!("vantage-agent is from another build ({}-", env!("CARGO_PKG_VERSION"))) && first.contains(") than ") && first.contains(" (0.0.0-another); running the agent inside vantage. Build both (`cargo build --release`) or reinstall the package."), "{log}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn vantage_agent_runs_only_the_agent() {
    let out = Command::new(AGENT_BIN).args(["check", "--config", "/nonexistent.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: vantage-agent runs the agent only (`vantage-agent run --config FILE`); every other command is `vantage <command>`\n"
    );
}
