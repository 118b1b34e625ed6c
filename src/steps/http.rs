//! `http` step. Built on hyper's connection API (the engine under reqwest)
//! because probes need each phase timed apart: dns, connect, tls, ttfb and
//! transfer, like blackbox_exporter reports. Connections are reused within a
//! run (like a browser session) and never across runs (each run is a new user).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use reqwest::cookie::CookieStore;
use url::Url;

use crate::config::model::ByteSize;
use crate::config::template::{JsonTemplate, Template};
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::{RunContext, RunStateSlot};
use crate::steps::net::{connect_tcp, handshake};
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{fmt_dur, ErrorType, Observation, Phase, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub json: Option<serde_json::Value>,
    pub form: Option<BTreeMap<String, String>>,
    #[serde(default = "crate::config::model::default_true")]
    pub follow_redirects: bool,
    #[serde(default = "crate::config::model::default_true")]
    pub tls_verify: bool,
    /// Extra PEM file of trusted CAs (private PKI, self-signed targets).
    pub ca_file: Option<String>,
    /// Bodies larger than this are cut and the step fails with `body_too_large`.
    pub max_body: Option<ByteSize>,
}

fn default_method() -> String {
    "GET".into()
}

pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const MAX_REDIRECTS: usize = 10;

/// Open connections of one run, by `scheme://host:port`.
#[derive(Default)]
pub struct ConnectionCache {
    conns: HashMap<String, SendRequest<Full<Bytes>>>,
    /// Origins this run has talked to, for cookie look-ups by name.
    visited: Vec<Url>,
}

/// Dropped with the run: closing a connection is dropping its sender.
impl RunStateSlot for ConnectionCache {}

#[derive(Debug)]
enum Body {
    None,
    Raw(Template),
    Json(JsonTemplate),
    Form(Vec<(String, Template)>),
}

/// What `http` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo =
    KindInfo { name: "http", span_kind: opentelemetry::trace::SpanKind::Client, needs: Needs::NONE, phases: crate::vocab::PhaseRecording::PhaseHistogram, default_status: Some((200, 399)) };

/// Builds a `http` step from its config (the registry calls this).
pub fn compile(spec: &HttpSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let _ = step;
    HttpStep::compile(spec, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct HttpStep {
    method: Method,
    url: Template,
    headers: Vec<(String, Template)>,
    body: Body,
    follow_redirects: bool,
    tls_verify: bool,
    ca_file: Option<Template>,
    max_body: u64,
}

impl HttpStep {
    pub fn compile(spec: &HttpSpec, c: &mut Checker) -> Option<HttpStep> {
        let method =
            Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes()).map_err(|_| c.error("http.method", &format!("expected an HTTP method like GET or POST, got `{}`", spec.method))).ok()?;
        let url = c.template("http.url", &spec.url);
        if url.is_literal() {
            let text = url.render(|_| Err::<String, ()>(())).unwrap_or_default();
            match Url::parse(&text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => c.error("http.url", &format!("expected an absolute http:// or https:// URL, got `{text}`")),
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &spec.headers {
            if HeaderName::from_bytes(k.as_bytes()).is_err() {
                c.error(&format!("http.headers.{k}"), "invalid header name");
            }
            headers.push((k.clone(), c.template(&format!("http.headers.{k}"), v)));
        }
        let given = [spec.body.is_some(), spec.json.is_some(), spec.form.is_some()].iter().filter(|b| **b).count();
        if given > 1 {
            c.error("http", "expected at most one of `body`, `json` or `form`");
        }
        let body = if let Some(b) = &spec.body {
            Body::Raw(c.template("http.body", b))
        } else if let Some(j) = &spec.json {
            Body::Json(c.json_template("http.json", j))
        } else if let Some(f) = &spec.form {
            Body::Form(f.iter().map(|(k, v)| (k.clone(), c.template(&format!("http.form.{k}"), v))).collect())
        } else {
            Body::None
        };
        Some(HttpStep {
            method,
            url,
            headers,
            body,
            follow_redirects: spec.follow_redirects,
            tls_verify: spec.tls_verify,
            ca_file: spec.ca_file.as_deref().map(|f| c.template("http.ca_file", f)),
            max_body: spec.max_body.map(|b| b.0).unwrap_or(DEFAULT_MAX_BODY),
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let url_text = ctx.render(&self.url)?;
        let mut url = Url::parse(&url_text).map_err(|e| StepError::new(ErrorType::Config, format!("`{url_text}` is not a valid URL: {e}")))?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, t) in &self.headers {
            headers.push((k.clone(), ctx.render(t)?));
        }
        let (mut body, content_type) = self.render_body(ctx)?;
        let tls = TlsChoice {
            verify: self.tls_verify,
            ca_file: match &self.ca_file {
                Some(t) => Some(ctx.render(t)?),
                None => None,
            },
        };
        let mut method = self.method.clone();
        let mut obs = Observation::default();
        let mut phase_totals: Vec<Phase> = Vec::new();
        let mut hops = 0;
        loop {
            let res = send_once(ctx, &method, &url, &headers, &body, content_type, &tls, self.max_body, &mut phase_totals).await;
            let (status, resp_headers, resp_body, truncated, cert) = match res {
                Ok(r) => r,
                Err(e) => {
                    obs.phases = phase_totals;
                    obs.attributes = attributes(&method, &url, None);
                    return Err(e.with_observation(&obs));
                }
            };
            obs.cert_not_after = cert.or(obs.cert_not_after);
            let location = resp_headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
            let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
            if self.follow_redirects && redirect && !truncated {
                if let Some(loc) = location {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        obs.phases = phase_totals;
                        return Err(StepError::new(ErrorType::Protocol, format!("more than {MAX_REDIRECTS} redirects, last to `{loc}`")).with_observation(&obs));
                    }
                    url = url.join(&loc).map_err(|e| StepError::new(ErrorType::Protocol, format!("redirect to invalid location `{loc}`: {e}")))?;
                    if status == 303 || (matches!(status, 301 | 302) && method == Method::POST) {
                        method = Method::GET;
                        body = Bytes::new();
                    }
                    continue;
                }
            }
            obs.status = Some(status);
            obs.headers = resp_headers;
            obs.body = resp_body;
            obs.phases = phase_totals;
            obs.attributes = attributes(&method, &url, Some(status));
            obs.attributes.push(KeyValue::new("http.redirects", hops as i64));
            if truncated {
                return Err(StepError::new(
                    ErrorType::BodyTooLarge,
                    format!("expected a body of at most {} bytes (max_body), the response was larger; read the first {} bytes and stopped", self.max_body, self.max_body),
                )
                .with_observation(&obs));
            }
            return Ok(obs);
        }
    }

    fn render_body(&self, ctx: &mut RunContext) -> Result<(Bytes, Option<&'static str>), StepError> {
        Ok(match &self.body {
            Body::None => (Bytes::new(), None),
            Body::Raw(t) => (Bytes::from(ctx.render(t)?), None),
            Body::Json(v) => {
                let rendered = v.render(&mut |t| ctx.render(t))?;
                (Bytes::from(serde_json::to_vec(&rendered).expect("JSON value serializes")), Some("application/json"))
            }
            Body::Form(fields) => {
                let mut ser = url::form_urlencoded::Serializer::new(String::new());
                for (k, t) in fields {
                    ser.append_pair(k, &ctx.render(t)?);
                }
                (Bytes::from(ser.finish()), Some("application/x-www-form-urlencoded"))
            }
        })
    }
}

fn attributes(method: &Method, url: &Url, status: Option<u16>) -> Vec<KeyValue> {
    let mut clean = url.clone();
    let _ = clean.set_password(None);
    let _ = clean.set_username("");
    let mut a = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.full", clean.to_string()),
        KeyValue::new("server.address", url.host_str().unwrap_or_default().to_string()),
        KeyValue::new("server.port", url.port_or_known_default().unwrap_or(0) as i64),
    ];
    if let Some(s) = status {
        a.push(KeyValue::new("http.response.status_code", s as i64));
    }
    a
}

fn add_phase(totals: &mut Vec<Phase>, name: &'static str, d: std::time::Duration) {
    match totals.iter_mut().find(|p| p.name == name) {
        Some(p) => p.duration += d,
        None => totals.push(Phase { name, duration: d }),
    }
}

/// How to verify the server's certificate.
struct TlsChoice {
    verify: bool,
    ca_file: Option<String>,
}

type Response = (u16, Vec<(String, String)>, Bytes, bool, Option<std::time::SystemTime>);

#[allow(clippy::too_many_arguments)]
async fn send_once(
    ctx: &mut RunContext,
    method: &Method,
    url: &Url,
    headers: &[(String, String)],
    body: &Bytes,
    content_type: Option<&'static str>,
    tls: &TlsChoice,
    max_body: u64,
    totals: &mut Vec<Phase>,
) -> Result<Response, StepError> {
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(StepError::new(ErrorType::Config, format!("unsupported URL scheme `{other}`: expected http or https"))),
    };
    let host = url.host_str().ok_or_else(|| StepError::new(ErrorType::Config, format!("URL `{url}` has no host")))?.to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let key = format!("{}://{host}:{port}#{}#{}", url.scheme(), tls.verify, tls.ca_file.as_deref().unwrap_or(""));
    let mut cert = None;

    let reusable = ctx.state.get_mut::<ConnectionCache>().conns.get(&key).is_some_and(|s| !s.is_closed() && s.is_ready());
    let mut sender = if reusable {
        ctx.state.get_mut::<ConnectionCache>().conns.remove(&key).expect("checked above")
    } else {
        let mut phases = Vec::new();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let (tcp, _) = connect_tcp(ctx, bare_host, port, &mut phases).await?;
        let sender = if https {
            let cfg = ctx.env.tls.pick(tls.verify, tls.ca_file.as_deref())?;
            let (tls, facts) = handshake(ctx, tcp, bare_host, cfg, &mut phases).await?;
            cert = facts.not_after;
            start_http1(TokioIo::new(tls)).await?
        } else {
            start_http1(TokioIo::new(tcp)).await?
        };
        for p in phases {
            add_phase(totals, p.name, p.duration);
        }
        sender
    };

    let mut req = http::Request::builder().method(method.clone()).uri(origin_form(url));
    let hdrs = req.headers_mut().expect("fresh builder");
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    hdrs.insert(http::header::HOST, header_value(&host_header)?);
    hdrs.insert(http::header::USER_AGENT, header_value(&ctx.env.user_agent)?);
    hdrs.insert(HeaderName::from_static("x-synthetic-run"), header_value(&ctx.run_id)?);
    let sc = ctx.trace_cx.span().span_context().clone();
    if sc.is_valid() {
        let tp = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
        hdrs.insert(HeaderName::from_static("traceparent"), header_value(&tp)?);
    }
    if let Some(c) = ctx.cookies.cookies(url) {
        hdrs.insert(http::header::COOKIE, c);
    }
    if let Some(ct) = content_type {
        hdrs.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| StepError::new(ErrorType::Config, format!("invalid header name `{k}`")))?;
        hdrs.insert(name, header_value(v)?);
    }
    let req = req.body(Full::new(body.clone())).map_err(|e| StepError::new(ErrorType::Config, format!("cannot build the request: {e}")))?;

    let exchange = ctx.exchange_request(&req, body);
    ctx.waiting_for = "the response headers (time to first byte)";
    let t = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| {
        let kind = if e.is_incomplete_message() || e.is_closed() { "the server closed the connection before responding" } else { "invalid response" };
        StepError::new(ErrorType::Protocol, format!("{kind}: {e}"))
    })?;
    add_phase(totals, "ttfb", t.elapsed());

    let status = resp.status().as_u16();
    let resp_headers: Vec<(String, String)> = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let set_cookies: Vec<HeaderValue> = resp.headers().get_all(http::header::SET_COOKIE).iter().cloned().collect();
    if !set_cookies.is_empty() {
        ctx.cookies.set_cookies(&mut set_cookies.iter(), url);
    }
    let origin = Url::parse(&url.origin().ascii_serialization()).expect("origin of a valid URL");
    if !ctx.state.get_mut::<ConnectionCache>().visited.contains(&origin) {
        ctx.state.get_mut::<ConnectionCache>().visited.push(origin);
    }
    let keep_alive = !resp.headers().get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));

    ctx.waiting_for = "the response body";
    let t = Instant::now();
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| StepError::new(ErrorType::Protocol, format!("the body broke off after {} bytes and {}: {e}", buf.len(), fmt_dur(t.elapsed()))))?;
        if let Ok(data) = frame.into_data() {
            let room = (max_body as usize).saturating_sub(buf.len());
            if data.len() > room {
                buf.extend_from_slice(&data[..room]);
                truncated = true;
                break;
            }
            buf.extend_from_slice(&data);
        }
    }
    add_phase(totals, "transfer", t.elapsed());
    ctx.log_exchange(exchange, status, &resp_headers, &buf);
    if keep_alive && !truncated {
        ctx.state.get_mut::<ConnectionCache>().conns.insert(key, sender);
    }
    Ok((status, resp_headers, buf.freeze(), truncated, cert))
}

async fn start_http1<T>(io: T) -> Result<SendRequest<Full<Bytes>>, StepError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| StepError::new(ErrorType::Protocol, format!("HTTP/1.1 handshake failed: {e}")))?;
    // Ends when the run drops its sender or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
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

/// A cookie's value from the run's jar, for any URL the run has visited.
pub fn jar_cookie(ctx: &RunContext, name: &str) -> Option<String> {
    ctx.state.get::<ConnectionCache>().into_iter().flat_map(|c| c.visited.iter()).find_map(|url| {
        let header = ctx.cookies.cookies(url)?;
        header.to_str().ok()?.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    })
}

impl StepKind for HttpStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Tls, ErrorType::Timeout, ErrorType::HttpStatus, ErrorType::Assertion, ErrorType::BodyTooLarge, ErrorType::Protocol, ErrorType::Config]
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionCache;
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `responses` in order on one keep-alive connection.
    async fn server(responses: Vec<&'static str>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for resp in responses {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                    req.extend_from_slice(&buf[..n]);
                }
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        port
    }

    #[tokio::test]
    async fn gets_checks_and_reuses_the_connection() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let port = server(vec![ok, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"]).await;
        let step = test_step(&format!("name: get\nhttp: {{url: \"http://127.0.0.1:{port}/\"}}\nassert: {{body_contains: hello}}\n"));
        let mut ctx = RunContext::new_test();
        let (obs, _) = attempt(&mut ctx, &step).await.expect("200 with hello");
        assert_eq!(obs.status, Some(200));
        let phases: Vec<&str> = obs.phases.iter().map(|p| p.name).collect();
        assert!(phases.contains(&"connect") && phases.contains(&"ttfb"), "{phases:?}");
        assert_eq!(ctx.state.get::<ConnectionCache>().map(|c| c.conns.len()), Some(1), "kept alive for the next step");
        // Second request on the same connection (the server accepts only one): 503 fails the default status check.
        let e = attempt(&mut ctx, &step).await.expect_err("503");
        assert_eq!(e.error_type, ErrorType::HttpStatus, "{}", e.message);
    }
}
