//! Test harness around a real OpenTelemetry collector: Rotel's `rotel-agent`
//! (PyPI package `rotel`, installed by `.ci/install-test-deps`).
//!
//! The collector runs with the blackhole exporter and its *detailed* debug
//! log for metrics and traces. That log goes to the agent's stdout, which we
//! redirect (together with stderr) into a file in a private temp dir. The
//! functions below parse that file into plain structs and poll it.
//!
//! Nothing here skips silently: if the binary is missing, `Collector::start`
//! panics and says how to install it.
#![allow(dead_code)]

use super::free_port;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `start`/`restart` wait for both OTLP ports to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

const INSTALL_HINT: &str = "install it with `.ci/install-test-deps` \
     (or `pip install rotel==0.0.1a15`), or point the ROTEL_AGENT environment \
     variable at the rotel-agent binary";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Sum,
    Gauge,
    Histogram,
    /// Exponential histograms, summaries, or anything this parser does not model.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
    Unspecified,
}

/// One data point of one metric, as the collector printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub name: String,
    pub description: String,
    pub unit: String,
    pub kind: MetricKind,
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope: String,
    pub scope_version: String,
    pub attributes: BTreeMap<String, String>,
    /// Sum and gauge value.
    pub value: Option<f64>,
    /// Histogram fields.
    pub count: Option<u64>,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    /// `None` for gauges.
    pub temporality: Option<Temporality>,
    /// `Some` only for sums.
    pub is_monotonic: Option<bool>,
    pub start_time_unix_nano: Option<u64>,
    pub time_unix_nano: Option<u64>,
}

/// One span, as the collector printed it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpanRecord {
    pub name: String,
    /// Lower-case hex, 32 characters.
    pub trace_id: String,
    /// Lower-case hex, 16 characters.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// As printed, e.g. `SPAN_KIND_CLIENT`.
    pub kind: String,
    /// As printed, e.g. `STATUS_CODE_ERROR`; `STATUS_CODE_UNSET` when the
    /// collector printed no status at all.
    pub status_code: String,
    pub status_message: String,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub start_time_unix_nano: Option<u64>,
    pub end_time_unix_nano: Option<u64>,
}

/// A running (or stopped) `rotel-agent`. Killed on drop.
pub struct Collector {
    bin: PathBuf,
    dir: PathBuf,
    log_path: PathBuf,
    grpc_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl Collector {
    /// Find `rotel-agent`, start it on two free loopback ports and wait until
    /// both accept connections. Panics (with install instructions) if the
    /// binary cannot be found, and with the agent's output if it fails to start.
    pub fn start() -> Collector {
        let bin = find_rotel_agent();
        let dir = make_temp_dir();
        let log_path = dir.join("collector.log");
        let mut last_err = String::new();
        // Ports are picked by binding to :0 and releasing; another process
        // could grab one in between, so retry a few times with fresh ports.
        for _ in 0..3 {
            let (grpc_port, http_port) = (free_port(), free_port());
            if grpc_port == http_port {
                continue;
            }
            let mut c = Collector {
                bin: bin.clone(),
                dir: dir.clone(),
                log_path: log_path.clone(),
                grpc_port,
                http_port,
                child: None,
            };
            match c.spawn_and_wait() {
                Ok(()) => return c,
                Err(e) => {
                    last_err = e;
                    c.kill();
                    // Do not let this attempt's Drop remove the shared dir.
                    std::mem::forget(c);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "could not start rotel-agent ({}): {last_err}",
            bin.display()
        );
    }

    /// `http://127.0.0.1:<grpc port>`, for the tonic exporter.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<http port>` (base URL; append `/v1/metrics` or
    /// `/v1/traces` when configuring an exporter with `with_endpoint`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Path of the captured output (debug log + agent log lines).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Process id of the running agent, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the agent (SIGKILL, like a crash) and wait until both ports
    /// refuse connections. Idempotent. The log is kept.
    pub fn stop(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while port_open(self.grpc_port) || port_open(self.http_port) {
            assert!(
                Instant::now() < deadline,
                "rotel-agent ports still open 10 s after kill"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Start the agent again on the same ports (stopping it first if it is
    /// still running). Its output is appended to the same log, so everything
    /// received before and after the restart stays queryable.
    pub fn restart(&mut self) {
        self.stop();
        // The listening sockets are gone, but binding the same port right
        // away can still fail transiently; retry for a few seconds.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    self.kill();
                    if Instant::now() >= deadline {
                        panic!(
                            "could not restart rotel-agent on ports {}/{}: {e}",
                            self.grpc_port, self.http_port
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Everything the agent has written so far, ANSI colour codes removed.
    pub fn raw_log(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// Every metric data point received so far, in arrival order.
    pub fn metrics(&self) -> Vec<MetricPoint> {
        parse_metrics(&self.raw_log())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        parse_spans(&self.raw_log())
    }

    /// Poll until at least one point of metric `name` satisfies `pred`.
    ///
    /// Returns the *latest* export of that metric: for each distinct attribute
    /// set, the last point received, restricted to the points that satisfy
    /// `pred` (so at least one element). Panics after `timeout` with a summary
    /// of what was received.
    pub fn wait_for_metric(
        &self,
        name: &str,
        pred: impl Fn(&MetricPoint) -> bool,
        timeout: Duration,
    ) -> Vec<MetricPoint> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.raw_log();
            let latest = latest_points(parse_metrics(&log), name);
            let matches: Vec<MetricPoint> = latest.into_iter().filter(|p| pred(p)).collect();
            if !matches.is_empty() {
                return matches;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for metric {name:?} matching the \
                     predicate\n{}",
                    self.describe_received(&log, Some(name))
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Poll until at least one span satisfies `pred`; returns all spans that do
    /// (in arrival order). Panics after `timeout` with a summary of what was
    /// received.
    pub fn wait_for_spans(
        &self,
        pred: impl Fn(&SpanRecord) -> bool,
        timeout: Duration,
    ) -> Vec<SpanRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.raw_log();
            let matches: Vec<SpanRecord> =
                parse_spans(&log).into_iter().filter(|s| pred(s)).collect();
            if !matches.is_empty() {
                return matches;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for a span matching the predicate\n{}",
                    self.describe_received(&log, None)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Like `wait_for_spans`, but waits until at least `n` spans match.
    pub fn wait_for_n_spans(
        &self,
        n: usize,
        pred: impl Fn(&SpanRecord) -> bool,
        timeout: Duration,
    ) -> Vec<SpanRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.raw_log();
            let matches: Vec<SpanRecord> =
                parse_spans(&log).into_iter().filter(|s| pred(s)).collect();
            if matches.len() >= n {
                return matches;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {n} spans matching the predicate \
                     (got {})\n{}",
                    matches.len(),
                    self.describe_received(&log, None)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Human-readable summary of what arrived, for failure messages.
    pub fn describe_received(&self, log: &str, focus_metric: Option<&str>) -> String {
        let metrics = parse_metrics(log);
        let spans = parse_spans(log);
        let mut out = String::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &metrics {
            *names.entry(m.name.as_str()).or_default() += 1;
        }
        let _ = writeln!(out, "collector log: {}", self.log_path.display());
        let _ = writeln!(out, "metric points received, by name: {names:?}");
        if let Some(name) = focus_metric {
            let pts: Vec<&MetricPoint> = metrics.iter().filter(|m| m.name == name).collect();
            let start = pts.len().saturating_sub(5);
            for p in &pts[start..] {
                let _ = writeln!(out, "  {p:?}");
            }
        }
        let span_names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let _ = writeln!(out, "spans received: {span_names:?}");
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let _ = writeln!(out, "last {} log lines:", tail.len());
        for l in tail.into_iter().rev() {
            let _ = writeln!(out, "  | {l}");
        }
        out
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .arg("start")
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "metrics", "--debug-log", "traces"])
            .args(["--debug-log-verbosity", "detailed"])
            .args([
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .args([
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", self.http_port),
            ])
            .arg("--pid-file")
            .arg(self.dir.join("rotel-agent.pid"))
            .arg("--log-file")
            .arg(self.dir.join("rotel-agent.log"))
            // Default is 200 ms; shorter keeps the tests snappy.
            .args(["--batch-timeout", "50ms"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "rotel-agent exited during startup with {status}; output:\n{}",
                    self.raw_log()
                ));
            }
            if port_open(self.grpc_port) && port_open(self.http_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ports {}/{} not accepting connections after {STARTUP_TIMEOUT:?}; output:\n{}",
                    self.grpc_port,
                    self.http_port,
                    self.raw_log()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
        // Keep the log of a failing test around for inspection.
        if std::thread::panicking() {
            eprintln!("rotel-agent output kept at {}", self.log_path.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `ROTEL_AGENT`, else the binary inside the `rotel` Python package, else PATH.
pub fn find_rotel_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("ROTEL_AGENT") {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "ROTEL_AGENT={} is not an executable file; {INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    let py = Command::new("python3")
        .args([
            "-c",
            "import rotel,os;print(os.path.join(os.path.dirname(rotel.__file__),\"rotel-agent\"))",
        ])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = py {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_executable(&p) {
                return p;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("rotel-agent");
            if is_executable(&p) {
                return p;
            }
        }
    }
    panic!("rotel-agent (the Rotel OpenTelemetry collector) was not found; {INSTALL_HINT}");
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn make_temp_dir() -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "vantage-collector-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // Touch the log so raw_log() works even before the first spawn.
    let _ = File::create(dir.join("collector.log"));
    dir
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// For each distinct attribute set of metric `name`, the last point received.
fn latest_points(points: Vec<MetricPoint>, name: &str) -> Vec<MetricPoint> {
    let mut by_attrs: BTreeMap<Vec<(String, String)>, MetricPoint> = BTreeMap::new();
    for p in points.into_iter().filter(|p| p.name == name) {
        let key: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        by_attrs.insert(key, p);
    }
    by_attrs.into_values().collect()
}

// ---------------------------------------------------------------------------
// Parsing of the detailed debug output
// ---------------------------------------------------------------------------

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters/intermediates until a final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `Str(a b)` -> `a b`, `Int(3)` -> `3`, `Bool(true)` -> `true`,
/// `Double(1.5)` -> `1.5`. Anything else is returned as printed.
pub fn render_value(v: &str) -> String {
    if let Some(open) = v.find('(') {
        let ty = &v[..open];
        if v.ends_with(')') && !ty.is_empty() && ty.chars().all(|c| c.is_ascii_alphanumeric()) {
            return v[open + 1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Parse a `     -> key: Type(value)` line into (key, rendered value).
fn parse_arrow(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix("->")?.trim_start();
    let (k, v) = match rest.split_once(": ") {
        Some((k, v)) => (k, v),
        None => (rest.strip_suffix(':').unwrap_or(rest), ""),
    };
    Some((k.trim().to_string(), render_value(v.trim_end())))
}

/// Split `Key: value` / `Key    : value` into (key, value).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim(), v.trim()))
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    None,
    Resource,
    Descriptor,
    PointAttrs,
    SpanAttrs,
    /// Events, links, exemplars, ...: attribute lines here are ignored.
    Ignored,
}

#[derive(Default, Clone)]
struct MetricHeader {
    name: String,
    description: String,
    unit: String,
    data_type: String,
    is_monotonic: Option<bool>,
    temporality: Option<Temporality>,
}

fn parse_temporality(s: &str) -> Temporality {
    let s = s.to_ascii_uppercase();
    if s.contains("CUMULATIVE") {
        Temporality::Cumulative
    } else if s.contains("DELTA") {
        Temporality::Delta
    } else {
        Temporality::Unspecified
    }
}

/// Parse every metric data point out of the debug output.
pub fn parse_metrics(log: &str) -> Vec<MetricPoint> {
    let mut out = Vec::new();
    let mut resource = BTreeMap::new();
    let mut scope = (String::new(), String::new());
    let mut header = MetricHeader::default();
    let mut cur: Option<MetricPoint> = None;
    let mut section = Section::None;
    // Only lines inside a ResourceMetrics block are metric lines.
    let mut in_metrics = false;

    let flush = |cur: &mut Option<MetricPoint>, out: &mut Vec<MetricPoint>| {
        if let Some(p) = cur.take() {
            out.push(p);
        }
    };

    for raw in log.lines() {
        let line = raw.trim_end();
        let t = line.trim_start();
        if t.starts_with("ResourceMetrics #") {
            flush(&mut cur, &mut out);
            in_metrics = true;
            resource = BTreeMap::new();
            section = Section::None;
            continue;
        }
        if t.starts_with("ResourceSpans #") || t.starts_with("ResourceLogs #") {
            flush(&mut cur, &mut out);
            in_metrics = false;
            continue;
        }
        if !in_metrics {
            continue;
        }
        if t == "Resource attributes:" {
            section = Section::Resource;
        } else if t.starts_with("ScopeMetrics #") {
            flush(&mut cur, &mut out);
            section = Section::None;
            scope = (String::new(), String::new());
        } else if let Some(rest) = t.strip_prefix("InstrumentationScope") {
            let mut it = rest.split_whitespace();
            scope = (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            );
        } else if t.starts_with("Metric #") {
            flush(&mut cur, &mut out);
            header = MetricHeader::default();
            section = Section::None;
        } else if t == "Descriptor:" {
            section = Section::Descriptor;
        } else if t.starts_with("NumberDataPoints #")
            || t.starts_with("HistogramDataPoints #")
            || t.starts_with("ExponentialHistogramDataPoints #")
            || t.starts_with("SummaryDataPoints #")
        {
            flush(&mut cur, &mut out);
            section = Section::None;
            let kind = match header.data_type.as_str() {
                "Sum" => MetricKind::Sum,
                "Gauge" => MetricKind::Gauge,
                "Histogram" => MetricKind::Histogram,
                _ => MetricKind::Other,
            };
            cur = Some(MetricPoint {
                name: header.name.clone(),
                description: header.description.clone(),
                unit: header.unit.clone(),
                kind,
                resource: resource.clone(),
                scope: scope.0.clone(),
                scope_version: scope.1.clone(),
                attributes: BTreeMap::new(),
                value: None,
                count: None,
                sum: None,
                min: None,
                max: None,
                bucket_counts: Vec::new(),
                explicit_bounds: Vec::new(),
                temporality: header.temporality,
                is_monotonic: header.is_monotonic,
                start_time_unix_nano: None,
                time_unix_nano: None,
            });
        } else if t == "Data point attributes:" {
            section = Section::PointAttrs;
        } else if t == "Exemplars:" || t.starts_with("Exemplar #") {
            section = Section::Ignored;
        } else if t.starts_with("->") {
            let Some((k, v)) = parse_arrow(t) else {
                continue;
            };
            match section {
                Section::Resource => {
                    resource.insert(k, v);
                }
                Section::PointAttrs => {
                    if let Some(p) = cur.as_mut() {
                        p.attributes.insert(k, v);
                    }
                }
                Section::Descriptor => match k.as_str() {
                    "Name" => header.name = v,
                    "Description" => header.description = v,
                    "Unit" => header.unit = v,
                    "DataType" => header.data_type = v,
                    "IsMonotonic" => header.is_monotonic = Some(v == "true"),
                    "AggregationTemporality" => header.temporality = Some(parse_temporality(&v)),
                    _ => {}
                },
                _ => {}
            }
        } else if let Some(p) = cur.as_mut() {
            // Data point body lines.
            let Some((k, v)) = key_value(t) else { continue };
            if let Some(idx) = k.strip_prefix("ExplicitBounds #") {
                let _ = idx;
                if let Ok(b) = v.parse::<f64>() {
                    p.explicit_bounds.push(b);
                }
                continue;
            }
            if k.starts_with("Buckets #") {
                // `Buckets #0, Count: 1` splits as ("Buckets #0, Count", "1")
                if let Ok(c) = v.parse::<u64>() {
                    p.bucket_counts.push(c);
                }
                continue;
            }
            match k {
                "Value" => p.value = v.parse().ok(),
                "Count" => p.count = v.parse().ok(),
                "Sum" => p.sum = v.parse().ok(),
                "Min" => p.min = v.parse().ok(),
                "Max" => p.max = v.parse().ok(),
                "StartTimestamp" => p.start_time_unix_nano = v.parse().ok(),
                "Timestamp" => p.time_unix_nano = v.parse().ok(),
                _ => {}
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Parse every span out of the debug output.
pub fn parse_spans(log: &str) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    let mut resource = BTreeMap::new();
    let mut scope = String::new();
    let mut cur: Option<SpanRecord> = None;
    let mut section = Section::None;
    let mut in_spans = false;

    let flush = |cur: &mut Option<SpanRecord>, out: &mut Vec<SpanRecord>| {
        if let Some(mut s) = cur.take() {
            if s.status_code.is_empty() {
                s.status_code = "STATUS_CODE_UNSET".to_string();
            }
            out.push(s);
        }
    };

    for raw in log.lines() {
        let line = raw.trim_end();
        let t = line.trim_start();
        if t.starts_with("ResourceSpans #") {
            flush(&mut cur, &mut out);
            in_spans = true;
            resource = BTreeMap::new();
            section = Section::None;
            continue;
        }
        if t.starts_with("ResourceMetrics #") || t.starts_with("ResourceLogs #") {
            flush(&mut cur, &mut out);
            in_spans = false;
            continue;
        }
        if !in_spans {
            continue;
        }
        if t == "Resource attributes:" {
            section = Section::Resource;
        } else if t.starts_with("ScopeSpans #") {
            flush(&mut cur, &mut out);
            section = Section::None;
            scope.clear();
        } else if let Some(rest) = t.strip_prefix("InstrumentationScope") {
            scope = rest.split_whitespace().next().unwrap_or("").to_string();
        } else if t.starts_with("Span #") {
            flush(&mut cur, &mut out);
            section = Section::None;
            cur = Some(SpanRecord {
                resource: resource.clone(),
                scope: scope.clone(),
                ..Default::default()
            });
        } else if t == "Attributes:" {
            section = Section::SpanAttrs;
        } else if t.starts_with("Events:")
            || t.starts_with("Links:")
            || t.starts_with("SpanEvent #")
            || t.starts_with("SpanLink #")
        {
            section = Section::Ignored;
        } else if t.starts_with("->") {
            let Some((k, v)) = parse_arrow(t) else {
                continue;
            };
            match section {
                Section::Resource => {
                    resource.insert(k, v);
                }
                Section::SpanAttrs => {
                    if let Some(s) = cur.as_mut() {
                        s.attributes.insert(k, v);
                    }
                }
                _ => {}
            }
        } else if let Some(s) = cur.as_mut() {
            let Some((k, v)) = key_value(t) else { continue };
            match k {
                "Trace ID" => s.trace_id = v.to_ascii_lowercase(),
                "Parent ID" => {
                    s.parent_span_id = if v.is_empty() || v.chars().all(|c| c == '0') {
                        None
                    } else {
                        Some(v.to_ascii_lowercase())
                    }
                }
                "ID" => s.span_id = v.to_ascii_lowercase(),
                "Name" => s.name = v.to_string(),
                "Kind" => s.kind = v.to_string(),
                "Start time" => s.start_time_unix_nano = v.parse().ok(),
                "End time" => s.end_time_unix_nano = v.parse().ok(),
                "Status code" => s.status_code = v.to_string(),
                "Status message" => s.status_message = v.to_string(),
                _ => {}
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}
