//! `vantage demo --gameday`: the embedded demo service, an in-process agent
//! running the shipped journeys every few seconds with its admin endpoint on
//! loopback, and a built-in scenario (CRM stall, ACK endpoint failing,
//! WebSocket drop) run against them. No Prometheus needed: it reports
//! time-to-know and time-to-recover.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::AgentConfig;
use crate::daemon::{self, RunOptions};
use crate::demo::live::{demo_journeys, start_demo_env};

/// Journey interval during the demo game day: short, so a fault is known within seconds.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Journey timeout: leaves a second between runs so none is skipped.
pub const TIMEOUT: Duration = Duration::from_secs(4);

/// The built-in scenario, as YAML, against a demo at `target` watched by the agent at `admin`.
pub fn scenario_yaml(target: &str, admin: &str, hold: Duration) -> String {
    let hold = humantime::format_duration(hold);
    format!(
        r#"name: demo game day
agents:
  - {{name: demo, url: "{admin}"}}
faults:
  - name: CRM stall
    inject: {{http: {{method: POST, url: "{target}/admin/faults/crm", json: {{mode: stall}}}}}}
    hold: {hold}
    heal: {{http: {{method: POST, url: "{target}/admin/faults/crm", json: {{mode: normal}}}}}}
    expect: {{journeys: [lead-capture]}}
    settle: 20s
    recover_within: 20s
  - name: ACK endpoint failing
    inject: {{http: {{method: POST, url: "{target}/admin/faults/http", json: {{route: "POST /api/incidents/{{id}}/ack", status: 500}}}}}}
    hold: {hold}
    heal: {{http: {{method: DELETE, url: "{target}/admin/faults"}}}}
    expect: {{journeys: [incident-lifecycle]}}
    settle: 20s
    recover_within: 20s
  - name: WebSocket drop
    inject: {{http: {{method: POST, url: "{target}/admin/faults/websocket", json: {{mode: drop}}}}}}
    hold: {hold}
    heal: {{http: {{method: POST, url: "{target}/admin/faults/websocket", json: {{mode: normal}}}}}}
    expect: {{journeys: [incident-lifecycle]}}
    settle: 20s
    recover_within: 20s
"#
    )
}

/// `vantage demo --gameday`.
pub async fn run(out: Option<PathBuf>, hold: Duration) -> anyhow::Result<i32> {
    let env = start_demo_env().await?;
    let mut journeys = demo_journeys()?;
    // Browser journeys need Chromium and take seconds each: not needed to show the idea.
    journeys.retain(|j| !j.needs().browser);
    for j in &mut journeys {
        j.interval = INTERVAL;
        j.timeout = TIMEOUT;
    }
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent = AgentConfig {
        id: "demo".into(),
        location: "demo".into(),
        credentials_dir: Some(env.credentials_dir.clone()),
        ..AgentConfig::default()
    };
    agent.admin.listen = format!("127.0.0.1:{admin_port}");
    agent.callback.listen = Some(format!("127.0.0.1:{}", env.callback_port).parse()?);
    agent.shutdown_grace = crate::config::Dur(Duration::from_secs(2));
    let stop_agent = tokio_util::sync::CancellationToken::new();
    let agent_task = tokio::spawn(daemon::run(RunOptions {
        preloaded: Some((agent, journeys)),
        env_overrides: env.overrides.clone(),
        stop: Some(stop_agent.clone()),
        ..Default::default()
    }));
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_healthy(&admin).await?;
    let yaml = scenario_yaml(&env.server.base_url(), &admin, hold);
    let sc = super::scenario::parse(Path::new("built-in demo scenario"), &yaml).map_err(|d| {
        anyhow::anyhow!(
            "built-in scenario is invalid: {}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    eprintln!(
        "demo service on {}, agent admin on {admin}; journeys every {}s",
        env.server.base_url(),
        INTERVAL.as_secs()
    );
    let out = out.unwrap_or_else(super::default_out_dir);
    let stop = super::Stop::default();
    super::spawn_signal_watch(stop.clone());
    let result = super::run(&sc, &out, stop).await;
    stop_agent.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent_task).await;
    env.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&env.credentials_dir);
    match result? {
        super::Outcome::Refused(d) => {
            daemon::print_diagnostics(&d);
            Ok(1)
        }
        super::Outcome::Done { report, exit } => {
            println!(
                "\nTime to know, per injected fault (journeys every {}s, no Prometheus):\n",
                INTERVAL.as_secs()
            );
            print!("{}", super::report::table(&report));
            println!(
                "\nreport: {} (and report.json, one SVG timeline per fault)",
                out.join("report.md").display()
            );
            Ok(exit)
        }
    }
}

async fn wait_healthy(admin: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..50 {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get(format!("{admin}/healthz")).send(),
        )
        .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the demo agent's admin endpoint {admin} did not come up within 5s")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_scenario_is_valid() {
        let y = super::scenario_yaml(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            std::time::Duration::from_secs(10),
        );
        let s = crate::gameday::scenario::parse(std::path::Path::new("x"), &y).unwrap();
        assert_eq!(s.faults.len(), 3);
        assert_eq!(
            s.faults[1].inject.describe(),
            "POST http://127.0.0.1:1/admin/faults/http"
        );
    }
}
