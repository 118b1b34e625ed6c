//! Journey metrics, aggregated here and exported as OTLP protobuf.
//!
//! Why not the OpenTelemetry SDK's meter: it keeps ~4 KiB per series and
//! copies every series at each export (1,000 journeys ≈ 17,000 series ≈
//! 90 MB), and a cumulative series can never be deleted, while a removed
//! journey's series must stop being exported. Here a series costs a few
//! hundred bytes, export goes out in chunks, and removal is a map delete.
//! The wire format is the same OTLP (opentelemetry-proto types).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram as PHistogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// The instruments, in export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inst {
    Runs,
    JourneyDuration,
    StepDuration,
    PhaseDuration,
    CertRemaining,
    Skipped,
    CleanupFailures,
    SchedulerLateness,
    ConfigReloads,
    CallbackRequests,
    Cancelled,
    TelemetryDropped,
    ConfigFetches,
    Retried,
    LastRun,
    /// A histogram a kind declares for one of its phases (`synthetics.browser.*`), by metric name.
    Browser(&'static str),
}

enum Kind {
    Counter,
    Histogram,
    Gauge,
}

impl Inst {
    fn all() -> Vec<Inst> {
        let mut v = Self::FIXED.to_vec();
        for m in crate::steps::phase_metrics() {
            if !v.contains(&Inst::Browser(m.name)) {
                v.push(Inst::Browser(m.name));
            }
        }
        v
    }

    const FIXED: [Inst; 15] = [
        Inst::Runs,
        Inst::JourneyDuration,
        Inst::StepDuration,
        Inst::PhaseDuration,
        Inst::CertRemaining,
        Inst::Skipped,
        Inst::CleanupFailures,
        Inst::SchedulerLateness,
        Inst::ConfigReloads,
        Inst::CallbackRequests,
        Inst::Cancelled,
        Inst::TelemetryDropped,
        Inst::ConfigFetches,
        Inst::Retried,
        Inst::LastRun,
    ];

    fn describe(self) -> (&'static str, &'static str, &'static str, Kind) {
        match self {
            Inst::Runs => ("synthetics.journey.runs", "", "Journey runs by outcome and error.type", Kind::Counter),
            Inst::JourneyDuration => ("synthetics.journey.duration", "s", "Wall time of a journey run", Kind::Histogram),
            Inst::StepDuration => ("synthetics.step.duration", "s", "Duration of each step", Kind::Histogram),
            Inst::PhaseDuration => ("synthetics.http.phase.duration", "s", "HTTP phases: dns, connect, tls, ttfb, transfer", Kind::Histogram),
            Inst::CertRemaining => ("synthetics.tls.cert.remaining", "s", "Seconds until the earliest certificate in the chain expires", Kind::Gauge),
            Inst::Skipped => ("synthetics.journey.skipped", "", "Ticks skipped because the previous run was still going", Kind::Counter),
            Inst::CleanupFailures => ("synthetics.journey.cleanup.failures", "", "Runs whose finally steps failed", Kind::Counter),
            Inst::SchedulerLateness => ("synthetics.scheduler.lateness", "s", "How late a run started after its scheduled time", Kind::Histogram),
            Inst::ConfigReloads => ("synthetics.agent.config.reloads", "", "Config reloads by result", Kind::Counter),
            Inst::CallbackRequests => ("synthetics.callback.requests", "", "Inbound callback requests by result", Kind::Counter),
            Inst::Cancelled => ("synthetics.journey.cancelled", "", "Runs cut short because the agent shut down (not in synthetics.journey.runs)", Kind::Counter),
            Inst::TelemetryDropped => ("synthetics.agent.telemetry.dropped", "", "Telemetry items dropped because the export buffer was full, by signal", Kind::Counter),
            Inst::ConfigFetches => ("synthetics.agent.config.fetches", "", "Probe bundle fetches by result", Kind::Counter),
            Inst::Retried => ("synthetics.journey.retried", "", "Runs that needed a retry, by result (recovered, failed); runs counts each run once, by its final outcome", Kind::Counter),
            Inst::LastRun => ("synthetics.journey.last_run.timestamp", "s", "Unix time the journey's last run finished", Kind::Gauge),
            Inst::Browser(name) => {
                let d = crate::steps::phase_metrics().find(|m| m.name == name).map(|m| m.description).unwrap_or("");
                (name, "s", d, Kind::Histogram)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Hist {
    bounds: Arc<[f64]>,
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: Arc<[f64]>) -> Hist {
        let n = bounds.len() + 1;
        Hist { bounds, counts: vec![0; n], count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
    fn record(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Histograms boxed: a counter or gauge (most series) then takes 24 bytes in
/// its map node instead of a histogram's 72.
#[derive(Debug, Clone)]
enum Point {
    Sum(u64),
    Hist(Box<Hist>),
    Gauge(f64, u64),
}

/// Attributes beyond a journey's own: (key, value), few and mostly static
/// (outcomes, error types, phases), so a static value is borrowed, not copied
/// into every series key and every lookup.
pub type Extra = Vec<(&'static str, std::borrow::Cow<'static, str>)>;

/// A copy of one owner's series, taken for an export.
type Owned = (Vec<(String, String)>, BTreeMap<(Inst, Extra), Point>);

#[derive(Default)]
struct Series {
    /// Attributes every series of the owner carries (journey name, location, labels).
    base: Vec<(String, String)>,
    points: BTreeMap<(Inst, Extra), Point>,
}

pub struct Metrics {
    start_ns: u64,
    resource: Vec<KeyValue>,
    journeys: Mutex<BTreeMap<String, Series>>,
    agent: Mutex<Series>,
    pub journey_bounds: Arc<[f64]>,
    pub default_bounds: Arc<[f64]>,
    pub lateness_bounds: Arc<[f64]>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.to_string(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.to_string())) }), ..Default::default() }
}

impl Metrics {
    pub fn new(resource: &[(String, String)], agent_base: Vec<(String, String)>, journey_bounds: Vec<f64>, default_bounds: Vec<f64>, lateness_bounds: Vec<f64>) -> Metrics {
        Metrics {
            start_ns: now_ns(),
            resource: resource.iter().map(|(k, v)| kv(k, v)).collect(),
            journeys: Mutex::new(BTreeMap::new()),
            agent: Mutex::new(Series { base: agent_base, points: BTreeMap::new() }),
            journey_bounds: journey_bounds.into(),
            default_bounds: default_bounds.into(),
            lateness_bounds: lateness_bounds.into(),
        }
    }

    /// Starts (or keeps) the series of a journey with these base attributes.
    pub fn add_journey(&self, name: &str, base: Vec<(String, String)>) {
        let mut j = self.journeys.lock().expect("metrics lock");
        let s = j.entry(name.to_string()).or_default();
        if s.base != base {
            // Labels changed: the old series no longer describe this journey.
            *s = Series { base, points: BTreeMap::new() };
        }
    }

    /// Stops exporting every series of a removed journey.
    pub fn remove_journey(&self, name: &str) {
        self.journeys.lock().expect("metrics lock").remove(name);
    }

    fn bounds_for(&self, inst: Inst) -> Arc<[f64]> {
        match inst {
            Inst::JourneyDuration => self.journey_bounds.clone(),
            Inst::SchedulerLateness => self.lateness_bounds.clone(),
            _ => self.default_bounds.clone(),
        }
    }

    fn update(&self, series: &mut Series, inst: Inst, mut extra: Extra, f: impl FnOnce(&mut Point)) {
        extra.sort();
        let bounds = || self.bounds_for(inst);
        let point = series.points.entry((inst, extra)).or_insert_with(|| match inst.describe().3 {
            Kind::Counter => Point::Sum(0),
            Kind::Histogram => Point::Hist(Box::new(Hist::new(bounds()))),
            Kind::Gauge => Point::Gauge(0.0, 0),
        });
        f(point);
    }

    pub fn add(&self, journey: Option<&str>, inst: Inst, extra: Extra, n: u64) {
        self.with(journey, |m, s| {
            m.update(s, inst, extra, |p| {
                if let Point::Sum(v) = p {
                    *v += n
                }
            })
        });
    }

    pub fn record(&self, journey: Option<&str>, inst: Inst, extra: Extra, value: f64) {
        self.with(journey, |m, s| {
            m.update(s, inst, extra, |p| match p {
                Point::Hist(h) => h.record(value),
                Point::Gauge(v, t) => {
                    *v = value;
                    *t = now_ns();
                }
                Point::Sum(_) => {}
            })
        });
    }

    fn with(&self, journey: Option<&str>, f: impl FnOnce(&Self, &mut Series)) {
        match journey {
            Some(name) => {
                let mut js = self.journeys.lock().expect("metrics lock");
                if let Some(s) = js.get_mut(name) {
                    f(self, s);
                }
            }
            None => f(self, &mut self.agent.lock().expect("metrics lock")),
        }
    }

    /// Journey names, for exporting in chunks.
    pub fn journey_names(&self) -> Vec<String> {
        self.journeys.lock().expect("metrics lock").keys().cloned().collect()
    }

    /// The Prometheus text of every series, translated as the Collector
    /// would, built in the same chunks as an export.
    pub fn render_prometheus(&self, families: &mut super::prometheus::Families) {
        if let Some(req) = self.request_for(None) {
            families.add_otlp(&req);
        }
        for names in self.journey_names().chunks(super::EXPORT_CHUNK) {
            if let Some(req) = self.request_for(Some(names)) {
                families.add_otlp(&req);
            }
        }
    }

    /// One export request: the agent's own series, or those of `journeys`.
    /// Built per chunk so an export never holds a copy of every series at once.
    pub fn request_for(&self, journeys: Option<&[String]>) -> Option<ExportMetricsServiceRequest> {
        let now = now_ns();
        let owners: Vec<Owned> = match journeys {
            None => {
                let a = self.agent.lock().expect("metrics lock");
                vec![(a.base.clone(), a.points.clone())]
            }
            Some(names) => {
                let js = self.journeys.lock().expect("metrics lock");
                names.iter().filter_map(|n| js.get(n)).map(|s| (s.base.clone(), s.points.clone())).collect()
            }
        };
        let req = self.request(&owners, now);
        let empty = req.resource_metrics.first().is_none_or(|rm| rm.scope_metrics.first().is_none_or(|sm| sm.metrics.is_empty()));
        (!empty).then_some(req)
    }

    fn request(&self, owners: &[Owned], now: u64) -> ExportMetricsServiceRequest {
        let mut metrics = Vec::new();
        for inst in Inst::all() {
            let (name, unit, description, kind) = inst.describe();
            let mut numbers = Vec::new();
            let mut hists = Vec::new();
            for (base, points) in owners {
                for ((i, extra), p) in points.range((inst, Vec::new())..) {
                    if *i != inst {
                        break;
                    }
                    let mut attributes: Vec<KeyValue> = base.iter().map(|(k, v)| kv(k, v)).collect();
                    attributes.extend(extra.iter().map(|(k, v)| kv(k, v)));
                    match p {
                        Point::Sum(v) => numbers.push(NumberDataPoint {
                            attributes,
                            start_time_unix_nano: self.start_ns,
                            time_unix_nano: now,
                            value: Some(number_data_point::Value::AsInt(*v as i64)),
                            ..Default::default()
                        }),
                        Point::Gauge(v, t) => numbers.push(NumberDataPoint { attributes, time_unix_nano: *t, value: Some(number_data_point::Value::AsDouble(*v)), ..Default::default() }),
                        Point::Hist(h) => hists.push(HistogramDataPoint {
                            attributes,
                            start_time_unix_nano: self.start_ns,
                            time_unix_nano: now,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: h.counts.clone(),
                            explicit_bounds: h.bounds.to_vec(),
                            min: (h.count > 0).then_some(h.min),
                            max: (h.count > 0).then_some(h.max),
                            ..Default::default()
                        }),
                    }
                }
            }
            let data = match kind {
                Kind::Counter if !numbers.is_empty() => Some(metric::Data::Sum(Sum {
                    data_points: numbers,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                Kind::Gauge if !numbers.is_empty() => Some(metric::Data::Gauge(Gauge { data_points: numbers })),
                Kind::Histogram if !hists.is_empty() => Some(metric::Data::Histogram(PHistogram {
                    data_points: hists,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                _ => None,
            };
            if let Some(data) = data {
                metrics.push(Metric { name: name.into(), unit: unit.into(), description: description.into(), data: Some(data), ..Default::default() });
            }
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource { attributes: self.resource.clone(), ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope { name: "vantage".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// Sends export requests over OTLP gRPC or HTTP/protobuf.
#[allow(clippy::large_enum_variant)] // one per agent, never moved around
pub enum Transport {
    Grpc { client: MetricsServiceClient<tonic::transport::Channel>, headers: tonic::metadata::MetadataMap },
    Http { client: reqwest::Client, url: String, gzip: bool },
}

impl Transport {
    pub fn new(x: &super::ExportSettings) -> anyhow::Result<Transport> {
        if x.grpc {
            let mut endpoint = tonic::transport::Endpoint::from_shared(x.endpoint.clone())?.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10));
            if let Some(tls) = x.tonic_tls() {
                endpoint = endpoint.tls_config(tls)?;
            }
            let mut client = MetricsServiceClient::new(endpoint.connect_lazy());
            if x.gzip {
                client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            let mut headers = tonic::metadata::MetadataMap::new();
            for (k, v) in &x.headers {
                // Checked when the settings were resolved.
                if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                    headers.insert(k, v);
                }
            }
            Ok(Transport::Grpc { client, headers })
        } else {
            let mut map = reqwest::header::HeaderMap::new();
            for (k, v) in &x.headers {
                let mut v = reqwest::header::HeaderValue::from_str(v)?;
                v.set_sensitive(true);
                map.insert(reqwest::header::HeaderName::from_bytes(k.as_bytes())?, v);
            }
            let (certs, identity) = x.reqwest_tls()?;
            let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10)).default_headers(map);
            if !certs.is_empty() {
                b = b.tls_certs_only(certs);
            }
            if let Some(id) = identity {
                b = b.identity(id);
            }
            Ok(Transport::Http { client: b.build()?, url: format!("{}/v1/metrics", x.endpoint), gzip: x.gzip })
        }
    }

    pub async fn send(&mut self, req: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc { client, headers } => {
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = headers.clone();
                client.export(r).await.map(|_| ()).map_err(|e| format!("gRPC export failed: {}", e.message()))
            }
            Transport::Http { client, url, gzip } => {
                let mut body = req.encode_to_vec();
                let mut post = client.post(url.as_str()).header("content-type", "application/x-protobuf");
                if *gzip {
                    use std::io::Write as _;
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&body).map_err(|e| e.to_string())?;
                    body = enc.finish().map_err(|e| e.to_string())?;
                    post = post.header("content-encoding", "gzip");
                }
                let resp = post.body(body).send().await.map_err(|e| format!("HTTP export to {url} failed: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP export to {url} answered {}", resp.status()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality, Metric};
    use prost::Message;

    use super::{Inst, Metrics};

    fn metrics() -> Metrics {
        let m = Metrics::new(&[("service.name".into(), "vantage".into())], vec![("synthetics.location".into(), "eu".into())], vec![0.5, 2.0], vec![0.1, 1.0], vec![0.01]);
        m.add_journey("login", vec![("journey.name".into(), "login".into()), ("synthetics.location".into(), "eu".into())]);
        m
    }

    /// The request as a collector receives it: encoded to protobuf bytes and decoded again.
    fn on_the_wire(req: ExportMetricsServiceRequest) -> Vec<Metric> {
        let bytes = req.encode_to_vec();
        let back = ExportMetricsServiceRequest::decode(bytes.as_slice()).expect("valid OTLP protobuf");
        assert_eq!(back, req, "the bytes decode to what was built");
        let rm = &back.resource_metrics[0];
        let resource: Vec<(String, String)> = rm.resource.as_ref().unwrap().attributes.iter().map(|a| (a.key.clone(), attr(a))).collect();
        assert_eq!(resource, [("service.name".to_string(), "vantage".to_string())]);
        assert_eq!(rm.scope_metrics[0].scope.as_ref().unwrap().name, "vantage");
        rm.scope_metrics[0].metrics.clone()
    }

    fn attr(a: &opentelemetry_proto::tonic::common::v1::KeyValue) -> String {
        match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("expected a string attribute, got {other:?}"),
        }
    }

    #[test]
    fn a_counter_is_a_cumulative_monotonic_sum_with_journey_and_extra_attributes() {
        let m = metrics();
        m.add(Some("login"), Inst::Runs, vec![("outcome", "failure".into()), ("error.type", "http_status".into())], 2);
        m.add(Some("login"), Inst::Runs, vec![("error.type", "http_status".into()), ("outcome", "failure".into())], 1);
        let ms = on_the_wire(m.request_for(Some(&["login".to_string()])).expect("a series to export"));
        assert_eq!(ms.len(), 1, "{ms:?}");
        assert_eq!((ms[0].name.as_str(), ms[0].unit.as_str()), ("synthetics.journey.runs", ""));
        let Some(metric::Data::Sum(sum)) = &ms[0].data else { panic!("expected a sum, got {:?}", ms[0].data) };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        // Attribute order does not split a series: both adds land on one point.
        assert_eq!(sum.data_points.len(), 1);
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(3)));
        let attrs: Vec<(String, String)> = p.attributes.iter().map(|a| (a.key.clone(), attr(a))).collect();
        assert_eq!(
            attrs,
            [("journey.name", "login"), ("synthetics.location", "eu"), ("error.type", "http_status"), ("outcome", "failure")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(p.start_time_unix_nano > 0 && p.time_unix_nano >= p.start_time_unix_nano);
    }

    #[test]
    fn a_histogram_carries_its_bounds_counts_sum_min_and_max() {
        let m = metrics();
        for v in [0.2, 1.0, 3.0] {
            m.record(Some("login"), Inst::JourneyDuration, vec![("outcome", "success".into())], v);
        }
        let ms = on_the_wire(m.request_for(Some(&["login".to_string()])).unwrap());
        assert_eq!((ms[0].name.as_str(), ms[0].unit.as_str()), ("synthetics.journey.duration", "s"));
        let Some(metric::Data::Histogram(h)) = &ms[0].data else { panic!("expected a histogram, got {:?}", ms[0].data) };
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &h.data_points[0];
        // The journey's own buckets; a value equal to a bound counts in that bound's bucket (le).
        assert_eq!(p.explicit_bounds, [0.5, 2.0]);
        assert_eq!(p.bucket_counts, [1, 1, 1]);
        assert_eq!((p.count, p.sum, p.min, p.max), (3, Some(4.2), Some(0.2), Some(3.0)));
    }

    #[test]
    fn a_counter_created_at_zero_is_exported_as_zero() {
        let m = metrics();
        m.add(Some("login"), Inst::Runs, vec![], 0);
        let ms = on_the_wire(m.request_for(Some(&["login".to_string()])).unwrap());
        assert_eq!(ms[0].name, "synthetics.journey.runs");
        // A series created at zero (so it exists from startup) is exported as 0, not skipped.
        let Some(metric::Data::Sum(sum)) = &ms[0].data else { panic!() };
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsInt(0)));
    }

    #[test]
    fn a_removed_journey_stops_being_exported_and_others_stay() {
        let m = metrics();
        m.add_journey("search", vec![("journey.name".into(), "search".into())]);
        m.add(Some("login"), Inst::Runs, vec![], 1);
        m.add(Some("search"), Inst::Runs, vec![], 1);
        m.remove_journey("login");
        assert!(m.request_for(Some(&["login".to_string()])).is_none(), "nothing to export for a removed journey");
        let ms = on_the_wire(m.request_for(Some(&m.journey_names())).unwrap());
        let Some(metric::Data::Sum(sum)) = &ms[0].data else { panic!() };
        assert_eq!(sum.data_points.len(), 1);
        assert_eq!(attr(&sum.data_points[0].attributes[0]), "search");
        // Recording for a removed journey is dropped, not resurrected.
        m.add(Some("login"), Inst::Runs, vec![], 1);
        assert_eq!(m.journey_names(), ["search"]);
    }

    #[test]
    fn changed_labels_restart_a_journeys_series() {
        let m = metrics();
        m.add(Some("login"), Inst::Runs, vec![], 5);
        m.add_journey("login", vec![("journey.name".into(), "login".into()), ("team".into(), "identity".into())]);
        m.add(Some("login"), Inst::Runs, vec![], 1);
        let ms = on_the_wire(m.request_for(Some(&["login".to_string()])).unwrap());
        let Some(metric::Data::Sum(sum)) = &ms[0].data else { panic!() };
        assert_eq!(sum.data_points.len(), 1);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsInt(1)));
        assert_eq!(sum.data_points[0].attributes.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["journey.name", "team"]);
    }

    #[test]
    fn a_gauge_keeps_the_last_value_and_agent_series_export_apart() {
        let m = metrics();
        m.record(Some("login"), Inst::CertRemaining, vec![("step.name", "tls".into())], 86400.0);
        m.record(Some("login"), Inst::CertRemaining, vec![("step.name", "tls".into())], 3600.0);
        m.add(None, Inst::ConfigReloads, vec![("result", "success".into())], 1);
        let ms = on_the_wire(m.request_for(Some(&["login".to_string()])).unwrap());
        let Some(metric::Data::Gauge(g)) = &ms[0].data else { panic!("expected a gauge, got {:?}", ms[0].data) };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(3600.0)));
        let agent = on_the_wire(m.request_for(None).unwrap());
        assert_eq!(agent.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["synthetics.agent.config.reloads"]);
        let Some(metric::Data::Sum(sum)) = &agent[0].data else { panic!() };
        assert_eq!(attr(&sum.data_points[0].attributes[0]), "eu", "agent series carry the agent's base attributes");
    }
}
