//! `vantage once` from a laptop: journeys listed, `${env.*}` from flags and
//! env files, and JUnit XML for CI systems.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("vantage-once-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn vantage(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).args(args).output().expect("vantage runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn probe(dir: &Path) -> String {
    let p = dir.join("env.yaml");
    std::fs::write(&p, "journeys:\n  - name: env-demo\n    interval: 30s\n    steps:\n      - name: get\n        http: {url: \"${env.TARGET}/health\"}\n").unwrap();
    p.display().to_string()
}

#[test]
fn list_names_every_journey_with_its_location_and_runs_nothing() {
    let (code, out, err) = vantage(&["once", "probes/", "--list"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["demo-dns", "demo-tls", "incident-lifecycle", "lead-capture", "lead-form", "login", "timeline-render", "user-search"]);
    assert!(out.lines().any(|l| l.starts_with("login\tevery 30.00s\t4 steps, 1 finally\tprobes/login.yaml:")), "{out}");
}

#[test]
fn env_flags_fill_templates_and_win_over_env_files() {
    let dir = Scratch::new();
    let file = probe(&dir);
    // Nothing listens on port 1: the message proves which value the template took.
    let envf = dir.join("staging.env");
    std::fs::write(&envf, "# staging\nTARGET=http://127.0.0.1:2\n").unwrap();
    let (code, out, _) = vantage(&["once", &file, "--env-file", &envf.display().to_string()]);
    assert_eq!(code, 1);
    assert!(out.contains("could not connect to 127.0.0.1:2"), "{out}");
    let (code, out, _) = vantage(&["once", &file, "--env-file", &envf.display().to_string(), "--env", "TARGET=http://127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(out.contains("could not connect to 127.0.0.1:1"), "{out}");
}

#[test]
fn a_bad_env_file_line_is_reported_with_its_location() {
    let dir = Scratch::new();
    let file = probe(&dir);
    let envf = dir.join("bad.env");
    std::fs::write(&envf, "TARGET=http://127.0.0.1:1\nnot a pair\n").unwrap();
    let (code, _, err) = vantage(&["once", &file, "--env-file", &envf.display().to_string()]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), format!("error: {}:2:1: expected KEY=VALUE, got `not a pair`", envf.display()));
}

#[test]
fn junit_output_carries_the_failed_step_with_its_type_and_message() {
    let dir = Scratch::new();
    let file = probe(&dir);
    let (code, out, _) = vantage(&["once", &file, "--env", "TARGET=http://127.0.0.1:1", "--format", "junit"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"vantage\" tests=\"1\" failures=\"1\""), "{out}");
    assert!(out.contains("<testsuite name=\"env-demo\" tests=\"1\" failures=\"1\" skipped=\"0\""), "{out}");
    assert!(out.contains("<testcase classname=\"env-demo\" name=\"get\""), "{out}");
    assert!(out.contains("<failure type=\"connect\" message=\"could not connect to 127.0.0.1:1"), "{out}");
    assert!(out.trim_end().ends_with("</testsuites>"), "{out}");
}
