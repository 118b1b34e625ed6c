//! The scheduler: runs each journey every `interval`, first runs spread over
//! the interval by a stable hash of (agent id, journey name), never
//! overlapping a journey with itself, under a global concurrency cap.
//! What happens goes to a [`RunSink`] (telemetry implements it, above).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, Journey};
use crate::runner::context::RunEnv;
use crate::runner::result::{Outcome, RunResult};
use crate::runner::run_journey;

/// FNV-1a with a splitmix64 finish: stable across builds and platforms
/// (unlike the std hasher), and well mixed in the low bits that `%` uses.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// Where in its interval a journey first fires on this agent.
pub fn first_offset(agent_id: &str, journey: &str, interval: Duration) -> Duration {
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(stable_hash(&[agent_id, journey]) % ms)
}

/// The journeys this agent runs: those for its location and its shard.
pub fn select(journeys: Vec<Journey>, agent: &AgentConfig) -> Vec<Journey> {
    let shard = agent.shard();
    journeys
        .into_iter()
        .filter(|j| j.locations.as_ref().is_none_or(|l| l.iter().any(|x| x == &agent.location)))
        .filter(|j| match shard {
            Some((i, n)) => stable_hash(&[&j.name]) % n == i - 1,
            None => true,
        })
        .collect()
}

/// Per-journey state for `/status` and the demo table.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JourneyStatus {
    /// The journey's labels (e.g. `team`), so tools can check names against them.
    pub labels: BTreeMap<String, String>,
    pub interval_s: f64,
    pub last_outcome: Option<Outcome>,
    pub last_error_type: Option<String>,
    pub last_message: Option<String>,
    pub last_cleanup_error: Option<String>,
    pub last_run: Option<String>,
    pub last_success: Option<String>,
    pub last_duration_ms: Option<f64>,
    pub last_trace_id: Option<String>,
    pub runs: u64,
    pub failures: u64,
    pub skipped: u64,
    /// Attempts the last run took (more than 1: it needed a retry).
    pub last_attempts: Option<u32>,
    /// Failed attempts before the last run's final one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_failed_attempts: Vec<String>,
    /// Runs that needed a retry, and how many of those the retry recovered.
    pub retried: u64,
    pub recovered: u64,
}

/// Scheduler-wide figures, for `/status` and the benchmark.
#[derive(Default)]
pub struct Stats {
    pub runs_started: AtomicU64,
    pub runs_finished: AtomicU64,
    pub skipped: AtomicU64,
    lateness_us: Mutex<VecDeque<u64>>,
}

const LATENESS_SAMPLES: usize = 100_000;

impl Stats {
    fn add_lateness(&self, d: Duration) {
        let mut q = self.lateness_us.lock().expect("stats lock");
        if q.len() == LATENESS_SAMPLES {
            q.pop_front();
        }
        q.push_back(d.as_micros() as u64);
    }

    /// (p50, p99, max) lateness in milliseconds over the recent samples.
    pub fn lateness_ms(&self) -> (f64, f64, f64) {
        let mut v: Vec<u64> = self.lateness_us.lock().expect("stats lock").iter().copied().collect();
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        (at(0.5), at(0.99), *v.last().expect("non-empty") as f64 / 1000.0)
    }

    pub fn reset_lateness(&self) {
        self.lateness_us.lock().expect("stats lock").clear();
    }
}

pub type StatusBoard = Arc<Mutex<BTreeMap<String, JourneyStatus>>>;
/// Where the scheduler reports what happens to journeys and their runs.
/// The telemetry layer implements it (metrics, spans' companions); the
/// scheduler, below telemetry, only knows this trait.
pub trait RunSink: Send + Sync {
    /// A journey starts being scheduled (its series exist from now on).
    fn register(&self, j: &Journey);
    /// A journey is no longer scheduled (removed by a reload).
    fn unregister(&self, name: &str);
    /// A run finished.
    fn record(&self, j: &Journey, r: &RunResult);
    /// A tick found the previous run still going.
    fn record_skip(&self, j: &Journey);
    /// A run was cancelled (shutdown, or its journey changed or was removed).
    fn record_cancelled(&self, j: &Journey);
    /// How late a run started after its tick.
    fn record_lateness(&self, late: Duration);
}

/// Called with every finished run (the demo prints them).
pub type RunObserver = Arc<dyn Fn(&Journey, &RunResult) + Send + Sync>;

struct Shared {
    env: Arc<RunEnv>,
    telemetry: Arc<dyn RunSink>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    cancel_runs: CancellationToken,
    stats: Arc<Stats>,
    status: StatusBoard,
    observer: Option<RunObserver>,
    heartbeat: Arc<AtomicU64>,
    /// Runs in progress, by journey name (a journey never overlaps itself).
    running: Mutex<HashMap<String, Arc<Journey>>>,
    progress: Arc<Progress>,
}

struct Scheduled {
    fingerprint: u64,
    stop: CancellationToken,
    journey: Arc<Journey>,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    journeys: HashMap<String, Scheduled>,
    agent_id: String,
}

impl Scheduler {
    pub fn new(env: Arc<RunEnv>, telemetry: Arc<dyn RunSink>, concurrency: usize, observer: Option<RunObserver>) -> Scheduler {
        let agent_id = env.agent_id.clone();
        Scheduler {
            shared: Arc::new(Shared {
                env,
                telemetry,
                permits: Arc::new(Semaphore::new(concurrency.max(1))),
                tracker: TaskTracker::new(),
                cancel_runs: CancellationToken::new(),
                stats: Arc::new(Stats::default()),
                status: Arc::new(Mutex::new(BTreeMap::new())),
                observer,
                heartbeat: Arc::new(AtomicU64::new(0)),
                running: Mutex::new(HashMap::new()),
                progress: Arc::new(Progress::default()),
            }),
            journeys: HashMap::new(),
            agent_id,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn status(&self) -> StatusBoard {
        self.shared.status.clone()
    }

    /// Incremented by the scheduler's own tick; the systemd watchdog reads it.
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.shared.heartbeat.clone()
    }

    pub fn journey_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.journeys.keys().cloned().collect();
        v.sort();
        v
    }

    /// Makes `journeys` the running set: unchanged ones keep their phase and
    /// counters, changed ones restart, removed ones stop. Returns (added, changed, removed).
    pub fn apply(&mut self, journeys: Vec<Journey>) -> (usize, usize, usize) {
        // A reload may bring a kind the running journeys did not need (a first browser step).
        if let Err(e) = self.shared.env.prepare(crate::steps::Needs::of(&journeys)) {
            tracing::warn!("{e}; the steps that need it fail until it can be built");
        }
        let mut incoming: HashMap<String, Journey> = journeys.into_iter().map(|j| (j.name.clone(), j)).collect();
        let mut removed = 0;
        let names: Vec<String> = self.journeys.keys().cloned().collect();
        for name in names {
            let keep = incoming.get(&name).is_some_and(|j| j.fingerprint == self.journeys[&name].fingerprint);
            if keep {
                incoming.remove(&name);
            } else {
                let old = self.journeys.remove(&name).expect("listed");
                old.stop.cancel();
                if !incoming.contains_key(&name) {
                    removed += 1;
                    self.shared.telemetry.unregister(&name);
                    self.shared.status.lock().expect("status lock").remove(&name);
                }
            }
        }
        let (mut added, mut changed) = (0, 0);
        for (name, j) in incoming {
            if self.shared.status.lock().expect("status lock").contains_key(&name) {
                changed += 1;
            } else {
                added += 1;
            }
            self.shared.telemetry.register(&j);
            {
                let mut board = self.shared.status.lock().expect("status lock");
                let st = board.entry(name.clone()).or_default();
                st.labels = j.labels.clone();
                st.interval_s = j.interval.as_secs_f64();
            }
            let j = Arc::new(j);
            let stop = CancellationToken::new();
            let offset = first_offset(&self.agent_id, &name, j.interval);
            tokio::spawn(journey_loop(j.clone(), self.shared.clone(), stop.clone(), offset));
            self.journeys.insert(name, Scheduled { fingerprint: j.fingerprint, stop, journey: j });
        }
        (added, changed, removed)
    }

    pub fn journey(&self, name: &str) -> Option<Arc<Journey>> {
        self.journeys.get(name).map(|s| s.journey.clone())
    }

    /// Stops scheduling; lets in-flight runs finish within `grace`, then
    /// cancels them: their `finally` steps run within `cleanup`. Runs cut
    /// short are logged and counted in `synthetics.journey.cancelled`,
    /// including those whose cleanup was still going when `cleanup` ran out.
    pub async fn shutdown(self, grace: Duration, cleanup: Duration) -> usize {
        for s in self.journeys.values() {
            s.stop.cancel();
        }
        let tracker = self.shared.tracker.clone();
        tracker.close();
        let in_flight = tracker.len();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(in_flight = tracker.len(), "grace period over: cancelling in-flight runs; their finally steps get {cleanup:?}");
            self.shared.cancel_runs.cancel();
            if tokio::time::timeout(cleanup, tracker.wait()).await.is_err() {
                let abandoned: Vec<Arc<Journey>> = self.shared.running.lock().expect("running lock").drain().map(|(_, j)| j).collect();
                for j in abandoned {
                    self.shared.telemetry.record_cancelled(&j);
                    tracing::warn!(journey = %j.name, outcome = "cancelled", "run abandoned: its finally steps did not finish within the cleanup budget of {cleanup:?}");
                }
            }
        }
        in_flight
    }

    /// Ticks the heartbeat (which feeds the systemd watchdog) from the runtime
    /// the runs share, but only while the scheduler makes progress: every
    /// journey loop wakes when due and no run outlives its budget.
    pub fn spawn_heartbeat(&self, every: Duration, stop: CancellationToken) {
        let (hb, progress) = (self.shared.heartbeat.clone(), self.shared.progress.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            let mut stalled = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = t.tick() => {}
                }
                match progress.wedged(tokio::time::Instant::now()) {
                    None => {
                        stalled = false;
                        hb.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(why) if !stalled => {
                        stalled = true;
                        tracing::error!("scheduler wedged, heartbeat withheld (systemd will restart the agent): {why}");
                    }
                    Some(_) => {}
                }
            }
        });
    }

    /// The progress table the heartbeat checks.
    pub fn progress(&self) -> Arc<Progress> {
        self.shared.progress.clone()
    }
}

/// Clears a journey's "running" flag however its run task ends (even by a panic).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the watchdog heartbeat checks: every journey loop wakes when due and
/// no run outlives its journey's budget by much.
#[derive(Default)]
pub struct Progress {
    /// By loop id: the journey, when its loop must wake next, and since when a run is in flight.
    loops: Mutex<HashMap<u64, LoopProgress>>,
    next_id: AtomicU64,
}

struct LoopProgress {
    journey: String,
    due: tokio::time::Instant,
    run_started: Option<tokio::time::Instant>,
    /// How long a run may take at most: timeout, cleanup, retries and slack.
    run_budget: Duration,
}

/// How late a loop may wake, or a run overrun its budget, before the scheduler counts as wedged.
const WEDGED_AFTER: Duration = Duration::from_secs(30);

impl Progress {
    fn set(&self, id: u64, f: impl FnOnce(&mut LoopProgress)) {
        if let Some(p) = self.loops.lock().expect("progress lock").get_mut(&id) {
            f(p);
        }
    }

    fn add(&self, p: LoopProgress) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.loops.lock().expect("progress lock").insert(id, p);
        id
    }

    /// The first wedged journey and why, if any.
    pub fn wedged(&self, now: tokio::time::Instant) -> Option<String> {
        let loops = self.loops.lock().expect("progress lock");
        for p in loops.values() {
            let name = &p.journey;
            if now.saturating_duration_since(p.due) > WEDGED_AFTER {
                return Some(format!(
                    "journey `{name}`: its schedule loop is {}s overdue",
                    now.saturating_duration_since(p.due).as_secs()
                ));
            }
            if let Some(s) = p.run_started {
                let ran = now.saturating_duration_since(s);
                if ran > p.run_budget.saturating_add(WEDGED_AFTER) {
                    return Some(format!("journey `{name}`: a run has been in flight for {}s, beyond its budget of {}s", ran.as_secs(), p.run_budget.as_secs()));
                }
            }
        }
        None
    }
}

/// The most a run of `j` can take when nothing is wedged: every attempt's
/// timeout and cleanup steps, the pauses between attempts, and the permit wait.
fn run_budget(j: &Journey, default_step: Duration) -> Duration {
    let cleanup = j
        .finally
        .iter()
        .map(|s| {
            s.timeout
                .or_else(|| s.kind.default_timeout())
                .unwrap_or(default_step)
        })
        .fold(Duration::ZERO, Duration::saturating_add);
    let (n, delay) = j
        .retries
        .map_or((1, Duration::ZERO), |r| (r.attempts.max(1), r.delay));
    j.timeout
        .saturating_add(cleanup)
        .saturating_mul(n)
        .saturating_add(delay.saturating_mul(n - 1))
        .saturating_add(j.interval)
}

async fn journey_loop(j: Arc<Journey>, sh: Arc<Shared>, stop: CancellationToken, offset: Duration) {
    let running = Arc::new(AtomicBool::new(false));
    let mut next = tokio::time::Instant::now() + offset;
    let budget = run_budget(&j, sh.env.default_step_timeout);
    let id = sh.progress.add(LoopProgress {
        journey: j.name.clone(),
        due: next,
        run_started: None,
        run_budget: budget,
    });
    let _forget = Forget(sh.progress.clone(), id);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let scheduled = next;
        let now = tokio::time::Instant::now();
        next += j.interval;
        while next <= now {
            next += j.interval;
        }
        sh.progress.set(id, |p| p.due = next);
        if running.swap(true, Ordering::AcqRel) {
            sh.stats.skipped.fetch_add(1, Ordering::Relaxed);
            sh.telemetry.record_skip(&j);
            if let Some(s) = sh.status.lock().expect("status lock").get_mut(&j.name) {
                s.skipped += 1;
            }
            tracing::warn!(journey = %j.name, "previous run still in progress: tick skipped");
            continue;
        }
        let (j, sh2, running) = (j.clone(), sh.clone(), Running(running.clone()));
        sh.progress.set(id, |p| p.run_started = Some(now));
        sh.tracker.spawn(async move {
            let _running = running;
            let _done = RunDone(sh2.progress.clone(), id);
            let Ok(_permit) = sh2.permits.clone().acquire_owned().await else {
                return;
            };
            let late = tokio::time::Instant::now().saturating_duration_since(scheduled);
            sh2.stats.add_lateness(late);
            sh2.telemetry.record_lateness(late);
            sh2.stats.runs_started.fetch_add(1, Ordering::Relaxed);
            sh2.running.lock().expect("running lock").insert(j.name.clone(), j.clone());
            let result = run_journey(&j, sh2.env.clone(), &sh2.cancel_runs).await;
            sh2.stats.runs_finished.fetch_add(1, Ordering::Relaxed);
            let mine = sh2.running.lock().expect("running lock").remove(&j.name).is_some();
            match result {
                Some(r) => finish(&sh2, &j, &r),
                None if mine => {
                    sh2.telemetry.record_cancelled(&j);
                    tracing::warn!(journey = %j.name, outcome = "cancelled", "run cut short by shutdown; its finally steps ran");
                }
                None => {}
            }
        });
    }
}

/// Marks a journey's run as over (however its task ends).
struct RunDone(Arc<Progress>, u64);

impl Drop for RunDone {
    fn drop(&mut self) {
        self.0.set(self.1, |p| p.run_started = None);
    }
}

/// Removes a journey loop from the progress table when the loop ends.
struct Forget(Arc<Progress>, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.loops.lock().expect("progress lock").remove(&self.1);
    }
}

fn finish(sh: &Shared, j: &Journey, r: &RunResult) {
    sh.telemetry.record(j, r);
    log_result(r);
    {
        let mut board = sh.status.lock().expect("status lock");
        let s = board.entry(j.name.clone()).or_default();
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        s.runs += 1;
        s.last_outcome = Some(r.outcome);
        s.last_error_type = r.error_type.map(|e| e.as_str().to_string());
        s.last_message = r.message.clone();
        s.last_cleanup_error = r.cleanup_error.clone();
        s.last_duration_ms = Some(r.duration.as_secs_f64() * 1000.0);
        s.last_trace_id = Some(r.trace_id.clone());
        s.last_attempts = Some(r.attempts);
        s.last_failed_attempts = r.failed_attempts.clone();
        if r.retried() {
            s.retried += 1;
            if r.outcome != Outcome::Failure {
                s.recovered += 1;
            }
        }
        if r.outcome == Outcome::Failure {
            s.failures += 1;
        } else {
            s.last_success = Some(at.clone());
        }
        s.last_run = Some(at);
    }
    if let Some(o) = &sh.observer {
        o(j, r);
    }
}

/// One structured log line per run; journald keeps the fields.
pub fn log_result(r: &RunResult) {
    let ms = r.duration.as_secs_f64() * 1000.0;
    match r.outcome {
        Outcome::Failure => tracing::warn!(
            journey = %r.journey, run_id = %r.run_id, outcome = "failure",
            error_type = r.error_type.map(|e| e.as_str()).unwrap_or(""),
            step = r.steps.iter().find(|s| s.outcome == Outcome::Failure && !s.cleanup).map(|s| s.name.as_str()).unwrap_or(""),
            duration_ms = ms, trace_id = %r.trace_id,
            "{}", r.message.as_deref().unwrap_or("")
        ),
        o => tracing::info!(journey = %r.journey, run_id = %r.run_id, outcome = o.as_str(), duration_ms = ms, trace_id = %r.trace_id, "run finished"),
    }
    if let Some(c) = &r.cleanup_error {
        tracing::warn!(journey = %r.journey, run_id = %r.run_id, "{c}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_heartbeat_stops_when_a_loop_is_overdue_or_a_run_overruns() {
        let p = Progress::default();
        let now = tokio::time::Instant::now();
        let id = p.add(LoopProgress {
            journey: "j".into(),
            due: now + Duration::from_secs(5),
            run_started: None,
            run_budget: Duration::from_secs(10),
        });
        assert!(p.wedged(now).is_none());
        let later = now + Duration::from_secs(40);
        assert!(p
            .wedged(later)
            .unwrap()
            .contains("journey `j`: its schedule loop is 35s overdue"));
        p.set(id, |l| {
            l.due = later + Duration::from_secs(1);
            l.run_started = Some(now);
        });
        assert!(
            p.wedged(later).is_none(),
            "40s in flight is within 10s of budget and 30s of slack"
        );
        let later = later + Duration::from_millis(500);
        assert!(p
            .wedged(later)
            .unwrap()
            .contains("a run has been in flight for 40s, beyond its budget of 10s"));
        p.set(id, |l| l.run_started = None);
        assert!(p.wedged(later).is_none());
    }
}
