//! Telemetry: run results become OTLP metrics and traces, and a Prometheus view.
//!
//! Metrics are cumulative, so a collector outage loses no counts: the next
//! successful export carries the totals. Every outcome series of a journey
//! exists at 0 from startup, so `increase()` sees its first run. Traces go
//! through the OpenTelemetry SDK and opentelemetry-otlp; metrics are
//! aggregated in [`metrics`] (see there why).

pub mod export;
pub mod metrics;
pub mod prometheus;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Journey};
use crate::vocab::{ErrorType, PhaseRecording, RunResult};
use metrics::{Extra, Inst, Metrics, Transport};

pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Journeys per metrics export request (and per `/metrics` rendering step),
/// so a request stays small: the request being built is the largest
/// transient allocation of an export, about 26 KB per journey.
const EXPORT_CHUNK: usize = 25;

pub use export::{check_endpoint, check_header, is_plain_file_name, ExportSettings, SpanBuffer};

pub struct Telemetry {
    traces: SdkTracerProvider,
    pub tracer: opentelemetry_sdk::trace::Tracer,
    location: String,
    metrics: Arc<Metrics>,
    exporter: Option<Arc<tokio::sync::Mutex<Transport>>>,
    spans: Option<SpanBuffer>,
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
        ("host.name".into(), crate::hostname().unwrap_or_else(|| "unknown".into())),
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
        let metrics = Arc::new(Metrics::new(
            &attrs,
            vec![("synthetics.location".into(), agent.location.clone())],
            sorted_buckets(journeys),
            DEFAULT_BUCKETS.to_vec(),
            LATENESS_BUCKETS.to_vec(),
        ));
        let mut traces = SdkTracerProvider::builder().with_resource(resource).with_id_generator(crate::runner::ids::RunTraceIds::default());
        let mut exporter = None;
        let mut spans = None;
        if let Some(x) = export {
            let m = metrics.clone();
            let dropped = Arc::new(move |n: u64| m.add(None, Inst::TelemetryDropped, vec![("signal", "traces".into())], n));
            let buffer = SpanBuffer::start(x.span_exporter()?, x.max_buffered_spans, dropped);
            traces = traces.with_span_processor(buffer.clone());
            spans = Some(buffer);
            exporter = Some(Arc::new(tokio::sync::Mutex::new(Transport::new(x)?)));
        }
        let traces = traces.build();
        let tracer = traces.tracer("vantage");
        metrics.add(None, Inst::TelemetryDropped, vec![("signal", "traces".into())], 0);
        if agent.probes.iter().any(|p| crate::config::is_bundle_url(p)) {
            for r in crate::bundle::FetchResult::ALL {
                metrics.add(None, Inst::ConfigFetches, vec![("result", r.as_str().into())], 0);
            }
        }
        for result in ["success", "failure"] {
            metrics.add(None, Inst::ConfigReloads, vec![("result", result.into())], 0);
        }
        for result in ["accepted", "unknown_token", "no_token", "too_large"] {
            metrics.add(None, Inst::CallbackRequests, vec![("result", result.into())], 0);
        }
        let t = Telemetry {
            traces,
            tracer,
            location: agent.location.clone(),
            metrics,
            exporter,
            spans,
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
                match export_metrics(&metrics, &exporter).await {
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
        for ok in ["success", "degraded"] {
            runs(vec![("outcome", ok.into())]);
            // The latency SLI reads these histograms (runs that did not fail): an empty
            // one from startup (`add` creates it) makes its first slow run count.
            self.metrics.add(Some(&j.name), Inst::JourneyDuration, vec![("outcome", ok.into())], 0);
        }
        for e in &errors {
            runs(vec![("outcome", "failure".into()), ("error.type", e.as_str().into())]);
        }
        self.metrics.add(Some(&j.name), Inst::Skipped, Vec::new(), 0);
        self.metrics.add(Some(&j.name), Inst::Cancelled, Vec::new(), 0);
        self.metrics.add(Some(&j.name), Inst::CleanupFailures, Vec::new(), 0);
        if j.retries.is_some() {
            for result in ["recovered", "failed"] {
                self.metrics.add(Some(&j.name), Inst::Retried, vec![("result", result.into())], 0);
            }
        }
        self.prometheus.lock().expect("prometheus lock").register(j, &self.location);
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
        let finished = (r.started + r.duration).duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.metrics.record(name, Inst::LastRun, Vec::new(), finished.as_secs_f64());
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
            let step = || ("step.name", std::borrow::Cow::Owned(s.name.clone()));
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
                            let mut extra: Extra = vec![step()];
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

    pub fn record_fetch(&self, result: crate::bundle::FetchResult) {
        self.metrics.add(None, Inst::ConfigFetches, vec![("result", result.as_str().into())], 1);
    }

    pub fn record_callback(&self, result: &'static str) {
        self.metrics.add(None, Inst::CallbackRequests, vec![("result", result.into())], 1);
    }

    /// Counts runs cut short by shutdown (their results are not in `synthetics.journey.runs`).
    pub fn record_cancelled(&self, j: &Journey) {
        self.metrics.add(Some(&j.name), Inst::Cancelled, Vec::new(), 1);
    }

    /// The admin `/metrics` body: every OTLP series under the Collector's
    /// Prometheus names, then the blackbox-style `probe_*` gauges.
    pub fn render_prometheus(&self) -> String {
        let mut families = prometheus::Families::default();
        self.metrics.render_prometheus(&mut families);
        self.prometheus.lock().expect("prometheus lock").add_to(&mut families);
        let mut out = String::new();
        families.write_to(&mut out);
        out
    }

    /// Exports what is pending and stops the exporters, all within `budget`
    /// (half each for traces and metrics), even when the collector hangs.
    pub async fn shutdown(&self, budget: Duration) {
        self.stop_export.cancel();
        let half = budget / 2;
        if let Some(spans) = &self.spans {
            spans.flush(half).await;
        }
        if let Some(exporter) = &self.exporter {
            match tokio::time::timeout(half, export_metrics(&self.metrics, exporter)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("final metrics export failed: {e}"),
                Err(_) => tracing::warn!("final metrics export timed out after {half:?}"),
            }
        }
        let _ = self.traces.shutdown_with_timeout(Duration::from_millis(100));
    }
}

/// The scheduler's reports, into the same metrics (the scheduler names only the trait).
impl crate::scheduler::RunSink for Telemetry {
    fn register(&self, j: &Journey) {
        Telemetry::register(self, j)
    }
    fn unregister(&self, name: &str) {
        Telemetry::unregister(self, name)
    }
    fn record(&self, j: &Journey, r: &RunResult) {
        Telemetry::record(self, j, r)
    }
    fn record_skip(&self, j: &Journey) {
        Telemetry::record_skip(self, j)
    }
    fn record_cancelled(&self, j: &Journey) {
        Telemetry::record_cancelled(self, j)
    }
    fn record_lateness(&self, late: Duration) {
        Telemetry::record_lateness(self, late)
    }
}

async fn export_metrics(metrics: &Metrics, exporter: &tokio::sync::Mutex<Transport>) -> Result<(), String> {
    let mut transport = exporter.lock().await;
    if let Some(req) = metrics.request_for(None) {
        transport.send(req).await?;
    }
    for names in metrics.journey_names().chunks(EXPORT_CHUNK) {
        if let Some(req) = metrics.request_for(Some(names)) {
            transport.send(req).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::runner::context::RunEnv;
    use crate::runner::tests::{journey, PanicStep};
    use crate::scheduler::Scheduler;

    /// A panicking run is counted as an `internal` failure and the journey
    /// keeps its schedule (before, it stayed "running" and every later tick was skipped).
    #[tokio::test]
    async fn a_panicking_journey_is_counted_and_keeps_its_schedule() {
        let mut j = journey("journeys:\n  - name: boom\n    interval: 1s\n    steps:\n      - {name: s, tcp: {address: \"127.0.0.1:1\"}}\n");
        j.steps[0].kind = Box::new(PanicStep);
        let telemetry =
            Arc::new(Telemetry::init(&AgentConfig::default(), None, &[]).expect("telemetry"));
        let mut sched = Scheduler::new(Arc::new(RunEnv::new_test()), telemetry.clone(), 4, None);
        sched.apply(vec![j]);
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let st = sched.status().lock().unwrap()["boom"].clone();
        assert!(st.runs >= 3, "{st:?}");
        assert_eq!((st.failures, st.skipped), (st.runs, 0), "{st:?}");
        assert_eq!(st.last_error_type.as_deref(), Some("internal"));
        assert!(
            st.last_message
                .as_deref()
                .unwrap_or("")
                .contains("panicked in this step: page reported an absurd number"),
            "{st:?}"
        );
        let prom = telemetry.render_prometheus();
        let counted = prom.lines().find(|l| l.starts_with("synthetics_journey_runs_total{") && l.contains("error_type=\"internal\"") && l.contains("outcome=\"failure\""));
        assert_eq!(counted.and_then(|l| l.rsplit(' ').next()), Some(st.runs.to_string().as_str()), "{prom}");
        assert!(sched
            .progress()
            .wedged(tokio::time::Instant::now())
            .is_none());
        sched.shutdown(Duration::from_secs(1), Duration::from_secs(1)).await;
    }

    fn series<'a>(prom: &'a str, journey: &str) -> Vec<&'a str> {
        let label = format!("journey_name=\"{journey}\"");
        prom.lines().filter(|l| !l.starts_with('#') && l.contains(&label)).collect()
    }

    /// Every outcome series of a registered journey exists at 0; a run
    /// counts once under its outcome and error type; removal takes the
    /// journey's series away and leaves the others.
    #[tokio::test]
    async fn register_record_and_unregister_through_the_prometheus_view() {
        let t = Telemetry::init(&AgentConfig::default(), None, &[]).expect("telemetry");
        let a = journey("journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - {name: s, tcp: {address: \"127.0.0.1:1\"}}\n");
        let b = journey("journeys:\n  - name: b\n    interval: 30s\n    steps:\n      - {name: s, tcp: {address: \"127.0.0.1:1\"}}\n");
        t.register(&a);
        t.register(&b);
        let prom = t.render_prometheus();
        let runs: Vec<&str> = series(&prom, "a").into_iter().filter(|l| l.starts_with("synthetics_journey_runs_total{")).collect();
        assert!(runs.iter().any(|l| l.contains("outcome=\"success\"") && l.ends_with(" 0")), "{prom}");
        for e in ["timeout", "assertion", "config", "internal", "connect", "dns"] {
            assert!(runs.iter().any(|l| l.contains(&format!("error_type=\"{e}\"")) && l.ends_with(" 0")), "no `{e}` series at 0:\n{prom}");
        }

        let r = crate::runner::run_journey(&a, Arc::new(RunEnv::new_test()), &CancellationToken::new()).await.expect("a result");
        assert_eq!(r.outcome, crate::vocab::Outcome::Failure, "{:?}", r.message);
        crate::scheduler::RunSink::record(&t, &a, &r);
        let prom = t.render_prometheus();
        let want = format!("error_type=\"{}\"", r.error_type.expect("an error type").as_str());
        let counted: Vec<&str> = series(&prom, "a").into_iter().filter(|l| l.starts_with("synthetics_journey_runs_total{") && !l.ends_with(" 0")).collect();
        assert_eq!(counted.len(), 1, "{counted:?}");
        assert!(counted[0].contains(&want) && counted[0].contains("outcome=\"failure\"") && counted[0].ends_with(" 1"), "{}", counted[0]);

        crate::scheduler::RunSink::unregister(&t, "a");
        let prom = t.render_prometheus();
        assert!(series(&prom, "a").is_empty(), "{prom}");
        assert!(!series(&prom, "b").is_empty(), "{prom}");
        assert!(prom.contains("synthetics_agent_config_reloads_total"), "agent series stay:\n{prom}");
    }
}
