//! Assertions shared by every step kind, checked against an [`Observation`].

use std::time::Duration;

use regex::Regex;

use crate::config::model::{AssertSpec, StatusSet};
use crate::config::template::Template;
use crate::steps::compile::Checker;
use crate::steps::context::RunContext;
use crate::vocab::{fmt_dur, ErrorType, Observation, StepError, Verdict};

/// A compiled JSONPath (`$.a`) or JSON pointer (`/a`).
#[derive(Debug, Clone)]
pub enum JsonSelector {
    Pointer(String),
    Path(serde_json_path::JsonPath),
}

impl JsonSelector {
    pub fn parse(text: &str) -> Result<JsonSelector, String> {
        if text.starts_with('/') || text.is_empty() {
            Ok(JsonSelector::Pointer(text.to_string()))
        } else if text.starts_with('$') {
            serde_json_path::JsonPath::parse(text)
                .map(JsonSelector::Path)
                .map_err(|e| e.to_string())
        } else {
            Err(format!("`{text}` is neither a JSONPath (starting with `$`) nor a JSON pointer (starting with `/`)"))
        }
    }

    pub fn select<'v>(&self, v: &'v serde_json::Value) -> Vec<&'v serde_json::Value> {
        match self {
            JsonSelector::Pointer(p) => v.pointer(p).into_iter().collect(),
            JsonSelector::Path(p) => p.query(v).all(),
        }
    }
}

#[derive(Debug)]
enum JsonCheck {
    Equals(serde_json::Value, Option<Template>),
    Exists(bool),
    Matches(Regex),
}

#[derive(Debug)]
struct JsonAssertion {
    path_text: String,
    selector: JsonSelector,
    checks: Vec<JsonCheck>,
}

#[derive(Debug)]
enum HeaderCheck {
    Equals(Template),
    Contains(Template),
    Matches(Regex),
    Exists(bool),
}

#[derive(Debug, Default)]
pub struct Assertions {
    status: Option<StatusSet>,
    body_contains: Vec<Template>,
    body_not_contains: Vec<Template>,
    body_regex: Option<Regex>,
    json: Vec<JsonAssertion>,
    headers: Vec<(String, Vec<HeaderCheck>)>,
    pub max_duration: Option<Duration>,
    pub degraded_after: Option<Duration>,
}

impl Assertions {
    /// `default_status` applies when the step asserts no status (HTTP: 200-399, like a browser user would accept).
    pub fn compile(
        spec: &AssertSpec,
        default_status: Option<StatusSet>,
        c: &mut Checker,
    ) -> Assertions {
        let mut json = Vec::new();
        for (i, j) in spec.json.iter().enumerate() {
            let field = format!("assert.json[{i}]");
            let Some(selector) = c.json_path(&format!("{field}.path"), &j.path) else {
                continue;
            };
            let mut checks = Vec::new();
            if let Some(v) = &j.equals {
                let t = v
                    .as_str()
                    .map(|s| c.template(&format!("{field}.equals"), s));
                checks.push(JsonCheck::Equals(v.clone(), t));
            }
            if let Some(e) = j.exists {
                checks.push(JsonCheck::Exists(e));
            }
            if let Some(m) = &j.matches {
                if let Some(r) = c.regex(&format!("{field}.matches"), m) {
                    checks.push(JsonCheck::Matches(r));
                }
            }
            if checks.is_empty() {
                checks.push(JsonCheck::Exists(true));
            }
            json.push(JsonAssertion {
                path_text: j.path.clone(),
                selector,
                checks,
            });
        }
        let mut headers = Vec::new();
        for (name, h) in &spec.headers {
            let f = format!("assert.headers.{name}");
            let mut checks = Vec::new();
            if let Some(v) = &h.equals {
                checks.push(HeaderCheck::Equals(c.template(&f, v)));
            }
            if let Some(v) = &h.contains {
                checks.push(HeaderCheck::Contains(c.template(&f, v)));
            }
            if let Some(v) = &h.matches {
                if let Some(r) = c.regex(&f, v) {
                    checks.push(HeaderCheck::Matches(r));
                }
            }
            checks.push(HeaderCheck::Exists(h.exists.unwrap_or(true)));
            headers.push((name.to_ascii_lowercase(), checks));
        }
        if let (Some(d), Some(m)) = (spec.degraded_after, spec.max_duration) {
            if d.0 >= m.0 {
                c.error("assert.degraded_after", "must be shorter than `assert.max_duration`, or it can never mark a run degraded");
            }
        }
        Assertions {
            status: spec.status.clone().or(default_status),
            body_contains: spec
                .body_contains
                .iter()
                .map(|s| c.template("assert.body_contains", s))
                .collect(),
            body_not_contains: spec
                .body_not_contains
                .iter()
                .map(|s| c.template("assert.body_not_contains", s))
                .collect(),
            body_regex: spec
                .body_regex
                .as_deref()
                .and_then(|r| c.regex("assert.body_regex", r)),
            json,
            headers,
            max_duration: spec.max_duration.map(|d| d.0),
            degraded_after: spec.degraded_after.map(|d| d.0),
        }
    }

    /// True when something other than timing is asserted (e.g. a WebSocket receive filter).
    pub fn has_content_checks(&self) -> bool {
        self.status.is_some()
            || !self.body_contains.is_empty()
            || !self.body_not_contains.is_empty()
            || self.body_regex.is_some()
            || !self.json.is_empty()
            || !self.headers.is_empty()
    }

    /// Content checks only: status, body, JSON and headers.
    pub fn check_content(&self, ctx: &mut RunContext, obs: &Observation) -> Result<(), StepError> {
        if let (Some(set), Some(code)) = (&self.status, obs.status) {
            if !set.contains(code) {
                return Err(StepError::new(
                    ErrorType::HttpStatus,
                    format!(
                        "expected status {set}, got {code} (body: {})",
                        ctx.excerpt(&obs.body_text(), 200)
                    ),
                ));
            }
        }
        let fail = |msg: String| Err(StepError::new(ErrorType::Assertion, msg));
        let body = obs.body_text();
        for t in &self.body_contains {
            let want = ctx.render(t)?;
            if !body.contains(&want) {
                return fail(format!(
                    "expected body to contain `{want}`, got: {}",
                    ctx.excerpt(&body, 200)
                ));
            }
        }
        for t in &self.body_not_contains {
            let bad = ctx.render(t)?;
            if body.contains(&bad) {
                return fail(format!(
                    "expected body not to contain `{bad}`, but it does: {}",
                    ctx.excerpt(&body, 200)
                ));
            }
        }
        if let Some(r) = &self.body_regex {
            if !r.is_match(&body) {
                return fail(format!(
                    "expected body to match /{r}/, got: {}",
                    ctx.excerpt(&body, 200)
                ));
            }
        }
        if !self.json.is_empty() {
            let doc: serde_json::Value = serde_json::from_slice(&obs.body).map_err(|e| {
                StepError::new(
                    ErrorType::Assertion,
                    format!(
                        "expected a JSON body, got invalid JSON ({e}): {}",
                        ctx.excerpt(&body, 200)
                    ),
                )
            })?;
            for a in &self.json {
                a.check(ctx, &doc)?;
            }
        }
        for (name, checks) in &self.headers {
            let got = obs.header(name);
            for chk in checks {
                check_header(ctx, name, got, chk)?;
            }
        }
        Ok(())
    }

    /// Timing checks against the step's duration.
    pub fn check_timing(&self, elapsed: Duration) -> Result<Verdict, StepError> {
        if let Some(max) = self.max_duration {
            if elapsed > max {
                return Err(StepError::new(
                    ErrorType::Assertion,
                    format!(
                        "expected to finish within {}, took {}",
                        fmt_dur(max),
                        fmt_dur(elapsed)
                    ),
                ));
            }
        }
        match self.degraded_after {
            Some(d) if elapsed > d => Ok(Verdict::Degraded),
            _ => Ok(Verdict::Pass),
        }
    }
}

impl JsonAssertion {
    fn check(&self, ctx: &mut RunContext, doc: &serde_json::Value) -> Result<(), StepError> {
        let found = self.selector.select(doc);
        let fail = |msg: String| Err(StepError::new(ErrorType::Assertion, msg));
        for chk in &self.checks {
            match chk {
                JsonCheck::Exists(true) if found.is_empty() => {
                    return fail(format!(
                        "expected JSON path `{}` to exist, it matched nothing in {}",
                        self.path_text,
                        ctx.excerpt(&doc.to_string(), 200)
                    ))
                }
                JsonCheck::Exists(false) if !found.is_empty() => {
                    return fail(format!(
                        "expected JSON path `{}` to be absent, found {}",
                        self.path_text,
                        ctx.excerpt(&found[0].to_string(), 100)
                    ))
                }
                JsonCheck::Exists(_) => {}
                JsonCheck::Equals(v, t) => {
                    let want = match t {
                        Some(t) => serde_json::Value::String(ctx.render(t)?),
                        None => v.clone(),
                    };
                    let Some(got) = found.first() else {
                        return fail(format!(
                            "expected JSON path `{}` to equal {want}, it matched nothing",
                            self.path_text
                        ));
                    };
                    if !json_equal(got, &want) {
                        return fail(format!(
                            "expected JSON path `{}` to equal {want}, got {}",
                            self.path_text,
                            ctx.excerpt(&got.to_string(), 100)
                        ));
                    }
                }
                JsonCheck::Matches(r) => {
                    let Some(got) = found.first() else {
                        return fail(format!(
                            "expected JSON path `{}` to match /{r}/, it matched nothing",
                            self.path_text
                        ));
                    };
                    let text = got
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| got.to_string());
                    if !r.is_match(&text) {
                        return fail(format!(
                            "expected JSON path `{}` to match /{r}/, got {}",
                            self.path_text,
                            ctx.excerpt(&text, 100)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Equality that treats 1 and 1.0 alike, and a string that spells a number as that number.
fn json_equal(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (got, want) {
        (Number(a), Number(b)) => a.as_f64() == b.as_f64(),
        (Number(a), String(b)) | (String(b), Number(a)) => b.parse::<f64>().ok() == a.as_f64(),
        (Bool(a), String(b)) | (String(b), Bool(a)) => b == &a.to_string(),
        _ => got == want,
    }
}

fn check_header(
    ctx: &mut RunContext,
    name: &str,
    got: Option<&str>,
    chk: &HeaderCheck,
) -> Result<(), StepError> {
    let fail = |msg: String| Err(StepError::new(ErrorType::Assertion, msg));
    match (chk, got) {
        (HeaderCheck::Exists(true), None) => fail(format!(
            "expected header `{name}` to be present, it is missing"
        )),
        (HeaderCheck::Exists(false), Some(v)) => fail(format!(
            "expected header `{name}` to be absent, got `{}`",
            ctx.excerpt(v, 100)
        )),
        (HeaderCheck::Exists(_), _) => Ok(()),
        (_, None) => fail(format!("expected header `{name}`, it is missing")),
        (HeaderCheck::Equals(t), Some(v)) => {
            let want = ctx.render(t)?;
            if v == want {
                Ok(())
            } else {
                fail(format!(
                    "expected header `{name}` to equal `{want}`, got `{}`",
                    ctx.excerpt(v, 100)
                ))
            }
        }
        (HeaderCheck::Contains(t), Some(v)) => {
            let want = ctx.render(t)?;
            if v.contains(&want) {
                Ok(())
            } else {
                fail(format!(
                    "expected header `{name}` to contain `{want}`, got `{}`",
                    ctx.excerpt(v, 100)
                ))
            }
        }
        (HeaderCheck::Matches(r), Some(v)) => {
            if r.is_match(v) {
                Ok(())
            } else {
                fail(format!(
                    "expected header `{name}` to match /{r}/, got `{}`",
                    ctx.excerpt(v, 100)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::{ErrorType, Observation};

    #[test]
    fn status_body_and_json_checks_fail_with_what_came() {
        let step = test_step("name: s\nhttp: {url: \"http://127.0.0.1:1/\"}\nassert:\n  body_contains: ready\n  json: [{path: $.state, equals: up}]\n");
        let mut ctx = RunContext::new_test();
        let ok = Observation {
            status: Some(200),
            body: bytes::Bytes::from_static(br#"{"state": "up", "msg": "ready"}"#),
            ..Default::default()
        };
        step.assertions
            .check_content(&mut ctx, &ok)
            .expect("passes");
        // HTTP steps default to 200-399.
        let e = step
            .assertions
            .check_content(
                &mut ctx,
                &Observation {
                    status: Some(500),
                    ..ok
                },
            )
            .expect_err("500");
        assert_eq!(e.error_type, ErrorType::HttpStatus);
        let down = Observation {
            status: Some(200),
            body: bytes::Bytes::from_static(br#"{"state": "down", "msg": "ready"}"#),
            ..Default::default()
        };
        let e = step
            .assertions
            .check_content(&mut ctx, &down)
            .expect_err("state down");
        assert_eq!(e.error_type, ErrorType::Assertion);
        assert!(e.message.contains("down"), "{}", e.message);
    }
}
