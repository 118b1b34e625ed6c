//! `browser` step: one action in headless Chromium (navigate, click, fill,
//! select, press, wait_for, assert, eval, screenshot). The run's first browser
//! step opens its session (see [`crate::browser`]); later steps reuse it, so a
//! journey can log in in the browser and share variables with HTTP and
//! WebSocket steps. On failure the step saves a screenshot, the page URL and
//! the console errors into the artifact directory and names the file.

use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::Locator;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use crate::browser::{describe, wd, BrowserSession, ChromeCmd, RunBrowser};
use crate::config::model::Dur;
use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{fmt_dur, ErrorType, Observation, Phase, PhaseMetric, StepError};
use serde::Deserialize;

/// One headless-browser action; exactly one field is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserSpec {
    /// Load this absolute URL and wait for its `load` event.
    pub navigate: Option<String>,
    /// CSS selector of the element to click.
    pub click: Option<String>,
    pub fill: Option<BrowserFill>,
    pub select: Option<BrowserSelect>,
    pub press: Option<BrowserPress>,
    pub wait_for: Option<BrowserWaitFor>,
    #[serde(rename = "assert")]
    pub check: Option<BrowserAssert>,
    /// JavaScript function body; its `return` value becomes the step's body, as JSON.
    pub eval: Option<String>,
    /// Save a PNG of the viewport into the artifacts directory under this name.
    pub screenshot: Option<String>,
    /// CSS selectors of elements blanked out of this step's screenshot (the
    /// `screenshot` action's, or the one saved when the step fails), as
    /// Playwright's `mask` does. Password inputs and fields filled with a
    /// secret are always blanked.
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserFill {
    pub selector: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserSelect {
    pub selector: String,
    /// The `value` attribute of the option to pick.
    pub value: Option<String>,
    /// The visible text of the option to pick.
    pub label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserPress {
    /// Element to send the key to; default: the focused element.
    pub selector: Option<String>,
    /// `Enter`, `Tab`, `Escape`, `Backspace`, `ArrowDown`, … or a single character.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserWaitFor {
    pub selector: Option<String>,
    /// Text the element (or, without `selector`, the page) must contain.
    pub text: Option<String>,
    /// Also require the element to be visible.
    #[serde(default)]
    pub visible: bool,
    #[serde(default = "default_wait_within")]
    pub within: Dur,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserAssert {
    pub selector: Option<String>,
    /// The element's text must contain this.
    pub text: Option<String>,
    /// The element must be visible (`true`) or absent/hidden (`false`).
    pub visible: Option<bool>,
    pub url_contains: Option<String>,
    pub title_contains: Option<String>,
}

fn default_wait_within() -> Dur {
    Dur(Duration::from_secs(10))
}

const POLL: Duration = Duration::from_millis(50);
/// Time kept back from the step's timeout to save the failure screenshot.
const MAX_ARTIFACT_RESERVE: Duration = Duration::from_secs(3);

#[derive(Debug)]
enum Action {
    Navigate(Template),
    Click(Template),
    Fill { selector: Template, text: Template },
    Select { selector: Template, value: Option<Template>, label: Option<Template> },
    Press { selector: Option<Template>, key: &'static str, name: String },
    WaitFor { selector: Option<Template>, text: Option<Template>, visible: bool, within: Duration },
    Assert(Check),
    Eval(Template),
    Screenshot(String),
}

#[derive(Debug)]
enum Check {
    Element { selector: Template, text: Option<Template>, visible: Option<bool> },
    UrlContains(Template),
    TitleContains(Template),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Navigate(_) => "navigate",
            Action::Click(_) => "click",
            Action::Fill { .. } => "fill",
            Action::Select { .. } => "select",
            Action::Press { .. } => "press",
            Action::WaitFor { .. } => "wait_for",
            Action::Assert(_) => "assert",
            Action::Eval(_) => "eval",
            Action::Screenshot(_) => "screenshot",
        }
    }
}

/// Browser step phases exported as histograms (several phases may share one metric).
pub const METRICS: &[PhaseMetric] = &[
    PhaseMetric::new("session_start", "synthetics.browser.session.start", "Time to start a fresh Chromium session", None),
    PhaseMetric::new("queue", "synthetics.browser.session.queue", "Time waiting for a free browser (browser.max_concurrent)", None),
    PhaseMetric::new("driver_start", "synthetics.browser.driver.start", "Time to start chromedriver", None),
    PhaseMetric::new("ttfb", "synthetics.browser.navigation.ttfb", "Navigation time to first byte", None),
    PhaseMetric::new("dom_content_loaded", "synthetics.browser.navigation.dom_content_loaded", "Navigation time to DOMContentLoaded end", None),
    PhaseMetric::new("load", "synthetics.browser.navigation.load", "Navigation time to the load event end", None),
    PhaseMetric::new("fcp", "synthetics.browser.paint.first_contentful", "First contentful paint after navigation", None),
    PhaseMetric::new("lcp", "synthetics.browser.paint.largest_contentful", "Largest contentful paint before any input", None),
    PhaseMetric::new("wait_selector", "synthetics.browser.wait", "Time until a waited-for element or text appeared", Some(("browser.wait.for", "selector"))),
    PhaseMetric::new("wait_text", "synthetics.browser.wait", "Time until a waited-for element or text appeared", Some(("browser.wait.for", "text"))),
];

/// What `browser` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo {
    name: "browser",
    span_kind: opentelemetry::trace::SpanKind::Internal,
    needs: Needs { browser: true, ..Needs::NONE },
    phases: crate::vocab::PhaseRecording::Own(METRICS),
    default_status: None,
};

/// Builds a `browser` step from its config (the registry calls this).
pub fn compile(spec: &BrowserSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    BrowserStep::compile(spec, step.name, step.timeout, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct BrowserStep {
    name: String,
    action: Action,
    timeout: Option<Duration>,
    mask: Vec<String>,
}

/// WebDriver key codes by the names users write (W3C WebDriver §17.4.2).
const KEYS: &[(&str, &str)] = &[
    ("Enter", "\u{E007}"),
    ("Return", "\u{E006}"),
    ("Tab", "\u{E004}"),
    ("Escape", "\u{E00C}"),
    ("Backspace", "\u{E003}"),
    ("Delete", "\u{E017}"),
    ("Space", "\u{E00D}"),
    ("ArrowLeft", "\u{E012}"),
    ("ArrowUp", "\u{E013}"),
    ("ArrowRight", "\u{E014}"),
    ("ArrowDown", "\u{E015}"),
    ("Home", "\u{E011}"),
    ("End", "\u{E010}"),
    ("PageUp", "\u{E00E}"),
    ("PageDown", "\u{E00F}"),
];

impl BrowserStep {
    pub fn compile(spec: &BrowserSpec, name: &str, timeout: Option<Duration>, c: &mut Checker) -> Option<BrowserStep> {
        let set = [
            ("navigate", spec.navigate.is_some()),
            ("click", spec.click.is_some()),
            ("fill", spec.fill.is_some()),
            ("select", spec.select.is_some()),
            ("press", spec.press.is_some()),
            ("wait_for", spec.wait_for.is_some()),
            ("assert", spec.check.is_some()),
            ("eval", spec.eval.is_some()),
            ("screenshot", spec.screenshot.is_some()),
        ];
        let given: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        if given.len() != 1 {
            let got = if given.is_empty() { "none".to_string() } else { given.join(", ") };
            c.error("browser", &format!("expected exactly one action (navigate, click, fill, select, press, wait_for, assert, eval, screenshot), got {got}: use one step per action"));
            return None;
        }
        let nonempty = |c: &mut Checker, field: &str, v: &str| {
            if v.trim().is_empty() {
                c.error(field, "expected a non-empty value");
            }
        };
        let action = if let Some(u) = &spec.navigate {
            nonempty(c, "browser.navigate", u);
            Action::Navigate(c.template("browser.navigate", u))
        } else if let Some(s) = &spec.click {
            nonempty(c, "browser.click", s);
            Action::Click(c.template("browser.click", s))
        } else if let Some(f) = &spec.fill {
            nonempty(c, "browser.fill.selector", &f.selector);
            Action::Fill { selector: c.template("browser.fill.selector", &f.selector), text: c.template("browser.fill.text", &f.text) }
        } else if let Some(s) = &spec.select {
            nonempty(c, "browser.select.selector", &s.selector);
            if s.value.is_some() == s.label.is_some() {
                c.error("browser.select", "expected exactly one of `value` (the option's value attribute) or `label` (its visible text)");
            }
            Action::Select {
                selector: c.template("browser.select.selector", &s.selector),
                value: s.value.as_deref().map(|v| c.template("browser.select.value", v)),
                label: s.label.as_deref().map(|v| c.template("browser.select.label", v)),
            }
        } else if let Some(p) = &spec.press {
            let key = match KEYS.iter().find(|(n, _)| n.eq_ignore_ascii_case(&p.key)) {
                Some((_, code)) => *code,
                None if p.key.chars().count() == 1 => "",
                None => {
                    let names: Vec<&str> = KEYS.iter().map(|(n, _)| *n).collect();
                    c.error("browser.press.key", &format!("unknown key `{}`: expected one of {} or a single character", p.key, names.join(", ")));
                    ""
                }
            };
            Action::Press { selector: p.selector.as_deref().map(|s| c.template("browser.press.selector", s)), key, name: p.key.clone() }
        } else if let Some(w) = &spec.wait_for {
            if w.selector.is_none() && w.text.is_none() {
                c.error("browser.wait_for", "expected `selector`, `text`, or both");
            }
            if w.visible && w.selector.is_none() {
                c.error("browser.wait_for.visible", "needs a `selector`");
            }
            if w.within.0.is_zero() {
                c.error("browser.wait_for.within", "expected a positive duration");
            }
            Action::WaitFor {
                selector: w.selector.as_deref().map(|s| c.template("browser.wait_for.selector", s)),
                text: w.text.as_deref().map(|s| c.template("browser.wait_for.text", s)),
                visible: w.visible,
                within: w.within.0,
            }
        } else if let Some(a) = &spec.check {
            let kinds = [a.selector.is_some(), a.url_contains.is_some(), a.title_contains.is_some()].iter().filter(|x| **x).count();
            if kinds != 1 {
                c.error("browser.assert", "expected exactly one of `selector` (with `text` and/or `visible`), `url_contains` or `title_contains`");
                return None;
            }
            if a.selector.is_none() && (a.text.is_some() || a.visible.is_some()) {
                c.error("browser.assert", "`text` and `visible` need a `selector`");
            }
            Action::Assert(if let Some(s) = &a.selector {
                Check::Element { selector: c.template("browser.assert.selector", s), text: a.text.as_deref().map(|t| c.template("browser.assert.text", t)), visible: a.visible }
            } else if let Some(u) = &a.url_contains {
                Check::UrlContains(c.template("browser.assert.url_contains", u))
            } else {
                Check::TitleContains(c.template("browser.assert.title_contains", a.title_contains.as_deref()?))
            })
        } else if let Some(e) = &spec.eval {
            nonempty(c, "browser.eval", e);
            Action::Eval(c.template("browser.eval", e))
        } else {
            let n = spec.screenshot.as_deref()?;
            nonempty(c, "browser.screenshot", n);
            Action::Screenshot(n.to_string())
        };
        for (i, m) in spec.mask.iter().enumerate() {
            nonempty(c, &format!("browser.mask[{i}]"), m);
        }
        Some(BrowserStep { name: name.to_string(), action, timeout, mask: spec.mask.clone() })
    }

    /// The step's own deadline (its timeout minus a reserve to save the failure
    /// screenshot), and the end of that reserve.
    fn deadlines(&self, ctx: &RunContext) -> (Instant, Instant) {
        let limit = self.timeout.or_else(|| self.default_timeout()).unwrap_or(ctx.env.default_step_timeout);
        let reserve = (limit / 5).min(MAX_ARTIFACT_RESERVE);
        let now = Instant::now();
        (now + limit.saturating_sub(reserve), now + limit.saturating_sub(reserve / 10))
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let mut obs = Observation::default();
        obs.attributes.push(KeyValue::new("browser.action", self.action.name()));
        let (deadline, hard) = self.deadlines(ctx);
        if ctx.state.get_mut::<RunBrowser>().session.is_none() {
            let mgr = ctx.env.browser().clone();
            ctx.waiting_for = "a free browser (browser.max_concurrent)";
            let opened = tokio::time::timeout_at(deadline.into(), mgr.open(&mut obs.phases)).await;
            let session = match opened {
                Ok(r) => r.map_err(|e| e.with_observation(&obs))?,
                Err(_) => {
                    let e = StepError::new(
                        ErrorType::Browser,
                        format!("no browser session within the step's time: all {} browser(s) were busy or Chromium was slow to start (see `browser.max_concurrent`)", mgr.max_concurrent()),
                    );
                    return Err(e.with_observation(&obs));
                }
            };
            // Failure notes name a failed request's method; only the page sees it.
            let hook = ChromeCmd { path: "goog/cdp/execute", body: json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": REQUESTS_JS } }) };
            if let Err(e) = wd("", deadline, session.client().issue_cmd(hook)).await {
                tracing::debug!("failed requests will be named without their method: {}", e.message);
            }
            ctx.state.get_mut::<RunBrowser>().session = Some(session);
        }
        ctx.waiting_for = "the browser";
        match self.act(ctx, &mut obs, deadline).await {
            Ok(()) => Ok(obs),
            Err(mut e) => {
                if e.error_type != ErrorType::Config {
                    if let Some(s) = ctx.state.get::<RunBrowser>().and_then(|b| b.session.as_ref()) {
                        let (context, path) = failure_artifacts(ctx, s, &self.name, &self.mask, &e.message, hard).await;
                        e.message.push_str(&context);
                        if let Some(p) = path {
                            obs.attributes.push(KeyValue::new("synthetics.artifact.path", p));
                        }
                    }
                }
                Err(e.with_observation(&obs))
            }
        }
    }

    async fn act(&self, ctx: &mut RunContext, obs: &mut Observation, deadline: Instant) -> Result<(), StepError> {
        match &self.action {
            Action::Navigate(t) => {
                let url = ctx.render(t)?;
                let parsed = url::Url::parse(&url).map_err(|e| StepError::new(ErrorType::Config, format!("`{url}` is not an absolute URL: {e}")))?;
                // The browser runs as the agent: a local scheme would show the agent's own files.
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(StepError::new(
                        ErrorType::Config,
                        format!("`{}:` URLs are refused: browser steps open only http and https pages (local schemes such as file: and chrome: would expose the agent's host)", parsed.scheme()),
                    ));
                }
                obs.attributes.push(KeyValue::new("url.full", parsed.to_string()));
                ctx.waiting_for = "the page to load";
                let s = session(ctx)?;
                let nav = ChromeCmd { path: "url", body: json!({ "url": url }) };
                wd(format!("loading {url}"), deadline, s.client().issue_cmd(nav)).await?;
                let timing = wd("reading navigation timing", deadline, s.client().execute_async(NAV_TIMING_JS, vec![])).await?;
                s.after_input = false;
                let ms = |k: &str| timing.get(k).and_then(Value::as_f64).filter(|v| *v >= 0.0);
                for (key, phase) in [("ttfb", "ttfb"), ("dcl", "dom_content_loaded"), ("load", "load"), ("fcp", "fcp"), ("lcp", "lcp")] {
                    if let Some(v) = ms(key) {
                        obs.phases.push(Phase { name: phase, duration: crate::vocab::ms_from_page(v) });
                    }
                }
                if let Some(st) = timing.get("status").and_then(Value::as_u64).filter(|s| *s > 0) {
                    obs.status = Some(st as u16);
                    obs.attributes.push(KeyValue::new("http.response.status_code", st as i64));
                }
                if let Some(title) = timing.get("title").and_then(Value::as_str) {
                    obs.attributes.push(KeyValue::new("browser.page.title", title.to_string()));
                }
            }
            Action::Click(sel) => {
                let sel = ctx.render(sel)?;
                let s = session(ctx)?;
                let el = find(s, &sel, "to click it", deadline).await?;
                wd(format!("clicking `{sel}`"), deadline, el.click()).await?;
                s.after_input = true;
            }
            Action::Fill { selector, text } => {
                let sel = ctx.render(selector)?;
                let text = ctx.render(text)?;
                if ctx.redact(&text) != text {
                    // Typed secret text never reaches a screenshot: this field is blanked from now on.
                    let b = ctx.state.get_mut::<RunBrowser>();
                    if !b.masked.contains(&sel) {
                        b.masked.push(sel.clone());
                    }
                }
                let s = session(ctx)?;
                let el = find(s, &sel, "to fill it", deadline).await?;
                wd(format!("clearing `{sel}`"), deadline, el.clear()).await?;
                wd(format!("typing into `{sel}`"), deadline, el.send_keys(&text)).await?;
                s.after_input = true;
            }
            Action::Select { selector, value, label } => {
                let sel = ctx.render(selector)?;
                let value = value.as_ref().map(|t| ctx.render(t)).transpose()?;
                let label = label.as_ref().map(|t| ctx.render(t)).transpose()?;
                let s = session(ctx)?;
                let el = find(s, &sel, "to select an option", deadline).await?;
                let r = match (&value, &label) {
                    (Some(v), _) => wd(format!("selecting the option with value `{v}` in `{sel}`"), deadline, el.select_by_value(v)).await,
                    (None, Some(l)) => wd(format!("selecting the option labelled `{l}` in `{sel}`"), deadline, el.select_by_label(l)).await,
                    (None, None) => Ok(()),
                };
                r?;
                s.after_input = true;
            }
            Action::Press { selector, key, name } => {
                let sel = selector.as_ref().map(|t| ctx.render(t)).transpose()?;
                let s = session(ctx)?;
                let el = match &sel {
                    Some(sel) => find(s, sel, "to press a key in it", deadline).await?,
                    None => wd("finding the focused element", deadline, s.client().active_element()).await?,
                };
                let keys = if key.is_empty() { name.as_str() } else { key };
                wd(format!("pressing {name}"), deadline, el.send_keys(keys)).await?;
                s.after_input = true;
            }
            Action::WaitFor { selector, text, visible, within } => {
                let sel = selector.as_ref().map(|t| ctx.render(t)).transpose()?;
                let text = text.as_ref().map(|t| ctx.render(t)).transpose()?;
                ctx.waiting_for = "the element to appear";
                let redactor = &ctx.redactor().clone();
                let s = session(ctx)?;
                let what = describe_wait(sel.as_deref(), text.as_deref(), *visible);
                let waited = wait_for(s, redactor, sel.as_deref(), text.as_deref(), *visible, *within, deadline, &what).await?;
                obs.phases.push(Phase { name: if sel.is_some() { "wait_selector" } else { "wait_text" }, duration: waited });
                if !s.after_input {
                    // LCP stops at the first input; until then a later paint may still be the largest.
                    if let Ok(Value::Number(n)) = wd("reading LCP", deadline, s.client().execute(LCP_JS, vec![])).await {
                        if let Some(v) = n.as_f64().filter(|v| *v >= 0.0) {
                            obs.phases.push(Phase { name: "lcp", duration: crate::vocab::ms_from_page(v) });
                        }
                    }
                }
            }
            Action::Assert(check) => self.check(ctx, check, deadline).await?,
            Action::Eval(t) => {
                let script = ctx.render(t)?;
                ctx.waiting_for = "the script";
                let s = session(ctx)?;
                let v = wd("running the script", deadline, s.client().execute(&script, vec![])).await?;
                obs.body = bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            }
            Action::Screenshot(name) => {
                let journey = ctx.journey.clone();
                let mask = self.masks(ctx);
                let s = session(ctx)?;
                let png = masked_screenshot(s, &mask, deadline).await?;
                let path = s.manager().artifacts.save(&journey, &self.name, name, &[("png", &png)]).map_err(|e| StepError::new(ErrorType::Browser, format!("cannot save the screenshot: {e}")))?;
                obs.attributes.push(KeyValue::new("synthetics.artifact.path", path.display().to_string()));
            }
        }
        Ok(())
    }

    async fn check(&self, ctx: &mut RunContext, check: &Check, deadline: Instant) -> Result<(), StepError> {
        let fail = |m: String| Err(StepError::new(ErrorType::Browser, m));
        match check {
            Check::UrlContains(t) => {
                let want = ctx.render(t)?;
                let url = wd("reading the page URL", deadline, session(ctx)?.client().current_url()).await?;
                if !url.as_str().contains(&want) {
                    return fail(format!("expected the page URL to contain `{want}`; it is {url}"));
                }
            }
            Check::TitleContains(t) => {
                let want = ctx.render(t)?;
                let title = wd("reading the page title", deadline, session(ctx)?.client().title()).await?;
                if !title.contains(&want) {
                    return fail(format!("expected the page title to contain `{want}`; it is `{}`", ctx.excerpt(&title, 120)));
                }
            }
            Check::Element { selector, text, visible } => {
                let sel = ctx.render(selector)?;
                let want = text.as_ref().map(|t| ctx.render(t)).transpose()?;
                let s = session(ctx)?;
                let state = wd(format!("inspecting `{sel}`"), deadline, s.client().execute(ELEMENT_JS, vec![json!(sel)])).await?;
                let count = state.get("count").and_then(Value::as_u64).unwrap_or(0);
                let shown = state.get("visible").and_then(Value::as_bool).unwrap_or(false);
                let got = state.get("text").and_then(Value::as_str).unwrap_or_default().to_string();
                if count == 0 && *visible != Some(false) {
                    return fail(format!("expected an element matching `{sel}`; none exists"));
                }
                if let Some(v) = visible {
                    if *v && !shown {
                        return fail(format!("expected `{sel}` to be visible; it is hidden"));
                    }
                    if !*v && shown {
                        return fail(format!("expected `{sel}` to be hidden or absent; it is visible"));
                    }
                }
                if let Some(w) = &want {
                    if !got.contains(w.as_str()) {
                        return fail(format!("expected `{sel}` to contain the text `{w}`; its text is `{}`", ctx.excerpt(&got, 160)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Selectors blanked out of a screenshot: the step's `mask`, password inputs, fields filled with a secret.
fn masks(ctx: &RunContext, step_mask: &[String]) -> Vec<String> {
    let mut m = step_mask.to_vec();
    m.push("input[type=password]".into());
    if let Some(b) = ctx.state.get::<RunBrowser>() {
        m.extend(b.masked.iter().cloned());
    }
    m
}

impl BrowserStep {
    fn masks(&self, ctx: &RunContext) -> Vec<String> {
        masks(ctx, &self.mask)
    }
}

/// A PNG of the viewport with every element matching `mask` covered first.
/// No screenshot when masking fails: better none than one showing a secret.
async fn masked_screenshot(s: &BrowserSession, mask: &[String], deadline: Instant) -> Result<Vec<u8>, StepError> {
    let c = s.client();
    if let Value::String(bad) = wd("masking elements for the screenshot", deadline, c.execute(MASK_JS, vec![json!(mask)])).await? {
        return Err(StepError::new(ErrorType::Browser, format!("screenshot not taken: mask selector `{bad}` is not a valid CSS selector")));
    }
    let png = wd("taking a screenshot", deadline, c.screenshot()).await;
    let _ = wd("removing the screenshot masks", deadline, c.execute(UNMASK_JS, vec![])).await;
    png
}

fn session(ctx: &mut RunContext) -> Result<&mut BrowserSession, StepError> {
    ctx.state.get_mut::<RunBrowser>().session.as_mut().ok_or_else(|| StepError::new(ErrorType::Internal, "no browser session"))
}

/// Finds `sel`, waiting for it to exist until `deadline`.
async fn find(s: &BrowserSession, sel: &str, purpose: &str, deadline: Instant) -> Result<Element, StepError> {
    let start = Instant::now();
    loop {
        match tokio::time::timeout_at(deadline.into(), s.client().find(Locator::Css(sel))).await {
            Ok(Ok(el)) => return Ok(el),
            Ok(Err(e)) if e.is_no_such_element() => {}
            Ok(Err(e)) if e.is_invalid_selector() => return Err(StepError::new(ErrorType::Browser, format!("`{sel}` is not a valid CSS selector"))),
            Ok(Err(e)) => return Err(StepError::new(ErrorType::Browser, format!("finding `{sel}`: {}", describe(&e)))),
            Err(_) => break,
        }
        if Instant::now() + POLL >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Err(StepError::new(ErrorType::Browser, format!("expected an element matching `{sel}` {purpose}; none appeared within {}", fmt_dur(start.elapsed()))))
}

fn describe_wait(sel: Option<&str>, text: Option<&str>, visible: bool) -> String {
    let vis = if visible { " and be visible" } else { "" };
    match (sel, text) {
        (Some(s), Some(t)) => format!("`{s}` to appear with the text `{t}`{vis}"),
        (Some(s), None) => format!("`{s}` to appear{vis}"),
        (None, Some(t)) => format!("the text `{t}` to appear on the page"),
        (None, None) => "something".into(),
    }
}

/// Polls the page until the condition holds; returns how long it took.
#[allow(clippy::too_many_arguments)]
async fn wait_for(s: &BrowserSession, redactor: &crate::redact::Redactor, sel: Option<&str>, text: Option<&str>, visible: bool, within: Duration, deadline: Instant, what: &str) -> Result<Duration, StepError> {
    let start = Instant::now();
    let until = deadline.min(start + within);
    let mut last_state = String::new();
    loop {
        let r = tokio::time::timeout_at(until.into(), s.client().execute(WAIT_JS, vec![json!(sel), json!(text), json!(visible)])).await;
        match r {
            Ok(Ok(v)) => {
                if v.get("ok").and_then(Value::as_bool) == Some(true) {
                    return Ok(start.elapsed());
                }
                last_state = match v.get("count").and_then(Value::as_u64) {
                    Some(0) => "no element matched".into(),
                    Some(n) => format!(
                        "{n} element{} matched but not as required (first one's text: `{}`)",
                        if n == 1 { "" } else { "s" },
                        redactor.excerpt(v.get("text").and_then(Value::as_str).unwrap_or_default(), 80)
                    ),
                    None => "the text is not on the page".into(),
                };
            }
            Ok(Err(e)) if e.is_javascript_error() && e.to_string().contains("is not a valid selector") => {
                return Err(StepError::new(ErrorType::Browser, format!("`{}` is not a valid CSS selector", sel.unwrap_or_default())));
            }
            // The page may be navigating; keep trying, but lost connections end the wait.
            Ok(Err(e)) if matches!(e, fantoccini::error::CmdError::Lost(_) | fantoccini::error::CmdError::Failed(_) | fantoccini::error::CmdError::FailedC(_)) || e.is_invalid_session_id() => {
                return Err(StepError::new(ErrorType::Browser, format!("while waiting for {what}: {}", describe(&e))));
            }
            Ok(Err(e)) => last_state = describe(&e),
            Err(_) => break,
        }
        if Instant::now() + POLL >= until {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let state = if last_state.is_empty() { String::new() } else { format!(" ({last_state})") };
    Err(StepError::new(ErrorType::Browser, format!("expected {what} within {}; it did not{state}", fmt_dur(within.min(until.saturating_duration_since(start))))))
}

/// Screenshot, URL, title and console errors of a failed step. Returns the
/// text to append to the error message and the screenshot's path.
async fn failure_artifacts(ctx: &RunContext, s: &BrowserSession, step: &str, mask: &[String], message: &str, deadline: Instant) -> (String, Option<String>) {
    let c = s.client();
    let url = wd("", deadline, c.current_url()).await.map(|u| u.to_string()).unwrap_or_else(|_| "unknown".into());
    let title = wd("", deadline, c.title()).await.unwrap_or_default();
    let console = s.console_errors(deadline).await;
    let png = masked_screenshot(s, &masks(ctx, mask), deadline).await;
    // The request that failed explains the failure better than whatever the page logged about it.
    let methods = match wd("", deadline, c.execute("return window.__vantageFailed || []", vec![])).await {
        Ok(Value::Array(v)) => v.iter().filter_map(|r| Some((r.get("url")?.as_str()?.to_string(), r.get("method")?.as_str()?.to_string()))).collect(),
        _ => Vec::new(),
    };
    let failed = failed_requests(&console, &methods);
    let mut context = failed.first().map(|f| format!("; {}", ctx.excerpt(f, 240))).unwrap_or_default();
    context.push_str(&format!(" (page {}, title `{}`", ctx.excerpt(&url, 200), ctx.excerpt(&title, 80)));
    if failed.len() > 1 {
        context.push_str(&format!("; {} failed requests", failed.len()));
    }
    let others: Vec<&String> = console.iter().filter(|m| failed_request(m, &[]).is_none()).collect();
    if let Some(first) = others.first() {
        context.push_str(&format!("; {} console error{}, first: {}", others.len(), if others.len() == 1 { "" } else { "s" }, ctx.excerpt(first, 160)));
    }
    context.push(')');
    let notes = ctx.redact(&format!(
        "journey: {}\nstep: {step}\nrun: {}\nurl: {url}\ntitle: {title}\nerror: {message}\n\nconsole errors ({}):\n{}\n",
        ctx.journey,
        ctx.run_id,
        console.len(),
        console.join("\n")
    ));
    let files: Vec<(&str, &[u8])> = match &png {
        Ok(p) => vec![("png", p.as_slice()), ("txt", notes.as_bytes())],
        Err(_) => vec![("txt", notes.as_bytes())],
    };
    match s.manager().artifacts.save(&ctx.journey, step, "failure", &files) {
        Ok(path) => {
            let p = path.display().to_string();
            let what = if png.is_ok() { "screenshot" } else { "notes (no screenshot: the browser did not answer)" };
            context.push_str(&format!("; {what}: {p}"));
            (context, Some(p))
        }
        Err(e) => {
            context.push_str(&format!("; could not save the screenshot: {e}"));
            (context, None)
        }
    }
}

impl StepKind for BrowserStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Browser, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
    fn default_timeout(&self) -> Option<Duration> {
        match &self.action {
            Action::WaitFor { within, .. } => Some(within.saturating_add(Duration::from_secs(10))),
            Action::Navigate(_) => Some(Duration::from_secs(30)),
            _ => Some(Duration::from_secs(15)),
        }
    }
}

/// Navigation timing, FCP and LCP so far, in one call (milliseconds since navigation start).
/// Leaves a buffered LCP observer on the page for later `wait_for` steps.
/// Chromium's console lines about requests that failed, in plain words,
/// documents and XHR/fetch first, a missing favicon (noise) last. `methods`
/// holds (URL, method) of the page's failed fetch/XHR calls ([`REQUESTS_JS`]).
fn failed_requests(console: &[String], methods: &[(String, String)]) -> Vec<String> {
    let mut found: Vec<(bool, String)> = console.iter().filter_map(|m| failed_request(m, methods)).collect();
    found.sort_by_key(|(noise, _)| *noise);
    found.into_iter().map(|(_, words)| words).collect()
}

/// `URL - Failed to load resource: the server responded with a status of 500 (…)`
/// or `URL - Failed to load resource: net::ERR_CONNECTION_REFUSED`, as
/// "GET URL returned 500" / "GET URL failed: connection refused" (the method
/// when the page's hook saw the call, else "the request for URL ...");
/// the flag marks noise (the favicon).
fn failed_request(line: &str, methods: &[(String, String)]) -> Option<(bool, String)> {
    let (url, what) = line.split_once(" - Failed to load resource: ")?;
    let url = url.trim();
    let noise = url.split(['?', '#']).next().is_some_and(|u| u.ends_with("/favicon.ico"));
    let request = match methods.iter().rev().find(|(u, _)| u == url) {
        Some((_, m)) => format!("{m} {url}"),
        None => format!("the request for {url}"),
    };
    let words = if let Some(rest) = what.strip_prefix("the server responded with a status of ") {
        let status: String = rest.chars().take_while(char::is_ascii_digit).collect();
        format!("{request} returned {status}")
    } else if let Some(code) = what.trim().strip_prefix("net::ERR_") {
        format!("{request} failed: {}", net_error_words(code))
    } else {
        format!("{request} failed: {}", what.trim())
    };
    Some((noise, words))
}

/// Run in every page before its own scripts: keeps the method and URL of
/// fetch/XHR calls that failed or answered >= 400 (at most 50), which the
/// console's "Failed to load resource" lines leave out.
const REQUESTS_JS: &str = r#"(() => {
  const keep = (m, u, status) => { try { const l = (window.__vantageFailed = window.__vantageFailed || []); if (l.length < 50) l.push({ method: String(m || 'GET').toUpperCase(), url: new URL(String(u), location.href).href, status }); } catch (_) {} };
  const f = window.fetch;
  if (f) window.fetch = function (input, init) {
    const m = (init && init.method) || (input && input.method) || 'GET';
    const u = (input && input.url) || input;
    return f.apply(this, arguments).then(r => { if (r.status >= 400) keep(m, u, r.status); return r; }, e => { keep(m, u, 0); throw e; });
  };
  const X = window.XMLHttpRequest && window.XMLHttpRequest.prototype;
  if (X) {
    const open = X.open, send = X.send;
    X.open = function (m, u) { this.__vantage = [m, u]; return open.apply(this, arguments); };
    X.send = function () { this.addEventListener('loadend', () => { if (this.__vantage && (this.status >= 400 || this.status === 0)) keep(this.__vantage[0], this.__vantage[1], this.status); }); return send.apply(this, arguments); };
  }
})();"#;

/// `CONNECTION_REFUSED` → `connection refused`.
fn net_error_words(code: &str) -> String {
    code.split('_').map(str::to_ascii_lowercase).collect::<Vec<_>>().join(" ")
}

const NAV_TIMING_JS: &str = r#"
const done = arguments[arguments.length - 1];
const v = window.__vantage = window.__vantage || { lcp: null };
try {
  new PerformanceObserver(l => { for (const e of l.getEntries()) v.lcp = e.startTime; })
    .observe({ type: 'largest-contentful-paint', buffered: true });
} catch (e) {}
const t0 = performance.now();
const finish = () => {
  const n = performance.getEntriesByType('navigation')[0];
  const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
  done({
    ttfb: n ? n.responseStart : null,
    dcl: n ? n.domContentLoadedEventEnd : null,
    load: n ? n.loadEventEnd : null,
    status: n && n.responseStatus ? n.responseStatus : null,
    fcp: p ? p.startTime : null,
    lcp: v.lcp,
    title: document.title,
  });
};
(function check() {
  const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
  if ((p && v.lcp !== null) || performance.now() - t0 > 500) finish(); else setTimeout(check, 10);
})();
"#;

const LCP_JS: &str = "return window.__vantage ? window.__vantage.lcp : null;";

/// `[selector|null, text|null, visible]` → `{ok, count?, text?}`.
const WAIT_JS: &str = concat!(
    r#"const [sel, text, visible] = arguments;"#,
    r#"const vis = e => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length) && getComputedStyle(e).visibility !== 'hidden';"#,
    r#"if (sel) {
  const els = document.querySelectorAll(sel);
  for (const e of els) {
    if ((text == null || (e.innerText || e.textContent || '').includes(text)) && (!visible || vis(e))) return { ok: true };
  }
  return { ok: false, count: els.length, text: els[0] ? (els[0].innerText || els[0].textContent || '').slice(0, 20000) : null };
}
return { ok: !!document.body && (document.body.innerText || '').includes(text) };"#
);

/// `[selectors]` → covers every match with an opaque box above everything (fixed to
/// its viewport position); the first invalid selector as a string, else null.
const MASK_JS: &str = r#"
for (const sel of arguments[0]) {
  let els;
  try { els = document.querySelectorAll(sel); } catch (e) { return sel; }
  for (const e of els) {
    const r = e.getBoundingClientRect();
    if (!r.width && !r.height) continue;
    const d = document.createElement('div');
    d.setAttribute('data-vantage-mask', '');
    d.style.cssText = `all:initial;position:fixed;left:${r.left}px;top:${r.top}px;width:${r.width}px;height:${r.height}px;background:#ff00ff;z-index:2147483647;pointer-events:none;display:block`;
    document.documentElement.appendChild(d);
  }
}
return null;
"#;

const UNMASK_JS: &str = "for (const d of document.querySelectorAll('[data-vantage-mask]')) d.remove();";

/// `[selector]` → `{count, visible, text}` of the first match.
const ELEMENT_JS: &str = concat!(
    r#"const vis = e => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length) && getComputedStyle(e).visibility !== 'hidden';"#,
    r#"const els = document.querySelectorAll(arguments[0]);
const e = els[0];
return { count: els.length, visible: !!e && vis(e), text: e ? (e.innerText || e.textContent || '') : null };"#
);

#[cfg(test)]
mod tests {
    #[test]
    fn failed_requests_are_named_in_plain_words_favicon_last() {
        let console = [
            "http://127.0.0.1:8080/favicon.ico - Failed to load resource: the server responded with a status of 404 (Not Found)".to_string(),
            "http://127.0.0.1:8080/incidents/timeline 12:7 \"timeline: backend unavailable\"".to_string(),
            "http://127.0.0.1:8080/api/timeline - Failed to load resource: the server responded with a status of 500 (Internal Server Error)".to_string(),
            "http://127.0.0.1:1/api/live - Failed to load resource: net::ERR_CONNECTION_REFUSED".to_string(),
        ];
        let methods = [("http://127.0.0.1:8080/api/timeline".to_string(), "POST".to_string())];
        assert_eq!(
            super::failed_requests(&console, &methods),
            [
                "POST http://127.0.0.1:8080/api/timeline returned 500",
                "the request for http://127.0.0.1:1/api/live failed: connection refused",
                "the request for http://127.0.0.1:8080/favicon.ico returned 404",
            ]
        );
    }

    use crate::steps::compile::{test_step, test_step_errors};

    #[test]
    fn one_action_per_step_and_the_kind_needs_a_browser() {
        let errs = test_step_errors("name: b\nbrowser: {navigate: \"http://127.0.0.1:1/\", click: \"#go\"}\n");
        assert!(errs.iter().any(|e| e.contains("expected exactly one action") && e.contains("got navigate, click")), "{errs:?}");
        let step = test_step("name: b\nbrowser: {click: \"#go\"}\n");
        assert!(step.kind.info().needs.browser);
        assert!(super::METRICS.iter().all(|m| m.name.starts_with("synthetics.browser.")));
    }
}
