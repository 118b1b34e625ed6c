//! Telemetry: run results become OTLP metrics and traces.
//!
//! Metrics use cumulative temporality, so a collector outage loses no counts:
//! the next successful export carries the totals. Every outcome series of a
//! journey is exported at 0 from startup, so `increase()` sees its first run.

pub mod prometheus;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider};
use opentelemetry::trace::TracerProvider;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Stream, Temporality};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::config::{AgentConfig, Journey};
use crate::runner::result::{ErrorType, Outcome, RunResult};

pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub endpoint: String,
    pub grpc: bool,
    pub interval: Duration,
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
        Some(ExportSettings { endpoint: endpoint.trim_end_matches('/').to_string(), grpc: protocol != "http/protobuf", interval })
    }
}

pub struct Telemetry {
    meters: Option<SdkMeterProvider>,
    traces: SdkTracerProvider,
    pub tracer: opentelemetry_sdk::trace::Tracer,
    location: String,
    runs: Counter<u64>,
    journey_duration: Histogram<f64>,
    step_duration: Histogram<f64>,
    phase_duration: Histogram<f64>,
    cert_remaining: Gauge<f64>,
    skipped: Counter<u64>,
    lateness: Histogram<f64>,
    cleanup_failures: Counter<u64>,
    /// `synthetics.browser.*`, by the browser step phase they come from.
    browser: Vec<(&'static crate::browser::Metric, Histogram<f64>)>,
    pub reloads: Counter<u64>,
    /// The Prometheus view of the same results, for `/metrics`.
    pub prometheus: Mutex<prometheus::Registry>,
}

fn resource(agent: &AgentConfig) -> Resource {
    Resource::builder()
        .with_service_name("vantage")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", agent.agent_id()),
            KeyValue::new("host.name", crate::hostname()),
            KeyValue::new("cloud.region", agent.location.clone()),
        ])
        .build()
}

impl Telemetry {
    /// Builds the pipelines. Must run inside the Tokio runtime (gRPC needs it).
    pub fn init(agent: &AgentConfig, export: Option<&ExportSettings>, journeys: &[Journey]) -> anyhow::Result<Telemetry> {
        let resource = resource(agent);
        let mut traces = SdkTracerProvider::builder().with_resource(resource.clone());
        let mut meters = None;
        if let Some(x) = export {
            let (spans, metrics) = if x.grpc {
                (
                    opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&x.endpoint).with_timeout(Duration::from_secs(5)).build()?,
                    opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .with_endpoint(&x.endpoint)
                        .with_timeout(Duration::from_secs(5))
                        .with_temporality(Temporality::Cumulative)
                        .build()?,
                )
            } else {
                (
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_endpoint(format!("{}/v1/traces", x.endpoint))
                        .with_timeout(Duration::from_secs(5))
                        .build()?,
                    opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_endpoint(format!("{}/v1/metrics", x.endpoint))
                        .with_timeout(Duration::from_secs(5))
                        .with_temporality(Temporality::Cumulative)
                        .build()?,
                )
            };
            traces = traces.with_batch_exporter(spans);
            let reader = PeriodicReader::builder(metrics).with_interval(x.interval).build();
            meters = Some(
                SdkMeterProvider::builder()
                    .with_resource(resource)
                    .with_reader(reader)
                    // One series per journey × step × phase must never overflow the SDK's default limit of 2000.
                    .with_view(|_: &opentelemetry_sdk::metrics::Instrument| Stream::builder().with_cardinality_limit(200_000).build().ok())
                    .build(),
            );
        }
        let traces = traces.build();
        let tracer = traces.tracer("vantage");
        let meter: Meter = match &meters {
            Some(m) => m.meter("vantage"),
            None => opentelemetry::global::meter_provider().meter("vantage"),
        };
        let mut journey_buckets: Vec<f64> = DEFAULT_BUCKETS.to_vec();
        for j in journeys {
            journey_buckets.extend(j.buckets.iter().flatten());
        }
        journey_buckets.sort_by(|a, b| a.partial_cmp(b).expect("finite buckets"));
        journey_buckets.dedup();
        let t = Telemetry {
            runs: meter.u64_counter("synthetics.journey.runs").with_description("Journey runs by outcome").build(),
            journey_duration: meter
                .f64_histogram("synthetics.journey.duration")
                .with_unit("s")
                .with_description("Wall time of a journey run")
                .with_boundaries(journey_buckets)
                .build(),
            step_duration: meter
                .f64_histogram("synthetics.step.duration")
                .with_unit("s")
                .with_description("Duration of each step")
                .with_boundaries(DEFAULT_BUCKETS.to_vec())
                .build(),
            phase_duration: meter
                .f64_histogram("synthetics.http.phase.duration")
                .with_unit("s")
                .with_description("HTTP phases: dns, connect, tls, ttfb, transfer")
                .with_boundaries(DEFAULT_BUCKETS.to_vec())
                .build(),
            cert_remaining: meter.f64_gauge("synthetics.tls.cert.remaining").with_unit("s").with_description("Seconds until the earliest certificate in the chain expires").build(),
            skipped: meter.u64_counter("synthetics.journey.skipped").with_description("Ticks skipped because the previous run was still going").build(),
            lateness: meter
                .f64_histogram("synthetics.scheduler.lateness")
                .with_unit("s")
                .with_description("How late a run started after its scheduled time")
                .with_boundaries(vec![0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
                .build(),
            cleanup_failures: meter.u64_counter("synthetics.journey.cleanup.failures").with_description("Runs whose finally steps failed").build(),
            browser: crate::browser::METRICS.iter().fold(Vec::<(&crate::browser::Metric, Histogram<f64>)>::new(), |mut acc, m| {
                // Phases sharing a metric share one instrument.
                let same = acc.iter().find(|(o, _)| o.name == m.name).map(|(_, h)| h.clone());
                let h = same.unwrap_or_else(|| meter.f64_histogram(m.name).with_unit("s").with_description(m.description).with_boundaries(DEFAULT_BUCKETS.to_vec()).build());
                acc.push((m, h));
                acc
            }),
            reloads: meter.u64_counter("synthetics.agent.config.reloads").with_description("Config reloads by result").build(),
            meters,
            traces,
            tracer,
            location: agent.location.clone(),
            prometheus: Mutex::new(prometheus::Registry::default()),
        };
        for result in ["success", "failure"] {
            t.reloads.add(0, &[KeyValue::new("result", result)]);
        }
        Ok(t)
    }

    fn journey_attrs(&self, j: &Journey) -> Vec<KeyValue> {
        let mut a = vec![KeyValue::new("journey.name", j.name.clone()), KeyValue::new("synthetics.location", self.location.clone())];
        a.extend(j.labels.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        a
    }

    /// Creates every outcome series of `j` at 0, so the first failure is visible to `increase()`.
    pub fn register(&self, j: &Journey) {
        let base = self.journey_attrs(j);
        let mut errors: Vec<ErrorType> = vec![ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config];
        for s in &j.steps {
            errors.extend(s.kind.error_types());
        }
        errors.sort();
        errors.dedup();
        for o in [Outcome::Success, Outcome::Degraded] {
            let mut a = base.clone();
            a.push(KeyValue::new("outcome", o.as_str()));
            self.runs.add(0, &a);
        }
        for e in &errors {
            let mut a = base.clone();
            a.push(KeyValue::new("outcome", "failure"));
            a.push(KeyValue::new("error.type", e.as_str()));
            self.runs.add(0, &a);
        }
        self.skipped.add(0, &base);
        self.prometheus.lock().expect("prometheus lock").register(j, &self.location, &errors);
    }

    pub fn unregister(&self, name: &str) {
        self.prometheus.lock().expect("prometheus lock").remove(name);
    }

    pub fn record(&self, j: &Journey, r: &RunResult) {
        let base = self.journey_attrs(j);
        let mut a = base.clone();
        a.push(KeyValue::new("outcome", r.outcome.as_str()));
        if let Some(e) = r.error_type {
            a.push(KeyValue::new("error.type", e.as_str()));
        }
        self.runs.add(1, &a);
        self.journey_duration.record(r.duration.as_secs_f64(), &a);
        if r.cleanup_error.is_some() {
            self.cleanup_failures.add(1, &base);
        }
        for s in &r.steps {
            let mut sa = base.clone();
            sa.push(KeyValue::new("step.name", s.name.clone()));
            sa.push(KeyValue::new("step.kind", s.kind));
            sa.push(KeyValue::new("outcome", s.outcome.as_str()));
            self.step_duration.record(s.duration.as_secs_f64(), &sa);
            if s.kind == "http" {
                for p in &s.phases {
                    let mut pa = base.clone();
                    pa.push(KeyValue::new("step.name", s.name.clone()));
                    pa.push(KeyValue::new("phase", p.name));
                    self.phase_duration.record(p.duration.as_secs_f64(), &pa);
                }
            }
            if s.kind == "browser" {
                for p in &s.phases {
                    if let Some((m, h)) = self.browser.iter().find(|(m, _)| m.phase == p.name) {
                        let mut ba = base.clone();
                        ba.push(KeyValue::new("step.name", s.name.clone()));
                        ba.extend(m.attribute.map(|(k, v)| KeyValue::new(k, v)));
                        h.record(p.duration.as_secs_f64(), &ba);
                    }
                }
            }
            if let Some(c) = s.cert_remaining_secs {
                let mut ca = base.clone();
                ca.push(KeyValue::new("step.name", s.name.clone()));
                self.cert_remaining.record(c, &ca);
            }
        }
        self.prometheus.lock().expect("prometheus lock").record(j, r);
    }

    pub fn record_skip(&self, j: &Journey) {
        self.skipped.add(1, &self.journey_attrs(j));
    }

    pub fn record_lateness(&self, late: Duration) {
        self.lateness.record(late.as_secs_f64(), &[KeyValue::new("synthetics.location", self.location.clone())]);
    }

    /// Exports what is pending and stops the exporters, within `budget`.
    pub fn shutdown(&self, budget: Duration) {
        let traces = self.traces.clone();
        let meters = self.meters.clone();
        // The SDK's shutdown blocks; keep it off the async workers and bounded.
        let done = std::thread::spawn(move || {
            let _ = traces.force_flush();
            let _ = traces.shutdown_with_timeout(budget);
            if let Some(m) = meters {
                let _ = m.force_flush();
                let _ = m.shutdown();
            }
        });
        let start = std::time::Instant::now();
        while !done.is_finished() && start.elapsed() < budget {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Labels as a sorted map, for the Prometheus view.
pub fn labels_of(j: &Journey) -> BTreeMap<String, String> {
    j.labels.clone()
}
