//! JSON Schemas of the probe files and the agent config, generated from the
//! serde model the agent parses with, so editors and the agent cannot disagree.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;

use super::agent::AgentConfig;
use super::validate::ProbeFile;

/// Where the .deb installs the schemas (the probe files' modelines point here).
pub const INSTALL_DIR: &str = "/usr/share/vantage/schema";

fn generate<T: JsonSchema>(title: &str, file: &str) -> String {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    schema.insert("$id".into(), format!("file://{INSTALL_DIR}/{file}").into());
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// The schema of a probe file (`journeys: [...]`).
pub fn probes() -> String {
    generate::<ProbeFile>("Vantage probe file", "probes.schema.json")
}

/// The schema of the agent config (`agent.yaml`).
pub fn agent() -> String {
    generate::<AgentConfig>("Vantage agent config", "agent.schema.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_schema_knows_every_step_kind_and_custom_types() {
        let s: serde_json::Value = serde_json::from_str(&probes()).unwrap();
        let step = &s["$defs"]["StepSpec"]["properties"];
        for k in crate::steps::KIND_NAMES {
            assert!(
                step.get(*k).is_some(),
                "step kind {k} missing from the schema"
            );
        }
        assert_eq!(s["$defs"]["StepSpec"]["additionalProperties"], false);
        assert_eq!(s["$defs"]["Duration"]["type"], "string");
        assert!(s["$defs"]["StatusSet"]["anyOf"].is_array());
    }

    #[test]
    fn agent_schema_has_defaults_and_denies_unknown_keys() {
        let s: serde_json::Value = serde_json::from_str(&agent()).unwrap();
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["concurrency"]["default"], 64);
        assert!(s["properties"]["status_page"].is_object());
    }

    #[test]
    fn duration_pattern_matches_what_the_parser_accepts() {
        let re = regex::Regex::new(crate::config::model::DUR_PATTERN).unwrap();
        for ok in ["500ms", "10s", "1m 30s", "2h", " 1m30s "] {
            assert!(re.is_match(ok), "{ok}");
            assert!(humantime::parse_duration(ok.trim()).is_ok(), "{ok}");
        }
        for bad in ["ten seconds", "10", "s10", ""] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
