//! Prometheus rules for the declared objectives, and `promtool test rules`
//! cases for them.
//!
//! Rules are generic where they can be (one rule per window, for every
//! journey at once) and per journey only for the metadata (objective, team,
//! `min_locations`, expected interval), which alerts join on: 1,000 journeys
//! cost a few thousand trivial rules, not tens of thousands of queries.
//!
//! Location consensus: every burn-rate condition is evaluated per location;
//! a page needs at least `min_locations` locations burning, a ticket one.
//! Both alerts share one source of truth, so the files never disagree.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::Duration;

use super::{prom_duration, BurnWindow, JourneySlo, Plan, Profile};
use crate::telemetry::prometheus::fmt_num;

/// One rule of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Record { record: String, expr: String, labels: Vec<(String, String)> },
    Alert { alert: String, expr: String, for_: Duration, labels: Vec<(String, String)>, annotations: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub interval: Duration,
    pub rules: Vec<Rule>,
}

const RUNS: &str = "synthetics_journey_runs_total";
const DURATION: &str = "synthetics_journey_duration_seconds";
const LAST_RUN: &str = "synthetics_journey_last_run_timestamp_seconds";
const BY_LOC: &str = "journey_name, synthetics_location";

/// A PromQL / YAML double-quoted string.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn record(name: &str, expr: String, labels: Vec<(String, String)>) -> Rule {
    Rule::Record { record: name.into(), expr, labels }
}

/// SLIs in a stable order, with whether any journey declares them.
fn slis(plan: &Plan) -> Vec<&'static str> {
    let mut v = Vec::new();
    if plan.journeys.iter().any(|j| j.availability.is_some()) {
        v.push("availability");
    }
    if plan.journeys.iter().any(|j| j.latency.is_some()) {
        v.push("latency");
    }
    v
}

/// The `le` matcher of a bucket bound, for Prometheus 2 (`le="2"`) and 3 (`le="2.0"`).
fn le_matcher(t: f64) -> String {
    let s = fmt_num(t);
    if s.contains('.') {
        format!("le={}", q(&s))
    } else {
        format!("le=~{}", q(&format!("{s}|{s}.0")))
    }
}

/// How long a journey may go without a result before it counts as silent.
pub fn stale_after(j: &JourneySlo, p: &Profile) -> Duration {
    j.interval * 3 + p.interval * 2
}

fn ratio(w: &str) -> String {
    format!("slo:sli_error:ratio_rate{w}")
}

/// Every rule group, in evaluation order.
pub fn generate(plan: &Plan, p: &Profile) -> Vec<Group> {
    let windows = p.windows();
    let base = prom_duration(windows[0]);
    let slis = slis(plan);
    let mut groups = Vec::new();

    // Metadata: one small rule per journey and objective, then generic ones.
    let mut meta = Vec::new();
    for j in &plan.journeys {
        let team = j.team.as_str();
        if let Some((o, period)) = j.availability {
            let period = prom_duration(p.period(period));
            meta.push(record(
                "slo:objective:ratio",
                format!("vector({})", fmt_num(o)),
                l(&[("journey_name", &j.journey), ("slo", "availability"), ("team", team), ("period", &period)]),
            ));
        }
        if let Some((o, t, period)) = j.latency {
            let period = prom_duration(p.period(period));
            let labels = l(&[("journey_name", &j.journey), ("slo", "latency"), ("team", team), ("period", &period), ("threshold", &fmt_num(t))]);
            meta.push(record("slo:objective:ratio", format!("vector({})", fmt_num(o)), labels));
        }
        let jt = l(&[("journey_name", &j.journey), ("team", team)]);
        if j.availability.is_some() || j.latency.is_some() {
            meta.push(record("slo:min_locations", format!("vector({})", j.min_locations), jt.clone()));
        }
        meta.push(record("slo:stale_after_seconds", format!("vector({})", fmt_num(stale_after(j, p).as_secs_f64())), jt.clone()));
        if !j.locations.is_empty() {
            meta.push(record("slo:expected_locations", format!("vector({})", j.locations.len()), jt));
        }
    }
    for loc in &plan.locations {
        meta.push(record("slo:expected_location_info", "vector(1)".into(), l(&[("synthetics_location", loc), ("team", &plan.fleet_team)])));
    }
    if !slis.is_empty() {
        meta.push(record("slo:error_budget:ratio", "1 - slo:objective:ratio".into(), vec![]));
    }
    groups.push(Group { name: "vantage-slo-metadata".into(), interval: p.interval, rules: meta });

    if !slis.is_empty() {
        // Error and total rates per journey and location over the base window, then every window from them.
        let mut sli = Vec::new();
        if slis.contains(&"availability") {
            let a = l(&[("slo", "availability")]);
            sli.push(record(&format!("slo:sli_error:rate{base}"), format!("sum by ({BY_LOC}) (rate({RUNS}{{outcome=\"failure\"}}[{base}]))"), a.clone()));
            sli.push(record(&format!("slo:sli_total:rate{base}"), format!("sum by ({BY_LOC}) (rate({RUNS}[{base}]))"), a));
        }
        let thresholds: BTreeSet<String> = plan.journeys.iter().filter_map(|j| j.latency.map(|(_, t, _)| fmt_num(t))).collect();
        for t in &thresholds {
            let le = le_matcher(t.parse().expect("formatted number"));
            let only = format!("and on (journey_name) slo:objective:ratio{{slo=\"latency\",threshold={}}}", q(t));
            let total = format!("sum by ({BY_LOC}) (rate({DURATION}_count{{outcome!=\"failure\"}}[{base}]))");
            let good = format!("sum by ({BY_LOC}) (rate({DURATION}_bucket{{outcome!=\"failure\",{le}}}[{base}]))");
            // `threshold` keeps one rule per threshold distinct (they select disjoint journeys).
            let a = l(&[("slo", "latency"), ("threshold", t)]);
            sli.push(record(&format!("slo:sli_error:rate{base}"), format!("(\n  {total}\n  -\n  {good}\n)\n{only}"), a.clone()));
            sli.push(record(&format!("slo:sli_total:rate{base}"), format!("{total}\n{only}"), a));
        }
        for w in &windows {
            let ws = prom_duration(*w);
            let (err, tot) = (format!("slo:sli_error:rate{base}"), format!("slo:sli_total:rate{base}"));
            let (per_loc, journey) = if ws == base {
                (format!("{err} / {tot}"), format!("sum by (journey_name, slo) ({err})\n/\nsum by (journey_name, slo) ({tot})"))
            } else {
                (
                    format!("sum_over_time({err}[{ws}])\n/\nsum_over_time({tot}[{ws}])"),
                    format!("sum by (journey_name, slo) (sum_over_time({err}[{ws}]))\n/\nsum by (journey_name, slo) (sum_over_time({tot}[{ws}]))"),
                )
            };
            sli.push(record(&ratio(&ws), per_loc, vec![]));
            sli.push(record(&format!("slo:sli_error:journey_ratio_rate{ws}"), journey, vec![]));
        }
        for w in &windows {
            let ws = prom_duration(*w);
            sli.push(record(
                "slo:burn_rate:ratio",
                format!("slo:sli_error:journey_ratio_rate{ws}\n/ on (journey_name, slo) group_left (team)\nslo:error_budget:ratio"),
                l(&[("window", &ws)]),
            ));
        }
        groups.push(Group { name: "vantage-slo-sli".into(), interval: p.interval, rules: sli });

        // Error budget remaining over each SLO period, from 5-minute averages (cheap over 30 days).
        let pi = p.interval * 5;
        let pis = prom_duration(pi);
        let mut period = vec![
            record(
                &format!("slo:sli_error:journey_avg_rate{pis}"),
                format!("sum by (journey_name, slo) (avg_over_time(slo:sli_error:rate{base}[{pis}]))"),
                vec![],
            ),
            record(
                &format!("slo:sli_total:journey_avg_rate{pis}"),
                format!("sum by (journey_name, slo) (avg_over_time(slo:sli_total:rate{base}[{pis}]))"),
                vec![],
            ),
        ];
        let periods: BTreeSet<Duration> = plan.journeys.iter().flat_map(|j| j.availability.map(|a| a.1).into_iter().chain(j.latency.map(|l| l.2))).collect();
        for per in periods {
            let ps = prom_duration(p.period(per));
            period.push(record(
                "slo:error_budget_remaining:ratio",
                format!(
                    "1 - (\n  sum_over_time(slo:sli_error:journey_avg_rate{pis}[{ps}])\n  /\n  sum_over_time(slo:sli_total:journey_avg_rate{pis}[{ps}])\n)\n/ on (journey_name, slo) group_left (team)\nslo:error_budget:ratio{{period={}}}",
                    q(&ps)
                ),
                l(&[("period", &ps)]),
            ));
        }
        groups.push(Group { name: "vantage-slo-period".into(), interval: pi, rules: period });
    }

    groups.push(Group { name: "vantage-slo-alerts".into(), interval: p.interval, rules: alerts(plan, p, &slis) });
    groups
}

fn burning(sli: &str, w: &BurnWindow) -> String {
    let budget = |labels: &str| format!("on (journey_name, slo) group_left ({labels}) ({} * slo:error_budget:ratio{{slo=\"{sli}\"}})", fmt_num(w.factor));
    format!(
        "(\n    {}{{slo=\"{sli}\"}} > {}\n    and on ({BY_LOC}, slo)\n    {}{{slo=\"{sli}\"}} > {}\n  )",
        ratio(&prom_duration(w.long)),
        budget("team"),
        ratio(&prom_duration(w.short)),
        budget("")
    )
}

/// The window in which summaries look for failing locations and the last error.
fn summary_window(p: &Profile) -> String {
    prom_duration(p.page.iter().map(|w| w.short).max().unwrap_or(Duration::from_secs(1800)))
}

fn failing_locations_tmpl(p: &Profile) -> String {
    format!(
        "{{{{ range $i, $s := query (printf \"{}{{journey_name=%q,slo=%q}} > 0\" $labels.journey_name $labels.slo) | sortByLabel \"synthetics_location\" }}}}{{{{ if $i }}}}, {{{{ end }}}}{{{{ $s.Labels.synthetics_location }}}}{{{{ end }}}}",
        ratio(&summary_window(p))
    )
}

fn last_error_tmpl(p: &Profile) -> String {
    format!(
        "{{{{ with query (printf \"topk(1, sum by (error_type) (increase({RUNS}{{journey_name=%q,outcome=\\\"failure\\\"}}[{}])) > 0)\" $labels.journey_name) }}}}{{{{ . | first | label \"error_type\" }}}}{{{{ else }}}}none{{{{ end }}}}",
        summary_window(p)
    )
}

fn burn_summary(sli: &str, severity: &str, p: &Profile) -> String {
    let what = if sli == "latency" { "runs slower than the latency threshold" } else { "failed runs" };
    let speed =
        if severity == "page" { "fast, confirmed by {{ $value | printf \"%.0f\" }} locations" } else { "in {{ $value | printf \"%.0f\" }} location(s)" };
    format!(
        "{{{{ $labels.journey_name }}}}: {sli} error budget burning {speed} ({what}); failing in the last {}: {}; last error: {}",
        summary_window(p),
        failing_locations_tmpl(p),
        last_error_tmpl(p)
    )
}

fn alert_rule(name: &str, expr: String, for_: Duration, severity: &str, summary: String, plan: &Plan) -> Rule {
    let mut annotations = vec![("summary".to_string(), summary)];
    annotations.extend(plan.links.iter().map(|(k, v)| (k.clone(), v.clone())));
    Rule::Alert { alert: name.into(), expr, for_, labels: l(&[("severity", severity)]), annotations }
}

fn alerts(plan: &Plan, p: &Profile, slis: &[&str]) -> Vec<Rule> {
    let mut out = Vec::new();
    for sli in slis {
        let name = if *sli == "latency" { "JourneyLatencyBudgetBurn" } else { "JourneyAvailabilityBudgetBurn" };
        let page: Vec<String> = p.page.iter().map(|w| burning(sli, w)).collect();
        let all: Vec<String> = p.page.iter().chain(&p.ticket).map(|w| burning(sli, w)).collect();
        out.push(alert_rule(
            name,
            format!("count by (journey_name, slo, team) (\n  {}\n)\n>= on (journey_name) group_left ()\nslo:min_locations", page.join("\n  or\n  ")),
            p.page_for,
            "page",
            burn_summary(sli, "page", p),
            plan,
        ));
        out.push(alert_rule(
            name,
            format!("count by (journey_name, slo, team) (\n  {}\n)", all.join("\n  or\n  ")),
            p.ticket_for,
            "ticket",
            burn_summary(sli, "ticket", p),
            plan,
        ));
    }
    out.push(alert_rule(
        "JourneyNoResults",
        format!(
            "(\n  time() - max by (journey_name) ({LAST_RUN})\n  > on (journey_name) group_left (team)\n  slo:stale_after_seconds\n)\nor on (journey_name)\n(\n  slo:stale_after_seconds\n  unless on (journey_name)\n  {LAST_RUN}\n)"
        ),
        p.silence_for,
        "page",
        "{{ $labels.journey_name }}: no results from any location (agents, collector or scrape down, or the journey was removed from the probe files)".into(),
        plan,
    ));
    out.push(alert_rule(
        "JourneyLocationNoResults",
        format!(
            "count by (journey_name) (\n  time() - {LAST_RUN}\n  < on (journey_name) group_left ()\n  slo:stale_after_seconds\n)\n< on (journey_name) group_left (team)\nslo:expected_locations"
        ),
        p.silence_for,
        "ticket",
        format!(
            "{{{{ $labels.journey_name }}}}: results arrive from only {{{{ $value | printf \"%.0f\" }}}} of the expected locations; reporting: {{{{ range $i, $s := query (printf \"time() - {LAST_RUN}{{journey_name=%q}} < on (journey_name) group_left () slo:stale_after_seconds\" $labels.journey_name) | sortByLabel \"synthetics_location\" }}}}{{{{ if $i }}}}, {{{{ end }}}}{{{{ $s.Labels.synthetics_location }}}}{{{{ end }}}}"
        ),
        plan,
    ));
    if !plan.locations.is_empty() {
        out.push(Rule::Alert {
            alert: "LocationNoResults".into(),
            expr: format!("slo:expected_location_info\nunless on (synthetics_location)\ngroup by (synthetics_location) ({LAST_RUN})"),
            for_: p.silence_for,
            labels: l(&[("severity", "ticket")]),
            annotations: vec![(
                "summary".into(),
                "No journey results from location {{ $labels.synthetics_location }}: its agents, their network, the collector or the scrape is down".into(),
            )],
        });
    }
    out
}

fn yaml_labels(out: &mut String, key: &str, labels: &[(String, String)], indent: &str) {
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}{key}:");
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}  {k}: {}", q(v));
    }
}

fn yaml_block(out: &mut String, key: &str, text: &str, indent: &str) {
    let _ = writeln!(out, "{indent}{key}: |-");
    for line in text.lines() {
        let _ = writeln!(out, "{indent}  {line}");
    }
}

/// The rule file, as Prometheus loads it.
pub fn to_yaml(groups: &[Group], header: &str) -> String {
    let mut out = String::with_capacity(1 << 20);
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str("groups:\n");
    for g in groups {
        let _ = writeln!(out, "  - name: {}\n    interval: {}\n    rules:", q(&g.name), prom_duration(g.interval));
        if g.rules.is_empty() {
            out.truncate(out.len() - "    rules:\n".len());
            out.push_str("    rules: []\n");
        }
        for r in &g.rules {
            match r {
                Rule::Record { record, expr, labels } => {
                    let _ = writeln!(out, "      - record: {record}");
                    yaml_block(&mut out, "expr", expr, "        ");
                    yaml_labels(&mut out, "labels", labels, "        ");
                }
                Rule::Alert { alert, expr, for_, labels, annotations } => {
                    let _ = writeln!(out, "      - alert: {alert}");
                    yaml_block(&mut out, "expr", expr, "        ");
                    let _ = writeln!(out, "        for: {}", prom_duration(*for_));
                    yaml_labels(&mut out, "labels", labels, "        ");
                    yaml_labels(&mut out, "annotations", annotations, "        ");
                }
            }
        }
    }
    out
}

/// The summary Prometheus renders for the generated templates, for the test cases.
fn expected_burn_summary(sli: &str, severity: &str, journey: &str, count: usize, failing: &[&str], error: &str, p: &Profile) -> String {
    let what = if sli == "latency" { "runs slower than the latency threshold" } else { "failed runs" };
    let speed = if severity == "page" { format!("fast, confirmed by {count} locations") } else { format!("in {count} location(s)") };
    format!("{journey}: {sli} error budget burning {speed} ({what}); failing in the last {}: {}; last error: {error}", summary_window(p), failing.join(", "))
}

fn expected_links(plan: &Plan, j: &JourneySlo) -> Vec<(String, String)> {
    plan.links.iter().map(|(k, v)| (k.clone(), v.replace("{{ $labels.journey_name }}", &j.journey).replace("{{ $labels.team }}", &j.team))).collect()
}

/// `promtool test rules` cases for the generated rules, on the first journey
/// with an availability objective: all locations failing pages, one location
/// failing is only a ticket, silence pages, one quiet location is a ticket.
pub fn tests_yaml(plan: &Plan, p: &Profile, rule_file: &str) -> Option<String> {
    let j = plan.journeys.iter().find(|j| j.availability.is_some())?;
    let locs: Vec<String> = if j.locations.len() >= j.min_locations as usize && !j.locations.is_empty() {
        j.locations.clone()
    } else {
        (1..=j.min_locations.max(1) + 1).map(|i| format!("loc-{i}")).collect()
    };
    let iv = p.interval;
    let base = p.windows()[0];
    let fire_after = base + p.page_for.max(p.ticket_for) + iv * 3;
    let steps = (fire_after.as_millis() / iv.as_millis()) as u64 + 2;
    let ivs = prom_duration(iv);
    let ts = |upto: u64| format!("0+{}x{upto}", fmt_num(iv.as_secs_f64()));
    let sel = |name: &str, loc: &str, extra: &str| format!("{name}{{journey_name={},synthetics_location={}{extra}}}", q(&j.journey), q(loc));
    let meta = |team: &str| format!("journey_name: {}\n              team: {}", q(&j.journey), q(team));
    let links = expected_links(plan, j);
    let ann = |summary: String| {
        let mut s = format!("            exp_annotations:\n              summary: {}\n", q(&summary));
        for (k, v) in &links {
            let _ = writeln!(s, "              {k}: {}", q(v));
        }
        s
    };
    let eval = prom_duration(iv * steps as u32);
    let half = steps / 2;
    let silent_at = iv * half as u32 + stale_after(j, p) + p.silence_for + iv * 3;
    // The other journeys keep reporting, so only this one can be silent.
    let others: String = plan
        .journeys
        .iter()
        .filter(|o| o.journey != j.journey)
        .flat_map(|o| {
            let n = (silent_at.as_millis() / iv.as_millis()) as u64 + 2;
            let locs = if o.locations.is_empty() { vec!["any".to_string()] } else { o.locations.clone() };
            locs.into_iter().map(move |loc| {
                format!(
                    "      - series: {}\n        values: {}\n",
                    q(&format!("{LAST_RUN}{{journey_name={},synthetics_location={}}}", q(&o.journey), q(&loc))),
                    q(&ts(n))
                )
            })
        })
        .collect();
    let series = |failing: &[&str], stop_ts: Option<(&str, u64)>| {
        let mut s = others.clone();
        for loc in &locs {
            let f = failing.contains(&loc.as_str());
            let _ = writeln!(
                s,
                "      - series: {}\n        values: {}",
                q(&sel(RUNS, loc, ",outcome=\"failure\",error_type=\"http_status\"")),
                q(&if f { format!("0+1x{steps}") } else { format!("0+0x{steps}") })
            );
            let _ = writeln!(
                s,
                "      - series: {}\n        values: {}",
                q(&sel(RUNS, loc, ",outcome=\"success\"")),
                q(&if f { format!("0+0x{steps}") } else { format!("0+1x{steps}") })
            );
            let upto = match stop_ts {
                Some((l, n)) if l == loc || l == "*" => n,
                _ => steps,
            };
            let _ = writeln!(s, "      - series: {}\n        values: {}", q(&sel(LAST_RUN, loc, "")), q(&ts(upto)));
        }
        s
    };
    let sev = |s: &str| format!("severity: {s}\n              ");
    let mut all: Vec<&str> = locs.iter().map(String::as_str).collect();
    all.sort();
    let mut out = format!(
        "# promtool test rules cases for the generated rules (journey {}), written by `vantage slo generate`.\n# Run: promtool test rules THIS_FILE\nrule_files:\n  - {}\nevaluation_interval: {ivs}\ntests:\n",
        q(&j.journey),
        q(rule_file)
    );
    // 1. Every location failing: page and ticket.
    let _ = write!(
        out,
        "  - name: {}\n    interval: {ivs}\n    input_series:\n{}    alert_rule_test:\n      - eval_time: {eval}\n        alertname: JourneyAvailabilityBudgetBurn\n        exp_alerts:\n          - exp_labels:\n              {}slo: availability\n              {}\n{}          - exp_labels:\n              {}slo: availability\n              {}\n{}      - eval_time: {eval}\n        alertname: JourneyNoResults\n        exp_alerts: []\n",
        q(&format!("{} failing in all {} locations pages its team", j.journey, locs.len())),
        series(&all, None),
        sev("page"),
        meta(&j.team),
        ann(expected_burn_summary("availability", "page", &j.journey, locs.len(), &all, "http_status", p)),
        sev("ticket"),
        meta(&j.team),
        ann(expected_burn_summary("availability", "ticket", &j.journey, locs.len(), &all, "http_status", p)),
    );
    // 2. One location failing: a ticket, no page.
    let one = [all[0]];
    let _ = write!(
        out,
        "  - name: {}\n    interval: {ivs}\n    input_series:\n{}    alert_rule_test:\n      - eval_time: {eval}\n        alertname: JourneyAvailabilityBudgetBurn\n        exp_alerts:\n          - exp_labels:\n              {}slo: availability\n              {}\n{}",
        q(&format!("{} failing in one location ({}) is a ticket, not a page", j.journey, all[0])),
        series(&one, None),
        sev("ticket"),
        meta(&j.team),
        ann(expected_burn_summary("availability", "ticket", &j.journey, 1, &one, "http_status", p)),
    );
    // 3. Every location goes silent halfway: the no-results page.
    let silent_eval = prom_duration(silent_at);
    let _ = write!(
        out,
        "  - name: {}\n    interval: {ivs}\n    input_series:\n{}    alert_rule_test:\n      - eval_time: {silent_eval}\n        alertname: JourneyNoResults\n        exp_alerts:\n          - exp_labels:\n              {}{}\n{}",
        q(&format!("{} results stop arriving: no-results page", j.journey)),
        series(&[], Some(("*", half))),
        sev("page"),
        meta(&j.team),
        ann(format!("{}: no results from any location (agents, collector or scrape down, or the journey was removed from the probe files)", j.journey)),
    );
    // 4. One expected location goes quiet: a ticket.
    if !j.locations.is_empty() {
        let rest: Vec<&str> = all[1..].to_vec();
        let _ = write!(
            out,
            "  - name: {}\n    interval: {ivs}\n    input_series:\n{}    alert_rule_test:\n      - eval_time: {silent_eval}\n        alertname: JourneyLocationNoResults\n        exp_alerts:\n          - exp_labels:\n              {}{}\n{}",
            q(&format!("{} stops arriving from {}: ticket", j.journey, all[0])),
            series(&[], Some((all[0], half))),
            sev("ticket"),
            meta(&j.team),
            ann(format!("{}: results arrive from only {} of the expected locations; reporting: {}", j.journey, rest.len(), rest.join(", "))),
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            journeys: vec![
                JourneySlo {
                    journey: "lead-capture".into(),
                    team: "marketing".into(),
                    interval: Duration::from_secs(60),
                    availability: Some((0.995, Duration::from_secs(30 * 86400))),
                    latency: Some((0.99, 2.0, Duration::from_secs(30 * 86400))),
                    min_locations: 2,
                    locations: vec!["eu".into(), "us".into(), "ap".into()],
                },
                JourneySlo {
                    journey: "login".into(),
                    team: "identity".into(),
                    interval: Duration::from_secs(30),
                    availability: Some((0.999, Duration::from_secs(28 * 86400))),
                    latency: None,
                    min_locations: 2,
                    locations: vec![],
                },
            ],
            locations: vec!["ap".into(), "eu".into(), "us".into()],
            fleet_team: "sre".into(),
            links: Default::default(),
        }
    }

    #[test]
    fn pages_need_min_locations_and_tickets_one() {
        let g = generate(&plan(), &Profile::default());
        let alerts: Vec<&Rule> = g.iter().flat_map(|g| &g.rules).filter(|r| matches!(r, Rule::Alert { .. })).collect();
        let page = alerts.iter().find_map(|r| match r {
            Rule::Alert { alert, expr, labels, .. } if alert == "JourneyAvailabilityBudgetBurn" && labels[0].1 == "page" => Some(expr),
            _ => None,
        });
        let page = page.unwrap();
        assert!(page.contains(">= on (journey_name) group_left ()\nslo:min_locations"), "{page}");
        assert!(
            page.contains("slo:sli_error:ratio_rate1h{slo=\"availability\"} > on (journey_name, slo) group_left (team) (14.4 * slo:error_budget:ratio"),
            "{page}"
        );
        assert!(page.contains("slo:sli_error:ratio_rate30m{slo=\"availability\"} > on (journey_name, slo) group_left () (6 * "), "{page}");
        assert!(!page.contains("ratio_rate1d"), "slow windows only ticket: {page}");
    }

    #[test]
    fn latency_reads_the_threshold_bucket_in_both_le_spellings() {
        assert_eq!(le_matcher(2.0), "le=~\"2|2.0\"");
        assert_eq!(le_matcher(0.5), "le=\"0.5\"");
        let y = to_yaml(&generate(&plan(), &Profile::default()), "test");
        assert!(y.contains("synthetics_journey_duration_seconds_bucket{outcome!=\"failure\",le=~\"2|2.0\"}[5m]"), "{y}");
        assert!(y.contains("threshold: \"2\""));
    }

    #[test]
    fn metadata_carries_team_objective_and_period() {
        let y = to_yaml(&generate(&plan(), &Profile::default()), "");
        assert!(y.contains("      - record: slo:objective:ratio\n        expr: |-\n          vector(0.999)\n        labels:\n          journey_name: \"login\"\n          slo: \"availability\"\n          team: \"identity\"\n          period: \"4w\""), "{y}");
        assert!(y.contains("slo:error_budget:ratio{period=\"4w2d\"}"));
        assert!(y.contains("record: slo:expected_location_info"));
    }

    #[test]
    fn journey_names_are_quoted_in_labels_and_tests() {
        let mut p = plan();
        p.journeys[0].journey = "shop \"main\"\\".into();
        let t = tests_yaml(&p, &Profile::default(), "rules.yaml").unwrap();
        assert!(t.contains(r#"synthetics_journey_runs_total{journey_name=\"shop \\\"main\\\"\\\\\""#), "{t}");
    }
}
