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

/// A loopback HTTP/1.1 server answering `n` requests with `body`, echoing nothing else.
fn one_shot_server(body: &'static str, n: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            seen.push(head);
            let mut s = s;
            write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-served-by: loopback\r\nset-cookie: sid=abcdef123456\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
        }
        seen
    });
    (format!("http://{addr}"), h)
}

#[test]
fn verbose_prints_each_exchange_with_secrets_redacted() {
    let dir = Scratch::new();
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("api_token"), "tok-CANARY-5f3a9\n").unwrap();
    let p = dir.join("verbose.yaml");
    std::fs::write(&p, "journeys:\n  - name: verbose-demo\n    interval: 30s\n    steps:\n      - name: get\n        http:\n          url: \"${env.TARGET}/api/me?q=1\"\n          headers: {X-Token: \"${secret.api_token}\"}\n        assert: {status: 200}\n").unwrap();
    let (target, server) = one_shot_server("{\"user\":\"ada\",\"echo\":\"tok-CANARY-5f3a9\"}", 1);
    let env = format!("TARGET={target}");
    let (code, out, err) = vantage(&["once", &p.display().to_string(), "--env", &env, "--credentials-dir", &creds.display().to_string(), "--verbose", "--format", "json"]);
    let seen = server.join().unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    // The server really got the secret; the log never shows it.
    assert!(seen[0].contains("tok-CANARY-5f3a9"), "{seen:?}");
    assert!(!err.contains("CANARY") && !out.contains("CANARY"), "{err}");
    assert!(err.contains("> GET /api/me?q=1\n"), "{err}");
    assert!(err.contains("> x-token: [REDACTED]\n"), "{err}");
    assert!(err.contains("> user-agent: "), "{err}");
    assert!(err.contains("< 200\n"), "{err}");
    assert!(err.contains("< x-served-by: loopback\n"), "{err}");
    assert!(err.contains("< set-cookie: [REDACTED]\n") && !err.contains("abcdef123456"), "{err}");
    assert!(err.contains("< | {\"user\":\"ada\",\"echo\":\"[REDACTED]\"}"), "{err}");
    // stdout stays one JSON document per journey.
    serde_json::from_str::<serde_json::Value>(out.trim()).expect("stdout is JSON");
    // Without --verbose: no exchange on stderr.
    let (target, server) = one_shot_server("{}", 1);
    let env = format!("TARGET={target}");
    let (code, _, err) = vantage(&["once", &p.display().to_string(), "--env", &env, "--credentials-dir", &creds.display().to_string()]);
    server.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("> GET"), "{err}");
}

/// A `vantage demo` child, stopped and reaped on drop: SIGTERM, as a user's
/// Ctrl-C or systemd would, so it removes its credentials directory; SIGKILL
/// only if it has not exited 10 s later.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, by the PID we spawned.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_port_pins_the_target_and_once_runs_against_it() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["demo", "--port", &port.to_string(), "--duration", "60"])
        .env("COLUMNS", "80")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with(&format!("demo service on http://127.0.0.1:{port}")), "{first}");
    let hint = lines.by_ref().map(|l| l.unwrap()).find(|l| l.starts_with("to run a journey against it: ")).expect("says how to point once at it");
    let want = format!("to run a journey against it: vantage once PROBE --env VANTAGE_TARGET=http://127.0.0.1:{port} --credentials-dir ");
    assert!(hint.starts_with(&want), "{hint}");
    let creds = hint[want.len()..].to_string();
    let (code, out, err) = vantage(&["once", "probes/user-search.yaml", "--env", &format!("VANTAGE_TARGET=http://127.0.0.1:{port}"), "--credentials-dir", &creds]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("PASS user-search in "), "{out}");
    // Stopped, the demo leaves nothing behind: its password and CA go with it.
    assert!(std::path::Path::new(&creds).join("demo_password").exists());
    drop(_demo);
    assert!(!std::path::Path::new(&creds).exists(), "{creds} left behind by a stopped demo");
}

#[test]
fn demo_port_says_plainly_when_the_port_is_taken() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let (code, _, err) = vantage(&["demo", "--port", &port.to_string(), "--duration", "1"]);
    assert_ne!(code, 0);
    let want = format!("cannot serve the demo service on 127.0.0.1:{port}: port {port} is already taken by another program (another `vantage demo`?); choose a free one with --port, or stop that program");
    assert!(err.contains(&want), "{err}");
    drop(held);
}

#[test]
fn text_output_fits_80_columns_with_a_long_step_name_and_message() {
    let dir = Scratch::new();
    let p = dir.join("long.yaml");
    let name = "open-the-account-settings-page-and-check-that-every-section-of-it-is-there";
    let path = "a-very-long-path/that-makes-the-message-longer-than-one-line/of-eighty-columns";
    std::fs::write(&p, format!("journeys:\n  - name: long\n    interval: 30s\n    steps:\n      - name: {name}\n        http: {{url: \"http://127.0.0.1:1/{path}\"}}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage")).args(["once", &p.display().to_string()]).env_remove("COLUMNS").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "{} columns: {l}\n{text}", l.chars().count());
    }
    // Folded, not cut: joined again, the lines hold the whole name and message.
    let joined: String = text.lines().map(str::trim).collect();
    assert!(joined.contains(name) && joined.contains("could not connect to 127.0.0.1:1"), "{text}");
    assert!(text.lines().count() >= 5, "{text}");
}
