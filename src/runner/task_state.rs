//! The whole life of one task, in one place.
//!
//! ```text
//!  Waiting ──dependencies succeeded──▶ Ready ──start──▶ Running ──success──────────▶ Done(success)
//!     │                                 ▲  │              ├─failure, retry left──▶ BackingOff ─due─▶ Ready
//!     │                                 │  │              ├─failure, no retry────▶ Done(error | timeout)
//!     │                                 │  │              └─cancelled────────────▶ Done(cancelled)
//!     │                                 │  └─breaker open / reference unresolved─▶ Done(error)
//!     └─dependency failed──▶ Done(skipped)   run stopped: Waiting, Ready ▶ Done(cancelled);
//!                                            BackingOff ▶ Done(last failure) under fail-fast,
//!                                            Done(cancelled) on an interrupt
//! ```
//!
//! Each transition is a plain method that changes the state and returns the events it causes;
//! nothing here spawns, sleeps or reads a clock (times are passed in), so the lifecycle is
//! unit-tested on its own. The dispatcher applies transitions, publishes their events, and does
//! the bookkeeping around them (worker slots, breakers, the scheduler's ready set).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::{AttemptOutcome, CancelReason, EventKind, TaskStatus};
use crate::files::FilesTouched;
use crate::policy::breaker::{BreakerKey, Permit};
use crate::runner::executor::{AttemptEnd, AttemptId};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// The attempt a running task is on.
#[derive(Debug)]
pub struct Attempt {
    pub id: AttemptId,
    /// 1 for the first attempt.
    pub number: u32,
    /// Worker lane (for timelines).
    pub worker: usize,
    /// The breaker it counts against and the permit it holds there.
    pub breaker: Option<(BreakerKey, Permit)>,
    pub started: Instant,
}

#[derive(Debug)]
pub enum TaskState {
    /// Some dependency has not succeeded yet.
    Waiting,
    /// Can start as soon as a worker is free.
    Ready,
    /// (Boxed, as `last` below: a run holds one state per task, most of them small.)
    Running(Box<Attempt>),
    /// An attempt failed transiently; the next one is due at `due`.
    BackingOff {
        due: Instant,
        last: Box<Failure>,
    },
    Done(TaskStatus),
}

/// What the dispatcher has to do after an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Release dependents.
    Succeeded,
    /// Wake the task at this time.
    RetryAt(Instant),
    /// Skip dependents; stop the run under fail-fast.
    Failed,
    Cancelled,
}

#[derive(Debug)]
pub struct TaskLife {
    pub task_id: String,
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The output, once the task succeeded (dependents read it).
    pub output: Option<Value>,
    /// The files of the attempt that is ending (set by the dispatcher before it ends it), or of
    /// the reused or cached result; they go on its `attempt_finished` and on the task's
    /// `task_finished`, which takes them.
    pub files: FilesTouched,
}

impl TaskLife {
    pub fn new(task_id: impl Into<String>) -> Self {
        TaskLife {
            task_id: task_id.into(),
            state: TaskState::Waiting,
            attempts: 0,
            output: None,
            files: FilesTouched::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, TaskState::Done(_))
    }

    /// The attempt in flight, if the task is running.
    pub fn current(&self) -> Option<&Attempt> {
        match &self.state {
            TaskState::Running(a) => Some(a),
            _ => None,
        }
    }

    /// Waiting → Ready: every dependency succeeded (or there were none).
    pub fn ready(&mut self) -> Vec<EventKind> {
        debug_assert!(matches!(self.state, TaskState::Waiting));
        self.state = TaskState::Ready;
        vec![EventKind::TaskReady {
            task_id: self.task_id.clone(),
        }]
    }

    /// Waiting or Ready → Done(success) with the output of an earlier run (`--rerun-failed`).
    pub fn reused(&mut self, output: Value) -> Vec<EventKind> {
        self.output = Some(output.clone());
        self.state = TaskState::Done(TaskStatus::Success);
        vec![EventKind::TaskFinished {
            task_id: self.task_id.clone(),
            status: TaskStatus::Success,
            output: Some(output),
            error: None,
            attempts: 0,
            reused: true,
            cached: false,
            files: std::mem::take(&mut self.files),
        }]
    }

    /// Ready → Done(success) with a stored output of the result cache: the task does not run.
    pub fn cached(&mut self, output: Value) -> Vec<EventKind> {
        self.output = Some(output.clone());
        self.state = TaskState::Done(TaskStatus::Success);
        vec![EventKind::TaskFinished {
            task_id: self.task_id.clone(),
            status: TaskStatus::Success,
            output: Some(output),
            error: None,
            attempts: 0,
            reused: false,
            cached: true,
            files: std::mem::take(&mut self.files),
        }]
    }

    /// Ready → Running on a new attempt.
    pub fn start(
        &mut self,
        id: AttemptId,
        worker: usize,
        breaker: Option<(BreakerKey, Permit)>,
        now: Instant,
    ) -> Vec<EventKind> {
        debug_assert!(matches!(self.state, TaskState::Ready));
        self.attempts += 1;
        let event = EventKind::AttemptStarted {
            task_id: self.task_id.clone(),
            attempt: self.attempts,
            worker,
            breaker: breaker.as_ref().map(|(k, _)| k.label.clone()),
            timeout: None,
        };
        self.state = TaskState::Running(Box::new(Attempt {
            id,
            number: self.attempts,
            worker,
            breaker,
            started: now,
        }));
        vec![event]
    }

    /// Running → Done, or → BackingOff when `retry_delay` (given the attempt number and the
    /// error) allows another attempt. Returns `None`, changing nothing, when `id` is not the
    /// current attempt: a late or repeated report.
    pub fn attempt_ended(
        &mut self,
        id: AttemptId,
        end: AttemptEnd,
        now: Instant,
        retry_delay: impl FnOnce(u32, &TaskError) -> Option<Duration>,
        cancel_reason: CancelReason,
    ) -> Option<(Attempt, AfterAttempt, Vec<EventKind>)> {
        if self.current().is_none_or(|a| a.id != id) {
            return None;
        }
        let TaskState::Running(attempt) = std::mem::replace(&mut self.state, TaskState::Ready)
        else {
            unreachable!("checked above");
        };
        let duration_ms = now.saturating_duration_since(attempt.started).as_secs_f64() * 1000.0;
        let (outcome, error) = match &end {
            AttemptEnd::Cancelled => (AttemptOutcome::Cancelled, None),
            AttemptEnd::Finished(Ok(_)) => (AttemptOutcome::Success, None),
            AttemptEnd::Finished(Err(f)) if f.error.kind == ErrorKind::Timeout => {
                (AttemptOutcome::Timeout, Some(f.error.clone()))
            }
            AttemptEnd::Finished(Err(f)) => (AttemptOutcome::Error, Some(f.error.clone())),
        };
        let mut events = vec![EventKind::AttemptFinished {
            task_id: self.task_id.clone(),
            attempt: attempt.number,
            outcome,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
            error,
            executed_by: None,
            files: self.files.clone(),
        }];
        let after = match end {
            AttemptEnd::Cancelled => {
                events.extend(self.cancel(cancel_reason));
                AfterAttempt::Cancelled
            }
            AttemptEnd::Finished(Ok(output)) => {
                self.output = Some(output.clone());
                events.push(self.finished(TaskStatus::Success, Some(output), None));
                AfterAttempt::Succeeded
            }
            AttemptEnd::Finished(Err(failure)) => {
                match retry_delay(attempt.number, &failure.error) {
                    Some(delay) => {
                        let due = now + delay;
                        events.push(EventKind::RetryScheduled {
                            task_id: self.task_id.clone(),
                            attempt: self.attempts + 1,
                            delay_ms: delay.as_millis() as u64,
                        });
                        self.state = TaskState::BackingOff {
                            due,
                            last: Box::new(failure),
                        };
                        AfterAttempt::RetryAt(due)
                    }
                    None => {
                        events.extend(self.fail(failure));
                        AfterAttempt::Failed
                    }
                }
            }
        };
        Some((*attempt, after, events))
    }

    /// BackingOff → Ready once the retry is due; false (no change) otherwise.
    pub fn retry_due(&mut self, now: Instant) -> bool {
        match self.state {
            TaskState::BackingOff { due, .. } if due <= now => {
                self.state = TaskState::Ready;
                true
            }
            _ => false,
        }
    }

    /// → Done(error or timeout): a final failure (also a task refused before it started: open
    /// breaker, unresolvable reference).
    pub fn fail(&mut self, failure: Failure) -> Vec<EventKind> {
        let status = if failure.error.kind == ErrorKind::Timeout {
            TaskStatus::Timeout
        } else {
            TaskStatus::Error
        };
        vec![self.finished(status, failure.output, Some(failure.error))]
    }

    /// Waiting → Done(skipped): a dependency did not succeed.
    pub fn skip(&mut self, message: String) -> Vec<EventKind> {
        let error = TaskError::permanent(ErrorKind::DependencyFailed, message);
        vec![self.finished(TaskStatus::Skipped, None, Some(error))]
    }

    /// → Done(cancelled): the run stopped before the task could finish.
    pub fn cancel(&mut self, reason: CancelReason) -> Vec<EventKind> {
        vec![self.finished(TaskStatus::Cancelled, None, Some(cancelled_error(reason)))]
    }

    /// → Done(cancelled) with a reason of the caller's (an alternative that lost its race).
    pub fn cancel_with(&mut self, error: TaskError) -> Vec<EventKind> {
        vec![self.finished(TaskStatus::Cancelled, None, Some(error))]
    }

    /// BackingOff → Done when the run stops: under fail-fast the last failure stands (returns
    /// true: dependents must be skipped), on an interrupt the task is cancelled.
    pub fn give_up(&mut self, reason: CancelReason) -> (Vec<EventKind>, bool) {
        let state = std::mem::replace(&mut self.state, TaskState::Ready);
        match (state, reason) {
            (TaskState::BackingOff { last, .. }, CancelReason::FailFast) => {
                (self.fail(*last), true)
            }
            (TaskState::BackingOff { .. }, _) => (self.cancel(reason), false),
            (other, _) => {
                self.state = other;
                (Vec::new(), false)
            }
        }
    }

    fn finished(
        &mut self,
        status: TaskStatus,
        output: Option<Value>,
        error: Option<TaskError>,
    ) -> EventKind {
        self.state = TaskState::Done(status);
        EventKind::TaskFinished {
            task_id: self.task_id.clone(),
            status,
            output,
            error,
            attempts: self.attempts,
            reused: false,
            cached: false,
            files: std::mem::take(&mut self.files),
        }
    }
}

pub fn cancelled_error(reason: CancelReason) -> TaskError {
    let message = match reason {
        CancelReason::FailFast => "not started: the run stopped after a failure (fail_fast)",
        CancelReason::Sigint => "cancelled: the run was interrupted (SIGINT)",
        CancelReason::Sigterm => "cancelled: the run was terminated (SIGTERM)",
        CancelReason::Request => "cancelled: a client cancelled the run (DELETE /v1/runs/{run_id})",
        CancelReason::ExecutorFailed => {
            "cancelled: the connection to Redis was lost and did not come back within the reconnect bound"
        }
    };
    TaskError::permanent(ErrorKind::Cancelled, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEC: Duration = Duration::from_secs(1);

    fn names(events: &[EventKind]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn running(now: Instant) -> TaskLife {
        let mut t = TaskLife::new("t");
        t.ready();
        t.start(AttemptId(1), 0, None, now);
        t
    }

    fn failed(kind: ErrorKind) -> AttemptEnd {
        AttemptEnd::Finished(Err(TaskError::transient(kind, "boom").into()))
    }

    fn never(_: u32, _: &TaskError) -> Option<Duration> {
        None
    }

    #[test]
    fn success_records_output_and_finishes() {
        let now = Instant::now();
        let mut t = TaskLife::new("t");
        assert_eq!(names(&t.ready()), ["task_ready"]);
        let ev = t.start(AttemptId(1), 3, None, now);
        assert!(matches!(
            &ev[0],
            EventKind::AttemptStarted {
                attempt: 1,
                worker: 3,
                breaker: None,
                ..
            }
        ));
        let (attempt, after, ev) = t
            .attempt_ended(
                AttemptId(1),
                AttemptEnd::Finished(Ok(json!({"x": 1}))),
                now + SEC,
                never,
                CancelReason::Sigint,
            )
            .unwrap();
        assert_eq!(attempt.number, 1);
        assert_eq!(after, AfterAttempt::Succeeded);
        assert_eq!(names(&ev), ["attempt_finished", "task_finished"]);
        assert!(
            matches!(&ev[0], EventKind::AttemptFinished { duration_ms, .. } if *duration_ms == 1000.0)
        );
        assert_eq!(t.output, Some(json!({"x": 1})));
        assert!(matches!(t.state, TaskState::Done(TaskStatus::Success)));
    }

    #[test]
    fn transient_failure_backs_off_then_becomes_ready_again() {
        let now = Instant::now();
        let mut t = running(now);
        let (_, after, ev) = t
            .attempt_ended(
                AttemptId(1),
                failed(ErrorKind::ExitStatus),
                now,
                |n, _| (n < 3).then_some(SEC),
                CancelReason::Sigint,
            )
            .unwrap();
        assert_eq!(after, AfterAttempt::RetryAt(now + SEC));
        assert_eq!(names(&ev), ["attempt_finished", "retry_scheduled"]);
        assert!(matches!(
            &ev[1],
            EventKind::RetryScheduled {
                attempt: 2,
                delay_ms: 1000,
                ..
            }
        ));
        assert!(!t.retry_due(now), "not due yet");
        assert!(t.retry_due(now + SEC));
        assert!(matches!(t.state, TaskState::Ready));
        let ev = t.start(AttemptId(2), 0, None, now);
        assert!(matches!(
            &ev[0],
            EventKind::AttemptStarted { attempt: 2, .. }
        ));
    }

    #[test]
    fn final_failure_keeps_its_status_kind() {
        let now = Instant::now();
        let mut t = running(now);
        let (_, after, ev) = t
            .attempt_ended(
                AttemptId(1),
                failed(ErrorKind::Timeout),
                now,
                never,
                CancelReason::Sigint,
            )
            .unwrap();
        assert_eq!(after, AfterAttempt::Failed);
        assert!(matches!(
            &ev[0],
            EventKind::AttemptFinished {
                outcome: AttemptOutcome::Timeout,
                ..
            }
        ));
        assert!(matches!(
            &ev[1],
            EventKind::TaskFinished {
                status: TaskStatus::Timeout,
                attempts: 1,
                ..
            }
        ));
    }

    #[test]
    fn reports_for_other_attempts_are_ignored() {
        let now = Instant::now();
        let mut t = running(now);
        let ok = || AttemptEnd::Finished(Ok(json!(1)));
        assert!(
            t.attempt_ended(AttemptId(9), ok(), now, never, CancelReason::Sigint)
                .is_none()
        );
        assert!(t.current().is_some(), "a stray report changes nothing");
        assert!(
            t.attempt_ended(AttemptId(1), ok(), now, never, CancelReason::Sigint)
                .is_some()
        );
        // Delivered twice (a queue may): the second is ignored, not a panic.
        assert!(
            t.attempt_ended(AttemptId(1), ok(), now, never, CancelReason::Sigint)
                .is_none()
        );
        assert!(matches!(t.state, TaskState::Done(TaskStatus::Success)));
    }

    #[test]
    fn cancelled_attempt_cancels_the_task_with_the_reason() {
        let now = Instant::now();
        let mut t = running(now);
        let (_, after, ev) = t
            .attempt_ended(
                AttemptId(1),
                AttemptEnd::Cancelled,
                now,
                never,
                CancelReason::Sigterm,
            )
            .unwrap();
        assert_eq!(after, AfterAttempt::Cancelled);
        assert!(matches!(
            &ev[0],
            EventKind::AttemptFinished {
                outcome: AttemptOutcome::Cancelled,
                ..
            }
        ));
        match &ev[1] {
            EventKind::TaskFinished {
                status,
                error: Some(e),
                ..
            } => {
                assert_eq!(*status, TaskStatus::Cancelled);
                assert!(e.message.contains("SIGTERM"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stopping_a_backing_off_task_fails_or_cancels_it() {
        let now = Instant::now();
        for (reason, fails, status) in [
            (CancelReason::FailFast, true, TaskStatus::Error),
            (CancelReason::Sigint, false, TaskStatus::Cancelled),
        ] {
            let mut t = running(now);
            t.attempt_ended(
                AttemptId(1),
                failed(ErrorKind::ExitStatus),
                now,
                |_, _| Some(SEC),
                CancelReason::Sigint,
            )
            .unwrap();
            let (ev, failed) = t.give_up(reason);
            assert_eq!(failed, fails);
            assert!(matches!(&ev[0], EventKind::TaskFinished { status: s, .. } if *s == status));
        }
        // Giving up on a task that is not backing off does nothing.
        let mut t = running(now);
        assert!(t.give_up(CancelReason::FailFast).0.is_empty());
        assert!(t.current().is_some());
    }

    #[test]
    fn files_go_on_the_attempt_and_on_the_task_that_ends_with_it() {
        let now = Instant::now();
        let files = |p: &str| FilesTouched {
            written: vec![crate::files::FileRecord::new(p, b"x")],
            ..FilesTouched::default()
        };
        let mut t = running(now);
        t.files = files("first.py");
        let (_, _, ev) = t
            .attempt_ended(
                AttemptId(1),
                failed(ErrorKind::ExitStatus),
                now,
                |_, _| Some(SEC),
                CancelReason::Sigint,
            )
            .unwrap();
        assert!(
            matches!(&ev[0], EventKind::AttemptFinished { files: f, .. } if *f == files("first.py"))
        );
        // Stopped while backing off: the failure stands with its attempt's files.
        let (ev, _) = t.give_up(CancelReason::FailFast);
        assert!(
            matches!(&ev[0], EventKind::TaskFinished { files: f, .. } if *f == files("first.py"))
        );
        assert!(t.files.is_empty(), "taken by the task's end");
        let mut r = TaskLife::new("r");
        r.files = files("kept.py");
        let ev = r.reused(json!(1));
        assert!(
            matches!(&ev[0], EventKind::TaskFinished { files: f, .. } if *f == files("kept.py"))
        );
    }

    #[test]
    fn skipped_and_reused_tasks_are_done_without_attempts() {
        let mut t = TaskLife::new("t");
        let ev = t.skip("dependency 'a' did not succeed (error)".into());
        assert!(matches!(
            &ev[0],
            EventKind::TaskFinished {
                status: TaskStatus::Skipped,
                attempts: 0,
                ..
            }
        ));
        let mut r = TaskLife::new("r");
        let ev = r.reused(json!("old"));
        assert!(matches!(
            &ev[0],
            EventKind::TaskFinished {
                reused: true,
                attempts: 0,
                ..
            }
        ));
        assert!(r.is_done() && t.is_done());
    }
}
