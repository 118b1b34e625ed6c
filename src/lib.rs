//! Vantage: a synthetic black-box probe agent.
//!
//! Data flows one way: config → scheduled run → steps → result → telemetry.
//! Imports point one way too, each layer only down (README "Layout"):
//! - [`vocab`]: the shared vocabulary (outcomes, errors, phases, results); a leaf
//! - [`redact`]: secrets in every encoding they leave in; beside `vocab`
//! - [`config`]: `agent`/`model`/`template`/`checks` are the model layer; `validate`
//!   and `load` compile probe files into journeys through the step registry
//! - [`steps`]: one file per step kind, registered in one list in `steps/mod.rs`;
//!   also the run context and step compilation
//! - [`browser`]: the chromedriver the browser steps share, and their sessions
//! - [`runner`]: runs a journey's steps and `finally` steps, spans, results
//! - [`scheduler`]: when journeys run
//! - [`telemetry`]: OTLP metrics and traces, and the Prometheus view
//! - [`slo`]: objectives on journeys → Prometheus rules (`vantage slo generate`)
//! - [`daemon`]: signals, systemd notify, reload, admin HTTP (bearer token, Host check)
//! - [`statuspage`]: the status page on the admin endpoint (run history for people)
//! - [`listener`]: the bounded HTTP listener of the admin and callback servers; a leaf like `vocab`
//! - `demo` (cargo feature `demo`, on by default): the embedded demo target,
//!   beside the layers, using only their public surface
//! - [`gameday`]: inject faults, measure time-to-know/detect/recover (`demo --gameday` needs `demo`)
//! - [`cli`]: the command line

pub mod browser;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod listener;
#[cfg(feature = "demo")]
pub mod demo;
pub mod init;
pub mod gameday;
pub mod output;
pub mod redact;
pub mod runner;
pub mod scheduler;
pub mod slo;
pub mod statuspage;
pub mod steps;
pub mod telemetry;
pub mod vocab;

// The public surface: what a program embedding the agent uses (the demo uses
// nothing else; tests/architecture.rs checks it).
pub use browser::missing_for as browser_missing_for;
pub use config::validate::compile_files;
pub use config::{AgentConfig, Dur, Journey};
pub use daemon::{run as run_agent, RunOptions};
pub use listener::free_loopback_port;
pub use output::{fit, fold, terminal_width};
pub use scheduler::RunObserver;
pub use vocab::{escape_markup, fmt_dur, Outcome, RunResult};

/// The host name from the `gethostname` system call (for `host.name` and the
/// default agent id). Not from `/proc/sys/kernel/hostname`: the shipped unit's
/// `ProcSubset=pid` hides it, and every agent would then share one name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel NUL-terminates within it
    // (glibc truncates and terminates when the name is longer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// User-Agent of every request: names the agent so targets can filter synthetic traffic.
pub fn user_agent() -> String {
    format!("Vantage/{} (synthetic monitoring; +https://github.com/vantage-probe/vantage)", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_comes_from_the_syscall() {
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct it is given.
        assert_eq!(unsafe { libc::uname(&mut uts) }, 0);
        let node = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) }.to_string_lossy().into_owned();
        assert_eq!(super::hostname().as_deref(), Some(node.as_str()));
    }
}
