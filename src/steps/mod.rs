//! Step kinds. Each kind lives in its own module and implements [`StepKind`]:
//! it performs its action and returns an [`Observation`]; the shared
//! assertions and extractions then run on that observation.

pub mod assertions;
pub mod browser;
pub mod callback;
pub mod dns;
pub mod eventually;
pub mod extract;
pub mod http;
pub mod net;
pub mod tcp;
pub mod tls;
pub mod websocket;

use std::fmt;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use opentelemetry::KeyValue;

use crate::runner::context::RunContext;
use crate::runner::result::{ErrorType, Phase};

/// The one interface every step kind implements.
pub trait StepKind: Send + Sync + fmt::Debug {
    /// `http`, `dns`, …: the `step.kind` attribute.
    fn kind(&self) -> &'static str;
    /// Performs the step once. Timeouts are applied by the caller.
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>>;
    /// Error types this step can end with, so their series exist from startup.
    fn error_types(&self) -> &'static [ErrorType];
    /// Step timeout when the step sets none (kinds that wait on purpose need longer).
    fn default_timeout(&self) -> Option<Duration> {
        None
    }
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
        self.observation = Some(Box::new(PartialObservation {
            phases: obs.phases.clone(),
            attributes: obs.attributes.clone(),
            cert_not_after: obs.cert_not_after,
            attempts: obs.attempts,
        }));
        self
    }
}

/// Shortens text for messages: first `max` characters, and a note of what was cut.
pub fn snippet(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let count = flat.chars().count();
    if count <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}… ({count} chars)")
    }
}
