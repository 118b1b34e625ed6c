//! The config: the agent config ([`agent`]) and shared value types
//! ([`model`], [`template`]) are the model layer, below the steps; loading
//! files and compiling journeys ([`load`], [`validate`]) is the layer above
//! the steps, which it compiles through their registry.

pub mod agent;
pub mod model;
pub mod template;
pub mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use agent::{AdminConfig, AgentConfig, BrowserConfig, CallbackConfig, OtlpConfig, StatusPageConfig, TelemetryConfig};
pub use model::Dur;
pub use crate::vocab::Diagnostic;
pub use validate::{Journey, Step};

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
    let sp = &a.status_page;
    if !(1..=100_000).contains(&sp.history) {
        err(format!("`status_page.history`: expected 1 to 100000 runs per journey, got {}", sp.history));
    }
    if sp.trace_url.as_deref().is_some_and(|u| !u.contains("{trace_id}") || !(u.starts_with("https://") || u.starts_with("http://"))) {
        err(format!("`status_page.trace_url`: expected an http(s) URL containing `{{trace_id}}`, got `{}`", sp.trace_url.as_deref().unwrap_or_default()));
    }
    if !sp.marketing_label.is_empty() && !sp.marketing_label.contains('=') {
        err(format!("`status_page.marketing_label`: expected `key=value` (or \"\" for none), got `{}`", sp.marketing_label));
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
