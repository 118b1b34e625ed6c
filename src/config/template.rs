//! `${...}` templates. Parsed once at load time so that unknown built-ins and
//! undefined variables are config errors, not 3 a.m. surprises.

use std::fmt;

/// What a `${...}` refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VarRef {
    /// `${run.id}`: unique per run.
    RunId,
    /// `${run.callback_token}`: the token the run's `callback` steps wait for; unguessable, unlike the run id.
    CallbackToken,
    /// `${uuid}`: a fresh v4 UUID at each expansion.
    Uuid,
    /// `${now}`: RFC 3339 UTC timestamp; `${now.unix}`: seconds since the epoch.
    Now,
    NowUnix,
    /// `${env.NAME}`: the agent's environment.
    Env(String),
    /// `${secret.NAME}`: the file NAME in the credentials directory.
    Secret(String),
    /// `${name}`: a journey variable or a value extracted by an earlier step.
    Var(String),
}

impl fmt::Display for VarRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarRef::RunId => f.write_str("${run.id}"),
            VarRef::CallbackToken => f.write_str("${run.callback_token}"),
            VarRef::Uuid => f.write_str("${uuid}"),
            VarRef::Now => f.write_str("${now}"),
            VarRef::NowUnix => f.write_str("${now.unix}"),
            VarRef::Env(n) => write!(f, "${{env.{n}}}"),
            VarRef::Secret(n) => write!(f, "${{secret.{n}}}"),
            VarRef::Var(n) => write!(f, "${{{n}}}"),
        }
    }
}

/// A transformation applied to a value: `${email | urlencode}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Percent-encodes for a URL query or path segment.
    UrlEncode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Ref(VarRef, Option<Filter>),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed `${{` in `{0}`: expected `}}`")]
    Unclosed(String),
    #[error("empty `${{}}` in `{0}`")]
    Empty(String),
    #[error("unknown built-in `${{{0}}}`: expected run.id, run.callback_token, uuid, now, now.unix, env.NAME or secret.NAME")]
    UnknownBuiltin(String),
    #[error("invalid variable name `{0}`: use letters, digits, `_` and `-`")]
    BadName(String),
    #[error("unknown filter `{0}`: expected `urlencode`")]
    UnknownFilter(String),
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Template {
    /// Parses `text`; `$${` is a literal `${`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i..];
            if let Some(after_escape) = after.strip_prefix("$${") {
                lit.push_str("${");
                rest = after_escape;
            } else if let Some(body) = after.strip_prefix("${") {
                let end = body.find('}').ok_or_else(|| TemplateError::Unclosed(text.to_string()))?;
                let (name, filter) = match body[..end].split_once('|') {
                    Some((n, f)) => match f.trim() {
                        "urlencode" => (n.trim(), Some(Filter::UrlEncode)),
                        other => return Err(TemplateError::UnknownFilter(other.to_string())),
                    },
                    None => (body[..end].trim(), None),
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Ref(Self::parse_ref(name, text)?, filter));
                rest = &body[end + 1..];
            } else {
                lit.push('$');
                rest = &after[1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    fn parse_ref(name: &str, text: &str) -> Result<VarRef, TemplateError> {
        if name.is_empty() {
            return Err(TemplateError::Empty(text.to_string()));
        }
        let named = |n: &str, make: fn(String) -> VarRef| {
            if valid_name(n) {
                Ok(make(n.to_string()))
            } else {
                Err(TemplateError::BadName(n.to_string()))
            }
        };
        match name {
            "run.id" => Ok(VarRef::RunId),
            "run.callback_token" => Ok(VarRef::CallbackToken),
            "uuid" => Ok(VarRef::Uuid),
            "now" => Ok(VarRef::Now),
            "now.unix" => Ok(VarRef::NowUnix),
            _ => {
                if let Some(n) = name.strip_prefix("env.") {
                    named(n, VarRef::Env)
                } else if let Some(n) = name.strip_prefix("secret.") {
                    named(n, VarRef::Secret)
                } else if name.contains('.') {
                    Err(TemplateError::UnknownBuiltin(name.to_string()))
                } else {
                    named(name, VarRef::Var)
                }
            }
        }
    }

    pub fn refs(&self) -> impl Iterator<Item = &VarRef> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r, _) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// Expands with `lookup`, which resolves each reference or says why not.
    pub fn render<E>(&self, mut lookup: impl FnMut(&VarRef) -> Result<String, E>) -> Result<String, E> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Ref(r, None) => out.push_str(&lookup(r)?),
                Part::Ref(r, Some(Filter::UrlEncode)) => out.extend(url::form_urlencoded::byte_serialize(lookup(r)?.as_bytes())),
            }
        }
        Ok(out)
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }
}

/// A JSON value whose keys and string leaves are templates, parsed once at load time.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    Literal(serde_json::Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(Template, JsonTemplate)>),
}

impl JsonTemplate {
    /// Builds the tree, parsing each string with `parse` (which reports problems).
    pub fn build(v: &serde_json::Value, parse: &mut impl FnMut(&str) -> Template) -> JsonTemplate {
        use serde_json::Value;
        match v {
            Value::String(s) => JsonTemplate::String(parse(s)),
            Value::Array(a) => JsonTemplate::Array(a.iter().map(|x| Self::build(x, parse)).collect()),
            Value::Object(o) => JsonTemplate::Object(o.iter().map(|(k, x)| (parse(k), Self::build(x, parse))).collect()),
            other => JsonTemplate::Literal(other.clone()),
        }
    }

    /// Expands every template with `render`.
    pub fn render<E>(&self, render: &mut impl FnMut(&Template) -> Result<String, E>) -> Result<serde_json::Value, E> {
        use serde_json::Value;
        Ok(match self {
            JsonTemplate::Literal(v) => v.clone(),
            JsonTemplate::String(t) => Value::String(render(t)?),
            JsonTemplate::Array(a) => Value::Array(a.iter().map(|x| x.render(render)).collect::<Result<_, _>>()?),
            JsonTemplate::Object(o) => {
                let mut out = serde_json::Map::new();
                for (k, x) in o {
                    out.insert(render(k)?, x.render(render)?);
                }
                Value::Object(out)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_refs_and_escapes() {
        let t = Template::parse("a ${run.id}-${token} $${x} $5 ${env.HOME}").unwrap();
        assert_eq!(
            t.refs().cloned().collect::<Vec<_>>(),
            vec![VarRef::RunId, VarRef::Var("token".into()), VarRef::Env("HOME".into())]
        );
        let out: Result<String, ()> = t.render(|r| Ok(format!("<{r}>")));
        assert_eq!(out.unwrap(), "a <${run.id}>-<${token}> ${x} $5 <${env.HOME}>");
    }

    #[test]
    fn urlencode_filter_encodes_query_values() {
        let t = Template::parse("q=${email | urlencode}").unwrap();
        let out: Result<String, ()> = t.render(|_| Ok("lead+1@x.test".into()));
        assert_eq!(out.unwrap(), "q=lead%2B1%40x.test");
        assert_eq!(Template::parse("${a | shout}").unwrap_err(), TemplateError::UnknownFilter("shout".into()));
    }

    #[test]
    fn rejects_bad_refs() {
        assert_eq!(Template::parse("${run.idd}").unwrap_err(), TemplateError::UnknownBuiltin("run.idd".into()));
        assert!(matches!(Template::parse("${oops"), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("${}"), Err(TemplateError::Empty(_))));
        assert!(matches!(Template::parse("${a b}"), Err(TemplateError::BadName(_))));
    }
}
