//! The agent's own configuration (`agent.yaml`) as users write it: a model
//! layer type, so the browser and the steps can read their settings without
//! importing the loader above them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::model::{self, Dur};
use crate::vocab::Diagnostic;

/// The agent's own configuration (`/etc/vantage/agent.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
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
    /// After `shutdown_grace`, runs still going are cancelled and get this long
    /// for their `finally` steps and the last telemetry export; then the process exits.
    #[serde(default = "default_cleanup_budget")]
    pub cleanup_budget: Dur,
    /// Where the last good probe bundle is kept; default `$STATE_DIRECTORY`
    /// (systemd's `StateDirectory=`), else bundles are not cached.
    pub state_dir: Option<PathBuf>,
    /// Probe bundles fetched from `https://` entries in `probes`.
    #[serde(default)]
    pub bundles: BundleConfig,
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
    #[serde(default)]
    pub status_page: StatusPageConfig,
    /// Where each key was written, for warnings and errors (not part of the file format).
    #[serde(skip)]
    pub spans: Spans,
    /// Agent-wide SLO defaults and the fleet's locations, for `vantage slo generate`.
    #[serde(default)]
    pub slo: super::slo::AgentSloSpec,
}


/// The status page served at `/` on the admin endpoint.
#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// Runs kept in memory per journey (oldest dropped first).
    #[serde(default = "default_status_history")]
    pub history: usize,
    /// Journeys are grouped by this label (e.g. `team`); journeys without it form their own group.
    #[serde(default = "default_status_group_by")]
    pub group_by: String,
    /// Link for trace ids, e.g. `https://tempo.example/trace/{trace_id}`.
    pub trace_url: Option<String>,
    /// `key=value`: journeys with this label are also shown in the marketing view.
    #[serde(default = "default_status_marketing_label")]
    pub marketing_label: String,
}

impl Default for StatusPageConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("empty status page config is valid")
    }
}

fn default_status_history() -> usize {
    500
}
fn default_status_group_by() -> String {
    "team".into()
}
fn default_status_marketing_label() -> String {
    "view=marketing".into()
}

/// Source locations of the agent config's keys (`id`, `telemetry.otlp.headers`, …).
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub file: PathBuf,
    pub keys: std::collections::HashMap<String, (u64, u64)>,
}

impl Spans {
    pub fn read(file: &Path, text: &str) -> Spans {
        use serde::de::IgnoredAny;
        use serde_saphyr::Spanned;
        type Level = std::collections::BTreeMap<String, Spanned<IgnoredAny>>;
        #[derive(Deserialize, Default)]
        struct Nested {
            admin: Option<Level>,
            bundles: Option<Level>,
            telemetry: Option<Telemetry>,
        }
        #[derive(Deserialize, Default)]
        struct Telemetry {
            otlp: Option<Level>,
        }
        let mut keys = std::collections::HashMap::new();
        let mut add = |prefix: &str, level: Option<Level>| {
            for (k, v) in level.unwrap_or_default() {
                keys.insert(format!("{prefix}{k}"), (v.referenced.line(), v.referenced.column()));
            }
        };
        add("", serde_saphyr::from_str::<Level>(text).ok());
        let nested = serde_saphyr::from_str::<Nested>(text).unwrap_or_default();
        add("admin.", nested.admin);
        add("bundles.", nested.bundles);
        add("telemetry.otlp.", nested.telemetry.unwrap_or_default().otlp);
        Spans { file: file.to_path_buf(), keys }
    }

    /// A diagnostic at `key` (or its nearest written parent; else the file's start).
    pub fn at(&self, key: &str, message: String) -> Diagnostic {
        let mut k = key;
        let (line, column) = loop {
            if let Some(p) = self.keys.get(k) {
                break *p;
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => break (1, 1),
            }
        };
        Diagnostic { file: self.file.clone(), line: line.max(1), column: column.max(1), message }
    }

    pub fn written(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }
}

/// Signed probe bundles (`https://` entries in `probes`).
#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// minisign public keys (the base64 line of a `.pub` file, `RW…`) a bundle's signature must match one of.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// How often bundles are fetched again (with `If-None-Match`).
    #[serde(default = "default_bundle_interval")]
    pub interval: Dur,
    /// A PEM file of CAs to trust for the bundle server, in addition to the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for BundleConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("empty bundles config is valid")
    }
}

/// Headless-browser steps: the chromedriver the agent runs and its limits.
#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
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
#[derive(schemars::JsonSchema)]
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
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// Address for inbound webhooks awaited by `callback` steps.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Default: `OTEL_EXPORTER_OTLP_ENDPOINT`; export is off when neither is set.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    pub protocol: Option<String>,
    pub export_interval: Option<Dur>,
    /// Extra headers/metadata that are not secret; default: `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Secret headers (API keys): header name → file name in the credentials directory.
    #[serde(default)]
    pub header_credentials: std::collections::BTreeMap<String, String>,
    /// PEM file of CAs for an `https://` collector; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: file names in the credentials directory of the client certificate and key (PEM).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// `gzip` or `none`; default: `OTEL_EXPORTER_OTLP_COMPRESSION`, else `none`.
    pub compression: Option<String>,
    /// Spans kept while the collector is unreachable; beyond it the oldest are
    /// dropped and counted in `synthetics.agent.telemetry.dropped{signal="traces"}`.
    pub max_buffered_spans: Option<usize>,
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
fn default_cleanup_budget() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_bundle_interval() -> Dur {
    Dur(Duration::from_secs(60))
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
        crate::hostname().unwrap_or_else(|| "vantage".into())
    }

    /// Parsed `shard: i/n`, 1-based.
    pub fn shard(&self) -> Option<(u64, u64)> {
        let (i, n) = self.shard.as_deref()?.split_once('/')?;
        let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
        (n >= 1 && (1..=n).contains(&i)).then_some((i, n))
    }

    /// `state_dir`, else systemd's `$STATE_DIRECTORY` (its first entry).
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.state_dir.clone().filter(|p| !p.as_os_str().is_empty()).or_else(|| {
            let v = std::env::var("STATE_DIRECTORY").ok()?;
            v.split(':').next().filter(|s| !s.is_empty()).map(PathBuf::from)
        })
    }

    pub fn credentials_dir(&self) -> Option<PathBuf> {
        self.credentials_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }
}
