//! `tcp` step: connect, optionally send, optionally read until an expected string.

use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::net::{connect_tcp, describe_io, split_host_port};
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{ErrorType, Observation, Phase, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpSpec {
    /// `host:port`
    pub address: String,
    pub send: Option<String>,
    /// Read until this substring arrives (or the step times out).
    pub expect: Option<String>,
}

/// Bytes read while waiting for `expect`, at most.
const MAX_READ: usize = 64 * 1024;

/// What `tcp` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "tcp", span_kind: opentelemetry::trace::SpanKind::Internal, needs: Needs::RESOLVER, phases: crate::vocab::PhaseRecording::None, default_status: None };

/// Builds a `tcp` step from its config (the registry calls this).
pub fn compile(spec: &TcpSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let _ = step;
    TcpStep::compile(spec, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct TcpStep {
    address: Template,
    send: Option<Template>,
    expect: Option<Template>,
}

impl TcpStep {
    pub fn compile(spec: &TcpSpec, c: &mut Checker) -> Option<TcpStep> {
        Some(TcpStep {
            address: c.template("tcp.address", &spec.address),
            send: spec.send.as_deref().map(|s| c.template("tcp.send", s)),
            expect: spec.expect.as_deref().map(|s| c.template("tcp.expect", s)),
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let address = ctx.render(&self.address)?;
        let (host, port) = split_host_port(&address)?;
        let mut obs = Observation::default();
        let (mut stream, peer) = connect_tcp(ctx, &host, port, &mut obs.phases).await?;
        obs.attributes = vec![KeyValue::new("server.address", host.clone()), KeyValue::new("server.port", port as i64), KeyValue::new("network.peer.address", peer.ip().to_string())];
        if let Some(t) = &self.send {
            let data = ctx.render(t)?;
            ctx.waiting_for = "the send to complete";
            stream.write_all(data.as_bytes()).await.map_err(|e| StepError::new(ErrorType::Connect, format!("send to {address} failed: {}", describe_io(&e))).with_observation(&obs))?;
        }
        if let Some(t) = &self.expect {
            let want = ctx.render(t)?;
            ctx.waiting_for = "the expected reply";
            let started = Instant::now();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if String::from_utf8_lossy(&buf).contains(&want) {
                    break;
                }
                if buf.len() >= MAX_READ {
                    return Err(StepError::new(ErrorType::Assertion, format!("expected `{want}` within the first {MAX_READ} bytes, got: {}", ctx.excerpt(&String::from_utf8_lossy(&buf), 200)))
                        .with_observation(&obs));
                }
                let n = stream.read(&mut chunk).await.map_err(|e| {
                    let got = if buf.is_empty() { String::new() } else { format!(": {}", ctx.excerpt(&String::from_utf8_lossy(&buf), 200)) };
                    StepError::new(ErrorType::Connect, format!("expected `{want}` from {address}, got {} after {} bytes{got}", describe_io(&e), buf.len())).with_observation(&obs)
                })?;
                if n == 0 {
                    return Err(StepError::new(ErrorType::Assertion, format!("expected `{want}`, the peer closed the connection after {} bytes: {}", buf.len(), ctx.excerpt(&String::from_utf8_lossy(&buf), 200)))
                        .with_observation(&obs));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            obs.phases.push(Phase { name: "read", duration: started.elapsed() });
            obs.body = bytes::Bytes::from(buf);
        }
        Ok(obs)
    }
}

impl StepKind for TcpStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sends_and_reads_until_the_expected_text() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(if &buf == b"PING" { b"+PONG\r\n" } else { b"-ERR\r\n" }).await.unwrap();
        });
        let step = test_step(&format!("name: redis\ntcp: {{address: \"127.0.0.1:{port}\", send: PING, expect: PONG}}\n"));
        let mut ctx = RunContext::new_test();
        let (obs, _) = attempt(&mut ctx, &step).await.expect("tcp step passes");
        let phases: Vec<&str> = obs.phases.iter().map(|p| p.name).collect();
        assert!(phases.contains(&"connect") && phases.contains(&"read"), "{phases:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let step = test_step(&format!("name: closed\ntcp: {{address: \"127.0.0.1:{port}\"}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("nothing listens");
        assert_eq!(e.error_type, ErrorType::Connect, "{}", e.message);
    }
}
