//! `http` step. Built on hyper's connection API (the engine under reqwest)
//! because probes need each phase timed apart: dns, connect, tls, ttfb and
//! transfer, like blackbox_exporter reports. Connections are reused within a
//! run (like a browser session) and never across runs (each run is a new user).
//! [`client`] does one exchange (proxy, TLS/ALPN, HTTP/1.1 or 2, the stale
//! connection retry), [`decode`] the body; this file the step and redirects.

mod client;
mod decode;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::header::HeaderName;
use http::Method;
use opentelemetry::KeyValue;
use reqwest::cookie::CookieStore;
use url::Url;

pub use client::ConnectionCache;
pub(crate) use client::{proxy_for, tunnel};
use client::{Options, Req, TlsChoice};

use crate::config::agent::{ProxySettings, ProxySpec};
use crate::config::model::ByteSize;
use crate::config::template::{JsonTemplate, Template};
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{ErrorType, Observation, Phase, StepError};
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
    /// Follow a redirect from https:// to http:// (refused by default).
    #[serde(default)]
    pub allow_insecure_redirects: bool,
    #[serde(default = "crate::config::model::default_true")]
    pub tls_verify: bool,
    /// Extra PEM file of trusted CAs (private PKI, self-signed targets).
    pub ca_file: Option<String>,
    /// Certificate revocation lists (PEM or DER): a certificate they list fails as revoked.
    pub crl_file: Option<String>,
    /// Bodies larger than this (after decoding) are cut and the step fails with `body_too_large`.
    pub max_body: Option<ByteSize>,
    /// `auto` (HTTP/2 when the server offers it through ALPN), `"1.1"` or `"2"`.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// `none`, `http://host:port` (optionally with `user:password@`), or
    /// `{url, credentials, no_proxy}`; default: the agent's `proxy`, else
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`.
    pub proxy: Option<ProxySpec>,
    /// Keep the body as sent (compressed) instead of decoding it.
    #[serde(default)]
    pub raw_body: bool,
}

/// Which HTTP version a step speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[derive(schemars::JsonSchema)]
pub enum HttpVersion {
    #[default]
    Auto,
    V1_1,
    V2,
}

impl<'de> Deserialize<'de> for HttpVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HttpVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto`, `\"1.1\"` or `\"2\"`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HttpVersion, E> {
                match v {
                    "auto" => Ok(HttpVersion::Auto),
                    "1.1" => Ok(HttpVersion::V1_1),
                    "2" | "2.0" => Ok(HttpVersion::V2),
                    _ => Err(E::custom(format!("expected `auto`, `\"1.1\"` or `\"2\"`, got `{v}`"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HttpVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HttpVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HttpVersion, E> {
                self.visit_str(if v == 1.1 {
                    "1.1"
                } else if v == 2.0 {
                    "2"
                } else {
                    "?"
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a step's requests go through.
#[derive(Debug, Clone)]
pub(crate) enum ProxyChoice {
    /// The agent's `proxy:`, else `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (and their lower-case forms).
    Inherit,
    /// The step's own (`url: none` included).
    Set(Arc<ProxySettings>),
}

/// `crl_file` with verification off would pass revoked certificates silently.
pub(crate) const CRL_WITHOUT_VERIFY: &str =
    "a CRL cannot be checked when certificate verification is off (`tls_verify: false`/`verify: false`): no certificate would ever be found revoked; remove `crl_file` or turn verification on";

/// A step's own `proxy:` (its problems reported under `KIND.proxy`), else the agent's or the environment's.
pub(crate) fn compile_proxy(spec: Option<&ProxySpec>, kind: &str, c: &mut Checker) -> ProxyChoice {
    let Some(p) = spec else { return ProxyChoice::Inherit };
    for (k, m) in p.problems() {
        let key = if matches!(p, ProxySpec::Url(_)) { format!("{kind}.proxy") } else { format!("{kind}.proxy.{k}") };
        c.error(&key, &m);
    }
    ProxyChoice::Set(Arc::new(p.settings()))
}

fn default_method() -> String {
    "GET".into()
}

pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const MAX_REDIRECTS: usize = 10;
/// How long before the step's deadline the step gives up by itself (with its phases).
const CUT_MARGIN: Duration = Duration::from_millis(20);
/// Request headers that carry credentials: not sent to another origin after a redirect.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
/// Headers that describe a body, dropped with it when a redirect turns the request into a GET.
const BODY_HEADERS: [&str; 4] = ["content-type", "content-length", "content-encoding", "transfer-encoding"];

#[derive(Debug)]
enum Body {
    None,
    Raw(Template),
    Json(JsonTemplate),
    Form(Vec<(String, Template)>),
}

/// What `http` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo =
    KindInfo { name: "http", span_kind: opentelemetry::trace::SpanKind::Client, needs: Needs::NETWORK, phases: crate::vocab::PhaseRecording::PhaseHistogram, default_status: Some((200, 399)) };

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
    allow_insecure_redirects: bool,
    tls_verify: bool,
    ca_file: Option<Template>,
    crl_file: Option<Template>,
    max_body: u64,
    version: HttpVersion,
    proxy: ProxyChoice,
    raw_body: bool,
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
                c.key_error(&format!("http.headers.{k}"), &format!("`{k}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"));
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
        if spec.crl_file.is_some() && !spec.tls_verify {
            c.error("http.crl_file", CRL_WITHOUT_VERIFY);
        }
        let proxy = compile_proxy(spec.proxy.as_ref(), "http", c);
        Some(HttpStep {
            method,
            url,
            headers,
            body,
            follow_redirects: spec.follow_redirects,
            allow_insecure_redirects: spec.allow_insecure_redirects,
            tls_verify: spec.tls_verify,
            ca_file: spec.ca_file.as_deref().map(|f| c.template("http.ca_file", f)),
            crl_file: spec.crl_file.as_deref().map(|f| c.template("http.crl_file", f)),
            max_body: spec.max_body.map(|b| b.0).unwrap_or(DEFAULT_MAX_BODY),
            version: spec.http_version,
            proxy,
            raw_body: spec.raw_body,
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let url_text = ctx.render(&self.url)?;
        let mut url = Url::parse(&url_text).map_err(|e| StepError::new(ErrorType::Config, format!("`{url_text}` is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StepError::new(ErrorType::Config, format!("unsupported URL scheme `{}`: expected http or https", url.scheme())));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, t) in &self.headers {
            headers.push((k.clone(), ctx.render(t)?));
        }
        let (mut body, mut content_type) = self.render_body(ctx)?;
        let opts = Options {
            tls: TlsChoice {
                verify: self.tls_verify,
                ca_file: match &self.ca_file {
                    Some(t) => Some(ctx.render(t)?),
                    None => None,
                },
                crl_file: match &self.crl_file {
                    Some(t) => Some(ctx.render(t)?),
                    None => None,
                },
            },
            version: self.version,
            proxy: self.proxy.clone(),
            max_body: self.max_body,
            raw_body: self.raw_body,
        };
        let mut method = self.method.clone();
        let mut obs = Observation::default();
        let mut phase_totals: Vec<Phase> = Vec::new();
        let mut chain = vec![url.clone()];
        let cut = ctx.step_deadline.and_then(|d| d.checked_sub(CUT_MARGIN));
        loop {
            let req = Req { method: &method, url: &url, headers: &headers, body: &body, content_type };
            // Give up just before the runner cuts the step off, so the phases so far are kept.
            let sent = match cut {
                Some(at) => tokio::time::timeout_at(at.into(), client::send(ctx, &req, &opts, &mut phase_totals)).await,
                None => Ok(client::send(ctx, &req, &opts, &mut phase_totals).await),
            };
            let sent = sent.unwrap_or_else(|_| Err(StepError::new(ErrorType::Timeout, ctx.deadline_message())));
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    obs.phases = phase_totals;
                    obs.attributes = attributes(&method, &url, None);
                    return Err(e.with_observation(&obs));
                }
            };
            obs.cert_not_after = resp.cert.or(obs.cert_not_after);
            let location = resp.headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
            let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
            if self.follow_redirects && redirect && !resp.truncated {
                if let Some(loc) = location {
                    let fail = |obs: &mut Observation, phases: Vec<Phase>, e: StepError| {
                        obs.phases = phases;
                        e.with_observation(obs)
                    };
                    let next = match url.join(&loc) {
                        Ok(n) => n,
                        Err(e) => return Err(fail(&mut obs, phase_totals, StepError::new(ErrorType::Protocol, format!("`{}` redirected to an invalid location `{loc}`: {e}", display_url(&url))))),
                    };
                    if let Err(e) = self.check_redirect(&url, &next, &chain) {
                        return Err(fail(&mut obs, phase_totals, e));
                    }
                    if url.origin() != next.origin() {
                        headers.retain(|(k, _)| !CREDENTIAL_HEADERS.iter().any(|c| k.eq_ignore_ascii_case(c)));
                    }
                    let to_get = (resp.status == 303 && method != Method::HEAD) || (matches!(resp.status, 301 | 302) && method == Method::POST);
                    if to_get {
                        method = Method::GET;
                        body = Bytes::new();
                        content_type = None;
                        headers.retain(|(k, _)| !BODY_HEADERS.iter().any(|c| k.eq_ignore_ascii_case(c)));
                    }
                    url = next;
                    chain.push(url.clone());
                    continue;
                }
            }
            obs.status = Some(resp.status);
            obs.headers = resp.headers;
            obs.body = resp.body;
            obs.phases = phase_totals;
            obs.attributes = attributes(&method, &url, Some(resp.status));
            obs.attributes.push(KeyValue::new("http.redirects", (chain.len() - 1) as i64));
            obs.attributes.push(KeyValue::new("network.protocol.name", "http"));
            obs.attributes.push(KeyValue::new("network.protocol.version", resp.version));
            if let Some(d) = &resp.decoded {
                obs.attributes.push(KeyValue::new("http.response.content_encoding", d.clone()));
            }
            if resp.truncated {
                let what = if resp.decoded.is_some() { "decoded body" } else { "body" };
                return Err(StepError::new(
                    ErrorType::BodyTooLarge,
                    format!("expected a {what} of at most {} bytes (max_body), the response was larger; read the first {} bytes and stopped", self.max_body, self.max_body),
                )
                .with_observation(&obs));
            }
            return Ok(obs);
        }
    }

    /// The redirect rules: no https→http unless allowed, only http(s), at most [`MAX_REDIRECTS`].
    fn check_redirect(&self, from: &Url, to: &Url, chain: &[Url]) -> Result<(), StepError> {
        if !matches!(to.scheme(), "http" | "https") {
            return Err(StepError::new(ErrorType::Protocol, format!("`{}` redirected to `{}`: expected an http:// or https:// location", display_url(from), display_url(to))));
        }
        if from.scheme() == "https" && to.scheme() == "http" && !self.allow_insecure_redirects {
            return Err(StepError::new(
                ErrorType::Protocol,
                format!("refused to follow the redirect from `{}` to `{}`: it leaves https for plain http (set `allow_insecure_redirects: true` to follow it)", display_url(from), display_url(to)),
            ));
        }
        if chain.len() > MAX_REDIRECTS {
            let mut shown: Vec<String> = chain.iter().map(|u| format!("`{}`", display_url(u))).collect();
            shown.push(format!("`{}`", display_url(to)));
            let looped = if chain.contains(to) { format!(" (a loop: `{}` was visited before)", display_url(to)) } else { String::new() };
            return Err(StepError::new(ErrorType::Protocol, format!("expected at most {MAX_REDIRECTS} redirects, got more{looped}: {}", shown.join(" → "))));
        }
        Ok(())
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

/// `url` for messages and spans: without user or password.
pub(crate) fn display_url(url: &Url) -> String {
    let mut clean = url.clone();
    let _ = clean.set_password(None);
    let _ = clean.set_username("");
    clean.to_string()
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

    /// Every run in flight carries this future: connecting (TLS, HTTP/2, a
    /// proxy tunnel) is boxed so it is not part of it (it was 10.9 KB in a
    /// debug build before, 2.5 KB after).
    #[tokio::test]
    async fn an_http_step_in_flight_stays_small() {
        use super::{HttpSpec, HttpStep};
        use crate::steps::compile::Checker;
        let spec: HttpSpec = serde_saphyr::from_str("url: http://a.test/").unwrap();
        let mut diags = Vec::new();
        let step = HttpStep::compile(&spec, &mut Checker::new(std::path::Path::new("t.yaml"), &mut diags)).unwrap();
        let mut ctx = RunContext::new_test();
        let size = std::mem::size_of_val(&step.run(&mut ctx));
        assert!(size <= 4096, "the http step's future takes {size} bytes");
    }

    #[test]
    fn http_version_accepts_auto_and_quoted_or_bare_numbers() {
        use super::HttpVersion;
        let v = |y: &str| serde_saphyr::from_str::<HttpVersion>(y);
        assert_eq!(v("auto").unwrap(), HttpVersion::Auto);
        assert_eq!(v("\"1.1\"").unwrap(), HttpVersion::V1_1);
        assert_eq!(v("1.1").unwrap(), HttpVersion::V1_1);
        assert_eq!(v("\"2\"").unwrap(), HttpVersion::V2);
        assert_eq!(v("2").unwrap(), HttpVersion::V2);
        assert!(v("3").is_err());
    }

    #[test]
    fn redirect_rules_refuse_downgrades_and_name_the_chain() {
        use super::{HttpSpec, HttpStep};
        use crate::steps::compile::Checker;
        use url::Url;
        let spec: HttpSpec = serde_saphyr::from_str("url: https://a.test/").unwrap();
        let mut diags = Vec::new();
        let step = HttpStep::compile(&spec, &mut Checker::new(std::path::Path::new("t.yaml"), &mut diags)).unwrap();
        let u = |s: &str| Url::parse(s).unwrap();
        let e = step.check_redirect(&u("https://user:pw@a.test/x"), &u("http://a.test/y"), &[u("https://a.test/x")]).unwrap_err();
        assert_eq!(e.message, "refused to follow the redirect from `https://a.test/x` to `http://a.test/y`: it leaves https for plain http (set `allow_insecure_redirects: true` to follow it)");
        assert!(step.check_redirect(&u("http://a.test/"), &u("https://b.test/"), &[u("http://a.test/")]).is_ok());
        assert!(step.check_redirect(&u("http://a.test/"), &u("ftp://b.test/"), &[]).unwrap_err().message.contains("expected an http:// or https:// location"));
        let chain: Vec<Url> = (0..=10).map(|i| u(&format!("http://a.test/{}", i % 2))).collect();
        let e = step.check_redirect(&u("http://a.test/0"), &u("http://a.test/1"), &chain).unwrap_err();
        assert!(e.message.starts_with("expected at most 10 redirects, got more (a loop: `http://a.test/1` was visited before): `http://a.test/0` → `http://a.test/1`"), "{}", e.message);
    }

    #[test]
    fn a_crl_file_with_verification_off_is_a_check_error() {
        let errs = crate::steps::compile::test_step_errors("name: c\nhttp: {url: \"https://a.test/\", tls_verify: false, crl_file: crl.pem}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("test.yaml:1:1: journey `test`, step `c`: `http.crl_file`: a CRL cannot be checked when certificate verification is off"), "{errs:?}");
        assert!(crate::steps::compile::test_step_errors("name: c\nhttp: {url: \"https://a.test/\", crl_file: crl.pem}\n").is_empty());
        assert!(crate::steps::compile::test_step_errors("name: c\nhttp: {url: \"https://a.test/\", tls_verify: false}\n").is_empty());
    }

    #[test]
    fn proxy_settings_are_checked() {
        let errs = crate::steps::compile::test_step_errors("name: p\nhttp: {url: \"http://a.test/\", proxy: \"socks5://p.test:1080\"}\n");
        assert!(errs.iter().any(|e| e.contains("expected `none` or an http://host:port proxy URL, got `socks5://p.test:1080`")), "{errs:?}");
        assert!(crate::steps::compile::test_step_errors("name: p\nhttp: {url: \"http://a.test/\", proxy: none}\n").is_empty());
    }
}
