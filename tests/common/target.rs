//! A loopback HTTP target with endpoints that delay, fail, redirect, set
//! cookies, return JSON, flood, or accept and never answer.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;

#[derive(Default)]
pub struct Seen {
    /// Request headers of every request, in order.
    pub requests: Vec<(String, HashMap<String, String>)>,
}

pub struct Target {
    pub addr: SocketAddr,
    /// A TCP listener that accepts and never answers.
    pub silent: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    _silent_task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start() -> Target {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/json", get(|| async { Json(serde_json::json!({"token": "tok-123", "user": {"name": "probe", "id": 7}, "items": [1, 2, 3]})) }))
            .route("/status/{code}", get(|Path(code): Path<u16>| async move { (StatusCode::from_u16(code).unwrap(), format!("status {code}")) }))
            .route("/delay/{ms}", get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slow ok"
            }))
            .route("/redirect", get(|| async { (StatusCode::FOUND, [("location", "/json")]) }))
            .route("/set-cookie", get(|| async { (StatusCode::OK, [("set-cookie", "sid=s3ss10n; Path=/; HttpOnly")], "cookie set") }))
            .route("/need-cookie", get(|headers: HeaderMap| async move {
                let ok = headers.get("cookie").and_then(|c| c.to_str().ok()).is_some_and(|c| c.contains("sid=s3ss10n"));
                if ok { (StatusCode::OK, "welcome back") } else { (StatusCode::UNAUTHORIZED, "no session") }
            }))
            .route("/login", post(|Json(b): Json<serde_json::Value>| async move {
                if b["password"] == "hunter2-canary-secret" {
                    (StatusCode::OK, Json(serde_json::json!({"token": "bearer-canary-token-987"})))
                } else {
                    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "bad password", "got": b["password"]})))
                }
            }))
            .route("/echo", post(|body: String| async move { body }))
            .route("/big/{bytes}", get(|Path(n): Path<usize>| async move { "x".repeat(n) }))
            .route("/flood", get(|| async {
                let chunk = bytes::Bytes::from(vec![b'f'; 64 * 1024]);
                let stream = futures_util::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
                Response::new(Body::from_stream(stream))
            }))
            .route("/hang", get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }))
            .route("/headers", get(|State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap| async move {
                let map: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
                seen.lock().unwrap().requests.push(("/headers".into(), map.clone()));
                Json(map).into_response()
            }))
            .route("/query", get(|Query(q): Query<HashMap<String, String>>| async move { Json(q) }))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let silent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = silent_listener.local_addr().unwrap();
        let silent_task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent_listener.accept().await {
                held.push(s); // keep it open, never read or write
            }
        });
        Target { addr, silent, seen, _silent_task: silent_task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
