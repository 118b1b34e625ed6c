//! Vantage: a synthetic black-box probe agent.
//!
//! Data flows one way: config → scheduled run → steps → result → telemetry.
//! - [`config`]: the agent config and probe model (parse, validate, template)
//! - [`runner`]: runs a journey's steps with its context of variables
//! - [`steps`]: one module per step kind, behind [`steps::StepKind`]
//! - [`browser`]: the chromedriver the browser steps share, and their sessions
//! - [`scheduler`]: when journeys run
//! - [`telemetry`]: OTLP metrics and traces, and the Prometheus view
//! - [`daemon`]: signals, systemd notify, reload, admin HTTP
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
