//! The daemon shell: builds the run environment, starts telemetry, the
//! scheduler, the admin endpoint; handles signals, reload and systemd notify.

pub mod admin;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{self, AgentConfig, Diagnostic, Journey};
use crate::runner::context::RunEnv;
use crate::scheduler::{self, RunObserver, Scheduler};
use crate::steps::callback::CallbackHub;
use crate::telemetry::{ExportSettings, Telemetry};

/// Builds what every run shares.
pub fn build_env(
    agent: &AgentConfig,
    tracer: opentelemetry_sdk::trace::Tracer,
    callbacks: Option<Arc<CallbackHub>>,
    env_overrides: HashMap<String, String>,
) -> anyhow::Result<RunEnv> {
    Ok(RunEnv {
        agent_id: agent.agent_id(),
        location: agent.location.clone(),
        credentials_dir: agent.credentials_dir(),
        resolver: crate::steps::dns::uncached_resolver(None).map_err(anyhow::Error::msg)?,
        tls: crate::steps::tls::TlsConfigs::new().map_err(anyhow::Error::msg).context("TLS setup")?,
        tracer,
        user_agent: crate::user_agent(),
        default_step_timeout: agent.step_timeout.0,
        callbacks,
        env_overrides,
        browser: crate::browser::BrowserManager::new(&agent.browser, agent.artifacts_dir.clone()),
    })
}

/// A reload request from the admin endpoint, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, Vec<String>>>;

pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("error: {d}");
    }
    eprintln!("{} problem{} found", diags.len(), if diags.len() == 1 { "" } else { "s" });
}

/// Options for [`run`] beyond the agent config file.
#[derive(Default)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub extra_probes: Vec<PathBuf>,
    /// Pre-loaded journeys (the demo's embedded ones) instead of files.
    pub preloaded: Option<(AgentConfig, Vec<Journey>)>,
    pub env_overrides: HashMap<String, String>,
    pub observer: Option<RunObserver>,
    /// Called once the callback listener is up (the demo points its webhook at it).
    pub on_callback_ready: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
    pub stop: Option<CancellationToken>,
}

fn load(opts: &RunOptions) -> Result<config::Loaded, Vec<Diagnostic>> {
    config::load(opts.config.as_deref(), &opts.extra_probes)
}

/// Runs the agent until SIGTERM/SIGINT (or `opts.stop`). Returns the process exit code.
pub async fn run(mut opts: RunOptions) -> anyhow::Result<i32> {
    let loaded = match opts.preloaded.take() {
        Some((agent, journeys)) => config::Loaded { agent, journeys },
        None => match load(&opts) {
            Ok(l) => l,
            Err(d) => {
                print_diagnostics(&d);
                return Ok(1);
            }
        },
    };
    let agent = loaded.agent.clone();
    let export = ExportSettings::resolve(&agent);
    let journeys = scheduler::select(loaded.journeys, &agent);
    let telemetry = Arc::new(Telemetry::init(&agent, export.as_ref(), &journeys)?);
    let shutdown = opts.stop.clone().unwrap_or_default();

    let callbacks = match agent.callback.listen {
        Some(addr) => {
            let t = telemetry.clone();
            let count: crate::steps::callback::OnRequest = Arc::new(move |result| t.record_callback(result));
            Some(CallbackHub::start(addr, shutdown.clone(), Some(count)).await.with_context(|| format!("cannot listen for callbacks on {addr}"))?)
        }
        None => None,
    };
    if let (Some(h), Some(f)) = (&callbacks, opts.on_callback_ready.take()) {
        f(h.addr);
    }
    let env = Arc::new(build_env(&agent, telemetry.tracer.clone(), callbacks, std::mem::take(&mut opts.env_overrides))?);
    let browser = env.browser.clone();
    if let Some(m) = crate::browser::missing_for(&agent.browser, &journeys) {
        tracing::warn!("{m}");
    }
    let page = crate::statuspage::StatusPage::new(agent.status_page.clone(), agent.agent_id(), agent.location.clone(), Some(browser.clone()));
    let observer = with_page(page.clone(), opts.observer.take());
    let mut sched = Scheduler::new(env, telemetry.clone(), agent.concurrency, Some(observer));
    page.set_journeys(&journeys);
    let (added, _, _) = sched.apply(journeys);
    tracing::info!(
        journeys = added,
        location = %agent.location,
        agent_id = %agent.agent_id(),
        otlp = export.as_ref().map(|e| e.endpoint.as_str()).unwrap_or("off"),
        "vantage started"
    );

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let admin_ctx = Arc::new(admin::AdminState {
        status: sched.status(),
        stats: sched.stats(),
        telemetry: telemetry.clone(),
        reload: reload_tx,
        page: Some(page.clone()),
    });
    if !agent.admin.listen.is_empty() {
        let addr: std::net::SocketAddr = agent.admin.listen.parse().context("admin.listen")?;
        let bound = admin::serve(addr, admin_ctx.clone(), shutdown.clone()).await.with_context(|| format!("cannot listen on admin address {addr}"))?;
        tracing::info!(%bound, "admin endpoint listening");
    }

    let watchdog = watchdog_interval();
    sched.spawn_heartbeat(Duration::from_secs(1), shutdown.clone());
    if let Some(every) = watchdog {
        spawn_watchdog(sched.heartbeat(), every / 2, shutdown.clone());
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = shutdown.cancelled() => break,
            _ = hup.recv() => { let _ = reload(&opts, &agent, &mut sched, &telemetry, &page); }
            Some(reply) = reload_rx.recv() => { let _ = reply.send(reload(&opts, &agent, &mut sched, &telemetry, &page)); }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let grace = agent.shutdown_grace.0;
    let in_flight = sched.shutdown(grace).await;
    browser.shutdown().await;
    shutdown.cancel();
    tracing::info!(in_flight, "runs settled; flushing telemetry");
    telemetry.shutdown(Duration::from_secs(5)).await;
    Ok(0)
}

/// Feeds every finished run to the status page, then to the caller's observer.
fn with_page(page: Arc<crate::statuspage::StatusPage>, then: Option<RunObserver>) -> RunObserver {
    Arc::new(move |j, r| {
        page.record(r);
        if let Some(o) = &then {
            o(j, r);
        }
    })
}

/// Re-reads the config and probe files; a broken config changes nothing.
fn reload(opts: &RunOptions, running: &AgentConfig, sched: &mut Scheduler, telemetry: &Telemetry, page: &crate::statuspage::StatusPage) -> Result<String, Vec<String>> {
    if opts.config.is_none() && opts.extra_probes.is_empty() {
        return Err(vec!["nothing to reload: the journeys are built in".into()]);
    }
    match load(opts) {
        Err(diags) => {
            telemetry.record_reload(false);
            for d in &diags {
                tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "reload rejected, old config kept: {}", d.message);
            }
            Err(diags.iter().map(|d| d.to_string()).collect())
        }
        Ok(l) => {
            if l.agent.location != running.location || l.agent.id != running.id {
                tracing::warn!("`location` and `id` changes take effect on restart");
            }
            let journeys = scheduler::select(l.journeys, running);
            page.set_journeys(&journeys);
            let (added, changed, removed) = sched.apply(journeys);
            telemetry.record_reload(true);
            let msg = format!("reloaded: {added} added, {changed} changed, {removed} removed");
            tracing::info!(added, changed, removed, "config reloaded");
            Ok(msg)
        }
    }
}

fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Pings systemd only while the scheduler's heartbeat moves.
fn spawn_watchdog(heartbeat: Arc<std::sync::atomic::AtomicU64>, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut t = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = t.tick() => {}
            }
            let now = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
            if now != last {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                last = now;
            } else {
                tracing::error!("scheduler heartbeat stalled: withholding the systemd watchdog ping");
            }
        }
    });
}
