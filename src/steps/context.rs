//! The per-run context shared by a run's steps (variables, cookies, and the
//! kinds' own per-run state) and the agent-wide environment every run borrows.
//! It sits below the runner, so step kinds never import the runner.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use opentelemetry::Context as OtelContext;

use crate::config::template::{Template, VarRef};
use crate::vocab::{ErrorType, StepError};

/// Agent-wide things a run needs; built once, shared by every run.
///
/// The shared resources kinds declare in [`Needs`](crate::steps::Needs)
/// (resolver, TLS client configs, browser) are built by [`RunEnv::prepare`]
/// for what the loaded journeys declare, else on first use (a reload may
/// bring a kind the first load had not), and each at most once. The callback
/// listener is started by the daemon (it owns the address and the shutdown),
/// through [`RunEnv::callbacks_or_start`].
pub struct RunEnv {
    pub agent_id: String,
    pub location: String,
    pub credentials_dir: Option<PathBuf>,
    /// The agent-wide `proxy:` for HTTP steps (else the environment's).
    pub proxy: Option<crate::config::agent::ProxySpec>,
    pub(crate) resolver: OnceLock<hickory_resolver::TokioResolver>,
    pub(crate) tls: OnceLock<crate::steps::tls::TlsConfigs>,
    pub tracer: opentelemetry_sdk::trace::Tracer,
    pub user_agent: String,
    pub default_step_timeout: Duration,
    /// The inbound callback listener, once a loaded journey needed one (the
    /// daemon starts it from `Needs`; it binds a port, so never on speculation).
    pub(crate) callbacks: OnceLock<Arc<crate::steps::callback::CallbackHub>>,
    /// Values for `${env.NAME}` that take precedence over the process environment (the demo sets its URLs here).
    pub env_overrides: HashMap<String, String>,
    /// Runs chromedriver for browser steps; the manager is made for the first
    /// browser step, chromedriver is started by the first session.
    pub(crate) browser: OnceLock<Arc<crate::browser::BrowserManager>>,
    pub(crate) browser_config: (crate::config::agent::BrowserConfig, Option<PathBuf>),
    /// Where each HTTP exchange goes, redacted, when someone reads them (`once --verbose`).
    pub exchange_log: Option<ExchangeSink>,
}

/// The value in `cell`, made by `make` the first time.
fn once<T>(cell: &OnceLock<T>, make: impl FnOnce() -> Result<T, String>) -> Result<&T, String> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

impl RunEnv {
    /// What every run shares, from the agent config; the resources kinds need
    /// are built later, by [`RunEnv::prepare`] or on first use.
    pub fn build(
        agent: &crate::config::agent::AgentConfig,
        tracer: opentelemetry_sdk::trace::Tracer,
        callbacks: Option<Arc<crate::steps::callback::CallbackHub>>,
        env_overrides: HashMap<String, String>,
    ) -> RunEnv {
        RunEnv {
            agent_id: agent.agent_id(),
            location: agent.location.clone(),
            credentials_dir: agent.credentials_dir(),
            proxy: agent.proxy.clone(),
            resolver: OnceLock::new(),
            tls: OnceLock::new(),
            tracer,
            user_agent: crate::user_agent(),
            default_step_timeout: agent.step_timeout.0,
            callbacks: callbacks.map(OnceLock::from).unwrap_or_default(),
            env_overrides,
            browser: OnceLock::new(),
            browser_config: (agent.browser.clone(), agent.artifacts_dir.clone()),
            exchange_log: None,
        }
    }

    /// Builds now what `needs` declares (the sum over the loaded journeys),
    /// so that a broken resolver configuration stops the agent at startup
    /// rather than failing every run. Resources already built are kept.
    pub fn prepare(&self, needs: crate::steps::Needs) -> Result<(), String> {
        if needs.resolver {
            self.try_resolver()?;
        }
        if needs.tls {
            self.try_tls()?;
        }
        if needs.browser {
            self.browser();
        }
        Ok(())
    }

    fn try_resolver(&self) -> Result<&hickory_resolver::TokioResolver, String> {
        once(&self.resolver, || crate::steps::dns::uncached_resolver(None))
    }

    fn try_tls(&self) -> Result<&crate::steps::tls::TlsConfigs, String> {
        once(&self.tls, || crate::steps::tls::TlsConfigs::new().map_err(|e| format!("TLS setup: {e}")))
    }

    /// The system resolver (`/etc/resolv.conf`), shared by every run.
    pub fn resolver(&self) -> Result<&hickory_resolver::TokioResolver, StepError> {
        self.try_resolver().map_err(|e| StepError::new(ErrorType::Config, e))
    }

    /// Replaces the system resolver (tests point it at their own DNS server).
    pub fn set_resolver(&mut self, r: hickory_resolver::TokioResolver) {
        self.resolver = OnceLock::from(r);
    }

    /// The TLS client configurations (system roots loaded once).
    pub fn tls(&self) -> Result<&crate::steps::tls::TlsConfigs, StepError> {
        self.try_tls().map_err(|e| StepError::new(ErrorType::Config, e))
    }

    /// The callback listener, if one was started.
    pub fn callbacks(&self) -> Option<&Arc<crate::steps::callback::CallbackHub>> {
        self.callbacks.get()
    }

    /// The callback listener, started by `start` if there is none yet (at most one is kept).
    pub fn callbacks_or_start(
        &self,
        start: impl FnOnce() -> Result<Arc<crate::steps::callback::CallbackHub>, String>,
    ) -> Result<&Arc<crate::steps::callback::CallbackHub>, String> {
        once(&self.callbacks, start)
    }

    /// The browser manager, made on first use (it starts no process by itself).
    pub fn browser(&self) -> &Arc<crate::browser::BrowserManager> {
        self.browser.get_or_init(|| crate::browser::BrowserManager::new(&self.browser_config.0, self.browser_config.1.clone()))
    }

    /// The browser manager if a journey needed one (the status page serves its artifacts).
    pub fn browser_if_made(&self) -> Option<Arc<crate::browser::BrowserManager>> {
        self.browser.get().cloned()
    }

    /// Releases what was built: stops chromedriver and the browsers, if any.
    pub async fn shutdown(&self) {
        if let Some(b) = self.browser.get() {
            b.shutdown().await;
        }
    }
}

/// Receives one HTTP exchange as text, already redacted.
pub type ExchangeSink = Arc<dyn Fn(String) + Send + Sync>;

/// How much of each body `once --verbose` shows.
const BODY_START: usize = 512;

/// Headers whose values are credentials whether or not they were marked secret.
fn credential_header(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"].iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn push_headers<'a>(out: &mut String, mark: &str, headers: impl Iterator<Item = (&'a str, String)>) {
    for (k, v) in headers {
        let v = if credential_header(k) { REDACTED.to_string() } else { v };
        out.push_str(&format!("{mark} {k}: {v}\n"));
    }
}

fn push_body_start(out: &mut String, mark: &str, body: &[u8]) {
    if body.is_empty() {
        return;
    }
    let shown = &body[..body.len().min(BODY_START)];
    let text: String = String::from_utf8_lossy(shown).chars().map(|c| if c.is_control() && c != '\n' { '.' } else { c }).collect();
    for line in text.lines() {
        out.push_str(&format!("{mark} | {line}\n"));
    }
    if body.len() > shown.len() {
        out.push_str(&format!("{mark} | … ({} bytes in all, first {BODY_START} shown)\n", body.len()));
    }
}

use crate::redact::Redactor;
pub use crate::redact::REDACTED;

/// Per-run state a step kind keeps from one of its steps to the next
/// (open connections, a browser session). One value per type and run.
pub trait RunStateSlot: Any + Send + Sync {
    /// Releases what the state holds; called once when the run ends, after `finally`.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The kinds' per-run states, keyed by type, created on first use.
#[derive(Default)]
pub struct RunState {
    slots: Vec<(TypeId, Box<dyn RunStateSlot>)>,
}

impl RunState {
    /// The run's `T`, created empty on first use.
    pub fn get_mut<T: RunStateSlot + Default>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.slots.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.slots.push((id, Box::new(T::default())));
                self.slots.len() - 1
            }
        };
        let slot: &mut dyn Any = self.slots[i].1.as_mut();
        slot.downcast_mut::<T>()
            .expect("slots are keyed by their type")
    }

    /// The run's `T`, if a step created it.
    pub fn get<T: RunStateSlot>(&self) -> Option<&T> {
        let (_, slot) = self.slots.iter().find(|(t, _)| *t == TypeId::of::<T>())?;
        let slot: &dyn Any = slot.as_ref();
        slot.downcast_ref::<T>()
    }

    /// Closes every state, in the order they were created.
    pub async fn close_all(&mut self) {
        for (_, s) in &mut self.slots {
            s.close().await;
        }
        self.slots.clear();
    }
}

/// Why the step in progress will be cut off at its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum DeadlineReason {
    #[default]
    Unset,
    /// The step's own limit ("timed out after 300ms").
    StepLimit(Duration),
    /// The run's timeout comes first ("journey timeout of 1.00s reached").
    JourneyTimeout(Duration),
}

/// State carried from step to step within one run.
pub struct RunContext {
    pub env: Arc<RunEnv>,
    pub run_id: String,
    /// What the run's `callback` steps wait for by default (`${run.callback_token}`); never sent as the run id.
    pub callback_token: String,
    pub journey: String,
    vars: HashMap<String, String>,
    secrets: Redactor,
    pub cookies: Arc<reqwest::cookie::Jar>,
    /// Each stateful kind's per-run state (connections, a browser session), closed at the end of the run.
    pub state: RunState,
    /// Context of the step span in progress, for `traceparent` propagation.
    pub trace_cx: OtelContext,
    /// Start of each step by name, for "time since step X".
    pub step_starts: HashMap<String, Instant>,
    /// What the step in progress is waiting for; named in timeout messages.
    pub waiting_for: &'static str,
    /// When the step in progress will be cut off (step timeout or the run's deadline),
    /// so waiting steps can give up just before with a full message.
    pub step_deadline: Option<Instant>,
    /// What reaching `step_deadline` means; set by the runner with the deadline,
    /// put in words by [`Self::deadline_message`] only when a step is cut off.
    pub step_deadline_reason: DeadlineReason,
    pub started: SystemTime,
}

impl RunEnv {
    /// An environment for unit tests: no callback listener, a resolver that
    /// asks 127.0.0.1:53 (tests replace it with their own), spans to nowhere.
    pub fn new_test() -> RunEnv {
        use opentelemetry::trace::TracerProvider;
        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("test");
        let mut env = RunEnv::build(&Default::default(), tracer, None, HashMap::new());
        env.agent_id = "test".into();
        env.location = "test".into();
        env.default_step_timeout = Duration::from_secs(10);
        env.set_resolver(crate::steps::dns::uncached_resolver(Some(([127, 0, 0, 1], 53).into())).expect("loopback resolver"));
        env
    }
}

impl RunContext {
    /// A fresh run of journey `test` in [`RunEnv::new_test`].
    pub fn new_test() -> RunContext {
        RunContext::new(Arc::new(RunEnv::new_test()), "test")
    }

    pub fn new(env: Arc<RunEnv>, journey: &str) -> RunContext {
        RunContext {
            env,
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            callback_token: uuid::Uuid::new_v4().simple().to_string(),
            journey: journey.to_string(),
            vars: HashMap::new(),
            secrets: Redactor::new(),
            cookies: Arc::new(reqwest::cookie::Jar::default()),
            state: RunState::default(),
            trace_cx: OtelContext::new(),
            step_starts: HashMap::new(),
            waiting_for: "",
            step_deadline: None,
            step_deadline_reason: DeadlineReason::Unset,
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

    /// Marks `value` secret for the rest of the run (values under 4 bytes are ignored:
    /// they would redact innocent text everywhere; they are still never logged on purpose).
    pub fn add_secret(&mut self, value: &str) {
        self.secrets.add(value);
    }

    /// The request half of an HTTP exchange for the exchange log; `None` when
    /// nobody reads it. Call just before sending, then [`Self::log_exchange`].
    pub fn exchange_request<B>(&self, req: &http::Request<B>, body: &[u8]) -> Option<String> {
        self.env.exchange_log.as_ref()?;
        let mut out = format!("> {} {}\n", req.method(), req.uri());
        push_headers(&mut out, ">", req.headers().iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.as_bytes()).into_owned())));
        push_body_start(&mut out, ">", body);
        Some(out)
    }

    /// Completes an exchange begun with [`Self::exchange_request`] and hands
    /// it, redacted with this run's secrets, to the exchange log.
    pub fn log_exchange(&self, request: Option<String>, status: u16, headers: &[(String, String)], body: &[u8]) {
        let (Some(mut out), Some(sink)) = (request, self.env.exchange_log.as_ref()) else { return };
        out.push_str(&format!("< {status}\n"));
        push_headers(&mut out, "<", headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
        push_body_start(&mut out, "<", body);
        sink(self.redact(&out));
    }

    /// Replaces every secret this run has touched, in every encoding it may
    /// have taken (see [`crate::redact`]), with `[REDACTED]`.
    /// The message for a step cut off at its deadline, naming what it was waiting for;
    /// the same words whether the runner or the step itself gives up.
    pub fn deadline_message(&self) -> String {
        let during = if self.waiting_for.is_empty() { String::new() } else { format!(" while waiting for {}", self.waiting_for) };
        match self.step_deadline_reason {
            DeadlineReason::Unset => format!("timed out{during}"),
            DeadlineReason::StepLimit(d) => format!("timed out after {}{during}", crate::vocab::fmt_dur(d)),
            DeadlineReason::JourneyTimeout(d) => format!("journey timeout of {} reached{during}", crate::vocab::fmt_dur(d)),
        }
    }

    pub fn redact(&self, text: &str) -> String {
        self.secrets.redact(text)
    }

    /// The first `max` characters of `text`, redacted before it is cut.
    pub fn excerpt(&self, text: &str, max: usize) -> String {
        self.secrets.excerpt(text, max)
    }

    /// The run's secrets, for code that forms messages away from the context.
    pub fn redactor(&self) -> &Redactor {
        &self.secrets
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
            VarRef::CallbackToken => {
                // Whoever sees it could forge the run's callback: it never appears in messages.
                secrets.push(self.callback_token.clone());
                self.callback_token.clone()
            }
            VarRef::Uuid => uuid::Uuid::new_v4().to_string(),
            VarRef::Now => humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            VarRef::NowUnix => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_string(),
            VarRef::Env(n) => self
                .env
                .env_overrides
                .get(n)
                .cloned()
                .map(Ok)
                .unwrap_or_else(|| std::env::var(n))
                .map_err(|_| {
                    StepError::new(
                        ErrorType::Config,
                        format!("environment variable `{n}` is not set in the agent's environment"),
                    )
                })?,
            VarRef::Secret(n) => {
                let v = read_secret(self.env.credentials_dir.as_deref(), n)?;
                secrets.push(v.clone());
                v
            }
            VarRef::Var(n) => self.vars.get(n).cloned().ok_or_else(|| {
                // Validation rejects undefined names, so this means an earlier step failed or was skipped.
                let mut e = StepError::new(
                    ErrorType::Config,
                    format!("variable `{n}` has no value in this run"),
                );
                e.unset_variable = Some(n.clone());
                e
            })?,
        })
    }
}

pub(crate) fn read_secret(dir: Option<&std::path::Path>, name: &str) -> Result<String, StepError> {
    let dir = dir
        .ok_or_else(|| StepError::new(ErrorType::Config, format!("secret `{name}` is used but no credentials directory is set (set `credentials_dir`, or run under systemd with LoadCredential=)")))?;
    let path = dir.join(name);
    let raw = std::fs::read_to_string(&path).map_err(|e| {
        StepError::new(
            ErrorType::Config,
            format!("cannot read secret `{name}` from {}: {e}", path.display()),
        )
    })?;
    Ok(raw.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CLOSED: AtomicUsize = AtomicUsize::new(0);

    #[derive(Default)]
    struct Counter(u32);
    impl RunStateSlot for Counter {
        fn close(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async {
                CLOSED.fetch_add(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn per_run_state_is_created_on_use_and_closed_once() {
        let mut ctx = RunContext::new_test();
        assert!(ctx.state.get::<Counter>().is_none());
        ctx.state.get_mut::<Counter>().0 += 1;
        ctx.state.get_mut::<Counter>().0 += 1;
        assert_eq!(ctx.state.get::<Counter>().map(|c| c.0), Some(2));
        let before = CLOSED.load(Ordering::SeqCst);
        ctx.state.close_all().await;
        assert_eq!(CLOSED.load(Ordering::SeqCst), before + 1);
        assert!(ctx.state.get::<Counter>().is_none());
    }

    #[test]
    fn deadline_messages_name_the_limit_and_what_the_step_waited_for() {
        let mut ctx = RunContext::new_test();
        assert_eq!(ctx.deadline_message(), "timed out");
        ctx.step_deadline_reason = DeadlineReason::StepLimit(Duration::from_millis(300));
        ctx.waiting_for = "the response body";
        assert_eq!(ctx.deadline_message(), "timed out after 300ms while waiting for the response body");
        ctx.step_deadline_reason = DeadlineReason::JourneyTimeout(Duration::from_secs(1));
        ctx.waiting_for = "";
        assert_eq!(ctx.deadline_message(), format!("journey timeout of {} reached", crate::vocab::fmt_dur(Duration::from_secs(1))));
    }

    #[tokio::test]
    async fn secrets_are_redacted_and_short_values_are_not() {
        let mut ctx = RunContext::new_test();
        ctx.set_var("token", "s3cr3t-value".into(), true);
        ctx.set_var("pin", "12".into(), true);
        assert_eq!(ctx.var("token"), Some("s3cr3t-value"));
        assert_eq!(
            ctx.redact("got s3cr3t-value and 12"),
            format!("got {REDACTED} and 12")
        );
    }

    #[test]
    fn exchange_log_cuts_long_bodies_and_hides_credential_headers() {
        let mut out = String::new();
        push_body_start(&mut out, "<", "x".repeat(BODY_START + 10).as_bytes());
        assert!(out.ends_with(&format!("< | … ({} bytes in all, first {BODY_START} shown)\n", BODY_START + 10)), "{out}");
        let mut out = String::new();
        push_headers(&mut out, ">", [("Authorization", "Bearer abc".to_string()), ("accept", "*/*".to_string())].into_iter());
        assert_eq!(out, "> Authorization: [REDACTED]\n> accept: */*\n");
    }
}
