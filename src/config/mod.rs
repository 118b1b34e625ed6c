//! The config: the agent config ([`agent`]) and shared value types
//! ([`model`], [`template`]) are the model layer, below the steps; loading
//! files and compiling journeys ([`load`], [`validate`]) is the layer above
//! the steps, which it compiles through their registry.

pub mod agent;
pub mod checks;
pub mod slo;
pub mod model;
pub mod schema;
pub mod template;
pub mod tree;
pub mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use agent::{AdminConfig, AgentConfig, BrowserConfig, BundleConfig, CallbackConfig, OtlpConfig, Spans, StatusPageConfig, TelemetryConfig};
pub use model::Dur;
pub use crate::vocab::Diagnostic;
pub use validate::{Journey, Step};

/// Everything `check`, `run` and reload need: the agent config and its journeys.
#[derive(Debug)]
pub struct Loaded {
    pub agent: AgentConfig,
    pub journeys: Vec<Journey>,
}

/// A `probes` entry naming a bundle to fetch rather than a local path.
pub fn is_bundle_url(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("https://") || s.starts_with("http://"))
}

/// Parses the agent config file alone (paths made relative to it, key locations kept).
pub fn parse_agent(path: &Path) -> Result<AgentConfig, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![io_diag(path, &e)])?;
    let mut a = serde_saphyr::from_str::<AgentConfig>(&text).map_err(|e| {
        // Report every structural problem, not only the parser's first.
        let problems = tree::parse(&text).map(|root| tree::deserialize_all::<AgentConfig>(&root, &text).1).unwrap_or_default();
        if problems.is_empty() {
            let syntax = tree::parse(&text).err();
            return vec![validate::syntax_error(path, &text, syntax.as_ref().unwrap_or(&e))];
        }
        problems.into_iter().map(|p| Diagnostic { file: path.into(), line: p.line, column: p.column, message: p.message }).collect()
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    a.probes = a.probes.iter().map(|p| if is_bundle_url(p) { p.clone() } else { base.join(p) }).collect();
    a.telemetry.otlp.ca_file = a.telemetry.otlp.ca_file.take().map(|p| base.join(p));
    a.bundles.ca_file = a.bundles.ca_file.take().map(|p| base.join(p));
    a.state_dir = a.state_dir.take().filter(|p| !p.as_os_str().is_empty()).map(|p| base.join(p));
    a.spans = Spans::read(path, &text);
    let mut diags = Vec::new();
    check_agent(&a, &mut diags);
    if diags.is_empty() {
        Ok(a)
    } else {
        Err(diags)
    }
}

/// Reads the agent config (if any) and the probe files it and `extra` name.
pub fn load(config: Option<&Path>, extra: &[PathBuf]) -> Result<Loaded, Vec<Diagnostic>> {
    load_with(config, extra, &[])
}

/// Like [`load`], with probe files already in memory (fetched bundles) added.
pub fn load_with(config: Option<&Path>, extra: &[PathBuf], fetched: &[(PathBuf, String)]) -> Result<Loaded, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let agent = match config {
        None => AgentConfig::default(),
        Some(path) => match parse_agent(path) {
            Ok(a) => a,
            Err(d) => {
                diags.extend(d);
                AgentConfig::default()
            }
        },
    };
    let mut files = Vec::new();
    for p in agent.probes.iter().chain(extra).filter(|p| !is_bundle_url(p)) {
        collect_probe_files(p, &mut files, &mut diags);
    }
    files.extend(fetched.iter().cloned());
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

fn check_agent(a: &AgentConfig, diags: &mut Vec<Diagnostic>) {
    let sp = &a.spans;
    let mut err = |key: &str, m: String| diags.push(sp.at(key, m));
    if a.shard.is_some() && a.shard().is_none() {
        err("shard", format!("`shard`: expected `i/n` with 1 <= i <= n, got `{}`", a.shard.as_deref().unwrap_or_default()));
    }
    if a.concurrency == 0 {
        err("concurrency", "`concurrency`: expected at least 1".into());
    }
    if a.browser.max_concurrent == 0 || a.browser.restart_after_sessions == 0 || a.browser.artifacts_max_files == 0 {
        err("browser", "`browser`: `max_concurrent`, `restart_after_sessions` and `artifacts_max_files` must be at least 1".into());
    }
    if !a.admin.listen.is_empty() && a.admin.listen.parse::<SocketAddr>().is_err() {
        err("admin.listen", format!("`admin.listen`: expected `ip:port` (or \"\" to disable), got `{}`", a.admin.listen));
    }
    let page = &a.status_page;
    if !(1..=100_000).contains(&page.history) {
        err("status_page.history", format!("`status_page.history`: expected 1 to 100000 runs per journey, got {}", page.history));
    }
    if page.trace_url.as_deref().is_some_and(|u| !u.contains("{trace_id}") || !(u.starts_with("https://") || u.starts_with("http://"))) {
        err("status_page.trace_url", format!("`status_page.trace_url`: expected an http(s) URL containing `{{trace_id}}`, got `{}`", page.trace_url.as_deref().unwrap_or_default()));
    }
    if !page.marketing_label.is_empty() && !page.marketing_label.contains('=') {
        err("status_page.marketing_label", format!("`status_page.marketing_label`: expected `key=value` (or \"\" for none), got `{}`", page.marketing_label));
    }
    let otlp = &a.telemetry.otlp;
    if let Some(p) = &otlp.protocol {
        if !matches!(p.as_str(), "grpc" | "http/protobuf") {
            err("telemetry.otlp.protocol", format!("`telemetry.otlp.protocol`: expected `grpc` or `http/protobuf`, got `{p}`"));
        }
    }
    if let Some(e) = otlp.endpoint.as_deref().filter(|e| !e.is_empty()) {
        if let Err(m) = checks::check_endpoint(e) {
            err("telemetry.otlp.endpoint", format!("`telemetry.otlp.endpoint`: {m}"));
        }
    }
    if let Some(c) = &otlp.compression {
        if !matches!(c.as_str(), "gzip" | "none") {
            err("telemetry.otlp.compression", format!("`telemetry.otlp.compression`: expected `gzip` or `none`, got `{c}`"));
        }
    }
    for (k, v) in &otlp.headers {
        if let Err(m) = checks::check_header(k, Some(v)) {
            err("telemetry.otlp.headers", format!("`telemetry.otlp.headers`: {m}"));
        }
    }
    for (k, file) in &otlp.header_credentials {
        if let Err(m) = checks::check_header(k, None) {
            err("telemetry.otlp.header_credentials", format!("`telemetry.otlp.header_credentials`: {m}"));
        }
        if !checks::is_plain_file_name(file) {
            err("telemetry.otlp.header_credentials", format!("`telemetry.otlp.header_credentials`: `{k}`: expected a file name in the credentials directory, got `{file}`"));
        }
    }
    if otlp.max_buffered_spans == Some(0) {
        err("telemetry.otlp.max_buffered_spans", "`telemetry.otlp.max_buffered_spans`: expected at least 1".into());
    }
    if otlp.client_cert.is_some() != otlp.client_key.is_some() {
        err("telemetry.otlp", "`telemetry.otlp`: mutual TLS needs both `client_cert` and `client_key` (file names in the credentials directory)".into());
    }
    for (key, v) in [("client_cert", &otlp.client_cert), ("client_key", &otlp.client_key)] {
        if let Some(f) = v.as_deref().filter(|f| !checks::is_plain_file_name(f)) {
            err(&format!("telemetry.otlp.{key}"), format!("`telemetry.otlp.{key}`: expected a file name in the credentials directory, got `{f}`"));
        }
    }
    if let Some(p) = &a.proxy {
        let short = matches!(p, agent::ProxySpec::Url(_));
        for (k, m) in p.problems() {
            let key = if short { "proxy".to_string() } else { format!("proxy.{k}") };
            err(&key, format!("`{key}`: {m}"));
        }
    }
    for k in &a.bundles.trusted_keys {
        if let Err(m) = checks::parse_public_key(k) {
            err("bundles.trusted_keys", format!("`bundles.trusted_keys`: {m}"));
        }
    }
    if a.probes.iter().any(|p| is_bundle_url(p)) && a.bundles.trusted_keys.is_empty() {
        err("probes", "`probes` names a bundle URL, but `bundles.trusted_keys` is empty: expected at least one minisign public key to verify bundles with".into());
    }
    for p in a.probes.iter().filter(|p| is_bundle_url(p)) {
        if !p.to_str().is_some_and(|s| s.starts_with("https://")) {
            err("probes", format!("`probes`: bundle URLs must be `https://`, got `{}`", p.display()));
        }
    }
}

/// The placeholder `location` the package ships and the agent defaults to.
pub const PLACEHOLDER_LOCATION: &str = "local";

impl AgentConfig {
    /// Settings that run but cannot work in a fleet, each at its place in the file.
    /// `journeys` is what this agent would run (after location and shard); `export_on`
    /// whether OTLP export is configured (config or environment).
    pub fn fleet_warnings(&self, journeys: usize, export_on: bool) -> Vec<Diagnostic> {
        let sp = &self.spans;
        let mut w = Vec::new();
        if self.id.is_empty() {
            let host = crate::hostname();
            let name = host.clone().unwrap_or_else(|| "vantage".into());
            let how = if host.is_some() { "its host name" } else { "a fallback: gethostname failed" };
            w.push(sp.at(
                "id",
                format!("`id` is not set, so this agent is `{name}` ({how}): agents with the same id merge into one series and start their journeys at the same moments; give each agent a unique `id` or make sure host names are unique"),
            ));
        }
        if self.location == PLACEHOLDER_LOCATION {
            w.push(sp.at(
                "location",
                format!("`location` is still the placeholder `{PLACEHOLDER_LOCATION}`: name the region or site of this agent (e.g. eu-west-1), since alerts compare locations"),
            ));
        }
        let admin_outside = self.admin.listen.parse::<SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
        if !export_on && !admin_outside {
            let key = if sp.written("telemetry") { "telemetry.otlp.endpoint" } else { "admin.listen" };
            let admin = if self.admin.listen.is_empty() { "disabled".to_string() } else { format!("on `{}`", self.admin.listen) };
            w.push(sp.at(
                key,
                format!("no result leaves this host: OTLP export is off (no `telemetry.otlp.endpoint`, no OTEL_EXPORTER_OTLP_ENDPOINT) and the admin endpoint is {admin}, not reachable from outside; set an OTLP endpoint or listen on an address Prometheus can scrape"),
            ));
        }
        if journeys == 0 {
            let shard = self.shard.as_deref().map(|s| format!(", shard {s}")).unwrap_or_default();
            w.push(sp.at("probes", format!("zero journeys to run for location `{}`{shard}: check `probes` and the journeys' `locations`", self.location)));
        }
        w
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const JOURNEY: &str = "journeys:\n  - name: j\n    interval: 30s\n    steps:\n      - name: a\n        tcp: {address: \"127.0.0.1:1\"}\n";

    /// A fresh directory under the system temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let d = std::env::temp_dir().join(format!("vantage-config-unit-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir(&d).unwrap();
            Dir(d)
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn shown(d: &[Diagnostic]) -> Vec<String> {
        d.iter().map(|d| format!("{}:{}:{}: {}", d.file.display(), d.line, d.column, d.message)).collect()
    }

    #[test]
    fn bundle_urls_are_http_or_https_only() {
        assert!(is_bundle_url(Path::new("https://probes.example/b.tar")));
        assert!(is_bundle_url(Path::new("http://probes.example/b.tar")));
        assert!(!is_bundle_url(Path::new("probes/https.yaml")));
        assert!(!is_bundle_url(Path::new("/etc/vantage/https://x")));
        assert!(!is_bundle_url(Path::new("HTTPS://upper.case")));
        assert!(!is_bundle_url(Path::new("ftp://x/b.tar")));
    }

    #[test]
    fn no_agent_config_means_the_documented_defaults() {
        let l = load(None, &[]).unwrap();
        assert!(l.journeys.is_empty());
        let a = l.agent;
        assert_eq!(a.id, "");
        assert_eq!(a.location, PLACEHOLDER_LOCATION);
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.admin.listen, "127.0.0.1:9464");
        assert_eq!(a.step_timeout.0, Duration::from_secs(10));
        assert_eq!(a.shutdown_grace.0, Duration::from_secs(10));
        assert_eq!(a.browser.chromedriver, Path::new("/usr/bin/chromedriver"));
        assert_eq!(a.browser.chromium, Path::new("/usr/bin/chromium"));
        assert_eq!(a.browser.max_concurrent, 1);
        assert_eq!(a.browser.restart_after_sessions, 50);
        assert_eq!(a.status_page.history, 500);
        assert!(a.probes.is_empty() && a.shard.is_none() && a.proxy.is_none());
    }

    #[test]
    fn agent_paths_are_relative_to_the_config_file_and_urls_stay() {
        let d = Dir::new();
        let cfg = d.file(
            "agent.yaml",
            "location: eu-west-1\nprobes: [probes, /abs/p.yaml, \"https://b.example/p.tar\"]\nstate_dir: state\nbundles:\n  trusted_keys: []\n",
        );
        // A bundle URL needs trusted keys: the only problem in this file.
        let err = parse_agent(&cfg).unwrap_err();
        assert_eq!(err.len(), 1, "{:?}", shown(&err));
        assert_eq!(err[0].line, 2);
        assert!(err[0].message.starts_with("`probes` names a bundle URL, but `bundles.trusted_keys` is empty"), "{}", err[0].message);
        std::fs::write(&cfg, "location: eu-west-1\nprobes: [probes, /abs/p.yaml]\nstate_dir: state\n").unwrap();
        let a = parse_agent(&cfg).unwrap();
        assert_eq!(a.location, "eu-west-1");
        assert_eq!(a.probes, [d.0.join("probes"), PathBuf::from("/abs/p.yaml")]);
        assert_eq!(a.state_dir, Some(d.0.join("state")));
        std::fs::write(&cfg, "state_dir: \"\"\n").unwrap();
        assert_eq!(parse_agent(&cfg).unwrap().state_dir, None, "empty means no state dir");
    }

    #[test]
    fn every_agent_problem_is_reported_at_its_value_line_and_column() {
        let d = Dir::new();
        let cfg = d.file("agent.yaml", "location: x\nconcurrency: 0\nshard: 3/2\nadmin:\n  listen: nowhere\n");
        let err = shown(&parse_agent(&cfg).unwrap_err());
        let f = cfg.display();
        assert_eq!(
            err,
            [
                format!("{f}:3:8: `shard`: expected `i/n` with 1 <= i <= n, got `3/2`"),
                format!("{f}:2:14: `concurrency`: expected at least 1"),
                format!("{f}:5:11: `admin.listen`: expected `ip:port` (or \"\" to disable), got `nowhere`"),
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_yaml_point_at_the_place() {
        let d = Dir::new();
        let cfg = d.file("agent.yaml", "location: x\nconcurency: 2\n");
        let err = parse_agent(&cfg).unwrap_err();
        assert_eq!(err.len(), 1, "{:?}", shown(&err));
        assert_eq!((err[0].file.as_path(), err[0].line, err[0].column), (cfg.as_path(), 2, 1));
        let m = &err[0].message;
        assert!(m.starts_with("unknown field `concurency`, expected one of id, location, "), "{m}");
        assert!(m.contains(" concurrency, "), "{m}");
        std::fs::write(&cfg, "location: [x\n").unwrap();
        let err = parse_agent(&cfg).unwrap_err();
        assert_eq!(err.len(), 1, "{:?}", shown(&err));
        assert_eq!(shown(&err), [format!("{}:1:11: unclosed bracket '['", cfg.display())]);
    }

    #[test]
    fn a_missing_file_is_named_with_the_reason() {
        let d = Dir::new();
        let gone = d.0.join("agent.yaml");
        let err = load(Some(&gone), &[]).unwrap_err();
        assert_eq!(shown(&err), [format!("{}:0:0: cannot read: No such file or directory (os error 2)", gone.display())]);
    }

    #[test]
    fn a_probe_directory_gives_its_yaml_files_in_name_order() {
        let d = Dir::new();
        std::fs::create_dir(d.0.join("p")).unwrap();
        d.file("p/b.yaml", "b");
        d.file("p/a.yml", "a");
        d.file("p/c.txt", "c");
        std::fs::create_dir(d.0.join("p/sub.yaml")).unwrap();
        let (mut files, mut diags) = (Vec::new(), Vec::new());
        collect_probe_files(&d.0.join("p"), &mut files, &mut diags);
        assert!(diags.is_empty());
        assert_eq!(files, [(d.0.join("p/a.yml"), "a".to_string()), (d.0.join("p/b.yaml"), "b".to_string())]);
    }

    #[test]
    fn load_compiles_the_probes_the_agent_config_names() {
        let d = Dir::new();
        d.file("j.yaml", JOURNEY);
        let cfg = d.file("agent.yaml", "location: x\nprobes: [j.yaml]\n");
        let l = load(Some(&cfg), &[]).unwrap();
        assert_eq!(l.journeys.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["j"]);
        // A broken agent config is reported alone: its probe list is not trusted, so not read.
        std::fs::write(&cfg, "concurrency: 0\nprobes: [gone.yaml]\n").unwrap();
        let err = shown(&load(Some(&cfg), &[]).unwrap_err());
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0], format!("{}:1:14: `concurrency`: expected at least 1", cfg.display()));
    }

    #[test]
    fn fleet_warnings_name_the_placeholder_location_and_zero_journeys() {
        let d = Dir::new();
        let cfg = d.file("agent.yaml", "id: a1\nadmin:\n  listen: 0.0.0.0:9464\n");
        let a = parse_agent(&cfg).unwrap();
        let w = shown(&a.fleet_warnings(0, false));
        let f = cfg.display();
        assert_eq!(
            w,
            [
                format!("{f}:1:1: `location` is still the placeholder `local`: name the region or site of this agent (e.g. eu-west-1), since alerts compare locations"),
                format!("{f}:1:1: zero journeys to run for location `local`: check `probes` and the journeys' `locations`"),
            ]
        );
        assert!(a.fleet_warnings(3, true).len() == 1, "only the placeholder location is left");
    }
}
