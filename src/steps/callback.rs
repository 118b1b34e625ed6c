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
use crate::listener::Limits;
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
    /// Token the inbound request must carry (header `X-Callback-Token`, query
    /// `token`, or the last path segment). Default: the run's own
    /// `${run.callback_token}`. Released when the step ends.
    pub token: Option<String>,
    /// Report the time since this earlier step started.
    pub since_step: Option<String>,
    /// Accept only requests signed with this key (`X-Hub-Signature-256: sha256=<hex HMAC of the body>`).
    pub hmac: Option<HmacSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    /// Credential file (in the credentials directory) holding the shared key.
    pub secret: String,
    /// Header carrying the signature; default `X-Hub-Signature-256`.
    #[serde(default = "default_signature_header")]
    pub header: String,
}

fn default_signature_header() -> String {
    "X-Hub-Signature-256".into()
}

/// Tokens awaited at once, at most; beyond that the oldest registration is dropped.
const MAX_PENDING: usize = 4096;
/// Requests kept per token, at most.
const MAX_PER_TOKEN: usize = 8;
/// Header naming the token. Not `X-Synthetic-Run`: that carries the run id, which every target sees.
pub const TOKEN_HEADER: &str = "x-callback-token";

#[derive(Debug, Clone)]
pub struct Inbound {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Inbound {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
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
    pub bad_signature: AtomicU64,
}

/// Told the result of every inbound request (`accepted`, `no_token`, `unknown_token`, `too_large`, `bad_signature`).
pub type OnRequest = Arc<dyn Fn(&'static str) + Send + Sync>;

pub struct CallbackHub {
    on_request: Option<OnRequest>,
    /// Indexed by token: a request is matched by one map lookup per candidate, never by scanning.
    slots: Mutex<HashMap<String, Slot>>,
    notify: Notify,
    pub counters: CallbackCounters,
    pub addr: SocketAddr,
}

impl CallbackHub {
    /// Binds `addr` and serves until `shutdown` fires, within [`Limits::CALLBACK`].
    pub async fn start(addr: SocketAddr, shutdown: tokio_util::sync::CancellationToken, on_request: Option<OnRequest>) -> std::io::Result<Arc<CallbackHub>> {
        let listener = crate::listener::bind(addr)?;
        let hub = Arc::new(CallbackHub { on_request, slots: Mutex::new(HashMap::new()), notify: Notify::new(), counters: CallbackCounters::default(), addr: listener.local_addr()? });
        let limits = Limits::CALLBACK;
        let app = axum::Router::new().fallback(receive).layer(axum::extract::DefaultBodyLimit::max(limits.max_body)).with_state(hub.clone());
        let counted = Arc::downgrade(&hub);
        let on_reject: crate::listener::OnReject = Arc::new(move |status| {
            if let (Some(hub), StatusCode::PAYLOAD_TOO_LARGE) = (counted.upgrade(), status) {
                hub.counters.too_large.fetch_add(1, Ordering::Relaxed);
                hub.count("too_large");
            }
        });
        // A request whose token no run waits for is answered before its body is read.
        let gate = Arc::downgrade(&hub);
        let admit: crate::listener::Admit = Arc::new(move |req| {
            let hub = gate.upgrade()?;
            let candidates = token_candidates(req.uri(), req.headers());
            let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
            hub.refusal(&candidates).map(|code| axum::response::IntoResponse::into_response((code, NO_RUN_WAITING)))
        });
        crate::listener::spawn_with(listener, app, limits, shutdown, Some(on_reject), Some(admit));
        Ok(hub)
    }

    fn count(&self, result: &'static str) {
        if let Some(f) = &self.on_request {
            f(result);
        }
    }

    /// Starts accepting requests for `token`.
    pub fn register(&self, token: &str) {
        if token.is_empty() {
            return;
        }
        let mut slots = self.slots.lock().expect("callback lock");
        if slots.len() >= MAX_PENDING && !slots.contains_key(token) {
            if let Some(oldest) = slots.iter().min_by_key(|(_, s)| s.registered).map(|(k, _)| k.clone()) {
                slots.remove(&oldest);
            }
        }
        slots.entry(token.to_string()).or_default().registered = Some(Instant::now());
    }

    /// Stops accepting requests for `token`: later ones (replays, forgeries between runs) get 404.
    pub fn unregister(&self, token: &str) {
        self.slots.lock().expect("callback lock").remove(token);
    }

    /// Whether requests for `token` are accepted now.
    pub fn is_registered(&self, token: &str) -> bool {
        self.slots.lock().expect("callback lock").contains_key(token)
    }

    /// The first request for `token` that `accept` takes; the ones it refuses are dropped and counted.
    fn take(&self, token: &str, accept: &(dyn Fn(&Inbound) -> bool + Sync)) -> Option<Inbound> {
        let mut slots = self.slots.lock().expect("callback lock");
        let slot = slots.get_mut(token)?;
        while !slot.arrived.is_empty() {
            let r = slot.arrived.remove(0);
            if accept(&r) {
                return Some(r);
            }
            self.counters.bad_signature.fetch_add(1, Ordering::Relaxed);
            self.count("bad_signature");
        }
        None
    }

    /// Waits until a request for `token` arrives, or `within` passes.
    pub async fn wait(&self, token: &str, within: Duration) -> Option<Inbound> {
        self.wait_for(token, within, &|_| true).await
    }

    /// Waits until a request for `token` that `accept` takes arrives, or `within` passes.
    pub async fn wait_for(&self, token: &str, within: Duration, accept: &(dyn Fn(&Inbound) -> bool + Sync)) -> Option<Inbound> {
        let deadline = tokio::time::Instant::now().checked_add(within).unwrap_or_else(far_future);
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.take(token, accept) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.take(token, accept);
            }
        }
    }

    /// Counts and refuses a request none of whose `candidates` a run waits for.
    fn refusal(&self, candidates: &[&str]) -> Option<StatusCode> {
        let slots = self.slots.lock().expect("callback lock");
        if candidates.iter().any(|t| !t.is_empty() && slots.contains_key(*t)) {
            return None;
        }
        drop(slots);
        Some(self.refuse(candidates))
    }

    fn refuse(&self, candidates: &[&str]) -> StatusCode {
        let (counter, result) = if candidates.is_empty() { (&self.counters.no_token, "no_token") } else { (&self.counters.unknown_token, "unknown_token") };
        counter.fetch_add(1, Ordering::Relaxed);
        self.count(result);
        StatusCode::NOT_FOUND
    }

    fn deliver(&self, candidates: &[&str], inbound: impl FnOnce() -> Inbound) -> Result<(), StatusCode> {
        let mut slots = self.slots.lock().expect("callback lock");
        let Some(token) = candidates.iter().find(|t| !t.is_empty() && slots.contains_key(**t)) else {
            drop(slots);
            // Released since its head was admitted.
            return Err(self.refuse(candidates));
        };
        let slot = slots.get_mut(*token).expect("found above");
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

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

const NO_RUN_WAITING: &str = "no run is waiting for this token\n";

/// Where a callback's token may be: the `X-Callback-Token` header, a `token`
/// query parameter, or the last path segment (never the body).
fn token_candidates(uri: &Uri, headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        out.push(v.to_string());
    }
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(uri) {
        if let Some(t) = q.get("token") {
            out.push(t.clone());
        }
    }
    if let Some(last) = uri.path().rsplit('/').next().filter(|s| !s.is_empty()) {
        out.push(last.to_string());
    }
    out
}

async fn receive(
    State(hub): State<Arc<CallbackHub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> (StatusCode, &'static str) {
    let at = Instant::now();
    let Ok(body) = body else {
        hub.counters.too_large.fetch_add(1, Ordering::Relaxed);
        hub.count("too_large");
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    };
    let candidates = token_candidates(&uri, &headers);
    let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let make = || Inbound {
        at,
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
        body: body.clone(),
    };
    match hub.deliver(&candidates, make) {
        Ok(()) => (StatusCode::ACCEPTED, "accepted\n"),
        Err(code) => (code, NO_RUN_WAITING),
    }
}

/// Checks `sha256=<hex>` against the HMAC-SHA256 of `body` under `key`, in constant time.
pub fn signature_matches(key: &[u8], body: &[u8], header_value: Option<&str>) -> bool {
    let Some(hex) = header_value.and_then(|v| v.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::verify(&key, body, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Unregisters a step's own token when the step ends, however it ends.
struct Release<'a>(&'a CallbackHub, Option<String>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(t) = &self.1 {
            self.0.unregister(t);
        }
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
    hmac: Option<HmacSpec>,
}

impl CallbackStep {
    pub fn compile(spec: &CallbackSpec, c: &mut Checker) -> Option<CallbackStep> {
        c.check_wait("callback.within", spec.within.0);
        if spec.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            c.error("callback.token", "is empty: expected a token the inbound request must carry, or no `token` to use the run's own `${run.callback_token}`");
        }
        if let Some(h) = &spec.hmac {
            if h.secret.trim().is_empty() || h.secret.contains('/') {
                c.error("callback.hmac.secret", "expected the name of a file in the credentials directory");
            }
            if axum::http::HeaderName::from_bytes(h.header.as_bytes()).is_err() {
                c.error("callback.hmac.header", "expected an HTTP header name, e.g. X-Hub-Signature-256");
            }
        }
        Some(CallbackStep { within: spec.within.0, token: spec.token.as_deref().map(|t| c.template("callback.token", t)), since_step: spec.since_step.clone(), hmac: spec.hmac.clone() })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let hub = ctx
            .env
            .callbacks()
            .cloned()
            .ok_or_else(|| StepError::new(ErrorType::Config, "this journey has a `callback` step but the agent has no callback listener (set `callback.listen` in the agent config)"))?;
        let token = match &self.token {
            Some(t) => ctx.render(t)?,
            None => ctx.callback_token.clone(),
        };
        if token.is_empty() {
            return Err(StepError::new(ErrorType::Config, "`callback.token` rendered empty: a token must be set, or the step would accept any request"));
        }
        let key = match &self.hmac {
            Some(h) => Some(crate::steps::context::read_secret(ctx.env.credentials_dir.as_deref(), &h.secret)?),
            None => None,
        };
        // The run's own token is registered by the runner for the whole run; a custom one only while this step waits.
        let own = token != ctx.callback_token;
        if own {
            hub.register(&token);
        }
        let _release = Release(&hub, own.then(|| token.clone()));
        let started = Instant::now();
        let since = match &self.since_step {
            Some(name) => *ctx.step_starts.get(name).ok_or_else(|| StepError::new(ErrorType::Config, format!("`since_step: {name}` names no earlier step of this run")))?,
            None => started,
        };
        ctx.waiting_for = "the inbound callback";
        let header = self.hmac.as_ref().map(|h| h.header.as_str()).unwrap_or_default();
        let accept = |r: &Inbound| key.as_deref().is_none_or(|k| signature_matches(k.as_bytes(), &r.body, r.header(header)));
        let got = hub.wait_for(&token, self.within, &accept).await;
        let Some(inbound) = got else {
            let signed = if self.hmac.is_some() { format!(" with a valid `{header}` signature") } else { String::new() };
            return Err(StepError::new(ErrorType::Callback, format!("expected an inbound request carrying the run token{signed} on {} within {}, none arrived", hub.addr, fmt_dur(self.within))));
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
        Some(self.within.saturating_add(Duration::from_secs(1)))
    }
    fn configured_wait(&self) -> Option<Duration> {
        Some(self.within)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{signature_matches, CallbackHub};
    use crate::steps::attempt;
    use crate::steps::compile::{test_step, test_step_errors};
    use crate::steps::context::{RunContext, RunEnv};
    use crate::vocab::ErrorType;

    async fn hub() -> (Arc<CallbackHub>, tokio_util::sync::CancellationToken) {
        let stop = tokio_util::sync::CancellationToken::new();
        (CallbackHub::start(([127, 0, 0, 1], 0).into(), stop.clone(), None).await.unwrap(), stop)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn an_upload_no_run_waits_for_is_refused_before_its_body_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (hub, stop) = hub().await;
        let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        // The head announces 200 KB that never come: the answer must not wait for them.
        s.write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nX-Callback-Token: nobody\r\nContent-Length: 200000\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await.expect("answered and closed before the body").unwrap();
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 404"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        assert!(text.ends_with("no run is waiting for this token\n"), "{text}");
        assert_eq!(hub.counters.unknown_token.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(hub.counters.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
        stop.cancel();
    }

    fn hmac_hex(key: &[u8], body: &[u8]) -> String {
        let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key), body);
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tokio::test]
    async fn receives_the_request_carrying_the_token() {
        let (hub, stop) = hub().await;
        // Registered first, like the runner does before the first step, so the early request is kept.
        hub.register("tok-1");
        let resp = client().post(format!("http://{}/hook", hub.addr)).header("X-Callback-Token", "tok-1").body("lead created").send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let env = RunEnv { callbacks: hub.clone().into(), ..RunEnv::new_test() };
        let mut ctx = RunContext::new(Arc::new(env), "test");
        let step = test_step("name: hook\ncallback: {within: 2s, token: tok-1}\nassert: {body_contains: lead}\n");
        let (obs, _) = attempt(&mut ctx, &step).await.expect("callback arrived");
        assert_eq!(obs.phases[0].name, "callback");
        stop.cancel();
    }

    #[tokio::test]
    async fn the_run_token_is_not_the_run_id_and_is_released_when_the_run_ends() {
        let (hub, stop) = hub().await;
        let env = Arc::new(RunEnv { callbacks: hub.clone().into(), ..RunEnv::new_test() });
        let ctx = RunContext::new(env, "test");
        assert_ne!(ctx.callback_token, ctx.run_id);
        hub.register(&ctx.callback_token);
        let url = format!("http://{}/hooks/crm", hub.addr);
        // The run id is what every target sees in X-Synthetic-Run: it must not open the door.
        for forged in [("X-Callback-Token", ctx.run_id.as_str()), ("X-Synthetic-Run", ctx.run_id.as_str()), ("X-Callback-Token", "")] {
            let r = client().post(&url).header(forged.0, forged.1).body("{}").send().await.unwrap();
            assert_eq!(r.status().as_u16(), 404, "{forged:?}");
        }
        // A body quoting the token is not matched: lookup is by header, query or path only.
        let r = client().post(&url).body(format!("{{\"token\":\"{}\"}}", ctx.callback_token)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let r = client().post(format!("{url}?token={}", ctx.callback_token)).body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        hub.unregister(&ctx.callback_token);
        // Replayed after the run: refused.
        let r = client().post(format!("{url}?token={}", ctx.callback_token)).body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_custom_token_is_released_when_its_step_ends_so_forgeries_between_runs_fail() {
        let (hub, stop) = hub().await;
        let env = Arc::new(RunEnv { callbacks: hub.clone().into(), ..RunEnv::new_test() });
        let step = test_step("name: hook\ncallback: {within: 300ms, token: fixed-token}\n");
        let e = attempt(&mut RunContext::new(env.clone(), "test"), &step).await.expect_err("nothing sent");
        assert_eq!(e.error_type, ErrorType::Callback);
        assert!(!hub.is_registered("fixed-token"), "custom token still registered after its step");
        // A request sent between runs is refused, so it cannot satisfy the next run.
        let r = client().post(format!("http://{}/x", hub.addr)).header("X-Callback-Token", "fixed-token").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let e = attempt(&mut RunContext::new(env, "test"), &step).await.expect_err("the forged request was not kept");
        assert_eq!(e.error_type, ErrorType::Callback);
        stop.cancel();
    }

    #[test]
    fn an_empty_token_is_a_check_error() {
        for yaml in ["name: h\ncallback: {within: 1s, token: \"\"}\n", "name: h\ncallback: {within: 1s, token: \"  \"}\n"] {
            let errs = test_step_errors(yaml);
            assert!(errs.iter().any(|e| e.contains("`callback.token`: is empty")), "{errs:?}");
        }
    }

    #[tokio::test]
    async fn with_hmac_only_correctly_signed_requests_count() {
        let (hub, stop) = hub().await;
        let dir = std::env::temp_dir().join(format!("vantage-hmac-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook-key"), "k3y-material\n").unwrap();
        let env = Arc::new(RunEnv { callbacks: hub.clone().into(), credentials_dir: Some(dir.clone()), ..RunEnv::new_test() });
        let step = test_step("name: hook\ncallback: {within: 2s, token: signed-1, hmac: {secret: hook-key}}\nassert: {body_contains: genuine}\n");
        let mut ctx = RunContext::new(env, "test");
        let url = format!("http://{}/hook", hub.addr);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let c = client();
            let send = |body: &'static str, sig: Option<String>| {
                let mut r = c.post(&url).header("X-Callback-Token", "signed-1").body(body);
                if let Some(s) = sig {
                    r = r.header("X-Hub-Signature-256", s);
                }
                r.send()
            };
            // Unsigned, signed with another key, a valid signature over other bytes: all ignored.
            send("forged 1", None).await.unwrap();
            send("forged 2", Some(format!("sha256={}", hmac_hex(b"wrong key", b"forged 2")))).await.unwrap();
            send("forged 3", Some(format!("sha256={}", hmac_hex(b"k3y-material", b"genuine")))).await.unwrap();
            send("genuine", Some(format!("sha256={}", hmac_hex(b"k3y-material", b"genuine")))).await.unwrap();
        });
        let (obs, _) = attempt(&mut ctx, &step).await.expect("the signed request is accepted");
        assert_eq!(obs.body_text(), "genuine");
        sender.await.unwrap();
        assert_eq!(hub.counters.bad_signature.load(std::sync::atomic::Ordering::Relaxed), 3);
        let _ = std::fs::remove_dir_all(dir);
        stop.cancel();
    }

    #[test]
    fn signatures_are_checked_in_full() {
        let good = format!("sha256={}", hmac_hex(b"k", b"body"));
        assert!(signature_matches(b"k", b"body", Some(&good)));
        assert!(!signature_matches(b"k", b"body", Some(&good[..good.len() - 2])));
        assert!(!signature_matches(b"k", b"body", Some("sha256=")));
        assert!(!signature_matches(b"k", b"body", Some("sha256=zz")));
        assert!(!signature_matches(b"k", b"body", Some(&good.replace("sha256=", "sha1="))));
        assert!(!signature_matches(b"k", b"body", None));
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
