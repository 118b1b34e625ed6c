//! The Prometheus text view served on the admin `/metrics`, for teams that
//! scrape. Gauges use blackbox_exporter's names, per journey; counters carry
//! the same good/total split as the OTLP `synthetics.journey.runs`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::UNIX_EPOCH;

use crate::config::Journey;
use crate::vocab::{ErrorType, Outcome, PhaseRecording, RunResult};

#[derive(Default)]
struct JourneyState {
    labels: Vec<(String, String)>,
    /// (outcome, error.type) → count
    runs: BTreeMap<(&'static str, &'static str), u64>,
    /// Runs that needed a retry, by result (`recovered`, `failed`); only for journeys with `retries`.
    retried: BTreeMap<&'static str, u64>,
    last: Option<Last>,
}

struct Last {
    success: bool,
    duration: f64,
    phases: BTreeMap<&'static str, f64>,
    earliest_cert_expiry: Option<f64>,
    finished_unix: f64,
}

#[derive(Default)]
pub struct Registry {
    journeys: BTreeMap<String, JourneyState>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn prom_name(k: &str) -> String {
    k.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl Registry {
    pub fn register(&mut self, j: &Journey, location: &str, errors: &[ErrorType]) {
        let mut labels = vec![("journey".to_string(), j.name.clone()), ("location".to_string(), location.to_string())];
        labels.extend(j.labels.iter().map(|(k, v)| (prom_name(k), v.clone())));
        let st = self.journeys.entry(j.name.clone()).or_default();
        st.labels = labels;
        st.runs.entry(("success", "")).or_insert(0);
        st.runs.entry(("degraded", "")).or_insert(0);
        if j.retries.is_some() {
            st.retried.entry("recovered").or_insert(0);
            st.retried.entry("failed").or_insert(0);
        }
        for e in errors {
            st.runs.entry(("failure", e.as_str())).or_insert(0);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.journeys.remove(name);
    }

    pub fn record(&mut self, j: &Journey, r: &RunResult) {
        let Some(st) = self.journeys.get_mut(&j.name) else { return };
        let key = (r.outcome.as_str(), r.error_type.map(|e| e.as_str()).unwrap_or(""));
        *st.runs.entry(key).or_insert(0) += 1;
        if r.retried() {
            *st.retried
                .entry(if r.outcome == Outcome::Failure {
                    "failed"
                } else {
                    "recovered"
                })
                .or_insert(0) += 1;
        }
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
        st.last = Some(Last {
            success: r.outcome != Outcome::Failure,
            duration: r.duration.as_secs_f64(),
            phases,
            earliest_cert_expiry: expiry,
            finished_unix: (r.started + r.duration).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
        });
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let lbl = |labels: &[(String, String)], extra: &[(&str, &str)]| -> String {
            let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            parts.extend(extra.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))));
            format!("{{{}}}", parts.join(","))
        };
        let gauge = |out: &mut String, name: &str, help: &str, rows: Vec<(String, f64)>| {
            if rows.is_empty() {
                return;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (l, v) in rows {
                let _ = writeln!(out, "{name}{l} {v}");
            }
        };
        let lasts = || self.journeys.values().filter_map(|s| s.last.as_ref().map(|l| (s, l)));
        gauge(&mut out, "probe_success", "Whether the journey's last run succeeded (degraded counts as success)", lasts().map(|(s, l)| (lbl(&s.labels, &[]), if l.success { 1.0 } else { 0.0 })).collect());
        gauge(&mut out, "probe_duration_seconds", "Wall time of the journey's last run", lasts().map(|(s, l)| (lbl(&s.labels, &[]), l.duration)).collect());
        gauge(
            &mut out,
            "probe_http_duration_seconds",
            "HTTP phases of the last run, summed over its HTTP steps",
            lasts().flat_map(|(s, l)| l.phases.iter().map(move |(p, v)| (lbl(&s.labels, &[("phase", p)]), *v))).collect(),
        );
        gauge(
            &mut out,
            "probe_ssl_earliest_cert_expiry",
            "Unix time of the earliest certificate expiry seen in the last run",
            lasts().filter_map(|(s, l)| l.earliest_cert_expiry.map(|e| (lbl(&s.labels, &[]), e.round()))).collect(),
        );
        gauge(&mut out, "synthetics_journey_last_run_timestamp_seconds", "Unix time the journey's last run finished", lasts().map(|(s, l)| (lbl(&s.labels, &[]), l.finished_unix)).collect());
        if !self.journeys.is_empty() {
            let _ = writeln!(out, "# HELP synthetics_journey_runs_total Journey runs by outcome (good = outcome!=\"failure\")\n# TYPE synthetics_journey_runs_total counter");
            for s in self.journeys.values() {
                for ((o, e), n) in &s.runs {
                    let extra: Vec<(&str, &str)> = if e.is_empty() { vec![("outcome", o)] } else { vec![("outcome", o), ("error_type", e)] };
                    let _ = writeln!(out, "synthetics_journey_runs_total{} {n}", lbl(&s.labels, &extra));
                }
            }
        }
        if self.journeys.values().any(|s| !s.retried.is_empty()) {
            let _ = writeln!(out, "# HELP synthetics_journey_retried_total Runs that needed a retry, by result (recovered, failed)\n# TYPE synthetics_journey_retried_total counter");
            for s in self.journeys.values() {
                for (result, n) in &s.retried {
                    let _ = writeln!(
                        out,
                        "synthetics_journey_retried_total{} {n}",
                        lbl(&s.labels, &[("result", result)])
                    );
                }
            }
        }
        out
    }
}
