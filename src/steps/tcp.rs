//! `tcp` step: connect, optionally send, optionally read until an expected string.

use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::model::TcpSpec;
use crate::config::template::Template;
use crate::config::validate::Checker;
use crate::runner::context::RunContext;
use crate::runner::result::{ErrorType, Phase};
use crate::steps::net::{connect_tcp, split_host_port};
use crate::steps::{snippet, Observation, StepError, StepKind};

/// Bytes read while waiting for `expect`, at most.
const MAX_READ: usize = 64 * 1024;

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
        obs.attributes = vec![
            KeyValue::new("server.address", host.clone()),
            KeyValue::new("server.port", port as i64),
            KeyValue::new("network.peer.address", peer.ip().to_string()),
        ];
        if let Some(t) = &self.send {
            let data = ctx.render(t)?;
            ctx.waiting_for = "the send to complete";
            stream
                .write_all(data.as_bytes())
                .await
                .map_err(|e| StepError::new(ErrorType::Connect, format!("send to {address} failed: {e}")).with_observation(&obs))?;
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
                    return Err(StepError::new(
                        ErrorType::Assertion,
                        format!("expected `{want}` within the first {MAX_READ} bytes, got: {}", snippet(&String::from_utf8_lossy(&buf), 200)),
                    )
                    .with_observation(&obs));
                }
                let n = stream.read(&mut chunk).await.map_err(|e| {
                    StepError::new(ErrorType::Connect, format!("read from {address} failed: {e}")).with_observation(&obs)
                })?;
                if n == 0 {
                    return Err(StepError::new(
                        ErrorType::Assertion,
                        format!("expected `{want}`, the peer closed the connection after sending: {}", snippet(&String::from_utf8_lossy(&buf), 200)),
                    )
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
    fn kind(&self) -> &'static str {
        "tcp"
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
}
