//! Redaction of secret values in every form they take on their way out.
//!
//! A secret leaves the agent encoded more often than verbatim: percent- or
//! form-encoded in a URL (`${x | urlencode}`), JSON- or HTML-escaped in a body
//! excerpt, base64 inside `Authorization: Basic` (`user:password`, so at any
//! byte offset), or cut short by an excerpt. [`Redactor`] knows each secret's
//! forms and replaces them all. Every output (messages, span attributes,
//! logs, `once` output, `/status`, artifacts) gets its text from
//! `RunContext::redact`, which uses this; excerpts are taken after redaction
//! ([`Redactor::excerpt`]), and a secret's prefix left just before an
//! excerpt's `…` is redacted too.
//!
//! A leaf beside `vocab` (it imports only `vocab::snippet`).

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

pub use crate::vocab::snippet;

pub const REDACTED: &str = "[REDACTED]";

/// Shorter values are not treated as secrets: they would redact innocent text everywhere.
pub const MIN_SECRET_LEN: usize = 4;
/// A secret's prefix this long is redacted wherever it appears (a typed
/// password cut short, a token split across lines).
pub const PREFIX_ANYWHERE: usize = 6;
/// A prefix this long is redacted when an excerpt's `…` cuts it.
pub const PREFIX_AT_CUT: usize = 2;
/// Base64 runs shorter than this are not matched (they could be anything).
const MIN_BASE64_CORE: usize = 6;

/// `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
/// The WHATWG userinfo set (what `url::Url` uses for `user:password@`).
const USERINFO: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'|');
/// The WHATWG query and path sets, roughly: what browsers and `url` leave alone.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');
const PATH: &AsciiSet = &QUERY.add(b'?').add(b'`').add(b'{').add(b'}');

/// The secrets of one run and the forms they take.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
    /// Every textual form of every secret, longest first.
    forms: Vec<String>,
    /// Base64 runs that only a secret (at some byte offset) produces.
    base64: Vec<String>,
    /// Prefixes of the forms: `(prefix, anywhere)`, longest first.
    prefixes: Vec<(String, bool)>,
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Marks `value` secret (ignored when shorter than [`MIN_SECRET_LEN`] bytes).
    pub fn add(&mut self, value: &str) {
        if value.len() < MIN_SECRET_LEN || self.secrets.iter().any(|s| s == value) {
            return;
        }
        self.secrets.push(value.to_string());
        for f in forms(value) {
            if !self.forms.contains(&f) {
                self.forms.push(f);
            }
        }
        self.forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.prefixes.clear();
        for f in &self.forms {
            for (end, _) in f.char_indices().skip(1) {
                let p = &f[..end];
                let n = p.chars().count();
                if n >= PREFIX_AT_CUT && !self.prefixes.iter().any(|(q, _)| q == p) {
                    self.prefixes.push((p.to_string(), n >= PREFIX_ANYWHERE));
                }
            }
        }
        // Longest first, so a shorter prefix never leaves the rest of a longer one behind.
        self.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for c in base64_cores(value.as_bytes()) {
            if !self.base64.contains(&c) {
                self.base64.push(c);
            }
        }
    }

    /// `text` with every form of every secret (and their cut or typed prefixes) replaced by `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = strip_url_passwords(text);
        if self.secrets.is_empty() {
            return out;
        }
        for f in &self.forms {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), REDACTED);
            }
        }
        out = self.redact_base64(&out);
        out = self.redact_prefixes(&out);
        out
    }

    /// `Some(redacted)` only when redaction changes `text`: spares a copy of
    /// every clean span attribute, the common case, on every run.
    pub fn redacted_if_changed(&self, text: &str) -> Option<String> {
        if self.secrets.is_empty() && !has_url_userinfo_shape(text) {
            return None;
        }
        let r = self.redact(text);
        (r != text).then_some(r)
    }

    /// The first `max` characters of the redacted `text` (redaction first, so no secret is cut in half).
    pub fn excerpt(&self, text: &str, max: usize) -> String {
        self.redact(&snippet(&self.redact(text), max))
    }

    /// A whole base64 token that contains a secret's base64 (Basic auth: `user:password`).
    fn redact_base64(&self, text: &str) -> String {
        let mut out = text.to_string();
        for core in &self.base64 {
            while let Some(at) = out.find(core.as_str()) {
                let is_b64 =
                    |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
                let start = out[..at]
                    .rfind(|c: char| !is_b64(c))
                    .map(|i| i + 1)
                    .unwrap_or(0);
                let end = out[at..]
                    .find(|c: char| !is_b64(c))
                    .map(|i| at + i)
                    .unwrap_or(out.len());
                out.replace_range(start..end, REDACTED);
            }
        }
        out
    }

    /// Prefixes of a secret form: long ones anywhere, short ones where an excerpt's `…` cut them.
    fn redact_prefixes(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (p, anywhere) in &self.prefixes {
            if *anywhere {
                if out.contains(p.as_str()) {
                    out = out.replace(p.as_str(), REDACTED);
                }
            } else {
                let cut = format!("{p}…");
                if out.contains(&cut) {
                    out = out.replace(&cut, &format!("{REDACTED}…"));
                }
            }
        }
        out
    }
}

/// Whether `text` could hold `scheme://user:password@` at all (the regex needs both).
fn has_url_userinfo_shape(text: &str) -> bool {
    text.contains("://") && text.contains('@')
}

/// `scheme://user:password@host` → `scheme://user:[REDACTED]@host`, secret or not
/// (OpenTelemetry's `url.full` must not carry credentials either).
pub fn strip_url_passwords(text: &str) -> String {
    static USERINFO_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\[\]]*):([^/\s@]*)@")
            .expect("valid regex")
    });
    if !has_url_userinfo_shape(text) {
        return text.to_string();
    }
    USERINFO_RE
        .replace_all(text, format!("${{1}}:{REDACTED}@").as_str())
        .into_owned()
}

/// The textual forms a value takes in URLs, JSON, HTML and form bodies.
fn forms(v: &str) -> Vec<String> {
    let mut out = vec![v.to_string()];
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    // Percent-encoded by the usual sets, with upper- and lower-case hex.
    for set in [NON_ALPHANUMERIC, COMPONENT, USERINFO, PATH, QUERY] {
        let e = utf8_percent_encode(v, set).to_string();
        push(lower_hex(&e));
        push(e);
    }
    let form: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
    push(lower_hex(&form));
    push(form);
    // JSON: serde's escaping, plus the `\/` and `\u003c` styles other encoders use.
    let json = serde_json::to_string(v).unwrap_or_default();
    let json = json[1..json.len() - 1].to_string();
    push(json.replace('/', "\\/"));
    let mut ascii = String::new();
    for c in json.chars() {
        if c.is_ascii() && !matches!(c, '<' | '>' | '&' | '\'') {
            ascii.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                ascii.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    push(ascii.to_uppercase_hex());
    push(ascii);
    push(json);
    // HTML: named and numeric entities.
    let html = |apos: &str, quot: &str| {
        v.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', quot)
            .replace('\'', apos)
    };
    push(html("&#39;", "&quot;"));
    push(html("&#x27;", "&#34;"));
    push(html("&apos;", "&quot;"));
    out.retain(|s| !s.is_empty());
    out
}

trait UpperHex {
    fn to_uppercase_hex(&self) -> String;
}

impl UpperHex for String {
    /// `\u003c` → `\u003C`.
    fn to_uppercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut rest = self.as_str();
        while let Some(i) = rest.find("\\u") {
            out.push_str(&rest[..i + 2]);
            let hex: String = rest[i + 2..].chars().take(4).collect();
            out.push_str(&hex.to_ascii_uppercase());
            rest = &rest[i + 2 + hex.len()..];
        }
        out.push_str(rest);
        out
    }
}

/// `%2f` for `%2F`: some encoders write lower-case hex.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hex_left = 0;
    for c in s.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            if c == '%' {
                hex_left = 2;
            }
            out.push(c);
        }
    }
    out
}

/// For each byte offset 0..3 and alphabet, the base64 characters fully
/// determined by the secret's bytes: what appears in the encoding of any text
/// that contains the secret (`user:secret`, `secret:x`, …).
fn base64_cores(v: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..3usize {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(v);
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE,
        ] {
            let enc = engine.encode(&buf);
            let chars: Vec<char> = enc.chars().collect();
            // Character j holds bits 6j..6j+6 of the stream; the secret holds bits 8k..8(k+n).
            let first = (8 * k).div_ceil(6);
            let end_bit = 8 * (k + v.len());
            let last = if end_bit >= 6 {
                (end_bit - 6) / 6
            } else {
                continue;
            };
            if last < first || last >= chars.len() {
                continue;
            }
            let core: String = chars[first..=last].iter().collect();
            if core.len() >= MIN_BASE64_CORE && !out.contains(&core) {
                out.push(core);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "p@ss w/rd&<\"é\">+1";

    fn r() -> Redactor {
        let mut r = Redactor::new();
        r.add(S);
        r
    }

    fn clean(out: &str) {
        assert!(!out.contains("ss w"), "{out}");
        assert!(!out.contains("ss%20w") && !out.contains("ss+w"), "{out}");
        assert!(out.contains(REDACTED), "{out}");
    }

    #[test]
    fn every_encoding_is_redacted() {
        let r = r();
        clean(&r.redact(&format!("raw {S} end")));
        let form: String = url::form_urlencoded::byte_serialize(S.as_bytes()).collect();
        clean(&r.redact(&format!("https://h/?q={form}&x=1")));
        clean(&r.redact(&format!("q={}", form.to_lowercase())));
        clean(&r.redact(&format!("p={}", utf8_percent_encode(S, NON_ALPHANUMERIC))));
        let mut u = url::Url::parse("wss://h/x").unwrap();
        u.set_username("user").unwrap();
        u.set_password(Some(S)).unwrap();
        let full = u.to_string();
        let out = r.redact(&full);
        clean(&out);
        assert!(out.starts_with("wss://user:[REDACTED]@h/"), "{out}");
        let json = serde_json::json!({ "token": S }).to_string();
        clean(&r.redact(&json));
        clean(&r.redact(&json.replace('/', "\\/")));
        let html = S
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        clean(&r.redact(&format!("<input value=\"{html}\">")));
    }

    #[test]
    fn url_passwords_are_stripped_even_when_not_marked_secret() {
        let r = Redactor::new();
        assert_eq!(
            r.redact("wss://bob:pa%40ss@h:1/x?q=1 and http://h/a@b"),
            format!("wss://bob:{REDACTED}@h:1/x?q=1 and http://h/a@b")
        );
    }

    #[test]
    fn redacted_if_changed_is_none_only_for_clean_text() {
        let mut r = Redactor::new();
        assert_eq!(r.redacted_if_changed("http://127.0.0.1:8080/ok"), None);
        assert_eq!(
            r.redacted_if_changed("http://bob:pw@h/x"),
            Some(format!("http://bob:{REDACTED}@h/x"))
        );
        assert_eq!(r.redacted_if_changed("mail bob@h"), None);
        r.add("s3cr3t-value");
        assert_eq!(r.redacted_if_changed("http://h/?k=s3cr3t-value"), Some(format!("http://h/?k={REDACTED}")));
        assert_eq!(r.redacted_if_changed("http://h/?k=other"), None);
    }

    #[test]
    fn basic_auth_base64_at_any_offset() {
        let mut r = Redactor::new();
        r.add("hunter2-secret");
        for user in ["a", "ab", "abc", "alice"] {
            let b =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:hunter2-secret"));
            let out = r.redact(&format!("Authorization: Basic {b}"));
            assert_eq!(out, format!("Authorization: Basic {REDACTED}"));
        }
    }

    #[test]
    fn prefixes_cut_by_an_excerpt_or_typed_halfway_are_redacted() {
        let mut r = Redactor::new();
        r.add("hunter2-secret-value");
        let body = format!("{}hunter2-secret-value tail", "x".repeat(195));
        // Redaction first: the excerpt never holds a part of the secret.
        let e = r.excerpt(&body, 200);
        assert!(!e.contains("hunt"), "{e}");
        // A snippet taken without the redactor still loses the cut prefix.
        let cut = snippet(&body, 198);
        assert!(cut.contains("hun…"));
        assert!(!r.redact(&cut).contains("hun…"), "{}", r.redact(&cut));
        // A password typed halfway.
        assert_eq!(
            r.redact("field shows hunter2-se"),
            format!("field shows {REDACTED}")
        );
    }

    #[test]
    fn short_values_and_innocent_text_are_left_alone() {
        let mut r = Redactor::new();
        r.add("12");
        assert!(r.is_empty());
        r.add("s3cr3t-value");
        assert_eq!(r.redact("nothing here, s3cr, 12"), "nothing here, s3cr, 12");
        assert_eq!(r.redact("got s3cr3t-value"), format!("got {REDACTED}"));
    }
}
