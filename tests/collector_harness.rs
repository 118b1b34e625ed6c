//! Tests of the collector harness itself (tests/common/collector.rs): export
//! real OTLP with opentelemetry-otlp 0.33 over gRPC and HTTP/protobuf into a
//! real Rotel collector, and check what the harness parses out of its log.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use common::collector::{Collector, MetricKind, MetricPoint, SpanRecord, Temporality as CTemp};
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{
    Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

const WAIT: Duration = Duration::from_secs(5);
const COUNTER: &str = "vantage_test.requests";
const HISTOGRAM: &str = "vantage_test.latency";
const BOUNDS: [f64; 3] = [0.1, 0.5, 1.0];

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    Http,
}

/// Polls a future with a Tokio runtime entered.
///
/// The SDK's PeriodicReader exports from its own plain thread (via
/// `futures_executor::block_on`). tonic copes (its channel worker was spawned
/// on the runtime at build time), but the async reqwest client used by the
/// HTTP exporter needs a runtime context when the request is made.
struct Entered<'a> {
    handle: tokio::runtime::Handle,
    fut: Pin<Box<dyn Future<Output = OTelSdkResult> + Send + 'a>>,
}

impl Future for Entered<'_> {
    type Output = OTelSdkResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<OTelSdkResult> {
        let _guard = self.handle.enter();
        self.fut.as_mut().poll(cx)
    }
}

struct InRuntime<E> {
    inner: E,
    handle: tokio::runtime::Handle,
}

impl<E: PushMetricExporter> PushMetricExporter for InRuntime<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        Entered {
            handle: self.handle.clone(),
            fut: Box::pin(self.inner.export(metrics)),
        }
        .await
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn resource(transport: Transport) -> Resource {
    Resource::builder_empty()
        .with_service_name("vantage-harness-test")
        .with_attributes([
            KeyValue::new("deployment.environment", "ci"),
            KeyValue::new("test.transport", format!("{transport:?}")),
        ])
        .build()
}

/// Must be called with the runtime entered.
fn meter_provider(
    c: &Collector,
    transport: Transport,
    rt: &tokio::runtime::Runtime,
) -> SdkMeterProvider {
    let b = opentelemetry_otlp::MetricExporter::builder();
    let exporter = match transport {
        Transport::Grpc => b
            .with_tonic()
            .with_endpoint(c.grpc_endpoint())
            .with_timeout(Duration::from_secs(2))
            .with_retry_policy(RetryPolicy::disabled())
            .with_temporality(Temporality::Cumulative)
            .build(),
        Transport::Http => b
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            // A programmatic endpoint is used verbatim: include the path.
            .with_endpoint(format!("{}/v1/metrics", c.http_endpoint()))
            .with_timeout(Duration::from_secs(2))
            .with_retry_policy(RetryPolicy::disabled())
            .with_temporality(Temporality::Cumulative)
            .build(),
    }
    .expect("build metric exporter");
    let reader = PeriodicReader::builder(InRuntime {
        inner: exporter,
        handle: rt.handle().clone(),
    })
    // Only explicit force_flush() exports.
    .with_interval(Duration::from_secs(3600))
    .build();
    SdkMeterProvider::builder()
        .with_resource(resource(transport))
        .with_reader(reader)
        .build()
}

/// Must be called with the runtime entered (the simple processor exports on
/// the thread that ends the span).
fn tracer_provider(c: &Collector, transport: Transport) -> SdkTracerProvider {
    let b = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match transport {
        Transport::Grpc => b.with_tonic().with_endpoint(c.grpc_endpoint()).build(),
        Transport::Http => b
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", c.http_endpoint()))
            .build(),
    }
    .expect("build span exporter");
    SdkTracerProvider::builder()
        .with_resource(resource(transport))
        .with_simple_exporter(exporter)
        .build()
}

fn instruments(mp: &SdkMeterProvider) -> (Counter<u64>, Histogram<f64>) {
    let meter = mp.meter("vantage-harness");
    let counter = meter
        .u64_counter(COUNTER)
        .with_description("requests made")
        .with_unit("{request}")
        .build();
    let hist = meter
        .f64_histogram(HISTOGRAM)
        .with_unit("s")
        .with_boundaries(BOUNDS.to_vec())
        .build();
    (counter, hist)
}

fn attrs(probe: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("probe", probe.to_string()),
        KeyValue::new("ok", true),
        KeyValue::new("attempt", 2i64),
        KeyValue::new("ratio", 0.25),
    ]
}

fn counter_value(points: &[MetricPoint]) -> Option<f64> {
    points.first().and_then(|p| p.value)
}

fn check_metrics(transport: Transport) {
    let c = Collector::start();
    let rt = runtime();
    let _guard = rt.enter();
    let mp = meter_provider(&c, transport, &rt);
    let (counter, hist) = instruments(&mp);

    counter.add(3, &attrs("home"));
    counter.add(4, &attrs("home"));
    counter.add(1, &attrs("login"));
    for v in [0.05, 0.3, 0.7, 2.0, 0.07] {
        hist.record(v, &[KeyValue::new("probe", "home")]);
    }
    mp.force_flush()
        .expect("force_flush (export to the collector)");

    let home = c.wait_for_metric(
        COUNTER,
        |p| p.attributes.get("probe").map(String::as_str) == Some("home"),
        WAIT,
    );
    assert_eq!(home.len(), 1, "{home:#?}");
    let p = &home[0];
    assert_eq!(p.kind, MetricKind::Sum);
    assert_eq!(p.value, Some(7.0), "{p:#?}");
    assert_eq!(p.temporality, Some(CTemp::Cumulative));
    assert_eq!(p.is_monotonic, Some(true));
    assert_eq!(p.description, "requests made");
    assert_eq!(p.unit, "{request}");
    assert_eq!(p.scope, "vantage-harness");
    let expected: Vec<(&str, &str)> = vec![
        ("attempt", "2"),
        ("ok", "true"),
        ("probe", "home"),
        ("ratio", "0.25"),
    ];
    let got: Vec<(&str, &str)> = p
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        p.resource.get("service.name").map(String::as_str),
        Some("vantage-harness-test")
    );
    assert_eq!(
        p.resource.get("deployment.environment").map(String::as_str),
        Some("ci")
    );
    assert_eq!(
        p.resource.get("test.transport"),
        Some(&format!("{transport:?}"))
    );

    let login = c.wait_for_metric(
        COUNTER,
        |p| p.attributes.get("probe").map(String::as_str) == Some("login"),
        WAIT,
    );
    assert_eq!(counter_value(&login), Some(1.0));

    let h = c.wait_for_metric(HISTOGRAM, |_| true, WAIT);
    assert_eq!(h.len(), 1, "{h:#?}");
    let h = &h[0];
    assert_eq!(h.kind, MetricKind::Histogram);
    assert_eq!(h.temporality, Some(CTemp::Cumulative));
    assert_eq!(h.unit, "s");
    assert_eq!(h.explicit_bounds, BOUNDS.to_vec(), "{h:#?}");
    // 0.05, 0.07 | 0.3 | 0.7 | 2.0
    assert_eq!(h.bucket_counts, vec![2, 1, 1, 1], "{h:#?}");
    assert_eq!(h.count, Some(5));
    let sum = h.sum.expect("histogram sum");
    assert!((sum - 3.12).abs() < 1e-9, "sum {sum}");
    assert_eq!(h.min, Some(0.05));
    assert_eq!(h.max, Some(2.0));
    assert_eq!(h.value, None);
    assert_eq!(h.attributes.get("probe").map(String::as_str), Some("home"));

    // No spans were sent on this collector.
    assert!(c.spans().is_empty(), "{:#?}", c.spans());
    mp.shutdown().ok();
}

fn check_trace(transport: Transport) {
    let c = Collector::start();
    let rt = runtime();
    let _guard = rt.enter();
    let tp = tracer_provider(&c, transport);
    let tracer = tp.tracer("vantage-harness");

    let root = tracer
        .span_builder("probe.run")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("probe", "home"),
            KeyValue::new("step.count", 1i64),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(root);
    let mut child = tracer
        .span_builder("http.request")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.response.status_code", 503i64),
            KeyValue::new("url.full", "http://127.0.0.1:1/health"),
        ])
        .start_with_context(&tracer, &cx);
    // Event attributes must not leak into the span's attributes.
    child.add_event("retry", vec![KeyValue::new("retry.attempt", 1i64)]);
    child.set_status(Status::error("upstream returned 503"));
    child.end();
    cx.span().set_status(Status::Ok);
    cx.span().end();
    // A separate trace whose span never gets a status.
    tracer.start("standalone.unset").end();
    tp.force_flush().expect("force_flush spans");

    let spans = c.wait_for_n_spans(3, |_| true, WAIT);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let find = |n: &str| -> &SpanRecord {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n}: {spans:#?}"))
    };
    let root = find("probe.run");
    let child = find("http.request");
    let unset = find("standalone.unset");
    assert_eq!(unset.status_code, "STATUS_CODE_UNSET", "{unset:#?}");
    assert_eq!(unset.status_message, "");
    assert_eq!(unset.kind, "SPAN_KIND_INTERNAL");
    assert_eq!(unset.parent_span_id, None);
    assert_ne!(unset.trace_id, root.trace_id);
    assert!(unset.attributes.is_empty(), "{unset:#?}");

    assert_eq!(root.parent_span_id, None, "{root:#?}");
    assert_eq!(child.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(root.trace_id.len(), 32);
    assert_eq!(root.span_id.len(), 16);
    assert_ne!(root.span_id, child.span_id);

    assert_eq!(root.kind, "SPAN_KIND_SERVER");
    assert_eq!(child.kind, "SPAN_KIND_CLIENT");
    assert_eq!(root.status_code, "STATUS_CODE_OK");
    assert_eq!(child.status_code, "STATUS_CODE_ERROR");
    assert_eq!(child.status_message, "upstream returned 503");
    assert_eq!(
        child
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("503")
    );
    assert_eq!(child.attributes.len(), 2, "{child:#?}");
    assert_eq!(
        child.attributes.get("url.full").map(String::as_str),
        Some("http://127.0.0.1:1/health")
    );
    assert_eq!(
        root.attributes.get("probe").map(String::as_str),
        Some("home")
    );
    assert_eq!(
        root.attributes.get("step.count").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        root.resource.get("service.name").map(String::as_str),
        Some("vantage-harness-test")
    );
    assert_eq!(root.scope, "vantage-harness");
    let (s, e) = (
        child.start_time_unix_nano.expect("start"),
        child.end_time_unix_nano.expect("end"),
    );
    assert!(s > 1_600_000_000_000_000_000 && e >= s, "{child:#?}");

    // No metrics were sent on this collector.
    assert!(c.metrics().is_empty(), "{:#?}", c.metrics());
    tp.shutdown().ok();
}

#[test]
fn grpc_metrics_are_parsed() {
    check_metrics(Transport::Grpc);
}

#[test]
fn http_metrics_are_parsed() {
    check_metrics(Transport::Http);
}

#[test]
fn grpc_trace_is_parsed() {
    check_trace(Transport::Grpc);
}

#[test]
fn http_trace_is_parsed() {
    check_trace(Transport::Http);
}

/// The collector goes away and comes back on the same ports: exports during
/// the outage fail, and the first export after the restart carries the
/// cumulative total including what was recorded during the outage.
#[test]
fn stop_and_restart_on_same_ports() {
    let mut c = Collector::start();
    let rt = runtime();
    let _guard = rt.enter();
    let mp = meter_provider(&c, Transport::Grpc, &rt);
    let (counter, _) = instruments(&mp);
    let (grpc, http) = (c.grpc_endpoint(), c.http_endpoint());
    let first_pid = c.pid().expect("running");

    counter.add(5, &attrs("home"));
    mp.force_flush().expect("first export");
    let p = c.wait_for_metric(COUNTER, |p| p.value == Some(5.0), WAIT);
    assert_eq!(p.len(), 1);

    c.stop();
    assert!(!c.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", c.grpc_port())).is_err(),
        "gRPC port still open after stop"
    );
    counter.add(2, &attrs("home"));
    assert!(
        mp.force_flush().is_err(),
        "export succeeded while the collector was stopped"
    );

    c.restart();
    assert_eq!(
        (c.grpc_endpoint(), c.http_endpoint()),
        (grpc, http),
        "restart must reuse the ports"
    );
    assert_ne!(c.pid(), Some(first_pid));
    counter.add(1, &attrs("home"));
    // The exporter may need one failed attempt to notice the new server.
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(e) = mp.force_flush() {
        assert!(
            std::time::Instant::now() < deadline,
            "export after restart keeps failing: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = c.wait_for_metric(COUNTER, |p| p.value == Some(8.0), WAIT);
    assert_eq!(p[0].temporality, Some(CTemp::Cumulative));
    // Everything from before the outage is still in the log, in order.
    let values: Vec<f64> = c
        .metrics()
        .iter()
        .filter(|p| p.name == COUNTER)
        .filter_map(|p| p.value)
        .collect();
    assert_eq!(values.first(), Some(&5.0), "{values:?}");
    assert_eq!(values.last(), Some(&8.0), "{values:?}");
    assert!(
        !values.contains(&7.0),
        "a point was received during the outage: {values:?}"
    );
    mp.shutdown().ok();
}

#[test]
fn drop_kills_the_agent() {
    let c = Collector::start();
    let pid = c.pid().expect("running");
    let port = c.grpc_port();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(c);
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("rotel-agent.*127.0.0.1:{port}")])
        .output()
        .expect("run pgrep");
    assert!(
        out.stdout.is_empty(),
        "leftover rotel-agent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
}

fn panic_message(f: impl FnOnce()) -> String {
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A failed wait must say what did arrive.
#[test]
fn failed_waits_report_what_was_received() {
    let c = Collector::start();
    let rt = runtime();
    let _guard = rt.enter();
    let mp = meter_provider(&c, Transport::Http, &rt);
    let (counter, _) = instruments(&mp);
    counter.add(1, &attrs("home"));
    mp.force_flush().expect("export");
    c.wait_for_metric(COUNTER, |_| true, WAIT);

    let msg = panic_message(|| {
        c.wait_for_metric(
            COUNTER,
            |p| p.value == Some(99.0),
            Duration::from_millis(300),
        );
    });
    assert!(msg.contains("timed out") && msg.contains(COUNTER), "{msg}");
    assert!(
        msg.contains("value: Some(1.0)"),
        "message should show the latest points: {msg}"
    );

    let msg = panic_message(|| {
        c.wait_for_metric("no.such.metric", |_| true, Duration::from_millis(300));
    });
    assert!(
        msg.contains("\"no.such.metric\"") && msg.contains(COUNTER),
        "{msg}"
    );
    assert!(
        msg.contains("Value: 1"),
        "message should include a log snippet: {msg}"
    );

    let msg = panic_message(|| {
        c.wait_for_spans(|_| true, Duration::from_millis(300));
    });
    assert!(msg.contains("spans received: []"), "{msg}");
    mp.shutdown().ok();
}

/// Parser edge cases on a fixed excerpt of real rotel output (ANSI-coloured
/// agent log line, empty string attribute, span event, metrics and spans in
/// one log), independent of the agent.
#[test]
fn parser_handles_fixed_excerpt() {
    use common::collector::{parse_metrics, parse_spans, strip_ansi};
    let log = strip_ansi(concat!(
        "\x1b[2m2026-11-25T05:44:51.839400Z\x1b[0m \x1b[32m INFO\x1b[0m Starting Rotel. grpc_endpoint=\"127.0.0.1:1\"\n",
        "ResourceMetrics #0\nResource SchemaURL: \nResource attributes:\n",
        "     -> service.name: Str(svc)\n     -> empty: Str()\n",
        "ScopeMetrics #0\nScopeMetrics SchemaURL: \nInstrumentationScope myscope 1.0\n",
        "Metric #0\nDescriptor:\n     -> Name: g\n     -> Description: \n     -> Unit: \n     -> DataType: Gauge\n",
        "NumberDataPoints #0\nStartTimestamp: 0\nTimestamp: 2\nValue: 0.25\n",
        "ResourceSpans #0\nResource SchemaURL: \nResource attributes:\n     -> service.name: Str(svc2)\n",
        "ScopeSpans #0\nScopeSpans SchemaURL: \nInstrumentationScope tr \nSpan #0\n",
        "    Trace ID       : 5B8EFFF798038103D269B633813FC60C\n    Parent ID      : \n",
        "    ID             : eee19b7ec3c1b173\n    Name           : root: with colon\n",
        "    Kind           : SPAN_KIND_SERVER\nStart time: 1\nEnd time: 2\n",
        "Attributes:\n     -> k: Str(a: b)\nEvents:\nSpanEvent #0\n     -> Name: e\n",
        "     -> Attributes::\n          -> leaked: Int(1)\n",
    ));
    let m = parse_metrics(&log);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(
        (m[0].name.as_str(), m[0].kind, m[0].value),
        ("g", MetricKind::Gauge, Some(0.25))
    );
    assert_eq!(
        (m[0].scope.as_str(), m[0].scope_version.as_str()),
        ("myscope", "1.0")
    );
    assert_eq!(m[0].resource.get("empty").map(String::as_str), Some(""));
    assert_eq!((m[0].temporality, m[0].is_monotonic), (None, None));
    assert!(m[0].attributes.is_empty());

    let s = parse_spans(&log);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(s[0].name, "root: with colon");
    assert_eq!(s[0].trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(s[0].parent_span_id, None);
    assert_eq!(
        s[0].status_code, "STATUS_CODE_UNSET",
        "no status line means unset"
    );
    assert_eq!(
        s[0].resource.get("service.name").map(String::as_str),
        Some("svc2")
    );
    let attrs: Vec<(&str, &str)> = s[0]
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(attrs, vec![("k", "a: b")]);
    assert_eq!(
        (s[0].start_time_unix_nano, s[0].end_time_unix_nano),
        (Some(1), Some(2))
    );
}
