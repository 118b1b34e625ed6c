//! Turns parsed probe files into runnable journeys, reporting every problem
//! at once, each with `file:line:column` and what was expected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_saphyr::{Location, Spanned};

use crate::config::model::{JourneySpec, ProbeFile, StepSpec};
use crate::config::template::{JsonTemplate, Template, VarRef};
use crate::steps::assertions::{Assertions, JsonSelector};
use crate::steps::extract::Extraction;
use crate::steps::{browser, callback, dns, eventually, http, tcp, tls, websocket, StepKind};

/// One problem found in a config or probe file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not about a position in the file (e.g. it cannot be read).
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

/// A runnable journey.
#[derive(Debug)]
pub struct Journey {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub labels: BTreeMap<String, String>,
    pub buckets: Option<Vec<f64>>,
    pub locations: Option<Vec<String>>,
    pub vars: Vec<(String, Template)>,
    pub steps: Vec<Step>,
    pub finally: Vec<Step>,
    /// `file:line:column` of the journey, for messages.
    pub source: String,
    /// Changes whenever the journey's definition changes (hot reload).
    pub fingerprint: u64,
}

/// A runnable step: its kind plus the shared assertions and extractions.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub timeout: Option<Duration>,
    pub kind: Box<dyn StepKind>,
    pub assertions: std::sync::Arc<Assertions>,
    pub extract: Vec<Extraction>,
}

const RESERVED_LABELS: &[&str] = &["journey.name", "synthetics.location", "outcome", "error.type", "step.name", "step.kind", "phase"];
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Collects diagnostics while compiling one file; knows where it is.
pub struct Checker<'a> {
    file: &'a Path,
    diags: &'a mut Vec<Diagnostic>,
    here: Location,
    context: String,
    defined: HashSet<String>,
    /// The journey's run timeout, for steps that wait (None in `finally`).
    pub run_timeout: Option<Duration>,
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path, diags: &'a mut Vec<Diagnostic>) -> Self {
        Checker { file, diags, here: Location::UNKNOWN, context: String::new(), defined: HashSet::new(), run_timeout: None }
    }

    fn push(&mut self, at: Location, message: String) {
        self.diags.push(Diagnostic { file: self.file.to_path_buf(), line: at.line().max(1), column: at.column().max(1), message });
    }

    /// Records a problem with `field` of the item being checked.
    pub fn error(&mut self, field: &str, message: &str) {
        let msg = if field.is_empty() {
            format!("{}: {message}", self.context)
        } else {
            format!("{}: `{field}`: {message}", self.context)
        };
        self.push(self.here, msg);
    }

    /// Parses a template and checks every variable it uses is defined by then.
    pub fn template(&mut self, field: &str, text: &str) -> Template {
        match Template::parse(text) {
            Ok(t) => {
                for r in t.refs() {
                    if let VarRef::Var(name) = r {
                        if !self.defined.contains(name) {
                            let mut known: Vec<_> = self.defined.iter().cloned().collect();
                            known.sort();
                            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                            self.error(
                                field,
                                &format!("unknown variable `${{{name}}}`: expected one defined by `vars` or an earlier step's `extract` (defined here: {known}; built-ins: run.id, uuid, now, now.unix, env.NAME, secret.NAME)"),
                            );
                        }
                    }
                }
                t
            }
            Err(e) => {
                self.error(field, &e.to_string());
                Template::default()
            }
        }
    }

    /// A JSON value whose keys and string leaves are templates.
    pub fn json_template(&mut self, field: &str, v: &serde_json::Value) -> JsonTemplate {
        JsonTemplate::build(v, &mut |s| self.template(field, s))
    }

    pub fn regex(&mut self, field: &str, text: &str) -> Option<Regex> {
        Regex::new(text).map_err(|e| self.error(field, &format!("invalid regex: {e}"))).ok()
    }

    pub fn json_path(&mut self, field: &str, text: &str) -> Option<JsonSelector> {
        JsonSelector::parse(text).map_err(|e| self.error(field, &format!("invalid JSON path: {e}"))).ok()
    }

    /// A wait longer than the run may last is a mistake: the run would be cut off first.
    pub fn check_wait(&mut self, field: &str, wait: Duration) {
        if let Some(t) = self.run_timeout {
            if wait > t {
                self.error(field, &format!("{} is longer than the journey timeout ({}): the run would be cut off first", humantime::format_duration(wait), humantime::format_duration(t)));
            }
        }
    }

    pub fn define(&mut self, name: &str) {
        self.defined.insert(name.to_string());
    }
}

/// Loads and compiles every journey in `files`. Returns all problems found.
pub fn compile_files(files: &[(PathBuf, String)]) -> Result<Vec<Journey>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut journeys = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (path, text) in files {
        let parsed: ProbeFile = match serde_saphyr::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                diags.push(parse_error(path, &e));
                continue;
            }
        };
        for spec in &parsed.journeys {
            let mut c = Checker::new(path, &mut diags);
            let j = compile_journey(&mut c, spec);
            if let Some(first) = seen.get(&j.name) {
                c.here = spec.referenced;
                c.context = format!("journey `{}`", j.name);
                c.error("name", &format!("duplicate journey name, first defined at {first}: names must be unique across all probe files"));
            } else {
                seen.insert(j.name.clone(), j.source.clone());
            }
            journeys.push(j);
        }
    }
    if diags.is_empty() {
        Ok(journeys)
    } else {
        Err(diags)
    }
}

/// A serde/YAML error as a diagnostic, location split out of the message.
pub fn parse_error(path: &Path, e: &serde_saphyr::Error) -> Diagnostic {
    let loc = e.location().unwrap_or(Location::UNKNOWN);
    let text = e.without_snippet().render();
    let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    Diagnostic { file: path.to_path_buf(), line: loc.line().max(1), column: loc.column().max(1), message }
}

fn fingerprint(spec: &JourneySpec) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{spec:?}").hash(&mut h);
    h.finish()
}

fn compile_journey(c: &mut Checker, spanned: &Spanned<JourneySpec>) -> Journey {
    let spec = &spanned.value;
    c.here = spanned.referenced;
    c.context = format!("journey `{}`", spec.name);
    if spec.name.trim().is_empty() {
        c.error("name", "expected a non-empty journey name");
    }
    let interval = spec.interval.0;
    if interval < MIN_INTERVAL {
        c.error("interval", &format!("expected at least 1s, got {}", humantime::format_duration(interval)));
    }
    let timeout = spec.timeout.map(|t| t.0).unwrap_or_else(|| interval.min(MAX_DEFAULT_TIMEOUT));
    if timeout > interval {
        c.error("timeout", "must not exceed `interval`: a journey never overlaps itself, so a longer timeout only skips runs");
    }
    if timeout.is_zero() {
        c.error("timeout", "expected a positive duration");
    }
    let label_key = Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_.]*$").expect("static regex");
    for k in spec.labels.keys() {
        if !label_key.is_match(k) {
            c.error(&format!("labels.{k}"), "expected a label name of letters, digits, `_` and `.`, starting with a letter or `_`");
        } else if RESERVED_LABELS.contains(&k.as_str()) {
            c.error(&format!("labels.{k}"), "this name is set by the agent itself; choose another label name");
        }
    }
    if let Some(b) = &spec.buckets {
        if b.is_empty() || b.iter().any(|x| !x.is_finite() || *x <= 0.0) || b.windows(2).any(|w| w[0] >= w[1]) {
            c.error("buckets", "expected a non-empty, strictly increasing list of positive seconds, e.g. [0.1, 0.5, 1, 2.5]");
        }
    }
    let mut vars = Vec::new();
    for (k, v) in &spec.vars {
        let t = c.template(&format!("vars.{k}"), v);
        c.define(k);
        vars.push((k.clone(), t));
    }
    if spec.steps.is_empty() {
        c.error("steps", "expected at least one step");
    }
    c.run_timeout = Some(timeout);
    let steps = compile_steps(c, &spec.name, &spec.steps);
    c.run_timeout = None;
    let finally = compile_steps(c, &spec.name, &spec.finally);
    Journey {
        name: spec.name.clone(),
        interval,
        timeout,
        labels: spec.labels.clone(),
        buckets: spec.buckets.clone(),
        locations: spec.locations.clone(),
        vars,
        steps,
        finally,
        source: format!("{}:{}:{}", c.file.display(), spanned.referenced.line(), spanned.referenced.column()),
        fingerprint: fingerprint(spec),
    }
}

fn compile_steps(c: &mut Checker, journey: &str, specs: &[Spanned<StepSpec>]) -> Vec<Step> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for s in specs {
        c.here = s.referenced;
        c.context = format!("journey `{journey}`, step `{}`", s.value.name);
        if !names.insert(s.value.name.clone()) {
            c.error("name", "duplicate step name in this journey: step names label metrics, so they must be unique");
        }
        if let Some(step) = compile_step(c, journey, s) {
            out.push(step);
        }
    }
    out
}

/// Compiles one step (also used for the inner step of `eventually`).
pub fn compile_step(c: &mut Checker, journey: &str, s: &Spanned<StepSpec>) -> Option<Step> {
    let spec = &s.value;
    c.here = s.referenced;
    c.context = format!("journey `{journey}`, step `{}`", spec.name);
    if spec.name.trim().is_empty() {
        c.error("name", "expected a non-empty step name");
    }
    let kinds: Vec<&str> = [
        ("http", spec.http.is_some()),
        ("dns", spec.dns.is_some()),
        ("tcp", spec.tcp.is_some()),
        ("tls", spec.tls.is_some()),
        ("websocket", spec.websocket.is_some()),
        ("eventually", spec.eventually.is_some()),
        ("callback", spec.callback.is_some()),
        ("browser", spec.browser.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if kinds.len() != 1 {
        let got = if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") };
        c.error("", &format!("expected exactly one step kind (http, dns, tcp, tls, websocket, eventually, callback, browser), got {got}"));
        return None;
    }
    let default_status = spec.http.is_some().then(|| crate::config::model::StatusSet(vec![(200, 399)]));
    let assertions = std::sync::Arc::new(Assertions::compile(&spec.assertions, default_status, c));
    let kind: Option<Box<dyn StepKind>> = if let Some(h) = &spec.http {
        http::HttpStep::compile(h, c).map(|k| Box::new(k) as _)
    } else if let Some(d) = &spec.dns {
        dns::DnsStep::compile(d, c).map(|k| Box::new(k) as _)
    } else if let Some(t) = &spec.tcp {
        tcp::TcpStep::compile(t, c).map(|k| Box::new(k) as _)
    } else if let Some(t) = &spec.tls {
        tls::TlsStep::compile(t, c).map(|k| Box::new(k) as _)
    } else if let Some(w) = &spec.websocket {
        websocket::WebSocketStep::compile(w, assertions.clone(), c).map(|k| Box::new(k) as _)
    } else if let Some(e) = &spec.eventually {
        eventually::EventuallyStep::compile(e, journey, c).map(|k| Box::new(k) as _)
    } else if let Some(b) = &spec.browser {
        browser::BrowserStep::compile(b, &spec.name, spec.timeout.map(|d| d.0), c).map(|k| Box::new(k) as _)
    } else {
        callback::CallbackStep::compile(spec.callback.as_ref()?, c).map(|k| Box::new(k) as _)
    };
    // Restore this step's position: an inner `eventually` step moved it.
    c.here = s.referenced;
    c.context = format!("journey `{journey}`, step `{}`", spec.name);
    let mut extract = Vec::new();
    for (name, e) in &spec.extract {
        if let Some(x) = Extraction::compile(name, e, c) {
            extract.push(x);
        }
    }
    // Defined only after the step, so a step cannot use its own extractions.
    for x in &extract {
        c.define(x.name());
    }
    Some(Step { name: spec.name.clone(), timeout: spec.timeout.map(|d| d.0), kind: kind?, assertions, extract })
}
