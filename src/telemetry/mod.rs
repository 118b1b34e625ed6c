//! Telemetry: run results become OTLP metrics and traces, and a Prometheus view.
//!
//! Metrics are cumulative, so a collector outage loses no counts: the next
//! successful export carries the totals. Every outcome series of a journey
//! exists at 0 from startup, so `increase()` sees its first run. Traces go
//! through the OpenTelemetry SDK and opentelemetry-otlp; metrics are
//! aggregated in [`metrics`] (see there why).

pub mod metrics;
pub mod prometheus;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Journey};
use crate::vocab::{ErrorType, PhaseRecording, RunResult};
use metrics::{Extra, Inst, Metrics, Transport};

pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Journeys per metrics export request, so a request stays small.
const EXPORT_CHUNK: usize = 100;

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub endpoint: String,
    pub grpc: bool,
    pub interval: Duration,
    pub headers: Vec<(String, String)>,
}

impl ExportSettings {
    /// From the agent config, falling back to the standard `OTEL_EXPORTER_OTLP_*` variables.
    pub fn resolve(agent: &AgentConfig) -> Option<ExportSettings> {
        let otlp = &agent.telemetry.otlp;
        let endpoint = otlp
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()))?;
        let protocol = otlp
            .protocol
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok())
            .unwrap_or_else(|| "grpc".into());
        let interval = otlp.export_interval.map(|d| d.0).unwrap_or(Duration::from_secs(10));
        let mut headers: Vec<(String, String)> = otlp.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        if headers.is_empty() {
            // OTEL_EXPORTER_OTLP_HEADERS: `key=value,key2=value2`.
            headers = std::env::var("OTEL_EXPORTER_OTLP_HEADERS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
        }
        Some(ExportSettings { endpoint: endpoint.trim_end_matches('/').to_string(), grpc: protocol != "http/protobuf", interval, headers })
    }
}

pub struct Telemetry {
    traces: SdkTracerProvider,
    pub tracer: opentelemetry_sdk::trace::Tracer,
    location: String,
    metrics: Arc<Metrics>,
    exporter: Option<Arc<tokio::sync::Mutex<Transport>>>,
    export: Option<ExportSettings>,
    stop_export: CancellationToken,
    /// The Prometheus view of the same results, for `/metrics`.
    pub prometheus: Mutex<prometheus::Registry>,
}

fn resource_attrs(agent: &AgentConfig) -> Vec<(String, String)> {
    vec![
        ("service.name".into(), "vantage".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("service.instance.id".into(), agent.agent_id()),
        ("host.name".into(), crate::hostname()),
        ("cloud.region".into(), agent.location.clone()),
    ]
}

fn sorted_buckets(journeys: &[Journey]) -> Vec<f64> {
    let mut b: Vec<f64> = DEFAULT_BUCKETS.to_vec();
    for j in journeys {
        b.extend(j.buckets.iter().flatten());
    }
    b.sort_by(|x, y| x.partial_cmp(y).expect("buckets are finite"));
    b.dedup();
    b
}

impl Telemetry {
    /// Builds the pipelines. Must run inside the Tokio runtime.
    pub fn init(agent: &AgentConfig, export: Option<&ExportSettings>, journeys: &[Journey]) -> anyhow::Result<Telemetry> {
        let attrs = resource_attrs(agent);
        let resource = Resource::builder_empty().with_attributes(attrs.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()))).build();
        let mut traces = SdkTracerProvider::builder().with_resource(resource);
        let mut exporter = None;
        if let Some(x) = export {
            let spans = if x.grpc {
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &x.headers {
                    if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                        md.insert(k, v);
                    }
                }
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&x.endpoint).with_metadata(md).with_timeout(Duration::from_secs(5)).build()?
            } else {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{}/v1/traces", x.endpoint))
                    .with_headers(x.headers.iter().cloned().collect())
                    .with_timeout(Duration::from_secs(5))
                    .build()?
            };
            // Bounded queue, small batches sent often: memory stays flat at 1,000 runs/s.
            let batch = BatchConfigBuilder::default().with_max_queue_size(4096).with_max_export_batch_size(512).with_scheduled_delay(Duration::from_millis(500)).build();
            traces = traces.with_span_processor(BatchSpanProcessor::builder(spans).with_batch_config(batch).build());
            exporter = Some(Arc::new(tokio::sync::Mutex::new(Transport::new(&x.endpoint, x.grpc, &x.headers)?)));
        }
        let traces = traces.build();
        let tracer = traces.tracer("vantage");
        let metrics = Arc::new(Metrics::new(
            &attrs,
            vec![("synthetics.location".into(), agent.location.clone())],
            sorted_buckets(journeys),
            DEFAULT_BUCKETS.to_vec(),
            LATENESS_BUCKETS.to_vec(),
        ));
        for result in ["success", "failure"] {
            metrics.add(None, Inst::ConfigReloads, vec![("result", result.into())], 0);
        }
        let t = Telemetry {
            traces,
            tracer,
            location: agent.location.clone(),
            metrics,
            exporter,
            export: export.cloned(),
            stop_export: CancellationToken::new(),
            prometheus: Mutex::new(prometheus::Registry::default()),
        };
        t.spawn_export_loop();
        Ok(t)
    }

    fn spawn_export_loop(&self) {
        let (Some(exporter), Some(x)) = (self.exporter.clone(), self.export.clone()) else { return };
        let (metrics, stop) = (self.metrics.clone(), self.stop_export.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(x.interval);
            tick.tick().await;
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match export_metrics(&metrics, &exporter, &x.headers).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("metrics export recovered; cumulative totals delivered");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("metrics export failing (counts are kept and sent when it recovers): {e}");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    fn journey_base(&self, j: &Journey) -> Vec<(String, String)> {
        let mut a = vec![("journey.name".to_string(), j.name.clone()), ("synthetics.location".to_string(), self.location.clone())];
        a.extend(j.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        a
    }

    /// Creates every outcome series of `j` at 0, so the first failure is visible to `increase()`.
    pub fn register(&self, j: &Journey) {
        self.metrics.add_journey(&j.name, self.journey_base(j));
        // `internal`: a panic inside a run (a bug of the agent) is still a counted failure.
        let mut errors: Vec<ErrorType> = vec![
            ErrorType::Timeout,
            ErrorType::Assertion,
            ErrorType::Config,
            ErrorType::Internal,
        ];
        for s in &j.steps {
            errors.extend(s.kind.error_types());
        }
        errors.sort();
        errors.dedup();
        let runs = |extra: Extra| self.metrics.add(Some(&j.name), Inst::Runs, extra, 0);
        runs(vec![("outcome", "success".into())]);
        runs(vec![("outcome", "degraded".into())]);
        for e in &errors {
            runs(vec![("outcome", "failure".into()), ("error.type", e.as_str().into())]);
        }
        self.metrics
            .add(Some(&j.name), Inst::Skipped, Vec::new(), 0);
        if j.retries.is_some() {
            for result in ["recovered", "failed"] {
                self.metrics.add(
                    Some(&j.name),
                    Inst::Retried,
                    vec![("result", result.into())],
                    0,
                );
            }
        }
        self.prometheus
            .lock()
            .expect("prometheus lock")
            .register(j, &self.location, &errors);
    }

    /// Stops exporting a removed journey's series.
    pub fn unregister(&self, name: &str) {
        self.metrics.remove_journey(name);
        self.prometheus.lock().expect("prometheus lock").remove(name);
    }

    pub fn record(&self, j: &Journey, r: &RunResult) {
        let name = Some(j.name.as_str());
        let mut outcome: Extra = vec![("outcome", r.outcome.as_str().into())];
        if let Some(e) = r.error_type {
            outcome.push(("error.type", e.as_str().into()));
        }
        self.metrics.add(name, Inst::Runs, outcome.clone(), 1);
        self.metrics.record(name, Inst::JourneyDuration, outcome, r.duration.as_secs_f64());
        if r.cleanup_error.is_some() {
            self.metrics.add(name, Inst::CleanupFailures, Vec::new(), 1);
        }
        if r.retried() {
            let result = if r.outcome == crate::vocab::Outcome::Failure {
                "failed"
            } else {
                "recovered"
            };
            self.metrics
                .add(name, Inst::Retried, vec![("result", result.into())], 1);
        }
        for s in &r.steps {
            let step = || ("step.name", s.name.clone());
            self.metrics.record(
                name,
                Inst::StepDuration,
                vec![step(), ("step.kind", s.kind.into()), ("outcome", s.outcome.as_str().into())],
                s.duration.as_secs_f64(),
            );
            match s.phase_recording {
                PhaseRecording::None => {}
                PhaseRecording::PhaseHistogram => {
                    for p in &s.phases {
                        self.metrics.record(name, Inst::PhaseDuration, vec![step(), ("phase", p.name.into())], p.duration.as_secs_f64());
                    }
                }
                PhaseRecording::Own(metrics) => {
                    for p in &s.phases {
                        for m in metrics.iter().filter(|m| m.phase == p.name) {
                            let mut extra = vec![step()];
                            if let Some((k, v)) = m.attribute {
                                extra.push((k, v.into()));
                            }
                            self.metrics.record(name, Inst::Browser(m.name), extra, p.duration.as_secs_f64());
                        }
                    }
                }
            }
            if let Some(c) = s.cert_remaining_secs {
                self.metrics.record(name, Inst::CertRemaining, vec![step()], c);
            }
        }
        self.prometheus.lock().expect("prometheus lock").record(j, r);
    }

    pub fn record_skip(&self, j: &Journey) {
        self.metrics.add(Some(&j.name), Inst::Skipped, Vec::new(), 1);
    }

    pub fn record_lateness(&self, late: Duration) {
        self.metrics.record(None, Inst::SchedulerLateness, Vec::new(), late.as_secs_f64());
    }

    pub fn record_reload(&self, ok: bool) {
        self.metrics.add(None, Inst::ConfigReloads, vec![("result", if ok { "success" } else { "failure" }.into())], 1);
    }

    pub fn record_callback(&self, result: &'static str) {
        self.metrics.add(None, Inst::CallbackRequests, vec![("result", result.into())], 1);
    }

    /// Exports what is pending and stops the exporters, within `budget`.
    pub async fn shutdown(&self, budget: Duration) {
        self.stop_export.cancel();
        if let (Some(exporter), Some(x)) = (&self.exporter, &self.export) {
            match tokio::time::timeout(budget, export_metrics(&self.metrics, exporter, &x.headers)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("final metrics export failed: {e}"),
                Err(_) => tracing::warn!("final metrics export timed out after {budget:?}"),
            }
        }
        let traces = self.traces.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let _ = traces.force_flush();
            let _ = traces.shutdown_with_timeout(Duration::from_secs(3));
        });
        let _ = tokio::time::timeout(budget, flushed).await;
    }
}

async fn export_metrics(metrics: &Metrics, exporter: &tokio::sync::Mutex<Transport>, headers: &[(String, String)]) -> Result<(), String> {
    let mut transport = exporter.lock().await;
    if let Some(req) = metrics.request_for(None) {
        transport.send(req, headers).await?;
    }
    for names in metrics.journey_names().chunks(EXPORT_CHUNK) {
        if let Some(req) = metrics.request_for(Some(names)) {
            transport.send(req, headers).await?;
        }
    }
    Ok(())
}
