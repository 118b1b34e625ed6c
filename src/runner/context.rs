//! The per-run context shared by a run's steps (variables, cookies, open
//! connections) and the agent-wide environment every run borrows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::Context as OtelContext;

use crate::config::template::{Template, VarRef};
use crate::runner::result::ErrorType;
use crate::steps::StepError;

/// Agent-wide things a run needs; built once, shared by every run.
pub struct RunEnv {
    pub agent_id: String,
    pub location: String,
    pub credentials_dir: Option<PathBuf>,
    pub resolver: hickory_resolver::TokioResolver,
    pub tls: crate::steps::tls::TlsConfigs,
    pub tracer: opentelemetry_sdk::trace::Tracer,
    pub user_agent: String,
    pub default_step_timeout: Duration,
    pub callbacks: Option<Arc<crate::steps::callback::CallbackHub>>,
    /// Values for `${env.NAME}` that take precedence over the process environment (the demo sets its URLs here).
    pub env_overrides: HashMap<String, String>,
    /// Runs chromedriver for browser steps (started lazily by the first one).
    pub browser: Arc<crate::browser::BrowserManager>,
}

pub const REDACTED: &str = "[REDACTED]";

/// State carried from step to step within one run.
pub struct RunContext {
    pub env: Arc<RunEnv>,
    pub run_id: String,
    pub journey: String,
    vars: HashMap<String, String>,
    secret_values: Vec<String>,
    pub cookies: Arc<reqwest::cookie::Jar>,
    pub http: crate::steps::http::ConnectionCache,
    pub websockets: crate::steps::websocket::Connections,
    /// The run's browser session, opened by its first browser step.
    pub browser: crate::browser::RunBrowser,
    /// Context of the step span in progress, for `traceparent` propagation.
    pub trace_cx: OtelContext,
    /// Start of each step by name, for "time since step X".
    pub step_starts: HashMap<String, Instant>,
    /// What the step in progress is waiting for; named in timeout messages.
    pub waiting_for: &'static str,
    /// When the step in progress will be cut off (step timeout or the run's deadline),
    /// so waiting steps can give up just before with a full message.
    pub step_deadline: Option<Instant>,
    pub started: SystemTime,
}

impl RunContext {
    pub fn new(env: Arc<RunEnv>, journey: &str) -> RunContext {
        RunContext {
            env,
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            journey: journey.to_string(),
            vars: HashMap::new(),
            secret_values: Vec::new(),
            cookies: Arc::new(reqwest::cookie::Jar::default()),
            http: Default::default(),
            websockets: Default::default(),
            browser: Default::default(),
            trace_cx: OtelContext::new(),
            step_starts: HashMap::new(),
            waiting_for: "",
            step_deadline: None,
            started: SystemTime::now(),
        }
    }

    pub fn set_var(&mut self, name: &str, value: String, secret: bool) {
        if secret {
            self.add_secret(&value);
        }
        self.vars.insert(name.to_string(), value);
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn add_secret(&mut self, value: &str) {
        // Very short values would redact innocent text everywhere; they are still never logged on purpose.
        if value.len() >= 4 && !self.secret_values.iter().any(|s| s == value) {
            self.secret_values.push(value.to_string());
            self.secret_values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Replaces every secret this run has touched with `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secret_values {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }

    /// Expands a template against this run.
    pub fn render(&mut self, t: &Template) -> Result<String, StepError> {
        if t.is_literal() {
            return t.render(|_| -> Result<String, StepError> { unreachable!() });
        }
        let mut secrets = Vec::new();
        let out = t.render(|r| self.resolve(r, &mut secrets))?;
        for s in secrets {
            self.add_secret(&s);
        }
        Ok(out)
    }

    fn resolve(&self, r: &VarRef, secrets: &mut Vec<String>) -> Result<String, StepError> {
        Ok(match r {
            VarRef::RunId => self.run_id.clone(),
            VarRef::Uuid => uuid::Uuid::new_v4().to_string(),
            VarRef::Now => humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            VarRef::NowUnix => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_string(),
            VarRef::Env(n) => self.env.env_overrides.get(n).cloned().map(Ok).unwrap_or_else(|| std::env::var(n)).map_err(|_| {
                StepError::new(ErrorType::Config, format!("environment variable `{n}` is not set in the agent's environment"))
            })?,
            VarRef::Secret(n) => {
                let v = read_secret(self.env.credentials_dir.as_deref(), n)?;
                secrets.push(v.clone());
                v
            }
            VarRef::Var(n) => self.vars.get(n).cloned().ok_or_else(|| {
                // Validation rejects undefined names, so this means an earlier step failed or was skipped.
                let mut e = StepError::new(ErrorType::Config, format!("variable `{n}` has no value in this run"));
                e.unset_variable = Some(n.clone());
                e
            })?,
        })
    }
}

fn read_secret(dir: Option<&std::path::Path>, name: &str) -> Result<String, StepError> {
    let dir = dir.ok_or_else(|| {
        StepError::new(
            ErrorType::Config,
            format!("secret `{name}` is used but no credentials directory is set (set `credentials_dir`, or run under systemd with LoadCredential=)"),
        )
    })?;
    let path = dir.join(name);
    let raw = std::fs::read_to_string(&path).map_err(|e| {
        StepError::new(ErrorType::Config, format!("cannot read secret `{name}` from {}: {e}", path.display()))
    })?;
    Ok(raw.trim_end_matches(['\n', '\r']).to_string())
}
