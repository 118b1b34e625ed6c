//! Listener exhaustion benchmark (loopback only, bounded, stops by itself).
//!
//! Starts `vantage run` (VANTAGE_BIN, default target/release/vantage) with 20
//! HTTP journeys at a 1 s interval and one that posts its own webhook to the
//! callback listener and waits for it, an admin and a callback listener. Then one
//! attacker process per listener (this program again, `attack` mode) opens N
//! connections to it (default 10,000: half idle, a quarter sending a request
//! head one byte a second, a quarter a body one byte a second) and floods it
//! with 200 KiB bodies from 8 clients. Meanwhile a separate thread asks
//! `/healthz` every 100 ms on a fresh connection (2 s timeout) and the agent
//! process tree's summed PSS (/proc/PID/smaps_rollup) is sampled. Prints the
//! figures; exits 1 if a bound is broken.
//!
//! cargo build --release && cargo run --release --example bench_listeners -- [N] [SECONDS] [OPEN_PER_S]
//!
//! OPEN_PER_S > 0 has each attacker open its connections at that rate rather
//! than all at once (a connection storm is the default). BENCH_ATTACKER_NICE=19
//! lowers the attackers' CPU priority, standing in for attackers on other hosts
//! (here they share the agent's cores); BENCH_AGENT_STDERR shows the agent's log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PSS_BOUND_MB: f64 = 100.0;
const HEALTH_BOUND_MS: f64 = 100.0;

fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default().lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// Summed PSS of `pid` and all its descendants.
fn tree_pss_kb(pid: u32) -> u64 {
    let mut total = pss_kb(pid);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    for t in tasks {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            total += tree_pss_kb(c);
        }
    }
    total
}

/// Loopback TCP sockets in TIME_WAIT (a previous run's 300,000 connections
/// leave tens of thousands, holding the ephemeral ports the attackers need).
fn time_wait() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("06")).count()).sum()
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tiny blocking HTTP target for the journeys.
fn target() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One blocking GET on a fresh connection: (status line ok, body).
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<String> {
    let mut connect = Duration::ZERO;
    get_why(addr, path, timeout, &mut connect, &mut 0).ok()
}

/// [`get`], saying why it failed, noting how long the TCP connect took (the
/// kernel's accept queue) apart from the answer (the agent), and counting the
/// TCP segments the client had to send again (a request the kernel dropped,
/// not one the agent was slow to answer).
fn get_why(addr: SocketAddr, path: &str, timeout: Duration, connect: &mut Duration, retrans: &mut u32) -> Result<String, String> {
    let t0 = Instant::now();
    let s = StdStream::connect_timeout(&addr, timeout);
    *connect = t0.elapsed();
    let mut s = s.map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", addr.port()).as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    *retrans = total_retrans(&s);
    read.map_err(|e| format!("read after {} bytes: {e}", out.len()))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {:?}", text.lines().next().unwrap_or("")));
    }
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).ok_or_else(|| "no body".into())
}

fn total_retrans(s: &StdStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt into a zeroed tcp_info we own, with its size.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        if libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) == 0 {
            info.tcpi_total_retrans
        } else {
            0
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Attacker mode: N slow/idle connections and a body flood against one listener for `secs`.
/// `per_s` > 0 opens the connections at that rate instead of all at once.
async fn attack(addr: SocketAddr, n: usize, secs: u64, per_s: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let opened = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let flood = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (opened, shed) = (opened.clone(), shed.clone());
        let at = if per_s > 0 { Duration::from_micros(i as u64 * 1_000_000 / per_s) } else { Duration::ZERO };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await else { return };
            opened.fetch_add(1, Ordering::Relaxed);
            let (mut rd, mut wr) = s.into_split();
            let drip: &'static [u8] = match i % 4 {
                0 | 1 => b"",                                                                                      // idle
                2 => b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa",               // slow head
                _ => b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nbbbbbbbbbbbbbbbbbbbbbbbbb", // slow body
            };
            let writer = async move {
                for b in drip.chunks(1) {
                    if wr.write_all(b).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await
            };
            let mut buf = [0u8; 512];
            tokio::select! {
                // The server closed it (shed, or a timeout): the descriptor is freed.
                _ = async { while rd.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {} } => { shed.fetch_add(1, Ordering::Relaxed); }
                _ = writer => {}
                _ = tokio::time::sleep_until(end.into()) => {}
            }
        }));
    }
    let body = Arc::new(vec![b'x'; 200 * 1024]);
    for _ in 0..8 {
        let (flood, body) = (flood.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await else { continue };
                let head = format!("POST /hook HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", addr.port(), body.len());
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    s.write_all(head.as_bytes()).await?;
                    s.write_all(&body).await?;
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).await
                })
                .await;
                flood.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(end.saturating_duration_since(Instant::now()) + Duration::from_secs(5), t).await;
    }
    println!("opened {} shed {} flood {}", opened.load(Ordering::Relaxed), shed.load(Ordering::Relaxed), flood.load(Ordering::Relaxed));
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("attack") {
        let addr: SocketAddr = args[2].parse().unwrap();
        assert!(addr.ip().is_loopback(), "loopback only");
        let (n, secs, per_s) = (args[3].parse().unwrap(), args[4].parse::<u64>().unwrap().min(300), args[5].parse().unwrap());
        vantage::listener::raise_nofile_limit();
        tokio::runtime::Runtime::new().unwrap().block_on(attack(addr, n, secs, per_s));
        return;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20).min(300);
    // Connections each attacker opens per second; 0 (the default) opens them all at once.
    let per_s: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    // Each attacker process needs N sockets of its own.
    if let Some((_, hard)) = vantage::listener::nofile_limit() {
        assert!(hard as usize > n + 512, "RLIMIT_NOFILE hard limit {hard} is below {n} connections per attacker");
    }
    let waited = Instant::now();
    while time_wait() > 1000 && waited.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
    }
    if waited.elapsed() > Duration::from_secs(1) {
        println!("waited {:.0} s for a previous run's TIME_WAIT sockets to drain ({} left)", waited.elapsed().as_secs_f64(), time_wait());
    }
    let bin = std::env::var("VANTAGE_BIN").unwrap_or_else(|_| "target/release/vantage".into());
    assert!(std::path::Path::new(&bin).exists(), "{bin} not found: run `cargo build --release` first (or set VANTAGE_BIN)");
    let dir = std::env::temp_dir().join(format!("vantage-bench-listeners-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("probes")).unwrap();
    let t = target();
    let mut probes = String::from("journeys:\n");
    for i in 0..20 {
        probes.push_str(&format!("  - name: j{i}\n    interval: 1s\n    steps:\n      - name: get\n        timeout: 2s\n        http: {{url: \"http://{t}/\"}}\n"));
    }
    let (admin, callback) = (free_port(), free_port());
    // A journey that waits for a webhook: it makes the agent open its callback
    // listener (opened only when a journey needs it), and its own webhook, posted
    // to that listener under attack, must still arrive.
    probes.push_str(&format!("  - name: webhook\n    interval: 1s\n    timeout: 1s\n    steps:\n      - name: send\n        http:\n          method: POST\n          url: \"http://127.0.0.1:{callback}/hook\"\n          headers: {{X-Callback-Token: \"${{run.callback_token}}\"}}\n          body: done\n        assert: {{status: 202}}\n      - name: arrived\n        callback: {{within: 900ms, since_step: send}}\n"));
    std::fs::write(dir.join("probes/p.yaml"), probes).unwrap();
    let agent_cfg = dir.join("agent.yaml");
    std::fs::write(&agent_cfg, format!("id: bench\nprobes: [probes]\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\ncallback: {{listen: \"127.0.0.1:{callback}\"}}\n")).unwrap();
    let agent = Kill(Command::new(&bin).args(["run", "--config"]).arg(&agent_cfg).stdout(Stdio::null()).stderr(if std::env::var_os("BENCH_AGENT_STDERR").is_some() { Stdio::inherit() } else { Stdio::null() }).spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}")));
    let pid = agent.0.id();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let callback_addr: SocketAddr = format!("127.0.0.1:{callback}").parse().unwrap();
    let up = Instant::now();
    while get(admin_addr, "/healthz", Duration::from_secs(1)).is_none() {
        assert!(up.elapsed() < Duration::from_secs(10), "agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let status = |when: &str| {
        let body = get_why(admin_addr, "/status", Duration::from_secs(5), &mut Duration::default(), &mut 0).unwrap_or_else(|why| panic!("/status {when} the attack: {why}"));
        let s: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
        s["journeys"].as_object().unwrap().values().map(|j| (j["runs"].as_u64().unwrap_or(0), j["failures"].as_u64().unwrap_or(0))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (runs0, fails0) = status("before");
    let pss0 = tree_pss_kb(pid);

    let me = std::env::current_exe().unwrap();
    let attackers: Vec<Child> =
        [admin_addr, callback_addr].iter().map(|a| Command::new(&me).args(["attack", &a.to_string(), &n.to_string(), &secs.to_string(), &per_s.to_string()]).stdout(Stdio::piped()).spawn().unwrap()).collect();
    if let Ok(n) = std::env::var("BENCH_ATTACKER_NICE") {
        println!("attackers at nice {n}");
        for a in &attackers {
            let _ = Command::new("renice").args(["-n", &n, "-p", &a.id().to_string()]).stdout(Stdio::null()).status();
        }
    }
    let attackers: Vec<Kill> = attackers.into_iter().map(Kill).collect();

    // /healthz every 100 ms on a fresh connection, from a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let health = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slow) = (Vec::new(), 0u32, Vec::new());
            let began = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (mut connect, mut retrans) = (Duration::ZERO, 0);
                match get_why(admin_addr, "/healthz", Duration::from_secs(2), &mut connect, &mut retrans) {
                    Ok(_) => ok.push(t0.elapsed().as_secs_f64() * 1000.0),
                    Err(why) => {
                        failed += 1;
                        slow.push(format!("{:.1} s: failed: {why}", (t0 - began).as_secs_f64()));
                    }
                }
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                if ms > HEALTH_BOUND_MS {
                    slow.push(format!("{:.1} s: {ms:.0} ms (connect {:.0} ms, {retrans} segments resent)", (t0 - began).as_secs_f64(), connect.as_secs_f64() * 1000.0));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed, slow)
        })
    };
    let started = Instant::now();
    let mut pss_max = pss0;
    while started.elapsed() < Duration::from_secs(secs) {
        pss_max = pss_max.max(tree_pss_kb(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (runs1, fails1) = status("after");
    stop.store(true, Ordering::Relaxed);
    let (mut ok, failed, slow) = health.join().unwrap();
    let mut reports = Vec::new();
    for mut a in attackers {
        let deadline = Instant::now() + Duration::from_secs(15);
        while a.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        if a.0.try_wait().unwrap().is_some() {
            let _ = a.0.stdout.take().unwrap().read_to_string(&mut out);
        }
        reports.push(out.trim().to_string());
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);

    ok.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (percentile(&ok, 0.5), percentile(&ok, 0.99), ok.last().copied().unwrap_or(f64::NAN));
    let over = ok.iter().filter(|m| **m > HEALTH_BOUND_MS).count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let opening = if per_s > 0 { format!("opened at {per_s}/s") } else { "opened all at once".into() };
    println!("N = {n} connections per listener ({opening}), {secs} s under attack; loadavg {}", load.trim());
    println!("attacker on admin:    {}", reports[0]);
    println!("attacker on callback: {}", reports[1]);
    println!("/healthz: {} answered, {failed} failed; median {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, {over} over {HEALTH_BOUND_MS} ms", ok.len());
    if !slow.is_empty() {
        println!("/healthz over {HEALTH_BOUND_MS} ms or failed, at (since the attack began): {}", slow.join(", "));
    }
    println!("agent tree PSS: {:.1} MB before, {:.1} MB peak under attack (bound {PSS_BOUND_MB} MB)", pss0 as f64 / 1024.0, pss_max as f64 / 1024.0);
    println!("journeys: {} runs, {} false failures during the attack", runs1 - runs0, fails1 - fails0);
    let pass = failed == 0 && over == 0 && fails1 == fails0 && (pss_max as f64 / 1024.0) < PSS_BOUND_MB && runs1 > runs0;
    println!("{} (bounds: every /healthz within {HEALTH_BOUND_MS} ms, PSS < {PSS_BOUND_MB} MB, 0 journey failures)", if pass { "PASS" } else { "FAIL" });
    std::process::exit(if pass { 0 } else { 1 });
}
