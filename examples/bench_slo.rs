//! SLO rules at fleet scale: how long `vantage slo generate` takes for N
//! journeys, and how long Debian's Prometheus takes to evaluate the generated
//! rule groups for N journeys x 3 locations (the figure its /api/v1/rules
//! reports as `evaluationTime`), against a 1-minute evaluation interval.
//!
//! The three locations are three loopback scrape targets served here with
//! exactly the series a real agent exports for what the rules read (runs by
//! outcome and error type, duration histograms with the journeys' buckets,
//! last-run timestamps), 2% of journeys failing in one location.
//!
//!   cargo build --release --example bench_slo && target/release/examples/bench_slo 1000 6
//!
//! Arguments: journeys (1000), minutes of Prometheus evaluation (6), days of
//! history to backfill (0). With days > 0, the series the long-window rules
//! read are first written as Prometheus would have recorded them over that
//! many days (`promtool tsdb create-blocks-from openmetrics`, one file per 2 h
//! block): the per-location base rates (`slo:sli_*:rate5m`, every minute, for
//! the longest burn window, 3 d) and the per-journey averages
//! (`slo:sli_*:journey_avg_rate5m`, every 5 minutes, for the whole SLO
//! period); then a Prometheus without rules compacts the blocks as a long-running one would have,
//! and the measured one evaluates the rules over them.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LOCATIONS: [&str; 3] = ["loc-a", "loc-b", "loc-c"];
const BOUNDS: [f64; 15] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, f64::INFINITY];
const ERRORS: [&str; 5] = ["assertion", "config", "connect", "http_status", "timeout"];

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The scrape body of one location at `t` seconds since start.
fn exposition(journeys: usize, loc: usize, t: f64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let mut out = String::with_capacity(journeys * 6000);
    out.push_str("# TYPE synthetics_journey_runs_total counter\n");
    let runs = (t / 30.0).floor() as u64 + 1;
    for j in 0..journeys {
        let failing = j % 50 == 0 && loc == 0;
        let lbl = format!("journey_name=\"j{j:04}\",synthetics_location=\"{}\",team=\"t{}\"", LOCATIONS[loc], j % 20);
        let _ = writeln!(out, "synthetics_journey_runs_total{{{lbl},outcome=\"success\"}} {}", if failing { 0 } else { runs });
        let _ = writeln!(out, "synthetics_journey_runs_total{{{lbl},outcome=\"degraded\"}} 0");
        for e in ERRORS {
            let _ = writeln!(
                out,
                "synthetics_journey_runs_total{{{lbl},outcome=\"failure\",error_type=\"{e}\"}} {}",
                if failing && e == "http_status" { runs } else { 0 }
            );
        }
    }
    out.push_str("# TYPE synthetics_journey_duration_seconds histogram\n");
    for j in 0..journeys {
        let lbl = format!("journey_name=\"j{j:04}\",synthetics_location=\"{}\",team=\"t{}\"", LOCATIONS[loc], j % 20);
        let n = (t / 30.0).floor() as u64 + 1;
        for outcome in ["success", "degraded"] {
            let count = if outcome == "success" { n } else { 0 };
            for b in BOUNDS {
                let le = if b.is_infinite() { "+Inf".to_string() } else { format!("{b}") };
                // Every 10th journey is slow: its runs land above 2 s.
                let c = if j % 10 == 0 && b < 2.5 {
                    0
                } else if b >= 0.5 {
                    count
                } else {
                    0
                };
                let _ = writeln!(out, "synthetics_journey_duration_seconds_bucket{{{lbl},outcome=\"{outcome}\",le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "synthetics_journey_duration_seconds_sum{{{lbl},outcome=\"{outcome}\"}} {}", count as f64 * 0.6);
            let _ = writeln!(out, "synthetics_journey_duration_seconds_count{{{lbl},outcome=\"{outcome}\"}} {count}");
        }
    }
    out.push_str("# TYPE synthetics_journey_last_run_timestamp_seconds gauge\n");
    for j in 0..journeys {
        let _ = writeln!(
            out,
            "synthetics_journey_last_run_timestamp_seconds{{journey_name=\"j{j:04}\",synthetics_location=\"{}\"}} {}",
            LOCATIONS[loc],
            (now / 30.0).floor() * 30.0
        );
    }
    out
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Writes `days` of recorded SLI history ending at `end` (unix seconds) into
/// the TSDB at `data`, one OpenMetrics file per 2 h block (promtool re-reads
/// its whole input once per 2 h block). Returns the samples written.
fn backfill(dir: &std::path::Path, data: &std::path::Path, journeys: usize, days: u64, end: i64) -> u64 {
    use std::io::Write as _;
    const BLOCK: i64 = 2 * 3600;
    let base_from = end - 3 * 86400; // the longest burn window reads 3 d of base rates
    let start = (end - days as i64 * 86400).div_euclid(BLOCK) * BLOCK;
    let file = dir.join("backfill.om");
    let mut samples = 0u64;
    // What the live rules record: 1/30 runs per second per location (30 s interval),
    // every 50th journey failing in loc-a, every 10th slower than its 2 s latency
    // threshold; a little variation so chunks do not compress better than real ones.
    let rate = |t: i64| (1.0 / 30.0) * (1.0 + 0.01 * ((t / 60) % 7) as f64);
    let mut t0 = start;
    while t0 < end {
        let t1 = (t0 + BLOCK).min(end);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for (name, error) in [("slo:sli_error:rate5m", true), ("slo:sli_total:rate5m", false)] {
            writeln!(w, "# TYPE {name} gauge").unwrap();
            for j in 0..journeys {
                for (loc, l) in LOCATIONS.iter().enumerate() {
                    for slo in ["availability", "latency"] {
                        if slo == "latency" && j % 2 != 0 {
                            continue;
                        }
                        let bad = if slo == "availability" { j % 50 == 0 && loc == 0 } else { j % 10 == 0 };
                        let extra = if slo == "latency" { ",threshold=\"2\"" } else { "" };
                        let mut t = t0.max(base_from).div_euclid(60) * 60;
                        while t < t1 {
                            if t >= t0 {
                                let v = if error && !bad { 0.0 } else { rate(t) };
                                writeln!(w, "{name}{{journey_name=\"j{j:04}\",synthetics_location=\"{l}\",slo=\"{slo}\"{extra}}} {v} {t}").unwrap();
                                samples += 1;
                            }
                            t += 60;
                        }
                    }
                }
            }
        }
        for (name, error) in [("slo:sli_error:journey_avg_rate5m", true), ("slo:sli_total:journey_avg_rate5m", false)] {
            writeln!(w, "# TYPE {name} gauge").unwrap();
            for j in 0..journeys {
                for slo in ["availability", "latency"] {
                    if slo == "latency" && j % 2 != 0 {
                        continue;
                    }
                    let bad_locs = if slo == "availability" { u32::from(j % 50 == 0) } else if j % 10 == 0 { 3 } else { 0 };
                    let mut t = t0.div_euclid(300) * 300;
                    while t < t1 {
                        if t >= t0 {
                            let v = rate(t) * if error { bad_locs as f64 } else { 3.0 };
                            writeln!(w, "{name}{{journey_name=\"j{j:04}\",slo=\"{slo}\"}} {v} {t}").unwrap();
                            samples += 1;
                        }
                        t += 300;
                    }
                }
            }
        }
        writeln!(w, "# EOF").unwrap();
        w.flush().unwrap();
        drop(w);
        let o = Command::new("promtool").args(["tsdb", "create-blocks-from", "openmetrics", "-q"]).arg(&file).arg(data).output().expect("promtool (Debian package prometheus)");
        assert!(o.status.success(), "promtool: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        t0 = t1;
    }
    let _ = std::fs::remove_file(&file);
    samples
}

fn blocks(data: &std::path::Path) -> usize {
    std::fs::read_dir(data).map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().join("meta.json").exists()).count()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let journeys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let minutes: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(6);
    let days: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let exe = std::env::current_exe().unwrap();
    let vantage = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("vantage"))
        .filter(|p| p.exists())
        .expect("target/release/vantage: run `cargo build --release` first");
    let dir = std::env::temp_dir().join(format!("vantage-bench-slo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("probes")).unwrap();

    // N journeys, every other one with a latency objective on a bucket bound.
    let mut probes = String::from("journeys:\n");
    for j in 0..journeys {
        let _ = write!(probes, "  - name: j{j:04}\n    interval: 30s\n    labels: {{team: t{}}}\n    buckets: [0.5, 2]\n", j % 20);
        if j % 2 == 0 {
            probes.push_str("    slo:\n      latency: {threshold: 2s, objective: 99}\n");
        }
        probes.push_str("    steps:\n      - name: home\n        http: {url: \"http://127.0.0.1:9/\"}\n");
    }
    std::fs::write(dir.join("probes/bench.yaml"), probes).unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        "probes: [probes]\nslo:\n  availability: {objective: 99.5, window: 30d}\n  team: sre\n  locations: [loc-a, loc-b, loc-c]\n",
    )
    .unwrap();

    let mut gen = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let o = Command::new(&vantage).args(["slo", "generate", "--config"]).arg(dir.join("agent.yaml")).arg("--out").arg(dir.join("slo")).output().unwrap();
        gen.push(t0.elapsed().as_secs_f64());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rules = std::fs::read_to_string(dir.join("slo/rules/vantage-slo.yaml")).unwrap();
    // The backfill writes the series these rules record, under the same names and labels.
    for r in ["record: slo:sli_error:rate5m", "record: slo:sli_total:journey_avg_rate5m", "threshold: \"2\"", "sum by (journey_name, slo) (avg_over_time(slo:sli_error:rate5m[5m]))"] {
        assert!(days == 0 || rules.contains(r), "the generated rules changed: no `{r}`; update backfill()");
    }
    let n_rules = rules.matches("\n      - record: ").count() + rules.matches("\n      - alert: ").count();
    let gen_median = median(&mut gen);
    println!(
        "vantage slo generate, {journeys} journeys: median {:.0} ms of 5 runs (range {:.0}-{:.0} ms); {n_rules} rules, {} KiB",
        gen_median * 1000.0,
        gen[0] * 1000.0,
        gen[4] * 1000.0,
        rules.len() / 1024
    );

    // Three scrape targets.
    let start = Instant::now();
    let mut targets = Vec::new();
    for loc in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        targets.push(format!("\"{}\"", l.local_addr().unwrap()));
        let j = Arc::new(journeys);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let j = *j;
                async move { exposition(j, loc, start.elapsed().as_secs_f64()) }
            }),
        );
        tokio::spawn(async move { axum::serve(l, app).await });
    }
    let data = dir.join("data");
    let retention = format!("--storage.tsdb.retention.time={}d", days + 10);
    if days > 0 {
        let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 120;
        let t0 = Instant::now();
        let n = backfill(&dir, &data, journeys, days, end);
        let written = t0.elapsed().as_secs_f64();
        // Compact as a long-running Prometheus would have: no rules, no scrapes,
        // until the block count has not changed for 2 minutes (compaction runs every minute).
        std::fs::write(dir.join("empty.yml"), "global: {}\n").unwrap();
        let before = blocks(&data);
        let p = Kill(
            Command::new("/usr/bin/prometheus")
                .arg(format!("--config.file={}", dir.join("empty.yml").display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(&retention)
                .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("/usr/bin/prometheus (Debian package prometheus)"),
        );
        let t1 = Instant::now();
        let (mut last, mut since) = (blocks(&data), Instant::now());
        while since.elapsed() < Duration::from_secs(120) && t1.elapsed() < Duration::from_secs(1800) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let b = blocks(&data);
            if b != last {
                (last, since) = (b, Instant::now());
            }
        }
        drop(p);
        println!(
            "backfilled {days} d: {n} samples in {before} blocks ({written:.0} s), compacted to {last} blocks ({:.0} s)",
            t1.elapsed().as_secs_f64()
        );
    }
    let port = free_port();
    let cfg = format!(
        "global: {{scrape_interval: 15s, scrape_timeout: 10s}}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: vantage\n    static_configs: [{{targets: [{}]}}]\n",
        dir.join("slo/rules/vantage-slo.yaml").display(),
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prom = Kill(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(&retention)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/prometheus (Debian package prometheus)"),
    );
    let api = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(minutes * 60 + 30);
    // (group, lastEvaluation) → evaluationTime; one entry per evaluation.
    let mut seen: std::collections::BTreeMap<(String, String), f64> = Default::default();
    let mut groups: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    let mut peak_pss = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        peak_pss = peak_pss.max(pss_kib(prom.0.id()));
        let Ok(r) = client.get(format!("{api}/api/v1/rules")).timeout(Duration::from_secs(5)).send().await else { continue };
        let Ok(v) = r.json::<serde_json::Value>().await else { continue };
        for g in v["data"]["groups"].as_array().cloned().unwrap_or_default() {
            let name = g["name"].as_str().unwrap_or("").to_string();
            groups.insert(name.clone(), (g["interval"].as_f64().unwrap_or(0.0), g["rules"].as_array().map(|r| r.len()).unwrap_or(0)));
            let last = g["lastEvaluation"].as_str().unwrap_or("").to_string();
            if !last.starts_with("0001") {
                seen.insert((name, last), g["evaluationTime"].as_f64().unwrap_or(0.0));
            }
        }
    }
    let q = |e: &str| {
        let client = client.clone();
        let url = format!("{api}/api/v1/query?query={e}");
        async move { client.get(url).send().await.ok()?.json::<serde_json::Value>().await.ok()?["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok() }
    };
    // Prometheus does not scrape itself here: its TSDB status has the head series count.
    let series = async {
        let v: serde_json::Value = client.get(format!("{api}/api/v1/status/tsdb")).send().await.ok()?.json().await.ok()?;
        v["data"]["headStats"]["numSeries"].as_f64()
    }
    .await
    .unwrap_or(f64::NAN);
    let firing = q("count(ALERTS%7Balertstate%3D%22firing%22%7D)").await.unwrap_or(0.0);
    if days > 0 {
        // The rules saw the history: samples per series in the longest windows they read.
        let query = |e: &'static str| {
            let client = client.clone();
            let url = format!("{api}/api/v1/query");
            async move { client.get(format!("{url}?query={}", url::form_urlencoded::byte_serialize(e.as_bytes()).collect::<String>())).send().await.ok()?.json::<serde_json::Value>().await.ok()?["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok() }
        };
        let base = query("count_over_time(slo:sli_total:rate5m{journey_name=\"j0001\",synthetics_location=\"loc-a\",slo=\"availability\"}[3d])").await;
        let avg = query("count_over_time(slo:sli_total:journey_avg_rate5m{journey_name=\"j0001\",slo=\"availability\"}[30d])").await;
        let budget = query("slo:error_budget_remaining:ratio{journey_name=\"j0000\",slo=\"availability\"}").await;
        println!("history seen by the rules: {base:?} base-rate samples in 3d, {avg:?} journey averages in 30d (one series each); j0000 budget remaining {budget:?}");
    }
    println!(
        "prometheus {journeys} journeys x 3 locations: {series:.0} head series, {minutes} min of live data after {days} d of backfilled history, {firing:.0} alerts firing, peak PSS {} MiB",
        peak_pss / 1024
    );
    let mut cycle = 0.0;
    for (name, (interval, n)) in &groups {
        let mut t: Vec<f64> = seen.iter().filter(|((g, _), _)| g == name).map(|(_, v)| *v).collect();
        if t.is_empty() {
            continue;
        }
        let (last, max) = (*t.last().unwrap(), t.iter().cloned().fold(0.0, f64::max));
        let med = median(&mut t);
        cycle += max;
        println!(
            "  group {name:<22} interval {interval:>4.0}s  {n:>5} rules  evaluations {:>3}  median {:>7.3}s  max {:>7.3}s  last {:>7.3}s",
            t.len(),
            med,
            max,
            last
        );
    }
    println!("sum of the groups' slowest evaluations: {cycle:.3}s of the 60s interval ({:.1}%)", cycle / 60.0 * 100.0);
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
