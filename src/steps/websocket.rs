//! `websocket` step: connect, send, and receive a message that satisfies the
//! step's `assert`. A connection stays open across the run's later steps, so
//! a journey can subscribe, act over HTTP, then await the resulting event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use reqwest::cookie::CookieStore;
use tokio::io::{AsyncRead, AsyncWrite};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::agent::ProxySpec;
use crate::config::model::Dur;
use crate::config::template::Template;
use crate::steps::assertions::Assertions;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::{RunContext, RunStateSlot};
use crate::steps::http::{compile_proxy, proxy_for, tunnel, ProxyChoice};
use crate::steps::net::{connect_tcp, describe_io, handshake};
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{fmt_dur, ErrorType, Observation, Phase, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSpec {
    /// Name of the connection; later steps address it by this name.
    #[serde(default = "default_connection")]
    pub connection: String,
    pub connect: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub subprotocol: Option<String>,
    /// Send the run's cookies (from earlier HTTP steps) on the handshake.
    #[serde(default = "crate::config::model::default_true")]
    pub use_cookies: bool,
    pub send: Option<String>,
    /// Wait up to this long for a message that satisfies the step's `assert`.
    pub receive: Option<Dur>,
    /// Report the receive time since this earlier step started (e.g. time to notification).
    pub since_step: Option<String>,
    #[serde(default)]
    pub close: bool,
    /// As for `http` steps: `none`, `http://host:port` or `{url, credentials,
    /// no_proxy}`; default: the agent's `proxy`, else `HTTP_PROXY` (ws://),
    /// `HTTPS_PROXY` (wss://), `NO_PROXY`. Both go through a CONNECT tunnel.
    pub proxy: Option<ProxySpec>,
    /// Verify the server's certificate (wss:// only).
    #[serde(default = "crate::config::model::default_true")]
    pub tls_verify: bool,
    /// Extra PEM file of trusted CAs (wss:// only): private PKI, self-signed targets.
    pub ca_file: Option<String>,
}

fn default_connection() -> String {
    "default".into()
}

/// Messages buffered per connection between receive steps; when either bound
/// is reached the oldest are dropped (and counted), so the newest event, the
/// one a journey most likely waits for, is always kept.
const INBOX: usize = 256;
const INBOX_BYTES: usize = 4 * 1024 * 1024;
const MAX_MESSAGE: usize = 1024 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Sink = futures_util::stream::SplitSink<WebSocketStream<Box<dyn Io>>, Message>;

/// The messages a connection's reader received and no step consumed yet.
/// Frames are kept as received (text and binary alike, no copies).
#[derive(Default)]
struct Inbox {
    messages: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    /// Messages dropped, oldest first, because the inbox was full.
    dropped: u64,
    /// Why the reader stopped, once it has.
    closed: Option<String>,
}

impl Inbox {
    fn push(&mut self, at: Instant, b: Bytes) {
        self.bytes += b.len();
        self.messages.push_back((at, b));
        while self.messages.len() > INBOX || (self.bytes > INBOX_BYTES && self.messages.len() > 1) {
            if let Some((_, old)) = self.messages.pop_front() {
                self.bytes -= old.len();
                self.dropped += 1;
            }
        }
    }

    fn pop(&mut self) -> Option<(Instant, Bytes)> {
        let m = self.messages.pop_front()?;
        self.bytes -= m.1.len();
        Some(m)
    }
}

struct Shared {
    inbox: Mutex<Inbox>,
    arrived: Notify,
}

struct Conn {
    sink: Sink,
    shared: Arc<Shared>,
    received: u32,
    reader: tokio::task::JoinHandle<()>,
}

/// The run's open WebSocket connections, by name.
#[derive(Default)]
pub struct Connections {
    conns: HashMap<String, Conn>,
}

impl RunStateSlot for Connections {
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            for (_, mut c) in self.conns.drain() {
                let _ = tokio::time::timeout(Duration::from_millis(500), c.sink.close()).await;
                c.reader.abort();
            }
        })
    }
}

/// What `websocket` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "websocket", span_kind: opentelemetry::trace::SpanKind::Internal, needs: Needs::NETWORK, phases: crate::vocab::PhaseRecording::None, default_status: None };

/// Builds a `websocket` step from its config (the registry calls this).
pub fn compile(spec: &WebSocketSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    WebSocketStep::compile(spec, step.assertions.clone(), c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct WebSocketStep {
    connection: String,
    connect: Option<Template>,
    headers: Vec<(String, Template)>,
    subprotocol: Option<String>,
    use_cookies: bool,
    send: Option<Template>,
    receive: Option<Duration>,
    since_step: Option<String>,
    close: bool,
    proxy: ProxyChoice,
    tls_verify: bool,
    ca_file: Option<Template>,
    filter: Arc<Assertions>,
}

impl WebSocketStep {
    pub fn compile(spec: &WebSocketSpec, filter: Arc<Assertions>, c: &mut Checker) -> Option<WebSocketStep> {
        if spec.connect.is_none() && spec.send.is_none() && spec.receive.is_none() && !spec.close {
            c.error("websocket", "expected at least one of `connect`, `send`, `receive` or `close`");
        }
        if let Some(r) = spec.receive {
            c.check_wait("websocket.receive", r.0);
        }
        if let Some(scheme) = spec.connect.as_deref().and_then(literal_scheme) {
            if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
                let hint = match scheme.to_ascii_lowercase().as_str() {
                    "http" => " (use ws:// for a WebSocket)",
                    "https" => " (use wss:// for a WebSocket)",
                    _ => "",
                };
                c.error("websocket.connect", &format!("expected a ws:// or wss:// URL, got scheme `{scheme}`{hint}"));
            }
        }
        let tls_options = spec.ca_file.is_some() || !spec.tls_verify;
        match spec.connect.as_deref().map(|u| literal_scheme(u).map(|s| s.to_ascii_lowercase())) {
            None if tls_options => c.error("websocket", "`ca_file` and `tls_verify` only apply to a step that connects (`connect: wss://…`)"),
            Some(Some(s)) if tls_options && s == "ws" => c.error("websocket", "`ca_file` and `tls_verify` only apply to wss:// URLs; this one is ws://"),
            _ => {}
        }
        if spec.receive.is_some() && !filter.has_content_checks() {
            c.error("websocket.receive", "expected an `assert` block that says which message to wait for (e.g. `json` or `body_contains`)");
        }
        Some(WebSocketStep {
            connection: spec.connection.clone(),
            connect: spec.connect.as_deref().map(|u| c.template("websocket.connect", u)),
            headers: spec.headers.iter().map(|(k, v)| {
                if tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    c.key_error(&format!("websocket.headers.{k}"), &format!("`{k}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"));
                }
                (k.clone(), c.template(&format!("websocket.headers.{k}"), v))
            }).collect(),
            subprotocol: spec.subprotocol.clone(),
            use_cookies: spec.use_cookies,
            send: spec.send.as_deref().map(|s| c.template("websocket.send", s)),
            receive: spec.receive.map(|d| d.0),
            since_step: spec.since_step.clone(),
            close: spec.close,
            proxy: compile_proxy(spec.proxy.as_ref(), "websocket", c),
            tls_verify: spec.tls_verify,
            ca_file: spec.ca_file.as_deref().map(|f| c.template("websocket.ca_file", f)),
            filter,
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let mut obs = Observation::default();
        obs.attributes.push(KeyValue::new("websocket.connection", self.connection.clone()));
        let started = Instant::now();
        if let Some(t) = &self.connect {
            let url = ctx.render(t)?;
            let conn = self.open(ctx, &url, &mut obs).await.map_err(|e| e.with_observation(&obs))?;
            if let Some(old) = ctx.state.get_mut::<Connections>().conns.insert(self.connection.clone(), conn) {
                old.reader.abort();
            }
        }
        if let Some(t) = &self.send {
            let text = ctx.render(t)?;
            let conn = self.conn(ctx)?;
            ctx_wait(&mut conn.sink, text).await.map_err(|e| e.with_observation(&obs))?;
        }
        if let Some(within) = self.receive {
            let (arrived, text, dropped) = match self.receive(ctx, within).await {
                Ok(r) => r,
                Err(e) => {
                    if let Ok(c) = self.conn(ctx) {
                        obs.attributes.push(KeyValue::new("websocket.messages.dropped", c.shared.inbox.lock().expect("inbox lock").dropped as i64));
                    }
                    return Err(e.with_observation(&obs));
                }
            };
            obs.attributes.push(KeyValue::new("websocket.messages.dropped", dropped as i64));
            let since = match &self.since_step {
                Some(name) => *ctx.step_starts.get(name).ok_or_else(|| StepError::new(ErrorType::Config, format!("`since_step: {name}` names no earlier step of this run")))?,
                None => started,
            };
            let waited = arrived.saturating_duration_since(since);
            obs.phases.push(Phase { name: "message", duration: waited });
            obs.reported_duration = Some(waited);
            obs.body = bytes::Bytes::from(text);
        }
        if self.close {
            if let Some(mut c) = ctx.state.get_mut::<Connections>().conns.remove(&self.connection) {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.sink.close()).await;
                c.reader.abort();
            }
        }
        Ok(obs)
    }

    fn conn<'c>(&self, ctx: &'c mut RunContext) -> Result<&'c mut Conn, StepError> {
        ctx.state
            .get_mut::<Connections>()
            .conns
            .get_mut(&self.connection)
            .ok_or_else(|| StepError::new(ErrorType::Websocket, format!("no open WebSocket connection named `{}`: connect it in an earlier step", self.connection)))
    }

    async fn open(&self, ctx: &mut RunContext, url_text: &str, obs: &mut Observation) -> Result<Conn, StepError> {
        let url = url::Url::parse(url_text).map_err(|e| StepError::new(ErrorType::Config, format!("`{url_text}` is not a valid URL: {e}")))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            s => return Err(StepError::new(ErrorType::Config, format!("expected a ws:// or wss:// URL, got scheme `{s}`"))),
        };
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(if secure { 443 } else { 80 });
        let mut req = url_text.into_client_request().map_err(|e| StepError::new(ErrorType::Config, format!("cannot build the WebSocket request: {e}")))?;
        let h = req.headers_mut();
        let hv = |v: &str| HeaderValue::from_str(v).map_err(|_| StepError::new(ErrorType::Config, "a header value contains characters not allowed in HTTP headers"));
        h.insert("user-agent", hv(&ctx.env.user_agent)?);
        h.insert("x-synthetic-run", hv(&ctx.run_id)?);
        let sc = ctx.trace_cx.span().span_context().clone();
        if sc.is_valid() {
            h.insert("traceparent", hv(&format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))?);
        }
        if let Some(p) = &self.subprotocol {
            h.insert("sec-websocket-protocol", hv(p)?);
        }
        // Cookies and proxies are chosen as for the same URL in http(s).
        let mut http_url = url.clone();
        let _ = http_url.set_scheme(if secure { "https" } else { "http" });
        if self.use_cookies {
            if let Some(c) = ctx.cookies.cookies(&http_url) {
                h.insert("cookie", c);
            }
        }
        for (k, t) in &self.headers {
            let v = ctx.render(t)?;
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| StepError::new(ErrorType::Config, format!("invalid header name `{k}`")))?;
            req.headers_mut().insert(name, hv(&v)?);
        }
        let tls = if secure {
            let ca = self.ca_file.as_ref().map(|f| ctx.render(f)).transpose()?;
            Some(ctx.env.tls()?.pick(self.tls_verify, ca.as_deref())?)
        } else {
            None
        };
        let io: Box<dyn Io> = match proxy_for(ctx, &self.proxy, &http_url)? {
            None => {
                let (tcp, _) = connect_tcp(ctx, &host, port, &mut obs.phases).await?;
                match tls {
                    Some(cfg) => Box::new(handshake(ctx, tcp, &host, cfg, &mut obs.phases).await?.0),
                    None => Box::new(tcp),
                }
            }
            Some(route) => {
                let authority = format!("{}:{port}", url.host_str().unwrap_or_default());
                let tunnel = tunnel(ctx, &route, &authority, &mut obs.phases).await?;
                match tls {
                    Some(cfg) => Box::new(handshake(ctx, tunnel, &host, cfg, &mut obs.phases).await?.0),
                    None => Box::new(tunnel),
                }
            }
        };
        ctx.waiting_for = "the WebSocket handshake";
        let t = Instant::now();
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
        let (ws, resp) =
            tokio_tungstenite::client_async_with_config(req, io, Some(config)).await.map_err(|e| StepError::new(ErrorType::Websocket, format!("WebSocket handshake with {url_text} failed: {e}")))?;
        obs.phases.push(Phase { name: "handshake", duration: t.elapsed() });
        obs.attributes.push(KeyValue::new("http.response.status_code", resp.status().as_u16() as i64));
        obs.attributes.push(KeyValue::new("url.full", url.to_string()));
        let (sink, mut stream) = ws.split();
        let shared = Arc::new(Shared { inbox: Mutex::new(Inbox::default()), arrived: Notify::new() });
        let sh = shared.clone();
        let reader = tokio::spawn(async move {
            let mut count = 0u64;
            let push = |b: Bytes| {
                sh.inbox.lock().expect("inbox lock").push(Instant::now(), b);
                sh.arrived.notify_one();
            };
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        count += 1;
                        push(Bytes::from(t));
                    }
                    Some(Ok(Message::Binary(b))) => {
                        count += 1;
                        push(b);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(f) => format!("closed by the server (code {}, reason `{}`)", u16::from(f.code), f.reason),
                            None => "closed by the server".to_string(),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Io(e))) => break format!("failed: {} after {count} messages", describe_io(&e)),
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => break format!("was closed by the server without a close frame after {count} messages"),
                    Some(Err(WsError::Capacity(_))) => break format!("failed: the server sent a message larger than {MAX_MESSAGE} bytes"),
                    Some(Err(e)) => break format!("failed: {e}"),
                    None => break format!("was closed after {count} messages"),
                }
            };
            sh.inbox.lock().expect("inbox lock").closed = Some(why);
            sh.arrived.notify_one();
        });
        Ok(Conn { sink, shared, received: 0, reader })
    }

    async fn receive(&self, ctx: &mut RunContext, within: Duration) -> Result<(Instant, String, u64), StepError> {
        let deadline = crate::vocab::later(Instant::now(), within);
        let mut last_mismatch: Option<String> = None;
        let mut seen = 0u32;
        ctx.waiting_for = "a matching WebSocket message";
        let shared = self.conn(ctx)?.shared.clone();
        let dropped = || shared.inbox.lock().expect("inbox lock").dropped;
        let dropped_note = |d: u64| if d == 0 { String::new() } else { format!("; {d} older message{} dropped because the receive buffer was full", if d == 1 { " was" } else { "s were" }) };
        loop {
            let next = {
                let mut inbox = shared.inbox.lock().expect("inbox lock");
                match inbox.pop() {
                    Some(m) => Ok(m),
                    None => Err(inbox.closed.clone()),
                }
            };
            let (at, bytes) = match next {
                Ok(m) => m,
                Err(Some(why)) => {
                    let last = last_mismatch.map(|m| format!("; last mismatch: {m}")).unwrap_or_default();
                    return Err(StepError::new(
                        ErrorType::Websocket,
                        format!("connection `{}` {why} while waiting for a matching message ({seen} other message{} received){last}{}", self.connection, if seen == 1 { "" } else { "s" }, dropped_note(dropped())),
                    ));
                }
                Err(None) => {
                    if tokio::time::timeout_at(deadline.into(), shared.arrived.notified()).await.is_err() {
                        let last = last_mismatch.map(|m| format!("; last mismatch: {m}")).unwrap_or_default();
                        return Err(StepError::new(
                            ErrorType::Timeout,
                            format!(
                                "expected a matching message on `{}` within {}, got {seen} non-matching message{}{last}{}",
                                self.connection,
                                fmt_dur(within),
                                if seen == 1 { "" } else { "s" },
                                dropped_note(dropped())
                            ),
                        ));
                    }
                    continue;
                }
            };
            self.conn(ctx)?.received += 1;
            let candidate = Observation { body: bytes, ..Default::default() };
            match self.filter.check_content(ctx, &candidate) {
                Ok(()) => return Ok((at, candidate.body_text().into_owned(), dropped())),
                Err(e) => {
                    seen += 1;
                    last_mismatch = Some(format!("{} in {}", e.message, ctx.excerpt(&candidate.body_text(), 160)));
                }
            }
        }
    }
}

/// The scheme of a URL template when it is written literally (`ws://${host}/x` → `ws`).
fn literal_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    (!scheme.contains("${") && !scheme.is_empty()).then_some(scheme)
}

async fn ctx_wait(sink: &mut Sink, text: String) -> Result<(), StepError> {
    sink.send(Message::text(text)).await.map_err(|e| StepError::new(ErrorType::Websocket, format!("send failed: {e}")))
}

impl StepKind for WebSocketStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Tls, ErrorType::Websocket, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
    fn default_timeout(&self) -> Option<Duration> {
        self.receive.map(|d| d + Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};

    use super::Connections;
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;

    /// Echoes text messages on one connection.
    async fn echo_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        port
    }

    #[test]
    fn tls_options_apply_only_to_a_wss_connect() {
        let errs = |y: &str| crate::steps::compile::test_step_errors(y);
        let e = errs("name: s\nwebsocket: {connect: \"ws://a.test/ws\", tls_verify: false}\n");
        assert!(e.len() == 1 && e[0].contains("`ca_file` and `tls_verify` only apply to wss:// URLs; this one is ws://"), "{e:?}");
        let e = errs("name: s\nwebsocket: {send: hi, ca_file: ca.pem}\n");
        assert!(e.len() == 1 && e[0].contains("only apply to a step that connects"), "{e:?}");
        assert!(errs("name: s\nwebsocket: {connect: \"wss://a.test/ws\", ca_file: ca.pem, tls_verify: true}\n").is_empty());
        // A templated URL's scheme is known only at run time; the options are kept.
        assert!(errs("name: s\nwebsocket: {connect: \"${env.WS}/ws\", tls_verify: false}\n").is_empty());
    }

    #[test]
    fn a_literal_url_with_another_scheme_is_a_check_error() {
        let errs = crate::steps::compile::test_step_errors("name: s\nwebsocket: {connect: \"http://example.test/ws\"}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("test.yaml:1:1") && errs[0].contains("`websocket.connect`: expected a ws:// or wss:// URL, got scheme `http` (use ws:// for a WebSocket)"), "{}", errs[0]);
        assert!(crate::steps::compile::test_step_errors("name: s\nwebsocket: {connect: \"${env.X}/ws\"}\n").is_empty());
        assert!(crate::steps::compile::test_step_errors("name: s\nwebsocket: {connect: \"wss://${env.X}/ws\"}\n").is_empty());
    }

    #[test]
    fn a_bad_proxy_is_a_check_error_like_on_http_steps() {
        let errs = crate::steps::compile::test_step_errors("name: s\nwebsocket: {connect: \"ws://a.test/\", proxy: \"socks5://p.test:1080\"}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("`websocket.proxy`: expected `none` or an http://host:port proxy URL, got `socks5://p.test:1080`"), "{errs:?}");
        assert!(crate::steps::compile::test_step_errors("name: s\nwebsocket: {connect: \"ws://a.test/\", proxy: {url: \"http://p.test:3128\", no_proxy: [a.test]}}\n").is_empty());
    }

    /// Sends `count` numbered messages `{"n":i}` (text, or binary of `pad` bytes) as fast as it can, then keeps the connection open.
    async fn flood_server(count: usize, pad: usize) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            for i in 0..count {
                let m = if pad == 0 {
                    tokio_tungstenite::tungstenite::Message::text(format!("{{\"n\":{i}}}"))
                } else {
                    let mut b = format!("{{\"n\":{i}}}").into_bytes();
                    // Not UTF-8: a frame turned into text would grow (U+FFFD is 3 bytes).
                    b.resize(pad, 0xff);
                    tokio_tungstenite::tungstenite::Message::binary(b)
                };
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await;
        });
        port
    }

    fn dropped(obs_attrs: &[opentelemetry::KeyValue]) -> i64 {
        match obs_attrs.iter().find(|kv| kv.key.as_str() == "websocket.messages.dropped").map(|kv| kv.value.clone()) {
            Some(opentelemetry::Value::I64(n)) => n,
            other => panic!("no dropped count: {other:?}"),
        }
    }

    /// A flood beyond the buffer keeps the newest messages and counts the
    /// oldest it dropped. Timing-dependent (the flood must land before the
    /// receive step); looped 50 times here.
    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_messages_and_counts_them() {
        for _ in 0..50 {
            let port = flood_server(300, 0).await;
            let mut ctx = RunContext::new_test();
            let open = test_step(&format!("name: open\nwebsocket: {{connect: \"ws://127.0.0.1:{port}/\"}}\n"));
            attempt(&mut ctx, &open).await.expect("handshake");
            // Wait until the whole flood sits in the buffer.
            let shared = ctx.state.get_mut::<Connections>().conns["default"].shared.clone();
            let t = std::time::Instant::now();
            while shared.inbox.lock().unwrap().dropped < 44 && t.elapsed() < std::time::Duration::from_secs(5) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let last = test_step("name: last\nwebsocket: {receive: 1s}\nassert: {json: [{path: \"$.n\", equals: 299}]}\n");
            let (obs, _) = attempt(&mut ctx, &last).await.expect("the newest message is kept");
            assert_eq!(dropped(&obs.attributes), 44);
            let first = test_step("name: first\nwebsocket: {receive: 200ms}\nassert: {json: [{path: \"$.n\", equals: 0}]}\n");
            let e = attempt(&mut ctx, &first).await.expect_err("the oldest was dropped");
            assert_eq!(e.error_type, crate::vocab::ErrorType::Timeout, "{}", e.message);
            assert!(e.message.contains("44 older messages were dropped because the receive buffer was full"), "{}", e.message);
            ctx.state.close_all().await;
        }
    }

    /// Big binary frames are bounded by bytes too, kept as bytes (no text copies).
    #[tokio::test]
    async fn the_buffer_is_bounded_in_bytes() {
        let port = flood_server(40, 512 * 1024).await;
        let mut ctx = RunContext::new_test();
        let open = test_step(&format!("name: open\nwebsocket: {{connect: \"ws://127.0.0.1:{port}/\"}}\n"));
        attempt(&mut ctx, &open).await.expect("handshake");
        let shared = ctx.state.get_mut::<Connections>().conns["default"].shared.clone();
        let t = std::time::Instant::now();
        while shared.inbox.lock().unwrap().dropped < 32 && t.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        {
            let inbox = shared.inbox.lock().unwrap();
            assert!(inbox.bytes <= super::INBOX_BYTES, "{} bytes buffered", inbox.bytes);
            assert_eq!((inbox.messages.len(), inbox.dropped), (8, 32));
            // Kept as the bytes received: not inflated into a text copy.
            assert!(inbox.messages.iter().all(|m| m.1.len() == 512 * 1024 && m.1[m.1.len() - 1] == 0xff));
        }
        let last = test_step("name: last\nwebsocket: {receive: 1s}\nassert: {body_contains: \"\\\"n\\\":39\"}\n");
        let (obs, _) = attempt(&mut ctx, &last).await.expect("the newest binary message is kept");
        assert_eq!(dropped(&obs.attributes), 32);
        ctx.state.close_all().await;
    }

    #[tokio::test]
    async fn connects_sends_receives_and_the_run_closes_the_connection() {
        let port = echo_server().await;
        let mut ctx = RunContext::new_test();
        let open = test_step(&format!("name: open\nwebsocket: {{connect: \"ws://127.0.0.1:{port}/\"}}\n"));
        attempt(&mut ctx, &open).await.expect("handshake");
        let echo = test_step("name: echo\nwebsocket: {send: hello, receive: 2s}\nassert: {body_contains: hello}\n");
        let (obs, _) = attempt(&mut ctx, &echo).await.expect("echoed");
        assert!(obs.body_text().contains("hello"));
        assert_eq!(ctx.state.get::<Connections>().map(|c| c.conns.len()), Some(1));
        ctx.state.close_all().await;
        assert!(ctx.state.get::<Connections>().is_none());
    }
}
