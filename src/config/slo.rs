//! How objectives are written: `slo:` on a journey, and agent-wide defaults
//! under `slo:` in the agent config (model layer; `crate::slo` turns them into rules).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::Dur;

/// On a journey: its own objectives; anything left out comes from the agent's `slo`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    pub availability: Option<Availability>,
    pub latency: Option<Latency>,
    /// Owning team, the `team` label of every alert (default: the journey's `labels.team`, then the agent's).
    pub team: Option<String>,
    /// Locations that must fail before a page (default 2); fewer is a ticket.
    pub min_locations: Option<u32>,
}

/// Agent-wide defaults, and what only the fleet knows.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSloSpec {
    pub availability: Option<Availability>,
    pub latency: Option<Latency>,
    pub team: Option<String>,
    pub min_locations: Option<u32>,
    /// Every location that runs journeys; a location that goes quiet alerts.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Extra alert annotations (Prometheus templates), e.g.
    /// `trace: "https://grafana/explore?q={{ $labels.journey_name }}"`.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// `objective` percent of runs succeed (degraded counts as success) over `window` (default 30d).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Availability {
    #[schemars(with = "f64")]
    pub objective: Spanned<f64>,
    pub window: Option<Dur>,
}

/// `objective` percent of the runs that did not fail finish within `threshold`,
/// which must be one of the journey's `buckets`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    #[schemars(with = "Dur")]
    pub threshold: Spanned<Dur>,
    #[schemars(with = "f64")]
    pub objective: Spanned<f64>,
    pub window: Option<Dur>,
}

/// An objective is a percentage strictly between 0 and 100.
pub fn check_objective(v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && v < 100.0 {
        Ok(())
    } else {
        Err(format!("expected a percentage between 0 and 100 (exclusive), e.g. 99.5; got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_are_percentages_strictly_inside_0_100() {
        assert!(check_objective(99.5).is_ok());
        assert!(check_objective(100.0).unwrap_err().contains("between 0 and 100"));
        assert!(check_objective(0.0).is_err() && check_objective(f64::NAN).is_err());
    }

    #[test]
    fn journey_slo_parses_with_locations_and_rejects_unknown_keys() {
        let s: SloSpec = serde_saphyr::from_str("availability: {objective: 99.9, window: 28d}\nlatency: {threshold: 2s, objective: 99}\nteam: web\n").unwrap();
        assert_eq!(s.availability.as_ref().unwrap().window.unwrap().0, std::time::Duration::from_secs(28 * 86400));
        let l = s.latency.unwrap();
        assert_eq!(l.threshold.value.0, std::time::Duration::from_secs(2));
        assert_eq!((l.threshold.referenced.line(), l.threshold.referenced.column()), (2, 22));
        assert!(serde_saphyr::from_str::<SloSpec>("availabilty: {objective: 99}").is_err());
    }
}
