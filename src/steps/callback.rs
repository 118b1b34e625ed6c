//! `callback` step: waits for an inbound HTTP request (a webhook from the
//! system under test) that carries the run's token.
//!
//! The [`CallbackHub`] listens on the agent's callback address. Runs register
//! their token when they start, so a webhook that arrives before its step
//! begins is kept, not lost. Requests with no token or an unknown one are
//! rejected and counted; they never reach a run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use tokio::sync::Notify;

use crate::config::model::Dur;
use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{fmt_dur, ErrorType, Observation, Phase, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackSpec {
    /// Wait at most this long for the inbound request.
    pub within: Dur,
    /// Token the inbound request must carry (header `X-Synthetic-Run`,
    /// query `token`, or anywhere in the body). Default: the run id.
    pub token: Option<String>,
    /// Report the time since this earlier step started.
    pub since_step: Option<String>,
}

const MAX_BODY: usize = 256 * 1024;
/// Tokens awaited at once, at most; beyond that the oldest registration is dropped.
const MAX_PENDING: usize = 4096;
/// Requests kept per token, at most.
const MAX_PER_TOKEN: usize = 8;

#[derive(Debug, Clone)]
pub struct Inbound {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Default)]
struct Slot {
    arrived: Vec<Inbound>,
    registered: Option<Instant>,
}

/// Counters of inbound requests, by result.
#[derive(Default, Debug)]
pub struct CallbackCounters {
    pub accepted: AtomicU64,
    pub no_token: AtomicU64,
    pub unknown_token: AtomicU64,
    pub too_large: AtomicU64,
}

/// Told the result of every inbound request (`accepted`, `no_token`, `unknown_token`, `too_large`).
pub type OnRequest = Arc<dyn Fn(&'static str) + Send + Sync>;

pub struct CallbackHub {
    on_request: Option<OnRequest>,
    slots: Mutex<HashMap<String, Slot>>,
    notify: Notify,
    pub counters: CallbackCounters,
    pub addr: SocketAddr,
}

impl CallbackHub {
    /// Binds `addr` and serves until `shutdown` fires.
    pub async fn start(addr: SocketAddr, shutdown: tokio_util::sync::CancellationToken, on_request: Option<OnRequest>) -> std::io::Result<Arc<CallbackHub>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let hub = Arc::new(CallbackHub { on_request, slots: Mutex::new(HashMap::new()), notify: Notify::new(), counters: CallbackCounters::default(), addr: listener.local_addr()? });
        let app = axum::Router::new().fallback(receive).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)).with_state(hub.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        Ok(hub)
    }

    fn count(&self, result: &'static str) {
        if let Some(f) = &self.on_request {
            f(result);
        }
    }

    /// Starts accepting requests for `token`.
    pub fn register(&self, token: &str) {
        let mut slots = self.slots.lock().expect("callback lock");
        if slots.len() >= MAX_PENDING {
            if let Some(oldest) = slots.iter().min_by_key(|(_, s)| s.registered).map(|(k, _)| k.clone()) {
                slots.remove(&oldest);
            }
        }
        slots.entry(token.to_string()).or_default().registered = Some(Instant::now());
    }

    pub fn unregister(&self, token: &str) {
        self.slots.lock().expect("callback lock").remove(token);
    }

    fn take(&self, token: &str) -> Option<Inbound> {
        let mut slots = self.slots.lock().expect("callback lock");
        let slot = slots.get_mut(token)?;
        (!slot.arrived.is_empty()).then(|| slot.arrived.remove(0))
    }

    /// Waits until a request for `token` arrives, or `within` passes.
    pub async fn wait(&self, token: &str, within: Duration) -> Option<Inbound> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.take(token) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.take(token);
            }
        }
    }

    fn deliver(&self, candidates: &[String], body: &Bytes, inbound: impl FnOnce() -> Inbound) -> Result<(), StatusCode> {
        let mut slots = self.slots.lock().expect("callback lock");
        let token = candidates.iter().find(|t| slots.contains_key(t.as_str())).cloned().or_else(|| {
            // No token in header, path or query: look for a registered token in the body.
            let text = String::from_utf8_lossy(body);
            slots.keys().find(|t| text.contains(t.as_str())).cloned()
        });
        let Some(token) = token else {
            let (counter, result) = if candidates.is_empty() { (&self.counters.no_token, "no_token") } else { (&self.counters.unknown_token, "unknown_token") };
            counter.fetch_add(1, Ordering::Relaxed);
            self.count(result);
            return Err(StatusCode::NOT_FOUND);
        };
        let slot = slots.get_mut(&token).expect("found above");
        if slot.arrived.len() >= MAX_PER_TOKEN {
            slot.arrived.remove(0);
        }
        slot.arrived.push(inbound());
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        drop(slots);
        self.count("accepted");
        self.notify.notify_waiters();
        Ok(())
    }
}

async fn receive(
    State(hub): State<Arc<CallbackHub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> (StatusCode, &'static str) {
    let at = Instant::now();
    let Ok(body) = body else {
        hub.counters.too_large.fetch_add(1, Ordering::Relaxed);
        hub.count("too_large");
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    };
    let mut candidates = Vec::new();
    if let Some(v) = headers.get("x-synthetic-run").and_then(|v| v.to_str().ok()) {
        candidates.push(v.to_string());
    }
    if let Some(t) = query.get("token") {
        candidates.push(t.clone());
    }
    if let Some(last) = uri.path().rsplit('/').next().filter(|s| !s.is_empty()) {
        candidates.push(last.to_string());
    }
    let make = || Inbound {
        at,
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
        body: body.clone(),
    };
    match hub.deliver(&candidates, &body, make) {
        Ok(()) => (StatusCode::ACCEPTED, "accepted\n"),
        Err(code) => (code, "no run is waiting for this token\n"),
    }
}

/// What `callback` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo {
    name: "callback",
    span_kind: opentelemetry::trace::SpanKind::Internal,
    needs: Needs { callback_listener: true, ..Needs::NONE },
    phases: crate::vocab::PhaseRecording::None,
    default_status: None,
};

/// Builds a `callback` step from its config (the registry calls this).
pub fn compile(spec: &CallbackSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let _ = step;
    CallbackStep::compile(spec, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct CallbackStep {
    within: Duration,
    token: Option<Template>,
    since_step: Option<String>,
}

impl CallbackStep {
    pub fn compile(spec: &CallbackSpec, c: &mut Checker) -> Option<CallbackStep> {
        c.check_wait("callback.within", spec.within.0);
        Some(CallbackStep { within: spec.within.0, token: spec.token.as_deref().map(|t| c.template("callback.token", t)), since_step: spec.since_step.clone() })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let hub = ctx
            .env
            .callbacks
            .clone()
            .ok_or_else(|| StepError::new(ErrorType::Config, "this journey has a `callback` step but the agent has no callback listener (set `callback.listen` in the agent config)"))?;
        let token = match &self.token {
            Some(t) => ctx.render(t)?,
            None => ctx.run_id.clone(),
        };
        hub.register(&token);
        let started = Instant::now();
        let since = match &self.since_step {
            Some(name) => *ctx.step_starts.get(name).ok_or_else(|| StepError::new(ErrorType::Config, format!("`since_step: {name}` names no earlier step of this run")))?,
            None => started,
        };
        ctx.waiting_for = "the inbound callback";
        let got = hub.wait(&token, self.within).await;
        let Some(inbound) = got else {
            return Err(StepError::new(ErrorType::Callback, format!("expected an inbound request carrying the run token on {} within {}, none arrived", hub.addr, fmt_dur(self.within))));
        };
        let waited = inbound.at.saturating_duration_since(since);
        Ok(Observation {
            status: None,
            headers: inbound.headers,
            body: inbound.body,
            phases: vec![Phase { name: "callback", duration: waited }],
            attributes: vec![KeyValue::new("http.request.method", inbound.method), KeyValue::new("url.path", inbound.path)],
            reported_duration: Some(waited),
            ..Default::default()
        })
    }
}

impl StepKind for CallbackStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Callback, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
    fn default_timeout(&self) -> Option<Duration> {
        Some(self.within + Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::CallbackHub;
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::{RunContext, RunEnv};
    use crate::vocab::ErrorType;

    #[tokio::test]
    async fn receives_the_request_carrying_the_token() {
        let stop = tokio_util::sync::CancellationToken::new();
        let hub = CallbackHub::start(([127, 0, 0, 1], 0).into(), stop.clone(), None).await.unwrap();
        // Registered first, like the runner does before the first step, so the early request is kept.
        hub.register("tok-1");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client.post(format!("http://{}/hook", hub.addr)).header("X-Synthetic-Run", "tok-1").body("lead created").send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let env = RunEnv { callbacks: Some(hub.clone()), ..RunEnv::new_test() };
        let mut ctx = RunContext::new(Arc::new(env), "test");
        let step = test_step("name: hook\ncallback: {within: 2s, token: tok-1}\nassert: {body_contains: lead}\n");
        let (obs, _) = attempt(&mut ctx, &step).await.expect("callback arrived");
        assert_eq!(obs.phases[0].name, "callback");
        stop.cancel();
    }

    #[tokio::test]
    async fn without_a_listener_the_step_says_how_to_enable_it() {
        let step = test_step("name: hook\ncallback: {within: 1s}\n");
        assert!(step.kind.info().needs.callback_listener);
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("no listener");
        assert_eq!(e.error_type, ErrorType::Config);
        assert!(e.message.contains("callback.listen"), "{}", e.message);
    }
}
