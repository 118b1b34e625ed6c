//! Alert ingestion, incidents (ack/resolve) and the live timeline
//! (broadcast over WebSocket plus a ring buffer for reconnect catch-up).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::auth::{authenticate, AuthUser};
use super::faults::WsMode;
use super::state::{clip, field_error, json_error, lock, now_rfc3339, stopped, App, FieldError};

/// Incidents kept; the oldest are forgotten first.
const MAX_INCIDENTS: usize = 5_000;
/// Events kept for `GET /api/timeline?since=`.
const RING_CAPACITY: usize = 1_000;
/// Per-subscriber backlog before a socket is told it lagged.
pub const BROADCAST_CAPACITY: usize = 256;
const MAX_SOCKETS: usize = 1_024;
const MAX_LIST: usize = 1_000;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(20);
const CLIENT_IDLE_LIMIT: Duration = Duration::from_secs(90);
/// Header that lets monitoring integrations post alerts without a session.
pub const INTEGRATION_KEY: &str = "demo-integration-key";

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: String,
    pub number: u64,
    pub title: String,
    pub severity: &'static str,
    pub status: &'static str,
    pub created_at: String,
    pub acked_at: Option<String>,
    pub resolved_at: Option<String>,
    pub acked_by: Option<String>,
    pub source: String,
    pub dedup_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub incident: Incident,
    pub at: String,
    pub seq: u64,
}

#[derive(Default)]
pub struct IncidentStore {
    by_number: BTreeMap<u64, Incident>,
    number_of: HashMap<String, u64>,
    open_dedup: HashMap<String, u64>,
    next_number: u64,
    ring: VecDeque<TimelineEvent>,
    next_seq: u64,
}

enum Transition {
    Ack,
    Resolve,
}

enum TransitionError {
    NotFound,
    AlreadyResolved,
}

impl IncidentStore {
    /// Returns the incident and whether it was newly created.
    fn open(
        &mut self,
        title: String,
        severity: &'static str,
        source: String,
        dedup: Option<String>,
    ) -> (Incident, bool) {
        if let Some(existing) = dedup
            .as_ref()
            .and_then(|k| self.open_dedup.get(k))
            .and_then(|n| self.by_number.get(n))
        {
            return (existing.clone(), false);
        }
        self.next_number += 1;
        let number = self.next_number;
        let incident = Incident {
            id: format!("inc-{}", uuid::Uuid::new_v4().simple()),
            number,
            title,
            severity,
            status: "triggered",
            created_at: now_rfc3339(),
            acked_at: None,
            resolved_at: None,
            acked_by: None,
            source,
            dedup_key: dedup.clone(),
        };
        if let Some(key) = dedup {
            self.open_dedup.insert(key, number);
        }
        self.number_of.insert(incident.id.clone(), number);
        self.by_number.insert(number, incident.clone());
        while self.by_number.len() > MAX_INCIDENTS {
            if let Some((_, old)) = self.by_number.pop_first() {
                self.number_of.remove(&old.id);
                if let Some(key) = old.dedup_key {
                    self.open_dedup.remove(&key);
                }
            }
        }
        (incident, true)
    }

    /// Apply a transition; `Ok((incident, changed))`.
    fn transition(
        &mut self,
        id: &str,
        t: Transition,
        by: &str,
    ) -> Result<(Incident, bool), TransitionError> {
        let number = *self.number_of.get(id).ok_or(TransitionError::NotFound)?;
        let inc = self
            .by_number
            .get_mut(&number)
            .ok_or(TransitionError::NotFound)?;
        let changed = match (t, inc.status) {
            (Transition::Ack, "resolved") => return Err(TransitionError::AlreadyResolved),
            (Transition::Ack, "acknowledged") | (Transition::Resolve, "resolved") => false,
            (Transition::Ack, _) => {
                inc.status = "acknowledged";
                inc.acked_at = Some(now_rfc3339());
                inc.acked_by = Some(by.to_string());
                true
            }
            (Transition::Resolve, _) => {
                inc.status = "resolved";
                inc.resolved_at = Some(now_rfc3339());
                if let Some(key) = &inc.dedup_key {
                    self.open_dedup.remove(key);
                }
                true
            }
        };
        Ok((inc.clone(), changed))
    }

    fn record(&mut self, kind: &'static str, incident: Incident) -> TimelineEvent {
        self.next_seq += 1;
        let event = TimelineEvent {
            kind,
            incident,
            at: now_rfc3339(),
            seq: self.next_seq,
        };
        if self.ring.len() >= RING_CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(event.clone());
        event
    }
}

/// Record an event and fan it out. Done under the store lock so `seq` order
/// equals broadcast order.
fn publish(app: &App, store: &mut IncidentStore, kind: &'static str, incident: Incident) {
    let event = store.record(kind, incident);
    let _ = app.events.send(event); // Err only means nobody is listening.
}

fn parse_alert(body: &[u8]) -> Result<(String, &'static str, String, Option<String>), FieldError> {
    let bad = |field, msg| FieldError { field, msg };
    let value: Value =
        serde_json::from_slice(body).map_err(|_| bad("body", "must be a JSON object"))?;
    let obj = value
        .as_object()
        .ok_or(bad("body", "must be a JSON object"))?;
    let title = match obj.get("title") {
        Some(Value::String(s)) if !s.trim().is_empty() => clip(s, 200),
        _ => return Err(bad("title", "required non-empty string")),
    };
    let severity = match obj.get("severity").and_then(Value::as_str) {
        Some("critical") => "critical",
        Some("warning") => "warning",
        Some("info") => "info",
        _ => return Err(bad("severity", "must be one of critical, warning, info")),
    };
    let optional = |field: &'static str, max: usize| match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(clip(s, max))),
        Some(_) => Err(bad(field, "must be a string")),
    };
    let source = optional("source", 100)?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "api".to_string());
    let dedup = optional("dedup_key", 200)?.filter(|s| !s.is_empty());
    Ok((title, severity, source, dedup))
}

/// `POST /api/alerts`: session/bearer auth or `X-Integration-Key`.
pub async fn ingest_alert(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key_ok = headers
        .get("x-integration-key")
        .is_some_and(|v| v.as_bytes() == INTEGRATION_KEY.as_bytes());
    if !key_ok && authenticate(&app, &headers, None).is_none() {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (title, severity, source, dedup) = match parse_alert(&body) {
        Ok(alert) => alert,
        Err(e) => return e.into_response(),
    };
    let mut store = lock(&app.incidents);
    let (incident, created) = store.open(title, severity, source, dedup);
    if !created {
        return Json(json!({ "incident": incident })).into_response();
    }
    publish(&app, &mut store, "incident.created", incident.clone());
    (StatusCode::CREATED, Json(json!({ "incident": incident }))).into_response()
}

#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
}

/// `GET /api/incidents?status=open|triggered|acknowledged|resolved|all`, newest first.
pub async fn list(
    State(app): State<Arc<App>>,
    _auth: AuthUser,
    Query(p): Query<ListParams>,
) -> Response {
    let filter = p.status.unwrap_or_else(|| "open".to_string());
    let keep: fn(&Incident) -> bool = match filter.as_str() {
        "open" => |i| i.status != "resolved",
        "triggered" => |i| i.status == "triggered",
        "acknowledged" => |i| i.status == "acknowledged",
        "resolved" => |i| i.status == "resolved",
        "all" => |_| true,
        _ => {
            return field_error(
                "status",
                "must be one of open, triggered, acknowledged, resolved, all",
            )
        }
    };
    let store = lock(&app.incidents);
    let incidents: Vec<&Incident> = store
        .by_number
        .values()
        .rev()
        .filter(|i| keep(i))
        .take(MAX_LIST)
        .collect();
    Json(json!({ "incidents": incidents })).into_response()
}

/// `GET /api/incidents/{id}`
pub async fn get_one(
    State(app): State<Arc<App>>,
    _auth: AuthUser,
    Path(id): Path<String>,
) -> Response {
    let store = lock(&app.incidents);
    match store
        .number_of
        .get(&id)
        .and_then(|n| store.by_number.get(n))
    {
        Some(incident) => Json(json!({ "incident": incident })).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "incident not found"),
    }
}

fn apply(app: &App, id: &str, t: Transition, by: &str, kind: &'static str) -> Response {
    let mut store = lock(&app.incidents);
    match store.transition(id, t, by) {
        Ok((incident, changed)) => {
            if changed {
                publish(app, &mut store, kind, incident.clone());
            }
            Json(json!({ "incident": incident })).into_response()
        }
        Err(TransitionError::NotFound) => json_error(StatusCode::NOT_FOUND, "incident not found"),
        Err(TransitionError::AlreadyResolved) => {
            json_error(StatusCode::CONFLICT, "incident already resolved")
        }
    }
}

/// `POST /api/incidents/{id}/ack` (idempotent; 409 once resolved).
pub async fn ack(State(app): State<Arc<App>>, auth: AuthUser, Path(id): Path<String>) -> Response {
    apply(
        &app,
        &id,
        Transition::Ack,
        &auth.user.handle,
        "incident.acked",
    )
}

/// `POST /api/incidents/{id}/resolve` (idempotent).
pub async fn resolve(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Response {
    apply(
        &app,
        &id,
        Transition::Resolve,
        &auth.user.handle,
        "incident.resolved",
    )
}

#[derive(Deserialize)]
pub struct SinceParams {
    since: Option<u64>,
}

/// `GET /api/timeline?since=SEQ`: recent events after SEQ, for catch-up.
pub async fn timeline_since(
    State(app): State<Arc<App>>,
    _auth: AuthUser,
    params: Result<Query<SinceParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(p)) = params else {
        return field_error("since", "must be a non-negative integer");
    };
    let since = p.since.unwrap_or(0);
    let store = lock(&app.incidents);
    let events: Vec<&TimelineEvent> = store.ring.iter().filter(|e| e.seq > since).collect();
    Json(json!({ "events": events })).into_response()
}

#[derive(Deserialize)]
pub struct WsParams {
    token: Option<String>,
}

/// `GET /api/timeline/ws`: auth by bearer, cookie or `?token=`.
pub async fn timeline_ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(p): Query<WsParams>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(auth) = authenticate(&app, &headers, p.token.as_deref()) else {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    let Ok(ws) = ws else {
        return json_error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    if app.open_sockets.fetch_add(1, Ordering::SeqCst) >= MAX_SOCKETS {
        app.open_sockets.fetch_sub(1, Ordering::SeqCst);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many timeline connections",
        );
    }
    let guard = SocketSlot(app.clone());
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            run_socket(&guard.0, socket, auth.user.handle).await;
            drop(guard);
        })
        .into_response()
}

/// Frees a socket slot when the connection ends (or the upgrade never happens).
struct SocketSlot(Arc<App>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn send_json(socket: &mut WebSocket, value: &impl Serialize) -> bool {
    let Ok(text) = serde_json::to_string(value) else {
        return false;
    };
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

async fn run_socket(app: &App, mut socket: WebSocket, handle: String) {
    let mut events = app.events.subscribe();
    let mut mode = app.faults.ws_mode.subscribe();
    let mut shutdown = app.shutdown.clone();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut last_heard = Instant::now();

    if !send_json(&mut socket, &json!({ "type": "hello", "user": handle })).await {
        return;
    }
    loop {
        let current = *mode.borrow_and_update();
        if current == WsMode::Drop {
            return close(socket, 1011, "fault injected: drop").await;
        }
        let stalled = current == WsMode::Stall;
        let ok = tokio::select! {
            _ = stopped(&mut shutdown) => return close(socket, 1001, "server shutting down").await,
            changed = mode.changed() => changed.is_ok(),
            event = events.recv(), if !stalled => match event {
                Ok(event) => send_json(&mut socket, &event).await,
                Err(RecvError::Lagged(missed)) => send_json(&mut socket, &json!({ "type": "lagged", "missed": missed })).await,
                Err(RecvError::Closed) => false,
            },
            _ = heartbeat.tick() => {
                last_heard.elapsed() < CLIENT_IDLE_LIMIT
                    && matches!(tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await, Ok(Ok(())))
            }
            incoming = socket.recv() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let is_ping = serde_json::from_str::<Value>(&text)
                            .ok()
                            .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("ping"));
                        !is_ping || send_json(&mut socket, &json!({ "type": "pong" })).await
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
                    Some(Ok(_)) => true,
                }
            }
        };
        if !ok {
            return;
        }
    }
}
