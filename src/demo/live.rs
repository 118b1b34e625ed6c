//! `vantage demo`: the demo service plus the shipped journeys, run live.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{compile_files, fit, fmt_dur, fold, run_agent, terminal_width, AgentConfig, Dur, Journey, Outcome, RunObserver, RunOptions, RunResult};

use super::{DemoOptions, DemoServer};

/// The shipped journeys, embedded so the demo needs nothing but the binary.
pub const PROBES: &[(&str, &str)] = &[
    ("probes/login.yaml", include_str!("../../probes/login.yaml")),
    ("probes/user-search.yaml", include_str!("../../probes/user-search.yaml")),
    ("probes/incident-lifecycle.yaml", include_str!("../../probes/incident-lifecycle.yaml")),
    ("probes/lead-capture.yaml", include_str!("../../probes/lead-capture.yaml")),
    ("probes/demo-host.yaml", include_str!("../../probes/demo-host.yaml")),
    ("probes/timeline-render.yaml", include_str!("../../probes/timeline-render.yaml")),
    ("probes/lead-form.yaml", include_str!("../../probes/lead-form.yaml")),
];

/// Runs in the demo at most this often, so results show up quickly.
const DEMO_MAX_INTERVAL: Duration = Duration::from_secs(30);

/// What the shipped journeys need to find the demo service.
pub struct DemoEnv {
    pub server: DemoServer,
    pub overrides: HashMap<String, String>,
    pub credentials_dir: PathBuf,
    pub callback_port: u16,
    _dir: RemoveOnDrop,
}

/// Removes the directory holding the demo's password and CA when the
/// environment goes (a field, so the server can still be moved out to stop it).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the demo service on loopback and prepares the journeys' environment.
pub async fn start_demo_env() -> anyhow::Result<DemoEnv> {
    start_demo_env_on("127.0.0.1:0".parse()?).await
}

/// [`start_demo_env`] with the demo's HTTP listener on a given address (game-day scenarios name it).
pub async fn start_demo_env_on(http_addr: std::net::SocketAddr) -> anyhow::Result<DemoEnv> {
    let dir = std::env::temp_dir().join(format!("vantage-demo-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let password = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(dir.join("demo_password"), &password)?;
    let callback_port = crate::free_loopback_port()?;
    let server = match DemoServer::start(DemoOptions {
        password,
        webhook_url: Some(format!("http://127.0.0.1:{callback_port}/hooks/crm")),
        http_addr,
        https_addr: Some("127.0.0.1:0".parse()?),
        dns_addr: Some("127.0.0.1:0".parse()?),
        ..DemoOptions::default()
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let ca = dir.join("demo-ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap_or_default())?;
    let base = server.base_url();
    let host_port = |url: &str| url.split("://").nth(1).unwrap_or_default().trim_end_matches('/').to_string();
    let overrides = HashMap::from([
        ("VANTAGE_TARGET".to_string(), base.clone()),
        ("VANTAGE_TARGET_WS".to_string(), base.replacen("http://", "ws://", 1)),
        ("VANTAGE_DEMO_HTTP".to_string(), host_port(&base)),
        ("VANTAGE_DEMO_TLS".to_string(), server.https_url().map(|u| host_port(&u)).unwrap_or_default()),
        ("VANTAGE_DEMO_DNS".to_string(), server.dns_addr().map(|a| a.to_string()).unwrap_or_default()),
        ("VANTAGE_DEMO_CA_FILE".to_string(), ca.display().to_string()),
    ]);
    Ok(DemoEnv { server, overrides, credentials_dir: dir.clone(), callback_port, _dir: RemoveOnDrop(dir) })
}

/// The shipped journeys, compiled, with intervals capped for a lively demo.
pub fn demo_journeys() -> anyhow::Result<Vec<Journey>> {
    let files: Vec<(PathBuf, String)> = PROBES.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    let mut journeys = compile_files(&files).map_err(|d| anyhow::anyhow!("shipped probes are invalid:\n{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
    for j in &mut journeys {
        j.interval = j.interval.min(DEMO_MAX_INTERVAL);
        // Validation already checked the waits against the timeout, which stays as written when it fits.
        j.timeout = j.timeout.min(j.interval);
    }
    Ok(journeys)
}

#[derive(Default)]
struct Board {
    rows: BTreeMap<String, Row>,
    failures: VecDeque<String>,
    /// URL of the status page, shown above the table.
    page: String,
}

#[derive(Default)]
struct Row {
    last: Option<Outcome>,
    last_ms: f64,
    runs: u64,
    fails: u64,
    detail: String,
}

/// The live table, `width` columns wide at most: names are cut with an
/// ellipsis so outcome and duration stay in view; the steps go on a detail
/// line below, folded.
fn render(board: &Board, width: usize) -> String {
    let mut out = String::from("\x1b[H\x1b[2J");
    for line in ["Vantage demo: shipped journeys against the built-in demo service (Ctrl-C stops)", &format!("Status page: {}", board.page)] {
        out.push_str(&fit(line, width));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&format!("{:<NAME$} {:<9} {:>9} {:>6} {:>6}\n", "JOURNEY", "LAST", "DURATION", "RUNS", "FAILS"));
    for (name, r) in &board.rows {
        let last = r.last.map(|o| o.as_str()).unwrap_or("waiting");
        out.push_str(&format!("{:<NAME$} {:<9} {:>7.0}ms {:>6} {:>6}\n", fit(name, NAME), last, r.last_ms, r.runs, r.fails));
        out.push_str(&fold(&r.detail, width, 4));
    }
    if !board.failures.is_empty() {
        out.push_str("\nRecent failures:\n");
        for f in &board.failures {
            out.push_str(&fold(f, width, 2));
        }
    }
    out
}

/// Width of the journey column.
const NAME: usize = 24;

/// One run as plain lines (stdout not a terminal): journey, outcome and
/// duration first, then the steps and any message, folded to `width`.
fn run_lines(r: &RunResult, width: usize) -> String {
    let mut out = format!("{:<NAME$} {:<8} {:>7.0}ms\n", fit(&r.journey, NAME), r.outcome.as_str(), r.duration.as_secs_f64() * 1000.0);
    out.push_str(&fold(&step_summary(r), width, 4));
    if let Some(m) = &r.message {
        out.push_str(&fold(m, width, 4));
    }
    out
}

fn step_summary(r: &RunResult) -> String {
    r.steps
        .iter()
        .filter(|s| !s.cleanup)
        .map(|s| format!("{} {}", s.name, fmt_dur(s.duration)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `vantage demo`.
pub async fn run_demo(otlp: Option<String>, protocol: String, duration: Option<u64>, listen: Option<std::net::SocketAddr>, admin: Option<std::net::SocketAddr>) -> anyhow::Result<i32> {
    // Listening from the start: a SIGTERM or Ctrl-C before the agent installs
    // its own handlers would otherwise end the process without removing the
    // credentials directory (the demo's password and CA).
    let stop = tokio_util::sync::CancellationToken::new();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            s.cancel();
        });
    }
    let env = start_demo_env_on(listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
    let mut journeys = demo_journeys()?;
    let mut agent = AgentConfig { id: "demo".into(), location: "demo".into(), credentials_dir: Some(env.credentials_dir.clone()), ..AgentConfig::default() };
    // The admin endpoint serves the status page, /metrics and /events; loopback on a free port unless given.
    let admin_addr = match admin {
        Some(a) => a,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_loopback_port()?)),
    };
    let admin_port = admin_addr.port();
    agent.admin.listen = admin_addr.to_string();
    agent.callback.listen = Some(format!("127.0.0.1:{}", env.callback_port).parse()?);
    // Without Chromium the other journeys still run; say how to get the browser ones.
    if let Some(why) = crate::browser_missing_for(&agent.browser, &journeys) {
        journeys.retain(|j| !j.needs().browser);
        println!("browser journeys skipped: {why}");
    }
    if let Some(ep) = otlp {
        agent.telemetry.otlp.endpoint = Some(ep);
        agent.telemetry.otlp.protocol = Some(protocol);
        agent.telemetry.otlp.export_interval = Some(Dur(Duration::from_secs(5)));
    }
    let tty = std::io::stdout().is_terminal();
    let width = terminal_width();
    let page_url = format!("http://127.0.0.1:{admin_port}/");
    let board = Arc::new(Mutex::new(Board { page: page_url.clone(), ..Board::default() }));
    for j in &journeys {
        board.lock().expect("board lock").rows.entry(j.name.clone()).or_default();
    }
    println!("demo service on {} (journeys start within {}s); status page on {page_url}", env.server.base_url(), DEMO_MAX_INTERVAL.as_secs());
    if admin.is_some() {
        println!("agent admin endpoint on http://{admin_addr} (/metrics, /status, /events)");
    }
    println!("to run a journey against it: vantage once PROBE --env VANTAGE_TARGET={} --credentials-dir {}", env.server.base_url().trim_end_matches('/'), env.credentials_dir.display());
    let b = board.clone();
    let observer: RunObserver = Arc::new(move |_j, r| {
        let mut board = b.lock().expect("board lock");
        let row = board.rows.entry(r.journey.clone()).or_default();
        row.last = Some(r.outcome);
        row.last_ms = r.duration.as_secs_f64() * 1000.0;
        row.runs += 1;
        row.detail = step_summary(r);
        if r.outcome == Outcome::Failure {
            row.fails += 1;
            let line = format!("{} [{}] {}", r.journey, r.error_type.map(|e| e.as_str()).unwrap_or(""), r.message.as_deref().unwrap_or(""));
            board.failures.push_back(line);
            if board.failures.len() > 5 {
                board.failures.pop_front();
            }
        }
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = out.write_all(render(&board, width).as_bytes());
        } else {
            let _ = out.write_all(run_lines(r, width).as_bytes());
        }
        let _ = out.flush();
    });
    if let Some(secs) = duration {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            s.cancel();
        });
    }
    let code = run_agent(RunOptions {
        preloaded: Some((agent, journeys)),
        env_overrides: env.overrides.clone(),
        observer: Some(observer),
        stop: Some(stop),
        ..Default::default()
    })
    .await?;
    env.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&env.credentials_dir);
    let board = board.lock().expect("board lock");
    let (runs, fails): (u64, u64) = board.rows.values().fold((0, 0), |(r, f), row| (r + row.runs, f + row.fails));
    println!("\ndemo finished: {runs} runs, {fails} failed");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fits_80_columns_with_outcome_and_duration_in_view() {
        let mut board = Board { page: "http://127.0.0.1:9464/".into(), ..Board::default() };
        let detail = (1..=9).map(|i| format!("step-number-{i}-with-a-long-name 12ms")).collect::<Vec<_>>().join(" · ");
        board.rows.insert(
            "checkout-with-a-very-long-journey-name-for-the-eu-shop".into(),
            Row { last: Some(Outcome::Failure), last_ms: 1234.0, runs: 7, fails: 2, detail },
        );
        board.failures.push_back(format!("checkout [http] {}", "the server answered 500 to POST /api/cart ".repeat(4)));
        let text = render(&board, 80);
        let text = text.strip_prefix("\x1b[H\x1b[2J").expect("clears the screen first");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
        }
        let row = text.lines().find(|l| l.starts_with("checkout")).unwrap();
        assert_eq!(row, "checkout-with-a-very-lo… failure      1234ms      7      2");
        assert!(text.contains("\n    step-number-1-with-a-long-name 12ms · step-number-2-with-a-long-name 12ms ·\n"), "{text}");
    }
}
