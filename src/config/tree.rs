//! Every structural problem of a YAML file, not only the first.
//!
//! serde stops at the first error. To report them all, the file is parsed
//! once into a tree of located nodes; the typed model is then deserialized
//! from that tree. When that fails, the node that failed is recorded (with its
//! line and column) and left out, and deserialization is tried again, until
//! it succeeds or the failure reaches the root. Each pass leaves out at least
//! one more node, so the number of passes is bounded. A `missing field` error
//! in a mapping that lost an entry that way is a consequence, not a problem of
//! its own, so it is not reported.
//!
//! Messages are serde-saphyr's own (`unknown field `x`, expected one of ...`),
//! so they read the same as when the file is parsed directly.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::value::{MapDeserializer, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// One YAML node, as parsed (aliases and merge keys already resolved).
#[derive(Debug)]
pub enum Node {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key()? {
                    entries.push((k, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `text` into a located tree. Syntax errors end here: nothing after
/// them can be read reliably.
pub fn parse(text: &str) -> Result<Spanned<Node>, serde_saphyr::Error> {
    serde_saphyr::from_str(text)
}

/// Where `path` (`http.url`, `labels.team`, `assert.json[0].path`,
/// `buckets[2]`) is written inside the mapping that starts at `item`
/// (line, column): the value's location, or with `key` the key's. When only
/// part of the path is written (a default below it, or a shorthand such as
/// `proxy: URL`), the deepest part that is; `None` when not even the item is.
pub fn locate(root: &Spanned<Node>, item: (u64, u64), path: &str, key: bool) -> Option<Location> {
    let mut n = find_at(root, item)?;
    let mut rest = path;
    let mut k_loc = None;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let Some((i, r)) = r.split_once(']') else { break };
            let Node::Seq(items) = &n.value else { break };
            let Some(item) = i.parse::<usize>().ok().and_then(|i| items.get(i)) else { break };
            n = item;
            k_loc = None;
            rest = r.strip_prefix('.').unwrap_or(r);
            continue;
        }
        let Node::Map(entries) = &n.value else { break };
        // The longest key that `rest` starts with: label names and header names may hold `.`.
        let found = entries
            .iter()
            .filter_map(|(k, v)| key_name(k).map(|name| (name, k, v)))
            .filter(|(name, _, _)| rest == *name || rest.strip_prefix(*name).is_some_and(|r| r.starts_with(['.', '['])))
            .max_by_key(|(name, _, _)| name.len());
        let Some((name, k, v)) = found else { break };
        rest = &rest[name.len()..];
        rest = rest.strip_prefix('.').unwrap_or(rest);
        k_loc = Some(k.referenced);
        n = v;
    }
    Some(if key { k_loc.unwrap_or(n.referenced) } else { n.referenced })
}

/// The outermost mapping that starts at (line, column).
fn find_at(n: &Spanned<Node>, (line, column): (u64, u64)) -> Option<&Spanned<Node>> {
    if matches!(n.value, Node::Map(_)) && n.referenced.line() == line && n.referenced.column() == column {
        return Some(n);
    }
    match &n.value {
        Node::Seq(items) => items.iter().find_map(|i| find_at(i, (line, column))),
        Node::Map(entries) => entries.iter().find_map(|(_, v)| find_at(v, (line, column))),
        _ => None,
    }
}

/// A YAML syntax error that comes from indentation, in words: the parser's
/// own ("did not find expected key") says what it wanted, not what is wrong.
/// `line` and `column` are where the parser stopped; `None` when the error is
/// not one of the indentation mistakes recognised here.
pub fn explain_syntax(src: &str, line: u64, column: u64, parser: &str) -> Option<Problem> {
    let lines: Vec<&str> = src.lines().collect();
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let text = lines.get(at)?;
    let indent = text.len() - text.trim_start_matches(' ').len();
    let key = text.trim_start().split(':').next()?.trim();
    if key.is_empty() || key.starts_with(['#', '-']) {
        return None;
    }
    let here = Problem { line, column: indent as u64 + 1, message: String::new() };
    // The blocks open above the line, nearest first: (line, column of their keys, first key, is a list dash).
    let mut levels: Vec<(usize, usize, &str, bool)> = Vec::new();
    let mut min = usize::MAX;
    for (n, l) in lines[..at].iter().enumerate().rev() {
        let body = l.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let j = l.len() - body.len();
        if let Some(item) = body.strip_prefix("- ") {
            let inner = j + 2 + (item.len() - item.trim_start().len());
            if inner < min && item.contains(':') {
                levels.push((n + 1, inner, item.trim_start().split(':').next().unwrap_or_default().trim(), false));
            }
            if j < min {
                levels.push((n + 1, j, "-", true));
            }
        } else if j < min {
            levels.push((n + 1, j, body.split(':').next().unwrap_or_default().trim(), false));
        }
        min = min.min(j);
        if min == 0 {
            break;
        }
    }
    let keys = || levels.iter().filter(|l| !l.3);
    let spaces = |n: usize| if n == 1 { "1 space".to_string() } else { format!("{n} spaces") };
    if parser.contains("did not find expected key") || parser.contains("did not find expected '-' indicator") {
        if keys().any(|l| l.1 == indent) {
            return None;
        }
        let deeper = keys().find(|l| l.1 > indent)?;
        let shallower = keys().find(|l| l.1 < indent);
        let like = match levels.iter().find(|l| l.3 && l.1 == indent) {
            Some(dash) => format!("like the `-` of the list item on line {}, so it is neither a new item nor a key of one", dash.0),
            None => "which lines up with no block above it".to_string(),
        };
        let mut m = format!("`{key}` is indented {}, {like}: indent it by {} to put it beside `{}` (line {})", spaces(indent), deeper.1, deeper.2, deeper.0);
        if let Some(s) = shallower {
            m.push_str(&format!(", or by {} to put it beside `{}` (line {})", s.1, s.2, s.0));
        }
        return Some(Problem { message: m, ..here });
    }
    if parser.contains("mapping values are not allowed") {
        // The first `:` of a line indented under a key that already has a value.
        if column != (indent + key.len() + 1) as u64 {
            return None;
        }
        let (n, prev) = lines[..at].iter().enumerate().rev().find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
        let body = prev.trim_start_matches(' ').strip_prefix("- ").unwrap_or(prev.trim_start_matches(' '));
        let j = prev.len() - body.len();
        let (pkey, value) = body.split_once(':')?;
        if j >= indent || value.trim().is_empty() || value.trim().starts_with('#') {
            return None;
        }
        let m = format!(
            "`{key}` is indented {} more than `{}` on line {}, which already has a value and so cannot hold keys: indent it by {j} to put it beside `{}`",
            spaces(indent - j),
            pkey.trim(),
            n + 1,
            pkey.trim()
        );
        return Some(Problem { message: m, ..here });
    }
    None
}

/// A structural problem: where, and serde's words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Most problems reported for one value; past them the file is broken
/// enough, and every further pass would cost a walk of the tree.
const MAX_PROBLEMS: usize = 50;

/// Deserializes `T` from `node`, recording every structural problem on the
/// way. `Some` when a value could be built; it is complete only when no
/// problem was recorded (left-out nodes are missing from it).
///
/// An unknown key that some block above or around it accepts is explained as
/// what it is, an indentation mistake: the key is moved, in a trial, to that
/// block; when that fixes it without any new problem, the problems of the
/// trial stand, plus one at the key saying how its indentation is wrong.
pub fn deserialize_all<'t, T: DeserializeOwned>(node: &'t Spanned<Node>, src: &'t str) -> (Option<T>, Vec<Problem>) {
    let mut cx = Cx { src, left_out: RefCell::new(HashSet::new()), moved: HashSet::new(), grafts: HashMap::new() };
    let (mut value, mut raw) = passes::<T>(node, &cx);
    let mut notes = Vec::new();
    while notes.len() < MAX_PROBLEMS {
        let Some((next, v, r, note)) = raw.iter().filter(|r| r.unknown).find_map(|r| regraft::<T>(node, &cx, r, &raw)) else { break };
        (cx, value, raw) = (next, v, r);
        notes.push(note);
    }
    let mut problems: Vec<Problem> = notes.into_iter().chain(raw.into_iter().map(|r| r.problem)).collect();
    problems.sort_by_key(|p| (p.line, p.column));
    (value, problems)
}

/// A recorded problem and what the passes know of it.
struct Raw {
    problem: Problem,
    node: usize,
    unknown: bool,
}

/// The passes: deserialize, leave out the failing node, again.
fn passes<T: DeserializeOwned>(node: &Spanned<Node>, cx: &Cx) -> (Option<T>, Vec<Raw>) {
    let mut problems = Vec::new();
    loop {
        let err = match T::deserialize(NodeDe { node, cx }) {
            Ok(v) => return (Some(v), problems),
            Err(e) => e,
        };
        let target = err.node.unwrap_or_else(|| id(node));
        let consequence = err.missing && cx.lost_an_entry(node, target);
        if !consequence {
            let loc = err.loc.unwrap_or(node.referenced);
            let problem = Problem { line: loc.line().max(1), column: loc.column().max(1), message: err.text() };
            problems.push(Raw { problem, node: target, unknown: err.unknown });
        }
        if target == id(node) || problems.len() >= MAX_PROBLEMS || !cx.left_out.borrow_mut().insert(target) {
            return (None, problems);
        }
    }
}

type Entry = (Spanned<Node>, Spanned<Node>);

/// Tries the unknown key of `r` in the blocks its indentation may have
/// meant; the first that takes it with no new problem wins.
fn regraft<'t, T: DeserializeOwned>(root: &'t Spanned<Node>, cx: &Cx<'t>, r: &Raw, before: &[Raw]) -> Option<(Cx<'t>, Option<T>, Vec<Raw>, Problem)> {
    let path = path_to(root, r.node)?;
    let (&owner, ancestors) = path.split_last()?;
    let Node::Map(entries) = &owner.value else { return None };
    let at = entries.iter().position(|(k, _)| id(k) == r.node)?;
    let entry = &entries[at];
    let (key, column, line) = (key_name(&entry.0)?, entry.0.referenced.column(), entry.0.referenced.line());
    if !cx.first_on_line(&entry.0) {
        return None;
    }
    // Blocks it may belong to: the block it ended early (the entry before it,
    // when that holds keys further right), then the blocks around its own,
    // nearest first (when their keys sit further left).
    let mut candidates = Vec::new();
    if let Some((pk, pv)) = entries[..at].iter().rev().find(|(k, _)| !cx.moved.contains(&id(k))) {
        if let Some((first, _)) = block_entries(pv).and_then(|e| e.first()) {
            if first.referenced.column() > column && first.referenced.line() > pk.referenced.line() {
                candidates.push((pv, first, format!("so it ended the `{}` block early", key_name(pk)?)));
            }
        }
    }
    for a in ancestors.iter().rev() {
        let Some(e) = block_entries(a) else { continue };
        if let Some((beside, _)) = e.iter().rev().find(|(k, _)| k.referenced.line() < line && k.referenced.column() < column) {
            candidates.push((*a, beside, String::new()));
        }
    }
    for (target, beside, how) in candidates {
        let mut next = Cx { src: cx.src, left_out: RefCell::new(HashSet::new()), moved: cx.moved.clone(), grafts: cx.grafts.clone() };
        next.moved.insert(id(&entry.0));
        next.grafts.entry(id(target)).or_default().push(entry);
        let (value, raw) = passes::<T>(root, &next);
        let inside = |n: usize| find(&entry.1, n).is_some() || n == id(&entry.0);
        let new_problem = raw.iter().any(|t| {
            (t.unknown && t.node == id(&entry.0)) || (!inside(t.node) && !before.iter().any(|b| b.problem == t.problem))
        });
        if new_problem {
            continue;
        }
        let to = beside.referenced.column();
        let (more, by) = if to < column { ("more", column - to) } else { ("less", to - column) };
        let spaces = if by == 1 { "space" } else { "spaces" };
        let name = key_name(beside).unwrap_or_default();
        let was = describe(root, owner);
        let how = if how.is_empty() { String::new() } else { format!(", {how}") };
        let message = format!(
            "`{key}` is indented {by} {spaces} {more} than `{name}` on line {}{how}: as written it is a key of {was}, which has no `{key}`; indent it to column {to}, like `{name}`",
            beside.referenced.line()
        );
        return Some((next, value, raw, Problem { line, column, message }));
    }
    None
}

/// The entries of a block (not flow) mapping.
fn block_entries(n: &Spanned<Node>) -> Option<&[Entry]> {
    match &n.value {
        Node::Map(e) if !e.is_empty() => Some(e),
        _ => None,
    }
}

fn key_name(k: &Spanned<Node>) -> Option<&str> {
    match &k.value {
        Node::Str(s) => Some(s),
        _ => None,
    }
}

/// The nodes from `root` down to the parent of node `target`.
fn path_to(root: &Spanned<Node>, target: usize) -> Option<Vec<&Spanned<Node>>> {
    let children: Vec<&Spanned<Node>> = match &root.value {
        Node::Seq(items) => items.iter().collect(),
        Node::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    for c in children {
        if id(c) == target {
            return Some(vec![root]);
        }
        if let Some(mut p) = path_to(c, target) {
            p.insert(0, root);
            return Some(p);
        }
    }
    None
}

/// A mapping in words: the key it is the value of, or the list it is an item of.
fn describe(root: &Spanned<Node>, map: &Spanned<Node>) -> String {
    let path = path_to(root, id(map)).unwrap_or_default();
    let key_of = |parent: &Spanned<Node>, child: &Spanned<Node>| match &parent.value {
        Node::Map(e) => e.iter().find(|(_, v)| id(v) == id(child)).and_then(|(k, _)| key_name(k)).map(str::to_string),
        _ => None,
    };
    match path.as_slice() {
        [.., grand, parent] if matches!(parent.value, Node::Seq(_)) => match key_of(grand, parent) {
            Some(k) => format!("the `{k}` item on line {}", map.referenced.line()),
            None => format!("the list item on line {}", map.referenced.line()),
        },
        [.., parent] => match key_of(parent, map) {
            Some(k) => format!("`{k}`"),
            None => format!("the mapping on line {}", map.referenced.line()),
        },
        [] => "the top level".to_string(),
    }
}

fn id(n: &Spanned<Node>) -> usize {
    n as *const Spanned<Node> as usize
}

struct Cx<'t> {
    src: &'t str,
    left_out: RefCell<HashSet<usize>>,
    /// Keys (by id) a trial took out of their mapping...
    moved: HashSet<usize>,
    /// ...and the mappings (by id) it put them in.
    grafts: HashMap<usize, Vec<&'t Entry>>,
}

impl Cx<'_> {
    fn is_left_out(&self, n: &Spanned<Node>) -> bool {
        self.left_out.borrow().contains(&id(n))
    }

    /// Whether nothing but indentation comes before `n` on its line.
    fn first_on_line(&self, n: &Spanned<Node>) -> bool {
        let Some(start) = n.referenced.span().byte_offset().and_then(|o| usize::try_from(o).ok()) else { return false };
        let Some(before) = self.src.get(..start) else { return false };
        before.rsplit('\n').next().is_some_and(|l| l.chars().all(|c| c == ' '))
    }

    /// Whether the mapping `target` (somewhere under `root`) had an entry left out.
    fn lost_an_entry(&self, root: &Spanned<Node>, target: usize) -> bool {
        match find(root, target).map(|n| &n.value) {
            Some(Node::Map(entries)) => entries.iter().any(|(k, v)| self.is_left_out(k) || self.is_left_out(v) || self.moved.contains(&id(k))),
            _ => false,
        }
    }

    /// The text of a plain scalar as written, so `version: 1.10` read as a
    /// string stays `1.10`.
    fn raw(&self, n: &Spanned<Node>) -> Option<&str> {
        let span = n.defined.span();
        let (start, len) = (usize::try_from(span.byte_offset()?).ok()?, usize::try_from(span.byte_len()?).ok()?);
        self.src.get(start..start.checked_add(len)?).map(str::trim).filter(|s| !s.is_empty())
    }
}

fn find(n: &Spanned<Node>, target: usize) -> Option<&Spanned<Node>> {
    if id(n) == target {
        return Some(n);
    }
    match &n.value {
        Node::Seq(items) => items.iter().find_map(|i| find(i, target)),
        Node::Map(entries) => entries.iter().find_map(|(k, v)| find(k, target).or_else(|| find(v, target))),
        _ => None,
    }
}

/// One failure of a pass: serde-saphyr's error (for its wording), and the
/// innermost node it came from.
#[derive(Debug)]
pub struct TreeError {
    // Boxed: the library's error is large, and every deserializer call returns this.
    inner: Box<serde_saphyr::Error>,
    missing: bool,
    unknown: bool,
    node: Option<usize>,
    loc: Option<Location>,
}

impl TreeError {
    fn new(inner: serde_saphyr::Error) -> Self {
        TreeError { inner: Box::new(inner), missing: false, unknown: false, node: None, loc: None }
    }

    fn at(mut self, n: &Spanned<Node>) -> Self {
        if self.node.is_none() {
            self.node = Some(id(n));
            self.loc = Some(n.referenced);
        }
        self
    }

    fn text(&self) -> String {
        let text = self.inner.without_snippet().render();
        // Locations are ours; drop any the library appended.
        match text.rfind(" at line ") {
            Some(i) if text[i..].contains(", column ") => text[..i].to_string(),
            _ => text,
        }
    }
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl std::error::Error for TreeError {}

impl de::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError::new(<serde_saphyr::Error as de::Error>::custom(msg))
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        TreeError::new(<serde_saphyr::Error as de::Error>::invalid_type(unexp, exp))
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        TreeError::new(<serde_saphyr::Error as de::Error>::invalid_value(unexp, exp))
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        TreeError::new(<serde_saphyr::Error as de::Error>::invalid_length(len, exp))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        TreeError::new(<serde_saphyr::Error as de::Error>::unknown_variant(variant, expected))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        TreeError { unknown: true, ..TreeError::new(<serde_saphyr::Error as de::Error>::unknown_field(field, expected)) }
    }
    fn missing_field(field: &'static str) -> Self {
        TreeError { missing: true, ..TreeError::new(<serde_saphyr::Error as de::Error>::missing_field(field)) }
    }
}

/// The name `Spanned<T>` asks for, so it gets the node's location.
const SPANNED: &str = "__yaml_spanned";

#[derive(Clone, Copy)]
struct NodeDe<'a, 't> {
    node: &'a Spanned<Node>,
    cx: &'a Cx<'t>,
}

impl<'a, 't> NodeDe<'a, 't> {
    fn any<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, TreeError> {
        match &self.node.value {
            Node::Null => v.visit_unit(),
            Node::Bool(b) => v.visit_bool(*b),
            Node::U64(n) => v.visit_u64(*n),
            Node::I64(n) => v.visit_i64(*n),
            Node::F64(n) => v.visit_f64(*n),
            Node::Str(s) => v.visit_str(s),
            Node::Seq(items) => v.visit_seq(SeqDe { items: items.iter(), cx: self.cx }),
            Node::Map(entries) => {
                let grafted = self.cx.grafts.get(&id(self.node)).map_or(&[][..], Vec::as_slice);
                v.visit_map(MapDe { entries: entries.iter(), grafted: grafted.iter(), value: None, cx: self.cx })
            }
        }
    }

    fn string<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, TreeError> {
        let n = self.node;
        match &n.value {
            Node::Bool(b) => v.visit_str(self.cx.raw(n).unwrap_or(if *b { "true" } else { "false" })),
            Node::U64(x) => v.visit_str(self.cx.raw(n).unwrap_or(&x.to_string())),
            Node::I64(x) => v.visit_str(self.cx.raw(n).unwrap_or(&x.to_string())),
            Node::F64(x) => v.visit_str(self.cx.raw(n).unwrap_or(&x.to_string())),
            _ => self.any(v),
        }
    }
}

macro_rules! located {
    ($($method:ident => $how:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TreeError> {
            let n = self.node;
            self.$how(v).map_err(|e| e.at(n))
        })*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_, '_> {
    type Error = TreeError;

    located! {
        deserialize_any => any, deserialize_bool => any, deserialize_i8 => any, deserialize_i16 => any,
        deserialize_i32 => any, deserialize_i64 => any, deserialize_i128 => any, deserialize_u8 => any,
        deserialize_u16 => any, deserialize_u32 => any, deserialize_u64 => any, deserialize_u128 => any,
        deserialize_f32 => any, deserialize_f64 => any, deserialize_char => string, deserialize_str => string,
        deserialize_string => string, deserialize_bytes => any, deserialize_byte_buf => any, deserialize_unit => any,
        deserialize_seq => any, deserialize_map => any, deserialize_identifier => string, deserialize_ignored_any => any,
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TreeError> {
        let n = self.node;
        match n.value {
            Node::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
        .map_err(|e| e.at(n))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, TreeError> {
        let n = self.node;
        if name == SPANNED {
            v.visit_newtype_struct(SpannedDe(self))
        } else {
            v.visit_newtype_struct(self)
        }
        .map_err(|e| e.at(n))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], v: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], v: V) -> Result<V::Value, TreeError> {
        let n = self.node;
        match &n.value {
            Node::Str(s) => v.visit_enum(IntoDeserializer::<TreeError>::into_deserializer(s.as_str())),
            _ => self.any(v),
        }
        .map_err(|e| e.at(n))
    }
}

struct SeqDe<'a, 't> {
    items: std::slice::Iter<'a, Spanned<Node>>,
    cx: &'a Cx<'t>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = TreeError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, TreeError> {
        let cx = self.cx;
        match self.items.find(|n| !cx.is_left_out(n)) {
            Some(n) => seed.deserialize(NodeDe { node: n, cx }).map(Some).map_err(|e| e.at(n)),
            None => Ok(None),
        }
    }
}

struct MapDe<'a, 't> {
    entries: std::slice::Iter<'a, Entry>,
    /// Entries a trial moved here (see [`regraft`]).
    grafted: std::slice::Iter<'a, &'t Entry>,
    value: Option<&'a Spanned<Node>>,
    cx: &'a Cx<'t>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_, '_> {
    type Error = TreeError;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, TreeError> {
        let cx = self.cx;
        let own = self.entries.find(|(k, v)| !cx.is_left_out(k) && !cx.is_left_out(v) && !cx.moved.contains(&id(k)));
        match own.or_else(|| self.grafted.find(|(k, v)| !cx.is_left_out(k) && !cx.is_left_out(v)).copied()) {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(NodeDe { node: k, cx }).map(Some).map_err(|e| e.at(k))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, TreeError> {
        let v = self.value.take().ok_or_else(|| <TreeError as de::Error>::custom("a value asked for before its key"))?;
        seed.deserialize(NodeDe { node: v, cx: self.cx }).map_err(|e| e.at(v))
    }
}

/// What `Spanned<T>` reads: `{marker, value, referenced, defined}`.
struct SpannedDe<'a, 't>(NodeDe<'a, 't>);

impl<'de> de::Deserializer<'de> for SpannedDe<'_, '_> {
    type Error = TreeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TreeError> {
        v.visit_map(SpannedMap { de: self.0, field: 0 })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct SpannedMap<'a, 't> {
    de: NodeDe<'a, 't>,
    field: usize,
}

const SPANNED_FIELDS: [&str; 4] = ["__serde_saphyr_private_spanned", "value", "referenced", "defined"];

impl<'de> de::MapAccess<'de> for SpannedMap<'_, '_> {
    type Error = TreeError;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, TreeError> {
        match SPANNED_FIELDS.get(self.field) {
            Some(f) => seed.deserialize(StrDeserializer::<TreeError>::new(f)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, TreeError> {
        let field = self.field;
        self.field += 1;
        let n = self.de.node;
        let loc = |l: Location| MapDeserializer::new([("line", l.line()), ("column", l.column())].into_iter());
        match field {
            0 => seed.deserialize(IntoDeserializer::<TreeError>::into_deserializer(true)),
            1 => seed.deserialize(self.de),
            2 => seed.deserialize(loc(n.referenced)),
            _ => seed.deserialize(loc(n.defined)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        items: Vec<Spanned<Item>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        count: Option<u8>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    }

    fn all<T: DeserializeOwned>(yaml: &str) -> (Option<T>, Vec<String>) {
        let tree = parse(yaml).expect("parses");
        let (v, p) = deserialize_all::<T>(&tree, yaml);
        (v, p.iter().map(|p| format!("{}:{}: {}", p.line, p.column, p.message)).collect())
    }

    #[test]
    fn a_clean_value_comes_back_whole_with_locations() {
        let (doc, problems) = all::<Doc>("items:\n  - name: a\n    count: 3\n    tags: {v: 1.10}\n  - {name: b}\n");
        assert!(problems.is_empty(), "{problems:?}");
        let doc = doc.unwrap();
        assert_eq!(doc.items.len(), 2);
        assert_eq!((doc.items[1].referenced.line(), doc.items[1].referenced.column()), (5, 5));
        assert_eq!(doc.items[0].value.tags["v"], "1.10", "plain scalars read as strings keep their text");
        assert_eq!((doc.items[0].value.name.as_str(), doc.items[0].value.count), ("a", Some(3)));
    }

    #[test]
    fn every_problem_is_reported_at_its_place_and_consequences_are_not() {
        let yaml = "items:\n  - name: a\n    colour: red\n  - name: b\n    count: 300\n  - count: 1\n  - name: d\n    tags: [x]\n";
        let (doc, problems) = all::<Doc>(yaml);
        assert_eq!(
            problems,
            [
                "3:5: unknown field `colour`, expected one of name, count, tags",
                "5:12: invalid value: integer `300`, expected u8",
                "6:5: missing field `name`",
                "8:11: invalid type: sequence, expected a map",
            ]
        );
        assert!(doc.is_some(), "the document itself is sound once the bad items are left out");
    }

    #[test]
    fn a_path_is_located_at_its_value_or_the_deepest_part_written() {
        let root = parse("top: 1\nitem:\n  a: {b.c: [x, y]}\n  d: plain\n").unwrap();
        let at = |path: &str, key: bool| locate(&root, (3, 3), path, key).map(|l| (l.line(), l.column()));
        assert_eq!(at("a.b.c[1]", false), Some((3, 16)), "keys holding dots, then an index");
        assert_eq!(at("a.b.c", true), Some((3, 7)));
        assert_eq!(at("d.url", false), Some((4, 6)), "a shorthand value stands for what is below it");
        assert_eq!(at("nothing", false), Some((3, 3)), "not written: the item itself");
        assert_eq!(locate(&root, (9, 9), "a", false), None);
    }

    #[test]
    fn a_broken_root_ends_the_passes() {
        let (doc, problems) = all::<Doc>("itemz: []\n");
        assert!(doc.is_none());
        assert_eq!(problems.len(), 1, "the missing `items` follows from the typo: {problems:?}");
        assert!(problems[0].starts_with("1:1: unknown field `itemz`"), "{problems:?}");
    }
}
