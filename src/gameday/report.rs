//! Turns what a game day did and saw into figures, and writes them as
//! Markdown, JSON and one SVG timeline per fault.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::alerts::Alert;
use super::scenario::Scenario;
use super::stream::{Log, Seen, StreamHealth};
use super::{AgentJourneys, FaultRun};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub file: String,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// `SIGINT`, `SIGTERM` or `timeout` when the game day stopped early.
    pub interrupted: Option<String>,
    pub agents: BTreeMap<String, AgentReport>,
    /// Runs not kept because the game day's bounded log was full.
    pub runs_dropped: u64,
    pub faults: Vec<FaultReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub url: String,
    pub runs_seen: usize,
    #[serde(flatten)]
    pub stream: StreamHealth,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    pub agent: String,
    pub journey: String,
    pub location: String,
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub run_id: String,
    pub trace_id: String,
    pub ended_unix_ms: i64,
}

impl RunRef {
    fn of(s: &Seen) -> RunRef {
        RunRef {
            agent: s.agent.clone(),
            journey: s.run.journey.clone(),
            location: s.run.location.clone(),
            error_type: s.run.error_type.clone(),
            message: s.run.message.clone(),
            run_id: s.run.run_id.clone(),
            trace_id: s.run.trace_id.clone(),
            ended_unix_ms: s.run.ended_unix_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Seconds from injection; `null` when never seen.
    pub after_s: Option<f64>,
    /// Seconds from healing until no such alert was left.
    pub resolved_after_heal_s: Option<f64>,
    pub alert: Option<Alert>,
    pub poll_errors: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FalseJourney {
    pub journey: String,
    pub agent: String,
    pub failures: usize,
    pub first_after_s: f64,
    pub error_type: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FalsePage {
    /// `prometheus` (alert fired) or `alertmanager` (page accepted).
    pub source: &'static str,
    pub team: Option<String>,
    pub after_s: f64,
    pub alert: Alert,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Missed {
    /// Expected journeys that did not fail at any agent during the hold.
    pub journeys: Vec<String>,
    /// The expected team, when no alert/page for it came during the hold.
    pub team: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub inject: String,
    pub heal: String,
    pub expected_journeys: Vec<String>,
    pub expected_team: Option<String>,
    pub hold_s: f64,
    pub settled_before_injection: bool,
    pub warnings: Vec<String>,
    pub injected_unix_ms: Option<i64>,
    pub healed_unix_ms: Option<i64>,
    pub ended_unix_ms: i64,
    pub inject_error: Option<String>,
    pub healed: bool,
    pub heal_error: Option<String>,
    pub heal_attempts: u32,
    /// Injection → first failed run of an expected journey (run end time), any agent.
    pub time_to_know_s: Option<f64>,
    pub first_failure: Option<RunRef>,
    pub time_to_know_by_agent: BTreeMap<String, Option<f64>>,
    pub time_to_know_by_journey: BTreeMap<String, Option<f64>>,
    /// Injection → alert firing in Prometheus.
    pub prometheus: Option<Detection>,
    /// Injection → Alertmanager holding the alert for the expected team's receiver.
    pub alertmanager: Option<Detection>,
    /// Heal → every expected journey passed again at every agent that runs it.
    pub time_to_recover_s: Option<f64>,
    pub time_to_recover_by_agent: BTreeMap<String, Option<f64>>,
    pub false_journeys: Vec<FalseJourney>,
    pub false_pages: Vec<FalsePage>,
    pub missed: Missed,
    /// Every run that ended between settling and the end of this fault's window.
    pub runs: Vec<Seen>,
    pub svg: Option<String>,
}

/// Runs kept before a fault's settle phase, for context.
const BEFORE_MS: i64 = 10_000;

fn s(ms: i64) -> f64 {
    (ms as f64 / 10.0).round() / 100.0
}

pub fn build(
    sc: &Scenario,
    agents: &BTreeMap<String, AgentJourneys>,
    log: &Log,
    runs: &[FaultRun],
    started: i64,
    finished: i64,
    interrupted: Option<String>,
) -> Report {
    let mut faults = Vec::new();
    for r in runs {
        let f = &sc.faults[r.index];
        let expected: Vec<String> = f.journeys.iter().map(|j| j.0.clone()).collect();
        let is_expected = |j: &str| expected.iter().any(|e| e == j);
        // Some runs before the fault too, so the timeline shows what healthy looked like.
        let from = r.settle_started_ms - BEFORE_MS;
        let window: Vec<Seen> = log.runs.iter().filter(|x| x.run.ended_unix_ms >= from && x.run.ended_unix_ms <= r.ended_ms).cloned().collect();
        let mut fr = FaultReport {
            name: f.name.clone(),
            inject: f.inject.describe(),
            heal: f.heal.describe(),
            expected_journeys: expected.clone(),
            expected_team: f.team.as_ref().map(|t| t.0.clone()),
            hold_s: f.hold.as_secs_f64(),
            settled_before_injection: r.settled,
            warnings: r.warnings.clone(),
            injected_unix_ms: r.injected_ms,
            healed_unix_ms: r.healed_ms,
            ended_unix_ms: r.ended_ms,
            inject_error: r.inject_error.clone(),
            healed: r.injected_ms.is_some() && r.heal_error.is_none(),
            heal_error: r.heal_error.clone(),
            heal_attempts: r.heal_attempts,
            time_to_know_s: None,
            first_failure: None,
            time_to_know_by_agent: BTreeMap::new(),
            time_to_know_by_journey: BTreeMap::new(),
            prometheus: None,
            alertmanager: None,
            time_to_recover_s: None,
            time_to_recover_by_agent: BTreeMap::new(),
            false_journeys: Vec::new(),
            false_pages: Vec::new(),
            missed: Missed::default(),
            runs: window.clone(),
            svg: None,
        };
        let (Some(ti), Some(th)) = (r.injected_ms, r.healed_ms) else {
            faults.push(fr);
            continue;
        };
        // A failure belongs to the fault when the run ended after injection and started before healing.
        let during = |x: &&Seen| {
            x.run.outcome == "failure" && x.run.ended_unix_ms >= ti && x.run.started_unix_ms < th
        };
        let fails: Vec<&Seen> = window.iter().filter(during).collect();
        let first_of = |pred: &dyn Fn(&Seen) -> bool| {
            fails
                .iter()
                .filter(|x| pred(x))
                .min_by_key(|x| x.run.ended_unix_ms)
                .copied()
        };
        if let Some(first) = first_of(&|x| is_expected(&x.run.journey)) {
            fr.time_to_know_s = Some(s(first.run.ended_unix_ms - ti));
            fr.first_failure = Some(RunRef::of(first));
        }
        for (a, js) in agents {
            if expected.iter().any(|j| js.journeys.contains_key(j)) {
                let t = first_of(&|x| x.agent == *a && is_expected(&x.run.journey))
                    .map(|x| s(x.run.ended_unix_ms - ti));
                fr.time_to_know_by_agent.insert(a.clone(), t);
            }
        }
        for j in &expected {
            let t = first_of(&|x| x.run.journey == *j).map(|x| s(x.run.ended_unix_ms - ti));
            fr.time_to_know_by_journey.insert(j.clone(), t);
            if t.is_none() {
                fr.missed.journeys.push(j.clone());
            }
        }
        // Recovery: per (agent, expected journey) the first success ending after heal; the slowest counts.
        let mut worst: Option<i64> = Some(0);
        for (a, js) in agents {
            let mut agent_worst: Option<i64> = Some(0);
            let mut any = false;
            for j in expected.iter().filter(|j| js.journeys.contains_key(*j)) {
                any = true;
                let ok = window
                    .iter()
                    .filter(|x| {
                        x.agent == *a
                            && x.run.journey == *j
                            && x.run.outcome == "success"
                            && x.run.ended_unix_ms >= th
                    })
                    .map(|x| x.run.ended_unix_ms - th)
                    .min();
                agent_worst = match (agent_worst, ok) {
                    (Some(w), Some(o)) => Some(w.max(o)),
                    _ => None,
                };
            }
            if any {
                fr.time_to_recover_by_agent
                    .insert(a.clone(), agent_worst.map(s));
                worst = match (worst, agent_worst) {
                    (Some(w), Some(o)) => Some(w.max(o)),
                    _ => None,
                };
            }
        }
        fr.time_to_recover_s = worst.map(s);
        // False signals: other journeys failing during the fault, other teams alerted or paged.
        let mut other: BTreeMap<(String, String), FalseJourney> = BTreeMap::new();
        for x in fails.iter().filter(|x| !is_expected(&x.run.journey)) {
            let e = other
                .entry((x.run.journey.clone(), x.agent.clone()))
                .or_insert_with(|| FalseJourney {
                    journey: x.run.journey.clone(),
                    agent: x.agent.clone(),
                    failures: 0,
                    first_after_s: s(x.run.ended_unix_ms - ti),
                    error_type: x.run.error_type.clone(),
                });
            e.failures += 1;
            e.first_after_s = e.first_after_s.min(s(x.run.ended_unix_ms - ti));
        }
        fr.false_journeys = other.into_values().collect();
        let detection = |t: &super::AlertTrack| Detection {
            after_s: t.first.as_ref().map(|(at, _)| s(at - ti)),
            resolved_after_heal_s: t.resolved_ms.map(|at| s(at - th)),
            alert: t.first.as_ref().map(|(_, a)| a.clone()),
            poll_errors: t.poll_errors,
            last_error: t.last_error.clone(),
        };
        for (src, track, on) in [
            ("prometheus", &r.prometheus, sc.prometheus.is_some()),
            ("alertmanager", &r.alertmanager, sc.alertmanager.is_some()),
        ] {
            if !on {
                continue;
            }
            let d = detection(track);
            for (at, a) in track.others.values() {
                fr.false_pages.push(FalsePage {
                    source: src,
                    team: a.team(&sc.team_label).map(str::to_string),
                    after_s: s(at - ti),
                    alert: a.clone(),
                });
            }
            if src == "prometheus" {
                fr.prometheus = Some(d);
            } else {
                fr.alertmanager = Some(d);
            }
        }
        // The page is what tells people; without Alertmanager, the firing alert.
        if let Some(team) = &fr.expected_team {
            let seen = if sc.alertmanager.is_some() {
                &r.alertmanager
            } else {
                &r.prometheus
            };
            if seen.first.as_ref().is_none_or(|(at, _)| *at > th) {
                fr.missed.team = Some(team.clone());
            }
        }
        faults.push(fr);
    }
    let agents_out = sc
        .agents
        .iter()
        .map(|a| {
            let runs_seen = log.runs.iter().filter(|x| x.agent == a.name).count();
            (
                a.name.clone(),
                AgentReport {
                    url: a.url.clone(),
                    runs_seen,
                    stream: log.agents.get(&a.name).cloned().unwrap_or_default(),
                },
            )
        })
        .collect();
    Report {
        scenario: sc.name.clone(),
        file: sc.file.display().to_string(),
        started_unix_ms: started,
        finished_unix_ms: finished,
        interrupted,
        agents: agents_out,
        runs_dropped: log.dropped,
        faults,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}s")).unwrap_or_else(|| "—".into())
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The time-to-know table printed at the end (and at the top of the Markdown).
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>9} {:>11} {:>9} {:>9} {:>9}  FALSE / MISSED",
        "FAULT", "KNOW", "PROMETHEUS", "PAGED", "RECOVER", "RESOLVED"
    );
    for f in &r.faults {
        let resolved = f
            .alertmanager
            .as_ref()
            .or(f.prometheus.as_ref())
            .and_then(|d| d.resolved_after_heal_s);
        let _ = writeln!(
            out,
            "{:<26} {:>9} {:>11} {:>9} {:>9} {:>9}  {}",
            f.name.chars().take(26).collect::<String>(),
            opt(f.time_to_know_s),
            f.prometheus
                .as_ref()
                .map(|d| opt(d.after_s))
                .unwrap_or_else(|| "n/a".into()),
            f.alertmanager
                .as_ref()
                .map(|d| opt(d.after_s))
                .unwrap_or_else(|| "n/a".into()),
            opt(f.time_to_recover_s),
            if f.prometheus.is_none() && f.alertmanager.is_none() {
                "n/a".into()
            } else {
                opt(resolved)
            },
            signals(f),
        );
    }
    match &r.interrupted {
        Some(why) => {
            let healed = r
                .faults
                .iter()
                .filter(|f| f.injected_unix_ms.is_some())
                .all(|f| f.healed);
            let _ = writeln!(
                out,
                "interrupted by {why}; {}",
                if healed {
                    "everything injected was healed"
                } else {
                    "SOME FAULTS COULD NOT BE HEALED: see the report"
                }
            );
        }
        None => {
            let _ = writeln!(out, "all faults healed");
        }
    }
    out
}

fn signals(f: &FaultReport) -> String {
    let mut parts = Vec::new();
    for j in &f.false_journeys {
        parts.push(format!("{} failed at {}", j.journey, j.agent));
    }
    for p in &f.false_pages {
        parts.push(format!(
            "{} {} team {}",
            p.source,
            if p.source == "alertmanager" {
                "paged"
            } else {
                "alerted"
            },
            p.team.as_deref().unwrap_or("(none)")
        ));
    }
    for j in &f.missed.journeys {
        parts.push(format!("MISSED {j}"));
    }
    if let Some(t) = &f.missed.team {
        parts.push(format!("MISSED page for {t}"));
    }
    if !f.healed && f.injected_unix_ms.is_some() {
        parts.push("NOT HEALED".into());
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Game day: {}\n", r.scenario);
    let _ = writeln!(
        o,
        "Scenario `{}`, {} → {} ({:.0}s).",
        r.file,
        rfc3339(r.started_unix_ms),
        rfc3339(r.finished_unix_ms),
        (r.finished_unix_ms - r.started_unix_ms) as f64 / 1000.0
    );
    if let Some(why) = &r.interrupted {
        let _ = writeln!(o, "\n**Stopped early by {why}.** Every fault that was injected was then healed unless marked NOT HEALED below.");
    }
    let _ = writeln!(o, "\n```\n{}```\n", table(r));
    let _ = writeln!(o, "| agent | url | runs seen | events skipped (slow reader) | reconnects |\n|---|---|---|---|---|");
    for (n, a) in &r.agents {
        let _ = writeln!(
            o,
            "| {n} | {} | {} | {} | {} |",
            a.url, a.runs_seen, a.stream.lagged, a.stream.reconnects
        );
    }
    for (i, f) in r.faults.iter().enumerate() {
        let _ = writeln!(o, "\n## {}. {}\n", i + 1, f.name);
        let _ = writeln!(
            o,
            "- inject: `{}`{}",
            f.inject,
            f.injected_unix_ms
                .map(|t| format!(" at {}", rfc3339(t)))
                .unwrap_or_default()
        );
        if let Some(e) = &f.inject_error {
            let _ = writeln!(o, "  - **injection failed**: {e}");
        }
        let _ = writeln!(
            o,
            "- hold: {:.0}s; heal: `{}`{} — {}",
            f.hold_s,
            f.heal,
            f.healed_unix_ms
                .map(|t| format!(" at {}", rfc3339(t)))
                .unwrap_or_default(),
            if f.healed {
                "healed".to_string()
            } else {
                format!(
                    "**NOT HEALED**: {}",
                    f.heal_error.as_deref().unwrap_or("never injected")
                )
            }
        );
        let _ = writeln!(
            o,
            "- expected to fail: {}; team to page: {}",
            f.expected_journeys.join(", "),
            f.expected_team.as_deref().unwrap_or("—")
        );
        for w in &f.warnings {
            let _ = writeln!(o, "- warning: {w}");
        }
        let _ = writeln!(o, "\n| figure | value |\n|---|---|");
        let _ = writeln!(
            o,
            "| time-to-know (first failed run, any agent) | {} |",
            opt(f.time_to_know_s)
        );
        for (a, t) in &f.time_to_know_by_agent {
            let _ = writeln!(o, "| time-to-know at {a} | {} |", opt(*t));
        }
        if f.expected_journeys.len() > 1 {
            for (j, t) in &f.time_to_know_by_journey {
                let _ = writeln!(o, "| time-to-know for {j} | {} |", opt(*t));
            }
        }
        if let Some(d) = &f.prometheus {
            let _ = writeln!(
                o,
                "| time-to-detect: Prometheus alert firing | {}{} |",
                opt(d.after_s),
                d.alert
                    .as_ref()
                    .map(|a| format!(" (`{}`)", a.key()))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                o,
                "| alert resolved after heal | {} |",
                opt(d.resolved_after_heal_s)
            );
        }
        if let Some(d) = &f.alertmanager {
            let _ = writeln!(
                o,
                "| time-to-detect: Alertmanager accepted the page | {}{} |",
                opt(d.after_s),
                d.alert
                    .as_ref()
                    .map(|a| format!(" (receivers: {})", a.receivers.join(", ")))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                o,
                "| page resolved after heal | {} |",
                opt(d.resolved_after_heal_s)
            );
        }
        let _ = writeln!(
            o,
            "| time-to-recover (every expected journey passing again everywhere) | {} |",
            opt(f.time_to_recover_s)
        );
        for (a, t) in &f.time_to_recover_by_agent {
            let _ = writeln!(o, "| time-to-recover at {a} | {} |", opt(*t));
        }
        if let Some(ff) = &f.first_failure {
            let _ = writeln!(
                o,
                "\nFirst failure: `{}` at {} ({}), `error.type={}`, trace `{}`: {}",
                ff.journey,
                ff.agent,
                ff.location,
                ff.error_type.as_deref().unwrap_or(""),
                ff.trace_id,
                ff.message.as_deref().unwrap_or("").replace('\n', " ")
            );
        }
        let _ = writeln!(o, "\nFalse signals and misses: {}", signals(f));
        if let Some(svg) = &f.svg {
            let _ = writeln!(o, "\n![timeline of {}]({svg})", f.name);
        }
    }
    let _ = writeln!(
        o,
        "\n## What the numbers mean\n\n\
- **time-to-know**: injection → end of the first failed run of an expected journey (as the agents' `/events` streams report it). At most one journey interval (the wait for the next run) plus the time the journey needs to notice (its timeout, or an `eventually` step's `within`).\n\
- **time-to-detect**: injection → the alert firing in Prometheus (`/api/v1/alerts`), and → Alertmanager holding it for the expected team (`/api/v2/alerts`); polled every second. Adds scrape/export interval, rule `for:`, burn-rate windows and Alertmanager routing to time-to-know.\n\
- **time-to-recover**: heal → every expected journey passed again at every agent running it; alert/page resolved: heal → gone from Prometheus/Alertmanager.\n\
- **false signals**: other journeys failing during the fault, alerts or pages for other teams. **missed**: expected journeys that never failed, or the expected team not paged, before healing."
    );
    o
}

/// Writes report.md, report.json and fault-N-NAME.svg into `dir`.
pub fn write(r: &Report, dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let mut r = r.clone();
    for (i, f) in r.faults.iter_mut().enumerate() {
        if f.injected_unix_ms.is_none() {
            continue;
        }
        let name = format!("fault-{}-{}.svg", i + 1, slug(&f.name));
        std::fs::write(dir.join(&name), super::svg::timeline(f))
            .with_context(|| format!("cannot write {}", dir.join(&name).display()))?;
        f.svg = Some(name);
    }
    std::fs::write(dir.join("report.md"), markdown(&r))
        .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::daemon::admin::RunEvent;

    fn seen(agent: &str, journey: &str, outcome: &str, started: i64, ended: i64) -> Seen {
        Seen {
            agent: agent.into(),
            run: RunEvent {
                journey: journey.into(),
                location: agent.into(),
                agent_id: agent.into(),
                outcome: outcome.into(),
                error_type: (outcome == "failure").then(|| "http_status".into()),
                message: None,
                duration_ms: (ended - started) as f64,
                run_id: format!("{agent}-{started}"),
                trace_id: "t".into(),
                started_unix_ms: started,
                ended_unix_ms: ended,
            },
        }
    }

    #[test]
    fn figures_come_from_the_runs_in_the_fault_window() {
        let sc = crate::gameday::scenario::parse(
            Path::new("s.yaml"),
            "agents: [{name: a, url: \"http://127.0.0.1:1\"}, {name: b, url: \"http://127.0.0.1:2\"}, {name: c, url: \"http://127.0.0.1:3\"}]\nfaults:\n  - {name: f, inject: {command: [\"true\"]}, hold: 5s, heal: {command: [\"true\"]}, expect: {journeys: [j]}}\n",
        )
        .unwrap();
        let runs_j = |x: &[&str]| super::AgentJourneys { journeys: x.iter().map(|j| (j.to_string(), (None, 1.0, None))).collect() };
        let agents = BTreeMap::from([("a".to_string(), runs_j(&["j", "other"])), ("b".to_string(), runs_j(&["j"])), ("c".to_string(), runs_j(&["other"]))]);
        let log = Log {
            runs: vec![
                seen("a", "j", "success", 800, 900),
                seen("a", "other", "failure", 1200, 1300),
                seen("a", "j", "failure", 1500, 3000),
                seen("b", "j", "failure", 2000, 4000),
                seen("a", "j", "failure", 6500, 6600), // started after healing: not the fault's
                seen("a", "j", "success", 6700, 7000),
                seen("b", "j", "success", 8000, 9000),
            ],
            ..Default::default()
        };
        let run = FaultRun { index: 0, settle_started_ms: 500, settled: true, injected_ms: Some(1000), healed_ms: Some(6000), ended_ms: 9500, ..Default::default() };
        let r = build(&sc, &agents, &log, &[run], 0, 10_000, None);
        let f = &r.faults[0];
        assert_eq!(f.time_to_know_s, Some(2.0));
        assert_eq!(f.first_failure.as_ref().unwrap().agent, "a");
        assert_eq!(f.time_to_know_by_agent, BTreeMap::from([("a".to_string(), Some(2.0)), ("b".to_string(), Some(3.0))]), "c does not run j");
        assert_eq!(f.time_to_recover_by_agent, BTreeMap::from([("a".to_string(), Some(1.0)), ("b".to_string(), Some(3.0))]));
        assert_eq!(f.time_to_recover_s, Some(3.0), "the slowest agent");
        assert_eq!(f.false_journeys.len(), 1);
        assert_eq!((f.false_journeys[0].journey.as_str(), f.false_journeys[0].first_after_s), ("other", 0.3));
        assert!(f.missed.journeys.is_empty() && f.missed.team.is_none());
        assert_eq!(f.runs.len(), 7, "runs shortly before the fault are kept for the timeline");
        assert!(table(&r).contains("2.0s"));
    }

    #[test]
    fn an_expected_journey_that_never_failed_is_missed() {
        let sc = crate::gameday::scenario::parse(Path::new("s.yaml"), "agents: [{name: a, url: \"http://127.0.0.1:1\"}]\nfaults:\n  - {name: f, inject: {command: [\"true\"]}, hold: 5s, heal: {command: [\"true\"]}, expect: {journeys: [j]}}\n").unwrap();
        let agents = BTreeMap::from([("a".to_string(), super::AgentJourneys { journeys: BTreeMap::from([("j".to_string(), (None, 1.0, None))]) })]);
        let log = Log { runs: vec![seen("a", "j", "success", 1500, 1600)], ..Default::default() };
        let run = FaultRun { injected_ms: Some(1000), healed_ms: Some(6000), ended_ms: 9500, ..Default::default() };
        let f = &build(&sc, &agents, &log, &[run], 0, 10_000, None).faults[0];
        assert_eq!(f.time_to_know_s, None);
        assert_eq!(f.missed.journeys, vec!["j".to_string()]);
        assert!(table(&build(&sc, &agents, &log, &[], 0, 1, Some("SIGINT".into()))).contains("interrupted by SIGINT; everything injected was healed"));
    }

    #[test]
    fn slugs_are_file_safe() {
        assert_eq!(slug("ACK endpoint: 500!"), "ack-endpoint-500");
    }
}
