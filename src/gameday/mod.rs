//! `vantage gameday`: inject faults one by one, watch the agents' `/events`
//! streams and the alerting pipeline, heal, and report for each fault how
//! long until the monitoring knew (a probe failed), detected (Prometheus
//! fired, Alertmanager accepted a page for the right team) and recovered.
//!
//! Whatever happens after the first injection (errors, Ctrl-C, SIGTERM, the
//! overall timeout) every injected fault is healed before the process ends.

pub mod alerts;
#[cfg(feature = "demo")]
pub mod demo;
pub mod report;
pub mod scenario;
pub mod stream;
pub mod svg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::Diagnostic;
use alerts::Alert;
use scenario::{Action, Fault, Scenario};
use stream::SharedLog;

/// How often alerts are polled and progress is refreshed.
const POLL: Duration = Duration::from_secs(1);
/// Attempts to heal before giving up (and saying exactly what is left broken).
const HEAL_ATTEMPTS: u32 = 3;
/// Longest an inject/heal action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A reqwest error for an operator: what failed and its root cause, no debug dump.
pub fn http_error(e: &reqwest::Error) -> String {
    let mut root = None;
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        root = Some(c.to_string());
        src = c.source();
    }
    let what = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_decode() {
        "unreadable answer".to_string()
    } else if e.is_body() {
        "the answer broke off".to_string()
    } else {
        "request failed".to_string()
    };
    match root {
        Some(r) if !what.contains(&r) => format!("{what}: {r}"),
        _ => what,
    }
}

/// Why the game day stopped early, if it did.
#[derive(Clone, Default)]
pub struct Stop {
    pub token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Stop {
    pub fn request(&self, why: &str) {
        let mut r = self.reason.lock().expect("stop lock");
        if r.is_none() {
            *r = Some(why.to_string());
        }
        self.token.cancel();
    }
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("stop lock").clone()
    }
}

/// What one agent runs, from its `/status`.
#[derive(Debug, Clone, Default)]
pub struct AgentJourneys {
    /// journey → (team label value, interval seconds, last outcome)
    pub journeys: BTreeMap<String, (Option<String>, f64, Option<String>)>,
}

/// What was done and seen for one fault (the raw material of its report).
#[derive(Debug, Clone, Default)]
pub struct FaultRun {
    pub index: usize,
    pub settle_started_ms: i64,
    pub settled: bool,
    pub warnings: Vec<String>,
    pub injected_ms: Option<i64>,
    pub inject_error: Option<String>,
    pub healed_ms: Option<i64>,
    pub heal_error: Option<String>,
    pub heal_attempts: u32,
    pub ended_ms: i64,
    pub interrupted: Option<String>,
    pub prometheus: AlertTrack,
    pub alertmanager: AlertTrack,
}

/// Alerts seen during one fault at one source.
#[derive(Debug, Clone, Default)]
pub struct AlertTrack {
    /// First poll with a new alert for the expected team (or any team, when none is expected).
    pub first: Option<(i64, Alert)>,
    /// First poll after healing with none of them left, once one was seen.
    pub resolved_ms: Option<i64>,
    /// New alerts for other teams: key → (first seen, alert).
    pub others: BTreeMap<String, (i64, Alert)>,
    pub poll_errors: u64,
    pub last_error: Option<String>,
    baseline: BTreeSet<String>,
}

impl AlertTrack {
    fn observe(
        &mut self,
        at: i64,
        alerts: &[Alert],
        want: &BTreeMap<String, String>,
        team_label: &str,
        team: Option<&str>,
        healed: bool,
    ) {
        let relevant: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.matches(want) && !self.baseline.contains(&a.key()))
            .collect();
        let ours = |a: &&Alert| team.is_none_or(|t| a.team(team_label) == Some(t));
        let mine: Vec<&Alert> = relevant.iter().copied().filter(ours).collect();
        if self.first.is_none() {
            if let Some(a) = mine.first() {
                self.first = Some((at, (*a).clone()));
            }
        }
        if healed && self.first.is_some() && self.resolved_ms.is_none() && mine.is_empty() {
            self.resolved_ms = Some(at);
        }
        for a in relevant.iter().filter(|a| !ours(a)) {
            self.others
                .entry(a.key())
                .or_insert_with(|| (at, (*a).clone()));
        }
    }

    fn settled(&self) -> bool {
        self.first.is_none() || self.resolved_ms.is_some()
    }
}

/// `vantage gameday SCENARIO`: exit 0 when every fault was known (and
/// detected, where alerting is configured) within its hold and healed; 1 when
/// something was missed or could not be healed; 130 when interrupted.
pub async fn run_file(path: &Path, out: Option<PathBuf>) -> anyhow::Result<i32> {
    let scenario = match scenario::load(path) {
        Ok(s) => s,
        Err(d) => {
            crate::daemon::print_diagnostics(&d);
            eprintln!("nothing was injected");
            return Ok(1);
        }
    };
    let out = out.unwrap_or_else(default_out_dir);
    let stop = Stop::default();
    spawn_signal_watch(stop.clone());
    match run(&scenario, &out, stop).await? {
        Outcome::Refused(diags) => {
            crate::daemon::print_diagnostics(&diags);
            eprintln!("nothing was injected");
            Ok(1)
        }
        Outcome::Done { report, exit } => {
            print!("{}", report::table(&report));
            println!("report: {}", out.join("report.md").display());
            Ok(exit)
        }
    }
}

pub fn default_out_dir() -> PathBuf {
    let ts = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string();
    PathBuf::from(format!("gameday-{ts}"))
}

/// SIGINT and SIGTERM stop the game day (which then heals); a second one does not skip healing.
pub fn spawn_signal_watch(stop: Stop) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let why = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if stop.token.is_cancelled() {
                eprintln!(
                    "gameday: {why} again: still healing (bounded by {}s per action), please wait",
                    ACTION_TIMEOUT.as_secs()
                );
            } else {
                eprintln!("gameday: {why}: stopping, healing what was injected");
            }
            stop.request(why);
        }
    });
}

pub enum Outcome {
    /// Pre-flight checks failed: nothing was injected.
    Refused(Vec<Diagnostic>),
    Done {
        report: report::Report,
        exit: i32,
    },
}

/// Runs a validated scenario and writes the report into `out`.
pub async fn run(sc: &Scenario, out: &Path, stop: Stop) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .user_agent(crate::user_agent())
        .build()?;
    let started_ms = now_ms();
    let agents = match preflight(&client, sc).await {
        Ok(a) => a,
        Err(d) => return Ok(Outcome::Refused(d)),
    };
    let log: SharedLog = Default::default();
    let streams = CancellationToken::new();
    let mut waits = Vec::new();
    for a in &sc.agents {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(stream::follow(
            reqwest::Client::new(),
            a.name.clone(),
            a.url.clone(),
            log.clone(),
            streams.child_token(),
            tx,
        ));
        waits.push((a, rx));
    }
    let mut diags = Vec::new();
    for (a, rx) in waits {
        match tokio::time::timeout(Duration::from_secs(6), rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(m))) => diags.push(sc.diag(
                a.pos,
                format!(
                    "agent `{}`: {m} (an agent older than this version has no /events)",
                    a.name
                ),
            )),
            _ => diags.push(sc.diag(
                a.pos,
                format!(
                    "agent `{}`: {}/events did not open within 6s",
                    a.name, a.url
                ),
            )),
        }
    }
    if !diags.is_empty() {
        streams.cancel();
        return Ok(Outcome::Refused(diags));
    }
    eprintln!(
        "gameday `{}`: {} agent(s) streaming, {} fault(s), at most {}",
        sc.name,
        sc.agents.len(),
        sc.faults.len(),
        humantime::format_duration(sc.timeout)
    );
    {
        let (s, t) = (stop.clone(), sc.timeout);
        let token = stop.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(t) => {
                    eprintln!("gameday: overall timeout of {} reached: stopping, healing what was injected", humantime::format_duration(t));
                    s.request("timeout");
                }
            }
        });
    }
    let mut runs = Vec::new();
    for (i, f) in sc.faults.iter().enumerate() {
        if stop.token.is_cancelled() {
            break;
        }
        runs.push(run_fault(sc, &client, &agents, &log, &stop, i, f).await);
    }
    // A last look for late events, then close the streams.
    tokio::time::sleep(Duration::from_millis(200)).await;
    streams.cancel();
    let report = report::build(
        sc,
        &agents,
        &log.lock().expect("event log lock"),
        &runs,
        started_ms,
        now_ms(),
        stop.reason(),
    );
    report::write(&report, out)?;
    let healed_all = runs
        .iter()
        .all(|r| r.injected_ms.is_none() || r.heal_error.is_none());
    let exit = if !healed_all {
        1
    } else if stop.reason().is_some_and(|r| r != "timeout") {
        130
    } else if report
        .faults
        .iter()
        .any(|f| !f.missed.journeys.is_empty() || f.missed.team.is_some())
        || stop.reason().is_some()
    {
        1
    } else {
        0
    };
    Ok(Outcome::Done { report, exit })
}

/// Checks every agent, journey, team and alert source before anything is injected.
async fn preflight(
    client: &reqwest::Client,
    sc: &Scenario,
) -> Result<BTreeMap<String, AgentJourneys>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut agents = BTreeMap::new();
    for a in &sc.agents {
        match agent_status(client, &a.url).await {
            Ok(j) => {
                agents.insert(a.name.clone(), j);
            }
            Err(m) => diags.push(sc.diag(
                a.pos,
                format!(
                    "agent `{}`: {m}: is the agent running, with `admin.listen` at this address?",
                    a.name
                ),
            )),
        }
    }
    for (src, prom) in [(&sc.prometheus, true), (&sc.alertmanager, false)] {
        if let Some(s) = src {
            if let Err(m) = alerts::ready(client, s, prom).await {
                diags.push(sc.diag(
                    s.pos,
                    format!("{}: {m}", if prom { "prometheus" } else { "alertmanager" }),
                ));
            }
        }
    }
    let known: BTreeSet<&String> = agents.values().flat_map(|a| a.journeys.keys()).collect();
    let teams: BTreeSet<&String> = agents
        .values()
        .flat_map(|a| a.journeys.values().filter_map(|j| j.0.as_ref()))
        .collect();
    let list = |s: &BTreeSet<&String>| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ");
    // Journeys and teams are checked against the agents that answered.
    let complete = agents.len() == sc.agents.len();
    for f in &sc.faults {
        for (j, pos) in &f.journeys {
            if complete && !known.contains(j) {
                diags.push(sc.diag(*pos, format!("fault `{}`: `expect.journeys`: no agent runs a journey `{j}` (they run: {})", f.name, list(&known))));
            }
        }
        if let Some((t, pos)) = &f.team {
            if complete && !teams.contains(t) {
                diags.push(sc.diag(*pos, format!("fault `{}`: `expect.team`: no journey on the agents has `{}: {t}` (teams: {})", f.name, sc.team_label, list(&teams))));
            }
        }
    }
    if diags.is_empty() {
        Ok(agents)
    } else {
        Err(diags)
    }
}

async fn agent_status(client: &reqwest::Client, base: &str) -> Result<AgentJourneys, String> {
    let url = format!("{base}/status");
    let resp = tokio::time::timeout(Duration::from_secs(3), client.get(&url).send())
        .await
        .map_err(|_| format!("{url} did not answer within 3s"))?
        .map_err(|e| format!("cannot reach {url}: {}", http_error(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let v: serde_json::Value = tokio::time::timeout(Duration::from_secs(3), resp.json())
        .await
        .map_err(|_| format!("{url} did not send its answer within 3s"))?
        .map_err(|e| format!("{url}: not a Vantage status document: {}", http_error(&e)))?;
    let Some(js) = v["journeys"].as_object() else {
        return Err(format!(
            "{url}: not a Vantage status document (no `journeys`)"
        ));
    };
    let journeys = js
        .iter()
        .map(|(name, st)| {
            let team = st["labels"]["team"].as_str().map(str::to_string);
            (
                name.clone(),
                (
                    team,
                    st["interval_s"].as_f64().unwrap_or(0.0),
                    st["last_outcome"].as_str().map(str::to_string),
                ),
            )
        })
        .collect();
    Ok(AgentJourneys { journeys })
}

/// `(agent, journey)` pairs where an expected journey runs.
fn expected_pairs(agents: &BTreeMap<String, AgentJourneys>, f: &Fault) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (a, js) in agents {
        for (j, _) in &f.journeys {
            if js.journeys.contains_key(j) {
                v.push((a.clone(), j.clone()));
            }
        }
    }
    v
}

/// Latest outcome per (agent, journey) since `since` (else the status at start).
fn latest(
    log: &SharedLog,
    agents: &BTreeMap<String, AgentJourneys>,
    pair: &(String, String),
    since: i64,
) -> Option<String> {
    let l = log.lock().expect("event log lock");
    l.runs
        .iter()
        .rev()
        .find(|s| s.agent == pair.0 && s.run.journey == pair.1 && s.run.ended_unix_ms >= since)
        .map(|s| s.run.outcome.clone())
        .or_else(|| {
            if since == 0 {
                agents
                    .get(&pair.0)
                    .and_then(|a| a.journeys.get(&pair.1))
                    .and_then(|j| j.2.clone())
            } else {
                None
            }
        })
}

fn secs(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

async fn run_fault(
    sc: &Scenario,
    client: &reqwest::Client,
    agents: &BTreeMap<String, AgentJourneys>,
    log: &SharedLog,
    stop: &Stop,
    i: usize,
    f: &Fault,
) -> FaultRun {
    let tag = format!("fault {}/{} `{}`", i + 1, sc.faults.len(), f.name);
    let mut run = FaultRun {
        index: i,
        settle_started_ms: now_ms(),
        ..Default::default()
    };
    let pairs = expected_pairs(agents, f);
    // Settle: the expected journeys pass everywhere and no alert in the
    // scenario's scope is pending or firing (one from the previous fault
    // could still fire and be taken for this fault's signal).
    let settle_until = tokio::time::Instant::now() + f.settle;
    let mut last_print = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let failing: Vec<String> = pairs
            .iter()
            .filter(|p| latest(log, agents, p, 0).as_deref() != Some("success"))
            .map(|(a, j)| format!("{j}@{a}"))
            .collect();
        let loud = if failing.is_empty() {
            active_alerts(sc, client).await
        } else {
            vec![]
        };
        if failing.is_empty() && loud.is_empty() {
            run.settled = true;
            break;
        }
        let waiting_for = if failing.is_empty() {
            format!("alerts to clear: {}", loud.join(", "))
        } else {
            format!("{} to pass", failing.join(", "))
        };
        if tokio::time::Instant::now() >= settle_until {
            let w = if failing.is_empty() {
                format!(
                    "alerts still pending or firing before injection (after waiting {}): {}; they are not counted as this fault's signals",
                    humantime::format_duration(f.settle),
                    loud.join(", ")
                )
            } else {
                format!(
                    "not all expected journeys passed before injection (after waiting {}): {}",
                    humantime::format_duration(f.settle),
                    failing.join(", ")
                )
            };
            eprintln!("gameday: {tag}: {w}; injecting anyway");
            run.warnings.push(w);
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("gameday: {tag}: waiting for {waiting_for} before injecting");
            last_print = tokio::time::Instant::now();
        }
        let pause = if failing.is_empty() { POLL } else { Duration::from_millis(250) };
        tokio::select! {
            _ = stop.token.cancelled() => { run.ended_ms = now_ms(); run.interrupted = stop.reason(); return run; }
            _ = tokio::time::sleep(pause) => {}
        }
    }
    // Alerts already there before the fault (pending ones too) are not its signals.
    if let Some(p) = &sc.prometheus {
        if let Ok(a) = alerts::prometheus_active(client, p).await {
            run.prometheus.baseline = a.iter().map(Alert::key).collect();
        }
    }
    if let Some(m) = &sc.alertmanager {
        if let Ok(a) = alerts::alertmanager_active(client, m).await {
            run.alertmanager.baseline = a.iter().map(Alert::key).collect();
        }
    }

    let t_inject = now_ms();
    run.injected_ms = Some(t_inject);
    match perform(client, &f.inject).await {
        Ok(()) => eprintln!(
            "gameday: {tag}: INJECT {} (hold {})",
            f.inject.describe(),
            humantime::format_duration(f.hold)
        ),
        Err(e) => {
            eprintln!("gameday: {tag}: injection failed: {e}; healing anyway");
            run.inject_error = Some(e);
        }
    }
    let team = f.team.as_ref().map(|t| t.0.as_str());
    let hold_until = tokio::time::Instant::now() + f.hold;
    let mut shown = Shown::default();
    if run.inject_error.is_none() {
        loop {
            poll_alerts(sc, client, &mut run, team, false).await;
            progress(
                &tag, "holding", t_inject, f.hold, log, agents, f, &run, &mut shown,
            );
            if tokio::time::Instant::now() >= hold_until {
                break;
            }
            tokio::select! {
                _ = stop.token.cancelled() => break,
                _ = tokio::time::sleep(POLL.min(hold_until.saturating_duration_since(tokio::time::Instant::now()))) => {}
            }
        }
    }

    let t_heal = now_ms();
    run.healed_ms = Some(t_heal);
    let mut err = None;
    for attempt in 1..=HEAL_ATTEMPTS {
        run.heal_attempts = attempt;
        match perform(client, &f.heal).await {
            Ok(()) => {
                err = None;
                break;
            }
            Err(e) => {
                eprintln!("gameday: {tag}: heal attempt {attempt}/{HEAL_ATTEMPTS} failed: {e}");
                err = Some(e);
                if attempt < HEAL_ATTEMPTS {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
    match &err {
        None => eprintln!(
            "gameday: {tag}: HEALED ({}) after {}{}",
            f.heal.describe(),
            secs(t_heal - t_inject),
            stop.reason().map(|r| format!(", early because of {r}")).unwrap_or_default()
        ),
        Some(e) => eprintln!("gameday: {tag}: COULD NOT HEAL after {HEAL_ATTEMPTS} attempts: {e}. Undo it by hand: {}", f.heal.describe()),
    }
    run.heal_error = err;

    // Recovery: the expected journeys pass again everywhere, and the alerts clear.
    if !stop.token.is_cancelled() {
        let until = tokio::time::Instant::now() + f.recover_within;
        loop {
            poll_alerts(sc, client, &mut run, team, true).await;
            let waiting: Vec<String> = pairs
                .iter()
                .filter(|p| latest(log, agents, p, t_heal).as_deref() != Some("success"))
                .map(|(a, j)| format!("{j}@{a}"))
                .collect();
            let done = waiting.is_empty() && run.prometheus.settled() && run.alertmanager.settled();
            progress(
                &tag,
                "recovering",
                t_heal,
                f.recover_within,
                log,
                agents,
                f,
                &run,
                &mut shown,
            );
            if done {
                eprintln!(
                    "gameday: {tag}: recovered {} after healing",
                    secs(now_ms() - t_heal)
                );
                break;
            }
            if tokio::time::Instant::now() >= until {
                let w = format!(
                    "not recovered within {} of healing: {}",
                    humantime::format_duration(f.recover_within),
                    if waiting.is_empty() {
                        "alerts still firing".into()
                    } else {
                        waiting.join(", ")
                    }
                );
                eprintln!("gameday: {tag}: {w}");
                run.warnings.push(w);
                break;
            }
            tokio::select! {
                _ = stop.token.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
    run.ended_ms = now_ms();
    run.interrupted = stop.reason();
    run
}

/// Alerts in the scenario's scope that are pending or firing in Prometheus,
/// or active in Alertmanager, named for a person. An unreachable source counts
/// as quiet here: the pre-flight checked it, and polling records its errors.
async fn active_alerts(sc: &Scenario, client: &reqwest::Client) -> Vec<String> {
    let mut out = BTreeSet::new();
    let name = |a: &Alert| {
        let label = |k: &str| a.labels.get(k).map(String::as_str).unwrap_or("?");
        format!("{} for {}", label("alertname"), label(&sc.team_label))
    };
    if let Some(p) = &sc.prometheus {
        if let Ok(a) = alerts::prometheus_active(client, p).await {
            out.extend(a.iter().filter(|a| a.matches(&p.match_labels)).map(name));
        }
    }
    if let Some(m) = &sc.alertmanager {
        if let Ok(a) = alerts::alertmanager_active(client, m).await {
            out.extend(a.iter().filter(|a| a.matches(&m.match_labels)).map(name));
        }
    }
    out.into_iter().collect()
}

async fn poll_alerts(
    sc: &Scenario,
    client: &reqwest::Client,
    run: &mut FaultRun,
    team: Option<&str>,
    healed: bool,
) {
    if let Some(p) = &sc.prometheus {
        let at = now_ms();
        match alerts::prometheus_firing(client, p).await {
            Ok(a) => run
                .prometheus
                .observe(at, &a, &p.match_labels, &sc.team_label, team, healed),
            Err(e) => {
                run.prometheus.poll_errors += 1;
                run.prometheus.last_error = Some(e);
            }
        }
    }
    if let Some(m) = &sc.alertmanager {
        let at = now_ms();
        match alerts::alertmanager_active(client, m).await {
            Ok(a) => {
                run.alertmanager
                    .observe(at, &a, &m.match_labels, &sc.team_label, team, healed)
            }
            Err(e) => {
                run.alertmanager.poll_errors += 1;
                run.alertmanager.last_error = Some(e);
            }
        }
    }
}

/// Milestones already announced, so each is printed once.
#[derive(Default)]
struct Shown {
    know: bool,
    prom: bool,
    am: bool,
    last_line: Option<tokio::time::Instant>,
}

#[allow(clippy::too_many_arguments)]
fn progress(
    tag: &str,
    phase: &str,
    since: i64,
    budget: Duration,
    log: &SharedLog,
    _agents: &BTreeMap<String, AgentJourneys>,
    f: &Fault,
    run: &FaultRun,
    shown: &mut Shown,
) {
    let t_inject = run.injected_ms.unwrap_or(since);
    let (n, failed, first) = {
        let l = log.lock().expect("event log lock");
        let window: Vec<_> = l
            .runs
            .iter()
            .filter(|s| s.run.ended_unix_ms >= t_inject)
            .collect();
        let failed = window.iter().filter(|s| s.run.outcome == "failure").count();
        let first = window
            .iter()
            .filter(|s| {
                s.run.outcome == "failure" && f.journeys.iter().any(|(j, _)| *j == s.run.journey)
            })
            .min_by_key(|s| s.run.ended_unix_ms)
            .map(|s| {
                (
                    s.run.ended_unix_ms,
                    s.run.journey.clone(),
                    s.agent.clone(),
                    s.run.error_type.clone().unwrap_or_default(),
                )
            });
        (window.len(), failed, first)
    };
    if let (Some((at, j, a, et)), false) = (&first, shown.know) {
        shown.know = true;
        eprintln!(
            "gameday: {tag}: KNOW +{}: {j} failed at {a} ({et})",
            secs(at - t_inject)
        );
    }
    if let (Some((at, al)), false) = (&run.prometheus.first, shown.prom) {
        shown.prom = true;
        eprintln!(
            "gameday: {tag}: DETECT +{}: Prometheus fired {}",
            secs(at - t_inject),
            al.labels.get("alertname").cloned().unwrap_or_default()
        );
    }
    if let (Some((at, al)), false) = (&run.alertmanager.first, shown.am) {
        shown.am = true;
        eprintln!(
            "gameday: {tag}: PAGE +{}: Alertmanager accepted {} for receivers {}",
            secs(at - t_inject),
            al.labels.get("alertname").cloned().unwrap_or_default(),
            al.receivers.join(", ")
        );
    }
    let due = shown
        .last_line
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
    if due {
        shown.last_line = Some(tokio::time::Instant::now());
        let know = first
            .map(|(at, ..)| format!("knew +{}", secs(at - t_inject)))
            .unwrap_or_else(|| "not known yet".into());
        eprintln!(
            "gameday: {tag}: {phase} {}/{} · {n} runs, {failed} failed since injection · {know}{}{}",
            secs(now_ms() - since),
            humantime::format_duration(budget),
            if run.prometheus.first.is_some() { " · Prometheus firing" } else { "" },
            if run.alertmanager.first.is_some() { " · paged" } else { "" },
        );
    }
}

/// Performs an inject or heal action within [`ACTION_TIMEOUT`].
pub async fn perform(client: &reqwest::Client, a: &Action) -> Result<(), String> {
    match a {
        Action::Http {
            method,
            url,
            headers,
            body,
        } => {
            let mut req = client.request(method.clone(), url).timeout(ACTION_TIMEOUT);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some((b, ct)) = body {
                if !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    req = req.header("content-type", *ct);
                }
                req = req.body(b.clone());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {}", http_error(&e)))?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                let body = tokio::time::timeout(Duration::from_secs(2), resp.text())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_default();
                Err(format!(
                    "{method} {url}: expected a 2xx answer, got {status}: {}",
                    body.chars().take(200).collect::<String>()
                ))
            }
        }
        Action::Command(argv) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(ACTION_TIMEOUT, cmd.output())
                .await
                .map_err(|_| {
                    format!(
                        "`{}` did not finish within {}s (killed)",
                        argv.join(" "),
                        ACTION_TIMEOUT.as_secs()
                    )
                })?;
            let out = out.map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                Err(format!(
                    "`{}` failed ({}): {}",
                    argv.join(" "),
                    out.status,
                    err.trim().chars().take(300).collect::<String>()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(team: &str) -> Alert {
        Alert {
            labels: BTreeMap::from([
                ("alertname".into(), "JourneyFailing".into()),
                ("team".into(), team.into()),
            ]),
            receivers: vec![],
        }
    }

    #[test]
    fn alert_track_separates_expected_team_other_teams_and_baseline() {
        let mut t = AlertTrack {
            baseline: BTreeSet::from([alert("old").key()]),
            ..Default::default()
        };
        let want = BTreeMap::new();
        t.observe(1, &[alert("old")], &want, "team", Some("crm"), false);
        assert!(
            t.first.is_none() && t.others.is_empty(),
            "baseline alerts are not signals"
        );
        t.observe(
            2,
            &[alert("old"), alert("web")],
            &want,
            "team",
            Some("crm"),
            false,
        );
        t.observe(
            3,
            &[alert("crm"), alert("web")],
            &want,
            "team",
            Some("crm"),
            false,
        );
        assert_eq!(t.first.as_ref().map(|f| f.0), Some(3));
        assert_eq!(t.others.values().map(|o| o.0).collect::<Vec<_>>(), vec![2]);
        t.observe(4, &[alert("crm")], &want, "team", Some("crm"), true);
        assert_eq!(t.resolved_ms, None, "still firing after heal");
        t.observe(5, &[], &want, "team", Some("crm"), true);
        assert_eq!(t.resolved_ms, Some(5));
        assert!(t.settled());
    }

    #[tokio::test]
    async fn command_actions_report_failures_with_stderr() {
        let c = reqwest::Client::new();
        assert_eq!(
            perform(&c, &Action::Command(vec!["true".into()])).await,
            Ok(())
        );
        let e = perform(
            &c,
            &Action::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo nope >&2; exit 3".into(),
            ]),
        )
        .await
        .unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
        let e = perform(&c, &Action::Command(vec!["/nonexistent/x".into()]))
            .await
            .unwrap_err();
        assert!(e.starts_with("cannot run `/nonexistent/x`"), "{e}");
    }
}
