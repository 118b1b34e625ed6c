//! End-to-end tests of the embedded demo target: a real `DemoServer` on
//! loopback, driven with reqwest, tokio-tungstenite and hickory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vantage::demo::{DemoOptions, DemoServer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PASSWORD: &str = "correct-horse-battery";
const WAIT: Duration = Duration::from_secs(3);

async fn start_with(tweak: impl FnOnce(&mut DemoOptions)) -> DemoServer {
    let mut opts = DemoOptions {
        crm_delay: Duration::from_millis(50),
        ..DemoOptions::default()
    };
    tweak(&mut opts);
    DemoServer::start(opts).await.expect("demo server starts")
}

async fn start() -> DemoServer {
    start_with(|_| {}).await
}

/// A client that does not follow redirects, so 303s can be asserted.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn login(c: &reqwest::Client, base: &str) -> String {
    let resp = c
        .post(format!("{base}/api/login"))
        .json(&json!({ "username": "oncall@demo.test", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().expect("token").to_string()
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn open_alert(c: &reqwest::Client, base: &str, title: &str) -> Value {
    let resp = c
        .post(format!("{base}/api/alerts"))
        .header("X-Integration-Key", "demo-integration-key")
        .json(&json!({ "title": title, "severity": "critical", "source": "tests" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["incident"].clone()
}

async fn ws_connect(base: &str, token: &str) -> Ws {
    let url = format!("{}/api/timeline/ws", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connects");
    ws
}

/// Next JSON text message; panics on timeout or close.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("ws message in time");
        match msg.expect("ws open").expect("ws ok") {
            Message::Text(t) => return serde_json::from_str(&t).expect("json message"),
            Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            _ => continue,
        }
    }
}

/// Wait for the server to close the socket; returns the close code.
async fn expect_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(Message::Text(t))) => panic!("expected close, got {t}"),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Assert no text message arrives within `d`.
async fn expect_silence(ws: &mut Ws, d: Duration) {
    if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, ws.next()).await {
        panic!("expected silence, got {t}");
    }
}

#[tokio::test]
async fn login_via_json_and_form_sessions_and_logout() {
    let server = start().await;
    let base = server.base_url();
    let c = client();

    let health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");

    // Bad password over JSON.
    let resp = c
        .post(format!("{base}/api/login"))
        .json(&json!({ "username": "oncall@demo.test", "password": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({ "error": "invalid credentials" })
        )
    );

    // Good JSON login: token, user, cookie.
    let resp = c
        .post(format!("{base}/api/login"))
        .json(&json!({ "username": "oncall@demo.test", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(
        cookie,
        format!("session={token}; HttpOnly; Path=/; SameSite=Lax")
    );
    assert_eq!(body["user"]["email"], "oncall@demo.test");
    assert_eq!(body["user"]["handle"], "oncall");

    // Bearer works, nothing / garbage does not.
    let me = c
        .get(format!("{base}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, me) = json_of(me).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["handle"], "oncall");
    for auth in [None, Some("Bearer not-a-session")] {
        let mut req = c.get(format!("{base}/api/me"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            json_of(resp).await,
            (StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }))
        );
    }

    // The timeline page needs a session.
    let resp = c
        .get(format!("{base}/incidents/timeline"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/login");

    // Form login: the page has the form; a bad password re-renders it with 401.
    let page = c
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"<form id="login-form" method="post" action="/login">"#,
        r#"id="username" name="username""#,
        r#"id="password" name="password""#,
        r#"id="login-submit""#,
    ] {
        assert!(page.contains(needle), "login page lacks {needle}");
    }
    let bad = c
        .post(format!("{base}/login"))
        .form(&[("username", "oncall@demo.test"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let bad_html = bad.text().await.unwrap();
    assert!(bad_html.contains(r#"id="login-form""#) && bad_html.contains(r#"id="login-error""#));

    let jar = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let resp = jar
        .post(format!("{base}/login"))
        .form(&[("username", "oncall@demo.test"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/incidents/timeline");
    assert!(resp.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .starts_with("session="));
    let timeline = jar
        .get(format!("{base}/incidents/timeline"))
        .send()
        .await
        .unwrap();
    assert_eq!(timeline.status(), StatusCode::OK);
    let html = timeline.text().await.unwrap();
    for needle in [
        "<title>Incident timeline</title>",
        r#"<ul id="timeline" elementtiming="timeline">"#,
        r#"<span id="ws-state">disconnected</span>"#,
        "performance.mark('timeline-rendered')",
        "/api/timeline/ws",
    ] {
        assert!(html.contains(needle), "timeline page lacks {needle}");
    }
    // The cookie alone authenticates the API.
    assert_eq!(
        jar.get(format!("{base}/api/me"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Logout invalidates the token.
    let out = c
        .post(format!("{base}/api/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let me = c
        .get(format!("{base}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    server.shutdown().await;
}

#[tokio::test]
async fn user_search_is_a_prefix_lookup() {
    let server = start().await;
    let base = server.base_url();
    let c = client();
    let token = login(&c, &base).await;

    let resp = c
        .get(format!("{base}/api/users?q=AL"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    let handles: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["handle"].as_str().unwrap())
        .collect();
    assert_eq!(handles, ["alice", "alan", "alma"]);
    assert_eq!(body["total"], 3);
    let alice = &body["users"][0];
    assert_eq!(alice["email"], "alice@demo.test");
    assert!(alice["id"].is_string() && alice["name"].is_string());

    // Match on the display name too, and limit.
    let resp = c
        .get(format!("{base}/api/users?q=grace%20h&limit=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, body) = json_of(resp).await;
    assert_eq!(body["users"][0]["handle"], "grace");
    let resp = c
        .get(format!("{base}/api/users?q=al&limit=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, body) = json_of(resp).await;
    assert_eq!(
        (
            body["users"].as_array().unwrap().len(),
            body["total"].as_u64()
        ),
        (2, Some(3))
    );

    let resp = c
        .get(format!("{base}/api/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (StatusCode::BAD_REQUEST, json!({ "error": "missing q" }))
    );
    let resp = c
        .get(format!("{base}/api/users?q=al"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    server.shutdown().await;
}

#[tokio::test]
async fn incident_lifecycle_is_pushed_over_the_websocket() {
    let server = start().await;
    let base = server.base_url();
    let c = client();
    let token = login(&c, &base).await;

    let mut ws = ws_connect(&base, &token).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "hello", "user": "oncall" })
    );
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({ "type": "pong" }));

    // Alert ingestion via the integration key; bad bodies name the field.
    let resp = c
        .post(format!("{base}/api/alerts"))
        .header("X-Integration-Key", "demo-integration-key")
        .json(&json!({ "title": "x", "severity": "sev0" }))
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(resp).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("severity"))
    );
    let resp = c
        .post(format!("{base}/api/alerts"))
        .json(&json!({ "title": "x", "severity": "info" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let alert = json!({ "title": "Checkout p99 > 2s", "severity": "critical", "source": "synthetics", "dedup_key": "checkout-latency" });
    let resp = c
        .post(format!("{base}/api/alerts"))
        .bearer_auth(&token)
        .json(&alert)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::CREATED);
    let inc = body["incident"].clone();
    let id = inc["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("inc-"));
    assert_eq!(inc["number"], 1);
    assert_eq!(inc["status"], "triggered");
    assert_eq!(inc["severity"], "critical");
    assert_eq!(inc["source"], "synthetics");
    assert!(inc["acked_at"].is_null() && inc["resolved_at"].is_null() && inc["acked_by"].is_null());
    assert!(humantime::parse_rfc3339(inc["created_at"].as_str().unwrap()).is_ok());

    let ev = next_json(&mut ws).await;
    assert_eq!(ev["type"], "incident.created");
    assert_eq!(ev["incident"]["id"], id.as_str());
    assert_eq!(ev["seq"], 1);
    assert!(humantime::parse_rfc3339(ev["at"].as_str().unwrap()).is_ok());

    // Same open dedup key: 200 with the existing incident, no new event.
    let resp = c
        .post(format!("{base}/api/alerts"))
        .bearer_auth(&token)
        .json(&alert)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, body["incident"]["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );

    let resp = c
        .post(format!("{base}/api/incidents/{id}/ack"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["incident"]["status"], "acknowledged");
    assert_eq!(body["incident"]["acked_by"], "oncall");
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["seq"].as_u64()),
        (Some("incident.acked"), Some(2))
    );
    assert_eq!(ev["incident"]["status"], "acknowledged");

    let resp = c
        .post(format!("{base}/api/incidents/{id}/resolve"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, body["incident"]["status"].as_str()),
        (StatusCode::OK, Some("resolved"))
    );
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["seq"].as_u64()),
        (Some("incident.resolved"), Some(3))
    );

    let resp = c
        .post(format!("{base}/api/incidents/{id}/ack"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (
            StatusCode::CONFLICT,
            json!({ "error": "incident already resolved" })
        )
    );
    let resp = c
        .get(format!("{base}/api/incidents/inc-missing"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (
            StatusCode::NOT_FOUND,
            json!({ "error": "incident not found" })
        )
    );

    // Listing and catch-up.
    let list = |status: &str| {
        c.get(format!("{base}/api/incidents?status={status}"))
            .bearer_auth(&token)
            .send()
    };
    let (_, open) = json_of(list("open").await.unwrap()).await;
    assert_eq!(open, json!({ "incidents": [] }));
    let (_, all) = json_of(list("all").await.unwrap()).await;
    assert_eq!(all["incidents"][0]["id"], id.as_str());
    let resp = c
        .get(format!("{base}/api/timeline?since=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, events) = json_of(resp).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["incident.acked", "incident.resolved"]);

    // ?token= works for clients that cannot set headers; no auth is refused.
    let ws_base = base.replacen("http", "ws", 1);
    let (mut ws2, _) =
        tokio_tungstenite::connect_async(format!("{ws_base}/api/timeline/ws?token={token}"))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws2).await["type"], "hello");
    assert!(
        tokio_tungstenite::connect_async(format!("{ws_base}/api/timeline/ws"))
            .await
            .is_err()
    );

    server.shutdown().await;
}

/// A tiny webhook receiver: forwards (X-Synthetic-Run, body) of each POST.
async fn webhook_sink() -> (String, tokio::sync::mpsc::Receiver<(Option<String>, Value)>) {
    use axum::http::HeaderMap;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let run = headers
                        .get("x-synthetic-run")
                        .map(|v| v.to_str().unwrap().to_string());
                    let _ = tx.send((run, body)).await;
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn crm_leads(c: &reqwest::Client, base: &str, email: &str) -> Vec<Value> {
    let resp = c
        .get(format!("{base}/crm/leads?email={}", enc(email)))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    body["leads"].as_array().unwrap().clone()
}

#[tokio::test]
async fn lead_flows_to_the_crm_and_the_webhook() {
    let (hook_url, mut hooks) = webhook_sink().await;
    let server = start_with(|o| {
        o.crm_delay = Duration::from_millis(200);
        o.webhook_url = Some(hook_url.clone());
    })
    .await;
    let base = server.base_url();
    let c = client();

    let landing = c
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "Vantage Demo — Incident response for busy teams",
        r#"<form id="lead-form" method="post" action="/leads">"#,
        r#"<select id="plan" name="plan">"#,
        r#"id="lead-submit""#,
    ] {
        assert!(landing.contains(needle), "landing lacks {needle}");
    }

    // Validation names the field.
    let resp = c
        .post(format!("{base}/leads"))
        .json(&json!({ "name": "Ada", "email": "nope" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("email"))
    );

    let t0 = Instant::now();
    let resp = c
        .post(format!("{base}/leads"))
        .header("X-Synthetic-Run", "run-42")
        .json(&json!({ "name": "Ada Lovelace", "email": "ada@example.com", "company": "Analytical", "plan": "team" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "queued");
    let lead_id = body["lead_id"].as_str().unwrap().to_string();
    assert!(lead_id.starts_with("lead-"));

    let (run, hook) = tokio::time::timeout(WAIT, hooks.recv())
        .await
        .expect("webhook in time")
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "worker honours crm_delay"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(run.as_deref(), Some("run-42"));
    assert_eq!(hook["event"], "lead.created");
    assert_eq!(hook["lead"]["id"], lead_id.as_str());
    assert_eq!(hook["lead"]["synthetic_run"], "run-42");
    assert_eq!(hook["lead"]["source"], "web");

    let leads = crm_leads(&c, &base, "ada@example.com").await;
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0]["id"], lead_id.as_str());
    assert_eq!(leads[0]["plan"], "team");
    assert!(leads[0]["crm_synced_at"].is_string());
    let resp = c
        .get(format!("{base}/crm/leads/{lead_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(resp).await.1["lead"]["email"], "ada@example.com");

    // The HTML form redirects to /thanks.
    let resp = c
        .post(format!("{base}/leads"))
        .form(&[
            ("name", "Grace"),
            ("email", "grace@example.com"),
            ("company", "Navy"),
            ("plan", "starter"),
            ("message", "hi"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/thanks");
    let thanks = c
        .get(format!("{base}/thanks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(thanks.contains(r#"<h1 id="thanks">Thanks!</h1>"#));
    let (run, hook) = tokio::time::timeout(WAIT, hooks.recv())
        .await
        .expect("second webhook")
        .unwrap();
    assert_eq!(
        (run, hook["lead"]["synthetic_run"].clone()),
        (None, Value::Null)
    );

    // Cleanup by id, webhook reconfiguration at run time.
    let del = c
        .delete(format!("{base}/crm/leads/{lead_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let del = c
        .delete(format!("{base}/crm/leads/{lead_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    let put = c
        .put(format!("{base}/admin/webhook"))
        .json(&json!({ "url": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let got = c.get(format!("{base}/admin/webhook")).send().await.unwrap();
    assert_eq!(json_of(got).await.1, json!({ "url": null }));

    server.shutdown().await;
}

#[tokio::test]
async fn crm_stall_holds_leads_and_delete_by_email_tombstones_them() {
    let server = start_with(|o| o.crm_delay = Duration::from_millis(20)).await;
    let base = server.base_url();
    let c = client();
    let email = "stalled@example.com";
    let post_lead = |name: &'static str| {
        c.post(format!("{base}/leads"))
            .json(&json!({ "name": name, "email": email, "company": "Acme" }))
            .send()
    };

    let resp = c
        .post(format!("{base}/admin/faults/crm"))
        .json(&json!({ "mode": "stall" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, first) = json_of(post_lead("Before delete").await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        crm_leads(&c, &base, email).await.is_empty(),
        "stalled worker must hold the lead"
    );

    // Cleanup while the lead is still queued: nothing deleted yet, but tombstoned.
    let resp = c
        .delete(format!("{base}/crm/leads?email={}", enc(email)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (StatusCode::OK, json!({ "deleted": 0 }))
    );
    // A lead submitted after the cleanup is a new one and must still flow.
    let (_, second) = json_of(post_lead("After delete").await.unwrap()).await;

    let resp = c
        .post(format!("{base}/admin/faults/crm"))
        .json(&json!({ "mode": "normal" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let deadline = Instant::now() + WAIT;
    let leads = loop {
        let leads = crm_leads(&c, &base, email).await;
        if !leads.is_empty() || Instant::now() > deadline {
            break leads;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // the first lead would have landed by now
    let leads_after = crm_leads(&c, &base, email).await;
    assert_eq!(leads, leads_after);
    assert_eq!(leads.len(), 1, "{leads:?}");
    assert_eq!(leads[0]["id"], second["lead_id"]);
    assert_ne!(leads[0]["id"], first["lead_id"]);

    // break: leads are taken and discarded.
    c.post(format!("{base}/admin/faults/crm"))
        .json(&json!({ "mode": "break" }))
        .send()
        .await
        .unwrap();
    let faults = json_of(c.get(format!("{base}/admin/faults")).send().await.unwrap())
        .await
        .1;
    assert_eq!(faults["crm"], "break");
    let broken = "broken@example.com";
    let resp = c
        .post(format!("{base}/leads"))
        .json(&json!({ "name": "B", "email": broken, "company": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.post(format!("{base}/admin/faults/crm"))
        .json(&json!({ "mode": "normal" }))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(crm_leads(&c, &base, broken).await.is_empty());

    let resp = c
        .post(format!("{base}/admin/faults/crm"))
        .json(&json!({ "mode": "sideways" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    server.shutdown().await;
}

#[tokio::test]
async fn http_faults_match_route_templates() {
    let server = start().await;
    let base = server.base_url();
    let c = client();
    let token = login(&c, &base).await;
    let inc = open_alert(&c, &base, "Disk full on db-1").await;
    let id = inc["id"].as_str().unwrap();

    let fault = json!({ "route": "POST /api/incidents/{id}/ack", "latency_ms": 0, "status": 500, "probability": 1.0 });
    let resp = c
        .post(format!("{base}/admin/faults/http"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = c
        .post(format!("{base}/api/incidents/{id}/ack"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "injected fault" })
        )
    );
    // The handler did not run.
    let resp = c
        .get(format!("{base}/api/incidents/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(resp).await.1["incident"]["status"], "triggered");

    // Latency only: slower, but the real answer.
    let slow = json!({ "route": "get /api/me", "latency_ms": 300 });
    assert_eq!(
        c.post(format!("{base}/admin/faults/http"))
            .json(&slow)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let t0 = Instant::now();
    let resp = c
        .get(format!("{base}/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(t0.elapsed() >= Duration::from_millis(300));

    let state = json_of(c.get(format!("{base}/admin/faults")).send().await.unwrap())
        .await
        .1;
    let routes: Vec<&str> = state["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["GET /api/me", "POST /api/incidents/{id}/ack"]);
    let bad = c
        .post(format!("{base}/admin/faults/http"))
        .json(&json!({ "route": "/no-method" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        c.delete(format!("{base}/admin/faults"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let resp = c
        .post(format!("{base}/api/incidents/{id}/ack"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(resp).await.1["incident"]["status"], "acknowledged");
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_drop_and_stall_faults() {
    let server = start().await;
    let base = server.base_url();
    let c = client();
    let token = login(&c, &base).await;
    let set_mode = |mode: &'static str| {
        c.post(format!("{base}/admin/faults/websocket"))
            .json(&json!({ "mode": mode }))
            .send()
    };

    // drop: open sockets are closed now, new ones right after hello.
    let mut ws = ws_connect(&base, &token).await;
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    assert_eq!(set_mode("drop").await.unwrap().status(), StatusCode::OK);
    assert_eq!(expect_close(&mut ws).await, Some(1011));
    let mut ws = ws_connect(&base, &token).await;
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    assert_eq!(expect_close(&mut ws).await, Some(1011));

    // stall: the socket stays up but events are held until normal.
    set_mode("stall").await.unwrap();
    let mut ws = ws_connect(&base, &token).await;
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let inc = open_alert(&c, &base, "Queue backlog").await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    set_mode("normal").await.unwrap();
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), &ev["incident"]["id"]),
        (Some("incident.created"), &inc["id"])
    );

    // Shutdown closes sockets and stays within its bound.
    let t0 = Instant::now();
    server.shutdown().await;
    assert!(t0.elapsed() < Duration::from_millis(2500));
    assert_eq!(expect_close(&mut ws).await, Some(1001));
}

#[tokio::test]
async fn dns_responder_answers_the_vantage_test_zone() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::op::{Message, Query, ResponseCode};
    use hickory_resolver::proto::rr::{Name, RData, RecordType};
    use hickory_resolver::TokioResolver;
    use std::str::FromStr;

    let server = start().await;
    let dns: SocketAddr = server.dns_addr().expect("dns enabled");

    let mut ns = NameServerConfig::udp(dns.ip());
    for conn in &mut ns.connections {
        conn.port = dns.port();
    }
    let resolver = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .build()
    .expect("resolver");

    let rdata = |lookup: hickory_resolver::lookup::Lookup| -> Vec<String> {
        lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.to_string()),
                RData::AAAA(a) => Some(a.to_string()),
                RData::TXT(t) => Some(t.to_string()),
                RData::CNAME(c) => Some(format!("CNAME {}", c.0)),
                _ => None,
            })
            .collect()
    };
    let v4 = resolver
        .ipv4_lookup("demo.vantage.test.")
        .await
        .expect("A answer");
    assert_eq!(rdata(v4), ["127.0.0.1"]);
    let v6 = resolver
        .ipv6_lookup("demo.vantage.test.")
        .await
        .expect("AAAA answer");
    assert_eq!(rdata(v6), ["::1"]);
    let txt = resolver
        .txt_lookup("demo.vantage.test.")
        .await
        .expect("TXT answer");
    assert_eq!(rdata(txt), ["v=vantage-demo"]);
    let www = resolver
        .ipv4_lookup("www.demo.vantage.test.")
        .await
        .expect("CNAME chain");
    assert_eq!(rdata(www), ["CNAME demo.vantage.test.", "127.0.0.1"]);
    let err = resolver
        .ipv4_lookup("nope.vantage.test.")
        .await
        .expect_err("NXDOMAIN");
    assert!(err.is_nx_domain(), "{err:?}");

    // Raw exchanges: flags and rcodes, and garbage is ignored.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"\x01\x02garbage", dns).await.unwrap();
    let ask = |name: &str| {
        let mut m = Message::query();
        m.queries
            .push(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    };
    let mut buf = [0u8; 1500];
    for (name, rcode, aa) in [
        ("ghost.vantage.test.", ResponseCode::NXDomain, true),
        ("example.com.", ResponseCode::Refused, false),
        ("DEMO.Vantage.Test.", ResponseCode::NoError, true),
    ] {
        sock.send_to(&ask(name), dns).await.unwrap();
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
            .await
            .expect("reply")
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.response_code, rcode, "{name}");
        assert_eq!(reply.metadata.authoritative, aa, "{name}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn https_serves_the_same_app_with_the_generated_cert() {
    let server = start().await;
    let https = server.https_url().expect("https enabled");
    let pem = server.ca_pem().expect("cert pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = parsed.parse_x509().unwrap();
    let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let days = validity as f64 / 86_400.0;
    assert!((90.0..90.1).contains(&days), "validity {days} days");
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN")
        .value
        .general_names
        .len();
    assert_eq!(sans, 3);

    let trusted = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .resolve("demo.vantage.test", SocketAddr::from(([127, 0, 0, 1], 0)))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = trusted
        .get(format!("{https}/healthz"))
        .send()
        .await
        .expect("https by IP");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
    let port = https.rsplit(':').next().unwrap();
    let resp = trusted
        .get(format!("https://demo.vantage.test:{port}/login"))
        .send()
        .await
        .expect("https by name");
    assert!(resp.text().await.unwrap().contains(r#"id="login-form""#));

    // Without trusting the cert the handshake fails.
    let untrusted = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusted
        .get(format!("{https}/healthz"))
        .send()
        .await
        .is_err());
    server.shutdown().await;
}
