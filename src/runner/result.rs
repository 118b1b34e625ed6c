//! What a run produced: the single source for telemetry, `once` output and `/status`.

use std::time::{Duration, SystemTime};

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
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}
