//! Tasks the dispatcher runs itself by adding tasks to the run: `batch` (a child batch, or a
//! fan-out over a list) and `first_success` (alternatives). This module turns such a task's
//! input into its children, validated in full as a batch of their own; the dispatcher splices
//! them into the run (so they share its worker limit, breakers, cancellation, events and trace,
//! as `<task_id>/<child id>`) and ends the task from their outcomes.
//!
//! Nothing here runs anything, and nothing here is executor-specific: the children's attempts go
//! to whatever executor the dispatcher has, like any other task's.

use serde_json::{Value, json};

use crate::agents::AgentInput;
use crate::agents::batch::{BatchInput, TaskBody};
use crate::agents::first_success::{FirstSuccessInput, Mode};
use crate::batch::{Issue, ValidatedBatch, ValidationContext};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// How a group's children decide its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// A child batch: ends when every child has; succeeds when every child did.
    Batch,
    /// Alternatives at once: the first success wins and the others are cancelled.
    Race,
    /// Alternatives one after another until one succeeds.
    Sequential,
}

/// A coordinated task's children, checked.
pub struct Children {
    pub kind: GroupKind,
    pub batch: ValidatedBatch,
    /// Whether the children are one level of `batch` nesting deeper (alternatives are not).
    pub nests: bool,
}

/// The children of a coordinated task, from its input (references already filled in), or the
/// failure that ends the task before any of them runs.
pub fn children(input: &AgentInput, ctx: &ValidationContext) -> Result<Children, Failure> {
    match input {
        AgentInput::Batch(input) => batch_children(input, ctx),
        AgentInput::FirstSuccess(input) => alternatives(input, ctx),
        other => Err(TaskError::permanent(
            ErrorKind::Internal,
            format!("the {} agent has no children", other.name()),
        )
        .into()),
    }
}

fn batch_children(input: &BatchInput, ctx: &ValidationContext) -> Result<Children, Failure> {
    let validated = match (&input.batch, &input.for_each, &input.task) {
        (Some(Value::String(text)), _, _) => {
            crate::batch::validate_text_with(text, ctx).map_err(|e| invalid(e, "child batch"))?
        }
        (Some(batch), _, _) => crate::batch::validate_value_with(batch.clone(), ctx)
            .map_err(|e| invalid(e, "child batch"))?,
        (None, Some(items), Some(body)) => {
            let items = list(items)?;
            let tasks = items
                .iter()
                .enumerate()
                .map(|(k, item)| fan_out_task(k, item, body))
                .collect::<Result<Vec<_>, _>>()?;
            crate::batch::validate_value_with(json!({"tasks": tasks}), ctx)
                .map_err(|e| invalid(e, "fan-out batch"))?
        }
        _ => {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                "set `batch`, or `for_each` with `task`",
            )
            .into());
        }
    };
    Ok(Children {
        kind: GroupKind::Batch,
        batch: with_child_defaults(validated),
        nests: true,
    })
}

fn alternatives(input: &FirstSuccessInput, ctx: &ValidationContext) -> Result<Children, Failure> {
    let tasks: Vec<Value> = input
        .alternatives
        .iter()
        .enumerate()
        .map(|(k, body)| {
            let mut task = json!({"task_id": format!("alt-{k}"), "agent": body.agent,
                                  "input_data": body.input_data});
            if let Some(t) = body.timeout_seconds {
                task["timeout_seconds"] = json!(t);
            }
            task
        })
        .collect();
    let batch = crate::batch::validate_value_with(json!({"tasks": tasks}), ctx)
        .map_err(|e| invalid(e, "alternatives"))?;
    Ok(Children {
        kind: match input.mode {
            Mode::Race => GroupKind::Race,
            Mode::Sequential => GroupKind::Sequential,
        },
        batch,
        nests: false,
    })
}

/// The child's `config.timeout_seconds` and `config.retries` as its tasks' own, where they set
/// none: the rest of its config is the parent run's.
fn with_child_defaults(mut v: ValidatedBatch) -> ValidatedBatch {
    let config = std::mem::take(&mut v.batch.config);
    for t in &mut v.batch.tasks {
        t.timeout_seconds = t.timeout_seconds.or(config
            .timeout_seconds
            .map(crate::batch::TaskTimeout::Seconds));
        t.retries = t.retries.or(config.retries);
    }
    v
}

/// The elements to fan out over.
fn list(items: &Value) -> Result<Vec<Value>, Failure> {
    let bad = |what: String| -> Failure {
        TaskError::permanent(
            ErrorKind::InvalidInput,
            format!("for_each must be a JSON array (or a string holding one), but {what}"),
        )
        .into()
    };
    match items {
        Value::Array(a) => Ok(a.clone()),
        Value::String(s) => match serde_json::from_str::<Value>(s.trim()) {
            Ok(Value::Array(a)) => Ok(a),
            Ok(other) => Err(bad(format!("the string holds {}", kind(&other)))),
            Err(e) => Err(bad(format!("the string is not JSON ({e})"))),
        },
        other => Err(bad(format!("it is {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Element `k` of a fan-out as a task: `{{item}}`, `{{item.<field>...}}` and `{{index}}` in the
/// template's strings filled in.
fn fan_out_task(k: usize, item: &Value, body: &TaskBody) -> Result<Value, Failure> {
    let mut input = Value::Object(body.input_data.clone());
    fill_items(&mut input, k, item).map_err(|m| {
        Failure::from(TaskError::permanent(
            ErrorKind::InvalidInput,
            format!("for_each element {k}: {m}"),
        ))
    })?;
    let mut task = json!({"task_id": k.to_string(), "agent": body.agent, "input_data": input});
    if let Some(t) = body.timeout_seconds {
        task["timeout_seconds"] = json!(t);
    }
    Ok(task)
}

fn fill_items(v: &mut Value, k: usize, item: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains("{{") => *s = fill_string(s, k, item)?,
        Value::Array(a) => {
            for x in a {
                fill_items(x, k, item)?;
            }
        }
        Value::Object(m) => {
            for x in m.values_mut() {
                fill_items(x, k, item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn fill_string(s: &str, k: usize, item: &Value) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = after[..close].trim();
        if name == "index" {
            out.push_str(&k.to_string());
        } else if name == "item" || name.starts_with("item.") {
            let fields: Vec<String> = name.split('.').skip(1).map(str::to_string).collect();
            let value = crate::batch::template::lookup(item, &fields)
                .ok_or_else(|| format!("has no field '{}'", fields.join(".")))?;
            out.push_str(&crate::batch::template::render(value));
        } else {
            // Not ours (e.g. a reference the child batch checks itself): left as written.
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The failure of a task whose children do not pass validation: the child's issues, each with
/// its JSON Pointer into the child batch (for a fan-out, the batch of one task per element; for
/// alternatives, into `alternatives`).
fn invalid(issues: Vec<Issue>, what: &str) -> Failure {
    let errors: Vec<Value> = issues
        .iter()
        .map(|i| {
            let path = match what {
                "alternatives" => i
                    .path
                    .strip_prefix("/tasks")
                    .map(|rest| format!("/alternatives{rest}"))
                    .unwrap_or_else(|| i.path.clone()),
                _ => i.path.clone(),
            };
            json!({"path": path, "message": i.message})
        })
        .collect();
    let shown: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| {
            let (path, message) = (e["path"].as_str(), e["message"].as_str());
            format!("{}: {}", path.unwrap_or(""), message.unwrap_or(""))
        })
        .collect();
    let more = match errors.len() - shown.len() {
        0 => String::new(),
        n => format!("; ... and {n} more"),
    };
    let message = format!(
        "{what} invalid ({} problem{}; nothing of it ran): {}{more}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        shown.join("; ")
    );
    Failure {
        error: TaskError::permanent(ErrorKind::InvalidBatch, message),
        output: Some(json!({"status": "invalid", "summary": {}, "results": [], "errors": errors})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_fill_in_strings() {
        let item = json!({"name": "b", "n": 2});
        assert_eq!(
            fill_string(
                "x {{item.name}} {{ index }} {{item}} {{tasks.a.output}}",
                1,
                &item
            )
            .unwrap(),
            r#"x b 1 {"name":"b","n":2} {{tasks.a.output}}"#
        );
        assert!(fill_string("{{item.nope}}", 0, &item).is_err());
        assert_eq!(fill_string("{{item}}", 0, &json!("s")).unwrap(), "s");
    }
}
