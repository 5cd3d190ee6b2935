//! The input JSON Schema, derived from the Rust types and reshaped for good error messages.
//!
//! schemars renders the agent union as a `oneOf`, whose failures read "not valid under any of the
//! schemas listed in oneOf". We turn it into an `agent` enum plus one `if agent == X then
//! input_data: <X's schema>` per agent, so a bad `input_data` is reported by that agent's own schema
//! with a precise JSON Pointer.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::batch::Batch;

/// The schema as published (`dispatch_runner schema`, `schemas/task-batch.schema.json`).
pub fn batch_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = serde_json::to_value(schemars::schema_for!(Batch)).expect("schema");
        reshape_agent_union(&mut schema);
        schema
    })
}

/// The compiled validator for [`batch_schema`].
pub fn batch_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| jsonschema::validator_for(batch_schema()).expect("schema compiles"))
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
}
