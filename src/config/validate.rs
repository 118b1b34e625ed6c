//! Turns parsed probe files into runnable journeys, reporting every problem
//! at once, each with `file:line:column` and what was expected.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::config::model::Dur;
use crate::config::tree;
use crate::steps::compile::compile_step;
pub use crate::steps::compile::{Checker, Journey, Step};
use crate::steps::StepSpec;
use crate::vocab::Diagnostic;

/// A probe file: one or more journeys.
#[derive(Debug, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    #[schemars(with = "Vec<JourneySpec>")]
    pub journeys: Vec<Spanned<JourneySpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JourneySpec {
    pub name: String,
    pub interval: Dur,
    /// Whole-run timeout. Defaults to the interval, capped at 60 s.
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Histogram bounds (seconds) for the journey duration, e.g. SLO thresholds.
    pub buckets: Option<Vec<f64>>,
    /// Regions this journey runs in; absent means every region.
    pub locations: Option<Vec<String>>,
    /// Journey-level variables, templated once at the start of each run.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Re-run a failed run from the start (after its `finally`), within the same schedule slot.
    pub retries: Option<RetriesSpec>,
    #[schemars(with = "Vec<StepSpec>")]
    pub steps: Vec<Spanned<StepSpec>>,
    /// Cleanup steps that always run, whatever happened before.
    #[serde(default)]
    #[schemars(with = "Vec<StepSpec>")]
    pub finally: Vec<Spanned<StepSpec>>,
    /// Objectives for `vantage slo generate`; unset parts come from the agent's `slo`.
    pub slo: Option<super::slo::SloSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    /// Attempts in all, the first included: 2 means one retry.
    pub attempts: u32,
    /// Pause between attempts (default 1s).
    pub delay: Option<Dur>,
}

const MAX_ATTEMPTS: u32 = 10;

/// Attribute and label names the agent sets itself, as written (OTLP) and as
/// they reach Prometheus (the admin `/metrics` view, and the Collector's
/// Prometheus exporter, which turns `.` into `_`), plus Prometheus' own.
const RESERVED_LABELS: &[&str] = &[
    "journey.name",
    "synthetics.location",
    "synthetics.run.id",
    "synthetics.run.attempt",
    "outcome",
    "error.type",
    "step.name",
    "step.kind",
    "phase",
    "result",
    "journey",
    "location",
    "step",
    "le",
    "quantile",
    "job",
    "instance",
    "service.name",
    "service.instance.id",
    "service.version",
    "host.name",
    "cloud.region",
];

/// A label name as Prometheus sees it (what `/metrics` and the Collector's exporter write).
pub fn prometheus_label(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Loads and compiles every journey in `files`. Returns all problems found.
pub fn compile_files(files: &[(PathBuf, String)]) -> Result<Vec<Journey>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut journeys = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (path, text) in files {
        let first = diags.len();
        let mut broken = false;
        let sound = match serde_saphyr::from_str::<ProbeFile>(text) {
            Ok(p) => p.journeys,
            Err(e) => {
                broken = true;
                let (sound, problems) = structural_problems(path, text);
                if problems.is_empty() {
                    // Nothing more found than the parser's own error (e.g. a syntax error).
                    // The parse of the whole text finds syntax errors that the typed parse,
                    // which stops at the first value it rejects, did not reach.
                    let syntax = tree::parse(text).err();
                    diags.push(syntax_error(path, text, syntax.as_ref().unwrap_or(&e)));
                }
                diags.extend(problems);
                sound
            }
        };
        for spec in &sound {
            let mut c = Checker::new(path, &mut diags).with_source(text);
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
        if broken {
            // Structural problems and the sound journeys' semantic ones, in file order.
            diags[first..].sort_by_key(|d| (d.line, d.column));
        }
    }
    if diags.is_empty() {
        Ok(journeys)
    } else {
        Err(diags)
    }
}

/// Every structural problem of a probe file that does not parse as a whole,
/// each journey read on its own so one bad entry does not hide the others;
/// also the journeys that are sound, for the semantic checks.
fn structural_problems(path: &Path, text: &str) -> (Vec<Spanned<JourneySpec>>, Vec<Diagnostic>) {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outline {
        journeys: Vec<serde::de::IgnoredAny>,
    }
    let Ok(root) = tree::parse(text) else { return (Vec::new(), Vec::new()) };
    let diag = |p: tree::Problem| Diagnostic { file: path.to_path_buf(), line: p.line, column: p.column, message: p.message };
    let (_, problems) = tree::deserialize_all::<Outline>(&root, text);
    let mut diags: Vec<Diagnostic> = problems.into_iter().map(diag).collect();
    let mut sound = Vec::new();
    for item in journey_nodes(&root) {
        match tree::deserialize_all::<JourneySpec>(item, text) {
            (Some(spec), p) if p.is_empty() => sound.push(Spanned::new(spec, item.referenced, item.defined)),
            (_, p) => diags.extend(p.into_iter().map(diag)),
        }
    }
    (sound, diags)
}

fn journey_nodes(root: &Spanned<tree::Node>) -> &[Spanned<tree::Node>] {
    let tree::Node::Map(entries) = &root.value else { return &[] };
    entries
        .iter()
        .find_map(|(k, v)| match (&k.value, &v.value) {
            (tree::Node::Str(k), tree::Node::Seq(items)) if k == "journeys" => Some(items.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

/// A YAML error of `text` as a diagnostic; one caused by indentation says so.
pub fn syntax_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let d = parse_error(path, e);
    match tree::explain_syntax(text, d.line, d.column, &d.message) {
        Some(p) => Diagnostic { line: p.line, column: p.column, message: p.message, ..d },
        None => d,
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

/// Hash of the journey's parsed content without source positions, so a
/// comment or blank line added above it does not restart it on reload.
fn fingerprint(spec: &JourneySpec) -> u64 {
    static LOCATION: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = LOCATION.get_or_init(|| Regex::new(r"Location \{ line: \d+, column: \d+, span: Span \{[^}]*\}[^}]*\}").expect("valid regex"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    re.replace_all(&format!("{spec:?}"), "Location").hash(&mut h);
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
    let reserved: HashMap<String, &str> = RESERVED_LABELS
        .iter()
        .map(|r| (prometheus_label(r), *r))
        .collect();
    let mut as_prometheus: HashMap<String, &str> = HashMap::new();
    for k in spec.labels.keys() {
        let prom = prometheus_label(k);
        if !label_key.is_match(k) {
            c.key_error(&format!("labels.{k}"), "expected a label name of letters, digits, `_` and `.`, starting with a letter or `_`");
        } else if let Some(r) = reserved.get(&prom) {
            let same = if *r == k.as_str() {
                String::new()
            } else {
                format!(" (as `{prom}` in Prometheus it collides with `{r}`)")
            };
            c.key_error(
                &format!("labels.{k}"),
                &format!("this name is set by the agent itself{same}; choose another label name"),
            );
        } else if prom.starts_with("__") {
            c.key_error(
                &format!("labels.{k}"),
                "names starting with `__` are reserved by Prometheus; choose another label name",
            );
        } else if let Some(other) = as_prometheus.insert(prom.clone(), k) {
            c.key_error(&format!("labels.{k}"), &format!("`{other}` and `{k}` both become `{prom}` in Prometheus, so the exported series would clash; rename one"));
        }
    }
    if let Some(b) = &spec.buckets {
        // At the first bound at fault, when one is.
        let bad = b.iter().enumerate().position(|(i, x)| !x.is_finite() || *x <= 0.0 || (i > 0 && b[i - 1] >= *x));
        if b.is_empty() || bad.is_some() {
            let field = bad.map_or("buckets".to_string(), |i| format!("buckets[{i}]"));
            c.error(&field, "expected a non-empty, strictly increasing list of positive seconds, e.g. [0.1, 0.5, 1, 2.5]");
        }
    }
    let retries = spec.retries.as_ref().map(|r| {
        let delay = r.delay.map_or(Duration::from_secs(1), |d| d.0);
        if r.attempts == 0 || r.attempts > MAX_ATTEMPTS {
            c.error("retries.attempts", &format!("expected 1 to {MAX_ATTEMPTS} attempts in all (the first included), got {}", r.attempts));
        }
        let n = r.attempts.clamp(1, MAX_ATTEMPTS);
        let worst = timeout.saturating_mul(n).saturating_add(delay.saturating_mul(n - 1));
        if worst > interval {
            c.error(
                "retries",
                &format!(
                    "{n} attempts of up to {} each plus {} between them take up to {}, longer than the interval ({}): retries must fit in one schedule slot; lower `timeout`, `attempts` or `delay`, or raise `interval`",
                    humantime::format_duration(timeout),
                    humantime::format_duration(delay),
                    humantime::format_duration(worst),
                    humantime::format_duration(interval)
                ),
            );
        }
        crate::steps::compile::Retries { attempts: n, delay }
    });
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
        retries,
        steps,
        finally,
        slo: spec.slo.clone(),
        source: format!("{}:{}:{}", c.file.display(), spanned.referenced.line(), spanned.referenced.column()),
        fingerprint: fingerprint(spec),
        span_attrs: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::compile_files;

    #[test]
    fn needs_are_found_in_finally_and_inside_eventually() {
        let yaml = "journeys:\n  - name: j\n    interval: 30s\n    steps:\n      - name: a\n        tcp: {address: \"127.0.0.1:1\"}\n    finally:\n      - name: wait\n        eventually:\n          within: 5s\n          step:\n            name: hook\n            callback: {within: 1s}\n      - name: shot\n        browser: {screenshot: end}\n";
        let js = compile_files(&[("p.yaml".into(), yaml.into())]).expect("valid");
        let needs = js[0].needs();
        assert!(needs.callback_listener && needs.browser, "{needs:?}");
        let names: Vec<&str> = js[0].all_steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "wait", "hook", "shot"]);
    }

    fn errors(journey_body: &str) -> Vec<String> {
        let yaml = format!("journeys:\n  - name: j\n{journey_body}    steps:\n      - name: a\n        tcp: {{address: \"127.0.0.1:1\"}}\n");
        compile_files(&[("p.yaml".into(), yaml)])
            .err()
            .unwrap_or_default()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn absurd_durations_are_rejected_with_their_location() {
        let e = errors("    interval: 1000y\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.yaml:3:15: ")
                && e[0].contains("expected a duration of at most 365 days, got `1000y`"),
            "{}",
            e[0]
        );
        assert!(errors("    interval: 30s\n    timeout: 10s\n").is_empty());
    }

    #[test]
    fn retries_must_fit_in_one_schedule_slot() {
        assert!(errors(
            "    interval: 60s\n    timeout: 10s\n    retries: {attempts: 3, delay: 5s}\n"
        )
        .is_empty());
        let e =
            errors("    interval: 30s\n    timeout: 10s\n    retries: {attempts: 3, delay: 5s}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("journey `j`: `retries`: 3 attempts of up to 10s each plus 5s between them take up to 40s, longer than the interval (30s)"), "{}", e[0]);
        let e = errors("    interval: 60s\n    timeout: 1s\n    retries: {attempts: 0}\n");
        assert!(
            e[0].contains("`retries.attempts`: expected 1 to 10 attempts"),
            "{e:?}"
        );
    }

    #[test]
    fn labels_that_collide_with_exported_ones_or_each_other_are_errors() {
        for reserved in [
            "journey",
            "location",
            "outcome",
            "error_type",
            "error.type",
            "journey_name",
            "synthetics_location",
            "step",
            "result",
            "le",
        ] {
            let e = errors(&format!(
                "    interval: 30s\n    labels: {{{reserved}: x}}\n"
            ));
            assert_eq!(e.len(), 1, "{reserved}: {e:?}");
            assert!(
                e[0].contains(&format!(
                    "`labels.{reserved}`: this name is set by the agent itself"
                )),
                "{}",
                e[0]
            );
        }
        let e = errors("    interval: 30s\n    labels: {team.name: a, team_name: b}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("`team.name` and `team_name` both become `team_name` in Prometheus"),
            "{}",
            e[0]
        );
        assert!(errors("    interval: 30s\n    labels: {team: payments, tier: gold}\n").is_empty());
    }

    fn all(yaml: &str) -> Vec<String> {
        compile_files(&[("p.yaml".into(), yaml.into())]).err().unwrap_or_default().iter().map(|d| d.to_string()).collect()
    }

    const HEAD: &str = "journeys:\n  - name: j\n    interval: 30s\n    steps:\n      - name: a\n";

    #[test]
    fn a_key_that_slid_out_of_its_block_is_reported_where_it_slid_not_as_missing_field() {
        // `url` two spaces short of `method`: not "missing field `url`" at `http`.
        let e = all(&format!("{HEAD}        http:\n          method: POST\n        url: http://127.0.0.1:1/\n"));
        assert_eq!(e, ["p.yaml:8:9: `url` is indented 2 spaces less than `method` on line 7, so it ended the `http` block early: as written it is a key of the `steps` item on line 5, which has no `url`; indent it to column 11, like `method`"]);
        // An optional key of `assert` (nothing missing anywhere, only an unknown key before).
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n        assert:\n          max_duration: 2s\n        degraded_after: 1s\n"));
        assert_eq!(e, ["p.yaml:9:9: `degraded_after` is indented 2 spaces less than `max_duration` on line 8, so it ended the `assert` block early: as written it is a key of the `steps` item on line 5, which has no `degraded_after`; indent it to column 11, like `max_duration`"]);
    }

    #[test]
    fn a_journey_key_that_slid_under_a_step_is_reported_at_that_key() {
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n        finally:\n          - name: b\n            tcp: {{address: \"127.0.0.1:1\"}}\n"));
        assert_eq!(e, ["p.yaml:7:9: `finally` is indented 4 spaces more than `steps` on line 4: as written it is a key of the `steps` item on line 5, which has no `finally`; indent it to column 5, like `steps`"]);
    }

    #[test]
    fn a_key_between_two_indentation_levels_is_explained_not_left_to_the_parser() {
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n        assert:\n          max_duration: 2s\n         degraded_after: 1s\n"));
        assert_eq!(e, ["p.yaml:9:10: `degraded_after` is indented 9 spaces, which lines up with no block above it: indent it by 10 to put it beside `max_duration` (line 8), or by 8 to put it beside `assert` (line 7)"]);
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n      finally:\n        - name: b\n          tcp: {{address: \"127.0.0.1:1\"}}\n"));
        assert_eq!(e, ["p.yaml:7:7: `finally` is indented 6 spaces, like the `-` of the list item on line 5, so it is neither a new item nor a key of one: indent it by 8 to put it beside `tcp` (line 6), or by 4 to put it beside `steps` (line 4)"]);
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n        assert:\n          max_duration: 2s\n           degraded_after: 1s\n"));
        assert_eq!(e, ["p.yaml:9:12: `degraded_after` is indented 1 space more than `max_duration` on line 8, which already has a value and so cannot hold keys: indent it by 10 to put it beside `max_duration`"]);
    }

    #[test]
    fn problems_with_a_value_point_at_the_value_not_at_its_step() {
        let e = all(&format!("{HEAD}        http:\n          method: GET\n          url: \"http://127.0.0.1/${{tokn}}\"\n      - name: b\n        http: {{url: ftp://127.0.0.1/}}\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("p.yaml:8:16: journey `j`, step `a`: `http.url`: unknown variable `${tokn}`"), "{e:?}");
        assert_eq!(e[1], "p.yaml:10:21: journey `j`, step `b`: `http.url`: expected an absolute http:// or https:// URL, got `ftp://127.0.0.1/`");
        let e = all("journeys:\n  - name: j\n    interval: 30s\n    labels:\n      team: web\n      le: x\n    buckets: [0.1, 0.5, 0.2]\n    steps:\n      - name: a\n        tcp: {address: \"127.0.0.1:1\"}\n        assert:\n          json:\n            - {path: \"$.a\", matches: \"(\"}\n        extract:\n          t: {regex: \"(a)(b)\"}\n");
        assert_eq!(
            e,
            [
                "p.yaml:6:7: journey `j`: `labels.le`: this name is set by the agent itself; choose another label name",
                "p.yaml:7:25: journey `j`: `buckets[2]`: expected a non-empty, strictly increasing list of positive seconds, e.g. [0.1, 0.5, 1, 2.5]",
                "p.yaml:13:38: journey `j`, step `a`: `assert.json[0].matches`: invalid regex: regex parse error:\n    (\n    ^\nerror: unclosed group",
                "p.yaml:15:22: journey `j`, step `a`: `extract.t.regex`: expected at most one capture group (the value to keep)",
            ]
        );
    }

    #[test]
    fn a_bad_header_name_points_at_the_name_on_http_and_websocket_steps() {
        let e = all(&format!("{HEAD}        http:\n          url: http://127.0.0.1/\n          headers:\n            \"bad header\": x\n      - name: b\n        websocket:\n          connect: ws://127.0.0.1/\n          headers: {{\"x(y)\": z}}\n"));
        assert_eq!(
            e,
            [
                "p.yaml:9:13: journey `j`, step `a`: `http.headers.bad header`: `bad header` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                "p.yaml:13:21: journey `j`, step `b`: `websocket.headers.x(y)`: `x(y)` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            ]
        );
    }

    #[test]
    fn a_real_typo_stays_an_unknown_field() {
        let e = all(&format!("{HEAD}        tcp: {{address: \"127.0.0.1:1\"}}\n        asert:\n          status: 200\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.yaml:7:9: unknown field `asert`, expected one of"), "{e:?}");
    }

    #[test]
    fn unknown_keys_in_a_kind_are_located() {
        let yaml = "journeys:\n  - name: j\n    interval: 30s\n    steps:\n      - name: a\n        tcp: {address: \"127.0.0.1:1\", sned: x}\n";
        let d = compile_files(&[("p.yaml".into(), yaml.into())]).expect_err("typo");
        assert_eq!((d[0].line, d[0].file.display().to_string()), (6, "p.yaml".to_string()));
        assert!(d[0].message.contains("sned"), "{}", d[0].message);
    }
}

#[cfg(test)]
mod fingerprint_tests {
    #[test]
    fn a_comment_above_a_journey_keeps_its_fingerprint() {
        let a = "journeys:\n  - name: j\n    interval: 5s\n    steps:\n      - name: s\n        tcp: {address: \"127.0.0.1:1\"}\n";
        let b = format!("# a comment\n\n{}", a.replace("journeys:\n", "journeys:\n  # another\n"));
        let c = a.replace("5s", "6s");
        let fp = |t: &str| super::compile_files(&[("p.yaml".into(), t.to_string())]).unwrap()[0].fingerprint;
        assert_eq!(fp(a), fp(&b));
        assert_ne!(fp(a), fp(&c));
    }
}
