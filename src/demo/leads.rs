//! Lead capture from the marketing site, the asynchronous CRM pipeline
//! (bounded queue -> one worker -> CRM store -> `lead.created` webhook), and
//! the CRM's small REST API.
//!
//! The CRM endpoints and `/admin/webhook` need no auth: the demo listens on
//! loopback only and they stand in for an internal back-office system.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::faults::CrmMode;
use super::pages::{self, LeadForm};
use super::state::{
    clip, field_error, json_error, lock, now_rfc3339, random_unit, stopped, App, FieldError,
};

/// Leads waiting for the CRM worker; a full queue answers 503.
pub const QUEUE_CAPACITY: usize = 1_024;
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CRM_LEADS: usize = 10_000;
const MAX_TOMBSTONES: usize = 10_000;
const MAX_LIST: usize = 100;
const PLANS: [&str; 3] = ["starter", "team", "enterprise"];

#[derive(Debug, Clone, Serialize)]
pub struct Lead {
    pub id: String,
    pub name: String,
    pub email: String,
    pub company: String,
    pub plan: String,
    pub message: String,
    pub source: &'static str,
    pub synthetic_run: Option<String>,
    /// Echoed as `X-Callback-Token` on the webhook, like a webhook sender's per-subscription secret; never listed.
    #[serde(skip)]
    pub callback_token: Option<String>,
    pub created_at: String,
    pub crm_synced_at: Option<String>,
    /// Order of acceptance; tombstones compare against it.
    #[serde(skip)]
    seq: u64,
}

/// The CRM's data: synced leads (bounded, oldest evicted) and per-email
/// tombstones that make the worker drop leads accepted before a delete.
#[derive(Default)]
pub struct Crm {
    by_seq: BTreeMap<u64, Lead>,
    seq_of: HashMap<String, u64>,
    tombstones: HashMap<String, u64>,
    accepted: u64,
}

impl Crm {
    fn next_seq(&mut self) -> u64 {
        self.accepted += 1;
        self.accepted
    }

    /// Store a synced lead unless its email was deleted after it was accepted.
    fn insert(&mut self, mut lead: Lead) -> Option<Lead> {
        if self
            .tombstones
            .get(&lead.email)
            .is_some_and(|&upto| lead.seq <= upto)
        {
            return None;
        }
        lead.crm_synced_at = Some(now_rfc3339());
        self.seq_of.insert(lead.id.clone(), lead.seq);
        self.by_seq.insert(lead.seq, lead.clone());
        while self.by_seq.len() > MAX_CRM_LEADS {
            if let Some((_, old)) = self.by_seq.pop_first() {
                self.seq_of.remove(&old.id);
            }
        }
        Some(lead)
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.seq_of.remove(id) {
            Some(seq) => self.by_seq.remove(&seq).is_some(),
            None => false,
        }
    }

    /// Delete every lead for `email` and tombstone it for leads still queued.
    fn delete_email(&mut self, email: &str) -> usize {
        let ids: Vec<String> = self
            .by_seq
            .values()
            .filter(|l| l.email == email)
            .map(|l| l.id.clone())
            .collect();
        ids.iter().for_each(|id| {
            self.remove(id);
        });
        if self.tombstones.len() >= MAX_TOMBSTONES && !self.tombstones.contains_key(email) {
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(_, &seq)| seq)
                .map(|(e, _)| e.clone());
            if let Some(oldest) = oldest {
                self.tombstones.remove(&oldest);
            }
        }
        self.tombstones.insert(email.to_string(), self.accepted);
        ids.len()
    }
}

/// Validate a submission; `Err((field, message))`.
fn validate(form: &LeadForm) -> Result<(), (&'static str, &'static str)> {
    if form.name.trim().is_empty() {
        return Err(("name", "required"));
    }
    let email = form.email.trim();
    if !email.contains('@') || email.chars().any(char::is_whitespace) {
        return Err(("email", "must be an email address"));
    }
    if !form.plan.is_empty() && !PLANS.contains(&form.plan.as_str()) {
        return Err(("plan", "must be one of starter, team, enterprise"));
    }
    Ok(())
}

fn form_from_json(body: &[u8]) -> Result<LeadForm, FieldError> {
    let not_object = FieldError {
        field: "body",
        msg: "must be a JSON object",
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| not_object)?;
    let obj = value.as_object().ok_or(not_object)?;
    let mut form = LeadForm::default();
    for (field, slot) in [
        ("name", &mut form.name),
        ("email", &mut form.email),
        ("company", &mut form.company),
        ("plan", &mut form.plan),
        ("message", &mut form.message),
    ] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *slot = s.clone(),
            Some(_) => {
                return Err(FieldError {
                    field,
                    msg: "must be a string",
                })
            }
        }
    }
    Ok(form)
}

fn form_from_urlencoded(body: &[u8]) -> LeadForm {
    let mut form = LeadForm::default();
    for (k, v) in url::form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "name" => &mut form.name,
            "email" => &mut form.email,
            "company" => &mut form.company,
            "plan" => &mut form.plan,
            "message" => &mut form.message,
            _ => continue,
        };
        *slot = v.into_owned();
    }
    form
}

/// `POST /leads`: form (redirects to /thanks) or JSON (202).
pub async fn submit(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let form = if is_json {
        match form_from_json(&body) {
            Ok(form) => form,
            Err(e) => return e.into_response(),
        }
    } else {
        form_from_urlencoded(&body)
    };
    if let Err((field, msg)) = validate(&form) {
        return if is_json {
            field_error(field, msg)
        } else {
            (
                StatusCode::BAD_REQUEST,
                pages::landing_html(Some(&format!("Please check {field}: {msg}.")), &form),
            )
                .into_response()
        };
    }
    let synthetic_run = headers
        .get("x-synthetic-run")
        .and_then(|v| v.to_str().ok())
        .map(|v| clip(v, 200))
        .filter(|v| !v.is_empty());
    let callback_token = headers.get("x-callback-token").and_then(|v| v.to_str().ok()).map(|v| clip(v, 200)).filter(|v| !v.is_empty());
    let plan = if form.plan.is_empty() {
        "starter".to_string()
    } else {
        form.plan.clone()
    };
    let lead = Lead {
        id: format!("lead-{}", uuid::Uuid::new_v4().simple()),
        name: clip(&form.name, 200),
        email: clip(&form.email, 254),
        company: clip(&form.company, 200),
        plan,
        message: clip(&form.message, 5_000),
        source: "web",
        synthetic_run,
        callback_token,
        created_at: now_rfc3339(),
        crm_synced_at: None,
        seq: lock(&app.crm).next_seq(),
    };
    let lead_id = lead.id.clone();
    if let Err(e) = app.lead_tx.try_send(lead) {
        tracing::warn!(error = %e, "lead rejected");
        return if is_json {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "lead queue full")
        } else {
            let msg = "We are receiving a lot of requests right now. Please try again in a minute.";
            (
                StatusCode::SERVICE_UNAVAILABLE,
                pages::landing_html(Some(msg), &form),
            )
                .into_response()
        };
    }
    tracing::debug!(%lead_id, "lead queued");
    if is_json {
        (
            StatusCode::ACCEPTED,
            Json(json!({ "lead_id": lead_id, "status": "queued" })),
        )
            .into_response()
    } else {
        Redirect::to("/thanks").into_response()
    }
}

/// Wait while the CRM is stalled. `false` when shutting down.
async fn wait_while_stalled(
    mode: &mut watch::Receiver<CrmMode>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        if *mode.borrow_and_update() != CrmMode::Stall {
            return true;
        }
        tokio::select! {
            _ = stopped(shutdown) => return false,
            changed = mode.changed() => if changed.is_err() { return false },
        }
    }
}

/// The single CRM worker: one lead at a time, `crm_delay` (+ jitter) each.
pub async fn worker(app: Arc<App>, mut rx: mpsc::Receiver<Lead>) {
    let mut mode = app.faults.crm_mode.subscribe();
    let mut shutdown = app.shutdown.clone();
    loop {
        if !wait_while_stalled(&mut mode, &mut shutdown).await {
            return;
        }
        let lead = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = mode.changed() => continue,
            lead = rx.recv() => match lead {
                Some(lead) => lead,
                None => return,
            },
        };
        if *mode.borrow() == CrmMode::Break {
            tracing::error!(lead_id = %lead.id, "CRM unavailable (fault injected): lead discarded");
            continue;
        }
        let jitter = app
            .crm_delay
            .mul_f64(0.1 * random_unit())
            .min(Duration::from_millis(50));
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(app.crm_delay + jitter) => {}
        }
        // A stall raised while this lead was in flight holds it until normal.
        if !wait_while_stalled(&mut mode, &mut shutdown).await {
            return;
        }
        if *mode.borrow() == CrmMode::Break {
            tracing::error!(lead_id = %lead.id, "CRM unavailable (fault injected): lead discarded");
            continue;
        }
        let inserted = lock(&app.crm).insert(lead.clone());
        match inserted {
            Some(lead) => {
                tracing::info!(lead_id = %lead.id, "lead synced to CRM");
                deliver_webhook(&app, &lead).await;
            }
            None => tracing::info!(lead_id = %lead.id, "lead dropped: email deleted while queued"),
        }
    }
}

async fn deliver_webhook(app: &App, lead: &Lead) {
    let url = lock(&app.webhook_url).clone();
    let (Some(url), Some(client)) = (url, app.http_client.as_ref()) else {
        return;
    };
    let mut req = client
        .post(&url)
        .json(&json!({ "event": "lead.created", "lead": lead }));
    if let Some(run) = &lead.synthetic_run {
        req = req.header("X-Synthetic-Run", run);
    }
    if let Some(token) = &lead.callback_token {
        req = req.header("X-Callback-Token", token);
    }
    match tokio::time::timeout(WEBHOOK_TIMEOUT + Duration::from_millis(500), req.send()).await {
        Ok(Ok(resp)) if resp.status().is_success() => tracing::debug!(%url, "webhook delivered"),
        Ok(Ok(resp)) => tracing::warn!(%url, status = %resp.status(), "webhook rejected"),
        Ok(Err(e)) => tracing::warn!(%url, error = %e, "webhook failed"),
        Err(_) => tracing::warn!(%url, "webhook timed out"),
    }
}

#[derive(Deserialize)]
pub struct EmailParam {
    email: Option<String>,
}

/// `GET /crm/leads[?email=X]`, newest first, at most 100.
pub async fn crm_list(State(app): State<Arc<App>>, Query(p): Query<EmailParam>) -> Json<Value> {
    let crm = lock(&app.crm);
    let leads: Vec<&Lead> = crm
        .by_seq
        .values()
        .rev()
        .filter(|l| p.email.as_deref().is_none_or(|e| l.email == e))
        .take(MAX_LIST)
        .collect();
    Json(json!({ "leads": leads }))
}

/// `GET /crm/leads/{id}`
pub async fn crm_get(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let crm = lock(&app.crm);
    match crm.seq_of.get(&id).and_then(|s| crm.by_seq.get(s)) {
        Some(lead) => Json(json!({ "lead": lead })).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "lead not found"),
    }
}

/// `DELETE /crm/leads/{id}`
pub async fn crm_delete(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if lock(&app.crm).remove(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_error(StatusCode::NOT_FOUND, "lead not found")
    }
}

/// `DELETE /crm/leads?email=X`: also drops that email's leads still queued.
pub async fn crm_delete_by_email(
    State(app): State<Arc<App>>,
    Query(p): Query<EmailParam>,
) -> Response {
    let Some(email) = p.email.filter(|e| !e.is_empty()) else {
        return json_error(StatusCode::BAD_REQUEST, "missing email");
    };
    let deleted = lock(&app.crm).delete_email(&email);
    Json(json!({ "deleted": deleted })).into_response()
}

/// `GET /admin/webhook`
pub async fn get_webhook(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "url": *lock(&app.webhook_url) }))
}

#[derive(Deserialize)]
pub struct WebhookBody {
    url: Option<String>,
}

/// `PUT /admin/webhook` `{"url": "http://..." | null}`
pub async fn put_webhook(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Ok(WebhookBody { url }) = serde_json::from_slice(&body) else {
        return field_error("url", "must be a string or null");
    };
    if let Some(u) = &url {
        match url::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => return field_error("url", "must be an absolute http(s) URL"),
        }
    }
    *lock(&app.webhook_url) = url.clone();
    Json(json!({ "url": url })).into_response()
}
