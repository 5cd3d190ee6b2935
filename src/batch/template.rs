//! Output passing between tasks, in two forms:
//! - `{{tasks.<task_id>.output.<field>[.<field>...]}}` inside any string of `input_data`: the
//!   value is rendered into the string as text;
//! - a typed reference, an object whose keys are `"$output"` and optionally `"$each"`:
//!   `{"$output": "<task_id>/<JSON Pointer>"}` is replaced by the value itself, its JSON type
//!   kept, and `"$each": "<JSON Pointer>"` picks that part out of every element of the array the
//!   reference names (`{"$output": "graph/structured_content/entities", "$each": "/name"}`).
//!
//! Parsing happens twice: at validation time (to reject malformed references and references to
//! tasks that are not dependencies) and at run time (to substitute upstream outputs).

use serde_json::{Map, Value};

/// The key that makes an object a typed reference. `$` starts no name a tool or agent declares
/// (JSON Schema reserves `$` for its own keywords, which live in schemas, never in the values
/// validated), so it does not collide with real arguments.
pub const OUTPUT_KEY: &str = "$output";
/// The optional key of a typed reference that maps a JSON Pointer over an array.
pub const EACH_KEY: &str = "$each";

/// A typed reference: a task, a JSON Pointer into its output, and optionally a JSON Pointer
/// applied to every element of the array found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedRef {
    pub task_id: String,
    /// RFC 6901 JSON Pointer into the output, as written (`""` is the whole output).
    pub pointer: String,
    pub each: Option<String>,
}

impl TypedRef {
    /// The pointer's decoded tokens.
    pub fn tokens(&self) -> Vec<String> {
        pointer_tokens(&self.pointer).unwrap_or_default()
    }

    /// The pointer of `$each` decoded, if there is one.
    pub fn each_tokens(&self) -> Option<Vec<String>> {
        self.each
            .as_deref()
            .map(|p| pointer_tokens(p).unwrap_or_default())
    }

    /// How the reference reads in messages: `"build/exit_code"`, with its `$each` if any.
    pub fn shown(&self) -> String {
        let mut s = format!("\"{}{}\"", self.task_id, self.pointer);
        if let Some(each) = &self.each {
            s.push_str(&format!(" with \"$each\": \"{each}\""));
        }
        s
    }

    /// The referenced value in `output` (the task's whole output), with its type.
    pub fn pick(&self, output: &Value) -> Result<Value, String> {
        let found = output.pointer(&self.pointer).ok_or_else(|| {
            format!(
                "the output of task '{}' has nothing at '{}'",
                self.task_id, self.pointer
            )
        })?;
        let Some(each) = &self.each else {
            return Ok(found.clone());
        };
        let Value::Array(items) = found else {
            return Err(format!(
                "\"$each\" needs an array, but '{}' in the output of task '{}' is of type {}",
                self.pointer,
                self.task_id,
                crate::batch::typing::type_of(found)
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.pointer(each).cloned().ok_or_else(|| {
                    format!(
                        "element {i} of '{}' in the output of task '{}' has nothing at '{each}'",
                        self.pointer, self.task_id
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }
}

/// The typed reference an object is, if it has the `$output` key; `Err` when it has the key but
/// is not a well-formed reference.
pub fn typed_ref(v: &Value) -> Option<Result<TypedRef, String>> {
    let Value::Object(m) = v else { return None };
    let target = m.get(OUTPUT_KEY)?;
    Some(parse_typed(m, target))
}

fn parse_typed(m: &Map<String, Value>, target: &Value) -> Result<TypedRef, String> {
    const FORM: &str =
        "\"$output\" takes \"<task_id>\" or \"<task_id>/<JSON Pointer into its output>\"";
    if let Some(k) = m.keys().find(|k| *k != OUTPUT_KEY && *k != EACH_KEY) {
        return Err(format!(
            "unknown key '{k}' in a typed reference: it has only \"$output\" and, optionally, \"$each\""
        ));
    }
    let Value::String(s) = target else {
        return Err(format!(
            "{FORM}, not {}",
            crate::batch::typing::type_of(target)
        ));
    };
    let (task_id, pointer) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s.as_str(), ""),
    };
    if task_id.is_empty() {
        return Err(format!("{FORM}: '{s}' names no task"));
    }
    pointer_tokens(pointer).map_err(|e| format!("\"$output\" '{s}': {e}"))?;
    let each = match m.get(EACH_KEY) {
        // As serde reads an absent optional field (agent fields take `null` for "none").
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => {
            pointer_tokens(p).map_err(|e| format!("\"$each\": {e}"))?;
            Some(p.clone())
        }
        Some(other) => {
            return Err(format!(
                "\"$each\" takes a JSON Pointer string such as \"/name\", not {}",
                crate::batch::typing::type_of(other)
            ));
        }
    };
    Ok(TypedRef {
        task_id: task_id.to_string(),
        pointer: pointer.to_string(),
        each,
    })
}

/// The decoded tokens of an RFC 6901 JSON Pointer (`~1` is `/`, `~0` is `~`).
pub fn pointer_tokens(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "'{}' is not a JSON Pointer: it is empty or starts with '/'",
            truncate(p, 60)
        ));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "'{}' is not a JSON Pointer: '~' must be followed by 0 or 1",
                                truncate(p, 60)
                            ));
                        }
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// A JSON Pointer from decoded tokens.
pub fn encode_pointer(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", crate::batch::issue::pointer_token(t)))
        .collect()
}

/// A place in an input that refers to another task's output.
#[derive(Debug, Clone, Copy)]
pub enum Site<'v> {
    /// A string holding `{{` (it may or may not hold references).
    Template(&'v str),
    /// An object with the `$output` key.
    Typed(&'v Value),
}

/// Calls `f` with the JSON Pointer suffix of every site in `v`. The inside of a typed reference
/// is not visited: its strings are not templates.
pub fn visit_sites(v: &Value, pointer: &mut String, f: &mut dyn FnMut(&str, Site<'_>)) {
    match v {
        Value::String(s) if s.contains(OPEN) => f(pointer, Site::Template(s)),
        Value::Object(m) if m.contains_key(OUTPUT_KEY) => f(pointer, Site::Typed(v)),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let len = pointer.len();
                let _ = std::fmt::Write::write_fmt(pointer, format_args!("/{i}"));
                visit_sites(item, pointer, f);
                pointer.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&crate::batch::issue::pointer_token(k));
                visit_sites(item, pointer, f);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// One reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub task_id: String,
    /// Field path into the upstream output; empty means the whole output.
    pub fields: Vec<String>,
}

/// A piece of a parsed string: literal text or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Ref(Reference),
}

const OPEN: &str = "{{";
const CLOSE: &str = "}}";

/// Splits a string into literal text and references. `is_task` tells which ids exist, so an id
/// containing dots (`lint.py`) is told apart from a field path. A `{{` that does not start with
/// `tasks.` is ordinary text (other template languages use `{{` too).
pub fn parse(s: &str, is_task: &dyn Fn(&str) -> bool) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    let mut text = String::new();
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        if !after.trim_start().starts_with("tasks.") {
            text.push_str(&rest[..start + OPEN.len()]);
            rest = after;
            continue;
        }
        let Some(end) = after.find(CLOSE) else {
            return Err(format!(
                "unterminated reference '{}': missing '}}}}'",
                truncate(&rest[start..], 60)
            ));
        };
        text.push_str(&rest[..start]);
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Ref(parse_reference(after[..end].trim(), is_task)?));
        rest = &after[end + CLOSE.len()..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn parse_reference(body: &str, is_task: &dyn Fn(&str) -> bool) -> Result<Reference, String> {
    let shown = format!("{{{{{body}}}}}");
    let path = body
        .strip_prefix("tasks.")
        .expect("caller checked the prefix");
    // Candidate split points: every ".output" that ends the path or is followed by '.'.
    let mut candidates = Vec::new();
    for (pos, _) in path.match_indices(".output") {
        let tail = &path[pos + ".output".len()..];
        if tail.is_empty() || tail.starts_with('.') {
            candidates.push((pos, tail));
        }
    }
    if candidates.is_empty() {
        return Err(format!(
            "malformed reference '{shown}': expected {{{{tasks.<task_id>.output.<field>}}}}"
        ));
    }
    let chosen = candidates
        .iter()
        .find(|(pos, _)| is_task(&path[..*pos]))
        .or(candidates.first())
        .copied()
        .expect("non-empty");
    let (pos, tail) = chosen;
    let task_id = &path[..pos];
    if task_id.is_empty() {
        return Err(format!("malformed reference '{shown}': empty task id"));
    }
    let fields: Vec<String> = if tail.is_empty() {
        Vec::new()
    } else {
        tail[1..].split('.').map(str::to_string).collect()
    };
    if fields.iter().any(String::is_empty) {
        return Err(format!("malformed reference '{shown}': empty field name"));
    }
    Ok(Reference {
        task_id: task_id.to_string(),
        fields,
    })
}

/// Looks a field path up in an output; numeric segments index arrays.
pub fn lookup<'v>(output: &'v Value, fields: &[String]) -> Option<&'v Value> {
    fields.iter().try_fold(output, |v, f| match v {
        Value::Object(m) => m.get(f),
        Value::Array(a) => f.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Renders a substituted value: strings as-is, anything else as compact JSON.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Calls `f` with the JSON Pointer suffix and text of every string inside `v`.
pub fn visit_strings(v: &Value, pointer: &mut String, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(pointer, s),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                // Formatting into the buffer avoids an allocation per element.
                let _ = std::fmt::Write::write_fmt(pointer, format_args!("{i}"));
                visit_strings(item, pointer, f);
                pointer.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&crate::batch::issue::pointer_token(k));
                visit_strings(item, pointer, f);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Replaces every reference in every string of `v`, using `resolve` for each. Strings without
/// references are left untouched (no allocation beyond the walk).
pub fn substitute(
    v: &mut Value,
    is_task: &dyn Fn(&str) -> bool,
    resolve: &dyn Fn(&Reference) -> Result<String, String>,
) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if s.contains(OPEN) {
                let pieces = parse(s, is_task)?;
                if pieces.iter().any(|p| matches!(p, Piece::Ref(_))) {
                    let mut out = String::with_capacity(s.len());
                    for p in pieces {
                        match p {
                            Piece::Text(t) => out.push_str(&t),
                            Piece::Ref(r) => out.push_str(&resolve(&r)?),
                        }
                    }
                    *s = out;
                }
            }
            Ok(())
        }
        Value::Array(a) => a
            .iter_mut()
            .try_for_each(|x| substitute(x, is_task, resolve)),
        Value::Object(m) => m
            .values_mut()
            .try_for_each(|x| substitute(x, is_task, resolve)),
        _ => Ok(()),
    }
}

/// Why [`substitute_bounded`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubstituteError {
    /// A reference could not be resolved.
    Unresolved(String),
    /// The expanded input would be longer than the limit; `pointer` is the JSON Pointer (inside
    /// the input) of the string being expanded when the limit was passed.
    TooLarge { limit: usize, pointer: String },
}

/// Like [`substitute`], but the strings that contain references may together hold at most
/// `limit` bytes once expanded. The size is checked before each piece is copied, so an input that references a large
/// output many times fails after allocating at most about `limit` bytes, instead of building the
/// whole expansion first. `resolve` hands back the upstream value itself; it is rendered here
/// (non-strings as compact JSON, through a writer that stops at the remaining budget). Typed
/// references (`{"$output": ...}`) are replaced by the value they name, which counts at its
/// length as compact JSON; `resolve` is asked for the whole output of their task.
pub fn substitute_bounded<'o>(
    v: &mut Value,
    limit: usize,
    is_task: &dyn Fn(&str) -> bool,
    resolve: &dyn Fn(&Reference) -> Result<&'o Value, String>,
) -> Result<(), SubstituteError> {
    let mut left = limit;
    let mut pointer = String::new();
    expand(v, &mut pointer, &mut left, limit, is_task, resolve)
}

fn expand<'o>(
    v: &mut Value,
    pointer: &mut String,
    left: &mut usize,
    limit: usize,
    is_task: &dyn Fn(&str) -> bool,
    resolve: &dyn Fn(&Reference) -> Result<&'o Value, String>,
) -> Result<(), SubstituteError> {
    let too_large = |pointer: &str| SubstituteError::TooLarge {
        limit,
        pointer: pointer.to_string(),
    };
    match v {
        Value::String(s) => {
            let pieces = if s.contains(OPEN) {
                parse(s, is_task).map_err(SubstituteError::Unresolved)?
            } else {
                Vec::new()
            };
            // Strings without references are the batch's own text, bounded by the input limits.
            if !pieces.iter().any(|p| matches!(p, Piece::Ref(_))) {
                return Ok(());
            }
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => {
                        *left = left
                            .checked_sub(t.len())
                            .ok_or_else(|| too_large(pointer))?;
                        out.push_str(&t);
                    }
                    Piece::Ref(r) => match resolve(&r).map_err(SubstituteError::Unresolved)? {
                        Value::String(text) => {
                            *left = left
                                .checked_sub(text.len())
                                .ok_or_else(|| too_large(pointer))?;
                            out.push_str(text);
                        }
                        other => {
                            let mut w = Capped {
                                buf: Some(Vec::new()),
                                left: *left,
                            };
                            serde_json::to_writer(&mut w, other).map_err(|_| too_large(pointer))?;
                            *left = w.left;
                            out.push_str(&String::from_utf8_lossy(&w.buf.unwrap_or_default()));
                        }
                    },
                }
            }
            *s = out;
            Ok(())
        }
        Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                let len = pointer.len();
                let _ = std::fmt::Write::write_fmt(pointer, format_args!("/{i}"));
                expand(item, pointer, left, limit, is_task, resolve)?;
                pointer.truncate(len);
            }
            Ok(())
        }
        Value::Object(m) if m.contains_key(OUTPUT_KEY) => {
            let at = |e: String| SubstituteError::Unresolved(format!("input_data{pointer}: {e}"));
            let r = typed_ref(v).expect("has the key").map_err(at)?;
            let whole = Reference {
                task_id: r.task_id.clone(),
                fields: Vec::new(),
            };
            let value = r
                .pick(resolve(&whole).map_err(SubstituteError::Unresolved)?)
                .map_err(at)?;
            // The value counts at its length as JSON, measured without building the text.
            let mut w = Capped {
                buf: None,
                left: *left,
            };
            serde_json::to_writer(&mut w, &value).map_err(|_| too_large(pointer))?;
            *left = w.left;
            *v = value;
            Ok(())
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&crate::batch::issue::pointer_token(k));
                expand(item, pointer, left, limit, is_task, resolve)?;
                pointer.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A byte sink that refuses to grow past its budget; without a buffer it only counts.
struct Capped {
    buf: Option<Vec<u8>>,
    left: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.left = self
            .left
            .checked_sub(data.len())
            .ok_or_else(|| std::io::Error::other("over the size limit"))?;
        if let Some(buf) = &mut self.buf {
            buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(id: &str) -> bool {
        ["build", "lint.py", "a.output"].contains(&id)
    }

    fn r(task: &str, fields: &[&str]) -> Piece {
        Piece::Ref(Reference {
            task_id: task.into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn parses_text_and_references() {
        let p = parse(
            "x {{tasks.build.output.stdout}} y {{ tasks.lint.py.output.a.0 }}",
            &known,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("x ".into()),
                r("build", &["stdout"]),
                Piece::Text(" y ".into()),
                r("lint.py", &["a", "0"]),
            ]
        );
    }

    #[test]
    fn ids_with_output_in_them() {
        let p = parse("{{tasks.a.output.output.x}}", &known).unwrap();
        assert_eq!(p, vec![r("a.output", &["x"])]);
        let p = parse("{{tasks.zz.output.x}}", &known).unwrap();
        assert_eq!(p, vec![r("zz", &["x"])]);
    }

    #[test]
    fn other_braces_are_text() {
        let p = parse("{{.Name}} and {{ other }}", &known).unwrap();
        assert_eq!(p, vec![Piece::Text("{{.Name}} and {{ other }}".into())]);
    }

    #[test]
    fn malformed_references() {
        for bad in [
            "{{tasks.build}}",
            "{{tasks.build.stdout}}",
            "{{tasks.build.output.}}",
            "{{tasks.build.output..x}}",
            "{{tasks..output.x}}",
            "{{tasks.build.output.stdout",
        ] {
            assert!(parse(bad, &known).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn substitutes_strings_and_json() {
        let out = json!({"stdout": "hi\n", "n": 3, "list": [1, {"k": "v"}]});
        let mut v = json!({"argv": ["echo", "{{tasks.build.output.stdout}}", "n={{tasks.build.output.n}}",
                                     "{{tasks.build.output.list.1}}", "{{tasks.build.output.list.1.k}}"]});
        substitute(&mut v, &known, &|r| {
            lookup(&out, &r.fields)
                .map(render)
                .ok_or_else(|| "missing".to_string())
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"argv": ["echo", "hi\n", "n=3", "{\"k\":\"v\"}", "v"]})
        );
    }

    #[test]
    fn lookup_misses() {
        let out = json!({"a": [1]});
        assert_eq!(lookup(&out, &["b".into()]), None);
        assert_eq!(lookup(&out, &["a".into(), "x".into()]), None);
        assert_eq!(lookup(&out, &["a".into(), "0".into()]), Some(&json!(1)));
    }

    #[test]
    fn bounded_expansion_stops_at_the_limit() {
        let big = json!({"stdout": "x".repeat(1000), "list": vec![1; 500]});
        let lookup_big =
            |r: &Reference| lookup(&big, &r.fields).ok_or_else(|| "missing".to_string());
        // Within the limit: same result as the unbounded substitution.
        let mut v = json!({"a": ["{{tasks.build.output.stdout}}!", "{{tasks.build.output.list}}"]});
        substitute_bounded(&mut v, 10_000, &known, &lookup_big).unwrap();
        assert_eq!(v["a"][0].as_str().unwrap().len(), 1001);
        assert_eq!(v["a"][1].as_str().unwrap().len(), 1001);
        // Ten references to 1000 bytes pass a 9999-byte limit: refused, naming the string.
        let refs = "{{tasks.build.output.stdout}}".repeat(10);
        let mut v = json!({"stdin": refs});
        let e = substitute_bounded(&mut v, 9_999, &known, &lookup_big).unwrap_err();
        assert_eq!(
            e,
            SubstituteError::TooLarge {
                limit: 9_999,
                pointer: "/stdin".into()
            }
        );
        // Literal text around references counts, and a non-string value is cut off while
        // rendering; strings without references do not count.
        let mut v = json!({"k": "y".repeat(5000), "l": "{{tasks.build.output.list}}"});
        substitute_bounded(&mut v, 1001, &known, &lookup_big).unwrap();
        let mut v = json!({"l": "{{tasks.build.output.list}}"});
        assert!(matches!(
            substitute_bounded(&mut v, 1000, &known, &lookup_big),
            Err(SubstituteError::TooLarge { .. })
        ));
        let mut v = json!({"k": "{{tasks.build.output.nope}}"});
        assert!(matches!(
            substitute_bounded(&mut v, 1000, &known, &lookup_big),
            Err(SubstituteError::Unresolved(_))
        ));
    }

    #[test]
    fn typed_references_parse_and_pick() {
        let out = json!({"exit_code": 0, "a/b": {"~k": [1, 2]},
                         "list": [{"name": "x", "n": 1}, {"name": "y", "n": 2}]});
        let parse = |v: Value| typed_ref(&v).unwrap();
        let r = parse(json!({"$output": "t/a~1b/~0k/1"})).unwrap();
        assert_eq!(r.task_id, "t");
        assert_eq!(r.tokens(), ["a/b", "~k", "1"]);
        assert_eq!(r.pick(&out), Ok(json!(2)));
        assert_eq!(
            parse(json!({"$output": "lint.py"})).unwrap().pick(&out),
            Ok(out.clone())
        );
        let each = parse(json!({"$output": "t/list", "$each": "/name"})).unwrap();
        assert_eq!(each.pick(&out), Ok(json!(["x", "y"])));
        let all = parse(json!({"$output": "t/list", "$each": ""})).unwrap();
        assert_eq!(all.pick(&out), Ok(out["list"].clone()));
        assert!(
            parse(json!({"$output": "t/list", "$each": "/zz"}))
                .unwrap()
                .pick(&out)
                .unwrap_err()
                .contains("element 0")
        );
        assert!(
            parse(json!({"$output": "t/exit_code", "$each": "/x"}))
                .unwrap()
                .pick(&out)
                .unwrap_err()
                .contains("needs an array")
        );
        // JSON Pointer indices: no leading zeros, no signs.
        assert!(
            parse(json!({"$output": "t/list/01"}))
                .unwrap()
                .pick(&out)
                .is_err()
        );
        assert!(
            parse(json!({"$output": "t/list/+1"}))
                .unwrap()
                .pick(&out)
                .is_err()
        );
        for bad in [
            json!({"$output": 1}),
            json!({"$output": "/x"}),
            json!({"$output": "t/a~"}),
            json!({"$output": "t", "$each": "name"}),
            json!({"$output": "t", "$each": 3}),
            json!({"$output": "t", "other": 1}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(typed_ref(&json!({"output": "t"})), None);
        assert_eq!(typed_ref(&json!("{{tasks.t.output.x}}")), None);
    }

    #[test]
    fn typed_references_expand_with_their_types_within_the_limit() {
        let out = json!({"n": 7, "list": ["a", "b"], "big": "x".repeat(100)});
        // Templates ask for their field, typed references for the whole output.
        let whole = |r: &Reference| lookup(&out, &r.fields).ok_or_else(|| "missing".to_string());
        let mut v = json!({"args": {"n": {"$output": "build/n"}, "names": {"$output": "build/list"},
                                    "text": "n={{tasks.build.output.n}}",
                                    "nested": [{"$output": "build/list/1"}]}});
        substitute_bounded(&mut v, 1000, &known, &whole).unwrap();
        assert_eq!(
            v,
            json!({"args": {"n": 7, "names": ["a", "b"], "text": "n=7", "nested": ["b"]}})
        );
        // A value is counted at its length as JSON: 102 bytes with its quotes.
        let mut v = json!({"t": {"$output": "build/big"}});
        assert!(substitute_bounded(&mut v, 102, &known, &whole).is_ok());
        let mut v = json!({"t": {"$output": "build/big"}});
        assert_eq!(
            substitute_bounded(&mut v, 101, &known, &whole),
            Err(SubstituteError::TooLarge {
                limit: 101,
                pointer: "/t".into()
            })
        );
        let mut v = json!({"t": {"$output": "build/nope"}});
        match substitute_bounded(&mut v, 1000, &known, &whole) {
            Err(SubstituteError::Unresolved(m)) => {
                assert_eq!(
                    m,
                    "input_data/t: the output of task 'build' has nothing at '/nope'"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
