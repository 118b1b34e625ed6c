//! The same objectives for teams that already run Sloth or OpenSLO tooling.
//! Those tools know nothing of location consensus: their alerts page on the
//! journey's error ratio over all locations together (said in the header).

use std::fmt::Write;

use super::{JourneySlo, Plan};
use crate::telemetry::prometheus::fmt_num;

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// (slo name, objective %, error query, total query, period) per objective; `{{.window}}` is Sloth's window placeholder.
fn objectives<'a>(j: &'a JourneySlo, window: &str) -> Vec<(String, f64, String, String, std::time::Duration, &'a str)> {
    let mut out = Vec::new();
    let name = q(&j.journey);
    if let Some((o, p)) = j.availability {
        out.push((
            format!("{}-availability", slug(&j.journey)),
            o * 100.0,
            format!("sum(rate(synthetics_journey_runs_total{{journey_name={name},outcome=\"failure\"}}[{window}]))"),
            format!("sum(rate(synthetics_journey_runs_total{{journey_name={name}}}[{window}]))"),
            p,
            "availability",
        ));
    }
    if let Some((o, t, p)) = j.latency {
        let t = fmt_num(t);
        let le = if t.contains('.') { format!("le=\"{t}\"") } else { format!("le=~\"{t}|{t}.0\"") };
        let total = format!("sum(rate(synthetics_journey_duration_seconds_count{{journey_name={name},outcome!=\"failure\"}}[{window}]))");
        out.push((
            format!("{}-latency", slug(&j.journey)),
            o * 100.0,
            format!("({total} - sum(rate(synthetics_journey_duration_seconds_bucket{{journey_name={name},outcome!=\"failure\",{le}}}[{window}])))"),
            total,
            p,
            "latency",
        ));
    }
    out
}

/// A name safe for Sloth/OpenSLO identifiers: lowercase letters, digits and `-`.
fn slug(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

/// Sloth `prometheus/v1` spec: one service, one SLO per journey and objective.
pub fn sloth(plan: &Plan) -> String {
    let mut out = String::from(
        "# Sloth spec written by `vantage slo generate --format sloth`.\n# Sloth pages on the error ratio over all locations together; the rules of\n# `vantage slo generate` (default format) page only when min_locations fail.\nversion: \"prometheus/v1\"\nservice: \"vantage-synthetics\"\nslos:\n",
    );
    let mut any = false;
    for j in &plan.journeys {
        for (name, objective, error, total, _, sli) in objectives(j, "{{.window}}") {
            any = true;
            let _ = write!(
                out,
                "  - name: {}\n    objective: {}\n    description: {}\n    labels:\n      journey_name: {}\n      team: {}\n    sli:\n      events:\n        error_query: {}\n        total_query: {}\n    alerting:\n      name: {}\n      labels:\n        team: {}\n        journey_name: {}\n      annotations:\n        summary: {}\n      page_alert:\n        labels:\n          severity: page\n      ticket_alert:\n        labels:\n          severity: ticket\n",
                q(&name),
                fmt_num(objective),
                q(&format!("{sli} of synthetic journey {}", j.journey)),
                q(&j.journey),
                q(&j.team),
                q(&error),
                q(&total),
                q(&format!("Journey{}{}", camel(&j.journey), camel(sli))),
                q(&j.team),
                q(&j.journey),
                q(&format!("{}: {sli} error budget burning", j.journey)),
            );
        }
    }
    if !any {
        out.truncate(out.len() - "slos:\n".len());
        out.push_str("slos: []\n");
    }
    out
}

fn camel(s: &str) -> String {
    slug(s).split('-').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect()
}

/// OpenSLO durations: a number and one unit (`30d`, `12h`, `90m`).
fn openslo_duration(d: std::time::Duration) -> String {
    let s = d.as_secs().max(60);
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

/// OpenSLO v1: one `SLO` document per journey and objective, ratio metrics on Prometheus.
pub fn openslo(plan: &Plan) -> String {
    let mut out = String::from("# OpenSLO v1 written by `vantage slo generate --format openslo`.\n");
    for j in &plan.journeys {
        for (name, objective, error, total, period, sli) in objectives(j, "1m") {
            let _ = write!(
                out,
                "---\napiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: {}\n  displayName: {}\n  labels:\n    team: [{}]\n    journey_name: [{}]\nspec:\n  description: {}\n  service: vantage-synthetics\n  indicator:\n    metadata:\n      name: {}\n    spec:\n      ratioMetric:\n        counter: false\n        bad:\n          metricSource:\n            type: Prometheus\n            spec:\n              query: {}\n        total:\n          metricSource:\n            type: Prometheus\n            spec:\n              query: {}\n  timeWindow:\n    - duration: {}\n      isRolling: true\n  budgetingMethod: Occurrences\n  objectives:\n    - displayName: {}\n      target: {}\n",
                q(&name),
                q(&format!("{} {sli}", j.journey)),
                q(&j.team),
                q(&j.journey),
                q(&format!("{sli} of synthetic journey {}", j.journey)),
                q(&format!("{name}-sli")),
                q(&error),
                q(&total),
                q(&openslo_duration(period)),
                q(&format!("{} {sli}", j.journey)),
                fmt_num(objective / 100.0),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan() -> Plan {
        Plan {
            journeys: vec![JourneySlo {
                journey: "Lead Capture".into(),
                team: "marketing".into(),
                interval: Duration::from_secs(60),
                availability: Some((0.995, Duration::from_secs(30 * 86400))),
                latency: Some((0.99, 2.0, Duration::from_secs(30 * 86400))),
                min_locations: 2,
                locations: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sloth_has_both_objectives_with_window_placeholders() {
        let s = sloth(&plan());
        assert!(s.contains("name: \"lead-capture-availability\"\n    objective: 99.5\n"), "{s}");
        assert!(s.contains("name: \"lead-capture-latency\"\n    objective: 99\n"), "{s}");
        assert!(s.contains("[{{.window}}]"));
        assert!(s.contains("alerting:\n      name: \"JourneyLeadCaptureLatency\""), "{s}");
    }

    #[test]
    fn openslo_documents_have_targets_and_windows() {
        let s = openslo(&plan());
        assert_eq!(s.matches("kind: SLO").count(), 2);
        assert!(s.contains("target: 0.995") && s.contains("target: 0.99\n"), "{s}");
        assert!(s.contains("duration: \"30d\""), "{s}");
    }
}
