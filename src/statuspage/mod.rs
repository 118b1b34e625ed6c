//! The status page on the admin endpoint: a server-rendered view of recent
//! runs for people who would rather look than query. It reads finished runs
//! (fed by the daemon's run observer) into a bounded history per journey and
//! never changes the agent's state.
//!
//! Routes (all GET): `/` the grid, `/ui/journey?name=`, `/ui/marketing`,
//! `/ui/stream` (server-sent events, one per finished run), `/ui/screenshot/{run id}`,
//! `/ui/api/journeys` and `/ui/api/journey?name=` (the same data as JSON).

pub mod history;
mod render;
mod svg;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::browser::BrowserManager;
use crate::config::{Journey, StatusPageConfig};
use crate::steps::{delivery, Delivery};
use crate::vocab::RunResult;
use history::History;

/// Live-update streams open at once, at most.
const MAX_STREAMS: usize = 32;
/// A stream ends after this long; browsers reconnect by themselves.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Finished-run events buffered per slow stream before it skips ahead.
const EVENT_BUFFER: usize = 256;

/// What the page knows of a journey besides its runs.
#[derive(Debug, Clone)]
struct Meta {
    labels: BTreeMap<String, String>,
    interval: Duration,
    /// Delivery roles of its steps, in order (for the marketing view).
    roles: Vec<Delivery>,
    /// The configured wait of its first step of each role, for "did not … within".
    waits: render::Waits,
    marketing: bool,
}

struct Tracked {
    meta: Meta,
    history: History,
}

/// The browser manager, if a journey has needed one so far; asked at each
/// screenshot request, so a browser journey added by a reload has its screenshots served.
pub type BrowserSource = Arc<dyn Fn() -> Option<Arc<BrowserManager>> + Send + Sync>;

pub struct StatusPage {
    cfg: StatusPageConfig,
    agent_id: String,
    location: String,
    browser: BrowserSource,
    journeys: Mutex<BTreeMap<String, Tracked>>,
    events: broadcast::Sender<Arc<str>>,
    streams: Arc<Semaphore>,
}

impl StatusPage {
    pub fn new(
        cfg: StatusPageConfig,
        agent_id: String,
        location: String,
        browser: BrowserSource,
    ) -> Arc<StatusPage> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(StatusPage {
            cfg,
            agent_id,
            location,
            browser,
            journeys: Mutex::new(BTreeMap::new()),
            events,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        })
    }

    /// Makes `journeys` the shown set: new ones appear, removed ones and their history go.
    pub fn set_journeys(&self, journeys: &[Journey]) {
        let (key, value) = self.cfg.marketing_label.split_once('=').unwrap_or(("", ""));
        let mut map = self.journeys.lock().expect("status page lock");
        map.retain(|name, _| journeys.iter().any(|j| &j.name == name));
        for j in journeys {
            let roles: Vec<Delivery> = j
                .steps
                .iter()
                .filter_map(|s| delivery(s.kind.kind()))
                .collect();
            let wait = |role: Delivery| {
                j.steps
                    .iter()
                    .find(|s| delivery(s.kind.kind()) == Some(role))
                    .and_then(|s| s.kind.configured_wait())
            };
            let waits = render::Waits {
                arrived: wait(Delivery::Arrived),
                webhook: wait(Delivery::Webhook),
            };
            let marketing = !roles.is_empty()
                || (!key.is_empty() && j.labels.get(key).is_some_and(|v| v == value));
            let meta = Meta {
                labels: j.labels.clone(),
                interval: j.interval,
                roles,
                waits,
                marketing,
            };
            map.entry(j.name.clone())
                .and_modify(|t| t.meta = meta.clone())
                .or_insert_with(|| Tracked {
                    meta,
                    history: History::new(self.cfg.history),
                });
        }
    }

    /// Records a finished run of a shown journey and tells the open pages.
    pub fn record(&self, r: &RunResult) {
        {
            let mut map = self.journeys.lock().expect("status page lock");
            let Some(t) = map.get_mut(&r.journey) else {
                return;
            };
            t.history.push(r);
        }
        // Built only for open pages: this runs for every run of every journey.
        if self.events.receiver_count() > 0 {
            let event = serde_json::json!({ "journey": r.journey, "outcome": r.outcome.as_str(), "run_id": r.run_id }).to_string();
            let _ = self.events.send(Arc::from(event));
        }
    }

    fn browser(&self) -> Option<Arc<BrowserManager>> {
        (self.browser)()
    }

    /// The failure screenshot of a kept run, if the artifact directory still has it.
    fn screenshot(&self, journey: &str, shot: &Shot) -> Option<std::path::PathBuf> {
        let run = format!("{:032x}", shot.run_id);
        let browser = self.browser()?;
        let artifacts = &browser.artifacts;
        shot.failed_steps
            .iter()
            .find_map(|step| artifacts.find_failure(journey, step, &run))
    }
}

/// What finds a failed run's screenshot, copied out of the history so the
/// disk is searched without holding its lock.
struct Shot {
    run_id: u128,
    failed_steps: Vec<String>,
}

impl Shot {
    fn of(e: &history::Entry) -> Option<Shot> {
        let d = e.detail?;
        Some(Shot {
            run_id: e.run_id,
            failed_steps: d
                .steps
                .iter()
                .filter(|s| s.outcome == crate::vocab::Outcome::Failure)
                .map(|s| s.name.clone())
                .collect(),
        })
    }
}

/// The page's routes, to merge into the admin router.
pub fn router(page: Arc<StatusPage>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/ui/journey", get(journey))
        .route("/ui/marketing", get(marketing))
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    render::APP_JS,
                )
            }),
        )
        .route("/ui/stream", get(stream))
        .route("/ui/screenshot/{run}", get(screenshot))
        .route("/ui/api/journeys", get(api_journeys))
        .route("/ui/api/journey", get(api_journey))
        .with_state(Ctx { page, shutdown })
}

#[derive(Clone)]
struct Ctx {
    page: Arc<StatusPage>,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
struct ViewQuery {
    name: Option<String>,
    /// Only the part that live updates replace.
    #[serde(default)]
    fragment: Option<String>,
}

/// Headers of every page: nothing from elsewhere runs or loads, even if escaping had a hole.
fn html(body: String) -> Response {
    let mut resp = Html(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{what}\n"),
    )
        .into_response()
}

fn snapshot_view<T>(page: &StatusPage, f: impl FnOnce(&render::View) -> T) -> T {
    let map = page.journeys.lock().expect("status page lock");
    let view = render::View {
        page,
        journeys: &map,
        now: SystemTime::now(),
    };
    f(&view)
}

async fn overview(State(c): State<Ctx>, Query(q): Query<ViewQuery>) -> Response {
    let body = snapshot_view(&c.page, render::overview);
    html(if q.fragment.is_some() {
        body
    } else {
        render::layout(&c.page, "Status", None, "overview", &body)
    })
}

async fn journey(State(c): State<Ctx>, Query(q): Query<ViewQuery>) -> Response {
    let Some(name) = q.name else {
        return not_found("which journey? add ?name=JOURNEY");
    };
    // Screenshots are looked up on disk without holding the history lock.
    let failures: Vec<Shot> = {
        let map = c.page.journeys.lock().expect("status page lock");
        let Some(t) = map.get(&name) else {
            return not_found("no such journey on this agent");
        };
        t.history
            .runs()
            .iter()
            .rev()
            .filter_map(|e| Shot::of(&e))
            .take(render::FAILURES_SHOWN)
            .collect()
    };
    let (page, journey) = (c.page.clone(), name.clone());
    let lookup = tokio::task::spawn_blocking(move || {
        failures
            .iter()
            .filter(|e| page.screenshot(&journey, e).is_some())
            .map(|e| e.run_id)
            .collect::<HashSet<u128>>()
    });
    let shots = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let Some(body) = snapshot_view(&c.page, |v| render::journey(v, &name, &shots)) else {
        return not_found("no such journey on this agent");
    };
    html(if q.fragment.is_some() {
        body
    } else {
        render::layout(&c.page, &name, Some(&name), "journey", &body)
    })
}

async fn marketing(State(c): State<Ctx>, Query(q): Query<ViewQuery>) -> Response {
    let body = snapshot_view(&c.page, render::marketing);
    html(if q.fragment.is_some() {
        body
    } else {
        render::layout(&c.page, "Lead capture", None, "marketing", &body)
    })
}

async fn screenshot(State(c): State<Ctx>, Path(run): Path<String>) -> Response {
    // Only a kept run's own screenshot: the request names a run, never a file.
    let Some(id) = (run.len() == 32)
        .then(|| u128::from_str_radix(&run, 16).ok())
        .flatten()
    else {
        return not_found("no such run");
    };
    let found = {
        let map = c.page.journeys.lock().expect("status page lock");
        map.iter()
            .find_map(|(name, t)| t.history.find(id).map(|e| (name.clone(), Shot::of(&e))))
    };
    let Some((name, shot)) = found else {
        return not_found("no such run in the kept history");
    };
    let Some(shot) = shot else {
        return not_found("no screenshot kept for this run");
    };
    let page = c.page.clone();
    let lookup = tokio::task::spawn_blocking(move || page.screenshot(&name, &shot));
    let path = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(path) = path else {
        return not_found("no screenshot kept for this run");
    };
    match tokio::time::timeout(Duration::from_secs(5), tokio::fs::read(&path)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        _ => not_found("the screenshot was rotated away"),
    }
}

async fn stream(State(c): State<Ctx>) -> Response {
    let Ok(permit) = c.page.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages open\n",
        )
            .into_response();
    };
    let rx = c.page.events.subscribe();
    let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
    let stop = c.shutdown.clone();
    let s = futures_util::stream::unfold((rx, permit), move |(mut rx, permit)| {
        let stop = stop.clone();
        async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep_until(deadline) => return None,
                    r = rx.recv() => r,
                };
                match next {
                    Ok(data) => {
                        return Some((
                            Ok::<_, Infallible>(Event::default().event("run").data(&*data)),
                            (rx, permit),
                        ))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn api_journeys(State(c): State<Ctx>) -> Response {
    let v = snapshot_view(&c.page, render::api_journeys);
    Json(v).into_response()
}

async fn api_journey(State(c): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(name) = q.get("name") else {
        return not_found("which journey? add ?name=JOURNEY");
    };
    match snapshot_view(&c.page, |v| render::api_journey(v, name)) {
        Some(v) => Json(v).into_response(),
        None => not_found("no such journey on this agent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// The marketing words name the wait the journey's author configured: the
    /// `within` of its first `eventually` and `callback` steps.
    #[test]
    fn a_journeys_configured_waits_are_kept_for_the_marketing_words() {
        let yaml = "journeys:\n  - name: lead\n    interval: 30s\n    steps:\n      - name: in crm\n        eventually:\n          within: 20s\n          step: {name: find, tcp: {address: \"127.0.0.1:1\"}}\n      - name: hook\n        callback: {within: 7s}\n";
        let journeys = crate::config::validate::compile_files(&[("p.yaml".into(), yaml.into())]).expect("valid");
        let page = StatusPage::new(StatusPageConfig::default(), "a".into(), "l".into(), Arc::new(|| None));
        page.set_journeys(&journeys);
        let map = page.journeys.lock().unwrap();
        let meta = &map["lead"].meta;
        assert_eq!(meta.roles, vec![Delivery::Arrived, Delivery::Webhook]);
        assert_eq!(
            meta.waits,
            render::Waits { arrived: Some(Duration::from_secs(20)), webhook: Some(Duration::from_secs(7)) }
        );
        assert!(meta.marketing);
    }

    /// The page asks for the browser manager at each screenshot request: one
    /// made after the page (a reload's first browser journey) is served too.
    #[test]
    fn the_browser_manager_is_looked_up_when_asked_not_when_the_page_is_made() {
        let made: Arc<OnceLock<Arc<BrowserManager>>> = Arc::new(OnceLock::new());
        let source = made.clone();
        let page = StatusPage::new(StatusPageConfig::default(), "a".into(), "l".into(), Arc::new(move || source.get().cloned()));
        assert!(page.browser().is_none());
        let dir = std::env::temp_dir().join(format!("vantage-page-{}", std::process::id()));
        let m = BrowserManager::new(&Default::default(), Some(dir));
        made.set(m.clone()).ok().unwrap();
        assert!(page.browser().is_some_and(|b| Arc::ptr_eq(&b, &m)));
    }
}
