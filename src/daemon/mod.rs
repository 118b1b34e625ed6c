//! The daemon shell: builds the run environment, starts telemetry, the
//! scheduler, the admin endpoint, and the callback listener once the loaded
//! journeys need it; handles signals, reload and systemd notify.

pub mod access;
pub mod admin;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::bundle;
use crate::config::{self, AgentConfig, Diagnostic, Journey};
use crate::runner::context::RunEnv;
use crate::scheduler::{self, RunObserver, Scheduler};
use crate::steps::callback::CallbackHub;
use crate::steps::Needs;
use crate::telemetry::{ExportSettings, Telemetry};

/// Builds what every run shares.
pub fn build_env(
    agent: &AgentConfig,
    tracer: opentelemetry_sdk::trace::Tracer,
    callbacks: Option<Arc<CallbackHub>>,
    env_overrides: HashMap<String, String>,
) -> anyhow::Result<RunEnv> {
    Ok(RunEnv::build(agent, tracer, callbacks, env_overrides))
}

/// Starts the callback listener (`callback.listen`) the first time the
/// loaded journeys need it ([`Needs::callback_listener`]), at startup or on a
/// reload; with no callback step, no port is opened.
///
/// Once started it stays until the agent stops, even when a reload removes
/// the last callback journey: a cancelled run's `finally` may still wait for
/// its webhook, and a port given up could be taken by another process before
/// a later reload needs it again (restart the agent to close it).
pub struct CallbackListener {
    env: Arc<RunEnv>,
    listen: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    telemetry: Arc<Telemetry>,
    /// Called once the listener is up (the demo points its webhook at it).
    on_ready: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
}

impl CallbackListener {
    pub fn new(env: Arc<RunEnv>, listen: Option<std::net::SocketAddr>, shutdown: CancellationToken, telemetry: Arc<Telemetry>, on_ready: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>) -> CallbackListener {
        CallbackListener { env, listen, shutdown, telemetry, on_ready }
    }

    /// Starts the listener into `env` if `needs` asks for it and none runs yet.
    /// Without `callback.listen` nothing starts: the callback steps then fail
    /// with a message naming the setting. `Err` when the address cannot be bound.
    pub fn ensure(&mut self, needs: Needs) -> Result<(), String> {
        let env = &self.env;
        let Some(addr) = self.listen.filter(|_| needs.callback_listener && env.callbacks().is_none()) else {
            return Ok(());
        };
        let t = self.telemetry.clone();
        let count: crate::steps::callback::OnRequest = Arc::new(move |result| t.record_callback(result));
        let shutdown = self.shutdown.clone();
        let hub = env.callbacks_or_start(|| {
            // `start` binds synchronously (and spawns the server): it never waits.
            let started = CallbackHub::start(addr, shutdown, Some(count));
            match futures_util::FutureExt::now_or_never(started) {
                Some(r) => r.map_err(|e| format!("cannot listen for callbacks on {addr}: {e}")),
                None => Err(format!("cannot listen for callbacks on {addr}: the listener did not start at once")),
            }
        })?;
        tracing::info!(addr = %hub.addr, "callback listener started (a journey has a callback step)");
        if let Some(f) = self.on_ready.take() {
            f(hub.addr);
        }
        Ok(())
    }
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
    /// Exit the process if shutdown overruns `shutdown_grace` + `cleanup_budget` (the CLI's `run`).
    pub hard_exit: bool,
}

/// The bundles in use, by URL (the last good one of each).
type Bundles = BTreeMap<String, bundle::Bundle>;

fn load(opts: &RunOptions, bundles: &Bundles) -> Result<config::Loaded, Vec<Diagnostic>> {
    let fetched: Vec<(PathBuf, String)> = bundles.values().flat_map(|b| b.files.iter().cloned()).collect();
    config::load_with(opts.config.as_deref(), &opts.extra_probes, &fetched)
}

fn bundle_urls(agent: &AgentConfig) -> Vec<String> {
    agent.probes.iter().filter(|p| config::is_bundle_url(p)).map(|p| p.display().to_string()).collect()
}

const STARTUP_FETCH_TIMEOUT: Duration = Duration::from_secs(8);

/// Startup: each bundle from the network, else the last good one from the state directory.
/// Returns the bundles and the result of each fetch (counted once telemetry is up).
async fn initial_bundles(fetcher: &bundle::Fetcher, urls: &[String]) -> (Bundles, Vec<bundle::FetchResult>) {
    let mut out = Bundles::new();
    let mut results = Vec::new();
    for url in urls {
        // Bounded, so that startup stays within systemd's TimeoutStartSec when a server hangs.
        let fetched = tokio::time::timeout(STARTUP_FETCH_TIMEOUT, fetcher.fetch(url, None)).await.unwrap_or_else(|_| {
            Err(bundle::FetchError { result: bundle::FetchResult::Unreachable, message: format!("GET {url}: no answer within {STARTUP_FETCH_TIMEOUT:?}"), etag: None })
        });
        match fetched {
            Ok(Some(b)) => {
                results.push(bundle::FetchResult::Updated);
                out.insert(url.clone(), b);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                results.push(e.result);
                tracing::warn!(result = e.result.as_str(), "probe bundle not fetched at startup: {}", e.message);
            }
        }
        match fetcher.cached(url) {
            Some(Ok(b)) => {
                tracing::warn!(url = %url, "running the last good bundle from the state directory");
                out.insert(url.clone(), b);
            }
            Some(Err(e)) => tracing::error!("the cached bundle of {url} is unusable: {}", e.message),
            None => tracing::error!("no cached bundle of {url}: its journeys do not run until it can be fetched"),
        }
    }
    (out, results)
}

/// Runs the agent until SIGTERM/SIGINT (or `opts.stop`). Returns the process exit code.
pub async fn run(mut opts: RunOptions) -> anyhow::Result<i32> {
    // Listener caps are a fraction of this, so inbound traffic never takes the journeys' descriptors.
    let nofile = crate::listener::raise_nofile_limit();
    let no_bundles = Bundles::new();
    let mut loaded = match opts.preloaded.take() {
        Some((agent, journeys)) => config::Loaded { agent, journeys },
        None => match load(&opts, &no_bundles) {
            Ok(l) => l,
            Err(d) => {
                print_diagnostics(&d);
                return Ok(1);
            }
        },
    };
    let mut agent = loaded.agent.clone();
    let urls = bundle_urls(&agent);
    let fetcher = if urls.is_empty() { None } else { Some(Arc::new(bundle::Fetcher::new(&agent.bundles, agent.state_dir())?)) };
    let mut bundles = Bundles::new();
    let mut startup_fetches = Vec::new();
    if let Some(f) = &fetcher {
        (bundles, startup_fetches) = initial_bundles(f, &urls).await;
        loaded = match load(&opts, &bundles) {
            Ok(l) => {
                for b in bundles.values() {
                    if let Err(e) = f.store(b) {
                        tracing::warn!("cannot keep the bundle in the state directory: {e}");
                    }
                }
                l
            }
            Err(d) => {
                // A new bundle that does not validate: run the last good ones instead, if any.
                let cached: Bundles = urls.iter().filter_map(|u| Some((u.clone(), f.cached(u)?.ok()?))).collect();
                match load(&opts, &cached) {
                    Ok(l) if !cached.is_empty() => {
                        for x in &d {
                            tracing::error!(file = %x.file.display(), line = x.line, column = x.column, "probe bundle rejected at startup: {}", x.message);
                        }
                        tracing::warn!("running the last good bundle from the state directory");
                        startup_fetches.push(bundle::FetchResult::Invalid);
                        bundles = cached;
                        l
                    }
                    _ => {
                        print_diagnostics(&d);
                        return Ok(1);
                    }
                }
            }
        };
    }
    let export = ExportSettings::resolve(&agent)?;
    let journeys = scheduler::select(loaded.journeys, &agent);
    let telemetry = Arc::new(Telemetry::init(&agent, export.as_ref(), &journeys)?);
    for r in startup_fetches {
        telemetry.record_fetch(r);
    }
    for w in agent.fleet_warnings(journeys.len(), export.is_some()) {
        tracing::warn!("{w}");
    }
    let shutdown = opts.stop.clone().unwrap_or_default();

    let env = Arc::new(build_env(&agent, telemetry.tracer.clone(), None, std::mem::take(&mut opts.env_overrides))?);
    // Only what the journeys declare (`Needs`): no callback port, no browser manager without their steps.
    let needs = Needs::of(&journeys);
    let mut callbacks = CallbackListener::new(env.clone(), agent.callback.listen, shutdown.clone(), telemetry.clone(), opts.on_callback_ready.take());
    callbacks.ensure(needs).map_err(anyhow::Error::msg)?;
    env.prepare(needs).map_err(anyhow::Error::msg)?;
    let resources = env.clone();
    if let Some(m) = crate::browser::missing_for(&agent.browser, &journeys) {
        tracing::warn!("{m}");
    }
    // Asked at each screenshot request: a reload's first browser journey makes the manager later.
    let browser_env = env.clone();
    let page = crate::statuspage::StatusPage::new(agent.status_page.clone(), agent.agent_id(), agent.location.clone(), Arc::new(move || browser_env.browser_if_made()));
    // Every finished run also goes to the admin `/events` stream.
    let events = admin::EventHub::new(admin::EVENT_BUFFER, admin::MAX_SUBSCRIBERS, shutdown.clone());
    let observer = events_observer(events.clone(), env.agent_id.clone(), env.location.clone(), opts.observer.take());
    let observer = with_page(page.clone(), Some(observer));
    let mut sched = Scheduler::new(env, telemetry.clone(), agent.concurrency, Some(observer));
    page.set_journeys(&journeys);
    let (added, _, _) = sched.apply(journeys);
    tracing::info!(
        journeys = added,
        location = %agent.location,
        agent_id = %agent.agent_id(),
        otlp = export.as_ref().map(|e| e.endpoint.as_str()).unwrap_or("off"),
        nofile,
        "vantage started"
    );

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let admin_ctx = Arc::new(admin::AdminState {
        status: sched.status(),
        stats: sched.stats(),
        telemetry: telemetry.clone(),
        reload: reload_tx,
        page: Some(page.clone()),
        events,
        credentials_dir: agent.credentials_dir(),
        liveness: admin::Liveness::new(sched.heartbeat()),
    });
    if !agent.admin.listen.is_empty() {
        let addr: std::net::SocketAddr = agent.admin.listen.parse().context("admin.listen")?;
        let bound = admin::serve(addr, admin_ctx.clone(), shutdown.clone()).await.with_context(|| format!("cannot listen on admin address {addr}"))?;
        tracing::info!(%bound, "admin endpoint listening");
    }

    let (fetched_tx, mut fetched_rx) = mpsc::channel::<(String, Result<Option<bundle::Bundle>, bundle::FetchError>)>(4);
    if let Some(f) = &fetcher {
        let etags = bundles.iter().map(|(u, b)| (u.clone(), b.etag.clone())).collect();
        spawn_bundle_fetcher(f.clone(), urls.clone(), etags, agent.bundles.interval.0, fetched_tx, shutdown.clone());
    }

    let watchdog = watchdog_interval();
    // The heartbeat must move between two watchdog checks (every half period),
    // or a healthy agent would withhold pings under a short `WatchdogSec`.
    let beat = watchdog.map_or(Duration::from_secs(1), |w| (w / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    sched.spawn_heartbeat(beat, shutdown.clone());
    if let Some(every) = watchdog {
        spawn_watchdog(sched.heartbeat(), every / 2, shutdown.clone());
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut fetch_failures = HashMap::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = shutdown.cancelled() => break,
            _ = hup.recv() => { let _ = reload(&opts, &mut agent, &mut sched, &telemetry, &page, &mut callbacks, &bundles); }
            Some(reply) = reload_rx.recv() => { let _ = reply.send(reload(&opts, &mut agent, &mut sched, &telemetry, &page, &mut callbacks, &bundles)); }
            Some((url, fetched)) = fetched_rx.recv() => {
                apply_fetched(&opts, &mut agent, &mut sched, &telemetry, &page, &mut callbacks, &mut bundles, fetcher.as_deref(), &mut fetch_failures, url, fetched);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let (grace, budget) = (agent.shutdown_grace.0, agent.cleanup_budget.0);
    if opts.hard_exit {
        // Whatever hangs (a collector, a browser), the process ends in time for systemd.
        std::thread::spawn(move || {
            std::thread::sleep(grace + budget + Duration::from_secs(1));
            eprintln!("error: shutdown overran shutdown_grace + cleanup_budget ({:?}): exiting now", grace + budget);
            std::process::exit(1);
        });
    }
    let (finally_budget, flush_budget) = split_cleanup_budget(budget);
    let started = tokio::time::Instant::now();
    let in_flight = sched.shutdown(grace, finally_budget).await;
    let left = (grace + finally_budget).saturating_sub(started.elapsed());
    if tokio::time::timeout(left.max(Duration::from_millis(200)), resources.shutdown()).await.is_err() {
        tracing::warn!("browser shutdown did not finish in time");
    }
    shutdown.cancel();
    tracing::info!(in_flight, "runs settled; flushing telemetry");
    telemetry.shutdown(flush_budget).await;
    Ok(0)
}

fn events_observer(hub: admin::EventHub, agent_id: String, location: String, inner: Option<RunObserver>) -> RunObserver {
    Arc::new(move |j, r| {
        hub.publish_with(|| admin::RunEvent::from_result(&agent_id, &location, r));
        if let Some(o) = &inner {
            o(j, r);
        }
    })
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

/// Runtime teardown after the last export (cli.rs: `shutdown_timeout`), kept inside the budget.
pub const TEARDOWN: Duration = Duration::from_millis(500);

/// Of the cleanup budget, 0.5 s is kept for process teardown, the last
/// telemetry export gets a third of the rest (1–5 s) and the `finally`
/// steps of cancelled runs everything else.
pub fn split_cleanup_budget(budget: Duration) -> (Duration, Duration) {
    let rest = budget.saturating_sub(TEARDOWN);
    let flush = (rest / 3).clamp(Duration::from_secs(1), Duration::from_secs(5)).min(rest);
    (rest - flush, flush)
}

fn spawn_bundle_fetcher(
    fetcher: Arc<bundle::Fetcher>,
    urls: Vec<String>,
    mut etags: HashMap<String, Option<String>>,
    every: Duration,
    tx: mpsc::Sender<(String, Result<Option<bundle::Bundle>, bundle::FetchError>)>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for url in &urls {
                let etag = etags.get(url).cloned().flatten();
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = fetcher.fetch(url, etag.as_deref()) => r,
                };
                // An unchanged bundle, good or broken, is not fetched and checked again;
                // a bad signature is (the signature may be published after the data).
                match &r {
                    Ok(Some(b)) => {
                        etags.insert(url.clone(), b.etag.clone());
                    }
                    Err(e) if e.etag.is_some() && e.result == bundle::FetchResult::Invalid => {
                        etags.insert(url.clone(), e.etag.clone());
                    }
                    _ => {}
                }
                if tx.send((url.clone(), r)).await.is_err() {
                    return;
                }
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn apply_fetched(
    opts: &RunOptions,
    agent: &mut AgentConfig,
    sched: &mut Scheduler,
    telemetry: &Telemetry,
    page: &crate::statuspage::StatusPage,
    callbacks: &mut CallbackListener,
    bundles: &mut Bundles,
    fetcher: Option<&bundle::Fetcher>,
    failures: &mut HashMap<String, String>,
    url: String,
    fetched: Result<Option<bundle::Bundle>, bundle::FetchError>,
) {
    if let Err(e) = &fetched {
        telemetry.record_fetch(e.result);
        // Logged when the reason changes, not at every interval of an outage.
        if failures.get(&url) != Some(&e.message) {
            tracing::warn!(url = %url, result = e.result.as_str(), "probe bundle not applied, current journeys keep running: {}", e.message);
            failures.insert(url, e.message.clone());
        }
        return;
    }
    if failures.remove(&url).is_some() {
        tracing::info!(url = %url, "probe bundle fetch works again");
    }
    let b = match fetched {
        Ok(Some(b)) => b,
        _ => return telemetry.record_fetch(bundle::FetchResult::NotModified),
    };
    if bundles.get(&url).is_some_and(|old| old.data == b.data) {
        return telemetry.record_fetch(bundle::FetchResult::NotModified);
    }
    let mut candidate = bundles.clone();
    candidate.insert(url.clone(), b.clone());
    match reload(opts, agent, sched, telemetry, page, callbacks, &candidate) {
        Ok(msg) => {
            telemetry.record_fetch(bundle::FetchResult::Updated);
            tracing::info!(url = %url, "probe bundle applied: {msg}");
            *bundles = candidate;
            if let Some(f) = fetcher {
                if let Err(e) = f.store(&b) {
                    tracing::warn!("cannot keep the bundle in the state directory: {e}");
                }
            }
        }
        Err(_) => {
            telemetry.record_fetch(bundle::FetchResult::Invalid);
            tracing::warn!(url = %url, result = "invalid", "probe bundle rejected (see the problems above), current journeys keep running");
        }
    }
}

/// What a reload did with changed agent-config fields.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AgentChanges {
    pub applied: Vec<&'static str>,
    pub need_restart: Vec<&'static str>,
}

/// Compares two agent configs field by field. `probes`, `shard`,
/// `shutdown_grace` and `cleanup_budget` apply on reload; every other changed
/// field is named as needing a restart.
pub fn agent_changes(running: &AgentConfig, new: &AgentConfig) -> AgentChanges {
    fn d<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut c = AgentChanges::default();
    let (r, n) = (running, new);
    for (name, changed) in [
        ("probes", d(&r.probes, &n.probes)),
        ("shard", d(&r.shard, &n.shard)),
        ("shutdown_grace", d(&r.shutdown_grace, &n.shutdown_grace)),
        ("cleanup_budget", d(&r.cleanup_budget, &n.cleanup_budget)),
    ] {
        if changed {
            c.applied.push(name);
        }
    }
    let o = (&r.telemetry.otlp, &n.telemetry.otlp);
    for (name, changed) in [
        ("id", d(&r.id, &n.id)),
        ("location", d(&r.location, &n.location)),
        ("concurrency", d(&r.concurrency, &n.concurrency)),
        ("step_timeout", d(&r.step_timeout, &n.step_timeout)),
        ("credentials_dir", d(&r.credentials_dir, &n.credentials_dir)),
        ("proxy", d(&r.proxy, &n.proxy)),
        ("state_dir", d(&r.state_dir, &n.state_dir)),
        ("artifacts_dir", d(&r.artifacts_dir, &n.artifacts_dir)),
        ("admin.listen", d(&r.admin.listen, &n.admin.listen)),
        ("callback.listen", d(&r.callback.listen, &n.callback.listen)),
        ("browser", d(&r.browser, &n.browser)),
        ("status_page", d(&r.status_page, &n.status_page)),
        ("bundles", d(&r.bundles, &n.bundles)),
        ("telemetry.otlp.endpoint", d(&o.0.endpoint, &o.1.endpoint)),
        ("telemetry.otlp.protocol", d(&o.0.protocol, &o.1.protocol)),
        ("telemetry.otlp.export_interval", d(&o.0.export_interval, &o.1.export_interval)),
        ("telemetry.otlp.headers", d(&o.0.headers, &o.1.headers)),
        ("telemetry.otlp.header_credentials", d(&o.0.header_credentials, &o.1.header_credentials)),
        ("telemetry.otlp.ca_file", d(&o.0.ca_file, &o.1.ca_file)),
        ("telemetry.otlp.client_cert", d(&o.0.client_cert, &o.1.client_cert)),
        ("telemetry.otlp.client_key", d(&o.0.client_key, &o.1.client_key)),
        ("telemetry.otlp.compression", d(&o.0.compression, &o.1.compression)),
        ("telemetry.otlp.max_buffered_spans", d(&o.0.max_buffered_spans, &o.1.max_buffered_spans)),
    ] {
        if changed {
            c.need_restart.push(name);
        }
    }
    c
}

/// Re-reads the config and probe files; a broken config changes nothing.
/// Agent-config fields that apply live are applied; the others are named.
#[allow(clippy::too_many_arguments)]
fn reload(opts: &RunOptions, running: &mut AgentConfig, sched: &mut Scheduler, telemetry: &Telemetry, page: &crate::statuspage::StatusPage, callbacks: &mut CallbackListener, bundles: &Bundles) -> Result<String, Vec<String>> {
    if opts.config.is_none() && opts.extra_probes.is_empty() {
        return Err(vec!["nothing to reload: the journeys are built in".into()]);
    }
    match load(opts, bundles) {
        Err(diags) => {
            telemetry.record_reload(false);
            for d in &diags {
                tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "reload rejected, old config kept: {}", d.message);
            }
            // The admin reply names only where the problems are: messages quote file contents.
            Err(diags.iter().map(|d| format!("{}:{}:{}", d.file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(), d.line, d.column)).collect())
        }
        Ok(l) => {
            let changes = agent_changes(running, &l.agent);
            let mut next = running.clone();
            if opts.config.is_some() {
                next.probes = l.agent.probes.clone();
                next.shard = l.agent.shard.clone();
                next.shutdown_grace = l.agent.shutdown_grace;
                next.cleanup_budget = l.agent.cleanup_budget;
                next.spans = l.agent.spans.clone();
            }
            let journeys = scheduler::select(l.journeys, &next);
            // A first callback journey starts the listener; if its port cannot be had, nothing changes.
            if let Err(e) = callbacks.ensure(Needs::of(&journeys)) {
                telemetry.record_reload(false);
                tracing::error!("reload rejected, old config kept: {e}");
                return Err(vec![e]);
            }
            *running = next;
            page.set_journeys(&journeys);
            let (added, changed, removed) = sched.apply(journeys);
            telemetry.record_reload(true);
            let mut msg = format!("reloaded: {added} added, {changed} changed, {removed} removed");
            if !changes.applied.is_empty() {
                msg.push_str(&format!("; applied: {}", changes.applied.join(", ")));
            }
            if !changes.need_restart.is_empty() {
                msg.push_str(&format!("; not applied, need a restart: {}", changes.need_restart.join(", ")));
                for f in &changes.need_restart {
                    tracing::warn!(field = f, "`{f}` changed: it takes effect on restart; the agent keeps running with the old value");
                }
            }
            tracing::info!(added, changed, removed, applied = %changes.applied.join(","), "config reloaded");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Port 0: the listener takes a free port when it starts (probing for a
    /// free port first races with other tests' connections).
    fn any_port() -> std::net::SocketAddr {
        ([127, 0, 0, 1], 0).into()
    }

    fn listening(addr: std::net::SocketAddr) -> bool {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    const TCP: &str = "  - name: plain\n    interval: 60s\n    steps:\n      - {name: s, tcp: {address: \"127.0.0.1:1\"}}\n";
    const HOOK: &str = "  - name: hook\n    interval: 2s\n    steps:\n      - {name: wait, callback: {within: 1500ms, token: tok-reload}}\n";

    struct Parts {
        env: Arc<RunEnv>,
        telemetry: Arc<Telemetry>,
        stop: CancellationToken,
    }

    fn parts() -> Parts {
        let telemetry = Arc::new(Telemetry::init(&AgentConfig::default(), None, &[]).expect("telemetry"));
        Parts { env: Arc::new(RunEnv::new_test()), telemetry, stop: CancellationToken::new() }
    }

    #[tokio::test]
    async fn the_callback_listener_starts_only_for_journeys_that_need_it() {
        let p = parts();
        let told = Arc::new(std::sync::Mutex::new(None));
        let t = told.clone();
        let on_ready: Box<dyn FnOnce(std::net::SocketAddr) + Send> = Box::new(move |a| *t.lock().unwrap() = Some(a));
        let mut cb = CallbackListener::new(p.env.clone(), Some(any_port()), p.stop.clone(), p.telemetry.clone(), Some(on_ready));
        let plain = crate::runner::tests::journey(&format!("journeys:\n{TCP}"));
        let hook = crate::runner::tests::journey(&format!("journeys:\n{HOOK}"));

        cb.ensure(Needs::of([&plain])).unwrap();
        assert!(p.env.callbacks().is_none(), "a port opened for a journey without a callback step");
        assert_eq!(*told.lock().unwrap(), None);

        cb.ensure(Needs::of([&plain, &hook])).unwrap();
        let hub = p.env.callbacks().expect("started for the callback journey").clone();
        let addr = hub.addr;
        assert!(addr.port() != 0 && listening(addr));
        assert_eq!(*told.lock().unwrap(), Some(addr), "on_ready told the address");

        // Kept when no journey needs it anymore, and never started twice.
        cb.ensure(Needs::of([&plain])).unwrap();
        cb.ensure(Needs::of([&hook])).unwrap();
        assert!(Arc::ptr_eq(p.env.callbacks().unwrap(), &hub) && listening(addr));

        // Without `callback.listen` nothing starts (the step's own error names the setting).
        let q = parts();
        CallbackListener::new(q.env.clone(), None, q.stop.clone(), q.telemetry.clone(), None).ensure(Needs::of([&hook])).unwrap();
        assert!(q.env.callbacks().is_none());

        // A taken port is an error naming the address.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let r = parts();
        let e = CallbackListener::new(r.env.clone(), Some(taken), r.stop.clone(), r.telemetry.clone(), None).ensure(Needs::of([&hook])).unwrap_err();
        assert!(e.starts_with(&format!("cannot listen for callbacks on {taken}: ")), "{e}");
        assert!(r.env.callbacks().is_none());
        p.stop.cancel();
    }

    /// Posts `token`'s webhook until the listener accepts it (the run registers it first).
    async fn webhook_accepted(addr: std::net::SocketAddr, token: &str) -> bool {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            let sent = client.post(format!("http://{addr}/hook?token={token}")).body("{}").timeout(Duration::from_secs(2)).send().await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_reload_that_brings_the_first_callback_journey_starts_the_listener() {
        let dir = std::env::temp_dir().join(format!("vantage-daemon-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probes = dir.join("probes.yaml");
        std::fs::write(&probes, format!("journeys:\n{TCP}")).unwrap();
        let opts = RunOptions { extra_probes: vec![probes.clone()], ..Default::default() };
        let p = parts();
        let mut cb = CallbackListener::new(p.env.clone(), Some(any_port()), p.stop.clone(), p.telemetry.clone(), None);
        let mut sched = Scheduler::new(p.env.clone(), p.telemetry.clone(), 4, None);
        let page = crate::statuspage::StatusPage::new(Default::default(), "a".into(), "l".into(), Arc::new(|| None));
        let mut agent = AgentConfig::default();
        let no_bundles = Bundles::new();

        let msg = reload(&opts, &mut agent, &mut sched, &p.telemetry, &page, &mut cb, &no_bundles).unwrap();
        assert!(msg.starts_with("reloaded: 1 added"), "{msg}");
        assert!(p.env.callbacks().is_none(), "a port opened for a journey without a callback step");

        std::fs::write(&probes, format!("journeys:\n{TCP}{HOOK}")).unwrap();
        let msg = reload(&opts, &mut agent, &mut sched, &p.telemetry, &page, &mut cb, &no_bundles).unwrap();
        assert!(msg.starts_with("reloaded: 1 added"), "{msg}");
        let addr = p.env.callbacks().expect("started by the reload").addr;
        assert!(webhook_accepted(addr, "tok-reload").await, "the new journey's run never waited on the new listener");

        // The last callback journey removed: the listener stays (see `CallbackListener`).
        std::fs::write(&probes, format!("journeys:\n{TCP}")).unwrap();
        let msg = reload(&opts, &mut agent, &mut sched, &p.telemetry, &page, &mut cb, &no_bundles).unwrap();
        assert!(msg.starts_with("reloaded: 0 added, 0 changed, 1 removed"), "{msg}");
        assert!(listening(addr));
        sched.shutdown(Duration::from_secs(1), Duration::from_secs(1)).await;

        // When the port cannot be had, the reload is rejected and the running set is kept.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let q = parts();
        let mut cb = CallbackListener::new(q.env.clone(), Some(held.local_addr().unwrap()), q.stop.clone(), q.telemetry.clone(), None);
        let mut sched = Scheduler::new(q.env.clone(), q.telemetry.clone(), 4, None);
        reload(&opts, &mut agent, &mut sched, &q.telemetry, &page, &mut cb, &no_bundles).unwrap();
        std::fs::write(&probes, format!("journeys:\n{HOOK}")).unwrap();
        let e = reload(&opts, &mut agent, &mut sched, &q.telemetry, &page, &mut cb, &no_bundles).unwrap_err();
        assert!(e[0].contains("cannot listen for callbacks"), "{e:?}");
        assert_eq!(sched.journey_names(), ["plain"]);
        sched.shutdown(Duration::from_secs(1), Duration::from_secs(1)).await;
        p.stop.cancel();
        q.stop.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }
}
