//! Users, login/logout, sessions (cookie or bearer token) and @mention search.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::pages;
use super::state::{json_error, lock, random_token, App};

/// The account journeys log in with.
pub const DEMO_USERNAME: &str = "oncall@demo.test";
/// Sessions kept at most; the oldest is evicted first.
const MAX_SESSIONS: usize = 10_000;
/// Sessions expire after this long regardless of use.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_SEARCH_LIMIT: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub handle: String,
    pub name: String,
    pub email: String,
}

pub fn demo_users() -> Vec<User> {
    let people = [
        ("oncall", "On-call Engineer"),
        ("alice", "Alice Nguyen"),
        ("alan", "Alan Park"),
        ("alma", "Alma Ortiz"),
        ("bob", "Bob Martin"),
        ("carol", "Carol Diaz"),
        ("dave", "Dave Kowalski"),
        ("erin", "Erin O'Brien"),
        ("frank", "Frank Müller"),
        ("grace", "Grace Hopper"),
        ("heidi", "Heidi Larsen"),
        ("ivan", "Ivan Petrov"),
        ("judy", "Judy Chen"),
        ("mallory", "Mallory Quinn"),
        ("oscar", "Oscar Alvarez"),
    ];
    people
        .iter()
        .enumerate()
        .map(|(i, (handle, name))| User {
            id: format!("u-{:03}", i + 1),
            handle: handle.to_string(),
            name: name.to_string(),
            email: format!("{handle}@demo.test"),
        })
        .collect()
}

/// Token -> user, bounded, evicting the oldest session first.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, (usize, u64, Instant)>,
    by_age: BTreeMap<u64, String>,
    next: u64,
}

impl Sessions {
    fn create(&mut self, user: usize) -> String {
        while self.by_token.len() >= MAX_SESSIONS {
            match self.by_age.pop_first() {
                Some((_, old)) => {
                    self.by_token.remove(&old);
                }
                None => break,
            }
        }
        let token = random_token();
        self.next += 1;
        self.by_token
            .insert(token.clone(), (user, self.next, Instant::now()));
        self.by_age.insert(self.next, token.clone());
        token
    }

    fn lookup(&mut self, token: &str) -> Option<usize> {
        let (user, _, created) = *self.by_token.get(token)?;
        if created.elapsed() > SESSION_TTL {
            self.remove(token);
            return None;
        }
        Some(user)
    }

    fn remove(&mut self, token: &str) {
        if let Some((_, seq, _)) = self.by_token.remove(token) {
            self.by_age.remove(&seq);
        }
    }
}

/// An authenticated caller of the API.
pub struct AuthUser {
    pub user: User,
    pub token: String,
}

impl FromRequestParts<Arc<App>> for AuthUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        authenticate(app, &parts.headers, None)
            .ok_or_else(|| json_error(StatusCode::UNAUTHORIZED, "unauthorized"))
    }
}

/// Resolve the caller from `Authorization: Bearer`, the `session` cookie, or
/// an explicit token (the WebSocket `?token=`), in that order.
pub fn authenticate(app: &App, headers: &HeaderMap, query_token: Option<&str>) -> Option<AuthUser> {
    let candidates = [
        bearer_token(headers),
        session_cookie(headers),
        query_token.map(str::to_string),
    ];
    let mut sessions = lock(&app.sessions);
    for token in candidates.into_iter().flatten() {
        if let Some(idx) = sessions.lookup(&token) {
            let user = app.users.get(idx)?.clone();
            return Some(AuthUser { user, token });
        }
    }
    None
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "session")
        .map(|(_, v)| v.to_string())
}

fn cookie_header(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("session={token}; HttpOnly; Path=/; SameSite=Lax"))
        .unwrap_or_else(|_| HeaderValue::from_static("session=; Path=/"))
}

/// Check credentials and open a session; returns (user, token).
fn try_login(app: &App, username: &str, password: &str) -> Option<(User, String)> {
    let username_ok = username.trim().eq_ignore_ascii_case(DEMO_USERNAME);
    if !(username_ok & constant_time_eq(password.as_bytes(), app.password.as_bytes())) {
        return None;
    }
    let idx = app.users.iter().position(|u| u.email == DEMO_USERNAME)?;
    let token = lock(&app.sessions).create(idx);
    Some((app.users[idx].clone(), token))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /login` (HTML form).
pub async fn login_form(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let mut username = String::new();
    let mut password = String::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        match k.as_ref() {
            "username" => username = v.into_owned(),
            "password" => password = v.into_owned(),
            _ => {}
        }
    }
    match try_login(&app, &username, &password) {
        Some((_, token)) => {
            let mut resp = Redirect::to("/incidents/timeline").into_response();
            resp.headers_mut().insert(SET_COOKIE, cookie_header(&token));
            resp
        }
        None => {
            let html = pages::login_html(Some("Invalid username or password."), &username);
            (StatusCode::UNAUTHORIZED, html).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct LoginBody {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `POST /api/login` (JSON).
pub async fn login_json(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Ok(creds) = serde_json::from_slice::<LoginBody>(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "body must be JSON {\"username\",\"password\"}",
        );
    };
    match try_login(&app, &creds.username, &creds.password) {
        Some((user, token)) => {
            let mut resp =
                Json(serde_json::json!({ "token": token, "user": user })).into_response();
            resp.headers_mut().insert(SET_COOKIE, cookie_header(&token));
            resp
        }
        None => json_error(StatusCode::UNAUTHORIZED, "invalid credentials"),
    }
}

/// `POST /api/logout`: forget the session and clear the cookie.
pub async fn logout(State(app): State<Arc<App>>, auth: AuthUser) -> Response {
    lock(&app.sessions).remove(&auth.token);
    let clear = HeaderValue::from_static("session=; Max-Age=0; HttpOnly; Path=/; SameSite=Lax");
    (StatusCode::NO_CONTENT, [(SET_COOKIE, clear)]).into_response()
}

/// `GET /api/me`
pub async fn me(auth: AuthUser) -> Json<User> {
    Json(auth.user)
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/users?q=al&limit=10`: the @mention lookup.
pub async fn search_users(
    State(app): State<Arc<App>>,
    _auth: AuthUser,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return json_error(StatusCode::BAD_REQUEST, "invalid query string");
    };
    let q = params.q.unwrap_or_default().trim().to_lowercase();
    if q.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "missing q");
    }
    let limit = params.limit.unwrap_or(10).clamp(1, MAX_SEARCH_LIMIT);
    let matches: Vec<&User> = app
        .users
        .iter()
        .filter(|u| {
            u.handle.to_lowercase().starts_with(&q) || u.name.to_lowercase().starts_with(&q)
        })
        .collect();
    let total = matches.len();
    let users: Vec<&User> = matches.into_iter().take(limit).collect();
    Json(serde_json::json!({ "users": users, "total": total })).into_response()
}
