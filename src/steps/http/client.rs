//! One HTTP exchange on a pooled or fresh connection: proxy choice, TLS with
//! ALPN, HTTP/1.1 or HTTP/2, the stale-connection retry, and timed phases.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::TraceContextExt;
use reqwest::cookie::CookieStore;
use url::Url;

use super::decode;
use super::{add_phase, display_url, HttpVersion, ProxyChoice};
use crate::steps::context::{RunContext, RunStateSlot};
use crate::steps::net::{connect_tcp, handshake, describe_io};
use crate::vocab::{ErrorType, Phase, StepError};

/// Open connections of one run, by origin and connection options.
#[derive(Default)]
pub struct ConnectionCache {
    pub(super) conns: HashMap<String, Conn>,
    /// Origins this run has talked to, for cookie look-ups by name.
    pub(super) visited: Vec<Url>,
}

/// Dropped with the run: closing a connection is dropping its sender.
impl RunStateSlot for ConnectionCache {}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A connection ready for requests.
pub(super) struct Conn {
    sender: Sender,
    /// Plain HTTP through a proxy: absolute-form request targets and the proxy's credentials.
    via_proxy: Option<Option<HeaderValue>>,
}

impl Conn {
    fn usable(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => !s.is_closed() && s.is_ready(),
            Sender::H2(s) => !s.is_closed() && s.is_ready(),
        }
    }

    fn version(&self) -> &'static str {
        match self.sender {
            Sender::H1(_) => "1.1",
            Sender::H2(_) => "2",
        }
    }

    async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, TrySendError<Request<Full<Bytes>>>> {
        match &mut self.sender {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// How to verify the server's certificate.
pub(super) struct TlsChoice {
    pub verify: bool,
    pub ca_file: Option<String>,
    pub crl_file: Option<String>,
}

/// What the step asks of the client, the same for every hop.
pub(super) struct Options {
    pub tls: TlsChoice,
    pub version: HttpVersion,
    pub proxy: ProxyChoice,
    pub max_body: u64,
    pub raw_body: bool,
}

/// One request of the redirect chain.
pub(super) struct Req<'a> {
    pub method: &'a Method,
    pub url: &'a Url,
    pub headers: &'a [(String, String)],
    pub body: &'a Bytes,
    pub content_type: Option<&'static str>,
}

pub(super) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The (decoded) body was larger than `max_body` and was cut.
    pub truncated: bool,
    pub cert: Option<SystemTime>,
    /// `1.1` or `2`.
    pub version: &'static str,
    /// The content codings that were decoded, e.g. `gzip`.
    pub decoded: Option<String>,
}

const ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";
/// Bounds the memory a header flood can take over HTTP/2 (HTTP/1.1: hyper's 100 headers / ~400 KiB).
const H2_MAX_HEADER_LIST: u32 = 256 * 1024;

/// Sends `req` and reads its response. A reused connection that turns out
/// closed before any response byte is retried once on a fresh one (every
/// method when nothing was written, idempotent ones otherwise): servers may
/// close idle kept-alive connections without saying so.
pub(super) async fn send(ctx: &mut RunContext, req: &Req<'_>, opts: &Options, totals: &mut Vec<Phase>) -> Result<Response, StepError> {
    let url = req.url;
    let host = url.host_str().ok_or_else(|| StepError::new(ErrorType::Config, format!("URL `{}` has no host", display_url(url))))?.to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let proxy = proxy_for(ctx, &opts.proxy, url)?;
    let key = format!(
        "{}://{host}:{port}#{}#{}#{}#{:?}#{}",
        url.scheme(),
        opts.tls.verify,
        opts.tls.ca_file.as_deref().unwrap_or(""),
        opts.tls.crl_file.as_deref().unwrap_or(""),
        opts.version,
        proxy.as_ref().map(|p| format!("{}{}", p.name(), if p.auth.is_some() { "+auth" } else { "" })).unwrap_or_default()
    );

    let pooled = ctx.state.get_mut::<ConnectionCache>().conns.remove(&key).filter(Conn::usable);
    let mut reused = pooled.is_some();
    let mut cert = None;
    let mut conn = match pooled {
        Some(c) => c,
        // Boxed: connecting (TLS, HTTP/2, proxy tunnel) is most of this future's
        // size, needed only briefly, and every run in flight would carry it.
        None => Box::pin(connect(ctx, url, &host, port, proxy.as_ref(), opts, totals, &mut cert)).await?,
    };

    let (resp, exchange) = loop {
        let request = build_request(ctx, req, &conn, &host)?;
        let exchange = ctx.exchange_request(&request, req.body);
        ctx.waiting_for = "the response headers (time to first byte)";
        let t = Instant::now();
        match conn.try_send(request).await {
            Ok(r) => {
                add_phase(totals, "ttfb", t.elapsed());
                break (r, exchange);
            }
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let err = e.into_error();
                let idempotent = matches!(*req.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE);
                if reused && (unsent || (idempotent && closed_before_response(&err))) {
                    reused = false;
                    conn = Box::pin(connect(ctx, url, &host, port, proxy.as_ref(), opts, totals, &mut cert)).await?;
                    continue;
                }
                return Err(StepError::new(ErrorType::Protocol, format!("no response from `{}`: {}", display_url(url), hyper_cause(&err))));
            }
        }
    };

    let status = resp.status().as_u16();
    let resp_headers: Vec<(String, String)> = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let set_cookies: Vec<HeaderValue> = resp.headers().get_all(http::header::SET_COOKIE).iter().cloned().collect();
    if !set_cookies.is_empty() {
        ctx.cookies.set_cookies(&mut set_cookies.iter(), url);
    }
    let origin = Url::parse(&url.origin().ascii_serialization()).expect("origin of a valid URL");
    let cache = ctx.state.get_mut::<ConnectionCache>();
    if !cache.visited.contains(&origin) {
        cache.visited.push(origin);
    }
    let keep_alive = !resp.headers().get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));

    ctx.waiting_for = "the response body";
    let t = Instant::now();
    let read = decode::read_body(resp, opts.max_body, opts.raw_body).await;
    add_phase(totals, "transfer", t.elapsed());
    let read = read.map_err(|e| e.in_words(t.elapsed()))?;
    ctx.log_exchange(exchange, status, &resp_headers, &read.body);
    let version = conn.version();
    if keep_alive && !read.truncated {
        ctx.state.get_mut::<ConnectionCache>().conns.insert(key, conn);
    }
    Ok(Response { status, headers: resp_headers, body: read.body, truncated: read.truncated, cert, version, decoded: read.decoded })
}

/// The connection ended cleanly but too early (EOF), as opposed to a reset.
pub(super) fn closed_early(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || io_error(e).is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// Whether a request failed because the connection was gone before a response started.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    io_error(e).is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionAborted))
}

fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = c.source();
    }
    None
}

/// A hyper failure in plain words, for messages.
pub(super) fn hyper_cause(e: &hyper::Error) -> String {
    if let Some(io) = io_error(e) {
        return describe_io(io);
    }
    if e.is_parse_too_large() {
        return "the response headers are too large (more than 100 headers or 400 KiB)".into();
    }
    if e.is_parse_version_h2() {
        return "the server answered in HTTP/2 to an HTTP/1.1 request".into();
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return "the server closed the connection before responding".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    // The innermost cause reads best ("invalid HTTP status-code parsed", an h2 reason…).
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text = s.to_string();
        src = s.source();
    }
    if e.is_parse() {
        format!("the response is not valid HTTP ({text})")
    } else {
        text
    }
}

fn build_request(ctx: &RunContext, req: &Req<'_>, conn: &Conn, host: &str) -> Result<Request<Full<Bytes>>, StepError> {
    let url = req.url;
    let h2 = matches!(conn.sender, Sender::H2(_));
    // HTTP/2 carries scheme and authority in the request; a plain HTTP proxy wants the absolute URL.
    let target = if h2 || conn.via_proxy.is_some() { url.as_str().parse::<Uri>() } else { origin_form(url).parse::<Uri>() }
        .map_err(|_| StepError::new(ErrorType::Config, format!("`{}` cannot be sent as an HTTP request target", display_url(url))))?;
    let mut builder = Request::builder().method(req.method.clone()).uri(target);
    let hdrs = builder.headers_mut().expect("fresh builder");
    if !h2 {
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        hdrs.insert(http::header::HOST, header_value(&host_header)?);
    }
    if let Some(Some(auth)) = &conn.via_proxy {
        hdrs.insert(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    hdrs.insert(http::header::USER_AGENT, header_value(&ctx.env.user_agent)?);
    hdrs.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static(ACCEPT_ENCODING));
    hdrs.insert(HeaderName::from_static("x-synthetic-run"), header_value(&ctx.run_id)?);
    let sc = ctx.trace_cx.span().span_context().clone();
    if sc.is_valid() {
        let tp = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
        hdrs.insert(HeaderName::from_static("traceparent"), header_value(&tp)?);
    }
    if let Some(c) = ctx.cookies.cookies(url) {
        hdrs.insert(http::header::COOKIE, c);
    }
    if let Some(ct) = req.content_type {
        hdrs.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (k, v) in req.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| StepError::new(ErrorType::Config, format!("invalid header name `{k}`")))?;
        hdrs.insert(name, header_value(v)?);
    }
    builder.body(Full::new(req.body.clone())).map_err(|e| StepError::new(ErrorType::Config, format!("cannot build the request: {e}")))
}

/// The forward proxy a request goes through.
pub(crate) struct Route {
    host: String,
    port: u16,
    /// `Proxy-Authorization: Basic …`, when the proxy has credentials.
    auth: Option<HeaderValue>,
}

impl Route {
    /// For messages: never with credentials.
    fn name(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// The proxy for `url`: the step's `proxy:`, else the agent's, else the
/// environment's (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`); none for a
/// host in its `no_proxy`. Its password becomes one of the run's secrets.
pub(crate) fn proxy_for(ctx: &mut RunContext, choice: &ProxyChoice, url: &Url) -> Result<Option<Route>, StepError> {
    // None when the environment names no proxy: most agents, and no per-request work then.
    static FROM_ENV: OnceLock<Option<Matcher>> = OnceLock::new();
    let env = || {
        let set = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"].iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        set.then(Matcher::from_env)
    };
    let settings = match choice {
        ProxyChoice::Set(s) => Some(s.clone()),
        ProxyChoice::Inherit => ctx.env.proxy.as_ref().map(|p| Arc::new(p.settings())),
    };
    if settings.is_none() && FROM_ENV.get_or_init(env).is_none() {
        return Ok(None);
    }
    let uri: Uri = url.as_str().parse().map_err(|_| StepError::new(ErrorType::Config, format!("`{}` is not a valid request URL", display_url(url))))?;
    let intercept = match &settings {
        None => FROM_ENV.get_or_init(env).as_ref().and_then(|m| m.intercept(&uri)),
        Some(s) if s.url == "none" => None,
        Some(s) => {
            let m = Matcher::builder().http(s.url.as_str()).https(s.url.as_str()).no(s.no_proxy.join(",")).build();
            let i = m.intercept(&uri);
            if i.is_none() && Matcher::builder().http(s.url.as_str()).https(s.url.as_str()).build().intercept(&uri).is_none() {
                let shown = crate::config::agent::shown_proxy_url(&s.url);
                return Err(StepError::new(ErrorType::Config, format!("`proxy: {shown}` is not a usable proxy URL: expected http://host:port")));
            }
            i
        }
    };
    let Some(i) = intercept else { return Ok(None) };
    let puri = i.uri();
    let host = puri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = puri.port_u16().unwrap_or(80);
    let mut auth = i.basic_auth().cloned();
    if let Some(file) = settings.as_ref().and_then(|s| s.credentials.as_deref()) {
        let pair = crate::steps::context::read_secret(ctx.env.credentials_dir.as_deref(), file)
            .map_err(|e| StepError::new(ErrorType::Config, format!("proxy credentials: {}", e.message)))?;
        if !pair.contains(':') {
            return Err(StepError::new(ErrorType::Config, format!("proxy credentials: expected `user:password` in the credentials file `{file}`")));
        }
        use base64::Engine as _;
        let mut v = HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
            .map_err(|_| StepError::new(ErrorType::Config, format!("proxy credentials: the credentials file `{file}` holds characters not allowed in a header")))?;
        v.set_sensitive(true);
        auth = Some(v);
    }
    if let Some(a) = &auth {
        // Whatever the source (step, agent, environment), the password is redacted wherever it could appear.
        use base64::Engine as _;
        let decoded = a.to_str().ok().and_then(|t| t.strip_prefix("Basic ")).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        if let Some(pair) = decoded.and_then(|d| String::from_utf8(d).ok()) {
            if let Some((_, pass)) = pair.split_once(':') {
                ctx.add_secret(pass);
            }
            ctx.add_secret(&pair);
        }
    }
    Ok(Some(Route { host, port, auth }))
}

/// Opens a connection (through the proxy if any), recording dns, connect and
/// tls; phases completed before a failure are kept.
#[allow(clippy::too_many_arguments)]
async fn connect(ctx: &mut RunContext, url: &Url, host: &str, port: u16, proxy: Option<&Route>, opts: &Options, totals: &mut Vec<Phase>, cert: &mut Option<SystemTime>) -> Result<Conn, StepError> {
    let mut phases = Vec::new();
    let r = connect_inner(ctx, url, host, port, proxy, opts, &mut phases, cert).await;
    for p in phases {
        add_phase(totals, p.name, p.duration);
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn connect_inner(
    ctx: &mut RunContext,
    url: &Url,
    host: &str,
    port: u16,
    proxy: Option<&Route>,
    opts: &Options,
    phases: &mut Vec<Phase>,
    cert: &mut Option<SystemTime>,
) -> Result<Conn, StepError> {
    let https = url.scheme() == "https";
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let Some(proxy) = proxy else {
        let (tcp, _) = connect_tcp(ctx, bare_host, port, phases).await?;
        return if https { over_tls(ctx, tcp, bare_host, opts, phases, cert, None).await } else { plain(tcp, opts.version, None).await };
    };
    if !https {
        if opts.version == HttpVersion::V2 {
            return Err(StepError::new(ErrorType::Config, "`http_version: \"2\"` over plain http:// cannot go through a proxy; use https:// or `proxy: none`".to_string()));
        }
        let tcp = proxy_tcp(ctx, proxy, phases).await?;
        return plain(tcp, HttpVersion::V1_1, Some(proxy.auth.clone())).await;
    }
    let tunnel = tunnel(ctx, proxy, &format!("{host}:{port}"), phases).await?;
    over_tls(ctx, tunnel, bare_host, opts, phases, cert, None).await
}

/// A TCP connection to the proxy; failures name the proxy (never its credentials).
async fn proxy_tcp(ctx: &mut RunContext, proxy: &Route, phases: &mut Vec<Phase>) -> Result<tokio::net::TcpStream, StepError> {
    let (tcp, _) = connect_tcp(ctx, &proxy.host, proxy.port, phases).await.map_err(|e| StepError::new(e.error_type, format!("proxy `{}`: {}", proxy.name(), e.message)))?;
    Ok(tcp)
}

/// A tunnel to `authority` (`host:port`) through the proxy (HTTP CONNECT, with
/// the proxy's credentials). Setting it up counts as connecting: its time is
/// added to the `connect` phase. Used by `http` (https://) and `websocket` steps.
pub(crate) async fn tunnel(ctx: &mut RunContext, proxy: &Route, authority: &str, phases: &mut Vec<Phase>) -> Result<TokioIo<hyper::upgrade::Upgraded>, StepError> {
    let pname = proxy.name();
    let tcp = proxy_tcp(ctx, proxy, phases).await?;
    ctx.waiting_for = "the proxy to open a tunnel (CONNECT)";
    let t = Instant::now();
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.map_err(|e| StepError::new(ErrorType::Connect, format!("proxy `{pname}`: {}", hyper_cause(&e))))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = Request::connect(authority).header(http::header::HOST, authority);
    if let Some(auth) = &proxy.auth {
        req = req.header(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|_| StepError::new(ErrorType::Config, format!("`{authority}` is not a valid CONNECT target")))?;
    let resp = sender.send_request(req).await.map_err(|e| StepError::new(ErrorType::Connect, format!("proxy `{pname}` did not answer CONNECT {authority}: {}", hyper_cause(&e))))?;
    if !resp.status().is_success() {
        let s = resp.status();
        return Err(StepError::new(ErrorType::Connect, format!("proxy `{pname}` refused CONNECT {authority}: {} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))));
    }
    let tunnel = hyper::upgrade::on(resp).await.map_err(|e| StepError::new(ErrorType::Connect, format!("proxy `{pname}`: the CONNECT tunnel broke: {}", hyper_cause(&e))))?;
    match phases.iter_mut().find(|p| p.name == "connect") {
        Some(p) => p.duration += t.elapsed(),
        None => phases.push(Phase { name: "connect", duration: t.elapsed() }),
    }
    Ok(TokioIo::new(tunnel))
}

/// TLS, offering the protocols `http_version` allows, then HTTP/2 if the server picked it.
async fn over_tls<IO>(
    ctx: &mut RunContext,
    io: IO,
    host: &str,
    opts: &Options,
    phases: &mut Vec<Phase>,
    cert: &mut Option<SystemTime>,
    via_proxy: Option<Option<HeaderValue>>,
) -> Result<Conn, StepError>
where
    IO: crate::steps::net::TlsTransport + Send + 'static,
{
    let base = ctx.env.tls()?.pick_with_crl(opts.tls.verify, opts.tls.ca_file.as_deref(), opts.tls.crl_file.as_deref())?;
    let mut cfg = (*base).clone();
    cfg.alpn_protocols = match opts.version {
        HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        HttpVersion::V1_1 => vec![b"http/1.1".to_vec()],
        HttpVersion::V2 => vec![b"h2".to_vec()],
    };
    let (tls, facts) = handshake(ctx, io, host, Arc::new(cfg), phases).await?;
    *cert = facts.not_after;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if opts.version == HttpVersion::V2 && !h2 {
        return Err(StepError::new(
            ErrorType::Protocol,
            format!("`{host}` did not agree to HTTP/2 in the TLS handshake (ALPN); it does not offer HTTP/2 here, so `http_version: \"2\"` cannot be met (`auto` would use HTTP/1.1)"),
        ));
    }
    let version = if h2 { HttpVersion::V2 } else { HttpVersion::V1_1 };
    plain(tls, version, via_proxy).await
}

/// HTTP over an established byte stream: HTTP/2 with prior knowledge when asked, else HTTP/1.1.
async fn plain<IO>(io: IO, version: HttpVersion, via_proxy: Option<Option<HeaderValue>>) -> Result<Conn, StepError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let sender = if version == HttpVersion::V2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .handshake(io)
            .await
            .map_err(|e| StepError::new(ErrorType::Protocol, format!("HTTP/2 handshake failed: {}", hyper_cause(&e))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Sender::H2(sender)
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| StepError::new(ErrorType::Protocol, format!("HTTP/1.1 handshake failed: {}", hyper_cause(&e))))?;
        // Ends when the run drops its sender or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Sender::H1(sender)
    };
    Ok(Conn { sender, via_proxy })
}

fn origin_form(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

fn header_value(v: &str) -> Result<HeaderValue, StepError> {
    HeaderValue::from_str(v).map_err(|_| StepError::new(ErrorType::Config, "a header value contains characters not allowed in HTTP headers".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::agent::{ProxySettings, ProxySpec};
    use crate::steps::context::{RunEnv, REDACTED};

    fn set(url: &str, no_proxy: &[&str], credentials: Option<&str>) -> ProxyChoice {
        ProxyChoice::Set(Arc::new(ProxySettings { url: url.into(), credentials: credentials.map(str::to_string), no_proxy: no_proxy.iter().map(|s| s.to_string()).collect() }))
    }

    fn url(u: &str) -> Url {
        Url::parse(u).unwrap()
    }

    #[test]
    fn request_targets_and_header_values() {
        assert_eq!(origin_form(&url("http://h.test/a/b?x=1&y")), "/a/b?x=1&y");
        assert_eq!(origin_form(&url("http://h.test")), "/");
        let e = header_value("one\ntwo-secret").unwrap_err();
        assert_eq!(e.error_type, ErrorType::Config);
        assert!(!e.message.contains("two-secret"), "{}", e.message);
        let v6 = Route { host: "::1".into(), port: 3128, auth: header_value("Basic dTpw").ok() };
        assert_eq!(v6.name(), "http://[::1]:3128");
        assert_eq!(Route { host: "proxy.test".into(), port: 8080, auth: None }.name(), "http://proxy.test:8080");
    }

    #[test]
    fn the_steps_proxy_is_chosen_with_its_no_proxy_and_none_turns_it_off() {
        let mut ctx = RunContext::new_test();
        let target = url("http://api.example.test/x");
        assert!(proxy_for(&mut ctx, &set("none", &[], None), &target).unwrap().is_none());
        let r = proxy_for(&mut ctx, &set("http://127.0.0.1:3128", &[], None), &target).unwrap().expect("a route");
        assert_eq!((r.host.as_str(), r.port, r.auth.is_none()), ("127.0.0.1", 3128, true));
        let bypass = set("http://127.0.0.1:3128", &["example.test"], None);
        assert!(proxy_for(&mut ctx, &bypass, &target).unwrap().is_none(), "a subdomain of a no_proxy entry goes direct");
        assert!(proxy_for(&mut ctx, &bypass, &url("http://other.test/")).unwrap().is_some());
    }

    #[test]
    fn a_proxy_password_becomes_a_run_secret_and_never_appears_in_the_route_name() {
        let mut ctx = RunContext::new_test();
        let r = proxy_for(&mut ctx, &set("http://user:pa55word-x@[::1]:3128", &[], None), &url("http://a.test/")).unwrap().expect("a route");
        assert_eq!((r.host.as_str(), r.port), ("::1", 3128));
        assert!(!r.name().contains("pa55word"), "{}", r.name());
        let auth = r.auth.expect("Proxy-Authorization from the URL");
        assert!(auth.to_str().unwrap().starts_with("Basic "));
        assert_eq!(ctx.redact("sent pa55word-x"), format!("sent {REDACTED}"));
    }

    #[test]
    fn proxy_credentials_come_from_the_credentials_directory() {
        let dir = std::env::temp_dir().join(format!("vantage-client-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("proxy"), "agent:s3cret-proxy-pw\n").unwrap();
        std::fs::write(dir.join("broken"), "no-colon-s3cret\n").unwrap();
        let env = Arc::new(RunEnv { credentials_dir: Some(dir.clone()), ..RunEnv::new_test() });
        let mut ctx = RunContext::new(env.clone(), "t");
        let r = proxy_for(&mut ctx, &set("http://127.0.0.1:3128", &[], Some("proxy")), &url("http://a.test/")).unwrap().unwrap();
        use base64::Engine as _;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("agent:s3cret-proxy-pw"));
        let auth = r.auth.unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), want);
        assert_eq!(ctx.redact("s3cret-proxy-pw"), REDACTED);
        let e = proxy_for(&mut ctx, &set("http://127.0.0.1:3128", &[], Some("broken")), &url("http://a.test/")).err().unwrap();
        assert!(e.message.contains("expected `user:password` in the credentials file `broken`"), "{}", e.message);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        let e = proxy_for(&mut ctx, &set("http://127.0.0.1:3128", &[], Some("missing")), &url("http://a.test/")).err().unwrap();
        assert!(e.message.starts_with("proxy credentials: cannot read secret `missing`"), "{}", e.message);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_step_proxy_the_agents_is_used() {
        let env = Arc::new(RunEnv { proxy: Some(ProxySpec::Url("http://127.0.0.1:3129".into())), ..RunEnv::new_test() });
        let mut ctx = RunContext::new(env, "t");
        let r = proxy_for(&mut ctx, &ProxyChoice::Inherit, &url("http://a.test/")).unwrap().expect("the agent's proxy");
        assert_eq!(r.port, 3129);
        assert!(proxy_for(&mut ctx, &set("none", &[], None), &url("http://a.test/")).unwrap().is_none(), "the step's `none` wins");
    }

    /// A connection over an in-memory pipe: HTTP/1.1 needs no bytes to start.
    async fn conn(via_proxy: Option<Option<HeaderValue>>) -> (Conn, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(4096);
        (plain(a, HttpVersion::V1_1, via_proxy).await.expect("an HTTP/1.1 connection"), b)
    }

    #[tokio::test]
    async fn requests_carry_host_agent_run_id_and_cookies_and_step_headers_win() {
        let ctx = RunContext::new_test();
        let (c, _peer) = conn(None).await;
        let u = url("http://example.test:8080/p?q=1");
        ctx.cookies.add_cookie_str("session=abc", &u);
        let headers = vec![("User-Agent".to_string(), "custom".to_string()), ("X-Api-Key".to_string(), "k".to_string())];
        let body = Bytes::from_static(b"{}");
        let req = Req { method: &Method::POST, url: &u, headers: &headers, body: &body, content_type: Some("application/json") };
        let r = build_request(&ctx, &req, &c, "example.test").unwrap();
        assert_eq!(r.uri(), "/p?q=1");
        let h = r.headers();
        assert_eq!(h["host"], "example.test:8080");
        assert_eq!(h["user-agent"], "custom", "a step header replaces the default");
        assert_eq!(h.get_all("user-agent").iter().count(), 1);
        assert_eq!(h["accept-encoding"], ACCEPT_ENCODING);
        assert_eq!(h["x-synthetic-run"], ctx.run_id.as_str());
        assert_eq!(h["cookie"], "session=abc");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-api-key"], "k");
        assert!(h.get("proxy-authorization").is_none() && h.get("traceparent").is_none());

        let plain_url = url("http://example.test/");
        let req = Req { method: &Method::GET, url: &plain_url, headers: &[], body: &Bytes::new(), content_type: None };
        let r = build_request(&ctx, &req, &c, "example.test").unwrap();
        assert_eq!(r.headers()["host"], "example.test", "no port when the URL names none");
        assert_eq!(r.headers()["user-agent"], crate::user_agent().as_str());
    }

    #[tokio::test]
    async fn through_a_plain_http_proxy_the_target_is_absolute_with_its_credentials() {
        let ctx = RunContext::new_test();
        let auth = HeaderValue::from_static("Basic dTpw");
        let (c, _peer) = conn(Some(Some(auth.clone()))).await;
        let u = url("http://example.test/p?q=1");
        let req = Req { method: &Method::GET, url: &u, headers: &[], body: &Bytes::new(), content_type: None };
        let r = build_request(&ctx, &req, &c, "example.test").unwrap();
        assert_eq!(r.uri(), "http://example.test/p?q=1");
        assert_eq!(r.headers()["proxy-authorization"], auth);
    }

    #[tokio::test]
    async fn an_invalid_step_header_is_a_config_error_naming_it() {
        let ctx = RunContext::new_test();
        let (c, _peer) = conn(None).await;
        let u = url("http://example.test/");
        let headers = vec![("bad header".to_string(), "v".to_string())];
        let req = Req { method: &Method::GET, url: &u, headers: &headers, body: &Bytes::new(), content_type: None };
        let e = build_request(&ctx, &req, &c, "example.test").unwrap_err();
        assert_eq!(e.error_type, ErrorType::Config);
        assert_eq!(e.message, "invalid header name `bad header`");
    }
}
