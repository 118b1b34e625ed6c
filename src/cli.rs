//! The command line: `run`, `check`, `once`, `demo`, `gameday`, `version`, and the
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
    /// JUnit XML on stdout, for CI systems: one test suite per journey, one test case per step.
    Junit,
}

/// The files `vantage schema` describes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    /// Probe files (`journeys: [...]`).
    Probes,
    /// The agent config (`agent.yaml`).
    Agent,
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
    #[command(after_help = "Examples:\n  vantage once probes/login.yaml\n  vantage once probes/ --journey login --format json\n  vantage once probes/ --list\n  vantage once probes/login.yaml --env VANTAGE_TARGET=http://127.0.0.1:8080 --credentials-dir ./creds\n  vantage once probes/ --env-file staging.env --format junit > junit.xml")]
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
        /// Set `${env.KEY}` for this run (repeatable; wins over --env-file and the process environment).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
        env: Vec<(String, String)>,
        /// Read `KEY=VALUE` lines for `${env.KEY}` from FILE (`#` comments and blank lines are ignored).
        #[arg(long, value_name = "FILE")]
        env_file: Vec<PathBuf>,
        /// Directory of secret files for `${secret.NAME}` (overrides the agent config's).
        #[arg(long, value_name = "DIR")]
        credentials_dir: Option<PathBuf>,
        /// Listen here for `callback` steps' webhooks, e.g. 127.0.0.1:9466 (overrides the agent config's).
        #[arg(long, value_name = "ADDR")]
        callback_listen: Option<std::net::SocketAddr>,
        /// List the journeys (name, interval, steps, file) and exit without running them.
        #[arg(long)]
        list: bool,
        /// Print each HTTP exchange on stderr: request and response headers and the start of each body, secrets redacted.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Start the built-in demo service on loopback and run the shipped journeys against it, live.
    #[cfg(feature = "demo")]
    #[command(after_help = "Examples:\n  vantage demo --port 8080        then, elsewhere: VANTAGE_TARGET=http://127.0.0.1:8080 vantage once probes/user-search.yaml\n  vantage demo --otlp-endpoint http://127.0.0.1:4317\n  vantage demo --gameday          inject three faults, print how fast each was known (about a minute)")]
    Demo {
        /// Run the built-in game day instead: CRM stall, ACK endpoint failing, WebSocket drop; journeys every 5s.
        #[arg(long)]
        gameday: bool,
        /// With --gameday: how long each fault is held, in seconds; below 9 (5 s interval + 4 s timeout) the CRM stall can go unnoticed.
        #[arg(long, default_value_t = 10, requires = "gameday")]
        hold: u64,
        /// With --gameday: directory for report.md, report.json and the SVG timelines (default: ./gameday-TIMESTAMP).
        #[arg(long, requires = "gameday")]
        out: Option<PathBuf>,
        /// Serve the demo service on this address (default: a free loopback port), e.g. 127.0.0.1:8080 for a scenario file.
        #[arg(long, conflicts_with = "gameday")]
        listen: Option<std::net::SocketAddr>,
        /// Serve the demo service on this loopback port (127.0.0.1:PORT), so `vantage once` can be pointed at it.
        #[arg(long, conflicts_with_all = ["gameday", "listen"])]
        port: Option<u16>,
        /// Also serve the agent's admin endpoint (/metrics, /status, /events) here, e.g. 127.0.0.1:9464 for Prometheus.
        #[arg(long, conflicts_with = "gameday")]
        admin: Option<std::net::SocketAddr>,
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
    /// Ask the running agent to reload and wait for its answer; exit 1 if it rejected the config.
    #[command(after_help = "Used by the systemd unit's ExecReload=, so `systemctl reload vantage` fails when the new config is rejected.\n\nExample:\n  vantage reload --config /etc/vantage/agent.yaml")]
    Reload {
        /// Agent config file: its `admin.listen` is where the agent is asked.
        #[arg(long, short, default_value = "/etc/vantage/agent.yaml")]
        config: PathBuf,
        /// Admin address to ask instead (`ip:port`).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Ask the agent's admin endpoint for /healthz (or /ready); exit 0 when it answers 200. For container health checks: /healthz answers 503 once the scheduler has made no progress for 10 s.
    #[command(after_help = "Example (Containerfile):\n  HEALTHCHECK CMD [\"/usr/bin/vantage\", \"health\", \"--config\", \"/etc/vantage/agent.yaml\"]")]
    Health {
        #[arg(long, short, default_value = "/etc/vantage/agent.yaml")]
        config: PathBuf,
        /// Admin address to ask instead (`ip:port`).
        #[arg(long)]
        admin: Option<String>,
        /// Ask /ready instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// Publish probe bundles: sign, verify, make a key pair.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Service-level objectives: turn the journeys' `slo` into Prometheus rules (or Sloth / OpenSLO specs).
    Slo {
        #[command(subcommand)]
        command: SloCommand,
    },
    /// Run a game day: inject each fault of SCENARIO, measure time-to-know, -detect and -recover, heal, report.
    #[command(after_help = "Example:\n  vantage gameday packaging/examples/gameday-demo.yaml --out report/\n\nBefore injecting anything it checks every agent, journey, team and alert source.\nSIGINT/SIGTERM or the scenario's `timeout` stop it early; whatever was injected is healed first.\nExit status: 0 every fault known (and paged) in time, 1 something missed or not healed, 130 interrupted.")]
    Gameday {
        /// Scenario file (YAML): agents, optional prometheus/alertmanager, faults.
        scenario: PathBuf,
        /// Directory for report.md, report.json and one SVG timeline per fault (default: ./gameday-TIMESTAMP).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the JSON Schema of probe files or of the agent config (for editors and CI validators).
    #[command(after_help = "Examples:\n  vantage schema probes > probes.schema.json\n  vantage schema agent\n\nThe .deb installs both under /usr/share/vantage/schema/; the shipped probe files name it in a\n`# yaml-language-server: $schema=...` first line, so editors complete and validate them.")]
    Schema {
        /// Which file's schema.
        #[arg(value_enum)]
        which: SchemaKind,
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

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write FILE.minisig, a minisign signature of FILE (a .tar.gz of probe files or one YAML file).
    #[command(after_help = "Example:\n  tar czf probes.tar.gz -C probes . && vantage bundle sign probes.tar.gz --key vantage.key\n\nThe signature is what `minisign -S -m probes.tar.gz` writes, so either tool can sign.")]
    Sign {
        file: PathBuf,
        /// minisign secret key (password-protected keys read MINISIGN_PASSWORD).
        #[arg(long)]
        key: PathBuf,
        /// Trusted comment stored in the signature.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Check FILE against FILE.minisig and a public key, and check the journeys in it.
    #[command(after_help = "Example:\n  vantage bundle verify probes.tar.gz --public-key vantage.pub")]
    Verify {
        file: PathBuf,
        /// minisign public key file, or the `RW…` key itself (repeatable).
        #[arg(long = "public-key", required = true)]
        public_key: Vec<String>,
    },
    /// Create an unencrypted key pair NAME.key and NAME.pub for signing bundles in automation.
    Keygen { name: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum SloCommand {
    /// Write recording and alerting rules (multiwindow burn rates with location consensus,
    /// no-results alerts, SLO metadata) and `promtool test rules` cases for them.
    #[command(
        after_help = "Examples:\n  vantage slo generate --config /etc/vantage/agent.yaml --out /etc/prometheus/vantage\n      writes rules/vantage-slo.yaml and tests/vantage-slo.test.yaml (promtool test rules)\n  vantage slo generate --config agent.yaml --format sloth > sloth.yaml\n  vantage slo generate --config agent.yaml --out /tmp/t --time-scale 60 --interval 1s\n      a time-compressed profile for tests: 1h becomes 1m, rules evaluated every second"
    )]
    Generate {
        /// Agent config (as for `run`): its `slo` defaults, locations and probe files.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Further probe files or directories.
        paths: Vec<PathBuf>,
        /// Directory to write into; default: print the rules (or spec) on stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "prometheus")]
        format: crate::slo::Format,
        /// Burn-rate windows, `PAGE;TICKET` pairs of LONG/SHORT@FACTOR.
        #[arg(long, default_value = "1h/5m@14.4,6h/30m@6;1d/2h@3,3d/6h@1")]
        windows: Option<String>,
        /// Divide every window, `for` and SLO period by N (time-compressed rules for tests).
        #[arg(long, default_value_t = 1)]
        time_scale: u32,
        /// Rule evaluation interval, as given (not scaled); default 1m, divided by --time-scale.
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
    },
}

fn init_logging(format: Option<LogFormat>, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A target's bad certificate is a probe result, reported by its step; the
    // TLS libraries would also log it as their own ERROR/WARN. Keep only their
    // real errors (rustls), and silence the verifier's per-handshake lines.
    let quiet = "rustls=error,tokio_rustls=error,rustls_platform_verifier=off";
    let filter = tracing_subscriber::EnvFilter::try_from_env("VANTAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default_level},{quiet}")));
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

/// glibc gives every thread that allocates its own heap arena (up to 8 per
/// core), and memory freed in one arena is not reused by another: with runs
/// hopping between tokio's workers that cost ~5 MB of peak RSS at 1,000
/// journeys for no speed (the scheduler benchmark measures both). An operator's
/// own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any thread of ours exists; mallopt only tunes the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Command::Run { .. } = cli.command {
        if let Some(code) = crate::init::run_as_init_if_pid1() {
            return code;
        }
        agent_binary::hand_over();
    }
    block_on(dispatch(cli))
}

/// `vantage-agent`: the same command line, for `run` only. `vantage run`
/// hands over to it ([`agent_binary`]); it links none of the other commands.
pub fn agent_main() -> i32 {
    let cli = Cli::parse();
    let Command::Run { config } = cli.command else {
        eprintln!("error: vantage-agent runs the agent only (`vantage-agent run --config FILE`); every other command is `vantage <command>`");
        return 2;
    };
    agent_binary::check_same_build();
    if let Some(code) = crate::init::run_as_init_if_pid1() {
        return code;
    }
    block_on(run_daemon(cli.log_format, config))
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(f);
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

async fn run_daemon(log_format: Option<LogFormat>, config: PathBuf) -> anyhow::Result<i32> {
    init_logging(log_format, "info");
    daemon::run(daemon::RunOptions { config: Some(config), hard_exit: true, ..Default::default() }).await
}

/// `vantage run` replaces itself (same PID, same arguments and environment)
/// with `vantage-agent` when one from the same build is installed beside it.
///
/// Why: the agent runs for weeks, and the kernel keeps resident the code pages
/// it has touched and their neighbours. Without the demo, game day, SLO
/// generator and bundle signing, the agent's binary has 2.6 MB less code, and
/// the hardened service carries none of it.
mod agent_binary {
    use std::ffi::OsString;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    /// Set by `vantage` for the agent: `BUILD_ID:PATH-OF-VANTAGE`.
    const FROM: &str = "VANTAGE_AGENT_FROM";
    /// Set by an agent of another build when it hands back: run in-process.
    const IN_PROCESS: &str = "VANTAGE_IN_PROCESS";
    pub(super) const BUILD_ID: &str = env!("VANTAGE_BUILD_ID");

    /// Where the agent binary is looked for, beside `exe` first (a cargo
    /// build), then in `../libexec/vantage/` (the .deb).
    pub(super) fn candidates(exe: &Path) -> Vec<PathBuf> {
        let Some(dir) = exe.parent() else { return Vec::new() };
        vec![dir.join("vantage-agent"), dir.join("../libexec/vantage/vantage-agent")]
    }

    /// Execs the agent binary; returns only when `run` goes on in this process.
    /// Must run before any thread is started.
    pub(super) fn hand_over() {
        if std::env::var_os(IN_PROCESS).is_some() {
            std::env::remove_var(IN_PROCESS);
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let Some(agent) = candidates(&exe).into_iter().find(|p| p.is_file()) else { return };
        let mut from = OsString::from(format!("{BUILD_ID}:"));
        from.push(&exe);
        let err = reexec(&agent, FROM, &from);
        eprintln!("warning: could not start {} ({err}); running the agent inside {}", agent.display(), exe.display());
    }

    /// In `vantage-agent`: if `vantage` of another build started it (a
    /// partial rebuild or upgrade), hand back to that `vantage` to run in-process.
    pub(super) fn check_same_build() {
        let Some(from) = std::env::var_os(FROM) else { return };
        std::env::remove_var(FROM);
        let Some((id, vantage)) = split_from(&from) else { return };
        if id == BUILD_ID {
            return;
        }
        let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "vantage-agent".into());
        eprintln!(
            "warning: {me} is from another build ({BUILD_ID}) than {} ({id}); running the agent inside vantage. Build both (`cargo build --release`) or reinstall the package.",
            vantage.display()
        );
        let err = reexec(&vantage, IN_PROCESS, "1");
        eprintln!("warning: could not hand back to {} ({err}); running this agent binary", vantage.display());
    }

    /// Replaces this process with `path`, same arguments, `var` added to the
    /// environment; returns only the error when that fails.
    fn reexec(path: &Path, var: &str, value: impl AsRef<std::ffi::OsStr>) -> std::io::Error {
        std::process::Command::new(path).args(std::env::args_os().skip(1)).env(var, value).exec()
    }

    fn split_from(v: &std::ffi::OsStr) -> Option<(String, PathBuf)> {
        let s = v.to_str()?;
        let (id, path) = s.split_once(':')?;
        Some((id.to_string(), PathBuf::from(path)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_agent_is_looked_for_beside_vantage_then_in_libexec() {
            assert_eq!(
                candidates(Path::new("/usr/bin/vantage")),
                [PathBuf::from("/usr/bin/vantage-agent"), PathBuf::from("/usr/bin/../libexec/vantage/vantage-agent")]
            );
        }

        #[test]
        fn the_handover_names_the_build_and_a_path_that_may_hold_colons() {
            let (id, path) = split_from(std::ffi::OsStr::new("0.1.0-00ff:/opt/a:b/vantage")).unwrap();
            assert_eq!((id.as_str(), path), ("0.1.0-00ff", PathBuf::from("/opt/a:b/vantage")));
            assert!(BUILD_ID.starts_with(env!("CARGO_PKG_VERSION")), "{BUILD_ID}");
            assert_eq!(split_from(std::ffi::OsStr::new("no-colon")), None);
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
        Command::Reload { config, admin } => reload(config, admin).await,
        Command::Health { config, admin, ready } => health(config, admin, ready).await,
        Command::Bundle(b) => bundle(b),
        Command::Slo { command: SloCommand::Generate { config, paths, out, format, windows, time_scale, interval } } => {
            match crate::slo::generate(&crate::slo::GenerateOptions { config, paths, out, format, windows, time_scale, interval })? {
                Ok(()) => Ok(0),
                Err(diags) => {
                    print_diagnostics(&diags);
                    Ok(1)
                }
            }
        }
        Command::Run { config } => run_daemon(cli.log_format, config).await,
        Command::Once { paths, config, journey, format, otlp_endpoint, env, env_file, credentials_dir, callback_listen, list, verbose } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "warn");
            let overrides = OnceOverrides { env, env_file, credentials_dir, callback_listen, verbose };
            once(paths, config, journey, format, otlp_endpoint, overrides, list).await
        }
        #[cfg(feature = "demo")]
        Command::Demo { gameday: true, hold, out, .. } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "error");
            crate::gameday::demo::run(out, std::time::Duration::from_secs(hold.max(1))).await
        }
        #[cfg(feature = "demo")]
        Command::Demo { otlp_endpoint, otlp_protocol, duration, listen, port, admin, .. } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "error");
            let listen = listen.or(port.map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p))));
            crate::demo::run_demo(otlp_endpoint, otlp_protocol, duration, listen, admin).await
        }
        Command::Gameday { scenario, out } => {
            init_logging(cli.log_format.or(Some(LogFormat::Text)), "warn");
            crate::gameday::run_file(&scenario, out).await
        }
        Command::Schema { which } => {
            print!("{}", match which {
                SchemaKind::Probes => crate::config::schema::probes(),
                SchemaKind::Agent => crate::config::schema::agent(),
            });
            Ok(0)
        }
        Command::Manpage { out } => {
            std::fs::create_dir_all(&out)?;
            let cmd = Cli::command();
            clap_mangen::generate_to(cmd.clone(), &out)?;
            // The main page also documents what flags cannot: files, environment, signals, exit codes.
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            page.extend_from_slice(MAN_SECTIONS.as_bytes());
            std::fs::write(out.join("vantage.1"), page)?;
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

/// Extra sections of vantage(1), in roff.
const MAN_SECTIONS: &str = r#".SH "PROBE FILES"
A probe file is YAML with a list of \fBjourneys\fR. Each journey has a \fBname\fR, an \fBinterval\fR,
an optional \fBtimeout\fR, \fBlabels\fR, \fBvars\fR, \fBsteps\fR and \fBfinally\fR steps. Each step has a
\fBname\fR, an optional \fBtimeout\fR, exactly one kind (\fBhttp\fR, \fBdns\fR, \fBtcp\fR, \fBtls\fR,
\fBwebsocket\fR, \fBeventually\fR, \fBcallback\fR, \fBbrowser\fR, \fBgrpc\fR), and optional \fBassert\fR
and \fBextract\fR blocks. Values may use templates: \fB${var}\fR, \fB${env.NAME}\fR, \fB${secret.NAME}\fR,
\fB${run.id}\fR, \fB${uuid}\fR, \fB${now}\fR. Unknown keys are errors; \fBvantage check\fR reports every
problem as \fIfile:line:column\fR. The README's "Probe files" section is the full reference.
.SH FILES
.TP
\fI/etc/vantage/agent.yaml\fR
The agent config read by \fBvantage run\fR (location, id, probes, admin and callback listeners, telemetry).
.TP
\fI/etc/vantage/probes.d/*.yaml\fR
Probe files (the default \fBprobes\fR of the shipped agent config).
.TP
\fI$CREDENTIALS_DIRECTORY\fR, or \fBcredentials_dir\fR
One file per secret, read for \fB${secret.NAME}\fR; under systemd from \fBLoadCredential=\fR.
.TP
\fI/var/lib/vantage\fR
State: browser failure artifacts (\fBartifacts_dir\fR).
.TP
\fI/lib/systemd/system/vantage.service\fR
The hardened systemd unit.
.SH ENVIRONMENT
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd; used when \fBcredentials_dir\fR is empty.
.TP
\fBOTEL_EXPORTER_OTLP_ENDPOINT\fR, \fBOTEL_EXPORTER_OTLP_PROTOCOL\fR, \fBOTEL_EXPORTER_OTLP_HEADERS\fR
OTLP export settings when the agent config sets none.
.TP
\fBVANTAGE_LOG\fR
Log filter (tracing syntax), e.g. \fBinfo\fR or \fBvantage=debug\fR.
.TP
\fBVANTAGE_CHROMEDRIVER_LOG\fR
Write chromedriver's verbose log to this file (debugging browser steps).
.TP
\fBJOURNAL_STREAM\fR, \fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR
Set by systemd: log to journald natively, report readiness, feed the watchdog.
.TP
Any \fBNAME\fR
Readable by probe files as \fB${env.NAME}\fR (\fBvantage once --env\fR and \fB--env-file\fR set them too).
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the agent config and probe files; an invalid config is rejected and the running one kept.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: no new runs, runs in progress get \fBshutdown_grace\fR, \fBfinally\fR steps run, telemetry is flushed.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success: \fBcheck\fR found no problem, every \fBonce\fR run passed, \fBrun\fR stopped cleanly.
.TP
\fB1\fR
\fBcheck\fR found problems, or a \fBonce\fR run failed.
.TP
\fB2\fR
Usage or start-up error (bad flags, unreadable config, a listener that cannot bind).
"#;

fn check(config: Option<PathBuf>, paths: Vec<PathBuf>) -> i32 {
    if config.is_none() && paths.is_empty() {
        eprintln!("error: nothing to check: give --config FILE and/or probe PATHs");
        return 2;
    }
    // Objectives that contradict the journeys (a latency threshold off the buckets, …) are problems too.
    match config::load(config.as_deref(), &paths).and_then(|l| crate::slo::resolve(&l.agent, config.as_deref(), &l.journeys).map(|_| l)) {
        Ok(l) => {
            let steps: usize = l.journeys.iter().map(|j| j.steps.len() + j.finally.len()).sum();
            if l.agent.probes.iter().any(|p| config::is_bundle_url(p)) {
                println!("ok: {} journeys, {} steps (bundles from URLs are fetched and checked by the agent)", l.journeys.len(), steps);
            } else {
                println!("ok: {} journeys, {} steps", l.journeys.len(), steps);
            }
            if let Some(m) = crate::browser::missing_for(&l.agent.browser, &l.journeys) {
                eprintln!("warning: {m}");
            }
            if config.is_some() {
                let export = match ExportSettings::resolve(&l.agent) {
                    Ok(x) => x.is_some(),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return 1;
                    }
                };
                let bundled = l.agent.probes.iter().any(|p| config::is_bundle_url(p));
                let selected = crate::scheduler::select(l.journeys, &l.agent).len();
                for w in l.agent.fleet_warnings(if bundled { selected.max(1) } else { selected }, export) {
                    eprintln!("warning: {w}");
                }
            }
            0
        }
        Err(diags) => {
            print_diagnostics(&diags);
            1
        }
    }
}

/// The admin address to talk to: `--admin`, else the config's `admin.listen`
/// (an unspecified listen address such as 0.0.0.0 is asked on loopback).
fn admin_addr(config: &std::path::Path, admin: Option<String>) -> Result<std::net::SocketAddr, i32> {
    let addr = match admin {
        Some(a) => a,
        None => match config::parse_agent(config) {
            Ok(a) if a.admin.listen.is_empty() => {
                eprintln!("error: {}: `admin.listen` is \"\": the admin endpoint is off, so there is no one to ask (for a reload, send SIGHUP; its outcome is only in the log)", config.display());
                return Err(2);
            }
            Ok(a) => a.admin.listen,
            Err(d) => {
                print_diagnostics(&d);
                return Err(1);
            }
        },
    };
    let mut addr: std::net::SocketAddr = addr.parse().map_err(|_| {
        eprintln!("error: admin address: expected `ip:port`, got `{addr}`");
        2
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Ok(addr)
}

async fn health(config: PathBuf, admin: Option<String>, ready: bool) -> anyhow::Result<i32> {
    let addr = match admin_addr(&config, admin) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let path = if ready { "/ready" } else { "/healthz" };
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).no_proxy().build()?;
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(r) if r.status().is_success() => Ok(0),
        Ok(r) => {
            let status = r.status();
            // The agent says why (for /healthz: how long the scheduler has been wedged).
            let body = tokio::time::timeout(std::time::Duration::from_secs(5), r.text()).await.ok().and_then(Result::ok).unwrap_or_default();
            let why = crate::vocab::clean_text(body.lines().next().unwrap_or("")).chars().take(200).collect::<String>();
            if why.trim().is_empty() {
                eprintln!("error: {addr}{path} answered {status}");
            } else {
                eprintln!("error: {addr}{path} answered {status}: {}", why.trim());
            }
            Ok(1)
        }
        Err(e) => {
            eprintln!("error: cannot reach {addr}{path}: {e}");
            Ok(1)
        }
    }
}

/// The admin bearer token from the agent's credentials directory, if it holds
/// one: with it set, the agent takes state-changing requests only with the
/// token, so `vantage reload` (the unit's `ExecReload=`, which sees the same
/// `$CREDENTIALS_DIRECTORY`) sends it.
fn admin_token(config: &std::path::Path) -> Option<String> {
    crate::daemon::access::read_token(&config::parse_agent(config).ok()?.credentials_dir()?)
}

async fn reload(config: PathBuf, admin: Option<String>) -> anyhow::Result<i32> {
    let addr = match admin_addr(&config, admin) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).no_proxy().build()?;
    let mut request = client.post(format!("http://{addr}/-/reload"));
    if let Some(token) = admin_token(&config) {
        request = request.bearer_auth(token);
    }
    let resp = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the agent's admin endpoint at {addr}: {e}");
            return Ok(1);
        }
    };
    let ok = resp.status().is_success();
    let body = resp.text().await.unwrap_or_default();
    if ok {
        print!("{body}");
        Ok(0)
    } else {
        eprint!("{body}");
        // The agent's reply names only where the problems are (it echoes no file
        // content over the network); the details come from the same check run here.
        if body.starts_with("reload rejected") {
            eprintln!("the same check of {}, run here:", config.display());
            check(Some(config), Vec::new());
        }
        Ok(1)
    }
}

fn bundle(cmd: BundleCommand) -> anyhow::Result<i32> {
    match cmd {
        BundleCommand::Sign { file, key, comment } => {
            let out = crate::bundle::sign_file(&file, &key, comment.as_deref())?;
            println!("wrote {}", out.display());
            Ok(0)
        }
        BundleCommand::Verify { file, public_key } => {
            let keys: Vec<String> = public_key.iter().map(|k| std::fs::read_to_string(k).unwrap_or_else(|_| k.clone())).collect();
            let files = match crate::bundle::verify_file(&file, &keys) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(1);
                }
            };
            match crate::config::validate::compile_files(&files) {
                Ok(j) => {
                    println!("ok: signature good; {} files, {} journeys", files.len(), j.len());
                    Ok(0)
                }
                Err(d) => {
                    print_diagnostics(&d);
                    Ok(1)
                }
            }
        }
        BundleCommand::Keygen { name } => {
            let (sk, pk, b64) = crate::bundle::keygen(&name)?;
            println!("wrote {} (secret: keep it out of the fleet) and {}", sk.display(), pk.display());
            println!("add to agent.yaml:\nbundles:\n  trusted_keys: [\"{b64}\"]");
            Ok(0)
        }
    }
}

/// What `once` takes from flags instead of an agent config, so a journey runs from a laptop.
struct OnceOverrides {
    env: Vec<(String, String)>,
    env_file: Vec<PathBuf>,
    credentials_dir: Option<PathBuf>,
    callback_listen: Option<std::net::SocketAddr>,
    verbose: bool,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// `KEY=VALUE` lines; `#` comments, blank lines and an `export ` prefix are allowed.
fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read the env file: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = parse_env_pair(line).map_err(|e| format!("{}:{}:1: {e}", path.display(), i + 1))?;
        let v = v.trim();
        let unquoted = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))).unwrap_or(v);
        out.push((k, unquoted.to_string()));
    }
    Ok(out)
}

async fn once(paths: Vec<PathBuf>, config: Option<PathBuf>, only: Vec<String>, format: OutputFormat, otlp_endpoint: Option<String>, o: OnceOverrides, list: bool) -> anyhow::Result<i32> {
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
    if o.credentials_dir.is_some() {
        agent.credentials_dir = o.credentials_dir;
    }
    if o.callback_listen.is_some() {
        agent.callback.listen = o.callback_listen;
    }
    let mut env_overrides = std::collections::HashMap::new();
    for f in &o.env_file {
        match read_env_file(f) {
            Ok(pairs) => env_overrides.extend(pairs),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(2);
            }
        }
    }
    env_overrides.extend(o.env);
    for name in &only {
        if !loaded.journeys.iter().any(|j| &j.name == name) {
            eprintln!("error: no journey named `{name}`");
            return Ok(1);
        }
    }
    let journeys: Vec<_> = loaded.journeys.into_iter().filter(|j| only.is_empty() || only.contains(&j.name)).collect();
    if list {
        print!("{}", crate::output::journey_list(&journeys));
        return Ok(0);
    }
    if let Some(m) = crate::browser::missing_for(&agent.browser, &journeys) {
        eprintln!("warning: {m}");
    }
    let export = ExportSettings::resolve(&agent)?;
    let telemetry = Telemetry::init(&agent, export.as_ref(), &journeys)?;
    let stop = tokio_util::sync::CancellationToken::new();
    // A port only for journeys with a callback step (`Needs`), as in `run`.
    let callbacks = match agent.callback.listen.filter(|_| crate::steps::Needs::of(&journeys).callback_listener) {
        Some(addr) => Some(crate::steps::callback::CallbackHub::start(addr, stop.clone(), None).await?),
        None => None,
    };
    let mut env = daemon::build_env(&agent, telemetry.tracer.clone(), callbacks, env_overrides)?;
    if o.verbose {
        // stderr, so `--format json|junit` output on stdout stays parseable.
        env.exchange_log = Some(Arc::new(|text: String| eprintln!("{text}")));
    }
    let env = Arc::new(env);
    let mut failed = false;
    let mut results = Vec::new();
    for j in &journeys {
        telemetry.register(j);
        let Some(r) = crate::runner::run_journey(j, env.clone(), &stop).await else { continue };
        telemetry.record(j, &r);
        failed |= r.outcome == crate::vocab::Outcome::Failure;
        match format {
            OutputFormat::Text => print!("{}", crate::output::text_width(&r, crate::output::terminal_width())),
            OutputFormat::Json => println!("{}", crate::output::json(&r)),
            OutputFormat::Junit => results.push(r),
        }
    }
    if format == OutputFormat::Junit {
        print!("{}", crate::output::junit(&results));
    }
    stop.cancel();
    env.shutdown().await;
    telemetry.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::{parse_env_pair, read_env_file};

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_env_pair("URL=http://x/?a=b").unwrap(), ("URL".to_string(), "http://x/?a=b".to_string()));
        assert_eq!(parse_env_pair("EMPTY=").unwrap(), ("EMPTY".to_string(), String::new()));
        assert_eq!(parse_env_pair("nothing").unwrap_err(), "expected KEY=VALUE, got `nothing`");
        assert!(parse_env_pair("=v").is_err());
    }

    #[test]
    fn env_files_allow_comments_export_and_quotes_and_point_at_bad_lines() {
        let dir = std::env::temp_dir().join(format!("vantage-envfile-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("staging.env");
        std::fs::write(&f, "# staging\n\nexport VANTAGE_TARGET=\"http://127.0.0.1:8080\"\nTOKEN='a b'\n").unwrap();
        assert_eq!(read_env_file(&f).unwrap(), vec![("VANTAGE_TARGET".to_string(), "http://127.0.0.1:8080".to_string()), ("TOKEN".to_string(), "a b".to_string())]);
        std::fs::write(&f, "A=1\noops\n").unwrap();
        assert_eq!(read_env_file(&f).unwrap_err(), format!("{}:2:1: expected KEY=VALUE, got `oops`", f.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
