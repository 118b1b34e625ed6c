//! The run context lives with the steps (they are its users); re-exported here for existing callers.

pub use crate::steps::context::{RunContext, RunEnv, REDACTED};
