//! Whole-process scheduler benchmark: N HTTP journeys at a 1 s interval
//! against a loopback server, agent exporting OTLP to a Rotel collector
//! (blackhole exporter). Prints runs/s, CPU seconds per 1,000 runs, peak RSS,
//! PSS, and scheduling lateness p50/p99.
//!
//!   cargo build --release --bins --example bench_scheduler && target/release/examples/bench_scheduler 1000 20
//!
//! Arguments: journeys (default 1000), measured seconds (default 30), warm-up 10 s.
//! `VANTAGE_BIN` picks the agent binary (A/B against another build),
//! `BENCH_OTLP=0` runs without the collector, `BENCH_AGENT_YAML` is appended
//! to the agent config (e.g. `status_page: {history: 1}`) to price a feature.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rotel() -> Option<String> {
    let out = Command::new("python3").args(["-c", "import rotel,os;print(os.path.join(os.path.dirname(rotel.__file__),'rotel-agent'))"]).output().ok()?;
    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
    std::path::Path::new(&p).exists().then_some(p)
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
    let bin = std::env::var("VANTAGE_BIN").unwrap_or_else(|_| "target/release/vantage".into());
    assert!(std::path::Path::new(&bin).exists(), "{bin} not found: run `cargo build --release` first");

    // The target: a tiny loopback server in this process.
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("vantage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut probes = String::from("journeys:\n");
    for i in 0..n {
        probes.push_str(&format!(
            "  - name: j{i:04}\n    interval: 1s\n    labels: {{team: bench, service: s{}, environment: bench}}\n    steps:\n      - name: get\n        http: {{url: \"http://{target}/ok\"}}\n        assert: {{status: 200, body_contains: ok}}\n",
            i % 10
        ));
    }
    std::fs::File::create(dir.join("probes.yaml")).unwrap().write_all(probes.as_bytes()).unwrap();

    let grpc = free_port();
    let collector = rotel().filter(|_| std::env::var("BENCH_OTLP").as_deref() != Ok("0")).map(|r| {
        Killer(
            Command::new(r)
                .args(["start", "--exporter", "blackhole", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}"), "--otlp-http-endpoint", &format!("127.0.0.1:{}", free_port())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    let otlp = if collector.is_some() { format!("telemetry:\n  otlp: {{endpoint: \"http://127.0.0.1:{grpc}\", export_interval: 10s}}\n") } else { String::new() };
    let admin = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("agent.yaml"),
        format!("id: bench\nlocation: bench\nprobes: [probes.yaml]\nconcurrency: 256\nadmin: {{listen: \"{admin}\"}}\n{otlp}{}\n", std::env::var("BENCH_AGENT_YAML").unwrap_or_default()),
    )
    .unwrap();
    let agent = Killer(
        Command::new(&bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(dir.join("agent.yaml"))
            .env("VANTAGE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id();
    let client = reqwest::Client::new();
    let status = || async {
        client.get(format!("http://{admin}/status")).send().await.ok()?.json::<serde_json::Value>().await.ok()
    };
    let warmup = Duration::from_secs(10);
    let t0 = Instant::now();
    while status().await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "agent did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(warmup).await;
    client.post(format!("http://{admin}/-/reset-stats")).send().await.unwrap();
    let s0 = status().await.unwrap();
    let cpu0 = proc_cpu_secs(pid);
    let start = Instant::now();
    let mut peak_pss = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_pss = peak_pss.max(pss_kb(pid));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s1 = status().await.unwrap();
    let cpu1 = proc_cpu_secs(pid);
    let runs = s1["scheduler"]["runs_finished"].as_u64().unwrap() - s0["scheduler"]["runs_finished"].as_u64().unwrap();
    let skipped = s1["scheduler"]["skipped"].as_u64().unwrap() - s0["scheduler"]["skipped"].as_u64().unwrap();
    let failures: u64 = s1["journeys"].as_object().unwrap().values().map(|j| j["failures"].as_u64().unwrap_or(0)).sum();
    let late = &s1["scheduler"]["lateness_ms"];
    println!("journeys={n} interval=1s measured={elapsed:.1}s otlp={}", if collector.is_some() { "rotel(blackhole)" } else { "off" });
    println!("runs/s={:.1}", runs as f64 / elapsed);
    println!("cpu_s_per_1000_runs={:.3}", (cpu1 - cpu0) / runs as f64 * 1000.0);
    println!("cpu_util_of_one_core={:.1}%", (cpu1 - cpu0) / elapsed * 100.0);
    println!("lateness_ms p50={} p99={} max={}", late["p50"], late["p99"], late["max"]);
    println!("peak_rss_mb={:.1} (VmHWM) rss_now_mb={:.1} peak_pss_mb={:.1}", status_kb(pid, "VmHWM:") as f64 / 1024.0, status_kb(pid, "VmRSS:") as f64 / 1024.0, peak_pss as f64 / 1024.0);
    // Where the resident memory is: heap and stacks (anon) or mapped code (file).
    println!("rss_anon_mb={:.1} rss_file_mb={:.1}", status_kb(pid, "RssAnon:") as f64 / 1024.0, status_kb(pid, "RssFile:") as f64 / 1024.0);
    println!("skipped={skipped} failures_total={failures}");
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(dir);
}
