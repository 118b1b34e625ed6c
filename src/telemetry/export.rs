//! Where telemetry goes: OTLP settings (TLS, mutual TLS, secret headers from
//! the credentials directory, gzip) and the span buffer that rides out a
//! collector outage.
//!
//! Spans do not go through the SDK's batch processor: its queue drops spans
//! silently when full. [`SpanBuffer`] keeps at most [`MAX_BUFFERED_SPANS`]
//! spans, retries after failures with backoff, counts every span it has to
//! drop (`synthetics.agent.telemetry.dropped{signal="traces"}`) and logs once
//! when export starts failing and once when it recovers.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

/// Default of `telemetry.otlp.max_buffered_spans`: spans kept while the
/// collector is unreachable; older ones are dropped (and counted) beyond it.
pub const MAX_BUFFERED_SPANS: usize = 8192;
const BATCH: usize = 512;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// TLS for an `https://` collector.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// PEM CAs; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where and how to export.
#[derive(Clone)]
pub struct ExportSettings {
    pub endpoint: String,
    pub grpc: bool,
    pub interval: Duration,
    /// Header values may be secrets (from the credentials directory): never print them.
    pub headers: Vec<(String, String)>,
    pub tls: Option<TlsSettings>,
    pub gzip: bool,
    pub max_buffered_spans: usize,
}

impl fmt::Debug for ExportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExportSettings")
            .field("endpoint", &self.endpoint)
            .field("grpc", &self.grpc)
            .field("headers", &names)
            .field("tls", &self.tls.is_some())
            .field("gzip", &self.gzip)
            .finish()
    }
}

// Also checked by agent-config validation, which sits below telemetry.
pub use crate::config::checks::{check_endpoint, check_header, is_plain_file_name};

fn read_credential(dir: Option<&Path>, name: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let Some(dir) = dir else {
        anyhow::bail!("{what}: `{name}` is to come from the credentials directory, but none is set (credentials_dir, or systemd's LoadCredential=)");
    };
    let path: PathBuf = dir.join(name);
    std::fs::read(&path).map_err(|e| anyhow::anyhow!("{what}: cannot read {}: {e}", path.display()))
}

impl ExportSettings {
    /// From the agent config, falling back to the standard `OTEL_EXPORTER_OTLP_*`
    /// variables. `Ok(None)`: export is off. Reads the credentials it names.
    pub fn resolve(agent: &AgentConfig) -> anyhow::Result<Option<ExportSettings>> {
        let otlp = &agent.telemetry.otlp;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(endpoint) = otlp
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        check_endpoint(&endpoint).map_err(|m| anyhow::anyhow!("OTLP endpoint: {m}"))?;
        let protocol = otlp
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".into());
        if !matches!(protocol.as_str(), "grpc" | "http/protobuf") {
            anyhow::bail!("OTLP protocol: expected `grpc` or `http/protobuf`, got `{protocol}`");
        }
        let compression = otlp
            .compression
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION"))
            .unwrap_or_else(|| "none".into());
        if !matches!(compression.as_str(), "gzip" | "none") {
            anyhow::bail!("OTLP compression: expected `gzip` or `none`, got `{compression}`");
        }
        let interval = otlp
            .export_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10));
        let mut headers: Vec<(String, String)> = otlp
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if headers.is_empty() {
            // OTEL_EXPORTER_OTLP_HEADERS: `key=value,key2=value2`.
            for kv in env("OTEL_EXPORTER_OTLP_HEADERS")
                .unwrap_or_default()
                .split(',')
                .filter(|kv| !kv.trim().is_empty())
            {
                let Some((k, v)) = kv.split_once('=') else {
                    anyhow::bail!("OTEL_EXPORTER_OTLP_HEADERS: expected `name=value` pairs separated by commas, got an entry without `=`");
                };
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let creds = agent.credentials_dir();
        for (k, file) in &otlp.header_credentials {
            let raw = read_credential(creds.as_deref(), file, &format!("OTLP header `{k}`"))?;
            let v = String::from_utf8(raw).map_err(|_| {
                anyhow::anyhow!("OTLP header `{k}`: credential `{file}` is not UTF-8 text")
            })?;
            headers.push((
                k.to_ascii_lowercase(),
                v.trim_end_matches(['\r', '\n']).to_string(),
            ));
        }
        for (k, v) in &headers {
            check_header(k, Some(v)).map_err(|m| anyhow::anyhow!("OTLP headers: {m}"))?;
        }
        let tls = if endpoint.starts_with("https://") {
            let ca_pem = match &otlp.ca_file {
                Some(p) => Some(std::fs::read(p).map_err(|e| {
                    anyhow::anyhow!("telemetry.otlp.ca_file: cannot read {}: {e}", p.display())
                })?),
                None => None,
            };
            let identity = match (&otlp.client_cert, &otlp.client_key) {
                (Some(c), Some(k)) => Some((
                    read_credential(creds.as_deref(), c, "OTLP client certificate")?,
                    read_credential(creds.as_deref(), k, "OTLP client key")?,
                )),
                _ => None,
            };
            Some(TlsSettings { ca_pem, identity })
        } else {
            None
        };
        Ok(Some(ExportSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            grpc: protocol != "http/protobuf",
            interval,
            headers,
            tls,
            gzip: compression == "gzip",
            max_buffered_spans: otlp.max_buffered_spans.unwrap_or(MAX_BUFFERED_SPANS).max(1),
        }))
    }

    /// TLS for tonic channels (spans and metrics over gRPC).
    pub fn tonic_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        let t = self.tls.as_ref()?;
        let mut c = tonic::transport::ClientTlsConfig::new();
        c = match &t.ca_pem {
            Some(ca) => c.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &t.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Some(c)
    }

    /// Certificates and identity for reqwest clients (OTLP/HTTP).
    pub fn reqwest_tls(
        &self,
    ) -> anyhow::Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>)> {
        let Some(t) = &self.tls else {
            return Ok((Vec::new(), None));
        };
        let certs = match &t.ca_pem {
            Some(ca) => reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
                anyhow::anyhow!("telemetry.otlp.ca_file: not a PEM certificate bundle ({e})")
            })?,
            None => Vec::new(),
        };
        let identity = match &t.identity {
            Some((cert, key)) => {
                let mut pem = cert.clone();
                pem.push(b'\n');
                pem.extend_from_slice(key);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "OTLP client certificate/key: not a PEM certificate and private key ({e})"
                    )
                })?)
            }
            None => None,
        };
        Ok((certs, identity))
    }

    /// The OTLP span exporter for these settings.
    pub fn span_exporter(&self) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
        let compression = opentelemetry_otlp::Compression::Gzip;
        if self.grpc {
            let mut md = tonic::metadata::MetadataMap::new();
            for (k, v) in &self.headers {
                // Checked in `resolve`.
                if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                    md.insert(k, v);
                }
            }
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&self.endpoint)
                .with_metadata(md)
                .with_timeout(EXPORT_TIMEOUT);
            if let Some(tls) = self.tonic_tls() {
                b = b.with_tls_config(tls);
            }
            if self.gzip {
                b = b.with_compression(compression);
            }
            Ok(b.build()?)
        } else {
            let (certs, identity) = self.reqwest_tls()?;
            // The async client: spans are exported from a Tokio task (see SpanBuffer).
            let mut b = reqwest::Client::builder().timeout(EXPORT_TIMEOUT);
            if !certs.is_empty() {
                b = b.tls_certs_only(certs);
            }
            if let Some(id) = identity {
                b = b.identity(id);
            }
            let client = b.build()?;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(format!("{}/v1/traces", self.endpoint))
                .with_headers(self.headers.iter().cloned().collect())
                .with_timeout(EXPORT_TIMEOUT);
            if self.gzip {
                b = b.with_compression(compression);
            }
            Ok(b.build()?)
        }
    }
}

type OnDropped = Arc<dyn Fn(u64) + Send + Sync>;

struct Shared {
    /// Spans with a sequence number, so a successful export removes exactly
    /// what it sent even if the oldest were dropped meanwhile.
    queue: Mutex<(u64, VecDeque<(u64, SpanData)>)>,
    cap: usize,
    wake: Notify,
    exporter: tokio::sync::Mutex<opentelemetry_otlp::SpanExporter>,
    on_dropped: OnDropped,
    failing: AtomicBool,
    stop: CancellationToken,
}

/// A bounded span buffer with its own export task (see the module docs).
#[derive(Clone)]
pub struct SpanBuffer {
    sh: Arc<Shared>,
}

impl fmt::Debug for SpanBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpanBuffer")
    }
}

impl SpanBuffer {
    /// Starts the export task; must run inside the Tokio runtime.
    pub fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        cap: usize,
        on_dropped: OnDropped,
    ) -> SpanBuffer {
        let sh = Arc::new(Shared {
            queue: Mutex::new((0, VecDeque::new())),
            cap,
            wake: Notify::new(),
            exporter: tokio::sync::Mutex::new(exporter),
            on_dropped,
            failing: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        let task = sh.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::ZERO;
            loop {
                let wait = if backoff.is_zero() {
                    Duration::from_millis(500)
                } else {
                    backoff
                };
                tokio::select! {
                    _ = task.stop.cancelled() => return,
                    _ = task.wake.notified(), if backoff.is_zero() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = match drain(&task).await {
                    Ok(()) => Duration::ZERO,
                    Err(()) => (backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF),
                };
            }
        });
        SpanBuffer { sh }
    }

    /// Spans waiting to be exported.
    pub fn len(&self) -> usize {
        self.sh.queue.lock().expect("span queue").1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the task and exports what is buffered, within `budget`.
    pub async fn flush(&self, budget: Duration) {
        self.sh.stop.cancel();
        if tokio::time::timeout(budget, drain(&self.sh)).await.is_err() {
            tracing::warn!(
                buffered = self.len(),
                "final trace export did not finish within {budget:?}"
            );
        }
    }
}

/// Exports the queue in batches until it is empty (`Ok`) or an export fails (`Err`).
async fn drain(sh: &Shared) -> Result<(), ()> {
    loop {
        let (batch, last): (Vec<SpanData>, u64) = {
            let q = sh.queue.lock().expect("span queue");
            let batch: Vec<SpanData> = q.1.iter().take(BATCH).map(|(_, s)| s.clone()).collect();
            (
                batch,
                q.1.get(q.1.len().min(BATCH).saturating_sub(1))
                    .map(|(seq, _)| *seq)
                    .unwrap_or(0),
            )
        };
        if batch.is_empty() {
            // A backlog (an outage, a burst) grew the queue; give that memory back.
            let mut q = sh.queue.lock().expect("span queue");
            if q.1.capacity() > 4 * BATCH {
                q.1.shrink_to(BATCH);
            }
            return Ok(());
        }
        let result = {
            let exporter = sh.exporter.lock().await;
            tokio::time::timeout(
                EXPORT_TIMEOUT + Duration::from_secs(1),
                exporter.export(batch),
            )
            .await
        };
        match result {
            Ok(Ok(())) => {
                let mut q = sh.queue.lock().expect("span queue");
                while q.1.front().is_some_and(|(seq, _)| *seq <= last) {
                    q.1.pop_front();
                }
                drop(q);
                if sh.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("trace export recovered; buffered spans are being delivered");
                }
            }
            Ok(Err(e)) => return failed(sh, &e.to_string()),
            Err(_) => return failed(sh, "no answer within the export timeout"),
        }
    }
}

fn failed(sh: &Shared, why: &str) -> Result<(), ()> {
    if !sh.failing.swap(true, Ordering::AcqRel) {
        let buffered = sh.queue.lock().expect("span queue").1.len();
        tracing::warn!(buffered, "trace export failing ({why}); keeping up to {} spans and retrying; logged again only when it recovers", sh.cap);
    }
    Err(())
}

impl SpanProcessor for SpanBuffer {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, mut span: SpanData) {
        // Attributes are pushed one by one while the step runs, so the vector
        // has up to twice the room it needs; buffered spans keep only what they use.
        span.attributes.shrink_to_fit();
        let len = {
            let mut q = self.sh.queue.lock().expect("span queue");
            if q.1.len() >= self.sh.cap {
                // Drop the oldest: the newest spans say more about now.
                q.1.pop_front();
                (self.sh.on_dropped)(1);
            }
            q.0 += 1;
            let seq = q.0;
            q.1.push_back((seq, span));
            q.1.len()
        };
        if len >= BATCH {
            self.sh.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.sh.wake.notify_one();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.sh.stop.cancel();
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds the lock.
        if let Ok(mut e) = self.sh.exporter.try_lock() {
            e.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_header_values_come_from_credentials_and_never_print() {
        let dir = std::env::temp_dir().join(format!("vantage-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("otlp-key"), "s3cr3t-value\n").unwrap();
        let mut agent = AgentConfig {
            credentials_dir: Some(dir.clone()),
            ..Default::default()
        };
        agent.telemetry.otlp.endpoint = Some("https://collector.example:4317".into());
        agent
            .telemetry
            .otlp
            .header_credentials
            .insert("X-Api-Key".into(), "otlp-key".into());
        agent.telemetry.otlp.compression = Some("gzip".into());
        let x = ExportSettings::resolve(&agent).unwrap().unwrap();
        assert_eq!(
            x.headers,
            vec![("x-api-key".to_string(), "s3cr3t-value".to_string())]
        );
        assert!(x.gzip && x.tls.is_some() && x.grpc);
        assert!(!format!("{x:?}").contains("s3cr3t"));
        agent
            .telemetry
            .otlp
            .header_credentials
            .insert("x-other".into(), "missing".into());
        let e = ExportSettings::resolve(&agent).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
