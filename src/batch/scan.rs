//! One streaming pass over a batch's text that builds nothing: it checks the size limits (nesting,
//! string and key lengths, number of tasks) and finds repeated keys in any object, each with a
//! JSON Pointer. It runs before the full check builds the document's `Value` tree, so input over a
//! limit is rejected at the cost of reading it once (a `Value` of a 64 MB batch takes gigabytes),
//! and so duplicate keys, which `Value` would silently collapse to the last one, are reported.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::batch::issue::{Issue, pointer_token, quote};
use crate::batch::limits::Limits;

/// What the pass found: problems with the limits (at most one per limit, as
/// [`Limits::check_value`] reports them) and repeated keys.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub over_limits: Vec<Issue>,
    pub duplicates: Vec<Issue>,
}

/// Scans `text`; `Err` if it is not JSON (the caller reports that as a syntax error).
pub(crate) fn scan(text: &str, limits: &Limits) -> Result<Findings, serde_json::Error> {
    let mut st = State {
        limits,
        path: Vec::new(),
        too_deep: None,
        too_long: None,
        too_many: None,
        duplicates: Vec::new(),
        more_duplicates: false,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Node { st: &mut st }.deserialize(&mut de)?;
    de.end()?;
    let mut over_limits = Vec::new();
    if let Some(n) = st.too_many {
        over_limits.push(Issue::new(
            "/tasks",
            format!(
                "{n} tasks is more than the limit of {} (raise it with --max-tasks)",
                limits.max_tasks
            ),
        ));
    }
    if let Some(path) = st.too_deep {
        over_limits.push(Issue::new(
            path,
            format!(
                "nested deeper than the limit of {} levels (raise it with --max-depth)",
                limits.max_depth
            ),
        ));
    }
    if let Some((path, len)) = st.too_long {
        over_limits.push(Issue::new(
            path,
            format!(
                "string of {len} bytes is longer than the limit of {} bytes (raise it with --max-string-bytes)",
                limits.max_string_bytes
            ),
        ));
    }
    Ok(Findings {
        over_limits,
        duplicates: st.duplicates,
    })
}

/// Most repeated keys reported; past that, one more issue says that others were left out.
const MAX_DUPLICATES_REPORTED: usize = 100;

enum Seg<'de> {
    Index(usize),
    Key(Cow<'de, str>),
}

struct State<'l, 'de> {
    limits: &'l Limits,
    /// Where the value being read sits; turned into a pointer only when something is found.
    path: Vec<Seg<'de>>,
    too_deep: Option<String>,
    too_long: Option<(String, usize)>,
    too_many: Option<usize>,
    duplicates: Vec<Issue>,
    /// Whether duplicates past [`MAX_DUPLICATES_REPORTED`] were found (and said so).
    more_duplicates: bool,
}

impl State<'_, '_> {
    fn pointer(&self) -> String {
        let mut p = String::new();
        for s in &self.path {
            p.push('/');
            match s {
                Seg::Index(i) => p.push_str(&i.to_string()),
                Seg::Key(k) => p.push_str(&pointer_token(k)),
            }
        }
        p
    }

    fn string(&mut self, len: usize) {
        if len > self.limits.max_string_bytes && self.too_long.is_none() {
            self.too_long = Some((self.pointer(), len));
        }
    }

    /// A container opened at the current path; the document is depth 1.
    fn container(&mut self) {
        if self.path.len() + 1 > self.limits.max_depth && self.too_deep.is_none() {
            self.too_deep = Some(self.pointer());
        }
    }

    fn is_tasks(&self) -> bool {
        matches!(self.path.as_slice(), [Seg::Key(k)] if k == "tasks")
    }
}

/// Any JSON value at the current path.
struct Node<'s, 'l, 'de> {
    st: &'s mut State<'l, 'de>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.st.string(s.len());
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let st = self.st;
        st.container();
        let tasks = st.is_tasks();
        let mut i = 0;
        st.path.push(Seg::Index(0));
        loop {
            *st.path.last_mut().expect("pushed") = Seg::Index(i);
            if seq.next_element_seed(Node { st: &mut *st })?.is_none() {
                break;
            }
            i += 1;
        }
        st.path.pop();
        if tasks && i > st.limits.max_tasks {
            st.too_many = Some(i);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.st;
        st.container();
        let mut seen = Seen::Few(Vec::new());
        while let Some(key) = map.next_key_seed(Key)? {
            let len = key.len();
            // Borrowed keys (no escapes) clone without copying the text.
            let duplicate = !seen.insert(key.clone());
            if duplicate && st.duplicates.len() < MAX_DUPLICATES_REPORTED {
                st.duplicates.push(Issue::new(
                    st.pointer(),
                    format!(
                        "duplicate key {} (a key may appear only once in an object; JSON readers \
                         disagree on which value counts)",
                        quote(&key)
                    ),
                ));
            } else if duplicate && !st.more_duplicates {
                st.more_duplicates = true;
                st.duplicates.push(Issue::new(
                    "",
                    format!(
                        "more than {MAX_DUPLICATES_REPORTED} duplicate keys; the rest are not listed"
                    ),
                ));
            }
            st.path.push(Seg::Key(key));
            st.string(len);
            map.next_value_seed(Node { st: &mut *st })?;
            st.path.pop();
        }
        Ok(())
    }
}

/// The keys of one object so far: most objects have a few, compared in a list; one with many
/// gets a hash set, so a hostile object costs no quadratic time.
enum Seen<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(HashSet<Cow<'de, str>>),
}

impl<'de> Seen<'de> {
    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        match self {
            Seen::Few(keys) if keys.contains(&key) => false,
            Seen::Few(keys) if keys.len() < 16 => {
                keys.push(key);
                true
            }
            Seen::Few(keys) => {
                let mut set: HashSet<Cow<'de, str>> = keys.drain(..).collect();
                set.insert(key);
                *self = Seen::Many(set);
                true
            }
            Seen::Many(set) => set.insert(key),
        }
    }
}

/// An object key, borrowed from the text unless it was written with escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            max_depth: 4,
            max_tasks: 2,
            max_string_bytes: 5,
            ..Limits::default()
        }
    }

    #[test]
    fn agrees_with_the_limits_on_a_value() {
        for text in [
            r#"{"tasks": [{"a": "123456"}, {"b": [[1]]}, {}]}"#,
            r#"{"tasks": [{"a": "12345"}, {"b": [1]}]}"#,
            r#"{"abcdef": 1}"#,
            r#"[[[[[1]]]]]"#,
            r#"{"x": {"tasks": [1, 2, 3]}}"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let found = scan(text, &small()).unwrap();
            assert_eq!(found.over_limits, small().check_value(&value), "{text}");
        }
    }

    #[test]
    fn finds_repeated_keys_everywhere() {
        let text = r#"{"tasks": [{"task_id": "a", "input_data": {"env": {"A": "1", "\u0041": "2"}},
            "task_id": "b"}], "config": {"retries": 1, "retries": 2, "retries": 3}}"#;
        let found = scan(text, &Limits::default()).unwrap();
        let shown: Vec<String> = found.duplicates.iter().map(|i| i.to_string()).collect();
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert!(shown[0].starts_with("/tasks/0/input_data/env: duplicate key 'A'"));
        assert!(shown[1].starts_with("/tasks/0: duplicate key 'task_id'"));
        assert!(shown[2].starts_with("/config: duplicate key 'retries'"));
        assert!(found.over_limits.is_empty());
        assert!(
            scan(r#"{"a": [{"a": 1}], "b": {"a": 2}}"#, &Limits::default())
                .unwrap()
                .duplicates
                .is_empty()
        );
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(scan("{", &Limits::default()).is_err());
        assert!(scan("{} x", &Limits::default()).is_err());
    }
}
