//! `run --rerun-failed TRACE`: run again only what did not succeed.
//!
//! The batch comes from the previous trace (or from `-f`, which must then agree with the trace on
//! every task it keeps). Tasks that succeeded keep their outputs, so `{{tasks.X.output...}}`
//! references still resolve; every other task runs, and with it everything downstream.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::batch::{Batch, Issue, ValidatedBatch, validate_value};
use crate::events::TaskStatus;
use crate::reporter::trace::read_trace;

/// What a rerun reuses from the previous run.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    pub previous_run_id: String,
    /// `outputs[i]`: the kept output of task `i`, `None` for tasks that run again.
    pub outputs: Vec<Option<Value>>,
}

impl Reuse {
    pub fn kept(&self) -> usize {
        self.outputs.iter().filter(|o| o.is_some()).count()
    }
}

/// Builds the batch and the reuse plan for a rerun. Problems (an unreadable trace, a batch that
/// changed under a kept task) are input errors, reported like validation issues.
pub fn prepare(
    trace_path: &Path,
    new_batch: Option<ValidatedBatch>,
) -> Result<(ValidatedBatch, Reuse), Vec<Issue>> {
    let trace = read_trace(trace_path).map_err(|e| vec![Issue::new("", e)])?;
    let succeeded: HashMap<&str, Option<&Value>> = trace
        .run
        .tasks
        .iter()
        .filter(|t| t.status == Some(TaskStatus::Success))
        .map(|t| (t.task_id.as_str(), t.output.as_ref()))
        .collect();
    let previous: HashMap<&str, &crate::batch::Task> = trace
        .batch
        .tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t))
        .collect();

    let validated = match new_batch {
        Some(v) => {
            let changed = changed_kept_tasks(&v.batch, &previous, &succeeded);
            if !changed.is_empty() {
                return Err(changed);
            }
            v
        }
        None => {
            let value = serde_json::to_value(&trace.batch).expect("batch serializes");
            validate_value(value).map_err(|issues| {
                let mut v = vec![Issue::new(
                    "",
                    format!(
                        "the batch recorded in '{}' no longer validates",
                        trace_path.display()
                    ),
                )];
                v.extend(issues);
                v
            })?
        }
    };
    let outputs = validated
        .batch
        .tasks
        .iter()
        .map(|t| {
            succeeded
                .get(t.task_id.as_str())
                .map(|o| o.cloned().unwrap_or(Value::Null))
        })
        .collect();
    Ok((
        validated,
        Reuse {
            previous_run_id: trace.run.run_id,
            outputs,
        },
    ))
}

/// Kept tasks whose definition differs between the previous run and the new batch.
fn changed_kept_tasks(
    batch: &Batch,
    previous: &HashMap<&str, &crate::batch::Task>,
    succeeded: &HashMap<&str, Option<&Value>>,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (i, task) in batch.tasks.iter().enumerate() {
        if !succeeded.contains_key(task.task_id.as_str()) {
            continue;
        }
        let Some(old) = previous.get(task.task_id.as_str()) else {
            continue;
        };
        let (a, b) = (
            serde_json::to_value(old).expect("task serializes"),
            serde_json::to_value(task).expect("task serializes"),
        );
        if a != b {
            let fields: Vec<String> = match (a.as_object(), b.as_object()) {
                (Some(a), Some(b)) => a
                    .keys()
                    .chain(b.keys())
                    .filter(|k| a.get(*k) != b.get(*k))
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
            issues.push(Issue::new(
                format!("/tasks/{i}"),
                format!(
                    "task '{}' succeeded in the previous run but changed since ({}); its old output \
                     cannot be reused: restore it, or run the batch without --rerun-failed",
                    task.task_id,
                    fields.join(", ")
                ),
            ));
        }
    }
    issues
}
