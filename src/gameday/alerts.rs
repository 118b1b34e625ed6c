//! Reading alerts: firing ones from Prometheus (`/api/v1/alerts`) and the
//! ones Alertmanager accepted for notification (`/api/v2/alerts`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::scenario::AlertSource;

/// One alert as the game day compares them: its labels, and for
/// Alertmanager the receivers it is routed to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<String>,
}

impl Alert {
    /// Identity across polls: the label set.
    pub fn key(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn matches(&self, want: &BTreeMap<String, String>) -> bool {
        want.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    pub fn team(&self, team_label: &str) -> Option<&str> {
        self.labels.get(team_label).map(String::as_str)
    }
}

#[derive(Deserialize)]
struct PromResponse {
    data: PromData,
}
#[derive(Deserialize)]
struct PromData {
    alerts: Vec<PromAlert>,
}
#[derive(Deserialize)]
struct PromAlert {
    labels: BTreeMap<String, String>,
    state: String,
}

#[derive(Deserialize)]
struct AmAlert {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    receivers: Vec<AmReceiver>,
    status: AmStatus,
}
#[derive(Deserialize)]
struct AmReceiver {
    name: String,
}
#[derive(Deserialize)]
struct AmStatus {
    state: String,
}

const POLL_TIMEOUT: Duration = Duration::from_secs(3);

async fn get(client: &reqwest::Client, full: &str) -> Result<bytes::Bytes, String> {
    // Messages name the endpoint, not its query string.
    let url = full.split('?').next().unwrap_or(full);
    let resp = tokio::time::timeout(POLL_TIMEOUT, client.get(full).send())
        .await
        .map_err(|_| format!("{url} did not answer within {}s", POLL_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot reach {url}: {}", super::http_error(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    tokio::time::timeout(POLL_TIMEOUT, resp.bytes())
        .await
        .map_err(|_| {
            format!(
                "{url} did not send its answer within {}s",
                POLL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("reading {url}: {}", super::http_error(&e)))
}

/// Alerts firing in Prometheus (pending ones are not yet detection).
pub async fn prometheus_firing(
    client: &reqwest::Client,
    src: &AlertSource,
) -> Result<Vec<Alert>, String> {
    Ok(firing_only(prometheus_states(client, src).await?))
}

fn firing_only(alerts: Vec<(Alert, bool)>) -> Vec<Alert> {
    alerts.into_iter().filter(|(_, firing)| *firing).map(|(a, _)| a).collect()
}

/// Alerts pending or firing in Prometheus: before a fault, a pending alert
/// is one that may still fire and be taken for the new fault's signal.
pub async fn prometheus_active(
    client: &reqwest::Client,
    src: &AlertSource,
) -> Result<Vec<Alert>, String> {
    Ok(prometheus_states(client, src).await?.into_iter().map(|(a, _)| a).collect())
}

/// Every alert Prometheus holds, with whether it is firing.
async fn prometheus_states(
    client: &reqwest::Client,
    src: &AlertSource,
) -> Result<Vec<(Alert, bool)>, String> {
    let url = format!("{}/api/v1/alerts", src.url);
    let body = get(client, &url).await?;
    parse_prometheus_states(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
}

/// Every alert with whether it is firing (the others are pending).
fn parse_prometheus_states(body: &[u8]) -> Result<Vec<(Alert, bool)>, serde_json::Error> {
    let r: PromResponse = serde_json::from_slice(body)?;
    Ok(r.data
        .alerts
        .into_iter()
        .map(|a| {
            let firing = a.state == "firing";
            let alert = Alert {
                labels: a.labels,
                receivers: vec![],
            };
            (alert, firing)
        })
        .collect())
}

/// Alerts Alertmanager holds for notification (active: neither silenced nor inhibited).
pub async fn alertmanager_active(
    client: &reqwest::Client,
    src: &AlertSource,
) -> Result<Vec<Alert>, String> {
    let url = format!(
        "{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
        src.url
    );
    let body = get(client, &url).await?;
    parse_alertmanager(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
}

pub fn parse_alertmanager(body: &[u8]) -> Result<Vec<Alert>, serde_json::Error> {
    let r: Vec<AmAlert> = serde_json::from_slice(body)?;
    Ok(r.into_iter()
        .filter(|a| a.status.state == "active")
        .map(|a| Alert {
            labels: a.labels,
            receivers: a.receivers.into_iter().map(|r| r.name).collect(),
        })
        .collect())
}

/// Is the source up at all? (Checked before anything is injected.)
pub async fn ready(
    client: &reqwest::Client,
    src: &AlertSource,
    prometheus: bool,
) -> Result<(), String> {
    if prometheus {
        prometheus_firing(client, src).await.map(|_| ())
    } else {
        alertmanager_active(client, src).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answer_keeps_only_firing_alerts() {
        let body = br#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"JourneyFailing","team":"marketing"},"annotations":{},"state":"firing","activeAt":"2026-01-01T00:00:00Z","value":"1e+00"},
            {"labels":{"alertname":"JourneyFailing","team":"identity"},"annotations":{},"state":"pending","activeAt":"2026-01-01T00:00:00Z","value":"1e+00"}]}}"#;
        let a = firing_only(parse_prometheus_states(body).unwrap());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].team("team"), Some("marketing"));
        assert!(a[0].matches(&BTreeMap::from([(
            "alertname".to_string(),
            "JourneyFailing".to_string()
        )])));
        assert!(!a[0].matches(&BTreeMap::from([(
            "severity".to_string(),
            "page".to_string()
        )])));
        assert_eq!(a[0].key(), "alertname=JourneyFailing,team=marketing");
        let all = parse_prometheus_states(body).unwrap();
        assert_eq!(
            all.iter().map(|(a, f)| (a.team("team"), *f)).collect::<Vec<_>>(),
            vec![(Some("marketing"), true), (Some("identity"), false)]
        );
    }

    #[test]
    fn alertmanager_answer_has_receivers_and_skips_suppressed() {
        let body = br#"[
            {"labels":{"alertname":"A","team":"incidents"},"annotations":{},"receivers":[{"name":"incidents-pager"}],"status":{"state":"active","silencedBy":[],"inhibitedBy":[]},"startsAt":"x","endsAt":"y","updatedAt":"z","fingerprint":"f1"},
            {"labels":{"alertname":"B","team":"x"},"annotations":{},"receivers":[{"name":"r"}],"status":{"state":"suppressed","silencedBy":["s"],"inhibitedBy":[]},"startsAt":"x","endsAt":"y","updatedAt":"z","fingerprint":"f2"}]"#;
        let a = parse_alertmanager(body).unwrap();
        assert_eq!(
            a,
            vec![Alert {
                labels: BTreeMap::from([
                    ("alertname".into(), "A".into()),
                    ("team".into(), "incidents".into())
                ]),
                receivers: vec!["incidents-pager".into()]
            }]
        );
    }
}
