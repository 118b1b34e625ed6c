//! Server-rendered HTML: marketing landing page with the lead form, thanks
//! page, login form and the live incident timeline.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::auth::authenticate;
use super::state::App;

/// Values of the lead form, kept to re-render it after a validation error.
#[derive(Debug, Default, Clone)]
pub struct LeadForm {
    pub name: String,
    pub email: String,
    pub company: String,
    pub plan: String,
    pub message: String,
}

const STYLE: &str = "<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2330}
header{display:flex;justify-content:space-between;align-items:center}
label{display:block;margin:.6rem 0 .2rem}input,select,textarea{width:100%;padding:.4rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1.2rem}.error{color:#b00020}
li.incident{padding:.3rem 0}li[data-status=triggered]{color:#b00020}li[data-status=resolved]{color:#6b7280}
</style>";

use crate::escape_markup as escape;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title>{STYLE}</head><body>{body}</body></html>\n",
        escape(title)
    ))
}

fn error_block(error: Option<&str>, id: &str) -> String {
    error
        .map(|e| {
            format!(
                "<p id=\"{id}\" class=\"error\" role=\"alert\">{}</p>",
                escape(e)
            )
        })
        .unwrap_or_default()
}

/// The landing page, optionally with an error and the submitted values.
pub fn landing_html(error: Option<&str>, form: &LeadForm) -> Html<String> {
    let plans = ["starter", "team", "enterprise"]
        .iter()
        .map(|p| {
            let selected = if form.plan == *p { " selected" } else { "" };
            format!(
                "<option value=\"{p}\"{selected}>{}{}</option>",
                p[..1].to_uppercase(),
                &p[1..]
            )
        })
        .collect::<String>();
    let body = format!(
        r#"<header><strong>Vantage Demo</strong><a href="/login">Sign in</a></header>
<h1>Vantage Demo — Incident response for busy teams</h1>
<p>Route alerts to the right person, acknowledge in one click and watch every incident
unfold on a live timeline. Set up in minutes; no pager required.</p>
<ul><li>Alert ingestion with de-duplication</li><li>Live incident timeline</li><li>@mention your teammates</li></ul>
<h2>Talk to sales</h2>
{error}
<form id="lead-form" method="post" action="/leads">
<label for="name">Name</label><input id="name" name="name" required value="{name}">
<label for="email">Work email</label><input id="email" name="email" type="email" required value="{email}">
<label for="company">Company</label><input id="company" name="company" value="{company}">
<label for="plan">Plan</label><select id="plan" name="plan">{plans}</select>
<label for="message">Message</label><textarea id="message" name="message" rows="4">{message}</textarea>
<button id="lead-submit" type="submit">Request a demo</button>
</form>"#,
        error = error_block(error, "lead-error"),
        name = escape(&form.name),
        email = escape(&form.email),
        company = escape(&form.company),
        message = escape(&form.message),
    );
    page("Vantage Demo — Incident response for busy teams", &body)
}

/// `GET /`
pub async fn landing() -> Html<String> {
    landing_html(None, &LeadForm::default())
}

/// `GET /thanks`
pub async fn thanks() -> Html<String> {
    page(
        "Thanks — Vantage Demo",
        r#"<h1 id="thanks">Thanks!</h1><p>We received your request and will be in touch shortly.</p><p><a href="/">Back to the homepage</a></p>"#,
    )
}

/// The login form, optionally with an error.
pub fn login_html(error: Option<&str>, username: &str) -> Html<String> {
    let body = format!(
        r#"<h1>Sign in to Vantage Demo</h1>
{error}
<form id="login-form" method="post" action="/login">
<label for="username">Email</label><input id="username" name="username" type="email" autocomplete="username" required value="{username}">
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="login-submit" type="submit">Sign in</button>
</form>"#,
        error = error_block(error, "login-error"),
        username = escape(username),
    );
    page("Sign in — Vantage Demo", &body)
}

/// `GET /login`
pub async fn login_page() -> Html<String> {
    login_html(None, "")
}

/// `GET /incidents/timeline`: needs the session cookie, else redirects to /login.
pub async fn timeline_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(auth) = authenticate(&app, &headers, None) else {
        return Redirect::to("/login").into_response();
    };
    let body = format!(
        r#"<header><strong>Vantage Demo</strong><span>Signed in as @{handle} · live: <span id="ws-state">disconnected</span></span></header>
<h1>Incident timeline</h1>
<ul id="timeline" elementtiming="timeline"></ul>
<script>{TIMELINE_JS}</script>"#,
        handle = escape(&auth.user.handle),
    );
    page("Incident timeline", &body).into_response()
}

const TIMELINE_JS: &str = r#"
(() => {
  const list = document.getElementById('timeline');
  const wsState = document.getElementById('ws-state');
  let rendered = false, everConnected = false, lastSeq = 0, backoff = 500;

  function render(inc, overwrite) {
    let li = [...list.children].find(el => el.dataset.incidentId === inc.id);
    if (li && !overwrite) return;
    if (!li) {
      li = document.createElement('li');
      li.className = 'incident';
      li.dataset.incidentId = inc.id;
      list.prepend(li);
    }
    li.dataset.status = inc.status;
    li.textContent = '#' + inc.number + ' ' + inc.title + ' \u2014 ' + inc.status;
  }
  function markRendered() {
    if (!rendered) { rendered = true; performance.mark('timeline-rendered'); }
  }
  function apply(ev) {
    if (ev.incident) render(ev.incident, true);
    if (ev.seq) lastSeq = Math.max(lastSeq, ev.seq);
  }
  async function catchUp() {
    try {
      const r = await fetch('/api/timeline?since=' + lastSeq, {credentials: 'same-origin'});
      if (r.ok) (await r.json()).events.forEach(apply);
    } catch (e) { /* next reconnect retries */ }
  }
  async function loadOpen() {
    try {
      const r = await fetch('/api/incidents', {credentials: 'same-origin'});
      if (r.ok) (await r.json()).incidents.slice().reverse().forEach(inc => render(inc, false));
    } finally { markRendered(); }
  }
  function connect() {
    const proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const ws = new WebSocket(proto + location.host + '/api/timeline/ws');
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev.type === 'hello') {
        wsState.textContent = 'connected';
        backoff = 500;
        if (everConnected) catchUp(); // events missed while disconnected
        everConnected = true;
      } else if (ev.type === 'lagged') {
        catchUp();
      } else {
        apply(ev);
      }
    };
    ws.onclose = () => {
      wsState.textContent = 'disconnected';
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
  loadOpen();
})();
"#;
