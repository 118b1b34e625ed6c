//! `vantage schema probes|agent`, checked with an independent validator
//! (Python `jsonschema`, installed by .ci/install-test-deps): every shipped
//! probe file and the packaged agent.yaml validate, and broken ones do not.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p =
            std::env::temp_dir().join(format!("vantage-schema-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(which: &str, dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["schema", which])
        .output()
        .expect("run vantage schema");
    assert!(
        out.status.success(),
        "vantage schema {which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = dir.join(format!("{which}.schema.json"));
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

const VALIDATE: &str = r#"
import json, sys
try:
    import jsonschema, yaml
except ImportError as e:
    sys.exit(f"MISSING: {e}: run .ci/install-test-deps (pip install jsonschema PyYAML)")
schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
v = cls(schema)
bad = 0
for f in sys.argv[2:]:
    errs = sorted(v.iter_errors(yaml.safe_load(open(f))), key=lambda e: list(e.path))
    for e in errs:
        print(f"{f}: {'/'.join(map(str, e.path))}: {e.message[:200]}")
    print(f"{f}: {'invalid' if errs else 'valid'}")
"#;

/// Validates `files` against `schema`; returns (file, valid) and the output.
fn validate(schema: &Path, files: &[PathBuf]) -> (Vec<(String, bool)>, String) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(VALIDATE)
        .arg(schema)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (install Python 3: .ci/install-test-deps): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the validator failed (run .ci/install-test-deps):\n{text}"
    );
    let verdicts = text
        .lines()
        .filter_map(|l| {
            l.strip_suffix(": valid")
                .map(|f| (f.to_string(), true))
                .or_else(|| l.strip_suffix(": invalid").map(|f| (f.to_string(), false)))
        })
        .collect();
    (verdicts, text)
}

fn shipped_probe_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("probes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 7,
        "expected the shipped probe files, found {v:?}"
    );
    v
}

#[test]
fn every_shipped_probe_file_validates_against_the_probe_schema() {
    let dir = Scratch::new();
    let s = schema("probes", dir.path());
    let files = shipped_probe_files();
    let (verdicts, text) = validate(&s, &files);
    assert_eq!(verdicts.len(), files.len(), "{text}");
    assert!(verdicts.iter().all(|(_, ok)| *ok), "{text}");
}

#[test]
fn packaged_agent_yaml_validates_against_the_agent_schema() {
    let dir = Scratch::new();
    let s = schema("agent", dir.path());
    let (verdicts, text) = validate(&s, &[root().join("packaging/agent.yaml")]);
    assert_eq!(
        verdicts,
        vec![(
            root().join("packaging/agent.yaml").display().to_string(),
            true
        )],
        "{text}"
    );
}

#[test]
fn the_schema_rejects_what_check_rejects() {
    let dir = Scratch::new();
    let s = schema("probes", dir.path());
    let cases = [
        ("unknown-key", "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n        http: { url: http://127.0.0.1/ }\n        asert: { status: 200 }\n"),
        ("bad-duration", "journeys:\n  - name: a\n    interval: thirty seconds\n    steps:\n      - name: s\n        http: { url: http://127.0.0.1/ }\n"),
        ("bad-status", "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n        http: { url: http://127.0.0.1/ }\n        assert: { status: \"6xx\" }\n"),
        ("two-kinds", "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n        http: { url: http://127.0.0.1/ }\n        tcp: { address: \"127.0.0.1:1\" }\n"),
        ("no-kind", "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n"),
        ("bad-grpc-expect", "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n        grpc: { address: \"127.0.0.1:1\", expect: UP }\n"),
    ];
    let mut files = Vec::new();
    for (name, text) in cases {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, text).unwrap();
        // The agent agrees they are broken.
        let check = Command::new(env!("CARGO_BIN_EXE_vantage"))
            .arg("check")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            check.status.code(),
            Some(1),
            "vantage check accepted {name}"
        );
        files.push(p);
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "journeys:\n  - name: a\n    interval: 1m 30s\n    steps:\n      - name: s\n        http: { url: http://127.0.0.1/ }\n        assert: { status: [200, \"3xx\", \"400-404\"], max_duration: 500ms }\n").unwrap();
    files.push(good.clone());
    let (verdicts, text) = validate(&s, &files);
    assert_eq!(verdicts.len(), files.len(), "{text}");
    for (f, ok) in &verdicts {
        assert_eq!(
            *ok,
            f == &good.display().to_string(),
            "{f}: wrong verdict\n{text}"
        );
    }
}

#[test]
fn shipped_files_name_the_installed_schema_in_their_modeline() {
    for f in shipped_probe_files() {
        let first = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            first,
            "# yaml-language-server: $schema=/usr/share/vantage/schema/probes.schema.json",
            "{}",
            f.display()
        );
    }
    let first = std::fs::read_to_string(root().join("packaging/agent.yaml"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        first,
        "# yaml-language-server: $schema=/usr/share/vantage/schema/agent.schema.json"
    );
}

#[test]
fn check_reports_every_structural_problem_with_its_location() {
    let dir = Scratch::new();
    let p = dir.path().join("broken.yaml");
    let journey = |name: &str, extra: &str, step: &str| {
        format!("  - name: {name}\n    interval: 30s\n{extra}    steps:\n      - name: s\n{step}")
    };
    let tcp = "        tcp: {address: \"127.0.0.1:1\"}\n";
    let text = [
        "journeys:\n".to_string(),
        journey("one", "    colour: red\n", &format!("{tcp}        asert: {{max_duration: 1s}}\n")),
        journey("two", "", "        http: {url: \"http://127.0.0.1:1/${tokn}\"}\n"),
        journey("three", "", &format!("{tcp}        timeout: 30 parsecs\n")),
        journey("four", "", tcp),
        journey("five", "", "        http: {method: GET}\n"),
    ]
    .concat();
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let f = p.display().to_string();
    let want = [
        format!("error: {f}:4:5: unknown field `colour`, expected one of name, interval, timeout, labels, buckets, locations, vars, retries, steps, finally, slo"),
        format!("error: {f}:8:9: unknown field `asert`, expected one of name, timeout, http, dns, tcp, tls, websocket, eventually, callback, browser, grpc, assert, extract"),
        format!("error: {f}:13:21: journey `two`, step `s`: `http.url`: unknown variable `${{tokn}}`: expected one defined by `vars` or an earlier step's `extract` (defined here: none; built-ins: run.id, run.callback_token, uuid, now, now.unix, env.NAME, secret.NAME)"),
        format!("error: {f}:19:18: expected a duration like `500ms`, `10s` or `1m`, got `30 parsecs` (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations))"),
        format!("error: {f}:29:15: missing field `url`"),
        "5 problems found".to_string(),
    ];
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().collect::<Vec<_>>(), want, "\n{err}");

    // A key that slid out of its block is reported where it slid, not as `missing field` at the block.
    let slid = dir.path().join("slid.yaml");
    std::fs::write(&slid, "journeys:\n  - name: a\n    interval: 30s\n    steps:\n      - name: s\n        http:\n          method: POST\n        url: http://127.0.0.1:1/\n        assert:\n          status: 200\n         max_duration: 1s\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&slid).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let f = slid.display().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    // A syntax error ends the reading: only the second mistake can be named, then the first once it is fixed.
    assert_eq!(err.lines().collect::<Vec<_>>(), [format!("error: {f}:11:10: `max_duration` is indented 9 spaces, which lines up with no block above it: indent it by 10 to put it beside `status` (line 10), or by 8 to put it beside `assert` (line 9)"), "1 problem found".to_string()], "\n{err}");
    std::fs::write(&slid, std::fs::read_to_string(&slid).unwrap().replace("         max_duration", "          max_duration")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg(&slid).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().collect::<Vec<_>>(), [format!("error: {f}:8:9: `url` is indented 2 spaces less than `method` on line 7, so it ended the `http` block early: as written it is a key of the `steps` item on line 5, which has no `url`; indent it to column 11, like `method`"), "1 problem found".to_string()], "\n{err}");

    // The agent config too: every problem, not the first.
    let agent = dir.path().join("agent.yaml");
    std::fs::write(&agent, "location: eu-west-1\nconcurency: 4\nadmin: {listen: \"127.0.0.1:0\", tokn: x}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).arg("check").arg("--config").arg(&agent).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let a = agent.display().to_string();
    assert!(err.contains(&format!("error: {a}:2:1: unknown field `concurency`")), "{err}");
    assert!(err.contains(&format!("error: {a}:3:32: unknown field `tokn`")), "{err}");
}
