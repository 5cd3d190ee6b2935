//! The result document printed on stdout: run status, summary, and one entry per task in input
//! order.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{RunStatus, Summary, TaskStatus};
use crate::reporter::recorder::RunRecord;
use crate::task_error::TaskError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub status: RunStatus,
    pub run_id: String,
    /// Set on `--rerun-failed`: the run whose successful outputs were reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run_id: Option<String>,
    pub trace_file: String,
    pub summary: Summary,
    pub results: Vec<TaskResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub agent: String,
    pub status: TaskStatus,
    pub output: Option<Value>,
    pub error: Option<TaskError>,
    pub attempts: u32,
    pub execution_time_ms: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The output was reused from the previous run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

impl RunResult {
    pub fn from_record(record: &RunRecord, trace_file: &Path) -> RunResult {
        RunResult {
            status: record.status.unwrap_or(RunStatus::Failure),
            run_id: record.run_id.clone(),
            previous_run_id: record.previous_run_id.clone(),
            trace_file: trace_file.display().to_string(),
            summary: record.summary.clone(),
            results: record
                .tasks
                .iter()
                .map(|t| TaskResult {
                    task_id: t.task_id.clone(),
                    agent: t.agent.clone(),
                    status: t.status.unwrap_or(TaskStatus::Cancelled),
                    output: t.output.clone(),
                    error: t.error.clone(),
                    attempts: t.attempts.len() as u32,
                    execution_time_ms: t.execution_time_ms,
                    started_at: t.started_at.clone(),
                    finished_at: t.finished_at.clone(),
                    reused: t.reused,
                })
                .collect(),
        }
    }
}
