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
    /// Forward proxy for every `http` and `websocket` step (a step's own `proxy:` wins); when
    /// set, `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` are ignored.
    pub proxy: Option<ProxySpec>,
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
        // Apart: `proxy` may be a plain string, which would fail the nested parse above.
        #[derive(Deserialize)]
        struct Proxy {
            proxy: Option<Level>,
        }
        add("proxy.", serde_saphyr::from_str::<Proxy>(text).ok().and_then(|p| p.proxy));
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

/// `proxy:` agent-wide or on an `http` step: `none`, a URL, or the full form.
#[derive(Debug, Clone, PartialEq, Eq)]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
pub enum ProxySpec {
    /// `none` (direct, the environment ignored) or `http://[user:password@]host:port`.
    Url(String),
    Full(ProxySettings),
}

/// The full form of `proxy:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// `http://host:port` (the proxy itself is spoken to in plain HTTP; https goes through CONNECT), or `none`.
    pub url: String,
    /// File in the credentials directory holding `user:password`, sent as `Proxy-Authorization: Basic`.
    pub credentials: Option<String>,
    /// Hosts reached directly: `example.com` (and its subdomains), `.example.com`, `10.0.0.0/8`, `::1`, `*` (all).
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

impl<'de> Deserialize<'de> for ProxySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ProxySpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none`, a proxy URL `http://host:port`, or `{url, credentials, no_proxy}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProxySpec, E> {
                Ok(ProxySpec::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ProxySpec, A::Error> {
                ProxySettings::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ProxySpec::Full)
            }
        }
        d.deserialize_any(V)
    }
}

impl ProxySpec {
    /// The full form (a bare string is its `url`).
    pub fn settings(&self) -> ProxySettings {
        match self {
            ProxySpec::Url(u) => ProxySettings { url: u.clone(), credentials: None, no_proxy: Vec::new() },
            ProxySpec::Full(s) => s.clone(),
        }
    }

    /// Every problem with the setting, as `(key below proxy, message)`;
    /// messages never repeat a password written in the URL.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let s = self.settings();
        let mut out = Vec::new();
        if s.url == "none" {
            if s.credentials.is_some() || !s.no_proxy.is_empty() {
                out.push(("url", "`url: none` takes no `credentials` or `no_proxy`".to_string()));
            }
            return out;
        }
        match url::Url::parse(&s.url) {
            Ok(u) if u.scheme() == PROXY_SCHEME && u.host_str().is_some_and(|h| !h.is_empty()) => {
                if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
                    out.push(("url", format!("expected a proxy URL without a path, e.g. http://proxy.example:3128, got `{}`", shown_proxy_url(&s.url))));
                }
                if s.credentials.is_some() && (!u.username().is_empty() || u.password().is_some()) {
                    out.push(("credentials", "give the proxy's credentials either in the URL or in `credentials`, not both".to_string()));
                }
            }
            Ok(u) => out.push(("url", format!("expected `none` or an http://host:port proxy URL, got `{}` (a `{}` proxy is not supported; the agent speaks plain HTTP to the proxy and tunnels https through CONNECT)", shown_proxy_url(&s.url), u.scheme()))),
            Err(_) => out.push(("url", format!("expected `none` or an http://host:port proxy URL, got `{}`", shown_proxy_url(&s.url)))),
        }
        if let Some(f) = &s.credentials {
            if f.is_empty() || f == "." || f == ".." || f.contains('/') {
                out.push(("credentials", format!("expected a file name in the credentials directory (holding `user:password`), got `{f}`")));
            }
        }
        for entry in &s.no_proxy {
            let ok = !entry.is_empty()
                && match entry.split_once('/') {
                    Some((ip, bits)) => ip.parse::<std::net::IpAddr>().is_ok_and(|ip| bits.parse::<u8>().is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })),
                    None => entry.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '*')) && (entry == "*" || !entry.contains('*')),
                };
            if !ok {
                out.push(("no_proxy", format!("expected host names (`example.com`, `.example.com`), IP addresses, networks (`10.0.0.0/8`) or `*`, got `{entry}`")));
            }
        }
        out
    }
}

/// The agent speaks plain HTTP to a proxy (https targets go through CONNECT).
const PROXY_SCHEME: &str = "http";

/// A proxy URL for messages: a password written in it is replaced.
pub fn shown_proxy_url(u: &str) -> String {
    crate::redact::strip_url_passwords(u)
}

#[cfg(test)]
mod proxy_tests {
    use super::{ProxySpec, Spans};

    fn spec(y: &str) -> ProxySpec {
        serde_saphyr::from_str(y).unwrap()
    }

    #[test]
    fn proxy_is_a_url_none_or_the_full_form_and_problems_hide_passwords() {
        assert_eq!(spec("none"), ProxySpec::Url("none".into()));
        assert!(spec("http://p.test:3128").problems().is_empty());
        assert!(spec("{url: \"http://p.test:3128\", credentials: proxy-auth, no_proxy: [localhost, .corp.test, 10.0.0.0/8, \"::1\"]}").problems().is_empty());
        assert!(serde_saphyr::from_str::<ProxySpec>("{url: none, typo: 1}").is_err(), "unknown keys are refused");
        let p = spec("\"socks5://u:hunter22@p.test:1080\"").problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("got `socks5://u:[REDACTED]@p.test:1080`") && !p[0].1.contains("hunter22"), "{p:?}");
        let p = spec("{url: \"http://u:pw@p.test:3128/x\", credentials: ../etc/shadow, no_proxy: [\"a b\", 10.0.0.0/99]}").problems();
        let keys: Vec<&str> = p.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["url", "credentials", "credentials", "no_proxy", "no_proxy"], "{p:?}");
        assert!(p.iter().all(|(_, m)| !m.contains(":pw@")), "{p:?}");
        assert_eq!(spec("{url: none, no_proxy: [a.test]}").problems().len(), 1);
    }

    #[test]
    fn proxy_keys_have_locations_whether_string_or_map() {
        let sp = Spans::read(std::path::Path::new("a.yaml"), "id: a\nproxy:\n  url: http://p.test\n  no_proxy: [x]\nadmin: {listen: \"127.0.0.1:1\"}\n");
        assert_eq!(sp.keys.get("proxy.no_proxy"), Some(&(4, 13)));
        assert!(sp.written("admin.listen"), "the other nested keys survive");
        let sp = Spans::read(std::path::Path::new("a.yaml"), "proxy: none\nadmin: {listen: \"127.0.0.1:1\"}\n");
        assert!(sp.written("proxy") && sp.written("admin.listen"));
    }
}
