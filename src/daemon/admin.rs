//! Admin HTTP endpoint: health, readiness, status, Prometheus metrics, reload,
//! and `/events`, a Server-Sent Events stream of run results as runs finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::scheduler::{StatusBoard, Stats};
use crate::telemetry::Telemetry;

pub struct AdminState {
    pub status: StatusBoard,
    pub stats: Arc<Stats>,
    pub telemetry: Arc<Telemetry>,
    pub reload: mpsc::Sender<super::ReloadRequest>,
    /// The status page served at `/` and `/ui/…`.
    pub page: Option<Arc<crate::statuspage::StatusPage>>,
    pub events: EventHub,
    /// Where the admin bearer token is read from (see `access`).
    pub credentials_dir: Option<std::path::PathBuf>,
    pub liveness: Liveness,
}

/// `/healthz`'s view of the scheduler. The admin endpoint runs on a thread of
/// its own, so answering at all no longer proves the journeys' runtime is
/// alive: the scheduler's heartbeat (the one that feeds the systemd watchdog,
/// which moves at least every second while every journey loop wakes when due
/// and no run outlives its budget) must have moved within [`STALL_AFTER`].
pub struct Liveness {
    heartbeat: Arc<AtomicU64>,
    /// The heartbeat's last value and when it was first seen.
    seen: std::sync::Mutex<(u64, Instant)>,
}

/// Long enough that a loaded machine never fails a health check, short enough
/// for a container runtime or Kubernetes to restart a wedged agent promptly.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

impl Liveness {
    pub fn new(heartbeat: Arc<AtomicU64>) -> Liveness {
        let now = heartbeat.load(Ordering::Relaxed);
        Liveness { heartbeat, seen: std::sync::Mutex::new((now, Instant::now())) }
    }

    /// How long the heartbeat has stood still, once that is past [`STALL_AFTER`].
    fn stalled_for(&self, now: Instant) -> Option<Duration> {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        let mut seen = self.seen.lock().expect("liveness lock");
        if beat != seen.0 {
            *seen = (beat, now);
            return None;
        }
        let still = now.saturating_duration_since(seen.1);
        (still > STALL_AFTER).then_some(still)
    }
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    match s.liveness.stalled_for(Instant::now()) {
        None => "ok\n".into_response(),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("scheduler wedged: no progress for {} s (see the agent's log)\n", d.as_secs()),
        )
            .into_response(),
    }
}

pub async fn serve(addr: SocketAddr, state: Arc<AdminState>, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/-/reload", post(reload))
        // For benchmarks: start a fresh lateness window after warm-up.
        .route("/-/reset-stats", post(|State(s): State<Arc<AdminState>>| async move {
            s.stats.reset_lateness();
            "ok\n"
        }))
        .with_state(state.clone());
    let app = match &state.page {
        Some(p) => app.merge(crate::statuspage::router(p.clone(), shutdown.clone())),
        None => app,
    };
    let listener = crate::listener::bind(addr)?;
    let bound = listener.local_addr()?;
    let access = Arc::new(super::access::Access::new(bound, state.credentials_dir.as_deref()));
    if !access.writable() {
        tracing::warn!(%bound, "admin endpoint is not loopback-only and no `{}` credential is set: reload and other state-changing requests are refused", super::access::TOKEN_CREDENTIAL);
    }
    let app = app.layer(axum::middleware::from_fn_with_state(access, super::access::guard));
    crate::listener::spawn_on_own_thread("vantage-admin", listener, app, crate::listener::Limits::ADMIN, shutdown)?;
    Ok(bound)
}

/// `/status`: every journey's state and the scheduler's figures. Written
/// straight from the board under its lock (about a millisecond at 1,000
/// journeys): no copy of the board and no JSON tree, which at that size took
/// 3.5 MB for the length of each request.
async fn status(State(s): State<Arc<AdminState>>) -> Response {
    #[derive(serde::Serialize)]
    struct Lateness {
        p50: f64,
        p99: f64,
        max: f64,
    }
    #[derive(serde::Serialize)]
    struct Scheduler {
        runs_started: u64,
        runs_finished: u64,
        skipped: u64,
        lateness_ms: Lateness,
    }
    #[derive(serde::Serialize)]
    struct Status<'a> {
        journeys: &'a std::collections::BTreeMap<String, crate::scheduler::JourneyStatus>,
        scheduler: Scheduler,
    }
    let (p50, p99, max) = s.stats.lateness_ms();
    let scheduler = Scheduler {
        runs_started: s.stats.runs_started.load(Ordering::Relaxed),
        runs_finished: s.stats.runs_finished.load(Ordering::Relaxed),
        skipped: s.stats.skipped.load(Ordering::Relaxed),
        lateness_ms: Lateness { p50, p99, max },
    };
    let body = {
        let journeys = s.status.lock().expect("status lock");
        serde_json::to_vec(&Status { journeys: &journeys, scheduler })
    };
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the status: {e}\n")).into_response(),
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let body = s.telemetry.render_prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn reload(State(s): State<Arc<AdminState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.reload.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(msg))) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        // Where the problems are, not what they say: messages quote config values and file contents.
        Ok(Ok(Err(errors))) => (StatusCode::BAD_REQUEST, format!("reload rejected, old config kept: {} problem(s) at {}; details in the agent log\n", errors.len(), errors.join(", "))).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "reload did not complete\n").into_response(),
    }
}

/// One finished run, as `/events` sends it (`event: run`, `data:` this as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunEvent {
    pub journey: String,
    pub location: String,
    pub agent_id: String,
    /// `success`, `degraded` or `failure`.
    pub outcome: String,
    pub error_type: Option<String>,
    /// The failure message (secrets already redacted by the runner), cut to [`MAX_EVENT_MESSAGE`] bytes.
    pub message: Option<String>,
    pub duration_ms: f64,
    pub run_id: String,
    pub trace_id: String,
    /// Wall-clock start and end, Unix milliseconds.
    pub started_unix_ms: i64,
    pub ended_unix_ms: i64,
}

/// Longest failure message carried by an event; the rest is in the logs.
pub const MAX_EVENT_MESSAGE: usize = 512;
/// Events buffered per subscriber before a slow one starts losing them (and is told so).
pub const EVENT_BUFFER: usize = 1024;
/// Concurrent `/events` subscribers, at most; more get 503.
pub const MAX_SUBSCRIBERS: usize = 16;
/// A comment line this often keeps proxies and idle clients from timing out.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

fn unix_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

impl RunEvent {
    pub fn from_result(
        agent_id: &str,
        location: &str,
        r: &crate::runner::result::RunResult,
    ) -> RunEvent {
        let message = r.message.as_ref().map(|m| {
            let mut cut = m.len().min(MAX_EVENT_MESSAGE);
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m[..cut].to_string()
        });
        let started = unix_ms(r.started);
        RunEvent {
            journey: r.journey.clone(),
            location: location.to_string(),
            agent_id: agent_id.to_string(),
            outcome: r.outcome.as_str().to_string(),
            error_type: r.error_type.map(|e| e.as_str().to_string()),
            message,
            duration_ms: (r.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            run_id: r.run_id.clone(),
            trace_id: r.trace_id.clone(),
            started_unix_ms: started,
            ended_unix_ms: started + r.duration.as_millis() as i64,
        }
    }
}

/// Fans finished runs out to `/events` subscribers. Bounded: one fixed-size
/// broadcast ring shared by all (a subscriber that falls behind by more than
/// [`EVENT_BUFFER`] events skips ahead and gets a `lagged` event with the
/// count), and at most [`MAX_SUBSCRIBERS`] streams at once.
#[derive(Clone)]
pub struct EventHub {
    tx: tokio::sync::broadcast::Sender<Arc<RunEvent>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Ends every open stream (graceful shutdown waits for open connections).
    stop: CancellationToken,
}

impl EventHub {
    pub fn new(buffer: usize, max_subscribers: usize, stop: CancellationToken) -> EventHub {
        EventHub {
            tx: tokio::sync::broadcast::channel(buffer.max(1)).0,
            slots: Arc::new(tokio::sync::Semaphore::new(max_subscribers)),
            stop,
        }
    }

    /// Publishes a run; never blocks, costs nothing without subscribers.
    pub fn publish(&self, ev: RunEvent) {
        self.publish_with(|| ev);
    }

    /// Like [`Self::publish`], but the event is only built when someone listens
    /// (most agents have no `/events` subscriber; this runs for every run).
    pub fn publish_with(&self, ev: impl FnOnce() -> RunEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(ev()));
        }
    }

    /// A subscription, or `None` when [`MAX_SUBSCRIBERS`] are already open.
    pub fn subscribe(&self) -> Option<Subscription> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Subscription {
            rx: self.tx.subscribe(),
            _permit: permit,
            stop: self.stop.clone(),
        })
    }
}

/// One subscriber's view; holds its slot until dropped.
pub struct Subscription {
    rx: tokio::sync::broadcast::Receiver<Arc<RunEvent>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    stop: CancellationToken,
}

/// What a subscriber receives next.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Run(Arc<RunEvent>),
    /// This many events were dropped because the subscriber was too slow.
    Lagged(u64),
}

impl Subscription {
    /// The next delivery; `None` once the agent shuts down.
    pub async fn next(&mut self) -> Option<Delivery> {
        use tokio::sync::broadcast::error::RecvError;
        tokio::select! {
            _ = self.stop.cancelled() => None,
            r = self.rx.recv() => match r {
                Ok(ev) => Some(Delivery::Run(ev)),
                Err(RecvError::Lagged(n)) => Some(Delivery::Lagged(n)),
                Err(RecvError::Closed) => None,
            },
        }
    }
}

async fn events(State(s): State<Arc<AdminState>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Some(sub) = s.events.subscribe() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many /events subscribers (at most {MAX_SUBSCRIBERS})\n"),
        )
            .into_response();
    };
    let stream = futures_util::stream::unfold(sub, |mut sub| async move {
        let ev = match sub.next().await? {
            Delivery::Run(r) => Event::default()
                .event("run")
                .id(r.run_id.clone())
                .json_data(&*r)
                .unwrap_or_else(|_| Event::default().comment("unserializable event")),
            Delivery::Lagged(n) => Event::default()
                .event("lagged")
                .data(format!("{{\"skipped\":{n}}}")),
        };
        Some((Ok::<_, std::convert::Infallible>(ev), sub))
    });
    // The first comment flushes the headers at once, so a client knows it is subscribed.
    let hello =
        futures_util::stream::once(async { Ok(Event::default().comment("vantage run events")) });
    Sse::new(futures_util::StreamExt::chain(hello, stream))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_only_after_the_heartbeat_stands_still_past_its_bound() {
        let hb = Arc::new(AtomicU64::new(7));
        let t0 = Instant::now();
        let l = Liveness::new(hb.clone());
        assert_eq!(l.stalled_for(t0 + STALL_AFTER), None);
        let late = t0 + STALL_AFTER + Duration::from_secs(2);
        assert!(l.stalled_for(late).is_some_and(|d| d > STALL_AFTER + Duration::from_secs(1)));
        // One beat and it is alive again, the clock restarting from that beat.
        hb.fetch_add(1, Ordering::Relaxed);
        assert_eq!(l.stalled_for(late), None);
        assert_eq!(l.stalled_for(late + STALL_AFTER), None);
        assert!(l.stalled_for(late + STALL_AFTER + Duration::from_millis(1)).is_some());
    }

    fn ev(n: usize) -> RunEvent {
        RunEvent {
            journey: format!("j{n}"),
            location: "here".into(),
            agent_id: "a".into(),
            outcome: "success".into(),
            error_type: None,
            message: None,
            duration_ms: 1.0,
            run_id: format!("r{n}"),
            trace_id: "t".into(),
            started_unix_ms: 0,
            ended_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn subscribers_get_runs_in_order() {
        let hub = EventHub::new(8, 2, CancellationToken::new());
        let mut a = hub.subscribe().unwrap();
        hub.publish(ev(1));
        hub.publish(ev(2));
        assert_eq!(a.next().await, Some(Delivery::Run(Arc::new(ev(1)))));
        assert_eq!(a.next().await, Some(Delivery::Run(Arc::new(ev(2)))));
    }

    #[tokio::test]
    async fn events_are_built_only_when_someone_listens() {
        let hub = EventHub::new(8, 2, CancellationToken::new());
        let built = std::cell::Cell::new(0);
        hub.publish_with(|| {
            built.set(built.get() + 1);
            ev(1)
        });
        assert_eq!(built.get(), 0, "no subscriber: the event is not built");
        let mut a = hub.subscribe().unwrap();
        hub.publish_with(|| {
            built.set(built.get() + 1);
            ev(2)
        });
        assert_eq!(built.get(), 1);
        assert_eq!(a.next().await, Some(Delivery::Run(Arc::new(ev(2)))));
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_with_a_count_and_memory_stays_bounded() {
        let hub = EventHub::new(4, 2, CancellationToken::new());
        let mut slow = hub.subscribe().unwrap();
        for i in 0..10 {
            hub.publish(ev(i));
        }
        // Only the newest 4 are kept; the 6 older ones are reported as skipped.
        assert_eq!(slow.next().await, Some(Delivery::Lagged(6)));
        for i in 6..10 {
            assert_eq!(slow.next().await, Some(Delivery::Run(Arc::new(ev(i)))));
        }
        assert_eq!(
            hub.tx.len(),
            0,
            "nothing retained once every subscriber has read"
        );
    }

    #[tokio::test]
    async fn subscribers_are_capped_and_slots_come_back() {
        let hub = EventHub::new(4, 2, CancellationToken::new());
        let a = hub.subscribe().unwrap();
        let _b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_none());
        drop(a);
        assert!(hub.subscribe().is_some());
    }

    #[tokio::test]
    async fn streams_end_on_shutdown() {
        let stop = CancellationToken::new();
        let hub = EventHub::new(4, 2, stop.clone());
        let mut a = hub.subscribe().unwrap();
        stop.cancel();
        assert_eq!(a.next().await, None);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let r = crate::runner::result::RunResult {
            journey: "j".into(),
            run_id: "r".into(),
            outcome: crate::runner::result::Outcome::Failure,
            duration: std::time::Duration::from_millis(1500),
            error_type: Some(crate::runner::result::ErrorType::Timeout),
            message: Some("é".repeat(400)),
            steps: vec![],
            cleanup_error: None,
            trace_id: "t".into(),
            started: std::time::UNIX_EPOCH + std::time::Duration::from_secs(10),
            attempts: 1,
            failed_attempts: Vec::new(),
        };
        let e = RunEvent::from_result("a", "eu", &r);
        assert!(e.message.as_ref().unwrap().len() <= MAX_EVENT_MESSAGE);
        assert_eq!((e.started_unix_ms, e.ended_unix_ms), (10_000, 11_500));
        assert_eq!(
            (e.outcome.as_str(), e.error_type.as_deref()),
            ("failure", Some("timeout"))
        );
    }
}
