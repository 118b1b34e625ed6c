//! `vantage demo`: a small, self-contained incident-management product with a
//! marketing site, served in-process on loopback so synthetic journeys (HTTP,
//! WebSocket, browser, DNS, TLS) have something realistic to probe, and so
//! tests and game days can inject faults into it.
//!
//! Everything here is bounded: queues, maps, ring buffers, socket counts and
//! every await that depends on a peer. Bad input yields 4xx, never a panic.

mod auth;
mod dns;
mod faults;
mod incidents;
mod leads;
pub mod live;
mod pages;
mod state;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use state::App;

/// Largest request body the demo accepts (forms, JSON).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Upper bound for [`DemoServer::shutdown`].
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How to run the demo target.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Plain HTTP listener, e.g. `127.0.0.1:0`.
    pub http_addr: SocketAddr,
    /// The same app over TLS with a self-signed certificate for
    /// `demo.vantage.test`, `localhost` and `127.0.0.1` (valid 90 days).
    pub https_addr: Option<SocketAddr>,
    /// UDP DNS responder for the `vantage.test` zone.
    pub dns_addr: Option<SocketAddr>,
    /// Password of the demo user `oncall@demo.test`.
    pub password: String,
    /// How long the CRM worker takes per lead (plus a little jitter).
    pub crm_delay: Duration,
    /// Where the CRM pipeline POSTs `lead.created`.
    pub webhook_url: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        let lo: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        DemoOptions {
            http_addr: lo,
            https_addr: Some(lo),
            dns_addr: Some(lo),
            password: "correct-horse-battery".to_string(),
            crm_delay: Duration::from_millis(400),
            webhook_url: None,
        }
    }
}

/// A running demo target. Dropping it without [`DemoServer::shutdown`] still
/// signals every task to stop, but does not wait for them.
pub struct DemoServer {
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    ca_pem: Option<String>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why the demo service cannot listen where it was asked to, in words.
fn bind_error(addr: SocketAddr, e: std::io::Error) -> std::io::Error {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("port {} is already taken by another program (another `vantage demo`?); choose a free one with --port, or stop that program", addr.port()),
        std::io::ErrorKind::PermissionDenied => format!("not allowed to listen on port {} (ports below 1024 need privileges); choose one above 1023", addr.port()),
        _ => e.to_string(),
    };
    std::io::Error::new(e.kind(), format!("cannot serve the demo service on {addr}: {why}"))
}

impl DemoServer {
    /// Bind every listener, spawn the servers and the CRM worker, and return
    /// once all sockets are bound (so the URLs are immediately usable).
    pub async fn start(opts: DemoOptions) -> std::io::Result<DemoServer> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (app, lead_rx) = App::new(&opts, shutdown_rx.clone());
        let app = Arc::new(app);
        let router = router(app.clone());
        let mut tasks = Vec::new();

        let listener = tokio::net::TcpListener::bind(opts.http_addr).await.map_err(|e| bind_error(opts.http_addr, e))?;
        let http_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(serve(
            listener,
            router.clone(),
            shutdown_rx.clone(),
        )));

        let (https_addr, ca_pem) = match opts.https_addr {
            Some(addr) => {
                let (listener, pem) = tls::bind(addr, shutdown_rx.clone()).await?;
                let local = axum::serve::Listener::local_addr(&listener)?;
                tasks.push(tokio::spawn(serve(
                    listener,
                    router.clone(),
                    shutdown_rx.clone(),
                )));
                (Some(local), Some(pem))
            }
            None => (None, None),
        };

        let dns_addr = match opts.dns_addr {
            Some(addr) => {
                let socket = tokio::net::UdpSocket::bind(addr).await?;
                let local = socket.local_addr()?;
                tasks.push(tokio::spawn(dns::serve(socket, shutdown_rx.clone())));
                Some(local)
            }
            None => None,
        };

        tasks.push(tokio::spawn(leads::worker(app.clone(), lead_rx)));

        tracing::info!(%http_addr, ?https_addr, ?dns_addr, "demo target started");
        Ok(DemoServer {
            http_addr,
            https_addr,
            dns_addr,
            ca_pem,
            shutdown_tx,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `https://127.0.0.1:PORT`, when the TLS listener is enabled.
    pub fn https_url(&self) -> Option<String> {
        self.https_addr.map(|a| format!("https://{a}"))
    }

    /// The bound UDP address of the DNS responder.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// PEM of the self-signed certificate served over HTTPS, for clients to trust.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Stop accepting, close WebSockets, stop the worker; waits at most 2s,
    /// then aborts whatever is still running.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        tracing::info!("demo target stopped");
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

async fn serve<L>(listener: L, router: Router, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let signal = async move { state::stopped(&mut shutdown).await };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(error = %e, "demo http server failed");
    }
}

/// Every route of the demo. Route templates here are what fault injection
/// matches against (`METHOD` + template, e.g. `POST /api/incidents/{id}/ack`).
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // Marketing site and lead capture.
        .route("/", get(pages::landing))
        .route("/thanks", get(pages::thanks))
        .route("/leads", post(leads::submit))
        // Product UI and API.
        .route("/login", get(pages::login_page).post(auth::login_form))
        .route("/api/login", post(auth::login_json))
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/users", get(auth::search_users))
        .route("/api/alerts", post(incidents::ingest_alert))
        .route("/api/incidents", get(incidents::list))
        .route("/api/incidents/{id}", get(incidents::get_one))
        .route("/api/incidents/{id}/ack", post(incidents::ack))
        .route("/api/incidents/{id}/resolve", post(incidents::resolve))
        .route("/api/timeline", get(incidents::timeline_since))
        .route("/api/timeline/ws", get(incidents::timeline_ws))
        .route("/incidents/timeline", get(pages::timeline_page))
        // The "CRM" the lead pipeline writes into.
        .route(
            "/crm/leads",
            get(leads::crm_list).delete(leads::crm_delete_by_email),
        )
        .route(
            "/crm/leads/{id}",
            get(leads::crm_get).delete(leads::crm_delete),
        )
        // Admin: no auth on purpose. The demo only ever listens on loopback and
        // these endpoints exist for tests and game days on the same machine.
        .route(
            "/admin/webhook",
            get(leads::get_webhook).put(leads::put_webhook),
        )
        .route(
            "/admin/faults",
            get(faults::get_all).delete(faults::clear_all),
        )
        .route("/admin/faults/http", post(faults::set_http))
        .route("/admin/faults/websocket", post(faults::set_websocket))
        .route("/admin/faults/crm", post(faults::set_crm))
        .fallback(|| async { state::json_error(axum::http::StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            faults::middleware,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}
pub use live::run_demo;
