//! No one but the agent drives its browser: another local user (`nobody`,
//! through `setpriv`) probes the real chromedriver and Chromium while a
//! journey uses them, and cannot create a WebDriver session, find the URL
//! base in chromedriver's command line, reach a DevTools port, or read a
//! 0600 credential through a `file://` page. Needs root (to switch users);
//! anything missing fails with the fix, never skips.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;

use vantage::browser::{missing_binaries, procs};
use vantage::config::validate::compile_files;
use vantage::config::AgentConfig;
use vantage::runner::result::Outcome;

const CANARY: &str = "canary-cred-7f3a9c";

fn require_tools() {
    if let Some(m) = missing_binaries(
        Path::new("/usr/bin/chromedriver"),
        Path::new("/usr/bin/chromium"),
    ) {
        panic!("{m}. For the tests: run `.ci/install-test-deps`");
    }
    for t in ["setpriv", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .status()
                .unwrap()
                .success(),
            "`{t}` is missing: run `.ci/install-test-deps` (util-linux, curl)"
        );
    }
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(uid, 0, "this test switches to the `nobody` user to attack the agent's browser: run it as root (CI does)");
}

/// Runs `script` with `sh -c` as `nobody` (no groups, no new privileges); its stdout.
fn as_nobody(script: &str) -> String {
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--no-new-privs",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// TCP ports some process in `pids` listens on (from /proc/net/tcp{,6} and the processes' fds).
fn listening_ports(pids: &[u32]) -> Vec<u16> {
    let mut inodes = Vec::new();
    for pid in pids {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                if let Ok(l) = std::fs::read_link(e.path()) {
                    if let Some(n) = l
                        .to_str()
                        .and_then(|s| s.strip_prefix("socket:["))
                        .and_then(|s| s.strip_suffix(']'))
                    {
                        inodes.push(n.to_string());
                    }
                }
            }
        }
    }
    let mut ports = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let c: Vec<&str> = line.split_whitespace().collect();
            if c.len() > 9 && c[3] == "0A" && inodes.iter().any(|i| i == c[9]) {
                let port = u16::from_str_radix(c[1].rsplit(':').next().unwrap(), 16).unwrap();
                ports.push(port);
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_drive_the_browser_or_read_credentials_through_it() {
    require_tools();
    let dir = std::env::temp_dir().join(format!(
        "vantage-isolation-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    // The credential: root's, 0600, in a directory others may traverse (so only the mode protects it).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir.join("creds"), std::fs::Permissions::from_mode(0o711)).unwrap();
    let cred = dir.join("creds/token");
    std::fs::write(&cred, format!("{CANARY}\n")).unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    let direct = as_nobody(&format!("cat {}", cred.display()));
    assert!(
        !direct.contains(CANARY) && direct.contains("Permission denied"),
        "the 0600 file itself must be closed to nobody: {direct}"
    );

    let cred_url = format!("file://{}", cred.display());
    let app = Router::new()
        .route("/", get(|| async { Html("<title>home</title><p id=late></p><script>setTimeout(() => late.textContent = 'ready', 6000)</script>") }))
        .route("/to-file", get(move || {
            let u = cred_url.clone();
            async move { Html(format!("<title>redirect</title><a id=go href='{u}'>cred</a><iframe src='{u}'></iframe>")) }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let agent = AgentConfig {
        artifacts_dir: Some(dir.join("artifacts")),
        ..Default::default()
    };
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .build()
        .tracer("test");
    let env = Arc::new(vantage::daemon::build_env(&agent, tracer, None, HashMap::new()).unwrap());
    let probe = format!(
        r##"
journeys:
  - name: busy browser
    interval: 60s
    timeout: 40s
    steps:
      - name: open
        browser: {{ navigate: "http://{addr}/" }}
      - name: wait
        browser: {{ wait_for: {{ selector: "#late", text: ready, within: 20s }} }}
  - name: local file
    interval: 60s
    timeout: 20s
    steps:
      - name: open file
        browser: {{ navigate: "file://{cred}" }}
  - name: page to file
    interval: 60s
    timeout: 30s
    steps:
      - name: open
        browser: {{ navigate: "http://{addr}/to-file" }}
      - name: follow link
        browser: {{ click: "#go" }}
      - name: read
        browser: {{ eval: "return [location.href, document.body ? document.body.innerText : '', [...document.querySelectorAll('iframe')].map(f => {{ try {{ return f.contentDocument.body.innerText }} catch (e) {{ return 'blocked' }} }}).join()]" }}
        assert: {{ body_not_contains: ["{CANARY}"] }}
"##,
        cred = cred.display()
    );
    let journeys: Vec<Arc<vantage::config::Journey>> =
        compile_files(&[(PathBuf::from("isolation.yaml"), probe)])
            .unwrap_or_else(|d| panic!("{d:#?}"))
            .into_iter()
            .map(Arc::new)
            .collect();

    // A journey keeps a session open while `nobody` attacks.
    let busy = journeys[0].clone();
    let env2 = env.clone();
    let run = tokio::spawn(async move {
        vantage::runner::run_journey(&busy, env2, &CancellationToken::new())
            .await
            .unwrap()
    });
    let start = Instant::now();
    let (pid, port, chromiums) = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no browser session came up"
        );
        if let (Some(pid), Some(port)) = (env.browser().driver_pid(), env.browser().driver_port()) {
            let kids: Vec<u32> = procs::descendants(pid);
            let has_chromium = kids.iter().any(|k| {
                std::fs::read(format!("/proc/{k}/cmdline"))
                    .map(|c| c.windows(8).any(|w| w == b"chromium"))
                    .unwrap_or(false)
            });
            if has_chromium {
                break (pid, port, kids);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // 1. chromedriver's command line, as others see it: the URL base is blanked.
    let cmdline = as_nobody(&format!("tr '\\0' ' ' < /proc/{pid}/cmdline"));
    let base = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--url-base=/"))
        .unwrap_or_else(|| panic!("no --url-base in {cmdline}"))
        .to_string();
    assert_eq!(
        base,
        "x".repeat(32),
        "the URL base must not be readable in /proc/{pid}/cmdline: {cmdline}"
    );

    // 2. No WebDriver session for nobody: not at the root, not at what argv shows, not at /status.
    let create = r#"{"capabilities":{"alwaysMatch":{"browserName":"chrome","goog:chromeOptions":{"args":["--headless=new","--no-sandbox"]}}}}"#;
    for path in ["/session", &format!("/{base}/session"), "/wd/hub/session"] {
        let out = as_nobody(&format!("curl -s -m 5 -H 'content-type: application/json' -d '{create}' http://127.0.0.1:{port}{path}; echo; echo exit=$?"));
        assert!(
            !out.contains("sessionId"),
            "nobody created a WebDriver session at {path}: {out}"
        );
        assert!(
            out.contains("unknown command") || out.contains("404") || out.contains("exit="),
            "{out}"
        );
    }
    let status = as_nobody(&format!("curl -s -m 5 http://127.0.0.1:{port}/status"));
    assert!(
        !status.contains("\"ready\":true"),
        "chromedriver answered nobody outside its URL base: {status}"
    );

    // 3. No DevTools port: Chromium runs on a pipe and listens on nothing.
    let mut browser_procs = chromiums.clone();
    browser_procs.retain(|p| *p != pid);
    assert!(!browser_procs.is_empty());
    let ports = listening_ports(&browser_procs);
    assert!(ports.is_empty(), "Chromium listens on {ports:?}");
    let all: Vec<String> = browser_procs
        .iter()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect();
    assert!(
        all.iter().any(|c| c.contains("--remote-debugging-pipe")),
        "{all:?}"
    );
    assert!(
        all.iter().all(|c| !c.contains("--remote-debugging-port")),
        "{all:?}"
    );
    let devtools = as_nobody("curl -s -m 3 http://127.0.0.1:9222/json/version; echo exit=$?");
    assert!(!devtools.contains("webSocketDebuggerUrl"), "{devtools}");

    let busy = run.await.unwrap();
    assert_eq!(
        busy.outcome,
        Outcome::Success,
        "the agent's own journey still works: {:?}",
        busy.message
    );

    // 4. The agent's own sessions never open local files, whether asked by a step or by a page.
    let r = vantage::runner::run_journey(&journeys[1], env.clone(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Failure);
    let m = r.message.clone().unwrap_or_default();
    assert!(m.contains("refused") && !m.contains(CANARY), "{m}");
    let r = vantage::runner::run_journey(&journeys[2], env.clone(), &CancellationToken::new())
        .await
        .unwrap();
    let text = format!("{:?}", r);
    assert_eq!(
        r.outcome,
        Outcome::Success,
        "the page's attempts must run to the end: {text}"
    );
    assert!(
        !text.contains(CANARY),
        "a page read the credential through file://: {text}"
    );

    // 5. The artifacts directory is private.
    if let Ok(m) = std::fs::metadata(dir.join("artifacts")) {
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        let listing = as_nobody(&format!("ls {}/artifacts", dir.display()));
        assert!(listing.contains("Permission denied"), "{listing}");
    }

    env.browser().shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
