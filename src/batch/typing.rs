//! What JSON types a place in a JSON Schema allows, for checking typed output references
//! (`{"$output": ...}`) before the run: the producing agent's output schema says what a
//! reference yields, the consuming schema (an agent's input schema, or with `--check-tools` an
//! MCP tool's input schema) says what the place takes, and a reference whose types cannot meet
//! is refused.
//!
//! Only the keywords that decide a value's JSON type are read (`type`, `properties`,
//! `additionalProperties`, `items`, `prefixItems`, `anyOf`/`oneOf`, `enum`/`const`, local
//! `$ref`). Anything else, or any doubt, answers "unknown", which is never refused: a check that
//! cannot be sure must not turn a working batch away.

use std::collections::BTreeSet;

use serde_json::Value;

/// How deep `$ref`s and combinators are followed; deeper is "unknown".
const MAX_HOPS: usize = 32;

/// A schema inside the document its `$ref`s point into.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub root: &'a Value,
    pub schema: &'a Value,
}

/// What a schema says about the value one step further in.
#[derive(Debug)]
pub enum At<'a> {
    /// The value there matches one of these schemas.
    Known(Vec<Shape<'a>>),
    /// Anything may be there.
    Any,
    /// Nothing can be there; the reason, for the message.
    Missing(String),
}

impl<'a> Shape<'a> {
    pub fn new(root: &'a Value) -> Self {
        Shape { root, schema: root }
    }

    /// The schema with its local `$ref`s followed; `None` for a dangling or remote one.
    fn resolved(self) -> Option<Self> {
        let mut s = self;
        for _ in 0..MAX_HOPS {
            match s.schema.get("$ref").and_then(Value::as_str) {
                None => return Some(s),
                Some(r) => {
                    let pointer = r.strip_prefix('#')?;
                    s.schema = s.root.pointer(pointer)?;
                }
            }
        }
        None
    }

    /// The branches of `anyOf`/`oneOf`, or the schema itself.
    fn branches(self) -> Vec<Self> {
        let mut out = Vec::new();
        self.collect_branches(&mut out, 0);
        out
    }

    fn collect_branches(self, out: &mut Vec<Self>, hops: usize) {
        let Some(s) = self.resolved() else {
            out.push(Shape {
                root: self.root,
                schema: &Value::Bool(true),
            });
            return;
        };
        let alternatives = ["anyOf", "oneOf"]
            .iter()
            .find_map(|k| s.schema.get(*k).and_then(Value::as_array));
        match alternatives {
            Some(list) if hops < MAX_HOPS && s.schema.get("type").is_none() => {
                for b in list {
                    // A branch that only says "a typed reference may stand here" is not a
                    // type the value can have once substituted.
                    if is_output_ref_schema(b) {
                        continue;
                    }
                    Shape {
                        root: s.root,
                        schema: b,
                    }
                    .collect_branches(out, hops + 1);
                }
            }
            _ => out.push(s),
        }
    }

    /// The JSON types the schema allows (`integer` standing apart from `number`), or `None` when
    /// it may be anything.
    pub fn types(self) -> Option<BTreeSet<&'static str>> {
        let mut all = BTreeSet::new();
        for b in self.branches() {
            all.extend(own_types(b.schema)?);
        }
        Some(all)
    }

    /// The schema of the value at `token` (an object key or an array index).
    pub fn at(self, token: &str) -> At<'a> {
        let mut found = Vec::new();
        let mut missing = None;
        for b in self.branches() {
            match b.at_one(token) {
                At::Any => return At::Any,
                At::Known(mut k) => found.append(&mut k),
                At::Missing(why) => missing = Some(why),
            }
        }
        match (found.is_empty(), missing) {
            (false, _) => At::Known(found),
            (true, Some(why)) => At::Missing(why),
            (true, None) => At::Any,
        }
    }

    fn at_one(self, token: &str) -> At<'a> {
        let s = self.schema;
        let Some(types) = own_types(s) else {
            // Untyped: properties may still say something.
            return match s.get("properties").and_then(|p| p.get(token)) {
                Some(p) => At::Known(vec![self.with(p)]),
                None => At::Any,
            };
        };
        let mut found = Vec::new();
        if types.contains("object") {
            match s.get("properties").and_then(|p| p.get(token)) {
                Some(p) => found.push(self.with(p)),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {}
                    Some(extra @ Value::Object(_)) => found.push(self.with(extra)),
                    _ => return At::Any,
                },
            }
        }
        if types.contains("array")
            && let Some(i) = index(token)
        {
            let tuple = s
                .get("prefixItems")
                .or_else(|| s.get("items").filter(|i| i.is_array()))
                .and_then(Value::as_array);
            match (tuple.and_then(|t| t.get(i)), s.get("items")) {
                (Some(item), _) => found.push(self.with(item)),
                (None, Some(items @ Value::Object(_))) => found.push(self.with(items)),
                (None, Some(Value::Bool(false))) => {}
                _ => return At::Any,
            }
        }
        if found.is_empty() {
            At::Missing(format!(
                "is of type {} and has no '{token}'",
                describe(&types)
            ))
        } else {
            At::Known(found)
        }
    }

    fn with(self, schema: &'a Value) -> Self {
        Shape {
            root: self.root,
            schema,
        }
    }
}

/// The types a schema's own `type`, `enum` or `const` allow; `None` when it does not say.
fn own_types(s: &Value) -> Option<BTreeSet<&'static str>> {
    if let Value::Bool(false) = s {
        return Some(BTreeSet::new());
    }
    if let Some(c) = s.get("const") {
        return Some([type_of(c)].into());
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(e.iter().map(type_of).collect());
    }
    let names = match s.get("type")? {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(names.into_iter().filter_map(type_name).collect())
}

fn type_name(t: &str) -> Option<&'static str> {
    Some(match t {
        "null" => "null",
        "boolean" => "boolean",
        "integer" => "integer",
        "number" => "number",
        "string" => "string",
        "array" => "array",
        "object" => "object",
        _ => return None,
    })
}

/// The JSON type of a value (`integer` for numbers without a fraction).
pub fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A JSON Pointer array index: `0` or digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// Whether a value of one of `from` may be taken where `to` is allowed. An integer is a number;
/// a number may be integral, so it is not refused where an integer is wanted.
pub fn may_fit(from: &BTreeSet<&str>, to: &BTreeSet<&str>) -> bool {
    from.iter().any(|t| {
        to.contains(t)
            || (*t == "integer" && to.contains("number"))
            || (*t == "number" && to.contains("integer"))
    })
}

/// `integer`, `string or null`, ...
pub fn describe(types: &BTreeSet<&str>) -> String {
    match types.len() {
        0 => "nothing".to_string(),
        _ => types.iter().copied().collect::<Vec<_>>().join(" or "),
    }
}

/// The schema at a JSON Pointer (already split into decoded tokens); `Err` when the schema says
/// nothing can be there.
pub fn walk<'a>(start: Shape<'a>, tokens: &[String]) -> Result<At<'a>, String> {
    let mut current = vec![start];
    for (n, token) in tokens.iter().enumerate() {
        let mut next = Vec::new();
        let mut why = None;
        for s in current {
            match s.at(token) {
                At::Any => return Ok(At::Any),
                At::Known(mut k) => next.append(&mut k),
                At::Missing(w) => why = Some(w),
            }
        }
        if next.is_empty() {
            let at = crate::batch::template::encode_pointer(&tokens[..n]);
            let at = if at.is_empty() {
                "the value".into()
            } else {
                format!("'{at}'")
            };
            return Err(format!(
                "{at} {}",
                why.unwrap_or_else(|| "has nothing there".into())
            ));
        }
        current = next;
    }
    Ok(At::Known(current))
}

/// The types the value at the end of a walk may have; `None` for unknown.
pub fn types_at(at: &At) -> Option<BTreeSet<&'static str>> {
    match at {
        At::Any | At::Missing(_) => None,
        At::Known(shapes) => {
            let mut all = BTreeSet::new();
            for s in shapes {
                all.extend(s.types()?);
            }
            Some(all)
        }
    }
}

/// Why `value` cannot stand where `shape` is, by JSON types alone (inside arrays and objects
/// too): the JSON Pointer inside `value` and what is wrong there. `None` when it may.
pub fn value_mismatch(shape: Shape, value: &Value) -> Option<(String, String)> {
    value_mismatch_at(shape, value, &mut String::new(), 0)
}

fn value_mismatch_at(
    shape: Shape,
    value: &Value,
    pointer: &mut String,
    depth: usize,
) -> Option<(String, String)> {
    if depth > MAX_HOPS {
        return None;
    }
    let allowed = shape.types()?;
    let found = type_of(value);
    if !may_fit(&[found].into(), &allowed) {
        return Some((
            pointer.clone(),
            format!(
                "is of type {found}, but this field takes {}",
                describe(&allowed)
            ),
        ));
    }
    let children: Vec<(String, &Value)> = match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        _ => return None,
    };
    for (token, child) in children {
        let At::Known(shapes) = shape.at(&token) else {
            continue;
        };
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&crate::batch::issue::pointer_token(&token));
        // The child fits if it fits any of the schemas it may match.
        let mut first = None;
        let mut fits = false;
        for s in shapes {
            match value_mismatch_at(s, child, pointer, depth + 1) {
                None => {
                    fits = true;
                    break;
                }
                Some(m) => {
                    first.get_or_insert(m);
                }
            }
        }
        pointer.truncate(len);
        if !fits {
            return first;
        }
    }
    None
}

/// Name of the schema definition of a typed reference in the published batch schema.
pub const OUTPUT_REF_DEF: &str = "OutputRef";

fn is_output_ref_schema(s: &Value) -> bool {
    s.get("$ref")
        .and_then(Value::as_str)
        .is_some_and(|r| r == format!("#/$defs/{OUTPUT_REF_DEF}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: &[&'static str]) -> BTreeSet<&'static str> {
        v.iter().copied().collect()
    }

    #[test]
    fn walks_properties_items_refs_and_unions() {
        let root = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "list": {"type": "array", "items": {"$ref": "#/$defs/E"}},
                "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "free": true,
                "fixed": {"type": "object", "properties": {"a": {"const": 1}}, "additionalProperties": false}
            },
            "$defs": {"E": {"type": "object", "properties": {"name": {"type": "string"}}}}
        });
        let s = Shape::new(&root);
        let at = |p: &[&str]| {
            let tokens: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            walk(s, &tokens)
        };
        assert_eq!(types_at(&at(&["n"]).unwrap()), Some(t(&["integer"])));
        assert_eq!(
            types_at(&at(&["list", "3", "name"]).unwrap()),
            Some(t(&["string"]))
        );
        assert_eq!(
            types_at(&at(&["maybe"]).unwrap()),
            Some(t(&["null", "string"]))
        );
        assert_eq!(types_at(&at(&["free", "x"]).unwrap()), None);
        assert_eq!(
            types_at(&at(&["fixed", "a"]).unwrap()),
            Some(t(&["integer"]))
        );
        assert!(
            at(&["n", "x"])
                .unwrap_err()
                .contains("'/n' is of type integer and has no 'x'")
        );
        assert!(at(&["fixed", "b"]).is_err());
        assert!(at(&["list", "x"]).is_err());
        assert_eq!(types_at(&at(&["other"]).unwrap()), None);
    }

    #[test]
    fn values_are_judged_by_type_inside_out() {
        let root = json!({"type": "array", "items": {"type": "string"}});
        let s = Shape::new(&root);
        assert_eq!(value_mismatch(s, &json!(["a", "b"])), None);
        assert_eq!(
            value_mismatch(s, &json!("a")),
            Some((
                String::new(),
                "is of type string, but this field takes array".into()
            ))
        );
        assert_eq!(
            value_mismatch(s, &json!(["a", 2])).map(|m| m.0),
            Some("/1".into())
        );
        assert_eq!(value_mismatch(Shape::new(&json!(true)), &json!(1)), None);
    }

    #[test]
    fn fit_is_refused_only_when_types_cannot_meet() {
        assert!(may_fit(&t(&["integer"]), &t(&["number"])));
        assert!(may_fit(&t(&["number"]), &t(&["integer"])));
        assert!(may_fit(&t(&["string", "null"]), &t(&["null"])));
        assert!(!may_fit(&t(&["string"]), &t(&["number"])));
        assert!(!may_fit(&t(&["array"]), &t(&["string"])));
    }
}
