//! Compiling one step: the [`Checker`] that collects located diagnostics,
//! the runnable [`Step`] and [`Journey`], and [`compile_step`], which finds
//! the step's one kind through the registry in `steps/mod.rs`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde_saphyr::{Location, Spanned};

use crate::config::model::StatusSet;
use crate::config::template::{JsonTemplate, Template, VarRef};
use crate::steps::assertions::{Assertions, JsonSelector};
use crate::steps::extract::Extraction;
use crate::steps::{compile_kind, Needs, StepKind, StepSpec, KIND_NAMES};
use crate::vocab::Diagnostic;

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
    /// Re-run a failed run from the start, within the same schedule slot.
    pub retries: Option<Retries>,
    pub steps: Vec<Step>,
    pub finally: Vec<Step>,
    /// Objectives for `vantage slo generate`.
    pub slo: Option<crate::config::slo::SloSpec>,
    /// `file:line:column` of the journey, for messages.
    pub source: String,
    /// Changes whenever the journey's definition changes (hot reload).
    pub fingerprint: u64,
    /// The root span's attributes that are the same in every run (name and
    /// labels), made once: their strings are shared, so neither a run's span
    /// nor the exporter's copy of it allocates them again.
    pub span_attrs: std::sync::OnceLock<Vec<opentelemetry::KeyValue>>,
}

impl Journey {
    pub fn span_attributes(&self) -> &[opentelemetry::KeyValue] {
        self.span_attrs.get_or_init(|| {
            let shared = |s: &str| Arc::<str>::from(s);
            std::iter::once(opentelemetry::KeyValue::new("journey.name", shared(&self.name)))
                .chain(self.labels.iter().map(|(k, v)| opentelemetry::KeyValue::new(shared(k), shared(v))))
                .collect()
        })
    }
}

/// A journey's `retries`: how many attempts a run may take in all, and the pause between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Attempts in all, the first included (2 = one retry).
    pub attempts: u32,
    pub delay: Duration,
}

/// A runnable step: its kind plus the shared assertions and extractions.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub timeout: Option<Duration>,
    pub kind: Box<dyn StepKind>,
    pub assertions: Arc<Assertions>,
    pub extract: Vec<Extraction>,
}

impl Step {
    /// This step and the steps nested in it (an `eventually`'s inner step), depth first.
    pub fn with_nested(&self) -> Vec<&Step> {
        let mut out = vec![self];
        for n in self.kind.nested() {
            out.extend(n.with_nested());
        }
        out
    }
}

impl Journey {
    /// Every step of the journey: `steps`, `finally`, and whatever is nested in them.
    pub fn all_steps(&self) -> Vec<&Step> {
        self.steps.iter().chain(&self.finally).flat_map(Step::with_nested).collect()
    }

    /// What the journey's steps need from the agent, wherever they sit.
    pub fn needs(&self) -> Needs {
        self.all_steps().iter().fold(Needs::default(), |n, s| n.or(s.kind.info().needs))
    }
}

/// What a kind's compile function gets besides its own config.
pub struct StepCx<'a> {
    pub journey: &'a str,
    /// The step's name.
    pub name: &'a str,
    /// The step's own `timeout`, if set.
    pub timeout: Option<Duration>,
    /// The step's compiled `assert` (kinds that wait for a matching message use it).
    pub assertions: Arc<Assertions>,
}

/// Collects diagnostics while compiling one file; knows where it is.
pub struct Checker<'a> {
    pub file: &'a Path,
    diags: &'a mut Vec<Diagnostic>,
    /// Position of the item being checked.
    pub here: Location,
    /// `journey `x`, step `y``: prefixes every message.
    pub context: String,
    defined: HashSet<String>,
    /// The journey's run timeout, for steps that wait (None in `finally`).
    pub run_timeout: Option<Duration>,
    /// The file's text, parsed on the first problem, to point at the value at fault.
    src: Option<&'a str>,
    tree: std::cell::OnceCell<Option<Spanned<crate::config::tree::Node>>>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path, diags: &'a mut Vec<Diagnostic>) -> Self {
        Checker { file, diags, here: Location::UNKNOWN, context: String::new(), defined: HashSet::new(), run_timeout: None, src: None, tree: Default::default() }
    }

    /// With the file's text, problems point at the value at fault, not at its step.
    pub fn with_source(mut self, src: &'a str) -> Self {
        self.src = Some(src);
        self
    }

    /// Where `field` of the item being checked is written (its key's place with `key`).
    fn field_location(&self, field: &str, key: bool) -> Location {
        let tree = self.tree.get_or_init(|| self.src.and_then(|s| crate::config::tree::parse(s).ok()));
        let at = (self.here.line(), self.here.column());
        tree.as_ref().filter(|_| !field.is_empty()).and_then(|t| crate::config::tree::locate(t, at, field, key)).unwrap_or(self.here)
    }

    fn push(&mut self, at: Location, message: String) {
        self.diags.push(Diagnostic { file: self.file.to_path_buf(), line: at.line().max(1), column: at.column().max(1), message });
    }

    /// Records a problem with `field` of the item being checked, at its value.
    pub fn error(&mut self, field: &str, message: &str) {
        self.error_at(field, message, false);
    }

    /// Records a problem with the name of `field` (a label or header name), at that name.
    pub fn key_error(&mut self, field: &str, message: &str) {
        self.error_at(field, message, true);
    }

    fn error_at(&mut self, field: &str, message: &str, key: bool) {
        let msg = if field.is_empty() { format!("{}: {message}", self.context) } else { format!("{}: `{field}`: {message}", self.context) };
        let at = self.field_location(field, key);
        self.push(at, msg);
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
                                &format!("unknown variable `${{{name}}}`: expected one defined by `vars` or an earlier step's `extract` (defined here: {known}; built-ins: run.id, run.callback_token, uuid, now, now.unix, env.NAME, secret.NAME)"),
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

/// Compiles one step: exactly one kind (through the registry), then the
/// shared assertions and extractions. Also used for nested steps (`eventually`).
pub fn compile_step(c: &mut Checker, journey: &str, s: &Spanned<StepSpec>) -> Option<Step> {
    let spec = &s.value;
    c.here = s.referenced;
    c.context = format!("journey `{journey}`, step `{}`", spec.name);
    if spec.name.trim().is_empty() {
        c.error("name", "expected a non-empty step name");
    }
    let kinds = spec.kinds_set();
    let [info] = kinds.as_slice() else {
        let got = if kinds.is_empty() { "none".to_string() } else { kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ") };
        c.error("", &format!("expected exactly one step kind ({}), got {got}", KIND_NAMES.join(", ")));
        return None;
    };
    let default_status = info.default_status.map(|r| StatusSet(vec![r]));
    let assertions = Arc::new(Assertions::compile(&spec.assertions, default_status, c));
    let cx = StepCx { journey, name: &spec.name, timeout: spec.timeout.map(|d| d.0), assertions: assertions.clone() };
    let kind = compile_kind(spec, &cx, c);
    // Restore this step's position: a nested step moved it.
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

/// Compiles one step from its YAML, for unit tests beside the step kinds.
/// Panics with the diagnostics when the YAML is not a valid step.
#[cfg(test)]
pub fn test_step(yaml: &str) -> Step {
    let spec: Spanned<StepSpec> = serde_saphyr::from_str(yaml).expect("step YAML parses");
    let mut diags = Vec::new();
    let mut c = Checker::new(Path::new("test.yaml"), &mut diags);
    c.run_timeout = Some(Duration::from_secs(30));
    let step = compile_step(&mut c, "test", &spec);
    assert!(diags.is_empty(), "{diags:?}");
    step.expect("compiled")
}

/// The diagnostics compiling one step from its YAML produces.
#[cfg(test)]
pub fn test_step_errors(yaml: &str) -> Vec<String> {
    let spec: Spanned<StepSpec> = serde_saphyr::from_str(yaml).expect("step YAML parses");
    let mut diags = Vec::new();
    let mut c = Checker::new(Path::new("test.yaml"), &mut diags);
    let _ = compile_step(&mut c, "test", &spec);
    diags.iter().map(|d| d.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_needs_exactly_one_kind_and_the_message_lists_the_registry() {
        let errs = test_step_errors("name: s\ntcp: {address: \"127.0.0.1:1\"}\ndns: {name: example.test}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        // The list is the registry's, in registration order, whatever kinds it holds.
        assert!(KIND_NAMES.starts_with(&["http", "dns", "tcp", "tls", "websocket", "eventually", "callback", "browser"]), "{KIND_NAMES:?}");
        assert!(errs[0].contains(&format!("expected exactly one step kind ({}), got dns, tcp", KIND_NAMES.join(", "))), "{}", errs[0]);
        let errs = test_step_errors("name: s\n");
        assert!(errs[0].ends_with("got none"), "{}", errs[0]);
        assert!(errs[0].starts_with("test.yaml:1:1: journey `test`, step `s`"), "{}", errs[0]);
    }

    #[test]
    fn nested_steps_are_walked() {
        let s = test_step("name: outer\neventually:\n  within: 2s\n  step:\n    name: inner\n    callback: {within: 1s}\n");
        let names: Vec<&str> = s.with_nested().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["outer", "inner"]);
        assert!(s.with_nested().iter().any(|s| s.kind.info().needs.callback_listener));
        assert!(!s.kind.info().needs.callback_listener);
    }
}
