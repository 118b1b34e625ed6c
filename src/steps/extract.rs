//! Extraction of variables from an observation, for later steps' `${name}`.

use regex::Regex;

use crate::config::model::ExtractSpec;
use crate::steps::assertions::JsonSelector;
use crate::steps::compile::Checker;
use crate::steps::context::RunContext;
use crate::vocab::{ErrorType, Observation, StepError};

#[derive(Debug)]
enum Source {
    Json(String, JsonSelector),
    Header(String),
    Cookie(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct Extraction {
    name: String,
    source: Source,
    secret: bool,
}

impl Extraction {
    pub fn compile(name: &str, spec: &ExtractSpec, c: &mut Checker) -> Option<Extraction> {
        let field = format!("extract.{name}");
        let given = [
            spec.json.is_some(),
            spec.header.is_some(),
            spec.cookie.is_some(),
            spec.regex.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            c.error(
                &field,
                "expected exactly one of `json`, `header`, `cookie` or `regex`",
            );
            return None;
        }
        let source = if let Some(p) = &spec.json {
            Source::Json(p.clone(), c.json_path(&format!("{field}.json"), p)?)
        } else if let Some(h) = &spec.header {
            Source::Header(h.clone())
        } else if let Some(k) = &spec.cookie {
            Source::Cookie(k.clone())
        } else {
            let r = c.regex(&format!("{field}.regex"), spec.regex.as_deref()?)?;
            if r.captures_len() > 2 {
                c.error(
                    &format!("{field}.regex"),
                    "expected at most one capture group (the value to keep)",
                );
            }
            Source::Regex(r)
        };
        Some(Extraction {
            name: name.to_string(),
            source,
            secret: spec.secret,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn apply(&self, ctx: &mut RunContext, obs: &Observation) -> Result<(), StepError> {
        let value = self.value(ctx, obs)?;
        ctx.set_var(&self.name, value, self.secret);
        Ok(())
    }

    /// Marks the value secret before the step's assertions form any message
    /// (one of them may quote the very body the secret comes from).
    pub fn mark_secret(&self, ctx: &mut RunContext, obs: &Observation) {
        if self.secret {
            if let Ok(v) = self.value(ctx, obs) {
                ctx.add_secret(&v);
            }
        }
    }

    fn value(&self, ctx: &RunContext, obs: &Observation) -> Result<String, StepError> {
        let missing = |what: String| {
            StepError::new(
                ErrorType::Assertion,
                format!("could not extract `{}`: {what}", self.name),
            )
        };
        let value = match &self.source {
            Source::Json(text, sel) => {
                let doc: serde_json::Value = serde_json::from_slice(&obs.body).map_err(|e| {
                    missing(format!(
                        "the body is not JSON ({e}): {}",
                        ctx.excerpt(&obs.body_text(), 120)
                    ))
                })?;
                let found = sel.select(&doc);
                let v = found.first().ok_or_else(|| {
                    missing(format!(
                        "JSON path `{text}` matched nothing in {}",
                        ctx.excerpt(&doc.to_string(), 200)
                    ))
                })?;
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            }
            Source::Header(h) => obs
                .header(h)
                .map(str::to_string)
                .ok_or_else(|| missing(format!("no `{h}` header in the response")))?,
            Source::Cookie(name) => cookie_value(ctx, obs, name)
                .ok_or_else(|| missing(format!("no cookie `{name}` was set")))?,
            Source::Regex(r) => {
                let body = obs.body_text();
                let caps = r.captures(&body).ok_or_else(|| {
                    missing(format!("/{r}/ did not match {}", ctx.excerpt(&body, 200)))
                })?;
                caps.get(1)
                    .or_else(|| caps.get(0))
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default()
            }
        };
        Ok(value)
    }
}

/// A cookie from this response's Set-Cookie headers, else from the run's jar.
fn cookie_value(ctx: &RunContext, obs: &Observation, name: &str) -> Option<String> {
    let from_response = obs
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string());
    from_response.or_else(|| crate::steps::http::jar_cookie(ctx, name))
}

#[cfg(test)]
mod tests {
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::Observation;

    #[test]
    fn extractions_set_variables_and_secrets_are_redacted() {
        let step = test_step("name: s\ntcp: {address: \"127.0.0.1:1\"}\nextract:\n  id: {json: $.id}\n  token: {regex: \"token=(\\\\w+)\", secret: true}\n");
        let obs = Observation {
            body: bytes::Bytes::from_static(br#"{"id": 42, "note": "token=abc123xyz"}"#),
            ..Default::default()
        };
        let mut ctx = RunContext::new_test();
        for x in &step.extract {
            x.apply(&mut ctx, &obs).expect("extracts");
        }
        assert_eq!(ctx.var("id"), Some("42"));
        assert_eq!(ctx.var("token"), Some("abc123xyz"));
        assert_eq!(ctx.redact("sent abc123xyz"), "sent [REDACTED]");
    }
}
