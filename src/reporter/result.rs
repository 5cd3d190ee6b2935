//! The result document printed on stdout: run status, summary, and one entry per task in input
//! order.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::events::{RunStatus, Summary, TaskStatus};
use crate::files::FilesTouched;
use crate::reporter::ledger::RunLog;
use crate::reporter::recorder::{RunRecord, TaskRecord};
use crate::reporter::stream::{Part, Spliced};
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
    pub results: TaskResults,
}

/// The `results` of a run: a list, or (for a run just finished) read from the run's journal
/// one task at a time whenever they are written, so a run of many tasks never holds them all.
#[derive(Clone)]
pub enum TaskResults {
    List(Vec<TaskResult>),
    Log(Arc<RunLog>),
}

impl TaskResults {
    /// Every result, in input order (a result that cannot be read back is an error).
    pub fn iter(&self) -> Box<dyn Iterator<Item = Result<TaskResult, String>> + '_> {
        match self {
            TaskResults::List(list) => Box::new(list.iter().cloned().map(Ok)),
            TaskResults::Log(log) => {
                Box::new(log.task_records().map(|r| r.map(|r| TaskResult::of(&r))))
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TaskResults::List(list) => list.len(),
            TaskResults::Log(log) => log.batch().tasks.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All of them in memory.
    pub fn to_vec(&self) -> Result<Vec<TaskResult>, String> {
        self.iter().collect()
    }
}

impl std::fmt::Debug for TaskResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_vec() {
            Ok(list) => list.fmt(f),
            Err(e) => write!(f, "<{e}>"),
        }
    }
}

impl PartialEq for TaskResults {
    fn eq(&self, other: &Self) -> bool {
        self.to_vec().ok() == other.to_vec().ok()
    }
}

impl Serialize for TaskResults {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::reporter::stream::Seq::new(self.iter()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskResults {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(TaskResults::List)
    }
}

impl From<Vec<TaskResult>> for TaskResults {
    fn from(list: Vec<TaskResult>) -> Self {
        TaskResults::List(list)
    }
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
    /// The output came from the result cache: the task did not run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The worker that ran the last attempt (`--redis` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    /// Attempts lost with their worker (`worker_lost`) and started again; the trace has each.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub workers_lost: u32,
    /// The files the task's last attempt read and wrote (path, size, SHA-256); for a reused or
    /// cached output, those of the run that produced it. Absent when none.
    #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
    pub files: FilesTouched,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskResult {
    pub fn of(t: &TaskRecord) -> TaskResult {
        TaskResult {
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
            cached: t.cached,
            executed_by: t.attempts.last().and_then(|a| a.executed_by.clone()),
            workers_lost: t
                .attempts
                .iter()
                .filter(|a| {
                    a.error
                        .as_ref()
                        .is_some_and(|e| e.kind == crate::task_error::ErrorKind::WorkerLost)
                })
                .count() as u32,
            files: t.files.clone(),
        }
    }
}

impl RunResult {
    pub fn from_record(record: &RunRecord, trace_file: &Path) -> RunResult {
        RunResult {
            results: TaskResults::List(record.tasks.iter().map(TaskResult::of).collect()),
            ..RunResult::head(record, trace_file)
        }
    }

    /// The result of a run just finished, its tasks' results read back from its log.
    pub fn from_log(log: Arc<RunLog>, trace_file: &Path) -> RunResult {
        RunResult {
            results: TaskResults::Log(log.clone()),
            ..RunResult::head(log.head(), trace_file)
        }
    }

    fn head(record: &RunRecord, trace_file: &Path) -> RunResult {
        RunResult {
            status: record.status.unwrap_or(RunStatus::Failure),
            run_id: record.run_id.clone(),
            previous_run_id: record.previous_run_id.clone(),
            trace_file: trace_file.display().to_string(),
            summary: record.summary.clone(),
            results: TaskResults::List(Vec::new()),
        }
    }

    /// The document redacted, for writing: the same as serializing it and redacting the whole,
    /// but one task at a time.
    pub fn redacted(&self) -> Spliced<'_> {
        let skeleton = RunResult {
            results: TaskResults::List(Vec::new()),
            ..self.clone()
        };
        Spliced {
            skeleton: crate::redact::redacted(&skeleton),
            splices: vec![("results", Part::Results(&self.results))],
        }
    }
}
