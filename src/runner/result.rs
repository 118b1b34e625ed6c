//! Run results now live in the shared vocabulary; re-exported for existing callers.

pub use crate::vocab::{ErrorType, Outcome, Phase, RunResult, StepResult};
