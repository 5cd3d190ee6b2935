//! Test only: the fast path covers every constraint of the published schema.
//!
//! The fast path (`fast.rs`) checks by hand what serde does not, so a rule added to the schema
//! but not to it would let batches through that the schema refuses. This walks the generated
//! schema, and for every constraint keyword it finds makes a batch that breaks just that rule
//! (the full check must refuse it, or the rule was not really broken), then asks the fast path:
//! it must not accept the batch. A keyword this walk does not know how to break fails the test,
//! so a new kind of rule cannot slip past unnoticed.

use serde_json::{Map, Value, json};

use crate::batch::limits::Limits;
use crate::batch::schema::batch_schema;
use crate::batch::validate::validate_value;

/// Keywords that constrain nothing, or that the walk handles by descending.
const NOT_CONSTRAINTS: &[&str] = &[
    "$schema",
    "$defs",
    "$ref",
    "title",
    "description",
    "default",
    "examples",
    "properties",
    "items",
    "allOf",
];

fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = batch_schema()
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {r}"));
            resolve(target)
        }
        None => schema,
    }
}

/// A valid input of each agent, the base that one rule at a time is broken in.
fn base_input(agent: &str) -> Value {
    crate::agents::example_input(agent).unwrap_or_else(|| panic!("no agent {agent}"))
}

fn base_batch(agent: &str) -> Value {
    json!({
        "tasks": [{"task_id": "a", "agent": agent, "input_data": base_input(agent)}],
        "config": {"circuit_breaker": {}},
    })
}

/// Values breaking one keyword each of the (resolved) schema of a single value, as
/// `(keyword, value)`. Object-level keywords are the walk's, not this function's.
fn value_violations(schema: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    let schema = resolve(schema);
    let is_integer = schema["type"] == "integer"
        || schema["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("integer")));
    let Some(map) = schema.as_object() else {
        return;
    };
    for (kw, arg) in map {
        let kw = kw.as_str();
        let broken: Vec<Value> = match kw {
            "minimum" if is_integer => vec![json!(arg.as_i64().unwrap() - 1)],
            "minimum" => {
                let m = arg.as_f64().unwrap();
                vec![json!(if m > 0.0 { m / 2.0 } else { m - 1.0 })]
            }
            "maximum" if is_integer => vec![json!(arg.as_u64().unwrap() + 1)],
            "maximum" => vec![json!(arg.as_f64().unwrap() * 2.0 + 1.0)],
            "minLength" => vec![json!("x".repeat(arg.as_u64().unwrap() as usize - 1))],
            "maxLength" => vec![json!("x".repeat(arg.as_u64().unwrap() as usize + 1))],
            "pattern" => vec![json!("!")],
            "minItems" => vec![json!([])],
            "maxItems" => vec![json!(vec![Value::Null; arg.as_u64().unwrap() as usize + 1])],
            "enum" | "const" => vec![json!("zz-not-listed")],
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => panic!("odd type at {at}"),
                };
                vec![if types.contains(&"object") {
                    json!(1)
                } else {
                    json!({"zz": 1})
                }]
            }
            // A map's values (`env`): one bad value.
            "additionalProperties" if arg.is_object() => {
                let mut inner = Vec::new();
                value_violations(arg, &format!("{at}/additionalProperties"), &mut inner);
                inner.into_iter().map(|(_, v)| json!({"K": v})).collect()
            }
            "additionalProperties" | "required" | "dependentSchemas" => continue,
            "items" => {
                let mut inner = Vec::new();
                value_violations(arg, &format!("{at}/items"), &mut inner);
                inner.into_iter().map(|(_, v)| json!([v])).collect()
            }
            "anyOf" | "oneOf" => {
                let mut inner = Vec::new();
                for (i, branch) in arg.as_array().unwrap().iter().enumerate() {
                    value_violations(branch, &format!("{at}/{kw}/{i}"), &mut inner);
                }
                inner.into_iter().map(|(_, v)| v).collect()
            }
            k if NOT_CONSTRAINTS.contains(&k) => continue,
            other => panic!(
                "schema keyword {other:?} at {at} is not covered by this test (nor, maybe, by the fast path)"
            ),
        };
        for v in broken {
            out.push((format!("{at}/{kw}"), v));
        }
    }
}

/// One broken batch per rule of the object schema `schema`, whose instance is at `pointer` in
/// `base`.
fn object_cases(schema: &Value, base: &Value, pointer: &str, out: &mut Vec<(String, Value)>) {
    let schema = resolve(schema);
    let with = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut b = base.clone();
        f(b.pointer_mut(pointer).unwrap().as_object_mut().unwrap());
        b
    };
    if schema["additionalProperties"] == json!(false) {
        out.push((
            format!("{pointer} additionalProperties"),
            with(&|o| {
                o.insert("zz_unknown".into(), json!(1));
            }),
        ));
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let r = r.as_str().unwrap();
        out.push((
            format!("{pointer} required {r}"),
            with(&|o| {
                o.remove(r);
            }),
        ));
    }
    for (a, rule) in schema["dependentSchemas"].as_object().into_iter().flatten() {
        for (b, sub) in rule["properties"].as_object().into_iter().flatten() {
            assert_eq!(sub, &json!(false), "only exclusive fields are generated");
            let v = json!("http://127.0.0.1:9/mcp");
            out.push((
                format!("{pointer} dependentSchemas {a} {b}"),
                with(&|o| {
                    o.insert(a.clone(), v.clone());
                    o.insert(b.clone(), v.clone());
                }),
            ));
        }
    }
    for rule in schema["allOf"].as_array().into_iter().flatten() {
        let agent = rule["if"]["properties"]["agent"]["const"].as_str().unwrap();
        let agent_base = base_batch(agent);
        let input = &rule["then"]["properties"]["input_data"];
        object_cases(input, &agent_base, &format!("{pointer}/input_data"), out);
    }
    for (k, sub) in schema["properties"].as_object().into_iter().flatten() {
        let here = format!("{pointer}/{k}");
        let resolved = resolve(sub);
        // The task list: the task is walked where it stands.
        if let Some(items) = resolved.get("items").map(resolve)
            && items.get("properties").is_some()
        {
            object_cases(items, base, &format!("{here}/0"), out);
        }
        // A nested object present in the base (`config`, `circuit_breaker`): walked in place.
        if resolved.get("properties").is_some() && base.pointer(&here).is_some() {
            object_cases(resolved, base, &here, out);
        }
        // `input_data` is walked per agent, above.
        if k == "input_data" && schema.get("allOf").is_some() {
            continue;
        }
        let mut values = Vec::new();
        value_violations(sub, &here, &mut values);
        for (what, v) in values {
            out.push((
                what,
                with(&|o| {
                    o.insert(k.clone(), v.clone());
                }),
            ));
        }
    }
}

#[test]
fn the_fast_path_covers_every_schema_constraint() {
    let mut cases = Vec::new();
    object_cases(batch_schema(), &base_batch("command"), "", &mut cases);
    let limits = Limits::default();
    let mut broken_rules = std::collections::BTreeSet::new();
    let mut all_rules = std::collections::BTreeSet::new();
    let mut uncovered = Vec::new();
    for (rule, batch) in &cases {
        all_rules.insert(rule.clone());
        // Not every generated value breaks its rule (a branch of `anyOf` another branch takes).
        let Err(full) = validate_value(batch.clone()) else {
            continue;
        };
        broken_rules.insert(rule.clone());
        match crate::batch::fast::check(&batch.to_string(), &limits) {
            None => {}
            Some(Err(rejected)) if rejected.issues == full => {}
            other => uncovered.push(format!("{rule}: {batch} -> {:?}", other.map(|r| r.is_ok()))),
        }
    }
    assert!(
        uncovered.is_empty(),
        "the fast path misses:\n{}",
        uncovered.join("\n")
    );
    let never: Vec<_> = all_rules.difference(&broken_rules).collect();
    assert!(
        never.is_empty(),
        "rules this test could not break: {never:?}"
    );
    // The walk reached every part of the batch.
    for place in [
        "/config/circuit_breaker/failure_threshold",
        "/tasks/0/input_data/url",
        "/tasks/0/task_id",
        "/tasks/0/input_data/argv",
    ] {
        assert!(
            all_rules.iter().any(|r| r.starts_with(place)),
            "{place} not reached"
        );
    }
    assert!(cases.len() > 50, "{}", cases.len());
}
