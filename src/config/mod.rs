//! The config and probe model: parse, validate, template.

pub mod model;
pub mod template;
pub mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use model::Dur;
pub use crate::vocab::Diagnostic;
pub use validate::{Journey, Step};

/// The agent's own configuration (`/etc/vantage/agent.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Unique agent id; default: the host name.
    #[serde(default)]
    pub id: String,
    /// Region name: becomes `cloud.region` and `synthetics.location`.
    #[serde(default = "default_location")]
    pub location: String,
    /// `i/n`: run only shard i of n of the journeys (stable hash of the name).
    pub shard: Option<String>,
    /// Probe files or directories of `*.yaml` / `*.yml`; relative to this file.
    #[serde(default)]
    pub probes: Vec<PathBuf>,
    /// Where `${secret.NAME}` files live; default: `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
    /// Journeys running at once, at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Per-step timeout when a step sets none.
    #[serde(default = "default_step_timeout")]
    pub step_timeout: Dur,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub callback: CallbackConfig,
    pub artifacts_dir: Option<PathBuf>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub browser: BrowserConfig,
}

/// Headless-browser steps: the chromedriver the agent runs and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserConfig {
    #[serde(default = "default_chromedriver")]
    pub chromedriver: PathBuf,
    #[serde(default = "default_chromium")]
    pub chromium: PathBuf,
    /// Browser sessions at once, at most (runs wait for a free one within their timeout).
    #[serde(default = "default_browser_max")]
    pub max_concurrent: usize,
    /// Start a fresh chromedriver after this many sessions.
    #[serde(default = "default_restart_after")]
    pub restart_after_sessions: u32,
    /// Failure screenshots kept in `artifacts_dir`, at most (oldest removed first).
    #[serde(default = "default_artifacts_max_files")]
    pub artifacts_max_files: usize,
    /// Total size of the kept artifacts, at most.
    #[serde(default = "default_artifacts_max_size")]
    pub artifacts_max_size: model::ByteSize,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("empty browser config is valid")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/healthz`, `/ready`, `/status`, `/metrics`, `POST /-/reload`. Empty string disables it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: default_admin_listen() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// Address for inbound webhooks awaited by `callback` steps.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Default: `OTEL_EXPORTER_OTLP_ENDPOINT`; export is off when neither is set.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    pub protocol: Option<String>,
    pub export_interval: Option<Dur>,
    /// Extra headers/metadata, e.g. an auth token; default: `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_location() -> String {
    "local".into()
}
fn default_concurrency() -> usize {
    64
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_step_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_chromedriver() -> PathBuf {
    "/usr/bin/chromedriver".into()
}
fn default_chromium() -> PathBuf {
    "/usr/bin/chromium".into()
}
fn default_browser_max() -> usize {
    1
}
fn default_restart_after() -> u32 {
    50
}
fn default_artifacts_max_files() -> usize {
    200
}
fn default_artifacts_max_size() -> model::ByteSize {
    model::ByteSize(100 * 1024 * 1024)
}

impl Default for AgentConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("empty agent config is valid")
    }
}

impl AgentConfig {
    pub fn agent_id(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "vantage".into())
    }

    /// Parsed `shard: i/n`, 1-based.
    pub fn shard(&self) -> Option<(u64, u64)> {
        let (i, n) = self.shard.as_deref()?.split_once('/')?;
        let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
        (n >= 1 && (1..=n).contains(&i)).then_some((i, n))
    }

    pub fn credentials_dir(&self) -> Option<PathBuf> {
        self.credentials_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }
}

/// Everything `check`, `run` and reload need: the agent config and its journeys.
#[derive(Debug)]
pub struct Loaded {
    pub agent: AgentConfig,
    pub journeys: Vec<Journey>,
}

/// Reads the agent config (if any) and the probe files it and `extra` name.
pub fn load(config: Option<&Path>, extra: &[PathBuf]) -> Result<Loaded, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let agent = match config {
        None => AgentConfig::default(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => return Err(vec![io_diag(path, &e)]),
            Ok(text) => match serde_saphyr::from_str::<AgentConfig>(&text) {
                Ok(mut a) => {
                    let base = path.parent().unwrap_or(Path::new("."));
                    a.probes = a.probes.iter().map(|p| base.join(p)).collect();
                    check_agent(path, &a, &mut diags);
                    a
                }
                Err(e) => return Err(vec![validate::parse_error(path, &e)]),
            },
        },
    };
    let mut files = Vec::new();
    for p in agent.probes.iter().chain(extra) {
        collect_probe_files(p, &mut files, &mut diags);
    }
    let journeys = match validate::compile_files(&files) {
        Ok(j) => j,
        Err(d) => {
            diags.extend(d);
            Vec::new()
        }
    };
    if diags.is_empty() {
        Ok(Loaded { agent, journeys })
    } else {
        Err(diags)
    }
}

fn check_agent(path: &Path, a: &AgentConfig, diags: &mut Vec<Diagnostic>) {
    let mut err = |m: String| diags.push(Diagnostic { file: path.into(), line: 1, column: 1, message: m });
    if a.shard.is_some() && a.shard().is_none() {
        err(format!("`shard`: expected `i/n` with 1 <= i <= n, got `{}`", a.shard.as_deref().unwrap_or_default()));
    }
    if a.concurrency == 0 {
        err("`concurrency`: expected at least 1".into());
    }
    if a.browser.max_concurrent == 0 || a.browser.restart_after_sessions == 0 || a.browser.artifacts_max_files == 0 {
        err("`browser`: `max_concurrent`, `restart_after_sessions` and `artifacts_max_files` must be at least 1".into());
    }
    if !a.admin.listen.is_empty() && a.admin.listen.parse::<SocketAddr>().is_err() {
        err(format!("`admin.listen`: expected `ip:port` (or \"\" to disable), got `{}`", a.admin.listen));
    }
    if let Some(p) = &a.telemetry.otlp.protocol {
        if !matches!(p.as_str(), "grpc" | "http/protobuf") {
            err(format!("`telemetry.otlp.protocol`: expected `grpc` or `http/protobuf`, got `{p}`"));
        }
    }
}

fn io_diag(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic { file: path.into(), line: 0, column: 0, message: format!("cannot read: {e}") }
}

fn collect_probe_files(path: &Path, out: &mut Vec<(PathBuf, String)>, diags: &mut Vec<Diagnostic>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return diags.push(io_diag(path, &e)),
        };
        entries.sort();
        for p in entries {
            let yaml = matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"));
            if yaml && p.is_file() {
                collect_probe_files(&p, out, diags);
            }
        }
    } else {
        match std::fs::read_to_string(path) {
            Ok(t) => out.push((path.to_path_buf(), t)),
            Err(e) => diags.push(io_diag(path, &e)),
        }
    }
}
