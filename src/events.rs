//! The public event stream of a run: the single source for the result summary, the trace, and
//! every other output. A new output is a new [`EventSink`], never a new code path in the runner.
//!
//! Events read like a story: run started, task ready, attempt started, attempt finished, retry
//! scheduled, task finished (success, error, timeout, skipped or cancelled), breaker changed,
//! run cancelled, run finished.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::FilesTouched;
use crate::policy::breaker::BreakerState;
use crate::task_error::TaskError;

/// One thing that happened, numbered and time-stamped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// Wall-clock time, RFC 3339.
    pub at: String,
    /// Milliseconds since the run started (monotonic clock).
    pub elapsed_ms: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        /// Set on `--rerun-failed`: the run whose successful outputs are reused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_run_id: Option<String>,
        /// The effective settings of the run.
        config: Value,
        tasks: Vec<TaskInfo>,
    },
    /// All dependencies succeeded (or there were none): the task may start when a worker is free.
    TaskReady {
        task_id: String,
    },
    AttemptStarted {
        task_id: String,
        /// 1 for the first attempt.
        attempt: u32,
        /// Worker lane, from 0 to max_workers - 1 (for timelines).
        worker: usize,
        /// The circuit breaker this attempt counts against (metrics, reports); absent when the
        /// task has none (local work, or breakers turned off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        breaker: Option<String>,
        /// The timeout of an attempt of a `"auto"` task: seconds, source (`history` or
        /// `fallback`) and the samples it came from; absent for every other task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<crate::history::ChosenTimeout>,
    },
    AttemptFinished {
        task_id: String,
        attempt: u32,
        outcome: AttemptOutcome,
        duration_ms: f64,
        error: Option<TaskError>,
        /// The worker that ran the attempt, when it ran on another machine (`--redis`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        executed_by: Option<String>,
        /// The files the attempt read and wrote, as its agent recorded them (also when it
        /// failed or was cancelled); absent when none.
        #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
        files: FilesTouched,
    },
    RetryScheduled {
        task_id: String,
        /// The attempt that will run after the delay.
        attempt: u32,
        delay_ms: u64,
    },
    /// The task reached its final status.
    TaskFinished {
        task_id: String,
        status: TaskStatus,
        output: Option<Value>,
        error: Option<TaskError>,
        attempts: u32,
        /// The output was reused from the previous run (`--rerun-failed`), not produced now.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reused: bool,
        /// The output came from the result cache (`"cache"` on the task), not from running it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
        /// The files of the task's last attempt (for a reused or cached output: of the run
        /// that produced it); absent when none.
        #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
        files: FilesTouched,
    },
    /// A task with a `cache` object was looked up in the result cache before it would start
    /// (or, on `--rerun-failed`, its key was checked against the previous run's).
    CacheChecked {
        task_id: String,
        /// The stored result is used: the task does not run.
        hit: bool,
        /// The task's cache key (a SHA-256); absent when none could be made (`reason` says why).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Why a stored result was not used, or why the task is not cacheable, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// On a hit: how many declared output files were restored.
        #[serde(default, skip_serializing_if = "is_zero")]
        files_restored: usize,
    },
    /// A running attempt reported progress (e.g. an MCP server's progress notification).
    TaskProgress {
        task_id: String,
        attempt: u32,
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    BreakerChanged {
        breaker: String,
        from: BreakerState,
        to: BreakerState,
    },
    /// Attempts wait in the Redis queue for agents that no live worker serves (`queued` of
    /// them, for `agents`); an empty `agents` says a worker turned up and the wait is over.
    WaitingForWorkers {
        queued: usize,
        agents: Vec<String>,
    },
    /// No new tasks will start.
    RunCancelled {
        reason: CancelReason,
    },
    RunFinished {
        status: RunStatus,
        summary: Summary,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The static facts about a task, announced when the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task_id: String,
    pub agent: String,
    pub description: String,
    pub dependencies: Vec<String>,
    /// The task's `input_data` as given (before output substitution), so consumers can label by
    /// fields such as an `mcp` task's server and tool. Redacted like everything else on output.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
}

impl TaskInfo {
    /// What `run_started` says of a task of the batch.
    pub fn of(task: &crate::batch::Task) -> TaskInfo {
        TaskInfo {
            task_id: task.task_id.clone(),
            agent: task.agent.name().to_string(),
            description: task.description.clone(),
            dependencies: task.dependencies.clone(),
            input: task.agent.input_value(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Success,
    Error,
    Timeout,
    Skipped,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Success => "success",
            TaskStatus::Error => "error",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    Error,
    Timeout,
    Cancelled,
    /// The runner stopped (was killed) while the attempt ran; `resume` runs the task again.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every task succeeded.
    Success,
    /// Some tasks succeeded, some did not.
    Partial,
    /// No task succeeded.
    Failure,
}

/// Why a run stopped starting tasks before the batch was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    FailFast,
    Sigint,
    Sigterm,
    /// A client asked for it (`DELETE /v1/runs/{run_id}`).
    Request,
    /// The executor could not go on (Redis stayed unreachable past the reconnect bound).
    ExecutorFailed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total_tasks: usize,
    pub successful: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub skipped: usize,
    pub cancelled: usize,
    /// Successful tasks whose output came from the result cache (they did not run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached: usize,
    pub total_time_ms: u64,
    /// Model tokens and cost summed over the tasks' outputs (`output.usage`); absent when no
    /// task used a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageTotals>,
    /// File records over the tasks' results (`files`); absent when no task recorded any.
    #[serde(default, skip_serializing_if = "FileTotals::is_empty")]
    pub files: FileTotals,
}

/// How many file records the results of a run hold (a file read by two tasks counts twice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTotals {
    pub read: u64,
    pub written: u64,
}

impl FileTotals {
    pub fn is_empty(&self) -> bool {
        self.read == 0 && self.written == 0
    }
}

/// Model usage of a whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub model_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars, over the calls whose cost is known.
    pub cost_usd: f64,
}

impl Summary {
    /// Adds the `usage` object of a task's output (as agents that call models report it).
    pub fn add_usage(&mut self, output: &Value) {
        let Some(u) = output.get("usage").filter(|u| u.is_object()) else {
            return;
        };
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let t = self.usage.get_or_insert_with(UsageTotals::default);
        t.model_calls += n("model_calls");
        t.input_tokens += n("input_tokens");
        t.output_tokens += n("output_tokens");
        t.cost_usd += u.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0);
    }

    /// Adds a task's file records.
    pub fn add_files(&mut self, files: &FilesTouched) {
        self.files.read += files.read.len() as u64;
        self.files.written += files.written.len() as u64;
    }

    pub fn count(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Success => self.successful += 1,
            TaskStatus::Error => self.failed += 1,
            TaskStatus::Timeout => self.timed_out += 1,
            TaskStatus::Skipped => self.skipped += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
        }
    }

    pub fn run_status(&self) -> RunStatus {
        if self.successful == self.total_tasks {
            RunStatus::Success
        } else if self.successful == 0 {
            RunStatus::Failure
        } else {
            RunStatus::Partial
        }
    }
}

/// A consumer of the event stream. Delivery is synchronous and in order, which gives back-pressure
/// for free: a slow sink slows the dispatcher rather than buffering without bound.
pub trait EventSink: Send {
    fn on_event(&mut self, event: &Event);
}

/// Wall-clock time as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}
