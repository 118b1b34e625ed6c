//! The shared vocabulary: what steps and runs produce (outcomes, error
//! types, phases, observations, results), step errors, config diagnostics
//! and the small formatting helpers every layer uses. A leaf: it imports
//! nothing from the crate, and everything else imports it.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Degraded,
    Failure,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Degraded, Outcome::Failure];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Degraded => "degraded",
            Outcome::Failure => "failure",
        }
    }
}

/// Low-cardinality failure category, exported as `error.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    Dns,
    Connect,
    Tls,
    Timeout,
    HttpStatus,
    Assertion,
    BodyTooLarge,
    /// The peer broke the protocol (malformed HTTP, closed mid-response, …).
    Protocol,
    /// A run-time configuration problem: missing secret or environment variable.
    Config,
    Websocket,
    Callback,
    Browser,
    Internal,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Dns => "dns",
            ErrorType::Connect => "connect",
            ErrorType::Tls => "tls",
            ErrorType::Timeout => "timeout",
            ErrorType::HttpStatus => "http_status",
            ErrorType::Assertion => "assertion",
            ErrorType::BodyTooLarge => "body_too_large",
            ErrorType::Protocol => "protocol",
            ErrorType::Config => "config",
            ErrorType::Websocket => "websocket",
            ErrorType::Callback => "callback",
            ErrorType::Browser => "browser",
            ErrorType::Internal => "internal",
        }
    }
}

/// One timed phase of a step, e.g. HTTP `connect`.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub name: String,
    pub kind: &'static str,
    /// Where the step's phases go as metrics (declared by its kind).
    #[serde(skip)]
    pub phase_recording: PhaseRecording,
    pub outcome: Outcome,
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
    pub error_type: Option<ErrorType>,
    pub error: Option<String>,
    pub phases: Vec<Phase>,
    /// Seconds until the earliest certificate in the chain expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_remaining_secs: Option<f64>,
    /// Attempts made by an `eventually` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// True for `finally:` cleanup steps.
    pub cleanup: bool,
    /// A cleanup step skipped because what it cleans up was never created.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    #[serde(skip)]
    pub started: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub journey: String,
    pub run_id: String,
    pub outcome: Outcome,
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
    pub error_type: Option<ErrorType>,
    pub message: Option<String>,
    pub steps: Vec<StepResult>,
    /// Set when a cleanup step failed; never changes `outcome`.
    pub cleanup_error: Option<String>,
    pub trace_id: String,
    #[serde(skip)]
    pub started: SystemTime,
    /// Attempts this run took (1 unless the journey has `retries` and an attempt failed).
    pub attempts: u32,
    /// `attempt N: error.type: message` of each failed attempt before the last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<String>,
}

impl RunResult {
    /// True when the run needed more than one attempt.
    pub fn retried(&self) -> bool {
        self.attempts > 1
    }
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

/// What a step saw. Assertions and extractions read it.
#[derive(Debug, Default)]
pub struct Observation {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub phases: Vec<Phase>,
    /// Span attributes specific to the kind (`http.request.method`, …).
    pub attributes: Vec<KeyValue>,
    pub cert_not_after: Option<SystemTime>,
    pub attempts: Option<u32>,
    /// Duration to report instead of the wall time (e.g. callback: since an earlier step).
    pub reported_duration: Option<Duration>,
}

impl Observation {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// A step failure: its category and a message written for the operator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub error_type: ErrorType,
    pub message: String,
    /// The observation made before the failure, when there was one (for phases and spans).
    pub observation: Option<Box<PartialObservation>>,
    /// Set when the step needed a variable an earlier (failed or skipped) step never set.
    pub unset_variable: Option<String>,
}

/// Parts of an observation worth keeping when the step fails.
#[derive(Debug, Clone, Default)]
pub struct PartialObservation {
    pub phases: Vec<Phase>,
    pub attributes: Vec<KeyValue>,
    pub cert_not_after: Option<SystemTime>,
    pub attempts: Option<u32>,
}

impl StepError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> StepError {
        StepError { error_type, message: message.into(), observation: None, unset_variable: None }
    }

    pub fn with_observation(mut self, obs: &Observation) -> StepError {
        self.observation = Some(Box::new(PartialObservation { phases: obs.phases.clone(), attributes: obs.attributes.clone(), cert_not_after: obs.cert_not_after, attempts: obs.attempts }));
        self
    }
}

/// Escapes text for HTML or XML element content and quoted attribute values.
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text from the network made safe for a message, a log line or a terminal:
/// terminal escape sequences (CSI, OSC, other `ESC x`, their 8-bit forms) are
/// dropped, other control characters and bidi overrides too, and line breaks
/// and tabs become spaces, so a peer can neither forge log lines nor drive the
/// operator's terminal.
pub fn clean_text(text: &str) -> String {
    if !text.chars().any(needs_cleaning) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\n' | '\r' | '\t' => out.push(' '),
            c if needs_cleaning(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// True when [`clean_text`] would return `text` unchanged (checked without allocating).
pub fn is_clean(text: &str) -> bool {
    !text.chars().any(needs_cleaning)
}

fn needs_cleaning(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// Skips a CSI sequence's parameters and intermediates up to its final byte.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) || !(' '..='\u{7e}').contains(&c) {
            return;
        }
    }
}

/// Skips an OSC/DCS-style string up to BEL or ST (`ESC \\` or U+009C).
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

/// Shortens text for messages: first `max` characters, and a note of what was
/// cut; cleaned of control characters and terminal escapes first ([`clean_text`]).
pub fn snippet(text: &str, max: usize) -> String {
    let flat = clean_text(text);
    let count = flat.chars().count();
    if count <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}… ({count} chars)")
    }
}

/// A run or trace id (32 hex digits) as a number; anything else is 0.
pub fn id128(s: &str) -> u128 {
    if s.len() == 32 {
        u128::from_str_radix(s, 16).unwrap_or(0)
    } else {
        0
    }
}

/// The trace id of a run's `attempt`: the run id itself for the first attempt,
/// so a run id finds its trace, and a different one for each retry, so every
/// attempt has a trace of its own. Derived rather than drawn so a kept run
/// needs to store only its run id.
pub fn attempt_trace_id(run_id: u128, attempt: u32) -> u128 {
    const MIX: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
    let mixed = run_id ^ u128::from(attempt.saturating_sub(1)).wrapping_mul(MIX);
    // All zeros is not a valid trace id.
    if mixed == 0 {
        run_id
    } else {
        mixed
    }
}

/// How a step that passed its assertions went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Slower than `degraded_after`.
    Degraded,
}

pub fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// Milliseconds a page reported, as a duration: negative or NaN is 0, absurdly
/// large saturates (a page's numbers must never panic the agent).
pub fn ms_from_page(ms: f64) -> Duration {
    if ms.is_nan() || ms <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX)
}

/// `start + d`, or a moment decades away when that overflows: durations from
/// config or a page never panic.
pub fn later(start: std::time::Instant, d: Duration) -> std::time::Instant {
    start.checked_add(d).or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86400))).unwrap_or(start)
}

/// Seconds from now until `t` (negative when past).
pub fn remaining_secs(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

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

/// One histogram (seconds) fed by a step phase.
#[derive(Debug)]
pub struct PhaseMetric {
    pub phase: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// Metric-specific attribute.
    pub attribute: Option<(&'static str, &'static str)>,
}

impl PhaseMetric {
    pub const fn new(phase: &'static str, name: &'static str, description: &'static str, attribute: Option<(&'static str, &'static str)>) -> PhaseMetric {
        PhaseMetric { phase, name, description, attribute }
    }
}

/// Where a kind's phases go as metrics (spans always carry them).
#[derive(Debug, Clone, Copy, Default)]
pub enum PhaseRecording {
    /// Span attributes only.
    #[default]
    None,
    /// Every phase into the shared `synthetics.http.phase.duration{phase}`
    /// (Prometheus: `probe_http_duration_seconds`).
    PhaseHistogram,
    /// Each listed phase into its own histogram.
    Own(&'static [PhaseMetric]),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbers_never_panic() {
        assert_eq!(ms_from_page(f64::NAN), Duration::ZERO);
        assert_eq!(ms_from_page(-5.0), Duration::ZERO);
        assert_eq!(ms_from_page(f64::INFINITY), Duration::MAX);
        assert_eq!(ms_from_page(1e300), Duration::MAX);
        assert_eq!(ms_from_page(1500.0), Duration::from_millis(1500));
    }

    #[test]
    fn durations_read_as_ms_below_a_second() {
        assert_eq!(fmt_dur(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_dur(Duration::from_millis(1500)), "1.50s");
    }

    #[test]
    fn snippets_flatten_control_characters_and_say_what_was_cut() {
        assert_eq!(snippet("a\nb", 10), "a b");
        assert_eq!(snippet("abcdef", 3), "abc… (6 chars)");
    }

    #[test]
    fn terminal_escapes_and_controls_never_reach_a_message() {
        // Colour, cursor movement, clear screen, window title (OSC, BEL- and ST-terminated), 8-bit CSI.
        let hostile = "ok\u{1b}[31mred\u{1b}[0m \u{1b}[2J\u{1b}[1;1H\u{1b}]0;pwned\u{7}\u{1b}]8;;http://x\u{1b}\\link\u{9b}2Kend";
        assert_eq!(clean_text(hostile), "okred linkend");
        // Forged log lines, NUL, DEL, backspace, bidi overrides (Trojan Source).
        assert_eq!(
            clean_text("a\r\nlevel=error fake\u{0}\u{7f}\u{8}"),
            "a  level=error fake"
        );
        assert_eq!(clean_text("abc\u{202e}fed\u{2066}x\u{2069}"), "abcfedx");
        // A lone ESC at the end, an unterminated OSC: dropped, no panic.
        assert_eq!(clean_text("tail\u{1b}"), "tail");
        assert_eq!(clean_text("x\u{1b}]0;never ends"), "x");
        assert_eq!(clean_text("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(snippet("\u{1b}[31mabcdef", 3), "abc… (6 chars)");
    }

    #[test]
    fn durations_from_config_or_a_page_never_panic() {
        let now = std::time::Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
        for ms in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0, 1e300, f64::MAX, 1.5] {
            let _ = ms_from_page(ms);
        }
        assert_eq!(ms_from_page(1500.0), Duration::from_millis(1500));
        assert_eq!(ms_from_page(-5.0), Duration::ZERO);
        assert_eq!(ms_from_page(f64::NAN), Duration::ZERO);
    }

    #[test]
    fn diagnostics_name_file_line_and_column() {
        let d = Diagnostic { file: "p.yaml".into(), line: 3, column: 5, message: "bad".into() };
        assert_eq!(d.to_string(), "p.yaml:3:5: bad");
        let d = Diagnostic { line: 0, ..d };
        assert_eq!(d.to_string(), "p.yaml: bad");
    }

    #[test]
    fn the_first_attempt_is_traced_under_the_run_id_and_each_retry_under_its_own() {
        let run = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
        assert_eq!(id128("4bf92f3577b34da6a3ce929d0e0e4736"), run);
        assert_eq!(id128("not hex, but thirty-two chars.."), 0);
        assert_eq!(id128("abc"), 0);
        assert_eq!(attempt_trace_id(run, 1), run);
        assert_eq!(attempt_trace_id(run, 0), run);
        let ids: Vec<u128> = (1..=5).map(|a| attempt_trace_id(run, a)).collect();
        for (i, a) in ids.iter().enumerate() {
            assert_ne!(*a, 0);
            assert!(ids[i + 1..].iter().all(|b| b != a), "attempt {} repeats a trace id", i + 1);
        }
        assert_eq!(attempt_trace_id(run, 3), attempt_trace_id(run, 3));
    }
}
