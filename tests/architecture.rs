//! The code's shape, checked on the source (README "Layout"):
//! - nothing outside `src/steps/` compares or matches a step-kind name (the
//!   names come from the registry, `vantage::steps::KIND_NAMES`);
//! - imports point one way: vocabulary ← config model ← steps (and browser)
//!   ← compile/validate ← runner ← scheduler ← telemetry/daemon ← CLI;
//! - the demo uses only the crate root's public surface.
//!
//! The scanners are plain text scanners (comments blanked, strings kept
//! apart), tested on small samples below so that they can be seen to fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each module, by longest prefix of its path (`config::model`).
/// A module may import its own layer and those below, never one above.
const LAYERS: &[(&str, u8)] = &[
    ("vocab", 0),
    // The bounded inbound HTTP listener: a leaf, imports nothing from the crate.
    ("listener", 0),
    ("redact", 1),
    // The config model: what probe and agent files say, before compilation.
    ("config::agent", 2),
    ("config::model", 2),
    ("config::template", 2),
    ("config::slo", 2),
    // Checks of single agent-config values, shared with the OTLP exporter and the bundle verifier.
    ("config::checks", 2),
    // The located YAML tree (every structural problem, value locations): imports nothing of the crate.
    ("config::tree", 2),
    ("steps", 3),
    ("browser", 3),
    // Loading and compiling probe files through the step registry; the schema of `StepSpec`.
    ("config", 4),
    ("runner", 5),
    ("scheduler", 6),
    ("telemetry", 7),
    ("statuspage", 7),
    ("slo", 7),
    ("bundle", 7),
    ("output", 7),
    ("daemon", 8),
    ("gameday", 9),
    // Beside the layers; only the CLI and the demo game day start it.
    ("demo", 9),
    ("init", 10),
    ("cli", 10),
    ("main", 10),
    // `vantage-agent`, what `vantage run` hands over to: a `main` too.
    ("bin", 10),
];

/// Documented upward edges, `(from, to)` module prefixes, each with its
/// reason. Empty: the layering is strict. The last three went by moving the
/// shared checks into `config::checks` and by the scheduler's `RunSink` trait.
const ALLOWED_UPWARD: &[(&str, &str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .filter(|(p, _)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, l)| *l)
}

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let out: Vec<(String, String)> = files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    assert!(
        out.len() > 40,
        "expected the whole crate under src/, found {} files",
        out.len()
    );
    out
}

/// `steps/http/client.rs` → `steps::http::client`; `lib.rs` → `` (the root).
fn module_of(rel: &str) -> String {
    let s = rel.trim_end_matches(".rs");
    let s = s.strip_suffix("/mod").unwrap_or(s);
    if s == "lib" {
        return String::new();
    }
    s.replace('/', "::")
}

/// Returns `(code, bare)`: the source with comments blanked, and the same
/// with string and char literal contents blanked too. Both keep every byte
/// offset and line of the original.
fn blank(src: &str) -> (String, String) {
    let b = src.as_bytes();
    let mut code = b.to_vec();
    let mut bare = b.to_vec();
    let mut i = 0;
    let blank_range = |v: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut v[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|c| *c == b'\n')
                .map_or(b.len(), |n| i + n);
            blank_range(&mut code, i, end);
            blank_range(&mut bare, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
            blank_range(&mut code, i, end);
            blank_range(&mut bare, i, end);
            i = end;
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let end = src[open + 1..]
                .find(&close)
                .map_or(b.len(), |n| open + 1 + n + close.len());
            blank_range(
                &mut bare,
                open + 1,
                end.saturating_sub(close.len()).max(open + 1),
            );
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank_range(&mut bare, i + 1, j.min(b.len()));
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '"'), else a lifetime.
            let len = if b.get(i + 1) == Some(&b'\\') {
                b.get(i + 3..)
                    .and_then(|r| r.iter().position(|c| *c == b'\''))
                    .map(|n| n + 4)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match len {
                Some(n) => {
                    blank_range(&mut bare, i + 1, i + n - 1);
                    i += n;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    (
        String::from_utf8(code).unwrap(),
        String::from_utf8(bare).unwrap(),
    )
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every `crate::…` path in `bare` (code without comments or strings), as
/// module paths with their line: `crate::{a::b, c}` gives `a::b` and `c`.
fn crate_paths(bare: &str) -> Vec<(usize, String)> {
    let b = bare.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(n) = bare[from..].find("crate::") {
        let at = from + n;
        from = at + 7;
        if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b'$') {
            continue;
        }
        let line = line_of(bare, at);
        if b.get(at + 7) == Some(&b'{') {
            let mut depth = 0;
            let mut end = at + 7;
            for (k, c) in bare[at + 7..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = at + 7 + k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &bare[at + 8..end];
            let mut depth = 0;
            let mut part = String::new();
            for c in inner.chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let p = path_prefix(part.trim());
                        if !p.is_empty() {
                            out.push((line, p));
                        }
                        part.clear();
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
        } else {
            let p = path_prefix(&bare[at + 7..]);
            if !p.is_empty() {
                out.push((line, p));
            }
        }
    }
    out
}

/// The `a::b::c` at the start of `s` (identifiers joined by `::`).
fn path_prefix(s: &str) -> String {
    let b = s.as_bytes();
    let mut end = 0;
    loop {
        let seg = b[end..].iter().take_while(|c| is_ident(**c)).count();
        if seg == 0 {
            break;
        }
        end += seg;
        if b[end..].starts_with(b"::") && b.get(end + 2).is_some_and(|c| is_ident(*c)) {
            end += 2;
        } else {
            break;
        }
    }
    s[..end].to_string()
}

/// Top-level modules and root items (`pub use`, `pub fn`) declared in `lib.rs`.
struct Root {
    modules: Vec<String>,
    /// Root item → the module it comes from (`` for items defined in lib.rs).
    items: BTreeMap<String, String>,
}

fn root_of(lib: &str) -> Root {
    let (_, bare) = blank(lib);
    let mut modules = Vec::new();
    let mut items = BTreeMap::new();
    for stmt in bare.split(';') {
        let s = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        let s = s.rsplit("] ").next().unwrap_or(&s);
        if let Some(m) = s.strip_prefix("pub mod ") {
            modules.push(m.trim().to_string());
        } else if let Some(u) = s.strip_prefix("pub use ") {
            let (base, names) = match u.split_once("::{") {
                Some((base, rest)) => (
                    base.to_string(),
                    rest.trim_end_matches('}')
                        .split(',')
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                None => {
                    let (base, last) = u.rsplit_once("::").unwrap_or(("", u));
                    (base.to_string(), vec![last.to_string()])
                }
            };
            for n in names {
                let (path, alias) = match n.split_once(" as ") {
                    Some((p, a)) => (p.trim().to_string(), a.trim().to_string()),
                    None => (
                        n.trim().to_string(),
                        n.trim().rsplit("::").next().unwrap_or("").to_string(),
                    ),
                };
                if !alias.is_empty() {
                    let full = if base.is_empty() {
                        path
                    } else {
                        format!("{base}::{path}")
                    };
                    let module = full
                        .rsplit_once("::")
                        .map_or(String::new(), |(m, _)| m.to_string());
                    items.insert(alias, module);
                }
            }
        }
    }
    for line in bare.lines() {
        if let Some(rest) = line.strip_prefix("pub fn ") {
            items.insert(path_prefix(rest), String::new());
        }
    }
    Root { modules, items }
}

/// Every import that points upward, as `file:line: from → to`.
fn upward_imports(files: &[(String, String)], root: &Root) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, src) in files {
        let from = module_of(rel);
        if from.is_empty() {
            continue;
        }
        let Some(from_layer) = layer(&from) else {
            bad.push(format!(
                "src/{rel}: module `{from}` has no layer in tests/architecture.rs LAYERS"
            ));
            continue;
        };
        let (_, bare) = blank(src);
        for (line, path) in crate_paths(&bare) {
            let first = path.split("::").next().unwrap_or("");
            if from == "vocab" && first != "vocab" {
                bad.push(format!("src/{rel}:{line}: the vocabulary imports nothing from the crate, found `crate::{path}`"));
                continue;
            }
            let to = if root.modules.iter().any(|m| m == first) {
                path.clone()
            } else {
                match root.items.get(first) {
                    Some(m) => m.clone(),
                    None => continue, // a macro's `$crate` or a name the compiler would reject
                }
            };
            if to.is_empty() {
                continue; // root helpers in lib.rs (hostname, user_agent) sit below everything
            }
            let Some(to_layer) = layer(&to) else {
                bad.push(format!("src/{rel}:{line}: `crate::{path}` is in no layer"));
                continue;
            };
            let allowed = ALLOWED_UPWARD
                .iter()
                .any(|(f, t, _)| layer_prefix(&from) == *f && layer_prefix(&to) == *t);
            if to_layer > from_layer && !allowed {
                bad.push(format!("src/{rel}:{line}: `{from}` (layer {from_layer}) imports `crate::{path}` (layer {to_layer}), which is above it"));
            }
        }
    }
    bad
}

/// The `LAYERS` entry a module falls under.
fn layer_prefix(module: &str) -> &'static str {
    LAYERS
        .iter()
        .filter(|(p, _)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(p, _)| p.len())
        .map_or("", |(p, _)| p)
}

/// Demo paths that are not the crate root's public surface.
fn demo_internal_paths(files: &[(String, String)], root: &Root) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, src) in files.iter().filter(|(r, _)| r.starts_with("demo/")) {
        let (_, bare) = blank(src);
        for (line, path) in crate_paths(&bare) {
            let first = path.split("::").next().unwrap_or("");
            let public_item =
                root.items.contains_key(first) && !root.modules.iter().any(|m| m == first);
            let own = first == "demo";
            if !(public_item || own) {
                bad.push(format!("src/{rel}:{line}: `crate::{path}` is not on the crate root's public surface (add a `pub use` in lib.rs)"));
            }
        }
    }
    bad
}

/// Step-kind names compared (`==`, `!=`, `eq`) or matched (`match` arms,
/// `matches!`) in `code`. A pattern that also names a string that is no kind
/// (`"http" | "https"`: URL schemes) is another vocabulary and passes.
fn kind_matches(code: &str, kinds: &[&str]) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let skip_ws_left = |mut i: usize| {
        while i > 0 && b[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let skip_ws_right = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // The string literal ending just before `end` (exclusive), as (start, text).
    let literal_before = |end: usize| -> Option<(usize, &str)> {
        if end == 0 || b[end - 1] != b'"' {
            return None;
        }
        let start = code[..end - 1].rfind('"')?;
        Some((start, &code[start + 1..end - 1]))
    };
    let literal_after = |start: usize| -> Option<(usize, &str)> {
        if b.get(start) != Some(&b'"') {
            return None;
        }
        let end = code[start + 1..].find('"')? + start + 1;
        Some((end + 1, &code[start + 1..end]))
    };
    for k in kinds {
        let needle = format!("\"{k}\"");
        let mut from = 0;
        while let Some(n) = code[from..].find(&needle) {
            let s = from + n;
            let e = s + needle.len();
            from = e;
            let l = skip_ws_left(s);
            let r = skip_ws_right(e);
            let left = &code[l.saturating_sub(2)..l];
            let right = &code[r..(r + 2).min(code.len())];
            let before_call = code[..l].trim_end_matches('(');
            let compared = left == "=="
                || left == "!="
                || right == "=="
                || right == "!="
                || ((before_call.ends_with(".eq")
                    || before_call.ends_with("eq_ignore_ascii_case"))
                    && code[..l].ends_with('('));
            let in_pattern = left.ends_with('|') && !left.ends_with("||")
                || right.starts_with('|') && !right.starts_with("||")
                || right == "=>"
                || right.starts_with("if") && code[r..].starts_with("if ")
                || (left.ends_with(',')
                    && right.starts_with(')')
                    && code[..s]
                        .rfind("matches!(")
                        .is_some_and(|m| !code[m..s].contains(';')));
            let flagged = if compared {
                true
            } else if in_pattern {
                // Gather the `"a" | "b" | …` chain around the literal.
                let mut members = vec![k.to_string()];
                let mut i = l;
                while i > 0 && b[i - 1] == b'|' && (i < 2 || b[i - 2] != b'|') {
                    match literal_before(skip_ws_left(i - 1)) {
                        Some((st, t)) => {
                            members.push(t.to_string());
                            i = skip_ws_left(st);
                        }
                        None => break,
                    }
                }
                let mut j = r;
                while b.get(j) == Some(&b'|') && b.get(j + 1) != Some(&b'|') {
                    match literal_after(skip_ws_right(j + 1)) {
                        Some((en, t)) => {
                            members.push(t.to_string());
                            j = skip_ws_right(en);
                        }
                        None => break,
                    }
                }
                members.iter().all(|m| kinds.contains(&m.as_str()))
            } else {
                false
            };
            if flagged {
                let line = line_of(code, s);
                let text = code.lines().nth(line - 1).unwrap_or("").trim().to_string();
                out.push((line, text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_step_kind_name_is_matched_outside_src_steps() {
    let kinds = vantage::steps::KIND_NAMES;
    assert!(
        kinds.len() >= 9 && kinds.contains(&"http"),
        "the registry lists the kinds: {kinds:?}"
    );
    let mut bad = Vec::new();
    for (rel, src) in sources().iter().filter(|(r, _)| !r.starts_with("steps/")) {
        let (code, _) = blank(src);
        for (line, text) in kind_matches(&code, kinds) {
            bad.push(format!("src/{rel}:{line}: {text}"));
        }
    }
    assert!(
        bad.is_empty(),
        "step-kind names matched outside src/steps/ (declare it in the kind's KindInfo instead):\n{}",
        bad.join("\n")
    );
}

#[test]
fn imports_point_down_the_layers() {
    let files = sources();
    let lib = &files
        .iter()
        .find(|(r, _)| r == "lib.rs")
        .expect("src/lib.rs")
        .1;
    let root = root_of(lib);
    assert!(
        root.modules.iter().any(|m| m == "steps") && root.modules.iter().any(|m| m == "vocab"),
        "{:?}",
        root.modules
    );
    let bad = upward_imports(&files, &root);
    assert!(
        bad.is_empty(),
        "imports pointing up the layers (see LAYERS in tests/architecture.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_demo_uses_only_the_public_surface() {
    let files = sources();
    let lib = &files
        .iter()
        .find(|(r, _)| r == "lib.rs")
        .expect("src/lib.rs")
        .1;
    let root = root_of(lib);
    assert!(
        files.iter().any(|(r, _)| r.starts_with("demo/")),
        "src/demo/ exists"
    );
    let bad = demo_internal_paths(&files, &root);
    assert!(
        bad.is_empty(),
        "the demo reaches into the crate:\n{}",
        bad.join("\n")
    );
}

// The scanners themselves, on samples, so each check is seen to fail.

const KINDS: &[&str] = &["http", "callback", "eventually", "grpc"];

#[test]
fn kind_scanner_flags_comparisons_and_arms_and_passes_other_vocabularies() {
    let src = r#"
fn f(s: &S) {
    if s.kind == "http" { a() }
    if "callback" != r.kind { b() }
    match step.kind { "eventually" | "callback" => 1, _ => 0 }
    if matches!(k, "grpc") {}
    if k.eq("http") {}
    // if s.kind == "http" in a comment
    let scheme_ok = matches!(u.scheme(), "http" | "https");
    let proto_ok = matches!(p.as_str(), "grpc" | "http/protobuf");
    let label = KeyValue::new("step.kind", "http");
    let x = vec!["http", "grpc"];
    let msg = format!("a \"http\" quoted word");
}
"#;
    let (code, _) = blank(src);
    let found: Vec<usize> = kind_matches(&code, KINDS)
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(
        found,
        vec![3, 4, 5, 5, 6, 7],
        "{:?}",
        kind_matches(&code, KINDS)
    );
}

#[test]
fn import_scanner_sees_grouped_and_inline_paths_but_not_comments_or_strings() {
    let src = "use crate::{config::model::Dur, vocab::{Outcome, fmt_dur}};\nuse crate::steps::context::RunEnv;\n// crate::daemon in a comment\nlet s = \"crate::cli in a string\";\nlet j = crate::runner::run_journey(x);\nlet c = '\"'; let d = crate::vocab::Phase::X;\n";
    let (_, bare) = blank(src);
    let paths: Vec<(usize, String)> = crate_paths(&bare);
    let want: Vec<(usize, String)> = [
        (1, "config::model::Dur"),
        (1, "vocab"),
        (2, "steps::context::RunEnv"),
        (5, "runner::run_journey"),
        (6, "vocab::Phase::X"),
    ]
    .into_iter()
    .map(|(l, p)| (l, p.to_string()))
    .collect();
    assert_eq!(paths, want);
}

#[test]
fn layer_check_flags_an_upward_import_and_a_demo_reaching_inside() {
    let root = root_of("pub mod vocab;\npub mod steps;\npub mod runner;\npub mod daemon;\n#[cfg(feature = \"demo\")]\npub mod demo;\npub use vocab::{fmt_dur, Outcome};\npub use daemon::run as run_agent;\npub fn hostname() {}\n");
    assert_eq!(
        root.items.get("run_agent").map(String::as_str),
        Some("daemon")
    );
    assert_eq!(root.items.get("Outcome").map(String::as_str), Some("vocab"));
    let files = vec![
        (
            "steps/tcp.rs".to_string(),
            "use crate::vocab::Outcome;\nuse crate::runner::run_journey;\n".to_string(),
        ),
        ("vocab.rs".to_string(), "use crate::hostname;\n".to_string()),
        (
            "runner/mod.rs".to_string(),
            "use crate::{steps::attempt, fmt_dur};\n".to_string(),
        ),
        (
            "demo/live.rs".to_string(),
            "use crate::{run_agent, Outcome};\nuse crate::daemon::RunOptions;\n".to_string(),
        ),
    ];
    let up = upward_imports(&files, &root);
    assert_eq!(up.len(), 2, "{up:#?}");
    assert!(up[0].starts_with("src/steps/tcp.rs:2: `steps::tcp` (layer 3) imports `crate::runner::run_journey` (layer 5)"), "{}", up[0]);
    assert!(
        up[1].starts_with("src/vocab.rs:1: the vocabulary imports nothing"),
        "{}",
        up[1]
    );
    let demo = demo_internal_paths(&files, &root);
    assert_eq!(demo.len(), 1, "{demo:#?}");
    assert!(
        demo[0].starts_with("src/demo/live.rs:2: `crate::daemon::RunOptions`"),
        "{}",
        demo[0]
    );
}

/// build.rs links the agent with packed relative relocations: without them the
/// release binary carried 1 MB of `.rela.dyn` that the loader reads at every
/// start and that stays resident (README "Performance").
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_agent_binary_packs_its_relative_relocations() {
    let bin = env!("CARGO_BIN_EXE_vantage");
    let out = std::process::Command::new("readelf")
        .args(["-W", "-d", "-S", bin])
        .output()
        .expect("readelf (Debian package binutils, which the linker needs too) must be on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(RELR)"), "{bin} has no DT_RELR entry: build.rs did not pass -z pack-relative-relocs\n{text}");
    let rela = text
        .lines()
        .find(|l| l.contains(" .rela.dyn "))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == ".rela.dyn")?;
            usize::from_str_radix(f.get(i + 4)?, 16).ok()
        })
        .unwrap_or(0);
    assert!(rela < 64 * 1024, ".rela.dyn is {rela} bytes: relative relocations were not packed");
}
