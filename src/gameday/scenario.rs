//! The game-day scenario file: which agents to watch, where the alerts live,
//! and the faults to inject. Parsed strictly (unknown keys are errors), then
//! validated with every problem reported as `file:line:column`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::config::{Diagnostic, Dur};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub agents: Vec<Spanned<AgentSpec>>,
    pub prometheus: Option<Spanned<AlertSourceSpec>>,
    pub alertmanager: Option<Spanned<AlertSourceSpec>>,
    /// The alert/journey label that names the owning team.
    #[serde(default = "default_team_label")]
    pub team_label: String,
    /// The whole game day, at most; then it heals and stops.
    pub timeout: Option<Dur>,
    pub faults: Vec<Spanned<FaultSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Shown in the report; default: the URL's `host:port`.
    pub name: Option<String>,
    /// The agent's admin endpoint, e.g. `http://127.0.0.1:9464`.
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSourceSpec {
    pub url: String,
    /// Only alerts carrying all these labels count (e.g. `alertname: JourneyFailing`).
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub name: String,
    pub inject: Spanned<ActionSpec>,
    pub hold: Dur,
    pub heal: Spanned<ActionSpec>,
    pub expect: ExpectSpec,
    /// Before injecting, wait at most this long for the expected journeys to pass everywhere
    /// and for alerts in scope (pending or firing) to clear.
    pub settle: Option<Dur>,
    /// After healing, wait at most this long for success and resolved alerts.
    pub recover_within: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    pub journeys: Vec<Spanned<String>>,
    pub team: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub http: Option<HttpActionSpec>,
    /// A program and its arguments (no shell unless you name one).
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpActionSpec {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub json: Option<serde_json::Value>,
}

fn default_team_label() -> String {
    "team".into()
}
fn default_method() -> String {
    "POST".into()
}

/// Where something was written, for messages; `None` for built-in scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    fn of(l: Location) -> Pos {
        Pos {
            line: l.line().max(1),
            column: l.column().max(1),
        }
    }
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: PathBuf,
    pub name: String,
    pub agents: Vec<Agent>,
    pub prometheus: Option<AlertSource>,
    pub alertmanager: Option<AlertSource>,
    pub team_label: String,
    pub timeout: Duration,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    /// Without a trailing slash.
    pub url: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct AlertSource {
    pub url: String,
    pub match_labels: BTreeMap<String, String>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub name: String,
    pub inject: Action,
    pub hold: Duration,
    pub heal: Action,
    pub journeys: Vec<(String, Pos)>,
    pub team: Option<(String, Pos)>,
    pub settle: Duration,
    pub recover_within: Duration,
}

#[derive(Debug, Clone)]
pub enum Action {
    Http {
        method: reqwest::Method,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<(String, &'static str)>,
    },
    Command(Vec<String>),
}

impl Action {
    /// One line for progress and reports (never the body or headers: they may hold tokens).
    pub fn describe(&self) -> String {
        match self {
            Action::Http { method, url, .. } => format!("{method} {url}"),
            Action::Command(argv) => argv.join(" "),
        }
    }
}

const DEFAULT_SETTLE: Duration = Duration::from_secs(60);
const DEFAULT_RECOVER: Duration = Duration::from_secs(120);

impl Scenario {
    pub fn diag(&self, pos: Pos, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message,
        }
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.into(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse(path, &text)
}

/// Parses and validates scenario text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    let mut spec: ScenarioSpec = serde_saphyr::from_str(text)
        .map_err(|e| vec![crate::config::validate::parse_error(path, &e)])?;
    let mut diags = Vec::new();
    expand_env(&mut spec, &mut diags, path);
    if !diags.is_empty() {
        // Unexpanded URLs would only repeat the same problem.
        return Err(diags);
    }
    let mut err = |pos: Pos, m: String| {
        diags.push(Diagnostic {
            file: path.into(),
            line: pos.line,
            column: pos.column,
            message: m,
        })
    };
    let top = Pos { line: 1, column: 1 };
    if spec.agents.is_empty() {
        err(
            top,
            "`agents`: expected at least one agent admin URL".into(),
        );
    }
    if spec.faults.is_empty() {
        err(top, "`faults`: expected at least one fault".into());
    }
    let mut agents = Vec::new();
    for a in &spec.agents {
        let pos = Pos::of(a.referenced);
        match check_url(&a.value.url) {
            Ok(u) => {
                let name = a.value.name.clone().unwrap_or_else(|| {
                    format!(
                        "{}:{}",
                        u.host_str().unwrap_or(""),
                        u.port_or_known_default().unwrap_or(0)
                    )
                });
                if agents.iter().any(|x: &Agent| x.name == name) {
                    err(
                        pos,
                        format!("agent `{name}`: named twice; give each agent a distinct `name`"),
                    );
                }
                agents.push(Agent {
                    name,
                    url: a.value.url.trim_end_matches('/').to_string(),
                    pos,
                });
            }
            Err(m) => err(pos, format!("agent `url`: {m}")),
        }
    }
    let mut source = |s: &Option<Spanned<AlertSourceSpec>>, what: &str| -> Option<AlertSource> {
        let s = s.as_ref()?;
        let pos = Pos::of(s.referenced);
        if let Err(m) = check_url(&s.value.url) {
            err(pos, format!("`{what}.url`: {m}"));
        }
        Some(AlertSource {
            url: s.value.url.trim_end_matches('/').to_string(),
            match_labels: s.value.match_labels.clone(),
            pos,
        })
    };
    let prometheus = source(&spec.prometheus, "prometheus");
    let alertmanager = source(&spec.alertmanager, "alertmanager");
    let mut faults = Vec::new();
    let mut total = Duration::ZERO;
    for f in &spec.faults {
        let pos = Pos::of(f.referenced);
        let fs = &f.value;
        let ctx = format!("fault `{}`", fs.name);
        if fs.name.trim().is_empty() {
            err(pos, "fault `name`: expected a non-empty name".into());
        }
        if faults.iter().any(|x: &Fault| x.name == fs.name) {
            err(pos, format!("{ctx}: named twice"));
        }
        if fs.hold.0 < Duration::from_secs(1) {
            err(
                pos,
                format!(
                    "{ctx}: `hold`: expected at least 1s, got {}",
                    humantime::format_duration(fs.hold.0)
                ),
            );
        }
        let inject = action(&fs.inject, &format!("{ctx}: `inject`"), &mut err);
        let heal = action(&fs.heal, &format!("{ctx}: `heal`"), &mut err);
        if fs.expect.journeys.is_empty() {
            err(pos, format!("{ctx}: `expect.journeys`: expected at least one journey that this fault should make fail"));
        }
        if fs.expect.team.is_some() && alertmanager.is_none() && prometheus.is_none() {
            err(
                pos,
                format!(
                    "{ctx}: `expect.team` needs `prometheus` or `alertmanager` to see the page"
                ),
            );
        }
        let fault = Fault {
            name: fs.name.clone(),
            inject: inject.unwrap_or(Action::Command(vec![])),
            hold: fs.hold.0,
            heal: heal.unwrap_or(Action::Command(vec![])),
            journeys: fs
                .expect
                .journeys
                .iter()
                .map(|j| (j.value.clone(), Pos::of(j.referenced)))
                .collect(),
            team: fs
                .expect
                .team
                .as_ref()
                .map(|t| (t.value.clone(), Pos::of(t.referenced))),
            settle: fs.settle.map(|d| d.0).unwrap_or(DEFAULT_SETTLE),
            recover_within: fs.recover_within.map(|d| d.0).unwrap_or(DEFAULT_RECOVER),
        };
        total += fault.settle + fault.hold + fault.recover_within;
        faults.push(fault);
    }
    // Default: every fault's worst case, plus a minute for connecting and healing.
    let timeout = spec
        .timeout
        .map(|d| d.0)
        .unwrap_or(total + Duration::from_secs(60));
    if diags.is_empty() {
        Ok(Scenario {
            file: path.into(),
            name: spec.name.unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            agents,
            prometheus,
            alertmanager,
            team_label: spec.team_label,
            timeout,
            faults,
        })
    } else {
        Err(diags)
    }
}

/// `${env.NAME}` in URLs, headers and bodies, so one scenario fits many setups.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${env.") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{env.` in `{text}`"))?;
        let name = &after[..end];
        let v = std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_env(spec: &mut ScenarioSpec, diags: &mut Vec<Diagnostic>, path: &Path) {
    let mut fix = |v: &mut String, at: Location| match expand(v) {
        Ok(x) => *v = x,
        Err(m) => diags.push(Diagnostic { file: path.into(), line: at.line().max(1), column: at.column().max(1), message: m }),
    };
    for a in &mut spec.agents {
        fix(&mut a.value.url, a.referenced);
    }
    for s in [&mut spec.prometheus, &mut spec.alertmanager].into_iter().flatten() {
        fix(&mut s.value.url, s.referenced);
    }
    for f in &mut spec.faults {
        for a in [&mut f.value.inject, &mut f.value.heal] {
            let at = a.referenced;
            if let Some(h) = &mut a.value.http {
                fix(&mut h.url, at);
                for v in h.headers.values_mut() {
                    fix(v, at);
                }
                if let Some(b) = &mut h.body {
                    fix(b, at);
                }
            }
            if let Some(argv) = &mut a.value.command {
                for v in argv {
                    fix(v, at);
                }
            }
        }
    }
}

fn check_url(u: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(u)
        .map_err(|e| format!("expected an http:// or https:// URL, got `{u}` ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("expected an http:// or https:// URL, got `{u}`"));
    }
    Ok(parsed)
}

fn action(s: &Spanned<ActionSpec>, ctx: &str, err: &mut impl FnMut(Pos, String)) -> Option<Action> {
    let pos = Pos::of(s.referenced);
    match (&s.value.http, &s.value.command) {
        (Some(h), None) => {
            let method = match reqwest::Method::from_bytes(
                h.method.trim().to_ascii_uppercase().as_bytes(),
            ) {
                Ok(m) => m,
                Err(_) => {
                    err(
                        pos,
                        format!(
                            "{ctx}: `http.method`: expected an HTTP method like POST, got `{}`",
                            h.method
                        ),
                    );
                    return None;
                }
            };
            if let Err(m) = check_url(&h.url) {
                err(pos, format!("{ctx}: `http.url`: {m}"));
                return None;
            }
            let body = match (&h.body, &h.json) {
                (Some(_), Some(_)) => {
                    err(
                        pos,
                        format!("{ctx}: give either `http.body` or `http.json`, not both"),
                    );
                    return None;
                }
                (Some(b), None) => Some((b.clone(), "text/plain; charset=utf-8")),
                (None, Some(j)) => Some((j.to_string(), "application/json")),
                (None, None) => None,
            };
            Some(Action::Http {
                method,
                url: h.url.clone(),
                headers: h
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                body,
            })
        }
        (None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => {
            Some(Action::Command(argv.clone()))
        }
        (None, Some(_)) => {
            err(pos, format!("{ctx}: `command`: expected a program and its arguments, e.g. [systemctl, stop, crm-worker]"));
            None
        }
        _ => {
            err(
                pos,
                format!("{ctx}: expected exactly one of `http` or `command`"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: crm day
agents:
  - {name: eu, url: "http://127.0.0.1:9464/"}
alertmanager:
  url: http://127.0.0.1:9093
  match_labels: {severity: page}
faults:
  - name: CRM stall
    inject:
      http: {url: "http://127.0.0.1:8080/admin/faults/crm", json: {mode: stall}}
    hold: 30s
    heal:
      command: [curl, -X, DELETE, "http://127.0.0.1:8080/admin/faults"]
    expect:
      journeys: [lead-capture]
      team: marketing
"#;

    #[test]
    fn env_references_are_expanded_and_missing_ones_reported() {
        std::env::set_var("VANTAGE_GAMEDAY_TEST_URL", "http://127.0.0.1:7");
        assert_eq!(expand("${env.VANTAGE_GAMEDAY_TEST_URL}/admin").unwrap(), "http://127.0.0.1:7/admin");
        let y = GOOD.replace("http://127.0.0.1:9464/", "${env.VANTAGE_GAMEDAY_TEST_URL}").replace("http://127.0.0.1:9093", "${env.VANTAGE_GAMEDAY_UNSET}");
        let d = parse(Path::new("s.yaml"), &y).unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "s.yaml:6:3: environment variable `VANTAGE_GAMEDAY_UNSET` is not set");
        std::env::set_var("VANTAGE_GAMEDAY_UNSET", "http://127.0.0.1:9093");
        assert_eq!(parse(Path::new("s.yaml"), &y).unwrap().agents[0].url, "http://127.0.0.1:7");
    }

    #[test]
    fn the_shipped_demo_scenario_is_valid() {
        let text = include_str!("../../packaging/examples/gameday-demo.yaml");
        let s = parse(Path::new("packaging/examples/gameday-demo.yaml"), text).unwrap_or_else(|d| panic!("{}", d[0]));
        assert_eq!(s.faults.len(), 3);
        assert!(s.prometheus.is_some() && s.alertmanager.is_some());
        assert_eq!(s.faults[2].inject.describe().split(' ').next(), Some("curl"));
    }

    #[test]
    fn a_good_scenario_parses() {
        let s = parse(Path::new("s.yaml"), GOOD).unwrap();
        assert_eq!(s.name, "crm day");
        assert_eq!(s.agents[0].url, "http://127.0.0.1:9464");
        assert_eq!(s.agents[0].name, "eu");
        let f = &s.faults[0];
        assert_eq!(f.hold, Duration::from_secs(30));
        assert_eq!(f.journeys[0].0, "lead-capture");
        assert_eq!(
            f.journeys[0].1,
            Pos {
                line: 16,
                column: 18
            }
        );
        assert_eq!(f.team.as_ref().unwrap().0, "marketing");
        match &f.inject {
            Action::Http { method, body, .. } => {
                assert_eq!(method, reqwest::Method::POST);
                assert_eq!(
                    body.as_ref().unwrap(),
                    &("{\"mode\":\"stall\"}".to_string(), "application/json")
                );
            }
            other => panic!("expected http, got {other:?}"),
        }
        assert_eq!(
            f.heal.describe(),
            "curl -X DELETE http://127.0.0.1:8080/admin/faults"
        );
        assert_eq!(
            s.timeout,
            DEFAULT_SETTLE + Duration::from_secs(30) + DEFAULT_RECOVER + Duration::from_secs(60)
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let bad = GOOD.replace("    hold: 30s", "    hold: 30s\n    hodl: 1s");
        let d = parse(Path::new("s.yaml"), &bad).unwrap_err();
        assert_eq!(d.len(), 1);
        let text = d[0].to_string();
        assert!(text.starts_with("s.yaml:13:"), "{text}");
        assert!(text.contains("hodl"), "{text}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_location() {
        let bad = r#"
agents:
  - url: "ftp://x"
faults:
  - name: f
    inject: {http: {method: "B AD", url: "http://x/"}}
    hold: 0s
    heal: {command: []}
    expect: {journeys: [], team: t}
"#;
        let d = parse(Path::new("b.yaml"), bad).unwrap_err();
        let all: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(all.len(), 6, "{all:#?}");
        assert!(
            all[0].starts_with("b.yaml:3:5: agent `url`: expected an http"),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("`hold`: expected at least 1s")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|m| m.starts_with("b.yaml:6:13: fault `f`: `inject`: `http.method`")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("`heal`: `command`: expected a program")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("`expect.journeys`: expected at least one")),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("`expect.team` needs `prometheus` or `alertmanager`")),
            "{all:#?}"
        );
    }
}
