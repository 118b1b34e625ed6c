//! The config value types every layer above shares, exactly as users write
//! them: durations, sizes, status sets, and the `assert` / `extract` blocks
//! every step has. Every struct denies unknown keys so a typo is an error with
//! a location, never a silently ignored field. Each step kind's own config
//! struct lives in its file under `src/steps/`; the journey and step structs
//! that hold them are generated/defined above (`steps/mod.rs`, `validate.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertSpec {
    pub status: Option<StatusSet>,
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(schema_with = "one_or_many_schema")]
    pub body_contains: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(schema_with = "one_or_many_schema")]
    pub body_not_contains: Vec<String>,
    pub body_regex: Option<String>,
    #[serde(default)]
    pub json: Vec<JsonAssert>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderAssert>,
    pub max_duration: Option<Dur>,
    /// Slower than this (but within `max_duration`) marks the run degraded.
    pub degraded_after: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonAssert {
    /// JSONPath (`$.a.b`) or JSON pointer (`/a/b`).
    pub path: String,
    pub equals: Option<serde_json::Value>,
    pub exists: Option<bool>,
    pub matches: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderAssert {
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub matches: Option<String>,
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    pub json: Option<String>,
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub regex: Option<String>,
    /// Treat the value as a secret: redacted everywhere it would be shown.
    #[serde(default)]
    pub secret: bool,
}

/// For `#[serde(default = ...)]` of flags that are on unless turned off.
pub fn default_true() -> bool {
    true
}

/// No duration in a config means more than a year; larger ones are typos
/// (and `Instant + d` would overflow on some).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// No size in a config means more than this.
pub const MAX_BYTE_SIZE: u64 = 1 << 40;

/// A duration written the human way: `500ms`, `10s`, `1m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(s.trim()).map_err(|e| {
            de::Error::custom(format!(
                "expected a duration like `500ms`, `10s` or `1m`, got `{s}` ({e})"
            ))
        })?;
        if v > MAX_DURATION {
            return Err(de::Error::custom(format!(
                "expected a duration of at most 365 days, got `{s}`"
            )));
        }
        Ok(Dur(v))
    }
}

/// A size in bytes: `65536`, `64KiB`, `1MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 65536, `64KiB` or `1MiB`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                bounded(v, &v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a size cannot be negative"))
                    .and_then(|u| bounded(u, &v.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                let v = parse_byte_size(s).ok_or_else(|| {
                    E::custom(format!(
                        "expected a size like 65536, `64KiB` or `1MiB`, got `{s}`"
                    ))
                })?;
                bounded(v, s)
            }
        }
        d.deserialize_any(V)
    }
}

fn bounded<E: de::Error>(v: u64, written: &str) -> Result<ByteSize, E> {
    if v > MAX_BYTE_SIZE {
        return Err(E::custom(format!(
            "expected a size of at most 1TiB, got `{written}`"
        )));
    }
    Ok(ByteSize(v))
}

fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "k" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Accepted status codes: `200`, `[200, 204]`, `"2xx"`, `"200-299"`, or a list mixing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| match (lo, hi) {
                (lo, hi) if lo == hi => lo.to_string(),
                (lo, hi) if lo % 100 == 0 && hi == lo + 99 => format!("{}xx", lo / 100),
                (lo, hi) => format!("{lo}-{hi}"),
            })
            .collect();
        f.write_str(&parts.join(" or "))
    }
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    if let Some(d) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        let d: u16 = d.parse().ok().filter(|d| (1..=5).contains(d))?;
        return Some((d * 100, d * 100 + 99));
    }
    if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        return (100..=599).contains(&lo).then_some(()).and((lo <= hi && hi <= 599).then_some((lo, hi)));
    }
    let code: u16 = s.parse().ok().filter(|c| (100..=599).contains(c))?;
    Some((code, code))
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "a status code (200), a class (\"2xx\"), a range (\"200-299\") or a list of them";
        impl<'de> Visitor<'de> for V {
            type Value = StatusSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusSet, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusSet, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StatusSet, E> {
                parse_status_range(s).map(|r| StatusSet(vec![r])).ok_or_else(|| E::custom(format!("expected {EXPECTED}, got `{s}`")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StatusSet, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<StatusSet>()? {
                    out.extend(item.0);
                }
                if out.is_empty() {
                    return Err(de::Error::custom(format!("expected {EXPECTED}, got an empty list")));
                }
                Ok(StatusSet(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn one_or_many_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "One string or a list of strings.",
        "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }]
    })
}

// Schemas of the hand-written value types: what their `Deserialize` accepts,
// as patterns, so editors flag `10 s econds` before `check` does.
impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a number with a unit (ns, us, ms, s, m, h, d), e.g. `500ms`, `10s`, `1m 30s`.",
            "type": "string",
            "pattern": DUR_PATTERN
        })
    }
}

/// What `humantime::parse_duration` accepts, roughly: `<n><unit>` groups.
pub const DUR_PATTERN: &str = r"^\s*(0|[0-9]+\s*[a-zA-Zµ]+(\s*[0-9]+\s*[a-zA-Zµ]+)*)\s*$";

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: a number, or a number with a unit (B, KiB/KB/k, MiB/MB/M), e.g. `64KiB`.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*[0-9]+\s*(B|KiB|KB|k|MiB|MB|M)?\s*$" }
            ]
        })
    }
}

impl JsonSchema for StatusSet {
    fn schema_name() -> Cow<'static, str> {
        "StatusSet".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let one = json_schema!({
            "anyOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": r"^\s*([1-5](xx|XX)|[1-5][0-9][0-9]\s*(-\s*[1-5][0-9][0-9])?)\s*$" }
            ]
        });
        json_schema!({
            "description": "Accepted status codes: a code (200), a class (\"2xx\"), a range (\"200-299\") or a list of them.",
            "anyOf": [one.clone(), { "type": "array", "minItems": 1, "items": one }]
        })
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets_parse_codes_classes_and_ranges() {
        let s: StatusSet = serde_saphyr::from_str("[200, \"3xx\", \"404-410\"]").unwrap();
        assert!(s.contains(200) && s.contains(302) && s.contains(409));
        assert!(!s.contains(201) && !s.contains(500));
        assert_eq!(s.to_string(), "200 or 3xx or 404-410");
        assert!(serde_saphyr::from_str::<StatusSet>("\"6xx\"").is_err());
        assert!(serde_saphyr::from_str::<StatusSet>("99").is_err());
    }

    #[test]
    fn byte_sizes_accept_units() {
        assert_eq!(parse_byte_size("64KiB"), Some(65536));
        assert_eq!(parse_byte_size("2MiB"), Some(2 * 1024 * 1024));
        assert_eq!(parse_byte_size("12 parsecs"), None);
    }
}
