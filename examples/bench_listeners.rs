//! Listener exhaustion benchmark (loopback only, bounded, stops by itself).
//!
//! Starts `vantage run` (VANTAGE_BIN, default target/release/vantage) with 20
//! HTTP journeys at a 1 s interval, an admin and a callback listener; then
//! against EACH listener opens N/2 connections (half idle, half sending a
//! request head or body one byte a second) and floods 200 KiB bodies from 8
//! clients. Meanwhile it asks `/healthz` every 100 ms and samples the agent's
//! PSS. Prints the figures; exits 1 if a limit is broken.
//!
//! cargo build --release && cargo run --release --example bench_listeners -- 10000 20

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20).min(300);
    // The client needs N sockets of its own.
    if let Some((_, hard)) = vantage::listener::nofile_limit() {
        assert!(hard as usize > n + 512, "RLIMIT_NOFILE hard limit {hard} is below {n} connections");
    }
    let nofile = vantage::listener::raise_nofile_limit();
    let bin = std::env::var("VANTAGE_BIN").unwrap_or_else(|_| "target/release/vantage".into());
    let dir = std::env::temp_dir().join(format!("vantage-bench-listeners-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("probes")).unwrap();
    let t = target();
    let mut probes = String::from("journeys:\n");
    for i in 0..20 {
        probes.push_str(&format!("  - name: j{i}\n    interval: 1s\n    steps:\n      - name: get\n        timeout: 2s\n        http: {{url: \"http://{t}/\"}}\n"));
    }
    std::fs::write(dir.join("probes/p.yaml"), probes).unwrap();
    let (admin, callback) = (free_port(), free_port());
    let agent = dir.join("agent.yaml");
    std::fs::write(&agent, format!("id: bench\nprobes: [probes]\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\ncallback: {{listen: \"127.0.0.1:{callback}\"}}\n")).unwrap();
    let mut child = Command::new(&bin).args(["run", "--config"]).arg(&agent).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let pid = child.id();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let callback_addr: SocketAddr = format!("127.0.0.1:{callback}").parse().unwrap();
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    let up = Instant::now();
    while http.get(format!("http://{admin_addr}/healthz")).send().await.is_err() {
        assert!(up.elapsed() < Duration::from_secs(10), "agent did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = |http: reqwest::Client| async move {
        let s: serde_json::Value = http.get(format!("http://{admin_addr}/status")).header("host", format!("127.0.0.1:{admin}")).send().await.unwrap().json().await.unwrap();
        s["journeys"].as_object().unwrap().values().map(|j| (j["runs"].as_u64().unwrap_or(0), j["failures"].as_u64().unwrap_or(0))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (runs0, fails0) = status(http.clone()).await;
    let pss0 = pss_kb(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Slow and idle connections: N/2 per listener, opened as fast as the kernel takes them.
    for (i, addr) in (0..n).map(|i| (i, if i % 2 == 0 { admin_addr } else { callback_addr })) {
        let (stop, opened) = (stop.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await else { return };
            opened.fetch_add(1, Ordering::Relaxed);
            let drip: &[u8] = match i % 4 {
                0 | 1 => b"",                                                                      // idle
                2 => b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa", // slow head
                _ => b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nbbbbbbbbbbbbbbbbbbbbbbbbb", // slow body
            };
            for b in drip.chunks(1) {
                if stop.load(Ordering::Relaxed) || s.write_all(b).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // Body floods: 8 clients per listener posting 200 KiB as fast as answered.
    for addr in [admin_addr, callback_addr] {
        for _ in 0..8 {
            let (stop, sent, http) = (stop.clone(), flood_sent.clone(), http.clone());
            tasks.push(tokio::spawn(async move {
                let body = vec![b'x'; 200 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let _ = http.post(format!("http://{addr}/hook")).header("host", format!("127.0.0.1:{}", addr.port())).body(body.clone()).send().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // /healthz every 100 ms on a fresh connection, and the agent's PSS.
    let started = Instant::now();
    let mut health_ms = Vec::new();
    let mut health_fail = 0;
    let mut pss_max = pss0;
    while started.elapsed() < Duration::from_secs(secs) {
        let c = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
        let t0 = Instant::now();
        match c.get(format!("http://{admin_addr}/healthz")).send().await {
            Ok(r) if r.status().is_success() => health_ms.push(t0.elapsed().as_secs_f64() * 1000.0),
            _ => health_fail += 1,
        }
        pss_max = pss_max.max(pss_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (runs1, fails1) = status(http.clone()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let p50 = median(&mut health_ms.clone());
    let max = health_ms.iter().cloned().fold(0.0, f64::max);
    let over = health_ms.iter().filter(|m| **m > 100.0).count();
    println!("client NOFILE {nofile:?}; connections opened {} of {n}; flood requests {}", opened.load(Ordering::Relaxed), flood_sent.load(Ordering::Relaxed));
    println!("/healthz: {} answered, {} failed; p50 {:.1} ms, max {:.1} ms, {} over 100 ms", health_ms.len(), health_fail, p50, max, over);
    println!("agent PSS: {:.1} MB before, {:.1} MB peak under attack", pss0 as f64 / 1024.0, pss_max as f64 / 1024.0);
    println!("journeys: {} runs, {} failures during the attack", runs1 - runs0, fails1 - fails0);
    const PSS_BOUND_MB: f64 = 100.0;
    let ok = health_fail == 0 && over == 0 && fails1 == fails0 && (pss_max as f64 / 1024.0) < PSS_BOUND_MB && runs1 > runs0;
    println!("{} (bounds: /healthz < 100 ms, PSS < {PSS_BOUND_MB} MB, 0 journey failures)", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}
