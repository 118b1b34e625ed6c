//! Vantage: a synthetic black-box probe agent.
//!
//! Data flows one way: config → scheduled run → steps → result → telemetry.
//! Imports point one way too, each layer only down (README "Layout"):
//! - [`vocab`]: the shared vocabulary (outcomes, errors, phases, results); a leaf
//! - [`config`]: `agent`/`model`/`template` are the model layer; `validate`
//!   and `load` compile probe files into journeys through the step registry
//! - [`steps`]: one file per step kind, registered in one list in `steps/mod.rs`;
//!   also the run context and step compilation
//! - [`browser`]: the chromedriver the browser steps share, and their sessions
//! - [`runner`]: runs a journey's steps and `finally` steps, spans, results
//! - [`scheduler`]: when journeys run
//! - [`telemetry`]: OTLP metrics and traces, and the Prometheus view
//! - [`daemon`]: signals, systemd notify, reload, admin HTTP
//! - [`statuspage`]: the status page on the admin endpoint (run history for people)
//! - `demo` (cargo feature `demo`, on by default): the embedded demo target,
//!   beside the layers, using only their public surface
//! - [`cli`]: the command line

pub mod browser;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod output;
pub mod runner;
pub mod scheduler;
pub mod statuspage;
pub mod steps;
pub mod telemetry;
pub mod vocab;

/// The host name, for `host.name`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// User-Agent of every request: names the agent so targets can filter synthetic traffic.
pub fn user_agent() -> String {
    format!("Vantage/{} (synthetic monitoring; +https://github.com/vantage-probe/vantage)", env!("CARGO_PKG_VERSION"))
}
