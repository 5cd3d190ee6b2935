//! Where and how an attempt runs: here, one tokio task per attempt, each under its own timeout.
//!
//! The dispatcher hands over an [`AttemptSpec`] and later collects the [`AttemptDone`]; it never
//! sees the futures. A distributed executor would implement the same three operations (start,
//! next finished, cancel all) over a queue instead of a `JoinSet`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::task::{Id, JoinSet};

use crate::agents::{AgentContext, AgentInput};
use crate::policy::timeout::with_timeout;
use crate::task_error::Failure;

/// One attempt to run.
pub struct AttemptSpec {
    pub task: usize,
    pub input: AgentInput,
    pub timeout: Duration,
    pub ctx: AgentContext,
}

/// How an attempt ended.
pub enum AttemptEnd {
    Finished(Result<Value, Failure>),
    /// Cancelled before it finished; its resources are being released.
    Cancelled,
}

pub struct AttemptDone {
    pub task: usize,
    pub end: AttemptEnd,
}

#[derive(Default)]
pub struct LocalExecutor {
    set: JoinSet<Result<Value, Failure>>,
    tasks: HashMap<Id, usize>,
}

impl LocalExecutor {
    pub fn start(&mut self, spec: AttemptSpec) {
        let AttemptSpec {
            task,
            input,
            timeout,
            ctx,
        } = spec;
        let handle = self
            .set
            .spawn(async move { with_timeout(timeout, input.run(&ctx)).await });
        self.tasks.insert(handle.id(), task);
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next attempt to end, or `None` when none is running.
    pub async fn next(&mut self) -> Option<AttemptDone> {
        let joined = self.set.join_next_with_id().await?;
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
                let err = crate::task_error::TaskError::permanent(
                    crate::task_error::ErrorKind::Internal,
                    format!("internal error in agent: {msg}"),
                );
                (id, AttemptEnd::Finished(Err(err.into())))
            }
        };
        let task = self.tasks.remove(&id).expect("every attempt is tracked");
        Some(AttemptDone { task, end })
    }

    /// Cancels every running attempt; each will come out of [`next`](Self::next) as cancelled.
    pub fn cancel_all(&mut self) {
        self.set.abort_all();
    }
}
