//! The command line: `run`, `check`, `once`, `demo`, `version`, and the
//! packaging helpers `manpage` and `completions`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::daemon::{self, print_diagnostics};
use crate::telemetry::{ExportSettings, Telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "vantage",
    version,
    about = "Synthetic black-box probe agent: scripted user journeys over HTTP, DNS, TCP, TLS and WebSocket, exported as OTLP metrics and traces",
    after_help = "Examples:\n  vantage demo                                   run the shipped journeys against the built-in demo service\n  vantage check --config /etc/vantage/agent.yaml validate the agent config and every probe file\n  vantage once probes/login.yaml --format json   run each journey once and print the results\n  vantage run --config /etc/vantage/agent.yaml   run as a daemon (systemd: Type=notify)"
)]
pub struct Cli {
    /// Log format on stderr: `text`, or `json` for log shippers (default: json when stderr is not a terminal).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: schedule every journey until SIGTERM/SIGINT; SIGHUP reloads.
    #[command(after_help = "Example:\n  vantage run --config /etc/vantage/agent.yaml")]
    Run {
        /// Agent config file (YAML).
        #[arg(long, short, default_value = "/etc/vantage/agent.yaml")]
        config: PathBuf,
    },
    /// Validate the agent config and probe files; report every problem as file:line:column. Exit 1 on any.
    #[command(after_help = "Examples:\n  vantage check --config /etc/vantage/agent.yaml\n  vantage check probes/")]
    Check {
        /// Agent config file; its `probes` are checked too.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Further probe files or directories.
        paths: Vec<PathBuf>,
    },
    /// Run each journey once, print per-step results and timings. Exit 1 if any run failed.
    #[command(after_help = "Examples:\n  vantage once probes/login.yaml\n  vantage once probes/ --journey login --format json")]
    Once {
        /// Probe files or directories.
        paths: Vec<PathBuf>,
        /// Agent config (location, credentials_dir, callback listener, OTLP).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this journey (repeatable).
        #[arg(long, short)]
        journey: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Also export OTLP to this endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT, else off).
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Start the built-in demo service on loopback and run the shipped journeys against it, live.
    #[cfg(feature = "demo")]
    #[command(after_help = "Example:\n  vantage demo --otlp-endpoint http://127.0.0.1:4317")]
    Demo {
        /// Also export OTLP metrics and traces here.
        #[arg(long)]
        otlp_endpoint: Option<String>,
        /// `grpc` or `http/protobuf`.
        #[arg(long, default_value = "grpc")]
        otlp_protocol: String,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Print the version.
    Version,
    /// Write man pages into DIR (for packaging).
    #[command(hide = true)]
    Manpage {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write bash, zsh and fish completions into DIR (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_logging(format: Option<LogFormat>, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VANTAGE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Under systemd (JOURNAL_STREAM set), log natively to journald: each field
    // (journey, step, error_type, trace_id, …) becomes a journal field.
    if format.is_none() && std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry().with(filter).with(journald.with_syslog_identifier("vantage".into())).try_init();
            return;
        }
    }
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = b.json().flatten_event(true).try_init();
    } else {
        let _ = b.try_init();
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(dispatch(cli));
    // Do not wait for lingering connection tasks: telemetry was flushed already.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match code {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Version => {
            println!("vantage {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Check { config, paths } => Ok(check(config, paths)),
        Command::Run { config } => {
            init_logging(cli.log_format, "info");
            daemon::run(daemon::RunOptions { config: Some(config), ..Default::default() }).await
        }
        Command::Once { paths, config, journey, format, otlp_endpoint } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "warn");
            once(paths, config, journey, format, otlp_endpoint).await
        }
        #[cfg(feature = "demo")]
        Command::Demo { otlp_endpoint, otlp_protocol, duration } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "error");
            crate::demo::run_demo(otlp_endpoint, otlp_protocol, duration).await
        }
        Command::Manpage { out } => {
            std::fs::create_dir_all(&out)?;
            let cmd = Cli::command();
            clap_mangen::generate_to(cmd, &out)?;
            Ok(0)
        }
        Command::Completions { out } => {
            std::fs::create_dir_all(&out)?;
            let mut cmd = Cli::command();
            for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "vantage", &out)?;
            }
            Ok(0)
        }
    }
}

fn check(config: Option<PathBuf>, paths: Vec<PathBuf>) -> i32 {
    if config.is_none() && paths.is_empty() {
        eprintln!("error: nothing to check: give --config FILE and/or probe PATHs");
        return 2;
    }
    match config::load(config.as_deref(), &paths) {
        Ok(l) => {
            let steps: usize = l.journeys.iter().map(|j| j.steps.len() + j.finally.len()).sum();
            println!("ok: {} journeys, {} steps", l.journeys.len(), steps);
            if let Some(m) = crate::browser::missing_for(&l.agent.browser, &l.journeys) {
                eprintln!("warning: {m}");
            }
            0
        }
        Err(diags) => {
            print_diagnostics(&diags);
            1
        }
    }
}

async fn once(paths: Vec<PathBuf>, config: Option<PathBuf>, only: Vec<String>, format: OutputFormat, otlp_endpoint: Option<String>) -> anyhow::Result<i32> {
    let loaded = match config::load(config.as_deref(), &paths) {
        Ok(l) => l,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(1);
        }
    };
    let mut agent = loaded.agent;
    if otlp_endpoint.is_some() {
        agent.telemetry.otlp.endpoint = otlp_endpoint;
    }
    for name in &only {
        if !loaded.journeys.iter().any(|j| &j.name == name) {
            eprintln!("error: no journey named `{name}`");
            return Ok(1);
        }
    }
    let journeys: Vec<_> = loaded.journeys.into_iter().filter(|j| only.is_empty() || only.contains(&j.name)).collect();
    if let Some(m) = crate::browser::missing_for(&agent.browser, &journeys) {
        eprintln!("warning: {m}");
    }
    let export = ExportSettings::resolve(&agent);
    let telemetry = Telemetry::init(&agent, export.as_ref(), &journeys)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let callbacks = match agent.callback.listen {
        Some(addr) => Some(crate::steps::callback::CallbackHub::start(addr, stop.clone(), None).await?),
        None => None,
    };
    let env = Arc::new(daemon::build_env(&agent, telemetry.tracer.clone(), callbacks, Default::default())?);
    let mut failed = false;
    for j in &journeys {
        telemetry.register(j);
        let Some(r) = crate::runner::run_journey(j, env.clone(), &stop).await else { continue };
        telemetry.record(j, &r);
        failed |= r.outcome == crate::vocab::Outcome::Failure;
        match format {
            OutputFormat::Text => print!("{}", crate::output::text(&r)),
            OutputFormat::Json => println!("{}", crate::output::json(&r)),
        }
    }
    stop.cancel();
    env.browser.shutdown().await;
    telemetry.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(if failed { 1 } else { 0 })
}
