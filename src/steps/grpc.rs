//! `grpc` step: the standard health check, `grpc.health.v1.Health/Check`,
//! over HTTP/2 (plaintext h2c, or TLS with ALPN `h2`). The connection is made
//! with the shared [`net`](crate::steps::net) helpers so `dns`, `connect` and
//! `tls` mean what they mean for `http`; `rpc` is the call itself (HTTP/2
//! handshake, request and response). Each run opens its own connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use serde::Deserialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::model::default_true;
use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::net::{connect_tcp, handshake, split_host_port};
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{ErrorType, Observation, Phase, PhaseMetric, PhaseRecording, StepError};

/// A gRPC health check, as written in a probe file.
#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// `host:port` of the gRPC server.
    pub address: String,
    /// The service to ask about; empty (the default) asks about the server as a whole.
    #[serde(default)]
    pub service: String,
    /// Connect with TLS (ALPN `h2`); without it, plaintext HTTP/2 (h2c).
    #[serde(default)]
    pub tls: bool,
    /// Verify the server's certificate (with `tls: true`).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Extra PEM file of trusted CAs (with `tls: true`).
    pub ca_file: Option<String>,
    /// SNI and the name to verify; default: the host part of `address`.
    pub server_name: Option<String>,
    /// The serving status the step expects: `SERVING` (default), `NOT_SERVING`,
    /// `SERVICE_UNKNOWN` or `UNKNOWN`.
    #[serde(default)]
    pub expect: Expected,
    /// Request metadata (gRPC headers such as `authorization`), templated.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A serving status as written in probe files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Expected {
    #[default]
    Serving,
    NotServing,
    ServiceUnknown,
    Unknown,
}

impl Expected {
    fn status(self) -> ServingStatus {
        match self {
            Expected::Serving => ServingStatus::Serving,
            Expected::NotServing => ServingStatus::NotServing,
            Expected::ServiceUnknown => ServingStatus::ServiceUnknown,
            Expected::Unknown => ServingStatus::Unknown,
        }
    }
}

/// The `rpc` phase has its own histogram; connection phases stay on the span.
pub const METRICS: &[PhaseMetric] = &[PhaseMetric::new("rpc", "synthetics.grpc.rpc.duration", "Time of the gRPC health check call (HTTP/2 handshake, request and response)", None)];

/// What `grpc` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "grpc", span_kind: opentelemetry::trace::SpanKind::Client, needs: Needs::NETWORK, phases: PhaseRecording::Own(METRICS), default_status: None };

/// Builds a `grpc` step from its config (the registry calls this).
pub fn compile(spec: &GrpcSpec, _step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let mut metadata = Vec::new();
    for (k, v) in &spec.metadata {
        match AsciiMetadataKey::from_bytes(k.as_bytes()) {
            Ok(key) => metadata.push((key, c.template(&format!("grpc.metadata.{k}"), v))),
            Err(_) => c.error(&format!("grpc.metadata.{k}"), "expected a lowercase ASCII gRPC metadata name (binary `-bin` metadata is not supported)"),
        }
    }
    if !spec.tls && (spec.ca_file.is_some() || spec.server_name.is_some() || !spec.tls_verify) {
        c.error("grpc", "`ca_file`, `server_name` and `tls_verify` only apply with `tls: true`");
    }
    Some(Box::new(GrpcStep {
        address: c.template("grpc.address", &spec.address),
        service: c.template("grpc.service", &spec.service),
        tls: spec.tls,
        tls_verify: spec.tls_verify,
        ca_file: spec.ca_file.as_deref().map(|f| c.template("grpc.ca_file", f)),
        server_name: spec.server_name.as_deref().map(|s| c.template("grpc.server_name", s)),
        expect: spec.expect,
        metadata,
    }))
}

#[derive(Debug)]
struct GrpcStep {
    address: Template,
    service: Template,
    tls: bool,
    tls_verify: bool,
    ca_file: Option<Template>,
    server_name: Option<Template>,
    expect: Expected,
    metadata: Vec<(AsciiMetadataKey, Template)>,
}

impl GrpcStep {
    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let address = ctx.render(&self.address)?;
        let (host, port) = split_host_port(&address)?;
        let service = ctx.render(&self.service)?;
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.clone() });
        for (k, t) in &self.metadata {
            let v = ctx.render(t)?;
            let v = AsciiMetadataValue::try_from(v.as_str()).map_err(|_| StepError::new(ErrorType::Config, format!("gRPC metadata `{k}` contains characters not allowed in a header value")))?;
            request.metadata_mut().insert(k.clone(), v);
        }

        let mut obs = Observation::default();
        obs.attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "grpc.health.v1.Health"),
            KeyValue::new("rpc.method", "Check"),
            KeyValue::new("server.address", host.clone()),
            KeyValue::new("server.port", port as i64),
            KeyValue::new("grpc.health.service", service.clone()),
        ];
        let (tcp, _) = connect_tcp(ctx, &host, port, &mut obs.phases).await.map_err(|e| keep(e, &obs))?;
        // The URI only gives `:authority`; the stream is connected (and TLS done) already,
        // and tonic refuses an `https` URI unless it does the TLS itself.
        let uri = format!("http://{}", if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") });
        let endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|_| StepError::new(ErrorType::Config, format!("`{address}` is not a valid gRPC address")))?;
        let t;
        let channel = if self.tls {
            let ca = self.ca_file.as_ref().map(|f| ctx.render(f)).transpose()?;
            let name = match &self.server_name {
                Some(s) => ctx.render(s)?,
                None => host.clone(),
            };
            let mut cfg = (*ctx.env.tls()?.pick(self.tls_verify, ca.as_deref())?).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let (stream, facts) = handshake(ctx, tcp, &name, Arc::new(cfg), &mut obs.phases).await.map_err(|e| keep(e, &obs))?;
            obs.cert_not_after = facts.not_after;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(StepError::new(ErrorType::Protocol, format!("{address} did not agree to HTTP/2 during the TLS handshake (ALPN `h2`), so it cannot speak gRPC over TLS")).with_observation(&obs));
            }
            ctx.waiting_for = "the gRPC health check response";
            t = Instant::now();
            endpoint.connect_with_connector(one_stream(stream)).await
        } else {
            ctx.waiting_for = "the gRPC health check response";
            t = Instant::now();
            endpoint.connect_with_connector(one_stream(tcp)).await
        }
        .map_err(|e| StepError::new(ErrorType::Protocol, format!("the HTTP/2 handshake with {address} failed: {}", plain(&e))).with_observation(&obs))?;

        let reply = HealthClient::new(channel).check(request).await;
        obs.phases.push(Phase { name: "rpc", duration: t.elapsed() });
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                obs.attributes.push(KeyValue::new("rpc.grpc.status_code", status.code() as i64));
                return Err(status_error(&address, &service, &status).with_observation(&obs));
            }
        };
        obs.attributes.push(KeyValue::new("rpc.grpc.status_code", 0i64));
        let got = ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown);
        obs.attributes.push(KeyValue::new("grpc.health.status", got.as_str_name()));
        obs.body = bytes::Bytes::from(got.as_str_name());
        if got != self.expect.status() {
            let what = if service.is_empty() { "the server".to_string() } else { format!("service `{service}`") };
            return Err(StepError::new(ErrorType::Assertion, format!("expected {what} at {address} to report {}, it reported {}", self.expect.status().as_str_name(), got.as_str_name())).with_observation(&obs));
        }
        Ok(obs)
    }
}

/// Keeps the phases measured so far on a connection failure.
fn keep(e: StepError, obs: &Observation) -> StepError {
    e.with_observation(obs)
}

/// A connector that hands tonic the stream this step already opened (once).
struct OneStream<S>(Option<S>);

fn one_stream<S>(stream: S) -> OneStream<S> {
    OneStream(Some(stream))
}

impl<S> tonic::codegen::Service<http::Uri> for OneStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    type Response = TokioIo<S>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<TokioIo<S>, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        std::future::ready(self.0.take().map(TokioIo::new).ok_or_else(|| std::io::Error::other("the step's connection was already used")))
    }
}

/// The words of a gRPC error for the operator, by status code.
fn status_error(address: &str, service: &str, s: &tonic::Status) -> StepError {
    use tonic::Code;
    let detail = if s.message().is_empty() { String::new() } else { format!(": {}", crate::vocab::snippet(s.message(), 200)) };
    let (error_type, what) = match s.code() {
        Code::Unimplemented => (ErrorType::Protocol, format!("{address} does not implement the gRPC health service (grpc.health.v1.Health/Check is UNIMPLEMENTED)")),
        Code::NotFound => (ErrorType::Assertion, format!("{address} does not know service `{service}` (NOT_FOUND)")),
        Code::Unavailable => (ErrorType::Connect, format!("{address} is unavailable (UNAVAILABLE)")),
        Code::DeadlineExceeded => (ErrorType::Timeout, format!("{address} did not answer in time (DEADLINE_EXCEEDED)")),
        Code::Unauthenticated | Code::PermissionDenied => (ErrorType::Protocol, format!("{address} refused the health check ({})", code_name(s.code()))),
        c => (ErrorType::Protocol, format!("{address} answered the health check with gRPC status {}", code_name(c))),
    };
    StepError::new(error_type, format!("{what}{detail}"))
}

fn code_name(c: tonic::Code) -> String {
    // `Code::description` is prose; operators know the SCREAMING_CASE names.
    format!("{c:?}").chars().fold(String::new(), |mut out, ch| {
        if ch.is_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
        out
    })
}

/// A transport error's innermost cause, without library debug formatting.
fn plain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl StepKind for GrpcStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Tls, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Protocol, ErrorType::Config]
    }
    fn default_timeout(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use tokio_util::sync::CancellationToken;
    use tonic::transport::{Identity, Server, ServerTlsConfig};
    use tonic_health::ServingStatus;

    use crate::steps::attempt;
    use crate::steps::compile::{test_step, test_step_errors};
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;

    /// A real tonic server with the standard health service on loopback;
    /// `vantage.Orders` is NOT_SERVING, the server as a whole SERVING.
    async fn health_server(tls: Option<Identity>) -> (SocketAddr, CancellationToken) {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", ServingStatus::Serving).await;
        reporter.set_service_status("vantage.Orders", ServingStatus::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let mut builder = Server::builder();
        if let Some(id) = tls {
            builder = builder.tls_config(ServerTlsConfig::new().identity(id)).unwrap();
        }
        let router = builder.add_service(service);
        let s = stop.clone();
        tokio::spawn(async move {
            let _keep = reporter;
            router.serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), s.cancelled_owned()).await.unwrap();
        });
        (addr, stop)
    }

    /// A certificate for `localhost`, and its PEM written to a private temp file (the CA to trust).
    fn localhost_cert() -> (Identity, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let path = std::env::temp_dir().join(format!("vantage-grpc-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, cert.pem()).unwrap();
        (Identity::from_pem(cert.pem(), key.serialize_pem()), path)
    }

    fn names(obs_phases: &[crate::vocab::Phase]) -> Vec<&'static str> {
        obs_phases.iter().map(|p| p.name).collect()
    }

    #[tokio::test]
    async fn a_serving_server_passes_with_connect_and_rpc_phases() {
        let (addr, stop) = health_server(None).await;
        let step = test_step(&format!("name: health\ngrpc: {{address: \"{addr}\"}}\n"));
        let (obs, _) = attempt(&mut RunContext::new_test(), &step).await.expect("SERVING passes");
        assert_eq!(names(&obs.phases), ["connect", "rpc"]);
        assert_eq!(obs.body_text(), "SERVING");
        let attr = |k: &str| obs.attributes.iter().find(|a| a.key.as_str() == k).map(|a| a.value.to_string());
        assert_eq!(attr("grpc.health.status").as_deref(), Some("SERVING"));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("0"));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_service_not_serving_fails_naming_what_was_expected_and_what_came() {
        let (addr, stop) = health_server(None).await;
        let step = test_step(&format!("name: orders\ngrpc: {{address: \"{addr}\", service: vantage.Orders}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("NOT_SERVING fails");
        assert_eq!(e.error_type, ErrorType::Assertion);
        assert_eq!(e.message, format!("expected service `vantage.Orders` at {addr} to report SERVING, it reported NOT_SERVING"));
        // ... and passes when NOT_SERVING is what the journey expects (a drained replica).
        let step = test_step(&format!("name: drained\ngrpc: {{address: \"{addr}\", service: vantage.Orders, expect: NOT_SERVING}}\n"));
        attempt(&mut RunContext::new_test(), &step).await.expect("expected NOT_SERVING");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_unknown_service_is_named() {
        let (addr, stop) = health_server(None).await;
        let step = test_step(&format!("name: nope\ngrpc: {{address: \"{addr}\", service: vantage.Missing}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("unknown service");
        assert_eq!(e.error_type, ErrorType::Assertion);
        assert!(e.message.starts_with(&format!("{addr} does not know service `vantage.Missing` (NOT_FOUND)")), "{}", e.message);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_grpc_server_without_the_health_service_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        // A real gRPC server with no services: every method is UNIMPLEMENTED.
        tokio::spawn(async move {
            Server::builder().add_routes(tonic::service::Routes::default()).serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), s.cancelled_owned()).await.unwrap();
        });
        let step = test_step(&format!("name: bare\ngrpc: {{address: \"{addr}\"}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("no health service");
        assert_eq!(e.error_type, ErrorType::Protocol);
        assert!(e.message.starts_with(&format!("{addr} does not implement the gRPC health service")), "{}", e.message);
        stop.cancel();
    }

    #[tokio::test]
    async fn tls_with_a_ca_file_records_the_handshake_and_expiry() {
        let (id, ca) = localhost_cert();
        let (addr, stop) = health_server(Some(id)).await;
        let step = test_step(&format!("name: tls\ngrpc: {{address: \"localhost:{}\", tls: true, ca_file: \"{}\"}}\n", addr.port(), ca.display()));
        let mut ctx = RunContext::new_test();
        let r = attempt(&mut ctx, &step).await;
        std::fs::remove_file(&ca).unwrap();
        let (obs, _) = r.expect("TLS health check passes");
        // `localhost` resolves through the agent's resolver: dns, then connect, tls and the call.
        assert_eq!(names(&obs.phases), ["dns", "connect", "tls", "rpc"]);
        assert!(obs.cert_not_after.is_some());
        stop.cancel();
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_as_tls_and_keeps_the_connect_phase() {
        let (id, ca) = localhost_cert();
        std::fs::remove_file(&ca).unwrap();
        let (addr, stop) = health_server(Some(id)).await;
        let step = test_step(&format!("name: tls\ngrpc: {{address: \"127.0.0.1:{}\", tls: true, server_name: localhost}}\n", addr.port()));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("self-signed, not trusted");
        assert_eq!(e.error_type, ErrorType::Tls);
        let kept = e.observation.as_ref().map(|o| o.phases.iter().map(|p| p.name).collect::<Vec<_>>()).unwrap_or_default();
        assert_eq!(kept, ["connect"]);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let step = test_step(&format!("name: closed\ngrpc: {{address: \"127.0.0.1:{port}\"}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("nothing listens");
        assert_eq!(e.error_type, ErrorType::Connect, "{}", e.message);
    }

    #[test]
    fn check_rejects_bad_metadata_names_and_tls_options_without_tls() {
        let errs = test_step_errors("name: bad\ngrpc: {address: \"127.0.0.1:1\", ca_file: ca.pem, metadata: {\"Bad Name\": x}}\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("grpc.metadata.Bad Name") && e.contains("lowercase ASCII gRPC metadata name")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("only apply with `tls: true`")), "{errs:?}");
    }
}
