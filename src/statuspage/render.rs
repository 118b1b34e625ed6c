//! Server-side HTML of the status page. Every piece of text that comes from
//! config or the network (journey names, labels, messages) goes through [`esc`].

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::history::{Entry, History};
use super::svg::{self, PALETTE};
use super::{StatusPage, Tracked};
use crate::steps::Delivery;
use crate::vocab::Outcome;

pub const APP_JS: &str = include_str!("app.js");
const CSS: &str = include_str!("style.css");
/// Runs drawn in the grid and sparkline.
const GRID_RUNS: usize = 40;
/// Failed runs shown in full on a journey page.
pub const FAILURES_SHOWN: usize = 10;
/// Runs listed per journey in the marketing view.
const MARKETING_RUNS: usize = 30;

pub struct View<'a> {
    pub page: &'a StatusPage,
    pub journeys: &'a BTreeMap<String, Tracked>,
    pub now: SystemTime,
}

pub use crate::vocab::escape_markup as esc;

/// A query-string value, percent-encoded.
fn qv(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn journey_href(name: &str) -> String {
    format!("/ui/journey?name={}", qv(name))
}

pub fn fmt_ms(ms: f32) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{:.1} min", ms / 60_000.0)
    }
}

/// Seconds in plain words: `0.8 s`, `0.05 s`, `12 s`.
fn secs(ms: f32) -> String {
    let s = ms / 1000.0;
    if s < 0.1 {
        format!("{s:.2} s")
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// `10:12:07` today, `11-26 10:12` otherwise (UTC).
fn clock(ms: u64, now: SystemTime) -> String {
    let t = humantime::format_rfc3339_seconds(at(ms)).to_string();
    let n = humantime::format_rfc3339_seconds(now).to_string();
    if t[..10] == n[..10] {
        t[11..19].to_string()
    } else {
        format!("{} {}", &t[5..10], &t[11..16])
    }
}

fn ago(ms: u64, now: SystemTime) -> String {
    let d = now.duration_since(at(ms)).unwrap_or_default().as_secs();
    match d {
        0..=59 => format!("{d} s"),
        60..=3599 => format!("{} min", d / 60),
        3600..=86_399 => format!("{} h {} min", d / 3600, d % 3600 / 60),
        _ => format!("{} d {} h", d / 86_400, d % 86_400 / 3600),
    }
}

fn outcome_class(o: Outcome) -> &'static str {
    o.as_str()
}

fn state_word(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Success) => "passing",
        Some(Outcome::Degraded) => "degraded",
        Some(Outcome::Failure) => "failing",
        None => "waiting for its first run",
    }
}

fn phase_colour(p: &str) -> &'static str {
    // Stable colours for the common phases; others by a hash of the name.
    let known = [
        "dns",
        "connect",
        "tls",
        "ttfb",
        "transfer",
        "session_start",
        "dom_content_loaded",
        "load",
        "fcp",
        "lcp",
        "handshake",
        "message",
    ];
    let i = known
        .iter()
        .position(|k| *k == p)
        .unwrap_or_else(|| p.bytes().map(|b| b as usize).sum::<usize>());
    svg::PHASES[i % svg::PHASES.len()]
}

/// The whole document around a view's content.
pub fn layout(
    page: &StatusPage,
    title: &str,
    journey: Option<&str>,
    tab: &str,
    content: &str,
) -> String {
    let nav = |href: &str, id: &str, label: &str| {
        format!(
            r#"<a href="{href}" class="{}">{label}</a>"#,
            if id == tab { "tab on" } else { "tab" }
        )
    };
    let data = journey
        .map(|j| format!(r#" data-journey="{}""#, esc(j)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Vantage {agent}</title><style>{CSS}</style></head>
<body{data}>
<header><div class="brand">Vantage <span>{agent} · {location}</span></div>
<nav>{overview}{marketing}</nav><div id="live" class="live" title="The page updates itself as runs finish">live updates connecting…</div></header>
<main id="content">{content}</main>
<footer>Read-only view of this agent's recent runs. Times are UTC. JSON: <a href="/ui/api/journeys">/ui/api/journeys</a> · metrics: <a href="/metrics">/metrics</a></footer>
<script src="/ui/app.js"></script>
</body></html>
"#,
        title = esc(title),
        agent = esc(&page.agent_id),
        location = esc(&page.location),
        overview = nav("/", "overview", "Journeys"),
        marketing = nav("/ui/marketing", "marketing", "Lead capture"),
    )
}

struct Summary {
    state: Option<super::history::State>,
    ratio: Option<f64>,
    p50: Option<f64>,
    p95: Option<f64>,
}

fn summary(h: &History) -> Summary {
    let p = h.percentiles(&[0.5, 0.95]);
    Summary {
        state: h.current_state(),
        ratio: h.success_ratio(),
        p50: p[0],
        p95: p[1],
    }
}

fn ratio_text(r: Option<f64>) -> String {
    match r {
        None => "–".into(),
        Some(r) if r >= 1.0 => "100%".into(),
        Some(r) if r <= 0.0 => "0%".into(),
        Some(r) => format!("{:.1}%", (r * 1000.0).floor() / 10.0),
    }
}

fn since_text(s: &super::history::State, now: SystemTime) -> String {
    let prefix = if s.complete {
        "since"
    } else {
        "at least since"
    };
    format!(
        "{prefix} {} ({} ago)",
        clock(s.since_ms, now),
        ago(s.since_ms, now)
    )
}

fn group_of<'a>(cfg_label: &str, t: &'a Tracked) -> Option<&'a str> {
    t.meta.labels.get(cfg_label).map(String::as_str)
}

fn run_title(e: &Entry, now: SystemTime) -> String {
    let mut t = format!(
        "{} · {} · {}",
        clock(e.at_ms, now),
        e.outcome.as_str(),
        fmt_ms(e.duration_ms)
    );
    if let Some(et) = e.error_type {
        let _ = write!(t, " · {}", et.as_str());
    }
    if let Some(s) = e.failed_step() {
        let _ = write!(t, " · step {s}");
    }
    t
}

/// The grid: journeys by recent runs, grouped.
pub fn overview(v: &View) -> String {
    let cfg = &v.page.cfg;
    let mut groups: BTreeMap<Option<&str>, Vec<(&String, &Tracked)>> = BTreeMap::new();
    for (name, t) in v.journeys {
        groups
            .entry(group_of(&cfg.group_by, t))
            .or_default()
            .push((name, t));
    }
    let failing = v
        .journeys
        .values()
        .filter(|t| {
            t.history
                .last()
                .is_some_and(|e| e.outcome == Outcome::Failure)
        })
        .count();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<section class="intro"><h1>Journeys</h1><p><b>{}</b> journeys, <b class="{}">{failing} failing</b> now. Keeps the last <b>{}</b> runs of each journey in memory (since the agent started); the grid shows the last {GRID_RUNS}, newest on the right.</p></section>"#,
        v.journeys.len(),
        if failing > 0 { "bad" } else { "good" },
        cfg.history
    );
    if v.journeys.is_empty() {
        s.push_str(r#"<p class="empty">No journeys are scheduled on this agent.</p>"#);
    }
    // Named groups first, the unlabelled ones last.
    let mut ordered: Vec<_> = groups.into_iter().collect();
    ordered.sort_by_key(|(g, _)| (g.is_none(), g.map(str::to_string)));
    for (group, rows) in ordered {
        let heading = match group {
            Some(g) => format!(
                r#"{} <span class="muted">{}</span>"#,
                esc(g),
                esc(&cfg.group_by)
            ),
            None if cfg.group_by.is_empty() => "All journeys".to_string(),
            None => format!(
                r#"<span class="muted">no {} label</span>"#,
                esc(&cfg.group_by)
            ),
        };
        let _ = write!(
            s,
            r#"<section class="group"><h2>{heading}</h2><table class="grid"><colgroup><col class="c-name"><col class="c-state"><col class="c-num"><col class="c-num"><col class="c-num"><col class="c-spark"><col></colgroup><thead><tr><th>Journey</th><th>State</th><th class="num">Success</th><th class="num">p50</th><th class="num">p95</th><th>Latency</th><th class="runs">Recent runs <span class="muted">(newest right)</span></th></tr></thead><tbody>"#
        );
        for (name, t) in rows {
            let h = &t.history;
            let sm = summary(h);
            let state = sm.state.map(|s| s.outcome);
            let since = sm.state.map(|s| since_text(&s, v.now)).unwrap_or_default();
            let mut recent: Vec<Entry> = h.runs().iter().rev().take(GRID_RUNS).collect();
            recent.reverse();
            let spark: Vec<(f32, bool)> = recent
                .iter()
                .map(|e| (e.duration_ms, e.outcome == Outcome::Failure))
                .collect();
            let _ = write!(
                s,
                r#"<tr class="journey" data-journey="{ename}" data-runs="{total}"><td class="name"><a href="{href}">{ename}</a><div class="sub">every {every} · {kept} of {cap} kept</div></td><td><span class="badge {cls}">{word}</span><div class="sub">{since}</div></td><td class="num">{ratio}</td><td class="num">{p50}</td><td class="num">{p95}</td><td>{spark}</td><td class="runs"><div class="cells">"#,
                ename = esc(name),
                total = h.total,
                href = esc(&journey_href(name)),
                every = esc(&humantime::format_duration(t.meta.interval).to_string()),
                kept = h.runs().len(),
                cap = h.cap(),
                cls = state.map(outcome_class).unwrap_or("none"),
                word = state_word(state),
                since = esc(&since),
                ratio = ratio_text(sm.ratio),
                p50 = sm
                    .p50
                    .map(|x| fmt_ms(x as f32))
                    .unwrap_or_else(|| "–".into()),
                p95 = sm
                    .p95
                    .map(|x| fmt_ms(x as f32))
                    .unwrap_or_else(|| "–".into()),
                spark = svg::sparkline(&spark, 120, 28),
            );
            for _ in recent.len()..GRID_RUNS {
                s.push_str(r#"<span class="cell none"></span>"#);
            }
            for e in &recent {
                let _ = write!(
                    s,
                    r##"<a class="cell {}" href="{}#run-{}" title="{}"></a>"##,
                    outcome_class(e.outcome),
                    esc(&journey_href(name)),
                    e.run_id_hex(),
                    esc(&run_title(e, v.now))
                );
            }
            s.push_str("</div></td></tr>");
        }
        s.push_str("</tbody></table></section>");
    }
    s
}

fn trace_html(page: &StatusPage, e: &Entry) -> String {
    let Some(id) = e.trace_id_hex() else {
        return "–".into();
    };
    match &page.cfg.trace_url {
        Some(tpl) => format!(
            r#"<a class="mono" href="{}" rel="noopener noreferrer" target="_blank">{id}</a>"#,
            esc(&tpl.replace("{trace_id}", &id))
        ),
        None => format!(r#"<span class="mono">{id}</span>"#),
    }
}

/// A journey's page: state, charts, failures in full, run history.
/// `shots`: the failed runs whose screenshot is still kept (looked up beforehand, outside the lock).
pub fn journey(v: &View, name: &str, shots: &HashSet<u128>) -> Option<String> {
    let t = v.journeys.get(name)?;
    let h = &t.history;
    let sm = summary(h);
    let mut s = String::new();
    let labels: String = t
        .meta
        .labels
        .iter()
        .map(|(k, val)| format!(r#"<span class="label">{}={}</span>"#, esc(k), esc(val)))
        .collect();
    let state = sm.state.map(|s| s.outcome);
    let _ = write!(
        s,
        r#"<section class="intro"><p class="crumbs"><a href="/">Journeys</a> ›</p><h1>{} <span class="badge {}">{}</span></h1><p class="sub">{}</p><p>{labels}</p>
<div class="facts"><div><b>{}</b><span>success over kept runs</span></div><div><b>{}</b><span>p50</span></div><div><b>{}</b><span>p95</span></div><div><b>{}</b><span>runs kept of {} (last {} per journey); {} since start</span></div><div><b>every {}</b><span>interval</span></div></div></section>"#,
        esc(name),
        state.map(outcome_class).unwrap_or("none"),
        state_word(state),
        esc(&sm.state.map(|s| since_text(&s, v.now)).unwrap_or_default()),
        ratio_text(sm.ratio),
        sm.p50
            .map(|x| fmt_ms(x as f32))
            .unwrap_or_else(|| "–".into()),
        sm.p95
            .map(|x| fmt_ms(x as f32))
            .unwrap_or_else(|| "–".into()),
        h.runs().len(),
        h.cap(),
        h.cap(),
        h.total,
        esc(&humantime::format_duration(t.meta.interval).to_string()),
    );
    if h.runs().is_empty() {
        s.push_str(r#"<p class="empty">No run has finished yet.</p>"#);
        return Some(s);
    }

    // Durations over time: the journey and each of its (latest) steps.
    let runs = h.runs();
    let latest = runs.back().expect("non-empty");
    let mut series = vec![(
        "journey".to_string(),
        "#1f2933",
        runs.iter().map(|e| Some(e.duration_ms)).collect::<Vec<_>>(),
    )];
    for (i, n) in latest.names.iter().enumerate().filter(|(_, n)| !n.cleanup) {
        let values = runs
            .iter()
            .map(|e| {
                e.names
                    .iter()
                    .position(|m| m.name == n.name)
                    .and_then(|k| e.steps.get(k))
                    .map(|x| x.ms)
            })
            .collect();
        series.push((
            format!("step {}", n.name),
            PALETTE[i % PALETTE.len()],
            values,
        ));
    }
    let legend: String = series
        .iter()
        .map(|(l, c, _)| {
            format!(
                r#"<span class="key"><i style="background:{c}"></i>{}</span>"#,
                esc(l)
            )
        })
        .collect();
    let _ = write!(
        s,
        r#"<section><h2>Durations over the kept runs</h2>{}<div class="legend">{legend}</div></section>"#,
        svg::duration_chart(
            &series,
            (
                &clock(runs.front().expect("non-empty").at_ms, v.now),
                &clock(latest.at_ms, v.now)
            ),
            960,
            240
        )
    );

    // Failed runs, newest first, with everything an on-call engineer asks for.
    let failures: Vec<Entry> = runs
        .iter()
        .rev()
        .filter(|e| e.detail.is_some())
        .take(FAILURES_SHOWN)
        .collect();
    let _ = write!(
        s,
        r#"<section><h2>Recent failures <span class="muted">({} shown of {} failed runs kept)</span></h2>"#,
        failures.len(),
        runs.iter()
            .filter(|e| e.outcome == Outcome::Failure)
            .count()
    );
    if failures.is_empty() {
        s.push_str(r#"<p class="empty">No failed run in the kept history.</p>"#);
    }
    let shown: Vec<u128> = failures.iter().map(|e| e.run_id).collect();
    for e in &failures {
        let d = e.detail.expect("filtered");
        let steps: Vec<svg::WaterfallStep> = d
            .steps
            .iter()
            .map(|st| svg::WaterfallStep {
                name: &st.name,
                offset_ms: st.offset_ms,
                duration_ms: st.duration_ms,
                failed: st.outcome == Outcome::Failure,
                phases: &st.phases,
            })
            .collect();
        let mut phases: Vec<&str> = d
            .steps
            .iter()
            .flat_map(|st| st.phases.iter().map(|p| p.0))
            .collect();
        phases.sort();
        phases.dedup();
        let legend: String = phases
            .iter()
            .map(|p| {
                format!(
                    r#"<span class="key"><i style="background:{}"></i>{}</span>"#,
                    phase_colour(p),
                    esc(p)
                )
            })
            .collect();
        let shot = shots.contains(&e.run_id).then(|| {
            format!(r#"<figure><a href="/ui/screenshot/{id}"><img src="/ui/screenshot/{id}" alt="screenshot of the browser when the step failed" loading="lazy"></a><figcaption>Browser at the failure</figcaption></figure>"#, id = e.run_id_hex())
        });
        let failed_step = e
            .failed_step()
            .map(|st| format!(" in step <b>{}</b>", esc(st)))
            .unwrap_or_default();
        let _ = write!(
            s,
            r#"<article class="failure" id="run-{id}"><h3><span class="badge failure">{et}</span> {when} <span class="muted">({ago} ago){failed_step} · {dur}</span></h3>
<pre class="message">{msg}</pre>{cleanup}
<p class="meta">run <span class="mono">{id}</span> · trace {trace}</p>
<div class="wf">{wf}<div class="legend">{legend}</div></div>{shot}</article>"#,
            id = e.run_id_hex(),
            et = esc(e.error_type.map(|x| x.as_str()).unwrap_or("failure")),
            when = clock(e.at_ms, v.now),
            ago = ago(e.at_ms, v.now),
            dur = fmt_ms(e.duration_ms),
            msg = esc(&d.message),
            cleanup = d
                .cleanup_error
                .as_deref()
                .map(|c| format!(r#"<p class="cleanup">cleanup: {}</p>"#, esc(c)))
                .unwrap_or_default(),
            trace = trace_html(v.page, e),
            wf = svg::waterfall(&steps, &phase_colour, 960),
            shot = shot.unwrap_or_default(),
        );
    }
    s.push_str("</section>");

    // Every kept run, newest first.
    let _ = write!(
        s,
        r#"<section><h2>Run history <span class="muted">(newest first, {} kept)</span></h2><table class="history"><thead><tr><th>Time (UTC)</th><th>Outcome</th><th class="num">Duration</th><th>Error type</th><th>Failed step</th><th>Run</th><th>Trace</th></tr></thead><tbody>"#,
        runs.len()
    );
    for e in runs.iter().rev() {
        let _ = write!(
            s,
            r#"<tr id="{anchor}"><td>{when}</td><td><span class="dot {cls}"></span>{outcome}</td><td class="num">{dur}</td><td>{et}</td><td>{step}</td><td class="mono">{run}</td><td>{trace}</td></tr>"#,
            anchor = if shown.contains(&e.run_id) {
                format!("row-{}", e.run_id_hex())
            } else {
                format!("run-{}", e.run_id_hex())
            },
            when = clock(e.at_ms, v.now),
            cls = outcome_class(e.outcome),
            outcome = e.outcome.as_str(),
            dur = fmt_ms(e.duration_ms),
            et = esc(e.error_type.map(|x| x.as_str()).unwrap_or("")),
            step = esc(e.failed_step().unwrap_or("")),
            run = &e.run_id_hex()[..12],
            trace = trace_html(v.page, &e),
        );
    }
    s.push_str("</tbody></table></section>");
    Some(s)
}

/// One run of a lead-capture journey in plain words, and whether it went well.
/// The configured waits of a journey's delivery steps (`None`: not known).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Waits {
    pub arrived: Option<Duration>,
    pub webhook: Option<Duration>,
}

pub fn lead_words(e: &Entry, roles: &[Delivery], waits: &Waits) -> (bool, String) {
    // "Within" names the wait the journey's author set; the time spent only when it is unknown.
    let within = |w: Option<Duration>, ms: f32| secs(w.map_or(ms, |w| w.as_secs_f32() * 1000.0));
    let arrived = e.delivery(Delivery::Arrived);
    let webhook = e.delivery(Delivery::Webhook);
    let mut parts = Vec::new();
    let stopped = || {
        e.failed_step()
            .map(|s| format!(" (step `{s}` failed first)"))
            .unwrap_or_default()
    };
    if roles.contains(&Delivery::Arrived) {
        parts.push(match arrived {
            Some(s) if s.outcome != Outcome::Failure => {
                format!("the lead reached the CRM after {}", secs(s.ms))
            }
            Some(s) => format!("the lead did not reach the CRM within {}", within(waits.arrived, s.ms)),
            None => format!("the lead was not checked in the CRM{}", stopped()),
        });
    }
    if roles.contains(&Delivery::Webhook) {
        parts.push(match webhook {
            Some(s) if s.outcome != Outcome::Failure => {
                format!("the webhook arrived after {}", secs(s.ms))
            }
            Some(s) => format!("the webhook did not arrive within {}", within(waits.webhook, s.ms)),
            None if arrived.is_some_and(|a| a.outcome == Outcome::Failure) => {
                "the webhook was not awaited".to_string()
            }
            None => format!("the webhook was not awaited{}", stopped()),
        });
    }
    if parts.is_empty() {
        parts.push(match e.outcome {
            Outcome::Failure => format!(
                "the journey failed{}",
                e.failed_step()
                    .map(|s| format!(" at step `{s}`"))
                    .unwrap_or_default()
            ),
            _ => format!("the journey passed in {}", secs(e.duration_ms)),
        });
    }
    let mut text = parts.join(", and ");
    if let Some(first) = text.get(..1) {
        text = first.to_uppercase() + &text[1..];
    }
    text.push('.');
    (e.outcome != Outcome::Failure, text)
}

/// The marketing view: lead-capture style journeys in plain words.
pub fn marketing(v: &View) -> String {
    let mut s = String::from(
        r#"<section class="intro"><h1>Lead capture</h1><p>Each run submits a test lead the way a visitor would and checks that it reached the CRM and that the CRM's webhook came back. Times are measured from the moment the form was sent.</p></section>"#,
    );
    let shown: Vec<_> = v
        .journeys
        .iter()
        .filter(|(_, t)| t.meta.marketing)
        .collect();
    if shown.is_empty() {
        let _ = write!(
            s,
            r#"<p class="empty">No lead-capture journey on this agent: journeys with <code>eventually</code> or <code>callback</code> steps appear here, and those labelled <code>{}</code>.</p>"#,
            esc(&v.page.cfg.marketing_label)
        );
    }
    for (name, t) in shown {
        let runs = t.history.runs();
        let n = runs.len();
        let reached: Vec<f32> = runs
            .iter()
            .filter_map(|e| e.delivery(Delivery::Arrived))
            .filter(|s| s.outcome != Outcome::Failure)
            .map(|s| s.ms)
            .collect();
        let hooks = runs
            .iter()
            .filter_map(|e| e.delivery(Delivery::Webhook))
            .filter(|s| s.outcome != Outcome::Failure)
            .count();
        let mut sorted: Vec<f64> = reached.iter().map(|x| *x as f64).collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let mut headline = String::new();
        if n == 0 {
            headline.push_str("No run has finished yet.");
        } else {
            let since = clock(runs.front().expect("non-empty").at_ms, v.now);
            if t.meta.roles.contains(&Delivery::Arrived) {
                let median = super::history::percentile(&sorted, 0.5)
                    .map(|m| format!(", usually after {}", secs(m as f32)))
                    .unwrap_or_default();
                let _ = write!(
                    headline,
                    "Since {since}: the lead reached the CRM in <b>{} of {n}</b> runs{median}.",
                    reached.len()
                );
            } else {
                let good = runs
                    .iter()
                    .filter(|e| e.outcome != Outcome::Failure)
                    .count();
                let _ = write!(headline, "Since {since}: <b>{good} of {n}</b> runs passed.");
            }
            if t.meta.roles.contains(&Delivery::Webhook) {
                let _ = write!(headline, " The webhook arrived in <b>{hooks} of {n}</b>.");
            }
        }
        let last_ok = runs.back().map(|e| e.outcome != Outcome::Failure);
        let _ = write!(
            s,
            r#"<section class="lead" data-journey="{ename}"><h2><a href="{href}">{ename}</a> <span class="badge {cls}">{word}</span></h2><p class="headline">{headline}</p><table class="history"><thead><tr><th>Time (UTC)</th><th>Result</th><th>What happened</th></tr></thead><tbody>"#,
            ename = esc(name),
            href = esc(&journey_href(name)),
            cls = match last_ok {
                Some(true) => "success",
                Some(false) => "failure",
                None => "none",
            },
            word = match last_ok {
                Some(true) => "working",
                Some(false) => "broken",
                None => "waiting",
            },
        );
        for e in runs.iter().rev().take(MARKETING_RUNS) {
            let (ok, words) = lead_words(&e, &t.meta.roles, &t.meta.waits);
            let _ = write!(
                s,
                r##"<tr><td><a href="{}#run-{}">{}</a></td><td><span class="dot {}"></span>{}</td><td class="words">{}</td></tr>"##,
                esc(&journey_href(name)),
                e.run_id_hex(),
                clock(e.at_ms, v.now),
                if ok { "success" } else { "failure" },
                if ok { "delivered" } else { "not delivered" },
                esc(&words)
            );
        }
        s.push_str("</tbody></table></section>");
    }
    s
}

fn journey_json(v: &View, name: &str, t: &Tracked) -> Value {
    let sm = summary(&t.history);
    json!({
        "name": name,
        "labels": t.meta.labels,
        "group": group_of(&v.page.cfg.group_by, t),
        "state": sm.state.map(|s| s.outcome.as_str()),
        "since": sm.state.map(|s| humantime::format_rfc3339_millis(at(s.since_ms)).to_string()),
        "success_ratio": sm.ratio,
        "p50_ms": sm.p50,
        "p95_ms": sm.p95,
        "kept": t.history.runs().len(),
        "keeps": t.history.cap(),
        "runs_since_start": t.history.total,
        "lead_capture": t.meta.marketing,
    })
}

pub fn api_journeys(v: &View) -> Value {
    json!({ "journeys": v.journeys.iter().map(|(n, t)| journey_json(v, n, t)).collect::<Vec<_>>() })
}

pub fn api_journey(v: &View, name: &str) -> Option<Value> {
    let t = v.journeys.get(name)?;
    let mut out = journey_json(v, name, t);
    let runs: Vec<Value> = t
        .history
        .runs()
        .iter()
        .map(|e| {
            let mut r = json!({
                "at": humantime::format_rfc3339_millis(at(e.at_ms)).to_string(),
                "run_id": e.run_id_hex(),
                "trace_id": e.trace_id_hex(),
                "outcome": e.outcome.as_str(),
                "duration_ms": e.duration_ms,
                "error_type": e.error_type.map(|x| x.as_str()),
                "steps": e.names.iter().zip(e.steps.iter()).map(|(n, s)| json!({"name": n.name, "outcome": s.outcome.as_str(), "duration_ms": s.ms})).collect::<Vec<_>>(),
            });
            if let Some(d) = &e.detail {
                r["message"] = json!(d.message);
                r["cleanup_error"] = json!(d.cleanup_error);
                r["failed_step"] = json!(e.failed_step());
            }
            if t.meta.marketing {
                r["lead"] = json!(lead_words(&e, &t.meta.roles, &t.meta.waits).1);
            }
            r
        })
        .collect();
    out["runs"] = Value::Array(runs);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::history::tests::run;
    use super::super::history::History;
    use super::*;

    #[test]
    fn escaping_covers_every_html_special_character() {
        assert_eq!(
            esc(r#"<img src=x onerror="alert('1')">&amp;"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;amp;"
        );
        assert_eq!(esc("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(qv("lead capture/&x=1"), "lead+capture%2F%26x%3D1");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_ms(12.4), "12 ms");
        assert_eq!(fmt_ms(1234.0), "1.23 s");
        assert_eq!(secs(800.0), "0.8 s");
        assert_eq!(secs(42.0), "0.04 s");
        assert_eq!(secs(12_300.0), "12 s");
        assert_eq!(ratio_text(Some(0.9999)), "99.9%");
        assert_eq!(ratio_text(Some(1.0)), "100%");
    }

    #[test]
    fn lead_runs_are_told_in_plain_words() {
        let mut h = History::new(5);
        let mut r = run(1, Outcome::Success, 1600);
        r.steps.push(crate::vocab::StepResult {
            name: "webhook".into(),
            kind: "callback",
            ..r.steps[0].clone()
        });
        h.push(&r);
        let roles = [Delivery::Arrived, Delivery::Webhook];
        let (ok, text) = lead_words(&h.last().unwrap(), &roles, &Waits::default());
        assert!(ok);
        assert_eq!(
            text,
            "The lead reached the CRM after 0.8 s, and the webhook arrived after 0.8 s."
        );
        let mut r = run(2, Outcome::Failure, 1000);
        r.steps[0].outcome = Outcome::Failure;
        r.steps.truncate(1);
        h.push(&r);
        let (ok, text) = lead_words(&h.last().unwrap(), &roles, &Waits::default());
        assert!(!ok);
        assert_eq!(
            text,
            "The lead did not reach the CRM within 0.5 s, and the webhook was not awaited."
        );
        // With the journey's configured wait known, the words name it, not the time spent.
        let waits = Waits { arrived: Some(Duration::from_secs(20)), webhook: Some(Duration::from_secs(10)) };
        let (_, text) = lead_words(&h.last().unwrap(), &roles, &waits);
        assert_eq!(
            text,
            "The lead did not reach the CRM within 20 s, and the webhook was not awaited."
        );
    }

    #[test]
    fn clock_shows_the_date_only_for_other_days() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = 1_800_000_000_000 - 5_000;
        assert_eq!(clock(ms, now), "07:59:55");
        assert_eq!(clock(ms - 86_400_000, now), "01-14 07:59");
        assert_eq!(ago(ms, now), "5 s");
    }
}
