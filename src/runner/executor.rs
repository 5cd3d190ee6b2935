//! Where attempts run. The dispatcher decides *what* runs and hands each attempt over as a
//! serializable [`AttemptRequest`]; an [`Executor`] runs it somewhere and reports back through
//! [`ExecutorEvent`]s. The dispatcher never sees processes, sessions or futures.
//!
//! [`LocalExecutor`] runs attempts in this process, one tokio task each under its own timeout,
//! and owns everything that only works inside one process: the reaper of process groups, the MCP
//! session pool, the progress channel and the registry of secrets seen in inputs. An executor
//! that runs attempts on other machines implements the same trait over a queue; because a queue
//! may deliver twice or late, the dispatcher ignores any event for an attempt that is no longer
//! current.
//!
//! Plugging one in: implement [`Executor`] (`start` publishes the request, `next_event` reads
//! results, `cancel`/`cancel_all`/`hurry` send control messages, `drain`/`close` release the
//! connection) and hand it to `Dispatcher::with_executor`. On the worker side, a process turns
//! each received [`AttemptRequest`] into a `LocalExecutor::start` and sends back what its
//! `next_event` yields. Nothing else in the dispatcher, the scheduler or the task lifecycle
//! changes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, Id, JoinSet};

use crate::agents::{AgentContext, AgentInput, PROGRESS_BUFFER, ProgressNote, ProgressSink};
use crate::files::{FileLedger, FilesTouched};
use crate::policy::timeout::with_timeout;
use crate::process::Reaper;
use crate::services::Services;
use crate::task_error::{ErrorKind, Failure, TaskError};

/// Names one attempt; unique within a run (never reused by a retry).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct AttemptId(pub u64);

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt-{}", self.0)
    }
}

/// Everything needed to run one attempt, with nothing process-local in it, so it can cross a
/// process boundary as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRequest {
    pub attempt_id: AttemptId,
    pub task_id: String,
    /// 1 for the first attempt of the task.
    pub attempt: u32,
    /// The agent and its input, `{{tasks...}}` references already substituted.
    #[serde(flatten)]
    pub input: AgentInput,
    pub timeout: Duration,
    /// Cap for each captured output stream.
    pub max_output_bytes: usize,
    /// Time between TERM and KILL when a process group is stopped.
    pub kill_grace: Duration,
    /// Outputs of the task's dependencies (task id, output), in the order they are listed.
    pub dependency_outputs: Vec<(String, Value)>,
    /// True when `input` differs from the batch's input (references were substituted): it may
    /// hold secrets the executor has not seen yet.
    #[serde(default)]
    pub substituted: bool,
}

/// How an attempt ended.
#[derive(Debug)]
pub enum AttemptEnd {
    Finished(Result<Value, Failure>),
    /// Cancelled before it finished; its resources are being released.
    Cancelled,
}

/// What an executor reports.
#[derive(Debug)]
pub enum ExecutorEvent {
    Progress {
        attempt_id: AttemptId,
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    /// The attempt ended; it is no longer in flight. `files`: what it recorded reading and
    /// writing, however it ended.
    Finished {
        attempt_id: AttemptId,
        end: AttemptEnd,
        files: FilesTouched,
    },
    /// The executor can no longer tell how the attempt ends (its worker vanished); it is no
    /// longer in flight. The dispatcher treats it as a transient failure.
    Lost {
        attempt_id: AttemptId,
        reason: String,
    },
    /// The executor cannot go on (its queue stayed unreachable): the dispatcher stops the run.
    /// Attempts in flight are reported after it (as cancelled).
    Failed { reason: String },
    /// Attempts wait in a queue for agents no live worker serves (`queued` of them); an empty
    /// `agents` says the wait is over. Only queue executors report it.
    Waiting { queued: usize, agents: Vec<String> },
}

/// Runs attempts and reports how they go.
///
/// Every started attempt produces exactly one `Finished` or `Lost` (cancelled attempts come out
/// as `Finished` with [`AttemptEnd::Cancelled`]), any number of `Progress` before it, and nothing
/// after it. Implementations that cannot promise "nothing after" (queues) are fine: the
/// dispatcher drops events for attempts that are not current.
pub trait Executor: Send {
    /// Starts an attempt. Never blocks: failures to start are reported as events.
    fn start(&mut self, request: AttemptRequest);

    /// Asks one attempt to stop; it still reports its end.
    fn cancel(&mut self, attempt_id: AttemptId);

    /// Asks every attempt in flight to stop (first interrupt, fail-fast).
    fn cancel_all(&mut self);

    /// Stops waiting politely: whatever is still being terminated is killed now, and whatever is
    /// terminated from now on is killed at once (second interrupt).
    fn hurry(&mut self);

    /// Attempts started and not yet reported finished or lost.
    fn in_flight(&self) -> usize;

    /// The next event; `None` when nothing is in flight.
    fn next_event(&mut self) -> impl Future<Output = Option<ExecutorEvent>> + Send;

    /// Waits until what attempts left behind is gone (process groups in their TERM grace
    /// period). Cancel-safe: the dispatcher abandons it to [`hurry`](Self::hurry) on a signal
    /// and then calls it again.
    fn drain(&mut self) -> impl Future<Output = ()> + Send;

    /// The worker (machine) that ran an attempt, once it has ended; `None` for attempts run in
    /// this process.
    fn worker_of(&mut self, _attempt_id: AttemptId) -> Option<String> {
        None
    }

    /// Releases what the executor holds for the run (sessions, connections). Called once, last.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs attempts as tokio tasks in this process.
pub struct LocalExecutor {
    services: Arc<Services>,
    reaper: Reaper,
    set: JoinSet<Result<Value, Failure>>,
    by_task: HashMap<Id, AttemptId>,
    /// Each attempt's abort handle, and its file records, taken when it ends (also when it
    /// was cancelled or panicked: the ledger outlives the agent's future).
    handles: HashMap<AttemptId, (AbortHandle, FileLedger)>,
    progress_tx: mpsc::Sender<ProgressNote>,
    progress_rx: mpsc::Receiver<ProgressNote>,
}

impl LocalExecutor {
    pub fn new(services: Arc<Services>) -> Self {
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_BUFFER);
        LocalExecutor {
            services,
            reaper: Reaper::default(),
            set: JoinSet::new(),
            by_task: HashMap::new(),
            handles: HashMap::new(),
            progress_tx,
            progress_rx,
        }
    }

    fn finished(
        &mut self,
        joined: Result<(Id, Result<Value, Failure>), tokio::task::JoinError>,
    ) -> ExecutorEvent {
        let (id, end) = match joined {
            Ok((id, result)) => (id, AttemptEnd::Finished(result)),
            Err(e) if e.is_cancelled() => (e.id(), AttemptEnd::Cancelled),
            Err(e) => {
                // An agent panicked: report it as that task's failure, not the runner's.
                let id = e.id();
                let msg = match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "agent panicked".into()),
                    Err(_) => "agent task failed".into(),
                };
                let err = TaskError::permanent(
                    ErrorKind::Internal,
                    format!("internal error in agent: {msg}"),
                );
                (id, AttemptEnd::Finished(Err(err.into())))
            }
        };
        let attempt_id = self.by_task.remove(&id).expect("every attempt is tracked");
        let files = self
            .handles
            .remove(&attempt_id)
            .map(|(_, ledger)| ledger.take())
            .unwrap_or_default();
        ExecutorEvent::Finished {
            attempt_id,
            end,
            files,
        }
    }
}

fn progress_event(note: ProgressNote) -> ExecutorEvent {
    ExecutorEvent::Progress {
        attempt_id: note.attempt_id,
        progress: note.progress,
        total: note.total,
        message: note.message,
    }
}

impl Executor for LocalExecutor {
    fn start(&mut self, request: AttemptRequest) {
        let AttemptRequest {
            attempt_id,
            task_id,
            attempt: _,
            input,
            timeout,
            max_output_bytes,
            kill_grace,
            dependency_outputs,
            substituted,
        } = request;
        if substituted {
            // The batch's own inputs were registered when the run began; values substituted
            // from upstream outputs under secret-looking keys are new.
            crate::redact::register_secrets_in(&input.input_value());
        }
        let files = FileLedger::default();
        let ctx = AgentContext {
            task_id,
            max_output_bytes,
            kill_grace,
            reaper: self.reaper.clone(),
            services: self.services.clone(),
            dependency_outputs,
            progress: ProgressSink::new(self.progress_tx.clone(), attempt_id),
            files: files.clone(),
        };
        let handle = self
            .set
            .spawn(async move { with_timeout(timeout, input.run(&ctx)).await });
        self.by_task.insert(handle.id(), attempt_id);
        self.handles.insert(attempt_id, (handle, files));
    }

    fn cancel(&mut self, attempt_id: AttemptId) {
        if let Some((h, _)) = self.handles.get(&attempt_id) {
            h.abort();
        }
    }

    fn cancel_all(&mut self) {
        self.set.abort_all();
    }

    fn hurry(&mut self) {
        self.reaper.hurry();
    }

    fn in_flight(&self) -> usize {
        self.set.len()
    }

    async fn next_event(&mut self) -> Option<ExecutorEvent> {
        // Progress first: an attempt's notes are sent before it ends, so they are published
        // before its end.
        if let Ok(note) = self.progress_rx.try_recv() {
            return Some(progress_event(note));
        }
        if self.set.is_empty() {
            return None;
        }
        tokio::select! {
            biased;
            Some(note) = self.progress_rx.recv() => Some(progress_event(note)),
            Some(joined) = self.set.join_next_with_id() => Some(self.finished(joined)),
        }
    }

    async fn drain(&mut self) {
        self.reaper.wait().await;
    }

    async fn close(&mut self) {
        // Sessions belong to one run: end them (and stop stdio servers) before reporting.
        self.services.mcp_pool.close_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, argv: &[&str]) -> AttemptRequest {
        let input: AgentInput = serde_json::from_value(serde_json::json!({
            "agent": "command", "input_data": {"argv": argv}
        }))
        .unwrap();
        AttemptRequest {
            attempt_id: AttemptId(id),
            task_id: format!("t{id}"),
            attempt: 1,
            input,
            timeout: Duration::from_secs(30),
            max_output_bytes: 1024,
            kill_grace: Duration::from_millis(200),
            dependency_outputs: vec![("up".into(), serde_json::json!({"stdout": "x"}))],
            substituted: false,
        }
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = request(7, &["echo", "hi"]);
        let text = serde_json::to_string(&r).unwrap();
        let back: AttemptRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.attempt_id, AttemptId(7));
        assert_eq!(back.input.name(), "command");
        assert_eq!(back.input.input_value(), r.input.input_value());
        assert_eq!(back.timeout, r.timeout);
        assert_eq!(back.dependency_outputs, r.dependency_outputs);
    }

    #[tokio::test]
    async fn reports_each_attempt_once_and_cancels_by_id() {
        let mut ex = LocalExecutor::new(Arc::new(Services::default()));
        ex.start(request(1, &["true"]));
        ex.start(request(2, &["sleep", "30"]));
        assert_eq!(ex.in_flight(), 2);
        ex.cancel(AttemptId(2));
        let mut ends = HashMap::new();
        while let Some(ev) = ex.next_event().await {
            if let ExecutorEvent::Finished {
                attempt_id, end, ..
            } = ev
            {
                assert!(
                    ends.insert(attempt_id, end).is_none(),
                    "one end per attempt"
                );
            }
        }
        assert_eq!(ex.in_flight(), 0);
        assert!(matches!(ends[&AttemptId(1)], AttemptEnd::Finished(Ok(_))));
        assert!(matches!(ends[&AttemptId(2)], AttemptEnd::Cancelled));
        ex.hurry();
        ex.drain().await;
    }
}
