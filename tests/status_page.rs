//! The status page as a person sees it: the `vantage` binary runs journeys
//! that pass and fail (HTTP against a loopback target, lead capture against
//! the demo service, a browser journey that fails with a screenshot), and a
//! real headless Chromium, driven through fantoccini + chromedriver, opens
//! the page. Chromium missing is a failure with the install command, never a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::target::Target;
use common::{free_port, tempdir};
use fantoccini::Locator;
use serde_json::Value;
use vantage::browser::{missing_binaries, procs, BrowserManager};
use vantage::demo::{DemoOptions, DemoServer};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");
const CANARY: &str = "hunter2-canary-secret";
const WAIT: Duration = Duration::from_secs(45);

fn require_chromium() {
    if let Some(m) = missing_binaries(
        Path::new("/usr/bin/chromedriver"),
        Path::new("/usr/bin/chromium"),
    ) {
        panic!("{m}. For the tests: run `.ci/install-test-deps` (it runs `apt-get install -y chromium chromium-driver`)");
    }
}

/// The agent process; stopped (SIGTERM, then SIGKILL) and its directory removed on drop.
struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    admin: String,
}

impl Agent {
    /// SIGTERM and wait: an open status page (its event stream) must not hold up shutdown.
    fn stop(&mut self) -> Option<(std::process::ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let t0 = Instant::now();
        procs::kill_pid(child.id(), procs::SIGTERM);
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PROBES: &str = r##"
journeys:
  - name: lead capture
    interval: 3s
    timeout: 3s
    labels: {team: marketing}
    vars:
      email: "lead+${run.id}@synthetic.vantage.test"
    steps:
      - name: submit lead
        http:
          method: POST
          url: "${env.DEMO}/leads"
          headers: {X-Callback-Token: "${run.callback_token}"}
          json: {name: Probe, email: "${email}", company: Vantage Synthetic, plan: team, message: "run ${run.id}"}
        assert: {status: 202}
      - name: lead in CRM
        eventually:
          within: 2s
          backoff: 100ms
          max_backoff: 200ms
          step:
            name: find lead
            http: {url: "${env.DEMO}/crm/leads?email=${email | urlencode}"}
            assert:
              json: [{path: "$.leads[0].email", equals: "${email}"}]
      - name: webhook received
        callback: {within: 2s, since_step: submit lead}
    finally:
      - name: delete test lead
        http: {method: DELETE, url: "${env.DEMO}/crm/leads?email=${email | urlencode}"}
  - name: api ok
    interval: 1s
    labels: {team: platform}
    steps:
      - name: fetch
        http: {url: "${env.BASE}/json"}
  - name: checkout <beta>
    interval: 1s
    labels: {team: payments}
    steps:
      - name: pay
        http:
          method: POST
          url: "${env.BASE}/echo"
          body: "<img src=x id=injected onerror=alert(1)> password=${secret.password}"
        assert: {body_contains: "order confirmed"}
  - name: broken page
    interval: 6s
    timeout: 6s
    steps:
      - name: open
        browser: {navigate: "${env.BASE}/json"}
      - name: banner shown
        browser: {wait_for: {selector: "#never", within: 1s}}
"##;

async fn start_agent(target: &Target, demo: &DemoServer, callback_port: u16) -> Agent {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    std::fs::write(dir.join("creds/password"), format!("{CANARY}\n")).unwrap();
    std::fs::write(dir.join("probes.yaml"), PROBES).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "id: page-test\nlocation: test-1\nprobes: [probes.yaml]\ncredentials_dir: {creds}\nartifacts_dir: {art}\nshutdown_grace: 3s\nadmin: {{listen: \"{admin}\"}}\ncallback: {{listen: \"127.0.0.1:{callback_port}\"}}\nstatus_page: {{history: 30, trace_url: \"http://127.0.0.1:9/trace/{{trace_id}}\"}}\n",
        creds = dir.join("creds").display(),
        art = dir.join("artifacts").display(),
    );
    std::fs::write(dir.join("agent.yaml"), config).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("agent.yaml"))
        .env("BASE", target.url(""))
        .env("DEMO", demo.base_url())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent {
        child: Some(child),
        dir,
        admin,
    }
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The id of a kept `broken page` run that failed at `banner shown`, as the probe intends.
async fn browser_failure(admin: &str) -> Option<String> {
    let v = get_json(&format!("http://{admin}/ui/api/journey?name=broken%20page")).await;
    let runs = v["runs"].as_array()?;
    let hit = runs.iter().rev().find(|r| {
        r["message"].as_str().is_some_and(|m| {
            m.contains("step `banner shown`: expected") && m.contains("screenshot: ")
        })
    })?;
    Some(hit["run_id"].as_str()?.to_string())
}

/// Waits until every journey has run and the failing ones have failed; returns the
/// summary and the run id of a browser failure with a screenshot.
async fn wait_for_runs(admin: &str) -> (Value, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(resp) = reqwest::get(format!("http://{admin}/ui/api/journeys")).await {
            let v: Value = resp.json().await.unwrap();
            let j = |name: &str| {
                v["journeys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["name"] == name)
                    .cloned()
                    .unwrap_or_default()
            };
            let ready = j("lead capture")["state"] == "success"
                && j("api ok")["kept"].as_u64().unwrap_or(0) >= 2
                && j("checkout <beta>")["state"] == "failure"
                && j("broken page")["state"] == "failure";
            // A browser failure with its screenshot (not, say, a timeout while the machine was busy).
            let shot_run = if ready {
                browser_failure(admin).await
            } else {
                None
            };
            if let Some(run) = shot_run {
                return (v, run);
            }
            assert!(
                Instant::now() < deadline,
                "journeys did not reach the expected states in {WAIT:?}: {v:#}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "the admin endpoint never answered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The rendered text of the first element matching `css`, read in one step: live
/// updates replace the content at any moment, so a found element may go stale.
async fn text_of(c: &fantoccini::Client, css: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
            vec![Value::from(css)],
        )
        .await
        .unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("no `{css}` on the page"))
        .trim()
        .to_string()
}

/// Clicks a link like a person would, again if a live update replaced it in between.
async fn click_link(c: &fantoccini::Client, text: &str) {
    for _ in 0..5 {
        if let Ok(e) = c.find(Locator::LinkText(text)).await {
            if e.click().await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot click the link `{text}`");
}

async fn js(c: &fantoccini::Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script {script}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_the_grid_failures_screenshots_leads_and_live_updates() {
    require_chromium();
    let target = Target::start().await;
    let callback_port = free_port();
    let demo = DemoServer::start(DemoOptions {
        https_addr: None,
        dns_addr: None,
        crm_delay: Duration::from_millis(100),
        webhook_url: Some(format!("http://127.0.0.1:{callback_port}/hooks/crm")),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let mut agent = start_agent(&target, &demo, callback_port).await;
    let base = format!("http://{}", agent.admin);
    let (summary, shot_run) = wait_for_runs(&agent.admin).await;
    let group = |name: &str| {
        summary["journeys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()["group"]
            .clone()
    };
    assert_eq!(group("api ok"), "platform");
    assert_eq!(group("broken page"), Value::Null);

    let browser_dir = tempdir();
    let browser = BrowserManager::new(
        &vantage::config::BrowserConfig::default(),
        Some(browser_dir.join("artifacts")),
    );
    let session = browser
        .open(&mut Vec::new())
        .await
        .unwrap_or_else(|e| panic!("cannot start a browser session: {e}"));
    let c = session.client().clone();

    // The grid: one row per journey, grouped by team, failures in red.
    c.goto(&format!("{base}/")).await.unwrap();
    let rows = c.find_all(Locator::Css("tr.journey")).await.unwrap();
    assert_eq!(rows.len(), 4);
    let groups = js(
        &c,
        "return [...document.querySelectorAll('section.group h2')].map(h => h.textContent)",
    )
    .await;
    assert_eq!(
        groups,
        serde_json::json!([
            "marketing team",
            "payments team",
            "platform team",
            "no team label"
        ])
    );
    let checkout = r#"tr[data-journey="checkout <beta>"]"#;
    assert_eq!(text_of(&c, &format!("{checkout} .badge")).await, "failing");
    assert_eq!(
        text_of(&c, r#"tr[data-journey="api ok"] .badge"#).await,
        "passing"
    );
    assert_eq!(
        text_of(&c, &format!("{checkout} td.name a")).await,
        "checkout <beta>"
    );
    let red = js(
        &c,
        &format!(
            "return getComputedStyle(document.querySelector('{} .cell.failure')).backgroundColor",
            checkout.replace('\'', "\\'")
        ),
    )
    .await;
    assert_eq!(red, "rgb(214, 69, 69)");
    let green = js(&c, r#"return getComputedStyle(document.querySelector('tr[data-journey="api ok"] .cell.success')).backgroundColor"#).await;
    assert_eq!(green, "rgb(47, 158, 91)");
    assert!(
        c.find(Locator::Css("tr.journey svg.spark polyline"))
            .await
            .is_ok(),
        "no latency sparkline"
    );

    // A live update arrives without a reload.
    js(&c, "window.__sameDocument = 'yes'; return null").await;
    let runs = || async {
        js(
            &c,
            r#"return Number(document.querySelector('tr[data-journey="api ok"]').dataset.runs)"#,
        )
        .await
        .as_f64()
        .unwrap()
    };
    let before = runs().await;
    let t0 = Instant::now();
    loop {
        if runs().await > before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no live update within 10 s (runs stayed at {before}); live: {}",
            text_of(&c, "#live").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        js(&c, "return window.__sameDocument").await,
        "yes",
        "the page reloaded instead of updating"
    );
    assert!(
        text_of(&c, "#live").await.contains("updated"),
        "{}",
        text_of(&c, "#live").await
    );

    // A failed browser run: its message, waterfall, trace link and screenshot.
    click_link(&c, "broken page").await;
    let article = format!("article#run-{shot_run}");
    let msg = text_of(&c, &format!("{article} pre.message")).await;
    assert!(
        msg.contains("step `banner shown`: expected `#never` to appear within"),
        "{msg}"
    );
    assert!(text_of(&c, &format!("{article} h3"))
        .await
        .contains("browser"));
    assert!(
        c.find(Locator::Css(&format!("{article} svg.waterfall rect")))
            .await
            .is_ok(),
        "no waterfall"
    );
    let trace = js(
        &c,
        &format!("return document.querySelector('{article} p.meta a').href"),
    )
    .await
    .as_str()
    .unwrap()
    .to_string();
    assert!(
        trace.starts_with("http://127.0.0.1:9/trace/")
            && trace.len() == "http://127.0.0.1:9/trace/".len() + 32,
        "{trace}"
    );
    // Screenshots load lazily, as a person scrolls to them.
    let figure = js(&c, &format!("const f = document.querySelector('{article} figure'); if (f) f.scrollIntoView(); return !!f")).await;
    assert_eq!(
        figure, true,
        "no screenshot shown for the failed browser run {shot_run}"
    );
    let t0 = Instant::now();
    let width = loop {
        let w = js(&c, &format!("const i = document.querySelector('{article} figure img'); return i && i.complete ? i.naturalWidth : -1")).await.as_i64().unwrap();
        if w > 0 || t0.elapsed() > Duration::from_secs(10) {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        width >= 800,
        "the failure screenshot did not load (natural width {width})"
    );
    assert!(
        c.find(Locator::Css("svg.chart path")).await.is_ok(),
        "no duration chart"
    );
    assert!(
        text_of(&c, ".facts").await.contains("of 30"),
        "the page does not say how much it keeps: {}",
        text_of(&c, ".facts").await
    );

    // Text from the network shows as text, never as markup.
    c.goto(&format!("{base}/ui/journey?name=checkout%20%3Cbeta%3E"))
        .await
        .unwrap();
    let msg = text_of(&c, "article.failure pre.message").await;
    assert!(
        msg.contains("<img src=x id=injected onerror=alert(1)> password=[REDACTED]"),
        "{msg}"
    );
    assert_eq!(
        js(&c, "return document.getElementById('injected')").await,
        Value::Null
    );
    assert_eq!(text_of(&c, "h1").await, "checkout <beta> failing");

    // The marketing view, in plain words.
    click_link(&c, "Lead capture").await;
    let words = text_of(&c, "section.lead").await;
    assert!(
        words.contains("The lead reached the CRM after")
            && words.contains("the webhook arrived after"),
        "{words}"
    );
    assert!(words.contains("the lead reached the CRM in"), "{words}");
    // Words a marketer reads, not the probe's JSONPath or step kinds.
    for jargon in ["$.", "JSONPath", "eventually", "callback", "assert"] {
        assert!(!words.contains(jargon), "`{jargon}` on the marketing view: {words}");
    }
    assert!(
        !words.contains("checkout"),
        "only lead-capture journeys belong here: {words}"
    );

    session.close().await;
    browser.shutdown().await;
    let _ = std::fs::remove_dir_all(&browser_dir);

    // Nothing the page serves carries the secret, in any page or JSON.
    let (mut html, mut json) = (String::new(), String::new());
    for path in ["/", "/ui/marketing"] {
        html.push_str(
            &reqwest::get(format!("{base}{path}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    json.push_str(
        &reqwest::get(format!("{base}/ui/api/journeys"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    for name in [
        "lead%20capture",
        "api%20ok",
        "checkout%20%3Cbeta%3E",
        "broken%20page",
    ] {
        html.push_str(
            &reqwest::get(format!("{base}/ui/journey?name={name}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        json.push_str(
            &reqwest::get(format!("{base}/ui/api/journey?name={name}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    for (what, served) in [("HTML", &html), ("JSON", &json)] {
        assert!(
            !served.contains(CANARY),
            "the canary secret reached the page's {what}"
        );
        assert!(
            served.contains("password=[REDACTED]"),
            "the failing message (which carried the secret) is not in the {what}"
        );
    }
    assert!(
        !html.contains("<img src=x") && html.contains("&lt;img src=x id=injected"),
        "markup from the network is not escaped"
    );

    // Screenshots only by a kept run's id; nothing else in or outside the directory.
    let run = shot_run;
    let shot = reqwest::get(format!("{base}/ui/screenshot/{run}"))
        .await
        .unwrap();
    assert_eq!(shot.status().as_u16(), 200);
    assert_eq!(shot.headers()["content-type"], "image/png");
    assert_eq!(&shot.bytes().await.unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    for bad in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "../../etc/passwd",
        "00000000000000000000000000000000",
        "%2e%2e",
        &run[..31],
    ] {
        let r = reqwest::get(format!("{base}/ui/screenshot/{bad}"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{bad}");
    }

    // Read-only: nothing under the page accepts a state change, and its scripts come only from itself.
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/ui/journey?name=api%20ok",
        "/ui/marketing",
        "/ui/stream",
    ] {
        assert_eq!(
            client
                .post(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            405,
            "POST {path}"
        );
    }
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );

    // An open event stream does not hold up shutdown.
    let mut stream = reqwest::get(format!("{base}/ui/stream")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first).to_string();
    assert!(
        first.contains("event: run") && first.contains("\"journey\""),
        "{first}"
    );
    let (status, took) = agent.stop().expect("the agent stopped after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} with a status page open"
    );
    demo.shutdown().await;
}
