//! Admin HTTP endpoint: health, readiness, status, Prometheus metrics, reload.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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
}

pub async fn serve(addr: SocketAddr, state: Arc<AdminState>, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(bound)
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let journeys = s.status.lock().expect("status lock").clone();
    let (p50, p99, max) = s.stats.lateness_ms();
    Json(serde_json::json!({
        "journeys": journeys,
        "scheduler": {
            "runs_started": s.stats.runs_started.load(Ordering::Relaxed),
            "runs_finished": s.stats.runs_finished.load(Ordering::Relaxed),
            "skipped": s.stats.skipped.load(Ordering::Relaxed),
            "lateness_ms": {"p50": p50, "p99": p99, "max": max},
        },
    }))
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
        Ok(Ok(Err(errors))) => (StatusCode::BAD_REQUEST, format!("reload rejected, old config kept:\n{}\n", errors.join("\n"))).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "reload did not complete\n").into_response(),
    }
}
