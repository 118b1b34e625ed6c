//! Fault injection for tests and game days: per-route HTTP latency/errors,
//! WebSocket drop/stall, CRM worker stall/break.
//!
//! The admin endpoints have no auth: the demo listens on loopback only and
//! they exist for whoever runs it. `/admin/*` itself is never faulted, so a
//! fault can always be cleared.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::state::{json_error, lock, random_unit, App};

const MAX_HTTP_FAULTS: usize = 64;
const MAX_LATENCY_MS: u64 = 60_000;
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsMode {
    Normal,
    Drop,
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmMode {
    Normal,
    Stall,
    Break,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpFault {
    pub route: String,
    pub latency_ms: u64,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub probability: f64,
}

pub struct Faults {
    /// Keyed by normalized `METHOD /template`.
    pub http: Mutex<BTreeMap<String, HttpFault>>,
    pub ws_mode: watch::Sender<WsMode>,
    pub crm_mode: watch::Sender<CrmMode>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            http: Mutex::new(BTreeMap::new()),
            ws_mode: watch::channel(WsMode::Normal).0,
            crm_mode: watch::channel(CrmMode::Normal).0,
        }
    }
}

/// Applies HTTP faults, matched on method + axum's route template.
pub async fn middleware(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(template) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    if template.starts_with("/admin/") {
        return next.run(req).await;
    }
    let key = format!("{} {}", req.method(), template);
    let fault = lock(&app.faults.http).get(&key).cloned();
    let Some(fault) = fault.filter(|f| random_unit() < f.probability) else {
        return next.run(req).await;
    };
    tracing::debug!(route = %key, ?fault, "injecting http fault");
    if fault.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.latency_ms)).await;
    }
    let Some(code) = fault.status.and_then(|s| StatusCode::from_u16(s).ok()) else {
        return next.run(req).await;
    };
    let body = fault
        .body
        .unwrap_or_else(|| json!({ "error": "injected fault" }).to_string());
    let content_type = if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (
        code,
        [(header::CONTENT_TYPE, content_type)],
        Body::from(body),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFaultBody {
    route: String,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    probability: Option<f64>,
}

fn bad_request(msg: String) -> Response {
    json_error(StatusCode::BAD_REQUEST, &msg)
}

/// `"post  /api/x/{id}"` -> `"POST /api/x/{id}"`.
fn normalize_route(route: &str) -> Option<String> {
    let mut parts = route.split_whitespace();
    let (method, path, rest) = (parts.next()?, parts.next()?, parts.next());
    let method = method.to_ascii_uppercase();
    (rest.is_none() && METHODS.contains(&method.as_str()) && path.starts_with('/'))
        .then(|| format!("{method} {path}"))
}

/// `POST /admin/faults/http` (re-posting the same route replaces it).
pub async fn set_http(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let spec: HttpFaultBody = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return bad_request(format!("invalid fault: {e}")),
    };
    let Some(route) = normalize_route(&spec.route) else {
        return bad_request("route: expected \"METHOD /route/{template}\"".into());
    };
    if spec.latency_ms > MAX_LATENCY_MS {
        return bad_request(format!("latency_ms: at most {MAX_LATENCY_MS}"));
    }
    if let Some(s) = spec.status {
        if !(100..=599).contains(&s) {
            return bad_request("status: must be 100..=599".into());
        }
    }
    let probability = spec.probability.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&probability) {
        return bad_request("probability: must be within 0.0..=1.0".into());
    }
    let fault = HttpFault {
        route: route.clone(),
        latency_ms: spec.latency_ms,
        status: spec.status,
        body: spec.body,
        probability,
    };
    let mut faults = lock(&app.faults.http);
    if faults.len() >= MAX_HTTP_FAULTS && !faults.contains_key(&route) {
        return bad_request(format!("at most {MAX_HTTP_FAULTS} http faults"));
    }
    faults.insert(route, fault.clone());
    tracing::info!(?fault, "http fault set");
    Json(json!({ "fault": fault })).into_response()
}

#[derive(Deserialize)]
pub struct ModeBody<M> {
    mode: M,
}

/// `POST /admin/faults/websocket` `{"mode":"drop"|"stall"|"normal"}`.
pub async fn set_websocket(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ModeBody<WsMode>>(&body) {
        Ok(b) => {
            app.faults.ws_mode.send_replace(b.mode);
            tracing::info!(mode = ?b.mode, "websocket fault mode");
            Json(json!({ "websocket": b.mode })).into_response()
        }
        Err(_) => bad_request("mode: must be one of drop, stall, normal".into()),
    }
}

/// `POST /admin/faults/crm` `{"mode":"stall"|"break"|"normal"}`.
pub async fn set_crm(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ModeBody<CrmMode>>(&body) {
        Ok(b) => {
            app.faults.crm_mode.send_replace(b.mode);
            tracing::info!(mode = ?b.mode, "crm fault mode");
            Json(json!({ "crm": b.mode })).into_response()
        }
        Err(_) => bad_request("mode: must be one of stall, break, normal".into()),
    }
}

fn snapshot(app: &App) -> serde_json::Value {
    let http: Vec<HttpFault> = lock(&app.faults.http).values().cloned().collect();
    json!({
        "http": http,
        "websocket": *app.faults.ws_mode.borrow(),
        "crm": *app.faults.crm_mode.borrow(),
    })
}

/// `GET /admin/faults`
pub async fn get_all(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(snapshot(&app))
}

/// `DELETE /admin/faults`: back to normal everywhere.
pub async fn clear_all(State(app): State<Arc<App>>) -> StatusCode {
    lock(&app.faults.http).clear();
    app.faults.ws_mode.send_replace(WsMode::Normal);
    app.faults.crm_mode.send_replace(CrmMode::Normal);
    tracing::info!("all faults cleared");
    StatusCode::NO_CONTENT
}
