//! The browser behind `browser` steps: one chromedriver run by the agent, and
//! a fresh headless-Chromium session per run.
//!
//! Lifecycle rules:
//! - chromedriver starts lazily (first browser step), on a free loopback port,
//!   in its own process group so it and its Chromium children die together;
//!   it is health-checked (`/status`) before every session and replaced when
//!   it crashed, hangs, or has served `restart_after_sessions` sessions.
//! - A session is created by the run's first browser step and closed at the
//!   end of the run (`RunBrowser::close`), or from `Drop` when the run was
//!   dropped mid-flight (timeout, panic, abort): chromedriver quits Chromium,
//!   whatever still uses the session's profile is killed, the profile removed.
//! - [`BrowserManager::shutdown`] (and `Drop`) kill every chromedriver
//!   process group the manager started.

pub mod artifacts;
pub mod procs;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::agent::BrowserConfig;
use crate::vocab::{fmt_dur, ErrorType, Phase, StepError};
use artifacts::Artifacts;

/// What to tell the operator when Chromium or chromedriver is missing.
pub const INSTALL_HINT: &str = "install them with `apt-get install chromium chromium-driver`";

/// Fixed viewport of every session.
pub const VIEWPORT: (u32, u32) = (1366, 768);

/// Flags for every Chromium; the session adds `--user-data-dir`.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // The crashpad handler still starts (detached) and exits with Chromium;
    // `--disable-crashpad-for-testing` would stop it but crashes Chromium's network service.
    "--disable-crash-reporter",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1366,768",
    // chromedriver drives Chromium over a pipe: no DevTools port another local user could reach.
    "--remote-debugging-pipe",
];

const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const SESSION_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One chromedriver process (and, through its process group, its Chromiums).
pub struct Driver {
    pid: u32,
    port: u16,
    /// `/<128 random bits>`: chromedriver answers nothing outside it.
    base: String,
    child: Mutex<Option<Child>>,
    sessions: AtomicU32,
    /// Its TMPDIR, inherited by its Chromiums: a Chromium killed with its
    /// driver leaves its singleton socket directory here, removed with it.
    tmp: PathBuf,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chromedriver(pid {}, port {})", self.pid, self.port)
    }
}

impl Driver {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}/", self.port, self.base)
    }

    /// Loopback port (tests probe it as another user).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// False once it exited (reaps it) or was killed.
    fn alive(&self) -> bool {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Its exit status once it has exited on its own (reaps it); `None` while it runs or after `kill`.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills chromedriver's whole process group and any descendant that left it; reaps chromedriver.
    fn kill(&self) {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = g.take() {
            let strays = procs::descendants(self.pid);
            procs::kill_group(self.pid, procs::SIGKILL);
            for p in strays {
                procs::kill_pid(p, procs::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }

    /// `GET /status` answers `ready: true` within `limit`.
    async fn ready(&self, limit: Duration) -> bool {
        match tokio::time::timeout(
            limit,
            driver_request(self.port, &format!("{}/status", self.base), None),
        )
        .await
        {
            Ok(Ok(v)) => v
                .pointer("/value/ready")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            _ => false,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Notices a crashed chromedriver at once (and reaps it), not at the next browser run.
fn watch(d: std::sync::Weak<Driver>) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(250));
        loop {
            t.tick().await;
            let Some(d) = d.upgrade() else { return };
            if let Some(status) = d.exited() {
                tracing::warn!(pid = d.pid, %status, "chromedriver exited unexpectedly; reaped; the next browser run starts a new one");
                return;
            }
            if d.child.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                return;
            }
        }
    });
}

/// A plain HTTP/1 request to chromedriver; the JSON answer.
async fn driver_request(port: u16, path: &str, body: Option<Value>) -> Result<Value, String> {
    let method = if body.is_some() { "POST" } else { "GET" };
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// A session command by path: chromedriver-specific endpoints fantoccini has
/// no method for, and navigation without fantoccini's extra `GetUrl` (which
/// waits for the blank start page's navigation).
#[derive(Debug)]
pub struct ChromeCmd {
    pub path: &'static str,
    pub body: Value,
}

impl WebDriverCompatibleCommand for ChromeCmd {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// Starts and supervises chromedriver; hands out sessions within the concurrency cap.
pub struct BrowserManager {
    chromedriver: PathBuf,
    chromium: PathBuf,
    max_concurrent: usize,
    restart_after: u32,
    slots: Arc<Semaphore>,
    current: tokio::sync::Mutex<Option<Arc<Driver>>>,
    /// Every chromedriver started, so shutdown reaches ones still serving old sessions.
    drivers: Mutex<Vec<Weak<Driver>>>,
    /// Profiles of sessions not yet cleaned up.
    profiles: Mutex<HashSet<PathBuf>>,
    pub artifacts: Artifacts,
    shut: AtomicBool,
    sessions_created: AtomicU32,
    drivers_started: AtomicU32,
}

impl fmt::Debug for BrowserManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrowserManager")
            .field("chromedriver", &self.chromedriver)
            .field("chromium", &self.chromium)
            .finish()
    }
}

impl BrowserManager {
    /// Starts nothing: chromedriver is spawned by the first browser step.
    pub fn new(cfg: &BrowserConfig, artifacts_dir: Option<PathBuf>) -> Arc<BrowserManager> {
        let dir = artifacts_dir
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(artifacts::default_dir);
        Arc::new(BrowserManager {
            chromedriver: cfg.chromedriver.clone(),
            chromium: cfg.chromium.clone(),
            max_concurrent: cfg.max_concurrent.max(1),
            restart_after: cfg.restart_after_sessions.max(1),
            slots: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            current: tokio::sync::Mutex::new(None),
            drivers: Mutex::new(Vec::new()),
            profiles: Mutex::new(HashSet::new()),
            artifacts: Artifacts::new(dir, cfg.artifacts_max_files, cfg.artifacts_max_size.0),
            shut: AtomicBool::new(false),
            sessions_created: AtomicU32::new(0),
            drivers_started: AtomicU32::new(0),
        })
    }

    /// Why browser steps cannot run here, if they cannot: names the missing file and the fix.
    pub fn missing(&self) -> Option<String> {
        missing_binaries(&self.chromedriver, &self.chromium)
    }

    /// Pid of the chromedriver serving new sessions, if one runs (tests kill it).
    pub fn driver_pid(&self) -> Option<u32> {
        self.current
            .try_lock()
            .ok()?
            .as_ref()
            .filter(|d| d.alive())
            .map(|d| d.pid)
    }

    /// Loopback port of the chromedriver serving new sessions (tests probe it as another user).
    pub fn driver_port(&self) -> Option<u16> {
        self.current
            .try_lock()
            .ok()?
            .as_ref()
            .filter(|d| d.alive())
            .map(|d| d.port)
    }

    /// Sessions created and chromedrivers started so far.
    pub fn counts(&self) -> (u32, u32) {
        (
            self.sessions_created.load(Ordering::Relaxed),
            self.drivers_started.load(Ordering::Relaxed),
        )
    }

    /// Opens a session: waits for a free slot, makes sure chromedriver is healthy, starts Chromium.
    /// Records the phases `queue`, `driver_start` (when one was started) and `session_start`.
    pub async fn open(
        self: &Arc<Self>,
        phases: &mut Vec<Phase>,
    ) -> Result<BrowserSession, StepError> {
        if let Some(m) = self.missing() {
            return Err(StepError::new(ErrorType::Browser, m));
        }
        if self.shut.load(Ordering::SeqCst) {
            return Err(StepError::new(
                ErrorType::Browser,
                "the agent is shutting down: no new browser sessions",
            ));
        }
        let t = Instant::now();
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StepError::new(ErrorType::Browser, "browser slots closed"))?;
        phases.push(Phase {
            name: "queue",
            duration: t.elapsed(),
        });
        let driver = self.driver(phases).await?;
        let t = Instant::now();
        // Cookies and storage of logged-in probe accounts: the agent's alone.
        let profile = private_temp_dir("vantage-chromium", "the browser profile directory")?;
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(profile.clone());
        let caps = session_capabilities(&self.chromium, &profile);
        let mut builder = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        );
        builder.capabilities(caps);
        let url = driver.url();
        let created = tokio::time::timeout(SESSION_CREATE_TIMEOUT, builder.connect(&url)).await;
        let session = BrowserSession {
            inner: None,
            after_input: false,
        };
        let client = match created {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.discard_profile(&profile).await;
                if !driver.ready(STATUS_TIMEOUT).await {
                    driver.kill();
                }
                return Err(StepError::new(
                    ErrorType::Browser,
                    format!(
                        "chromedriver could not start Chromium ({}): {e}",
                        self.chromium.display()
                    ),
                ));
            }
            Err(_) => {
                // A hung start: this chromedriver is not to be trusted any more.
                driver.kill();
                self.discard_profile(&profile).await;
                return Err(StepError::new(
                    ErrorType::Browser,
                    format!("Chromium did not start within {} (chromedriver killed; the next run starts a new one)", fmt_dur(SESSION_CREATE_TIMEOUT)),
                ));
            }
        };
        // Downloads off for the whole browser, whatever a page or a pref says.
        let deny = ChromeCmd {
            path: "goog/cdp/execute",
            body: json!({ "cmd": "Browser.setDownloadBehavior", "params": { "behavior": "deny" } }),
        };
        if let Err(e) = tokio::time::timeout(STATUS_TIMEOUT, client.issue_cmd(deny))
            .await
            .unwrap_or_else(|_| Err(CmdError::NotJson("timeout".into())))
        {
            let _ = client.clone().close().await;
            self.discard_profile(&profile).await;
            return Err(StepError::new(
                ErrorType::Browser,
                format!("could not turn downloads off in Chromium: {}", describe(&e)),
            ));
        }
        self.sessions_created.fetch_add(1, Ordering::Relaxed);
        let mut session = session;
        session.inner = Some(Inner {
            client: client.clone(),
            driver,
            profile,
            permit,
            manager: self.clone(),
        });
        phases.push(Phase {
            name: "session_start",
            duration: t.elapsed(),
        });
        Ok(session)
    }

    /// The chromedriver for the next session, started or replaced as needed.
    async fn driver(&self, phases: &mut Vec<Phase>) -> Result<Arc<Driver>, StepError> {
        let mut cur = self.current.lock().await;
        if let Some(d) = cur.as_ref() {
            if !d.alive() {
                tracing::warn!(pid = d.pid, "chromedriver exited; starting a new one");
                *cur = None;
            } else if !d.ready(STATUS_TIMEOUT).await {
                tracing::warn!(
                    pid = d.pid,
                    "chromedriver does not answer /status; killing it and starting a new one"
                );
                d.kill();
                *cur = None;
            } else if d.sessions.load(Ordering::Relaxed) >= self.restart_after {
                // Dropped here; it dies when its last session is closed.
                tracing::debug!(
                    pid = d.pid,
                    "chromedriver served its sessions; starting a fresh one"
                );
                *cur = None;
            }
        }
        if cur.is_none() {
            let t = Instant::now();
            let d = Arc::new(self.spawn().await?);
            watch(Arc::downgrade(&d));
            phases.push(Phase {
                name: "driver_start",
                duration: t.elapsed(),
            });
            let mut all = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&d));
            *cur = Some(d);
        }
        let d = cur.clone().expect("driver set above");
        d.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(d)
    }

    async fn spawn(&self) -> Result<Driver, StepError> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| {
                    StepError::new(
                        ErrorType::Browser,
                        format!("no free loopback port for chromedriver: {e}"),
                    )
                })?
                .port();
            let secret = procs::random_hex128().map_err(|e| {
                StepError::new(
                    ErrorType::Browser,
                    format!("no randomness for chromedriver's URL base: {e}"),
                )
            })?;
            let base = format!("/{secret}");
            let tmp = private_temp_dir("vantage-chromedriver", "chromedriver's temporary directory")?;
            let child = Command::new(&self.chromedriver)
                .args(chromedriver_args(port, &base, std::env::var("VANTAGE_CHROMEDRIVER_LOG").ok().as_deref()))
                .env("TMPDIR", &tmp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    StepError::new(
                        ErrorType::Browser,
                        format!(
                            "cannot start {}: {e}; {INSTALL_HINT}",
                            self.chromedriver.display()
                        ),
                    )
                })?;
            let d = Driver {
                pid: child.id(),
                port,
                base,
                child: Mutex::new(Some(child)),
                sessions: AtomicU32::new(0),
                tmp,
            };
            let start = Instant::now();
            while start.elapsed() < DRIVER_READY_TIMEOUT && d.alive() {
                if d.ready(STATUS_TIMEOUT).await {
                    // It parsed its flags: take the URL base out of its world-readable command line.
                    match procs::scrub_arg(d.pid, secret.as_bytes()) {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(pid = d.pid, "chromedriver's URL base not found in its command line; other local users may read it there"),
                        Err(e) => tracing::warn!(pid = d.pid, "cannot hide chromedriver's URL base from its command line ({e}); other local users may read it there"),
                    }
                    self.drivers_started.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pid = d.pid, port, "chromedriver started");
                    return Ok(d);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last = if d.alive() {
                format!(
                    "it did not answer on 127.0.0.1:{port}/status within {}",
                    fmt_dur(DRIVER_READY_TIMEOUT)
                )
            } else {
                format!("it exited right away (port {port} taken?)")
            };
            d.kill();
        }
        Err(StepError::new(
            ErrorType::Browser,
            format!(
                "chromedriver {} failed to start: {last}",
                self.chromedriver.display()
            ),
        ))
    }

    async fn discard_profile(&self, profile: &Path) {
        procs::kill_profile_users(profile);
        let p = profile.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p)).await;
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(profile);
    }

    /// Stops every chromedriver (and so every Chromium) this manager started; no new sessions after.
    pub async fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        self.slots.close();
        let kill = || self.kill_all();
        kill();
        // A session being created right now registers its driver after this; catch it too.
        if let Ok(mut cur) = tokio::time::timeout(Duration::from_secs(1), self.current.lock()).await
        {
            if let Some(d) = cur.take() {
                d.kill();
            }
        }
        kill();
    }

    fn kill_all(&self) {
        let drivers: Vec<_> = self
            .drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for d in drivers {
            d.kill();
        }
        for p in self
            .profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            procs::kill_profile_users(&p);
            let _ = std::fs::remove_dir_all(p);
        }
    }

    /// Concurrency cap, for messages.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

impl Drop for BrowserManager {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A new directory `<temp>/<prefix>-<uuid>`, mode 0700; `what` names it in the error.
fn private_temp_dir(prefix: &str, what: &str) -> Result<PathBuf, StepError> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| StepError::new(ErrorType::Browser, format!("cannot create {what} {}: {e}", dir.display())))?;
    Ok(dir)
}

/// New-session capabilities: Chromium isolated in its private `profile`, downloads off.
fn session_capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, Value> {
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    // Browser traffic is marked as synthetic too, so analytics can filter it out.
    args.push(format!("--user-agent={}", crate::user_agent()));
    // Start on a blank page: Debian's Chromium otherwise opens its new-tab page, which
    // loads a search engine's start page, and the first command waits for that navigation.
    args.push("about:blank".into());
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    let (w, h) = VIEWPORT;
    // Fixes the viewport (not the window) at session start; a desktop one: no touch, same user agent.
    let metrics = json!({ "deviceMetrics": { "width": w, "height": h, "pixelRatio": 1, "mobile": false, "touch": false } });
    // Downloads off (3 = block all); the directory is the private profile in any case.
    let prefs = json!({
        "homepage_is_newtabpage": false, "homepage": "about:blank",
        "session": { "restore_on_startup": 4, "startup_urls": ["about:blank"] },
        "download_restrictions": 3,
        "download": { "prompt_for_download": false, "default_directory": profile.join("downloads") },
    });
    caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args, "mobileEmulation": metrics, "prefs": prefs }));
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "SEVERE" }));
    caps.insert("pageLoadStrategy".into(), json!("normal"));
    caps.insert("unhandledPromptBehavior".into(), json!("dismiss"));
    caps.insert(
        "timeouts".into(),
        json!({ "implicit": 0, "pageLoad": 120_000, "script": 120_000 }),
    );
    caps
}

/// chromedriver's flags: loopback `port`, answering only under the secret URL `base`.
fn chromedriver_args(port: u16, base: &str, log: Option<&str>) -> Vec<String> {
    let mut args = vec![format!("--port={port}"), format!("--url-base={base}")];
    if let Some(p) = log {
        args.extend([format!("--log-path={p}"), "--verbose".to_string()]);
    }
    args
}

/// Names the missing binary and how to install it, or `None` when both exist.
pub fn missing_binaries(chromedriver: &Path, chromium: &Path) -> Option<String> {
    let missing: Vec<String> = [("chromedriver", chromedriver), ("Chromium", chromium)]
        .iter()
        .filter(|(_, p)| !is_executable(p))
        .map(|(what, p)| format!("{what} ({})", p.display()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "browser steps need Chromium and chromedriver, but {} {} not found or not executable: {INSTALL_HINT} (or set `browser.chromium` / `browser.chromedriver` in the agent config)",
        missing.join(" and "),
        if missing.len() == 1 { "is" } else { "are" }
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// For `check`/`once`: the install message when a journey uses browser steps and the binaries are missing.
pub fn missing_for(
    cfg: &BrowserConfig,
    journeys: &[crate::steps::compile::Journey],
) -> Option<String> {
    let users: Vec<&str> = journeys
        .iter()
        .filter(|j| j.needs().browser)
        .map(|j| j.name.as_str())
        .collect();
    if users.is_empty() {
        return None;
    }
    let m = missing_binaries(&cfg.chromedriver, &cfg.chromium)?;
    Some(format!(
        "journey{} `{}`: {m}",
        if users.len() == 1 { "" } else { "s" },
        users.join("`, `")
    ))
}

struct Inner {
    client: fantoccini::Client,
    driver: Arc<Driver>,
    profile: PathBuf,
    permit: OwnedSemaphorePermit,
    manager: Arc<BrowserManager>,
}

/// One run's Chromium. Closed by [`BrowserSession::close`], or in the background when dropped.
pub struct BrowserSession {
    inner: Option<Inner>,
    /// Input (click, fill, …) happened since the last navigation: LCP is final.
    pub after_input: bool,
}

impl BrowserSession {
    pub fn client(&self) -> &fantoccini::Client {
        &self.inner.as_ref().expect("open session").client
    }

    pub fn manager(&self) -> &Arc<BrowserManager> {
        &self.inner.as_ref().expect("open session").manager
    }

    /// Severe browser console messages since the last call (console.error, uncaught exceptions).
    pub async fn console_errors(&self, deadline: Instant) -> Vec<String> {
        let cmd = ChromeCmd {
            path: "se/log",
            body: json!({ "type": "browser" }),
        };
        match wd(
            "reading the console log",
            deadline,
            self.client().issue_cmd(cmd),
        )
        .await
        {
            Ok(Value::Array(entries)) => entries
                .iter()
                .filter_map(|e| e.get("message")?.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub async fn close(mut self) {
        if let Some(i) = self.inner.take() {
            close_inner(i).await;
        }
    }
}

impl Drop for BrowserSession {
    fn drop(&mut self) {
        let Some(i) = self.inner.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(close_inner(i));
            }
            Err(_) => {
                procs::kill_profile_users(&i.profile);
                let _ = std::fs::remove_dir_all(&i.profile);
                i.manager
                    .profiles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&i.profile);
            }
        }
    }
}

async fn close_inner(i: Inner) {
    let Inner {
        client,
        driver,
        profile,
        permit,
        manager,
    } = i;
    let closed = matches!(
        tokio::time::timeout(SESSION_CLOSE_TIMEOUT, client.close()).await,
        Ok(Ok(()))
    );
    if !closed && driver.alive() && !driver.ready(STATUS_TIMEOUT).await {
        tracing::warn!(
            pid = driver.pid,
            "chromedriver hangs while closing a session; killing it"
        );
        driver.kill();
    }
    // Whatever chromedriver did not stop (closed or not) goes now.
    manager.discard_profile(&profile).await;
    drop(driver);
    drop(permit);
}

/// The run's browser session: per-run state of the `browser` kind, closed at the end of the run.
#[derive(Default)]
pub struct RunBrowser {
    pub session: Option<BrowserSession>,
    /// Selectors of fields filled with secret text: blanked out of every later screenshot.
    pub masked: Vec<String>,
}

impl crate::steps::context::RunStateSlot for RunBrowser {
    /// Closes the run's session, if it opened one.
    fn close(&mut self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {
            if let Some(s) = self.session.take() {
                s.close().await;
            }
        })
    }
}

/// Runs one WebDriver command, bounded by `deadline`; errors become `browser` step errors.
pub async fn wd<T>(
    what: impl fmt::Display,
    deadline: Instant,
    fut: impl Future<Output = Result<T, CmdError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StepError::new(
            ErrorType::Browser,
            format!("{what}: {}", describe(&e)),
        )),
        Err(_) => Err(StepError::new(
            ErrorType::Browser,
            format!("{what}: the browser did not answer in time"),
        )),
    }
}

/// A WebDriver error in operator terms.
pub fn describe(e: &CmdError) -> String {
    match e {
        CmdError::Lost(_) | CmdError::Failed(_) | CmdError::FailedC(_) => {
            format!("lost the connection to chromedriver ({e}); it crashed or was stopped, the next run starts a new one")
        }
        CmdError::Standard(w) => {
            let msg = w.message.lines().next().unwrap_or_default().to_string();
            // chromedriver's `unknown error: net::ERR_CONNECTION_REFUSED` when a page does not load.
            if let Some(code) = msg.split("net::ERR_").nth(1) {
                let code: String = code.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                return format!("the page did not load: {}", code.split('_').map(str::to_ascii_lowercase).collect::<Vec<_>>().join(" "));
            }
            if w.error == fantoccini::error::ErrorStatus::InvalidSessionId {
                format!("the browser session is gone ({msg}); Chromium crashed or was killed")
            } else {
                msg
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_is_driven_over_a_pipe_with_no_devtools_port() {
        assert!(CHROMIUM_ARGS.contains(&"--remote-debugging-pipe"));
        for a in CHROMIUM_ARGS {
            assert!(!a.starts_with("--remote-debugging-port"), "{a} opens a DevTools port");
            assert!(!a.starts_with("--remote-debugging-address"), "{a}");
            assert!(!a.starts_with("--remote-allow-origins"), "{a}");
        }
        assert!(CHROMIUM_ARGS.contains(&"--headless=new"));
        assert!(CHROMIUM_ARGS.contains(&"--disable-extensions"));
        assert!(CHROMIUM_ARGS.contains(&"--disable-sync"));
        assert!(CHROMIUM_ARGS.contains(&"--disable-background-networking"));
        assert!(CHROMIUM_ARGS.contains(&"--no-first-run"));
        let (w, h) = VIEWPORT;
        assert!(CHROMIUM_ARGS.contains(&format!("--window-size={w},{h}").as_str()));
    }

    #[test]
    fn chromedriver_listens_on_its_port_under_the_secret_url_base_only() {
        let args = chromedriver_args(40123, "/0123456789abcdef0123456789abcdef", None);
        assert_eq!(args, ["--port=40123", "--url-base=/0123456789abcdef0123456789abcdef"]);
        // Nothing widens who may connect (chromedriver binds loopback unless told otherwise).
        let logged = chromedriver_args(1, "/b", Some("/tmp/cd.log"));
        assert_eq!(logged, ["--port=1", "--url-base=/b", "--log-path=/tmp/cd.log", "--verbose"]);
        for a in args.iter().chain(&logged) {
            assert!(!a.starts_with("--allowed-ips") && !a.starts_with("--whitelisted-ips") && !a.starts_with("--allowed-origins"), "{a}");
        }
    }

    #[test]
    fn session_runs_chromium_in_its_private_profile_with_downloads_off() {
        let profile = Path::new("/tmp/vantage-chromium-0123");
        let caps = session_capabilities(Path::new("/opt/chromium"), profile);
        let opts = &caps["goog:chromeOptions"];
        assert_eq!(opts["binary"], "/opt/chromium");
        let args: Vec<&str> = opts["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let mut want: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        want.push("--user-data-dir=/tmp/vantage-chromium-0123".into());
        want.push(format!("--user-agent={}", crate::user_agent()));
        want.push("about:blank".into());
        assert_eq!(args, want);
        let prefs = &opts["prefs"];
        assert_eq!(prefs["download_restrictions"], 3, "3 blocks every download");
        assert_eq!(prefs["download"]["prompt_for_download"], false);
        assert_eq!(prefs["download"]["default_directory"], "/tmp/vantage-chromium-0123/downloads");
        assert_eq!(prefs["homepage"], "about:blank");
        assert_eq!(prefs["session"]["startup_urls"], json!(["about:blank"]));
        assert_eq!(opts["mobileEmulation"]["deviceMetrics"], json!({ "width": 1366, "height": 768, "pixelRatio": 1, "mobile": false, "touch": false }));
        assert_eq!(caps["browserName"], "chrome");
        assert_eq!(caps["unhandledPromptBehavior"], "dismiss");
        assert_eq!(caps["pageLoadStrategy"], "normal");
        assert_eq!(caps["goog:loggingPrefs"], json!({ "browser": "SEVERE" }));
        assert_eq!(caps["timeouts"], json!({ "implicit": 0, "pageLoad": 120_000, "script": 120_000 }));
    }

    #[test]
    fn driver_url_carries_the_secret_base() {
        let d = Driver { pid: 0, port: 40123, base: "/abc".into(), child: Mutex::new(None), sessions: AtomicU32::new(0), tmp: PathBuf::new() };
        assert_eq!(d.url(), "http://127.0.0.1:40123/abc/");
        assert_eq!(format!("{d:?}"), "chromedriver(pid 0, port 40123)");
        assert!(!d.alive());
    }

    #[test]
    fn chrome_cmd_posts_to_the_session_path_under_the_base() {
        let cmd = ChromeCmd { path: "goog/cdp/execute", body: json!({ "cmd": "Browser.setDownloadBehavior" }) };
        let base = url::Url::parse("http://127.0.0.1:40123/abc/").unwrap();
        assert_eq!(cmd.endpoint(&base, Some("s1")).unwrap().as_str(), "http://127.0.0.1:40123/abc/session/s1/goog/cdp/execute");
        let (method, body) = cmd.method_and_body(&base);
        assert_eq!(method, http::Method::POST);
        assert_eq!(body.as_deref(), Some(r#"{"cmd":"Browser.setDownloadBehavior"}"#));
    }

    #[test]
    fn missing_binaries_names_each_missing_one_and_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vantage-browser-unit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        let exe = dir.join("exe");
        let plain = dir.join("plain");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let gone = dir.join("gone");
        assert_eq!(missing_binaries(&exe, &exe), None);
        assert_eq!(
            missing_binaries(&exe, &plain),
            Some(format!("browser steps need Chromium and chromedriver, but Chromium ({}) is not found or not executable: {INSTALL_HINT} (or set `browser.chromium` / `browser.chromedriver` in the agent config)", plain.display()))
        );
        let both = missing_binaries(&gone, &dir).unwrap();
        assert!(both.contains(&format!("but chromedriver ({}) and Chromium ({}) are not found", gone.display(), dir.display())), "{both}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describe_puts_webdriver_errors_in_operator_terms() {
        use fantoccini::error::{ErrorStatus, WebDriver};
        let refused = CmdError::Standard(WebDriver::new(ErrorStatus::UnknownError, "unknown error: net::ERR_CONNECTION_REFUSED\n  (Session info: chrome=120)"));
        assert_eq!(describe(&refused), "the page did not load: connection refused");
        let gone = CmdError::Standard(WebDriver::new(ErrorStatus::InvalidSessionId, "invalid session id\nmore"));
        assert_eq!(describe(&gone), "the browser session is gone (invalid session id); Chromium crashed or was killed");
        let other = CmdError::Standard(WebDriver::new(ErrorStatus::NoSuchElement, "no such element: #x\nstack"));
        assert_eq!(describe(&other), "no such element: #x");
    }

    #[tokio::test]
    async fn wd_names_the_command_on_error_and_on_timeout() {
        let late = wd("clicking #go", Instant::now(), std::future::pending::<Result<(), CmdError>>()).await.unwrap_err();
        assert_eq!(late.message, "clicking #go: the browser did not answer in time");
        assert!(matches!(late.error_type, ErrorType::Browser));
        let failed = wd("reading", Instant::now() + Duration::from_secs(5), async {
            Err::<(), _>(CmdError::Standard(fantoccini::error::WebDriver::new(fantoccini::error::ErrorStatus::NoSuchElement, "no such element")))
        })
        .await
        .unwrap_err();
        assert_eq!(failed.message, "reading: no such element");
        assert!(matches!(failed.error_type, ErrorType::Browser));
        assert_eq!(wd("ok", Instant::now() + Duration::from_secs(5), async { Ok::<_, CmdError>(7) }).await.unwrap(), 7);
    }

    /// A journey around one compiled step (compiling whole files is the config layer, above this one).
    fn journey(name: &str, step: &str) -> crate::steps::compile::Journey {
        crate::steps::compile::Journey {
            name: name.into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
            labels: Default::default(),
            buckets: None,
            locations: None,
            vars: Vec::new(),
            retries: None,
            steps: vec![crate::steps::compile::test_step(step)],
            finally: Vec::new(),
            slo: None,
            source: String::new(),
            fingerprint: 0,
            span_attrs: Default::default(),
        }
    }

    #[test]
    fn missing_for_names_only_the_journeys_with_browser_steps() {
        let cfg = BrowserConfig { chromedriver: "/nonexistent/chromedriver".into(), chromium: "/nonexistent/chromium".into(), ..BrowserConfig::default() };
        let shot = "name: shot\nbrowser: {screenshot: end}\n";
        let js = [journey("web", shot), journey("tcp", "name: a\ntcp: {address: \"127.0.0.1:1\"}\n"), journey("web2", shot)];
        let m = missing_for(&cfg, &js).unwrap();
        assert!(m.starts_with("journeys `web`, `web2`: browser steps need Chromium and chromedriver, but chromedriver (/nonexistent/chromedriver) and Chromium (/nonexistent/chromium) are not found"), "{m}");
        assert_eq!(missing_for(&cfg, &js[1..2]), None, "no browser step, nothing to install");
    }

    #[tokio::test]
    async fn open_refuses_without_the_binaries_and_after_shutdown_starting_nothing() {
        let cfg = BrowserConfig { chromedriver: "/nonexistent/chromedriver".into(), chromium: "/nonexistent/chromium".into(), ..BrowserConfig::default() };
        let m = BrowserManager::new(&cfg, Some("/nonexistent/artifacts".into()));
        let mut phases = Vec::new();
        let e = m.open(&mut phases).await.err().expect("no browser");
        assert_eq!(Some(e.message), missing_binaries(&cfg.chromedriver, &cfg.chromium));
        assert!(phases.is_empty());
        assert_eq!((m.counts(), m.driver_pid()), ((0, 0), None));
        let sh = BrowserConfig { chromedriver: "/bin/sh".into(), chromium: "/bin/sh".into(), ..BrowserConfig::default() };
        let m = BrowserManager::new(&sh, None);
        m.shutdown().await;
        let e = m.open(&mut phases).await.err().expect("shut down");
        assert_eq!(e.message, "the agent is shutting down: no new browser sessions");
        assert!(phases.is_empty());
        assert_eq!(m.counts(), (0, 0));
    }
}
