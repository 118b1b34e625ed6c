//! `vantage slo generate` end to end with Debian's promtool: the generated
//! rules load (`promtool check rules`) and pass the test cases generated
//! with them (`promtool test rules`), in the production and a time-compressed
//! profile; Sloth and OpenSLO output; `check` rejects a latency threshold
//! that is not a bucket bound, with file:line:column.

mod common;

use common::tempdir;

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vantage");

const AGENT: &str = r#"location: eu
probes: [probes]
slo:
  availability: {objective: 99.5, window: 30d}
  team: sre
  locations: [eu, us, ap]
  links:
    trace: "https://traces.example/search?journey={{ $labels.journey_name }}"
"#;

const PROBES: &str = r#"journeys:
  - name: lead-capture
    interval: 60s
    labels: {team: marketing}
    buckets: [1, 2, 5]
    slo:
      latency: {threshold: 2s, objective: 99}
    steps:
      - name: s
        http: {url: "http://127.0.0.1:9/"}
  - name: "login \"sso\""
    interval: 30s
    buckets: [0.5]
    locations: [eu, us]
    slo:
      availability: {objective: 99.9, window: 28d}
      latency: {threshold: 500ms, objective: 95}
      team: identity
    steps:
      - name: s
        http: {url: "http://127.0.0.1:9/"}
"#;

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool").args(args).current_dir(dir).output().expect("promtool (Debian package prometheus; run .ci/install-test-deps)")
}

fn setup() -> std::path::PathBuf {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("probes")).unwrap();
    std::fs::write(dir.join("agent.yaml"), AGENT).unwrap();
    std::fs::write(dir.join("probes/p.yaml"), PROBES).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn generated_rules_load_and_pass_their_own_promtool_tests() {
    let dir = setup();
    for (name, extra) in [("prod", vec![]), ("fast", vec!["--time-scale", "60", "--interval", "1s"])] {
        let out = dir.join(name);
        let o = Command::new(BIN).args(["slo", "generate", "--config"]).arg(dir.join("agent.yaml")).arg("--out").arg(&out).args(&extra).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let rules = std::fs::read_to_string(out.join("rules/vantage-slo.yaml")).unwrap();
        // Tests sit apart from the rules: a rules/*.yaml glob never loads them.
        assert_eq!(std::fs::read_dir(out.join("rules")).unwrap().count(), 1);
        let c = promtool(&["check", "rules", "rules/vantage-slo.yaml"], &out);
        assert!(c.status.success() && text(&c).contains("SUCCESS"), "{}", text(&c));
        assert!(!text(&c).contains("duplicate"), "{}", text(&c));
        let t = promtool(&["test", "rules", "tests/vantage-slo.test.yaml"], &out);
        assert!(t.status.success(), "{name}: {}", text(&t));
        let tests = std::fs::read_to_string(out.join("tests/vantage-slo.test.yaml")).unwrap();
        for want in ["severity: page", "severity: ticket", "alertname: JourneyNoResults", "alertname: JourneyLocationNoResults", "exp_alerts: []"] {
            assert!(tests.contains(want), "{want} not covered:\n{tests}");
        }
        for want in [
            "slo:objective:ratio",
            "slo:error_budget_remaining:ratio",
            "slo:burn_rate:ratio",
            "team: \"identity\"",
            "journey_name: \"login \\\"sso\\\"\"",
            "le=~\"2|2.0\"",
            "le=\"0.5\"",
        ] {
            assert!(rules.contains(want), "{want} missing in the rules");
        }
        if name == "fast" {
            assert!(rules.contains("slo:sli_error:ratio_rate1m") && rules.contains("slo:sli_error:rate5s"), "time-compressed windows");
        } else {
            assert!(rules.contains("slo:sli_error:ratio_rate3d") && rules.contains("(14.4 * slo:error_budget:ratio"));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The generated test cases are not trivially true: against rules whose
/// page ignores location consensus, promtool reports the failure.
#[test]
fn generated_tests_catch_a_page_without_location_consensus() {
    let dir = setup();
    let o = Command::new(BIN).args(["slo", "generate", "--config"]).arg(dir.join("agent.yaml")).arg("--out").arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let path = dir.join("rules/vantage-slo.yaml");
    let rules = std::fs::read_to_string(&path).unwrap();
    let broken = rules.replace(">= on (journey_name) group_left ()\n          slo:min_locations", ">= 1");
    assert_ne!(broken, rules);
    std::fs::write(&path, broken).unwrap();
    let t = promtool(&["test", "rules", "tests/vantage-slo.test.yaml"], &dir);
    assert!(!t.status.success(), "{}", text(&t));
    assert!(text(&t).contains("is a ticket, not a page"), "{}", text(&t));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sloth_and_openslo_carry_the_same_objectives() {
    let dir = setup();
    let run = |f: &str| {
        let o = Command::new(BIN).args(["slo", "generate", "--format", f, "--config"]).arg(dir.join("agent.yaml")).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let sloth = run("sloth");
    assert!(sloth.contains("version: \"prometheus/v1\""));
    for want in [
        "name: \"lead-capture-availability\"\n    objective: 99.5",
        "name: \"lead-capture-latency\"\n    objective: 99\n",
        "name: \"login-sso-availability\"\n    objective: 99.9",
    ] {
        assert!(sloth.contains(want), "{want}\n{sloth}");
    }
    let openslo = run("openslo");
    assert_eq!(openslo.matches("kind: SLO").count(), 4, "{openslo}");
    assert!(openslo.contains("duration: \"28d\"") && openslo.contains("target: 0.999"), "{openslo}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_rejects_a_latency_threshold_that_is_not_a_bucket_bound() {
    let dir = setup();
    std::fs::write(dir.join("probes/p.yaml"), PROBES.replace("threshold: 2s", "threshold: 3s")).unwrap();
    let o = Command::new(BIN).args(["check", "--config"]).arg(dir.join("agent.yaml")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let want = format!(
        "{}:7:28: journey `lead-capture`: `slo.latency.threshold`: expected one of the journey's `buckets` bounds, so the histogram can count runs under it; got 3s (buckets: [1, 2, 5]); add 3 to `buckets`",
        dir.join("probes/p.yaml").display()
    );
    assert!(text(&o).contains(&want), "{}", text(&o));
    // min_locations above the expected locations could never page.
    std::fs::write(dir.join("probes/p.yaml"), PROBES.replace("team: identity", "team: identity\n      min_locations: 3")).unwrap();
    let o = Command::new(BIN).args(["slo", "generate", "--config"]).arg(dir.join("agent.yaml")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(":11:5: journey `login \"sso\"`: `slo.min_locations` is 3 but only 2 location(s) are expected (eu, us)"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(dir);
}
