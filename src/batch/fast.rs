//! The fast path for valid batches. Each task is deserialized straight from its slice of the input
//! text into its typed form (no `serde_json::Value` tree, no `#[serde(flatten)]` buffering), and
//! the few rules of the JSON Schema that serde does not enforce (id pattern and length, ranges,
//! non-empty fields, objects where serde would also take an array) are checked by hand. The size
//! limits are checked in one pass over the text. This keeps checking 100,000 tasks fast and small
//! in memory.
//!
//! It only answers "valid, here is the batch" or "not sure": on any problem, and wherever serde
//! and the schema could disagree, it returns `None` and the full check
//! (`validate::validate_value_with`) runs instead, which finds and words every problem. So the
//! error messages have exactly one source. Agents whose inputs hold enums (`coder`, `debug`:
//! serde also takes `{"Effect": null}` for `"Effect"`) are checked per task against the compiled
//! schema instead of by hand. The fuzz target checks that whatever this path accepts, the full
//! check accepts too, read the same way (`exercise::exercise`).

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::agents::{AgentInput, CommandInput, McpInput};
use crate::batch::limits::Limits;
use crate::batch::schema::batch_validator;
use crate::batch::validate::{RefSite, collect_sites, reference_issues};
use crate::batch::{Batch, BatchConfig, Task, ValidatedBatch};
use crate::graph::{GraphInput, Plan};

/// The batch document, with the tasks and the configuration left as slices of the text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    #[serde(borrow)]
    tasks: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    config: Present<'a>,
}

/// A field that may be absent; unlike `Option`, an explicit `null` is kept (as raw `null`), since
/// the schema does not allow it where an absent field is fine.
#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Present(Some(raw)))
    }
}

/// One task, flat: the agent's input stays a slice of the text until the agent is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask<'a> {
    task_id: String,
    #[serde(borrow)]
    agent: &'a str,
    #[serde(borrow)]
    input_data: &'a RawValue,
    #[serde(default)]
    description: String,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
    #[serde(default)]
    retries: Option<u32>,
}

/// The checked batch, or `None` when anything at all is off (the caller then checks in full).
pub fn validate(text: &str, limits: &Limits) -> Option<ValidatedBatch> {
    // serde reads a struct from a JSON array too; the schema wants objects.
    if !is_object(text) || !within_limits(text, limits) {
        return None;
    }
    let raw: RawBatch = serde_json::from_str(text).ok()?;
    if raw.tasks.len() > limits.max_tasks {
        return None;
    }
    let config = match raw.config.0 {
        Some(c) => config(c)?,
        None => BatchConfig::default(),
    };

    let mut tasks: Vec<Task> = Vec::with_capacity(raw.tasks.len());
    let mut sites: Vec<RefSite> = Vec::new();
    for (i, raw) in raw.tasks.iter().enumerate() {
        tasks.push(task(i, raw, &mut sites)?);
    }
    drop(raw);

    let ids = tasks.iter().map(|t| t.task_id.clone()).collect();
    let plan = Plan::build_valid(ids, |i| &tasks[i].dependencies)?;
    if !sites.is_empty() {
        let inputs: Vec<GraphInput> = tasks
            .iter()
            .map(|t| GraphInput {
                id: Some(t.task_id.clone()),
                deps: t.dependencies.iter().cloned().enumerate().collect(),
            })
            .collect();
        let agents: Vec<Option<&str>> = tasks.iter().map(|t| Some(t.agent.name())).collect();
        if !reference_issues(&sites, &agents, &inputs).is_empty() {
            return None;
        }
    }
    Some(ValidatedBatch {
        batch: Batch { tasks, config },
        plan,
    })
}

/// Task `i`, typed and checked; its strings holding `{{` are added to `sites`.
fn task(i: usize, raw: &RawValue, sites: &mut Vec<RefSite>) -> Option<Task> {
    if !is_object(raw.get()) {
        return None;
    }
    let t: RawTask = serde_json::from_str(raw.get()).ok()?;
    let input = t.input_data.get();
    if !is_object(input)
        || !is_task_id(&t.task_id)
        || !t.dependencies.iter().all(|d| is_task_id(d))
        || t.timeout_seconds.is_some_and(|s| s < 0.001)
        || t.retries.is_some_and(|r| r > 100)
    {
        return None;
    }
    let agent = match t.agent {
        "command" => {
            let input: CommandInput = serde_json::from_str(input).ok()?;
            (!input.argv.is_empty()).then_some(AgentInput::Command(input))?
        }
        "mcp" => {
            let input: McpInput = serde_json::from_str(input).ok()?;
            (!input.tool.is_empty()).then_some(AgentInput::Mcp(input))?
        }
        // Any other agent: the schema checks the task, as the full check would.
        _ => return checked_by_schema(i, raw, sites),
    };
    // A `{{` in a string shows in the text as `{{` or, escaped, with a `\u`.
    if input.contains("{{") || input.contains("\\u") {
        let value: Value = serde_json::from_str(input).ok()?;
        collect_sites(i, &value, sites);
    }
    Some(Task {
        task_id: t.task_id,
        agent,
        description: t.description,
        dependencies: t.dependencies,
        timeout_seconds: t.timeout_seconds,
        retries: t.retries,
    })
}

/// Task `i` checked against the compiled batch schema as the only task of a batch.
fn checked_by_schema(i: usize, raw: &RawValue, sites: &mut Vec<RefSite>) -> Option<Task> {
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    let mut wrapper = serde_json::Map::new();
    wrapper.insert("tasks".into(), Value::Array(vec![value]));
    let mut wrapped = Value::Object(wrapper);
    if !batch_validator().is_valid(&wrapped) {
        return None;
    }
    let value = wrapped["tasks"][0].take();
    if let Some(input) = value.get("input_data") {
        collect_sites(i, input, sites);
    }
    serde_json::from_value(value).ok()
}

/// The batch's `config`, checked by hand against the schema's rules.
fn config(raw: &RawValue) -> Option<BatchConfig> {
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    // serde reads a struct from a JSON array too; the schema wants objects.
    if !value.is_object() || value.get("circuit_breaker").is_some_and(|b| !b.is_object()) {
        return None;
    }
    let c: BatchConfig = serde_json::from_value(value).ok()?;
    let ok = c.max_workers.is_none_or(|w| (1..=4096).contains(&w))
        && c.timeout_seconds.is_none_or(|s| s >= 0.001)
        && c.trace_dir.as_ref().is_none_or(|d| !d.is_empty())
        && c.retries.is_none_or(|r| r <= 100)
        && c.retry_backoff_ms.is_none_or(|ms| ms <= 3_600_000)
        && c.retry_backoff_max_ms.is_none_or(|ms| ms <= 3_600_000)
        && c.max_output_bytes.is_none_or(|b| b >= 1)
        && c.circuit_breaker
            .recovery_timeout_seconds
            .is_none_or(|s| s >= 0.0);
    ok.then_some(c)
}

/// The schema's task id rule: 1 to 128 of `A-Za-z0-9_.-`.
fn is_task_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Whether the text stays within the nesting and string limits, judged from the text alone:
/// nesting by counting brackets outside strings, strings by their escaped length (never shorter
/// than the string itself). For text that is not JSON the answer does not matter: parsing fails.
fn within_limits(text: &str, limits: &Limits) -> bool {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(at) = memchr::memchr3(b'"', b'{', b'[', &b[i..]) {
        // Closing brackets between here and the next opening one or string.
        depth = depth.saturating_sub(
            b[i..i + at]
                .iter()
                .filter(|&&c| c == b'}' || c == b']')
                .count(),
        );
        i += at;
        if b[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            loop {
                let Some(k) = memchr::memchr2(b'"', b'\\', &b[j..]) else {
                    return true;
                };
                j += k;
                if b[j] == b'\\' {
                    j += 2;
                    if j >= b.len() {
                        return true;
                    }
                } else {
                    break;
                }
            }
            if j - start > limits.max_string_bytes {
                return false;
            }
            i = j + 1;
        } else {
            depth += 1;
            if depth > limits.max_depth {
                return false;
            }
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_value_with;

    /// The fast path and the full check agree on the batch they accept.
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
             "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}"], "env": {"K": "v"}}},
            {"task_id": "c", "agent": "command", "dependencies": ["b"], "retries": null,
             "input_data": {"argv": ["echo", "{\u007btasks.b.output.stdout}}"], "cwd": null}},
            {"task_id": "m", "agent": "mcp", "description": "call",
             "input_data": {"tool": "echo", "arguments": {"message": "hi", "n": [1, {"x": 2}]}}},
            {"task_id": "d", "agent": "coder", "input_data": {"contract_description": "x",
             "node_type": "Effect", "output_path": "out.py"}}],
            "config": {"max_workers": 2, "trace_dir": "t", "circuit_breaker": {"failure_threshold": 1}}}"#,
        );
    }

    #[test]
    fn declines_anything_off() {
        let limits = Limits::default();
        let cmd = r#""agent": "command", "input_data": {"argv": ["x"]}"#;
        for bad in [
            r#"{"tasks": [], "extra": 1}"#.to_string(),
            r#"{"tasks": {}}"#.into(),
            r#"{"config": {}}"#.into(),
            r#"[[]]"#.into(),
            r#"{"tasks": [], "config": null}"#.into(),
            r#"{"tasks": [], "config": [null, null]}"#.into(),
            r#"{"tasks": [], "config": {"circuit_breaker": [1, 2]}}"#.into(),
            r#"{"tasks": [], "config": {"max_workers": 0}}"#.into(),
            r#"{"tasks": [], "config": {"retry_backoff_ms": 3600001}}"#.into(),
            r#"{"tasks": [], "config": {"trace_dir": ""}}"#.into(),
            format!(r#"{{"tasks": [{{"task_id": "a b", {cmd}}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "{}", {cmd}}}]}}"#, "x".repeat(129)),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "timeout_seconds": 0}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "retries": 101}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "description": null}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": null}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": ["a"]}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": [""]}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}}}, {{"task_id": "a", {cmd}}}]}}"#),
            r#"{"tasks": [["a", "command", {"argv": ["x"]}]]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": [["x"]]}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": []}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["x"], "shell": 1}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "nope", "input_data": {"argv": ["x"]}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": ""}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": "t", "arguments": []}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "coder", "input_data": {"contract_description": "x",
                "node_type": {"Effect": null}, "output_path": "o.py"}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["{{tasks.a.output.x}}"]}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["{\u007btasks.zz.output.x}}"]}}]}"#.into(),
            r#"{"tasks": [] "#.into(),
        ] {
            assert!(validate(&bad, &limits).is_none(), "accepted {bad}");
            assert!(
                crate::batch::validate_text(&bad).is_err(),
                "the full check accepts {bad}"
            );
        }
        // Duplicate keys: the full check takes the last one; this path leaves them to it.
        for dup in [
            r#"{"tasks": [], "tasks": []}"#.to_string(),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "task_id": "b"}}]}}"#),
        ] {
            assert!(validate(&dup, &limits).is_none(), "accepted {dup}");
            assert!(crate::batch::validate_text(&dup).is_ok(), "{dup}");
        }
        let one = format!(r#"{{"tasks": [{{"task_id": "a", {cmd}}}]}}"#);
        for tight in [
            Limits {
                max_tasks: 0,
                ..Limits::default()
            },
            Limits {
                max_depth: 4,
                ..Limits::default()
            },
            Limits {
                max_string_bytes: 9,
                ..Limits::default()
            },
        ] {
            assert!(validate(&one, &tight).is_none(), "{tight:?}");
        }
        let roomy = Limits {
            max_depth: 5,
            max_string_bytes: 10,
            ..Limits::default()
        };
        assert!(validate(&one, &roomy).is_some());
    }

    #[test]
    fn limits_scan_counts_nesting_and_escaped_strings() {
        let limits = Limits {
            max_depth: 2,
            max_string_bytes: 4,
            ..Limits::default()
        };
        assert!(within_limits(r#"{"a": [1, "]]]]"], "b": {}}"#, &limits));
        assert!(!within_limits(r#"{"a": [[1]]}"#, &limits));
        assert!(within_limits(r#"[{}, {}, [], {"k": "\"\\"}]"#, &limits));
        assert!(!within_limits(r#"{"abcde": 1}"#, &limits));
        assert!(!within_limits(r#"["\"\"\""]"#, &limits));
        assert!(within_limits(r#"["\"\"" , "#, &limits));
    }
}
