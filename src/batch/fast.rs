//! The streaming path for valid batches: the task list is split into raw JSON slices of the
//! input text, and each task is parsed, checked against its schema and converted to its typed
//! form on its own, so only one task's JSON tree exists at a time. This keeps checking 100,000
//! tasks fast and small in memory.
//!
//! It only answers "valid, here is the batch" or "not sure": on any problem it returns `None`
//! and the full check (`validate::validate_value_with`) runs instead, which finds and words every
//! problem. So the error messages have exactly one source.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::batch::limits::Limits;
use crate::batch::schema::batch_validator;
use crate::batch::validate::{RefSite, collect_sites, graph_input, reference_issues};
use crate::batch::{Batch, BatchConfig, Task, ValidatedBatch};
use crate::graph::Plan;

/// Nesting depth of a task object in a batch: the document, `tasks`, the task.
const TASK_DEPTH: usize = 3;

/// The checked batch, or `None` when anything at all is off (the caller then checks in full).
pub fn validate(text: &str, limits: &Limits) -> Option<ValidatedBatch> {
    // Duplicate keys: the last one wins, as when parsing into a `Value`.
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let raw_tasks: Vec<&RawValue> = serde_json::from_str(top.get("tasks")?.get()).ok()?;
    if raw_tasks.len() > limits.max_tasks {
        return None;
    }

    // Everything but the tasks, checked against the whole-batch schema with an empty task list.
    let mut rest = serde_json::Map::new();
    for (key, raw) in &top {
        let value = if key == "tasks" {
            Value::Array(Vec::new())
        } else {
            serde_json::from_str(raw.get()).ok()?
        };
        rest.insert(key.clone(), value);
    }
    let rest = Value::Object(rest);
    if !limits.check_value(&rest).is_empty() || !batch_validator().is_valid(&rest) {
        return None;
    }
    let config: BatchConfig = match rest.get("config") {
        Some(c) => serde_json::from_value(c.clone()).ok()?,
        None => BatchConfig::default(),
    };

    // One compiled validator serves both: each task is checked as the only task of a batch.
    // (Compiling the schema is most of the start-up time, so it is compiled once.)
    let validator = batch_validator();
    let mut wrapper = serde_json::Map::new();
    let mut tasks: Vec<Task> = Vec::with_capacity(raw_tasks.len());
    let mut inputs = Vec::with_capacity(raw_tasks.len());
    let mut agents: Vec<Option<&'static str>> = Vec::with_capacity(raw_tasks.len());
    let mut sites: Vec<RefSite> = Vec::new();
    for (i, raw) in raw_tasks.iter().enumerate() {
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        if !limits.check_value_at(&value, TASK_DEPTH).is_empty() {
            return None;
        }
        wrapper.insert("tasks".into(), Value::Array(vec![value]));
        let wrapped = Value::Object(std::mem::take(&mut wrapper));
        let valid = validator.is_valid(&wrapped);
        let Value::Object(mut map) = wrapped else {
            unreachable!("built as an object")
        };
        let value = match map.swap_remove("tasks") {
            Some(Value::Array(mut one)) => one.pop().expect("one task"),
            _ => unreachable!("inserted above"),
        };
        wrapper = map;
        if !valid {
            return None;
        }
        inputs.push(graph_input(&value));
        if let Some(input) = value.get("input_data") {
            collect_sites(i, input, &mut sites);
        }
        let task: Task = serde_json::from_value(value).ok()?;
        agents.push(Some(task.agent.name()));
        tasks.push(task);
    }
    drop(top);

    let plan = Plan::build(&inputs).ok()?;
    if !sites.is_empty() && !reference_issues(&sites, &agents, &inputs).is_empty() {
        return None;
    }
    Some(ValidatedBatch {
        batch: Batch { tasks, config },
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_value_with;

    /// The streaming path and the full check agree on the batch they accept.
    fn same(text: &str) {
        let limits = Limits::default();
        let fast = validate(text, &limits).expect("fast path accepts");
        let ctx = crate::batch::ValidationContext::default();
        let full = validate_value_with(serde_json::from_str(text).unwrap(), &ctx).unwrap();
        assert_eq!(
            serde_json::to_value(&fast.batch).unwrap(),
            serde_json::to_value(&full.batch).unwrap()
        );
        assert_eq!(
            serde_json::to_value(fast.plan.summary()).unwrap(),
            serde_json::to_value(full.plan.summary()).unwrap()
        );
    }

    #[test]
    fn accepts_what_the_full_check_accepts() {
        same(r#"{"tasks": []}"#);
        same(
            r#"{"tasks": [
            {"task_id": "a", "agent": "command", "input_data": {"argv": ["echo", "x"]}},
            {"task_id": "b", "agent": "command", "dependencies": ["a"], "timeout_seconds": 2,
             "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}"], "env": {"K": "v"}}}],
            "config": {"max_workers": 2, "circuit_breaker": {"failure_threshold": 1}}}"#,
        );
    }

    #[test]
    fn declines_anything_off() {
        let limits = Limits::default();
        for bad in [
            r#"{"tasks": [], "extra": 1}"#,
            r#"{"tasks": {}}"#,
            r#"{"config": {}}"#,
            r#"{"tasks": [], "config": {"max_workers": 0}}"#,
            r#"{"tasks": [{"task_id": "a b", "agent": "command", "input_data": {"argv": ["x"]}}]}"#,
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": []}}]}"#,
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["x"]}, "dependencies": ["a"]}]}"#,
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["{{tasks.a.output.x}}"]}}]}"#,
            r#"{"tasks": [] "#,
        ] {
            assert!(validate(bad, &limits).is_none(), "accepted {bad}");
        }
        let tight = Limits {
            max_tasks: 0,
            ..Limits::default()
        };
        assert!(
            validate(
                r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["x"]}}]}"#,
                &tight
            )
            .is_none()
        );
    }
}
