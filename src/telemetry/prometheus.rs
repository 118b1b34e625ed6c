//! The Prometheus text view served on the admin `/metrics`, for teams that
//! scrape.
//!
//! One set of names: every OTLP series the agent exports is rendered here
//! through the OpenTelemetry Collector's standard Prometheus translation
//! (`pkg/translator/prometheus`, the default of its `prometheus` and
//! `prometheusremotewrite` exporters and of Prometheus' own OTLP receiver),
//! so a rule file written for one path serves the other. The translation
//! works on the very export requests [`super::metrics::Metrics`] builds, so
//! the two cannot drift apart. Blackbox-style `probe_*` gauges come on top.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::UNIX_EPOCH;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::config::Journey;
use crate::vocab::{Outcome, PhaseRecording, RunResult};

/// How a metric is typed in Prometheus, which decides its suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromType {
    Counter,
    Gauge,
    Histogram,
}

impl PromType {
    fn as_str(self) -> &'static str {
        match self {
            PromType::Counter => "counter",
            PromType::Gauge => "gauge",
            PromType::Histogram => "histogram",
        }
    }
}

/// UCUM unit → Prometheus unit word, as the Collector's translator maps them.
fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

/// A unit part that is not in the table: kept if it is a plain word.
fn clean_unit(u: &str) -> Option<String> {
    let u: String = u.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let u = u.trim_matches('_').to_string();
    (!u.is_empty()).then_some(u)
}

/// The Prometheus metric name the Collector's translator gives an OTLP
/// metric (with unit and type suffixes, the default), e.g.
/// `synthetics.journey.duration` (s, histogram) → `synthetics_journey_duration_seconds`
/// and `synthetics.journey.runs` (monotonic sum) → `synthetics_journey_runs_total`.
pub fn metric_name(name: &str, unit: &str, typ: PromType) -> String {
    let mut tokens: Vec<String> = name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_string).collect();
    // Annotations like `{request}` carry no unit.
    let unit = if unit.starts_with('{') { "" } else { unit };
    let (main, per) = unit.split_once('/').unwrap_or((unit, ""));
    let main = if main.starts_with('{') { "" } else { main };
    let main_word = unit_word(main).map(str::to_string).or_else(|| clean_unit(main));
    if let Some(w) = main_word {
        if main != "1" && !tokens.contains(&w) {
            tokens.push(w);
        }
    }
    if let Some(p) = per_unit_word(per).map(str::to_string).or_else(|| clean_unit(per)) {
        if !tokens.contains(&p) {
            tokens.push("per".into());
            tokens.push(p);
        }
    }
    match typ {
        PromType::Counter => {
            tokens.retain(|t| t != "total");
            tokens.push("total".into());
        }
        PromType::Gauge if unit == "1" => {
            tokens.retain(|t| t != "ratio");
            tokens.push("ratio".into());
        }
        _ => {}
    }
    let mut out = tokens.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The Prometheus label name for an OTLP attribute key, e.g. `journey.name` → `journey_name`.
pub fn label_name(key: &str) -> String {
    let mut out: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    } else if out.starts_with('_') && !out.starts_with("__") {
        out.insert_str(0, "key");
    }
    out
}

/// Attributes → labels. Keys that translate to the same label name have
/// their values joined with `;` in the order of the original keys, as the
/// Collector does, so no label is silently lost.
pub fn labels<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    let mut sorted: Vec<(&str, &str)> = attrs.into_iter().collect();
    sorted.sort();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in sorted {
        out.entry(label_name(k))
            .and_modify(|old| {
                old.push(';');
                old.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    out.into_iter().collect()
}

/// A label value in the text format: `\`, `"` and newlines escaped.
pub fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_labels(out: &mut String, labels: &[(String, String)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_value(v));
    }
    out.push('}');
}

/// A number the way Prometheus (and Go's `strconv.FormatFloat(v, 'f', -1, 64)`) writes it.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn attr_str(kv: &KeyValue) -> (&str, String) {
    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => fmt_num(*d),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    };
    (kv.key.as_str(), v)
}

/// Metric families being rendered, in first-seen order; several export
/// requests (the agent's, then journeys in chunks) add to the same family.
#[derive(Default)]
pub struct Families {
    order: Vec<String>,
    by_name: HashMap<String, (PromType, String, String)>,
}

impl Families {
    fn family(&mut self, name: String, typ: PromType, help: &str) -> &mut String {
        if !self.by_name.contains_key(&name) {
            self.order.push(name.clone());
        }
        &mut self.by_name.entry(name).or_insert_with(|| (typ, help.to_string(), String::new())).2
    }

    /// Adds every metric of an OTLP export request, translated.
    pub fn add_otlp(&mut self, req: &ExportMetricsServiceRequest) {
        for m in req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
            let Some(data) = &m.data else { continue };
            let typ = match data {
                metric::Data::Sum(s) if s.is_monotonic => PromType::Counter,
                metric::Data::Sum(_) | metric::Data::Gauge(_) => PromType::Gauge,
                metric::Data::Histogram(_) => PromType::Histogram,
                // Not produced by the agent; the Collector would drop or convert them.
                _ => continue,
            };
            let name = metric_name(&m.name, &m.unit, typ);
            let body = self.family(name.clone(), typ, &m.description);
            let points = match data {
                metric::Data::Sum(s) => &s.data_points[..],
                metric::Data::Gauge(g) => &g.data_points[..],
                _ => &[],
            };
            for p in points {
                let attrs: Vec<(&str, String)> = p.attributes.iter().map(attr_str).collect();
                let l = labels(attrs.iter().map(|(k, v)| (*k, v.as_str())));
                let v = match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i.to_string(),
                    Some(number_data_point::Value::AsDouble(d)) => fmt_num(d),
                    None => continue,
                };
                body.push_str(&name);
                write_labels(body, &l, None);
                let _ = writeln!(body, " {v}");
            }
            if let metric::Data::Histogram(h) = data {
                for p in &h.data_points {
                    let attrs: Vec<(&str, String)> = p.attributes.iter().map(attr_str).collect();
                    let l = labels(attrs.iter().map(|(k, v)| (*k, v.as_str())));
                    let mut cumulative = 0u64;
                    for (i, bound) in p.explicit_bounds.iter().enumerate() {
                        cumulative += p.bucket_counts.get(i).copied().unwrap_or(0);
                        let _ = write!(body, "{name}_bucket");
                        write_labels(body, &l, Some(("le", &fmt_num(*bound))));
                        let _ = writeln!(body, " {cumulative}");
                    }
                    let _ = write!(body, "{name}_bucket");
                    write_labels(body, &l, Some(("le", "+Inf")));
                    let _ = writeln!(body, " {}", p.count);
                    let _ = write!(body, "{name}_sum");
                    write_labels(body, &l, None);
                    let _ = writeln!(body, " {}", fmt_num(p.sum.unwrap_or(0.0)));
                    let _ = write!(body, "{name}_count");
                    write_labels(body, &l, None);
                    let _ = writeln!(body, " {}", p.count);
                }
            }
        }
    }

    /// Text exposition format 0.0.4: `# HELP`, `# TYPE`, then the samples, per family.
    pub fn write_to(&self, out: &mut String) {
        for name in &self.order {
            let (typ, help, body) = &self.by_name[name];
            if body.is_empty() {
                continue;
            }
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            }
            let _ = writeln!(out, "# TYPE {name} {}", typ.as_str());
            out.push_str(body);
        }
    }
}

#[derive(Default)]
struct JourneyState {
    labels: Vec<(String, String)>,
    last: Option<Last>,
}

struct Last {
    success: bool,
    duration: f64,
    phases: BTreeMap<&'static str, f64>,
    earliest_cert_expiry: Option<f64>,
}

/// One gauge sample: the journey's labels, an extra label, the value.
type Row<'a> = (&'a [(String, String)], Option<(&'a str, &'a str)>, f64);

/// The blackbox_exporter-style gauges, per journey, from its last run.
#[derive(Default)]
pub struct Registry {
    journeys: BTreeMap<String, JourneyState>,
}

impl Registry {
    pub fn register(&mut self, j: &Journey, location: &str) {
        let mut attrs: Vec<(&str, &str)> = vec![("journey.name", &j.name), ("synthetics.location", location)];
        attrs.extend(j.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.journeys.entry(j.name.clone()).or_default().labels = labels(attrs);
    }

    pub fn remove(&mut self, name: &str) {
        self.journeys.remove(name);
    }

    pub fn record(&mut self, j: &Journey, r: &RunResult) {
        let Some(st) = self.journeys.get_mut(&j.name) else {
            return;
        };
        let mut phases = BTreeMap::new();
        let mut expiry: Option<f64> = None;
        for s in &r.steps {
            if matches!(s.phase_recording, PhaseRecording::PhaseHistogram) {
                for p in &s.phases {
                    *phases.entry(p.name).or_insert(0.0) += p.duration.as_secs_f64();
                }
            }
            if let Some(rem) = s.cert_remaining_secs {
                let at = (r.started + r.duration).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() + rem;
                expiry = Some(expiry.map_or(at, |e: f64| e.min(at)));
            }
        }
        st.last = Some(Last { success: r.outcome != Outcome::Failure, duration: r.duration.as_secs_f64(), phases, earliest_cert_expiry: expiry });
    }

    /// Adds the `probe_*` gauges of journeys that ran at least once.
    pub fn add_to(&self, f: &mut Families) {
        let lasts = || self.journeys.values().filter_map(|s| s.last.as_ref().map(|l| (s, l)));
        let mut gauge = |name: &str, help: &str, rows: Vec<Row>| {
            let body = f.family(name.to_string(), PromType::Gauge, help);
            for (l, extra, v) in rows {
                body.push_str(name);
                write_labels(body, l, extra);
                let _ = writeln!(body, " {}", fmt_num(v));
            }
        };
        gauge(
            "probe_success",
            "Whether the journey's last run succeeded (degraded counts as success)",
            lasts().map(|(s, l)| (&s.labels[..], None, if l.success { 1.0 } else { 0.0 })).collect(),
        );
        gauge("probe_duration_seconds", "Wall time of the journey's last run", lasts().map(|(s, l)| (&s.labels[..], None, l.duration)).collect());
        gauge(
            "probe_http_duration_seconds",
            "HTTP phases of the last run, summed over its HTTP steps",
            lasts().flat_map(|(s, l)| l.phases.iter().map(move |(p, v)| (&s.labels[..], Some(("phase", *p)), *v))).collect(),
        );
        gauge(
            "probe_ssl_earliest_cert_expiry",
            "Unix time of the earliest certificate expiry seen in the last run",
            lasts().filter_map(|(s, l)| l.earliest_cert_expiry.map(|e| (&s.labels[..], None, e.round()))).collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum};

    #[test]
    fn metric_names_follow_the_collector_translation() {
        assert_eq!(metric_name("synthetics.journey.runs", "", PromType::Counter), "synthetics_journey_runs_total");
        assert_eq!(metric_name("synthetics.journey.duration", "s", PromType::Histogram), "synthetics_journey_duration_seconds");
        assert_eq!(metric_name("synthetics.tls.cert.remaining", "s", PromType::Gauge), "synthetics_tls_cert_remaining_seconds");
        assert_eq!(metric_name("synthetics.journey.last_run.timestamp", "s", PromType::Gauge), "synthetics_journey_last_run_timestamp_seconds");
        assert_eq!(metric_name("synthetics.agent.config.reloads", "", PromType::Counter), "synthetics_agent_config_reloads_total");
        // A unit already in the name is not repeated; `total` is moved to the end.
        assert_eq!(metric_name("latency_seconds", "s", PromType::Histogram), "latency_seconds");
        assert_eq!(metric_name("requests.total.count", "", PromType::Counter), "requests_count_total");
        // Annotations are not units; `1` makes a gauge a ratio; per-units.
        assert_eq!(metric_name("http.requests", "{request}", PromType::Counter), "http_requests_total");
        assert_eq!(metric_name("cpu.utilization", "1", PromType::Gauge), "cpu_utilization_ratio");
        assert_eq!(metric_name("net.io", "By/s", PromType::Gauge), "net_io_bytes_per_second");
        assert_eq!(metric_name("2xx.rate", "", PromType::Gauge), "_2xx_rate");
    }

    #[test]
    fn label_names_follow_the_collector_translation() {
        assert_eq!(label_name("journey.name"), "journey_name");
        assert_eq!(label_name("synthetics.location"), "synthetics_location");
        assert_eq!(label_name("error.type"), "error_type");
        assert_eq!(label_name("http-route"), "http_route");
        assert_eq!(label_name("9lives"), "key_9lives");
        assert_eq!(label_name("_private"), "key_private");
        assert_eq!(label_name("__reserved"), "__reserved");
    }

    #[test]
    fn colliding_label_names_join_their_values() {
        let l = labels([("team_name", "b"), ("team.name", "a"), ("x", "1")]);
        assert_eq!(l, vec![("team_name".to_string(), "a;b".to_string()), ("x".to_string(), "1".to_string())]);
    }

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics { scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }], ..Default::default() }],
        }
    }

    #[test]
    fn exposition_has_one_type_line_per_family_and_escapes_values() {
        let runs = |journey: &str, v: i64| Metric {
            name: "synthetics.journey.runs".into(),
            description: "Runs\nby outcome \\ type".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![s("journey.name", journey), s("outcome", "success")],
                    value: Some(number_data_point::Value::AsInt(v)),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let mut f = Families::default();
        f.add_otlp(&request(vec![runs("a \"quoted\"\nname\\", 3)]));
        f.add_otlp(&request(vec![runs("b", 0)]));
        let mut out = String::new();
        f.write_to(&mut out);
        assert_eq!(
            out,
            "# HELP synthetics_journey_runs_total Runs\\nby outcome \\\\ type\n# TYPE synthetics_journey_runs_total counter\n\
             synthetics_journey_runs_total{journey_name=\"a \\\"quoted\\\"\\nname\\\\\",outcome=\"success\"} 3\n\
             synthetics_journey_runs_total{journey_name=\"b\",outcome=\"success\"} 0\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let m = Metric {
            name: "synthetics.journey.duration".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![s("journey.name", "j")],
                    count: 4,
                    sum: Some(3.5),
                    bucket_counts: vec![1, 2, 0, 1],
                    explicit_bounds: vec![0.5, 1.0, 2.5],
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let mut f = Families::default();
        f.add_otlp(&request(vec![m]));
        let mut out = String::new();
        f.write_to(&mut out);
        let want = "# TYPE synthetics_journey_duration_seconds histogram\n\
            synthetics_journey_duration_seconds_bucket{journey_name=\"j\",le=\"0.5\"} 1\n\
            synthetics_journey_duration_seconds_bucket{journey_name=\"j\",le=\"1\"} 3\n\
            synthetics_journey_duration_seconds_bucket{journey_name=\"j\",le=\"2.5\"} 3\n\
            synthetics_journey_duration_seconds_bucket{journey_name=\"j\",le=\"+Inf\"} 4\n\
            synthetics_journey_duration_seconds_sum{journey_name=\"j\"} 3.5\n\
            synthetics_journey_duration_seconds_count{journey_name=\"j\"} 4\n";
        assert_eq!(out, want);
    }

    #[test]
    fn numbers_print_like_go() {
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(0.005), "0.005");
        assert_eq!(fmt_num(1e21), "1000000000000000000000");
        assert_eq!(fmt_num(f64::INFINITY), "+Inf");
    }
}
