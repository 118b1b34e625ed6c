//! Shared application state and small helpers used by every handler.

use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::{broadcast, mpsc, watch};

use super::auth::{self, Sessions, User};
use super::faults::Faults;
use super::incidents::{self, IncidentStore, TimelineEvent};
use super::leads::{self, Crm, Lead};
use super::DemoOptions;

/// Everything the handlers share. Locks are std mutexes that are never held
/// across an await.
pub struct App {
    pub password: String,
    pub users: Vec<User>,
    pub sessions: Mutex<Sessions>,
    pub incidents: Mutex<IncidentStore>,
    pub events: broadcast::Sender<TimelineEvent>,
    pub open_sockets: AtomicUsize,
    pub lead_tx: mpsc::Sender<Lead>,
    pub crm: Mutex<Crm>,
    pub crm_delay: std::time::Duration,
    pub webhook_url: Mutex<Option<String>>,
    pub http_client: Option<reqwest::Client>,
    pub faults: Faults,
    pub shutdown: watch::Receiver<bool>,
}

impl App {
    pub fn new(opts: &DemoOptions, shutdown: watch::Receiver<bool>) -> (App, mpsc::Receiver<Lead>) {
        let (lead_tx, lead_rx) = mpsc::channel(leads::QUEUE_CAPACITY);
        let (events, _) = broadcast::channel(incidents::BROADCAST_CAPACITY);
        let http_client = reqwest::Client::builder()
            .timeout(leads::WEBHOOK_TIMEOUT)
            .build()
            .map_err(|e| tracing::error!(error = %e, "webhook client unavailable"))
            .ok();
        let app = App {
            password: opts.password.clone(),
            users: auth::demo_users(),
            sessions: Mutex::new(Sessions::default()),
            incidents: Mutex::new(IncidentStore::default()),
            events,
            open_sockets: AtomicUsize::new(0),
            lead_tx,
            crm: Mutex::new(Crm::default()),
            crm_delay: opts.crm_delay,
            webhook_url: Mutex::new(opts.webhook_url.clone()),
            http_client,
            faults: Faults::default(),
            shutdown,
        };
        (app, lead_rx)
    }
}

/// Lock a mutex, recovering the data if a previous holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `{"error": msg}` with the given status.
pub fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// A validation failure: answers 400 `{"error": "field: msg", "field": field}`.
#[derive(Debug, Clone, Copy)]
pub struct FieldError {
    pub field: &'static str,
    pub msg: &'static str,
}

impl IntoResponse for FieldError {
    fn into_response(self) -> Response {
        field_error(self.field, self.msg)
    }
}

/// `{"error": "field: msg", "field": field}` with 400, for validation failures.
pub fn field_error(field: &str, msg: &str) -> Response {
    let body = serde_json::json!({ "error": format!("{field}: {msg}"), "field": field });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// 256 bits of OS randomness as 64 hex characters (session tokens).
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Uniform float in [0, 1) (fault probability, jitter).
pub fn random_unit() -> f64 {
    // The low 53 bits of a v4 UUID are random (version/variant bits sit higher).
    let bits = (uuid::Uuid::new_v4().as_u128() as u64) & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

/// Trim and cap a user-supplied string at `max` characters.
pub fn clip(s: &str, max: usize) -> String {
    s.trim().chars().take(max).collect()
}

/// Resolves once shutdown was requested (or the sender is gone). Drops the
/// watch guard before returning, so callers stay `Send`.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}
