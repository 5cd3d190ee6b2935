//! What an attempt gets from the runner besides its input. Agents and the model backends both
//! read it, so it lives outside either (`llm` must not depend on the agents it serves).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::process::Reaper;
use crate::runner::executor::AttemptId;
use crate::services::Services;

/// What an attempt gets from the runner besides its input.
#[derive(Clone)]
pub struct AgentContext {
    pub task_id: String,
    /// Cap for each captured output stream.
    pub max_output_bytes: usize,
    /// Time between TERM and KILL when a process group is stopped.
    pub kill_grace: Duration,
    pub reaper: Reaper,
    /// Run-wide shared state (configuration, sessions, clients).
    pub services: Arc<Services>,
    /// Outputs of the task's dependencies (task id, output), in the order they are listed.
    pub dependency_outputs: Vec<(String, Value)>,
    /// Where the attempt reports progress; it becomes `task_progress` events.
    pub progress: ProgressSink,
    /// Where the attempt records the files it reads and writes (see [`crate::files`]).
    pub files: crate::files::FileLedger,
}

/// A progress report from a running attempt, published by the dispatcher as `task_progress`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressNote {
    pub attempt_id: AttemptId,
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Sends an attempt's progress to its executor, which passes it to the dispatcher, which alone
/// publishes events. Progress is best-effort: when the dispatcher is behind by
/// [`PROGRESS_BUFFER`] notes, further notes are dropped rather than slowing the agent.
#[derive(Debug, Clone, Default)]
pub struct ProgressSink {
    tx: Option<tokio::sync::mpsc::Sender<ProgressNote>>,
    attempt_id: AttemptId,
}

impl AgentContext {
    /// What running a program needs from the attempt.
    pub fn run_limits(&self) -> crate::process::program::RunLimits {
        crate::process::program::RunLimits {
            max_output_bytes: self.max_output_bytes,
            kill_grace: self.kill_grace,
            reaper: self.reaper.clone(),
        }
    }
}

pub const PROGRESS_BUFFER: usize = 1024;

impl ProgressSink {
    pub fn new(tx: tokio::sync::mpsc::Sender<ProgressNote>, attempt_id: AttemptId) -> Self {
        ProgressSink {
            tx: Some(tx),
            attempt_id,
        }
    }

    pub fn report(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(ProgressNote {
                attempt_id: self.attempt_id,
                progress,
                total,
                message,
            });
        }
    }
}
