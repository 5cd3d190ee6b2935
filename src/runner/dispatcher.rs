//! The dispatcher owns all run state and is the only publisher of events. Each turn of its loop
//! starts what the scheduler says is ready (as far as the worker limit and the breakers allow),
//! then waits for one of: an attempt ending, a retry coming due, or an interrupt.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::agents::{AgentContext, AgentInput, PROGRESS_BUFFER, ProgressNote, ProgressSink};
use crate::batch::template;
use crate::batch::{Task, ValidatedBatch};
use crate::events::{
    AttemptOutcome, CancelReason, Event, EventKind, EventSink, Summary, TaskInfo, TaskStatus,
    now_rfc3339,
};
use crate::policy::breaker::{CircuitBreaker, Permit, Transition};
use crate::policy::concurrency::WorkerLimit;
use crate::process::Reaper;
use crate::reporter::{Recorder, RunRecord};
use crate::rerun::Reuse;
use crate::runner::Interrupt;
use crate::runner::executor::{AttemptDone, AttemptEnd, AttemptSpec, LocalExecutor};
use crate::scheduler::Scheduler;
use crate::services::Services;
use crate::settings::{KILL_GRACE, RunSettings};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// Numbers and time-stamps events and hands them to the recorder, then to every other sink, in
/// order.
pub struct EventBus {
    seq: u64,
    start: Instant,
    recorder: Recorder,
    sinks: Vec<Box<dyn EventSink>>,
}

impl EventBus {
    pub fn new(sinks: Vec<Box<dyn EventSink>>) -> Self {
        EventBus {
            seq: 0,
            start: Instant::now(),
            recorder: Recorder::default(),
            sinks,
        }
    }

    pub fn emit(&mut self, kind: EventKind) {
        let event = Event {
            seq: self.seq,
            at: now_rfc3339(),
            elapsed_ms: (self.start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            kind,
        };
        self.seq += 1;
        self.recorder.on_event(&event);
        for sink in &mut self.sinks {
            sink.on_event(&event);
        }
    }

    pub fn into_parts(self) -> (Recorder, Vec<Box<dyn EventSink>>) {
        (self.recorder, self.sinks)
    }
}

/// What a running attempt holds, returned when it ends.
struct Running {
    attempt: u32,
    worker: usize,
    breaker: String,
    permit: Permit,
    started: Instant,
}

pub struct Dispatcher {
    tasks: Vec<Task>,
    settings: RunSettings,
    services: Arc<Services>,
    scheduler: Scheduler,
    executor: LocalExecutor,
    reaper: Reaper,
    bus: EventBus,
    workers: WorkerLimit,
    /// Per-agent caps inside the global limit (`agents.<name>.max_concurrency`).
    agent_limits: HashMap<&'static str, WorkerLimit>,
    lanes: Vec<bool>,
    breakers: HashMap<String, CircuitBreaker>,
    running: HashMap<usize, Running>,
    attempts: Vec<u32>,
    outputs: Vec<Option<Value>>,
    /// Tasks waiting out a retry backoff: due time, task.
    retries: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The last failure of each task waiting for a retry, used if the retry never happens.
    last_failure: HashMap<usize, Failure>,
    stop: Option<CancelReason>,
    interrupted: Option<Interrupt>,
    counts: Summary,
    reuse: Option<Reuse>,
    /// Progress reports from running attempts, published as `task_progress` events.
    progress_tx: mpsc::Sender<ProgressNote>,
    progress_rx: mpsc::Receiver<ProgressNote>,
}

impl Dispatcher {
    pub fn new(
        validated: ValidatedBatch,
        settings: RunSettings,
        services: Arc<Services>,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Self {
        let n = validated.batch.tasks.len();
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_BUFFER);
        Dispatcher {
            progress_tx,
            progress_rx,
            tasks: validated.batch.tasks,
            workers: WorkerLimit::new(settings.max_workers),
            agent_limits: crate::agents::ALL_AGENTS
                .iter()
                .filter_map(|a| {
                    settings
                        .agent_concurrency(a)
                        .map(|n| (*a, WorkerLimit::new(n)))
                })
                .collect(),
            lanes: vec![false; settings.max_workers],
            settings,
            services,
            scheduler: Scheduler::new(validated.plan),
            executor: LocalExecutor::default(),
            reaper: Reaper::default(),
            bus: EventBus::new(sinks),
            breakers: HashMap::new(),
            running: HashMap::new(),
            attempts: vec![0; n],
            outputs: vec![None; n],
            retries: BinaryHeap::new(),
            last_failure: HashMap::new(),
            stop: None,
            interrupted: None,
            counts: Summary {
                total_tasks: n,
                ..Summary::default()
            },
            reuse: None,
        }
    }

    /// Starts from the outputs a previous run produced (`--rerun-failed`).
    pub fn reusing(mut self, reuse: Reuse) -> Self {
        self.reuse = Some(reuse);
        self
    }

    /// Runs the batch to the end and returns the record of the run, the sinks (with what they
    /// collected) and the interrupt that stopped the run, if any.
    pub async fn run(
        mut self,
        run_id: String,
        mut interrupts: Option<mpsc::Receiver<Interrupt>>,
    ) -> (RunRecord, Vec<Box<dyn EventSink>>, Option<Interrupt>) {
        let tasks = self
            .tasks
            .iter()
            .map(|t| TaskInfo {
                task_id: t.task_id.clone(),
                agent: t.agent.name().to_string(),
                description: t.description.clone(),
                dependencies: t.dependencies.clone(),
                input: t.agent.input_value(),
            })
            .collect();
        let config = serde_json::to_value(&self.settings).expect("settings serialize");
        self.bus.emit(EventKind::RunStarted {
            run_id,
            previous_run_id: self.reuse.as_ref().map(|r| r.previous_run_id.clone()),
            config,
            tasks,
        });
        if let Some(reuse) = self.reuse.take() {
            for (i, output) in reuse.outputs.into_iter().enumerate() {
                let Some(output) = output else { continue };
                self.scheduler.succeeded(i);
                self.outputs[i] = Some(output.clone());
                self.counts.count(TaskStatus::Success);
                self.bus.emit(EventKind::TaskFinished {
                    task_id: self.id(i),
                    status: TaskStatus::Success,
                    output: Some(output),
                    error: None,
                    attempts: 0,
                    reused: true,
                });
            }
        }
        for i in self.scheduler.ready_tasks() {
            self.bus.emit(EventKind::TaskReady {
                task_id: self.id(i),
            });
        }

        loop {
            self.start_ready();
            if self.executor.is_empty() && self.retries.is_empty() && !self.can_start_more() {
                break;
            }
            let next_retry = self.retries.peek().map(|Reverse((due, _))| *due);
            tokio::select! {
                interrupt = recv(&mut interrupts) => match interrupt {
                    Some(i) => self.interrupt(i),
                    None => interrupts = None,
                },
                Some(done) = self.executor.next(), if !self.executor.is_empty() => {
                    self.publish_progress();
                    self.attempt_done(done);
                }
                Some(note) = self.progress_rx.recv() => self.progress(note),
                _ = sleep_until(next_retry), if next_retry.is_some() => self.retries_due(),
            }
        }

        let reason = self.stop.unwrap_or(CancelReason::FailFast);
        for i in self.scheduler.unfinished() {
            self.scheduler.finish(i);
            self.finish(
                i,
                TaskStatus::Cancelled,
                None,
                Some(cancelled_error(reason)),
            );
        }
        // Process groups still in their TERM grace period must be gone before we report.
        self.reaper.wait().await;
        let summary = self.summary();
        self.bus.emit(EventKind::RunFinished {
            status: summary.run_status(),
            summary,
        });
        let (recorder, sinks) = self.bus.into_parts();
        let record = recorder.into_record().expect("run_started was emitted");
        (record, sinks, self.interrupted)
    }

    fn can_start_more(&self) -> bool {
        self.stop.is_none() && self.scheduler.has_ready()
    }

    fn id(&self, i: usize) -> String {
        self.tasks[i].task_id.clone()
    }

    fn start_ready(&mut self) {
        while self.stop.is_none() && self.workers.has_room() {
            let (tasks, limits) = (&self.tasks, &self.agent_limits);
            let agent_has_room = |i: usize| {
                limits
                    .get(tasks[i].agent.name())
                    .is_none_or(WorkerLimit::has_room)
            };
            let Some(i) = self.scheduler.pop_ready_where(agent_has_room) else {
                return;
            };
            self.start_attempt(i);
        }
    }

    fn start_attempt(&mut self, i: usize) {
        let input = match self.resolve_input(i) {
            Ok(input) => input,
            Err(error) => return self.fail(i, error.into()),
        };
        let key = input.breaker_key();
        let now = Instant::now();
        let settings = &self.settings;
        let breaker = self.breakers.entry(key.clone()).or_insert_with(|| {
            CircuitBreaker::new(
                settings.breaker_failure_threshold,
                settings.breaker_recovery(),
            )
        });
        let (permit, transition) = breaker.try_acquire(now);
        self.breaker_changed(&key, transition);
        let Ok(permit) = permit else {
            let error = TaskError::permanent(
                ErrorKind::CircuitOpen,
                format!(
                    "circuit breaker '{key}' is open after repeated failures; task not attempted"
                ),
            );
            return self.fail(i, error.into());
        };

        let acquired = self.workers.try_acquire();
        debug_assert!(acquired, "start_ready checked for room");
        if let Some(limit) = self.agent_limits.get_mut(self.tasks[i].agent.name()) {
            limit.try_acquire();
        }
        let worker = self.lanes.iter().position(|busy| !busy).unwrap_or(0);
        self.lanes[worker] = true;
        self.attempts[i] += 1;
        let attempt = self.attempts[i];
        self.running.insert(
            i,
            Running {
                attempt,
                worker,
                breaker: key,
                permit,
                started: now,
            },
        );
        let breaker = self.running[&i].breaker.clone();
        self.bus.emit(EventKind::AttemptStarted {
            task_id: self.id(i),
            attempt,
            worker,
            breaker,
        });
        let task = &self.tasks[i];
        let dependency_outputs = self.dependency_outputs(i);
        self.executor.start(AttemptSpec {
            task: i,
            input,
            timeout: self
                .settings
                .timeout(task.agent.name(), task.timeout_seconds),
            ctx: AgentContext {
                task_id: task.task_id.clone(),
                max_output_bytes: self.settings.max_output_bytes,
                kill_grace: KILL_GRACE,
                reaper: self.reaper.clone(),
                services: self.services.clone(),
                dependency_outputs,
                progress: ProgressSink::new(
                    self.progress_tx.clone(),
                    task.task_id.clone(),
                    attempt,
                ),
            },
        });
    }

    /// The outputs of task `i`'s dependencies, by task id.
    fn dependency_outputs(&self, i: usize) -> Vec<(String, Value)> {
        self.scheduler
            .plan()
            .deps(i)
            .iter()
            .filter_map(|&j| Some((self.id(j), self.outputs[j].clone()?)))
            .collect()
    }

    /// The task's input with `{{tasks.X.output...}}` replaced by upstream outputs.
    fn resolve_input(&self, i: usize) -> Result<AgentInput, TaskError> {
        let agent = &self.tasks[i].agent;
        // Validation only lets a task reference its dependencies, so a task without any has
        // nothing to substitute: skip the JSON round trip on the hot path.
        if self.tasks[i].dependencies.is_empty() {
            return Ok(agent.clone());
        }
        let mut input = agent.input_value();
        let ids: HashMap<&str, usize> = self.tasks[i]
            .dependencies
            .iter()
            .filter_map(|d| {
                self.scheduler
                    .plan()
                    .deps(i)
                    .iter()
                    .find(|&&j| self.tasks[j].task_id == *d)
                    .map(|&j| (d.as_str(), j))
            })
            .collect();
        let limit = self.settings.max_expanded_input_bytes;
        let unresolved = |e: template::SubstituteError| match e {
            template::SubstituteError::Unresolved(m) => {
                TaskError::permanent(ErrorKind::ReferenceUnresolved, m)
            }
            template::SubstituteError::TooLarge { limit, pointer } => TaskError::permanent(
                ErrorKind::InputTooLarge,
                format!(
                    "input_data{pointer} would be longer than max_expanded_input_bytes ({limit}) once references are replaced by upstream outputs"
                ),
            ),
        };
        template::substitute_bounded(&mut input, limit, &|id| ids.contains_key(id), &|r| {
            let j = ids
                .get(r.task_id.as_str())
                .ok_or_else(|| format!("'{}' is not a dependency", r.task_id))?;
            let output = self.outputs[*j]
                .as_ref()
                .ok_or_else(|| format!("task '{}' has no output", r.task_id))?;
            template::lookup(output, &r.fields).ok_or_else(|| {
                format!(
                    "output of task '{}' has no field '{}'",
                    r.task_id,
                    r.fields.join(".")
                )
            })
        })
        .map_err(unresolved)?;
        agent.with_input(input).map_err(|e| {
            TaskError::permanent(
                ErrorKind::ReferenceUnresolved,
                format!("input no longer valid after substituting outputs: {e}"),
            )
        })
    }

    fn attempt_done(&mut self, done: AttemptDone) {
        let i = done.task;
        let running = self.running.remove(&i).expect("attempt was running");
        self.workers.release();
        if let Some(limit) = self.agent_limits.get_mut(self.tasks[i].agent.name()) {
            limit.release();
        }
        self.lanes[running.worker] = false;
        let duration_ms = running.started.elapsed().as_secs_f64() * 1000.0;
        let breaker = self
            .breakers
            .get_mut(&running.breaker)
            .expect("breaker exists");

        let (outcome, result) = match done.end {
            AttemptEnd::Cancelled => {
                breaker.on_release(running.permit);
                (AttemptOutcome::Cancelled, None)
            }
            AttemptEnd::Finished(Ok(v)) => {
                let t = breaker.on_success(running.permit);
                self.breaker_changed(&running.breaker, t);
                (AttemptOutcome::Success, Some(Ok(v)))
            }
            AttemptEnd::Finished(Err(f)) => {
                let t = if f.error.transient {
                    breaker.on_failure(running.permit, Instant::now())
                } else {
                    breaker.on_release(running.permit);
                    None
                };
                self.breaker_changed(&running.breaker, t);
                let outcome = if f.error.kind == ErrorKind::Timeout {
                    AttemptOutcome::Timeout
                } else {
                    AttemptOutcome::Error
                };
                (outcome, Some(Err(f)))
            }
        };
        self.bus.emit(EventKind::AttemptFinished {
            task_id: self.id(i),
            attempt: running.attempt,
            outcome,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
            error: match &result {
                Some(Err(f)) => Some(f.error.clone()),
                _ => None,
            },
        });

        match result {
            None => {
                self.scheduler.finish(i);
                let reason = self.stop.unwrap_or(CancelReason::Sigint);
                self.finish(
                    i,
                    TaskStatus::Cancelled,
                    None,
                    Some(cancelled_error(reason)),
                );
            }
            Some(Ok(output)) => {
                self.outputs[i] = Some(output.clone());
                self.finish(i, TaskStatus::Success, Some(output), None);
                for d in self.scheduler.succeeded(i) {
                    self.bus.emit(EventKind::TaskReady {
                        task_id: self.id(d),
                    });
                }
            }
            Some(Err(failure)) => {
                let task = &self.tasks[i];
                let policy = self.settings.retry_policy(task.agent.name(), task.retries);
                let delay = if self.stop.is_none() {
                    policy.next_delay(running.attempt, &failure.error, fastrand::f64())
                } else {
                    None
                };
                match delay {
                    Some(delay) => self.schedule_retry(i, delay, failure),
                    None => self.fail(i, failure),
                }
            }
        }
    }

    fn schedule_retry(&mut self, i: usize, delay: Duration, failure: Failure) {
        self.bus.emit(EventKind::RetryScheduled {
            task_id: self.id(i),
            attempt: self.attempts[i] + 1,
            delay_ms: delay.as_millis() as u64,
        });
        self.last_failure.insert(i, failure);
        self.retries.push(Reverse((Instant::now() + delay, i)));
    }

    fn retries_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, i))) = self.retries.peek().copied() {
            if due > now {
                break;
            }
            self.retries.pop();
            self.last_failure.remove(&i);
            self.scheduler.requeue(i);
        }
    }

    /// Final failure: record it, skip everything downstream, and stop the run under fail-fast.
    fn fail(&mut self, i: usize, failure: Failure) {
        let status = if failure.error.kind == ErrorKind::Timeout {
            TaskStatus::Timeout
        } else {
            TaskStatus::Error
        };
        let failed_id = self.id(i);
        self.finish(i, status, failure.output, Some(failure.error));
        for (skipped, because) in self.scheduler.failed(i) {
            let dep = self.id(because);
            let message = if because == i {
                format!("dependency '{dep}' did not succeed ({})", status.as_str())
            } else {
                format!("dependency '{dep}' was skipped because '{failed_id}' did not succeed")
            };
            self.finish(
                skipped,
                TaskStatus::Skipped,
                None,
                Some(TaskError::permanent(ErrorKind::DependencyFailed, message)),
            );
        }
        if self.settings.fail_fast && self.stop.is_none() {
            self.stop_run(CancelReason::FailFast);
        }
    }

    fn interrupt(&mut self, interrupt: Interrupt) {
        if self.interrupted.is_some() {
            // A second interrupt: no more grace for process groups.
            self.reaper.hurry();
            return;
        }
        self.interrupted = Some(interrupt);
        self.stop_run(interrupt.reason());
        self.executor.cancel_all();
    }

    /// Stops starting tasks. Tasks waiting for a retry end now: with their last failure under
    /// fail-fast, as cancelled on an interrupt.
    fn stop_run(&mut self, reason: CancelReason) {
        self.stop = Some(reason);
        self.bus.emit(EventKind::RunCancelled { reason });
        let waiting: Vec<usize> = self.retries.drain().map(|Reverse((_, i))| i).collect();
        for i in waiting {
            let failure = self.last_failure.remove(&i).expect("retry has a failure");
            if reason == CancelReason::FailFast {
                self.fail(i, failure);
            } else {
                self.scheduler.finish(i);
                self.finish(
                    i,
                    TaskStatus::Cancelled,
                    None,
                    Some(cancelled_error(reason)),
                );
            }
        }
    }

    fn finish(
        &mut self,
        i: usize,
        status: TaskStatus,
        output: Option<Value>,
        error: Option<TaskError>,
    ) {
        self.counts.count(status);
        if let Some(out) = &output {
            self.counts.add_usage(out);
        }
        self.bus.emit(EventKind::TaskFinished {
            task_id: self.id(i),
            status,
            output,
            error,
            attempts: self.attempts[i],
            reused: false,
        });
    }

    /// Publishes progress already reported, so it precedes the attempt's end in the stream.
    fn publish_progress(&mut self) {
        while let Ok(note) = self.progress_rx.try_recv() {
            self.progress(note);
        }
    }

    fn progress(&mut self, note: ProgressNote) {
        self.bus.emit(EventKind::TaskProgress {
            task_id: note.task_id,
            attempt: note.attempt,
            progress: note.progress,
            total: note.total,
            message: note.message,
        });
    }

    fn breaker_changed(&mut self, key: &str, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.bus.emit(EventKind::BreakerChanged {
                breaker: key.to_string(),
                from: t.from,
                to: t.to,
            });
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            total_time_ms: self.bus.start.elapsed().as_millis() as u64,
            ..self.counts.clone()
        }
    }
}

fn cancelled_error(reason: CancelReason) -> TaskError {
    let message = match reason {
        CancelReason::FailFast => "not started: the run stopped after a failure (fail_fast)",
        CancelReason::Sigint => "cancelled: the run was interrupted (SIGINT)",
        CancelReason::Sigterm => "cancelled: the run was terminated (SIGTERM)",
    };
    TaskError::permanent(ErrorKind::Cancelled, message)
}

async fn recv(rx: &mut Option<mpsc::Receiver<Interrupt>>) -> Option<Interrupt> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
