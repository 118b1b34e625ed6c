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
use std::collections::HashSet;
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
pub fn deserialize_all<T: DeserializeOwned>(node: &Spanned<Node>, src: &str) -> (Option<T>, Vec<Problem>) {
    let cx = Cx { src, left_out: RefCell::new(HashSet::new()) };
    let mut problems = Vec::new();
    loop {
        let err = match T::deserialize(NodeDe { node, cx: &cx }) {
            Ok(v) => return (Some(v), problems),
            Err(e) => e,
        };
        let target = err.node.unwrap_or_else(|| id(node));
        let consequence = err.missing && cx.lost_an_entry(node, target);
        if !consequence {
            let loc = err.loc.unwrap_or(node.referenced);
            problems.push(Problem { line: loc.line().max(1), column: loc.column().max(1), message: err.text() });
        }
        if target == id(node) || problems.len() >= MAX_PROBLEMS || !cx.left_out.borrow_mut().insert(target) {
            return (None, problems);
        }
    }
}

fn id(n: &Spanned<Node>) -> usize {
    n as *const Spanned<Node> as usize
}

struct Cx<'t> {
    src: &'t str,
    left_out: RefCell<HashSet<usize>>,
}

impl Cx<'_> {
    fn is_left_out(&self, n: &Spanned<Node>) -> bool {
        self.left_out.borrow().contains(&id(n))
    }

    /// Whether the mapping `target` (somewhere under `root`) had an entry left out.
    fn lost_an_entry(&self, root: &Spanned<Node>, target: usize) -> bool {
        match find(root, target).map(|n| &n.value) {
            Some(Node::Map(entries)) => entries.iter().any(|(k, v)| self.is_left_out(k) || self.is_left_out(v)),
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
    node: Option<usize>,
    loc: Option<Location>,
}

impl TreeError {
    fn new(inner: serde_saphyr::Error) -> Self {
        TreeError { inner: Box::new(inner), missing: false, node: None, loc: None }
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
        TreeError::new(<serde_saphyr::Error as de::Error>::unknown_field(field, expected))
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
            Node::Map(entries) => v.visit_map(MapDe { entries: entries.iter(), value: None, cx: self.cx }),
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
    entries: std::slice::Iter<'a, (Spanned<Node>, Spanned<Node>)>,
    value: Option<&'a Spanned<Node>>,
    cx: &'a Cx<'t>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_, '_> {
    type Error = TreeError;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, TreeError> {
        let cx = self.cx;
        match self.entries.find(|(k, v)| !cx.is_left_out(k) && !cx.is_left_out(v)) {
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
    fn a_broken_root_ends_the_passes() {
        let (doc, problems) = all::<Doc>("itemz: []\n");
        assert!(doc.is_none());
        assert_eq!(problems.len(), 1, "the missing `items` follows from the typo: {problems:?}");
        assert!(problems[0].starts_with("1:1: unknown field `itemz`"), "{problems:?}");
    }
}
