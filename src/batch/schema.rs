//! The input JSON Schema, derived from the Rust types and reshaped for good error messages.
//!
//! schemars renders the agent union as a `oneOf`, whose failures read "not valid under any of the
//! schemas listed in oneOf". We turn it into an `agent` enum plus one `if agent == X then
//! input_data: <X's schema>` per agent, so a bad `input_data` is reported by that agent's own schema
//! with a precise JSON Pointer.
//!
//! schemars also marks numbers with formats of its own (`uint32`, `double`, ...), which are not
//! JSON Schema formats: strict validators (ajv) refuse them. They are replaced by the bounds the
//! Rust types impose, as `minimum`/`maximum`, so that every value the schema takes the runner's
//! types can hold.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::batch::Batch;
use crate::batch::limits::MAX_JSON_INTEGER;

/// The schema as published (`dispatch_runner schema`, `schemas/task-batch.schema.json`).
pub fn batch_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = serde_json::to_value(schemars::schema_for!(Batch)).expect("schema");
        reshape_agent_union(&mut schema);
        numeric_formats_to_bounds(&mut schema);
        schema
    })
}

/// The compiled validator for [`batch_schema`].
pub fn batch_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| jsonschema::validator_for(batch_schema()).expect("schema compiles"))
}

/// The schema of an agent's `input_data` inside [`batch_schema`] (whose `$defs` its `$ref`s
/// point into).
pub fn agent_input_schema(agent: &str) -> Option<&'static Value> {
    batch_schema()["$defs"]["Task"]["allOf"]
        .as_array()?
        .iter()
        .find(|rule| rule["if"]["properties"]["agent"]["const"] == agent)
        .map(|rule| &rule["then"]["properties"]["input_data"])
}

/// Agent names that have an input schema in this build, in declaration order.
pub fn available_agents() -> Vec<String> {
    batch_schema()["$defs"]["Task"]["properties"]["agent"]["enum"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The range of each integer format schemars writes, as `(minimum, maximum)`. 64-bit types are
/// held to [`MAX_JSON_INTEGER`]: past it, validators that read numbers as doubles (JavaScript's)
/// cannot tell neighbouring integers apart, so they would disagree with the runner at the edge.
fn integer_range(format: &str) -> Option<(i64, u64)> {
    let safe = MAX_JSON_INTEGER;
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, safe),
        "int8" => (i8::MIN.into(), i8::MAX as u64),
        "int16" => (i16::MIN.into(), i16::MAX as u64),
        "int32" => (i32::MIN.into(), i32::MAX as u64),
        "int64" | "int" => (-(safe as i64), safe),
        _ => return None,
    })
}

/// Replaces schemars' number formats by explicit bounds (tighter bounds already set are kept).
fn numeric_formats_to_bounds(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            // Only where `format` is a keyword (a schema with a `type`), not a property name.
            let format = match (map.get("type"), map.get("format")) {
                (Some(_), Some(Value::String(f))) => Some(f.clone()),
                _ => None,
            };
            if let Some(format) = format {
                if let Some((lo, hi)) = integer_range(&format) {
                    map.shift_remove("format");
                    let keep_lo = map
                        .get("minimum")
                        .and_then(Value::as_f64)
                        .is_some_and(|m| m >= lo as f64);
                    if !keep_lo {
                        map.insert("minimum".into(), lo.into());
                    }
                    let keep_hi = map
                        .get("maximum")
                        .and_then(Value::as_f64)
                        .is_some_and(|m| m <= hi as f64);
                    if !keep_hi {
                        map.insert("maximum".into(), hi.into());
                    }
                } else if matches!(format.as_str(), "double" | "float") {
                    map.shift_remove("format");
                }
            }
            for v in map.values_mut() {
                numeric_formats_to_bounds(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(numeric_formats_to_bounds),
        _ => {}
    }
}

fn reshape_agent_union(schema: &mut Value) {
    let task = schema["$defs"]["Task"]
        .as_object_mut()
        .expect("Task definition");
    let variants = match task.remove("oneOf") {
        Some(Value::Array(v)) => v,
        _ => panic!("Task schema has no agent union"),
    };
    let mut names = Vec::new();
    let mut rules = Vec::new();
    for v in variants {
        let name = v["properties"]["agent"]["const"]
            .as_str()
            .expect("agent tag")
            .to_string();
        let mut input = v["properties"]["input_data"].clone();
        if let (Some(obj), Some(desc)) = (input.as_object_mut(), v.get("description")) {
            obj.insert("description".into(), desc.clone());
        }
        rules.push(json!({
            "if": {"properties": {"agent": {"const": name}}, "required": ["agent"]},
            "then": {"properties": {"input_data": input}}
        }));
        names.push(Value::String(name));
    }
    let props = task["properties"].as_object_mut().expect("Task properties");
    let mut ordered = Map::new();
    for (k, v) in std::mem::take(props) {
        ordered.insert(k.clone(), v);
        if k == "task_id" {
            ordered.insert(
                "agent".into(),
                json!({"description": "The agent that runs the task.", "type": "string", "enum": names}),
            );
            ordered.insert(
                "input_data".into(),
                json!({"description": "The agent's input; its schema depends on `agent`.", "type": "object"}),
            );
        }
    }
    *props = ordered;
    let required = task["required"].as_array_mut().expect("required");
    required.push("agent".into());
    required.push("input_data".into());
    task.insert("additionalProperties".into(), Value::Bool(false));
    task.insert("allOf".into(), Value::Array(rules));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_union_is_reshaped() {
        let s = batch_schema();
        let task = &s["$defs"]["Task"];
        assert!(task.get("oneOf").is_none());
        assert_eq!(task["additionalProperties"], json!(false));
        assert!(available_agents().contains(&"command".to_string()));
        assert_eq!(
            task["allOf"].as_array().unwrap().len(),
            available_agents().len()
        );
    }

    #[test]
    fn number_formats_become_bounds() {
        let text = batch_schema().to_string();
        assert!(!text.contains("\"format\""), "{text}");
        let config = &batch_schema()["$defs"]["BatchConfig"]["properties"];
        let breaker = &batch_schema()["$defs"]["BreakerConfig"]["properties"];
        assert_eq!(breaker["failure_threshold"]["maximum"], json!(u32::MAX));
        assert_eq!(breaker["failure_threshold"]["minimum"], json!(0));
        assert_eq!(config["max_workers"]["maximum"], json!(4096));
        assert_eq!(config["max_workers"]["minimum"], json!(1));
        assert_eq!(
            config["max_expanded_input_bytes"]["maximum"],
            json!(MAX_JSON_INTEGER)
        );
    }
}
