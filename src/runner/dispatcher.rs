//! The dispatcher owns all run state and is the only publisher of events. Each turn of its loop
//! starts what the scheduler says is ready (as far as the worker limit and the breakers allow),
//! then waits for one of: an executor event (progress, an attempt's end), a retry coming due, or
//! an interrupt.
//!
//! A task's life (waiting, ready, running, backing off, done) is [`TaskLife`] in
//! `task_state.rs`; where attempts run is the [`Executor`]. This file holds what ties them
//! together: worker slots, per-agent caps, breakers, and the scheduler's ready set.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::agents::AgentInput;
use crate::batch::template;
use crate::batch::{Task, ValidatedBatch};
use crate::events::Event;
use crate::events::{
    CancelReason, EventKind, EventSink, Summary, TaskInfo, TaskStatus, now_rfc3339,
};
use crate::files::FilesTouched;
use crate::policy::breaker::{BreakerKey, CircuitBreaker, Transition};
use crate::policy::concurrency::WorkerLimit;
use crate::reporter::ledger::Ledger;
use crate::rerun::Reuse;
use crate::runner::Interrupt;
use crate::runner::executor::{
    AttemptEnd, AttemptId, AttemptRequest, Executor, ExecutorEvent, LocalExecutor,
};
use crate::runner::task_state::{AfterAttempt, TaskLife};
use crate::scheduler::Scheduler;
use crate::services::Services;
use crate::settings::{KILL_GRACE, RunSettings};
use crate::task_error::{ErrorKind, Failure, TaskError};

mod coordinated;

/// Numbers and time-stamps events and hands them to the ledger (which writes the journal),
/// then to every other sink, in order.
pub struct EventBus {
    seq: u64,
    start: Instant,
    ledger: Ledger,
    sinks: Vec<Box<dyn EventSink>>,
}

impl EventBus {
    pub fn new(sinks: Vec<Box<dyn EventSink>>) -> Self {
        EventBus {
            seq: 0,
            start: Instant::now(),
            ledger: Ledger::in_memory(),
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
        self.ledger.record(&event, None);
        for sink in &mut self.sinks {
            sink.on_event(&event);
        }
    }

    /// Feeds the events of an earlier part of this run (a journal being resumed) to the recorder
    /// and the sinks as they were, then numbers and times new events after them, so the whole
    /// run reads as one stream (the journal holds them already: `lines` says where).
    pub fn replay(&mut self, events: Vec<Event>, lines: &[(u64, u32)]) {
        if let Some(last) = events.last() {
            self.seq = last.seq + 1;
            let before = std::time::Duration::from_secs_f64(last.elapsed_ms.max(0.0) / 1000.0);
            self.start = Instant::now().checked_sub(before).unwrap_or(self.start);
        }
        for (k, event) in events.into_iter().enumerate() {
            self.ledger.record(&event, lines.get(k).copied());
            for sink in &mut self.sinks {
                sink.on_event(&event);
            }
        }
    }

    pub fn into_parts(self) -> (Ledger, Vec<Box<dyn EventSink>>) {
        (self.ledger, self.sinks)
    }
}

pub struct Dispatcher<E: Executor = LocalExecutor> {
    tasks: Vec<Task>,
    /// The lifecycle of each task, by index.
    lives: Vec<TaskLife>,
    settings: RunSettings,
    services: Arc<Services>,
    scheduler: Scheduler,
    executor: E,
    bus: EventBus,
    workers: WorkerLimit,
    /// Per-agent caps inside the global limit (`agents.<name>.max_concurrency`).
    agent_limits: HashMap<&'static str, WorkerLimit>,
    lanes: Vec<bool>,
    breakers: HashMap<String, CircuitBreaker>,
    /// The task of each attempt in flight; events for attempts not here are stale.
    current: HashMap<AttemptId, usize>,
    last_attempt_id: u64,
    /// Tasks backing off, by due time (an index over their `TaskState::BackingOff`).
    backing_off: BinaryHeap<Reverse<(Instant, usize)>>,
    stop: Option<CancelReason>,
    interrupted: Option<Interrupt>,
    counts: Summary,
    reuse: Option<Reuse>,
    /// Per task: attempts lost with their worker and started again (`max_redeliveries`).
    redeliveries: Vec<u32>,
    max_redeliveries: u32,
    /// Per task: dependents not finished yet. A task's output is kept in memory only while this
    /// is above zero (they may read it); the record of the run has it on disk.
    pending: Vec<u32>,
    /// The result cache, when tasks use it: looked up before a task's first attempt.
    cache: Option<crate::cache::run::RunCache>,
    /// What the run history knows (empty without it) and how `"auto"` timeouts are chosen.
    estimates: crate::history::Estimates,
    history: crate::history::HistoryOptions,
    /// Tasks the dispatcher runs itself (`batch`, `first_success`) and the children they added.
    coord: coordinated::Coordination,
}

impl Dispatcher<LocalExecutor> {
    /// A dispatcher that runs attempts in this process.
    pub fn new(
        validated: ValidatedBatch,
        settings: RunSettings,
        services: Arc<Services>,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Self {
        let executor = LocalExecutor::new(services.clone());
        Dispatcher::with_executor(validated, settings, services, sinks, executor)
    }
}

impl<E: Executor> Dispatcher<E> {
    pub fn with_executor(
        validated: ValidatedBatch,
        settings: RunSettings,
        services: Arc<Services>,
        sinks: Vec<Box<dyn EventSink>>,
        executor: E,
    ) -> Self {
        let n = validated.batch.tasks.len();
        Dispatcher {
            lives: validated
                .batch
                .tasks
                .iter()
                .map(|t| TaskLife::new(t.task_id.clone()))
                .collect(),
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
            pending: (0..n)
                .map(|i| validated.plan.dependents(i).len() as u32)
                .collect(),
            scheduler: Scheduler::new(validated.plan),
            executor,
            bus: EventBus::new(sinks),
            breakers: HashMap::new(),
            current: HashMap::new(),
            last_attempt_id: 0,
            backing_off: BinaryHeap::new(),
            stop: None,
            interrupted: None,
            counts: Summary {
                total_tasks: n,
                ..Summary::default()
            },
            reuse: None,
            cache: None,
            redeliveries: vec![0; n],
            max_redeliveries: 0,
            estimates: Default::default(),
            history: Default::default(),
            coord: Default::default(),
        }
    }

    /// Starts an attempt lost with its worker again, at most `n` times per task, apart from its
    /// retries (a queue executor's `Lost`).
    pub fn redelivering(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }

    /// Orders ready tasks by the longest remaining path in estimated time (when the history
    /// knows any duration; else by task count, as without it) and chooses `"auto"` timeouts.
    pub fn with_history(
        mut self,
        estimates: crate::history::Estimates,
        options: crate::history::HistoryOptions,
    ) -> Self {
        if let Some(ms) = estimates.durations_ms(options.keep as usize) {
            self.scheduler.weigh(&crate::history::weights_us(&ms));
        }
        self.estimates = estimates;
        self.history = options;
        self
    }

    /// The timeout of task `i`'s next attempt, and for an `"auto"` task how it was chosen. An
    /// explicit number on the task always wins.
    fn attempt_timeout(
        &self,
        i: usize,
    ) -> (std::time::Duration, Option<crate::history::ChosenTimeout>) {
        use crate::batch::TaskTimeout;
        let task = &self.tasks[i];
        let own = task.timeout_seconds;
        let ordinary = self
            .settings
            .timeout(task.agent.name(), own.and_then(TaskTimeout::seconds));
        let auto = match own {
            Some(TaskTimeout::Auto) => true,
            Some(TaskTimeout::Seconds(_)) => false,
            None => self.history.adaptive.default,
        };
        if !auto {
            return (ordinary, None);
        }
        let chosen = self.estimates.auto_timeout(
            i,
            self.history.keep as usize,
            &self.history.adaptive,
            ordinary,
        );
        let duration = std::time::Duration::try_from_secs_f64(chosen.seconds.max(0.0))
            .unwrap_or(std::time::Duration::MAX);
        (duration, Some(chosen))
    }

    /// Writes the run's events to `journal` as they happen, and reads the record of the run back
    /// from it rather than keeping it in memory.
    pub fn journaled(mut self, journal: crate::journal::JournalSink) -> Self {
        self.bus.ledger = Ledger::journaled(journal);
        self
    }

    /// Looks tasks with a `cache` object up in `cache` before running them, and stores their
    /// results when they succeed.
    pub fn caching(mut self, cache: Arc<crate::cache::Cache>) -> Self {
        self.cache = Some(crate::cache::run::RunCache::new(cache, self.tasks.len()));
        self
    }

    /// Starts from the outputs a previous run produced (`--rerun-failed`).
    pub fn reusing(mut self, reuse: Reuse) -> Self {
        self.reuse = Some(reuse);
        self
    }

    /// Runs the batch to the end and returns the record of the run with the batch's tasks
    /// (the trace and the result are read from them), the sinks (with what they collected) and
    /// the interrupt that stopped the run, if any.
    pub async fn run(
        mut self,
        run_id: String,
        mut interrupts: Option<mpsc::Receiver<Interrupt>>,
    ) -> Dispatched {
        let tasks = self.tasks.iter().map(TaskInfo::of).collect();
        let config = serde_json::to_value(&self.settings).expect("settings serialize");
        let resumed = self.reuse.as_mut().and_then(|r| r.resume.take());
        if let Some(resumed) = resumed {
            // The journal's run_started stands; what it recorded as finished stays finished.
            self.reuse = None;
            self.resume_from(resumed.events, &resumed.lines);
        } else {
            self.bus.emit(EventKind::RunStarted {
                run_id,
                previous_run_id: self.reuse.as_ref().map(|r| r.previous_run_id.clone()),
                config,
                tasks,
            });
        }
        if let Some(mut reuse) = self.reuse.take() {
            self.recheck_cached(&mut reuse).await;
            let mut files = std::mem::take(&mut reuse.files).into_iter();
            for (i, output) in reuse.outputs.into_iter().enumerate() {
                let kept_files = files.next().unwrap_or_default();
                let Some(output) = output else { continue };
                self.scheduler.succeeded(i);
                self.lives[i].files = kept_files;
                let events = self.lives[i].reused(output);
                self.publish(events);
            }
        }
        for i in self.scheduler.ready_tasks() {
            let events = self.lives[i].ready();
            self.publish(events);
        }

        loop {
            self.start_ready();
            let lookups = self.cache.as_ref().map_or(0, |c| c.pending());
            if self.executor.in_flight() == 0
                && self.backing_off.is_empty()
                && lookups == 0
                && !self.can_start_more()
            {
                break;
            }
            let next_retry = self.backing_off.peek().map(|Reverse((due, _))| *due);
            let busy = self.executor.in_flight() > 0;
            tokio::select! {
                (i, lookup) = cache_answer(&mut self.cache), if lookups > 0 => {
                    self.cache_answered(i, lookup)
                }
                interrupt = recv(&mut interrupts) => match interrupt {
                    Some(i) => self.interrupt(i),
                    None => interrupts = None,
                },
                Some(event) = self.executor.next_event(), if busy => self.executor_event(event),
                _ = sleep_until(next_retry), if next_retry.is_some() => self.retries_due(),
            }
        }

        let reason = self.stop.unwrap_or(CancelReason::FailFast);
        for i in self.scheduler.unfinished() {
            if self.lives[i].is_done() {
                // A coordinated task that ended as its last children were cancelled here.
                continue;
            }
            if self.coord.is_group(i) {
                self.group_ended(i, AttemptEnd::Cancelled);
                continue;
            }
            self.scheduler.finish(i);
            let events = self.lives[i].cancel(reason);
            self.publish(events);
        }
        // What attempts left behind (process groups in their TERM grace period) must be gone
        // before we report. Signals still count meanwhile: any of them ends the grace period
        // (KILL now). It does not change the outcome: every task has its final status already.
        loop {
            tokio::select! {
                () = self.executor.drain() => break,
                interrupt = recv(&mut interrupts) => match interrupt {
                    Some(_) => self.executor.hurry(),
                    None => interrupts = None,
                },
            }
        }
        self.executor.close().await;
        if let Some(cache) = self.cache.as_mut() {
            cache.finish().await;
        }
        let summary = self.summary();
        self.bus.emit(EventKind::RunFinished {
            status: summary.run_status(),
            summary,
        });
        let (ledger, sinks) = self.bus.into_parts();
        Dispatched {
            ledger,
            tasks: self.tasks,
            sinks,
            interrupted: self.interrupted,
        }
    }

    /// Task `i` reached its final status: outputs nobody will read any more leave memory (its
    /// own, if no dependent waits for it; its dependencies', if it was their last dependent).
    fn settled(&mut self, i: usize) {
        if self.pending[i] == 0 {
            self.lives[i].output = None;
        }
        for &j in self.scheduler.plan().deps(i) {
            self.pending[j] = self.pending[j].saturating_sub(1);
            if self.pending[j] == 0 {
                self.lives[j].output = None;
            }
        }
    }

    /// Restores the state an earlier part of the run left in its journal: finished tasks keep
    /// their status and output, attempts that were running when it stopped end as
    /// `interrupted` (their tasks run again, numbering attempts on), the rest run as planned.
    fn resume_from(&mut self, events: Vec<Event>, lines: &[(u64, u32)]) {
        let index: HashMap<String, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.clone(), i))
            .collect();
        let n = self.tasks.len();
        let mut open: Vec<Option<(u32, f64)>> = vec![None; n];
        let mut finished = vec![false; n];
        let mut order = Vec::new();
        let last_ms = events.last().map_or(0.0, |e| e.elapsed_ms);
        for e in &events {
            match &e.kind {
                EventKind::AttemptStarted {
                    task_id, attempt, ..
                } => {
                    if let Some(&i) = index.get(task_id) {
                        open[i] = Some((*attempt, e.elapsed_ms));
                        self.lives[i].attempts = self.lives[i].attempts.max(*attempt);
                    }
                }
                EventKind::AttemptFinished {
                    task_id, attempt, ..
                } => {
                    if let Some(&i) = index.get(task_id)
                        && open[i].is_some_and(|(a, _)| a == *attempt)
                    {
                        open[i] = None;
                    }
                }
                EventKind::TaskFinished {
                    task_id,
                    status,
                    output,
                    reused,
                    files,
                    ..
                } => {
                    if let Some(&i) = index.get(task_id)
                        && !finished[i]
                    {
                        finished[i] = true;
                        open[i] = None;
                        self.counts.add_files(files);
                        order.push((i, *status, output.clone(), *reused));
                    }
                }
                _ => {}
            }
        }
        self.bus.replay(events, lines);
        let mut blocked = Vec::new();
        for (i, status, output, reused) in order {
            self.counts.count(status);
            if let (Some(out), false) = (&output, reused) {
                self.counts.add_usage(out);
            }
            self.lives[i].state = crate::runner::task_state::TaskState::Done(status);
            if status == TaskStatus::Success {
                self.lives[i].output = Some(output.unwrap_or(Value::Null));
                self.scheduler.succeeded(i);
            } else {
                blocked.extend(self.scheduler.failed(i));
            }
            self.settled(i);
        }
        for (i, slot) in open.into_iter().enumerate() {
            let Some((attempt, start_ms)) = slot else {
                continue;
            };
            self.bus.emit(EventKind::AttemptFinished {
                task_id: self.tasks[i].task_id.clone(),
                attempt,
                outcome: crate::events::AttemptOutcome::Interrupted,
                executed_by: None,
                files: Default::default(),
                duration_ms: (last_ms - start_ms).max(0.0),
                error: Some(TaskError::transient(
                    ErrorKind::AttemptLost,
                    "the runner stopped while this attempt ran; the resumed run runs the task again",
                )),
            });
        }
        // Dependents of a failure the journal did not get to mark as skipped.
        for (skipped, because) in blocked {
            if finished[skipped] {
                continue;
            }
            let message = format!(
                "dependency '{}' did not succeed",
                self.tasks[because].task_id
            );
            let events = self.lives[skipped].skip(message);
            self.publish(events);
        }
    }

    fn can_start_more(&self) -> bool {
        self.stop.is_none() && self.scheduler.has_ready()
    }

    /// Publishes events in order, counting finished tasks for the summary.
    fn publish(&mut self, events: Vec<EventKind>) {
        for event in events {
            let mut settled = None;
            let mut member = None;
            if let EventKind::TaskFinished {
                task_id,
                status,
                output,
                reused,
                cached,
                files,
                ..
            } = &event
            {
                if let (Some(out), false) = (output, reused) {
                    self.counts.add_usage(out);
                }
                settled = self.bus.ledger.task_index(task_id);
                member = settled.and_then(|i| self.coord.member_entry(i, &self.tasks[i], &event));
                // The summary counts the batch's own tasks; a child counts in its parent's.
                if member.is_none() {
                    self.counts.count(*status);
                    self.counts.cached += usize::from(*cached);
                    self.counts.add_files(files);
                }
            }
            self.bus.emit(event);
            if let Some(i) = settled {
                self.settled(i);
            }
            if let Some((i, entry)) = member {
                self.member_finished(i, entry);
            }
        }
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

    /// The breaker task `i` counts against: none when breakers are off; the named one it opted
    /// into; else the remote dependency its input calls, if any.
    fn breaker_for(&self, i: usize, input: &AgentInput) -> Option<BreakerKey> {
        if !self.settings.breaker_enabled {
            return None;
        }
        let task = &self.tasks[i];
        if let Some(name) = self
            .settings
            .named_breaker(task.agent.name(), task.breaker.as_deref())
        {
            return Some(BreakerKey::named(name));
        }
        input
            .dependency_breaker(&self.services)
            .map(BreakerKey::dependency)
    }

    fn start_attempt(&mut self, i: usize) {
        let (input, substituted) = match self.resolve_input(i) {
            Ok(resolved) => resolved,
            Err(error) => return self.fail(i, error.into()),
        };
        if input.is_coordinated() {
            return self.start_group(i, input);
        }
        // A task with a `cache` object is looked up first, off the runtime; it takes no worker
        // meanwhile, and comes back through `cache_answered`.
        if let Some(cache) = self.cache.as_mut()
            && cache.wants_lookup(i, &self.tasks[i])
        {
            cache.spawn_lookup(i, &self.tasks[i], input.input_value());
            return;
        }
        let now = Instant::now();
        let breaker = match self.breaker_for(i, &input) {
            None => None,
            Some(key) => {
                let settings = &self.settings;
                let breaker = self.breakers.entry(key.label.clone()).or_insert_with(|| {
                    CircuitBreaker::new(
                        settings.breaker_failure_threshold,
                        settings.breaker_recovery(),
                    )
                });
                let (permit, transition) = breaker.try_acquire(now);
                self.breaker_changed(&key.label, transition);
                let Ok(permit) = permit else {
                    let error = TaskError::permanent(
                        ErrorKind::CircuitOpen,
                        format!(
                            "circuit breaker '{}' is open after repeated failures; task not attempted",
                            key.label
                        ),
                    );
                    return self.fail(i, error.into());
                };
                Some((key, permit))
            }
        };

        let acquired = self.workers.try_acquire();
        debug_assert!(acquired, "start_ready checked for room");
        if let Some(limit) = self.agent_limits.get_mut(self.tasks[i].agent.name()) {
            limit.try_acquire();
        }
        let worker = self.lanes.iter().position(|busy| !busy).unwrap_or(0);
        self.lanes[worker] = true;
        self.last_attempt_id += 1;
        let attempt_id = AttemptId(self.last_attempt_id);
        let mut events = self.lives[i].start(attempt_id, worker, breaker, now);
        let (timeout, chosen) = self.attempt_timeout(i);
        for e in &mut events {
            if let EventKind::AttemptStarted { timeout: t, .. } = e {
                *t = chosen;
            }
        }
        self.publish(events);
        self.current.insert(attempt_id, i);

        let task = &self.tasks[i];
        let request = AttemptRequest {
            attempt_id,
            task_id: task.task_id.clone(),
            attempt: self.lives[i].attempts,
            input,
            timeout,
            max_output_bytes: self.settings.max_output_bytes,
            kill_grace: KILL_GRACE,
            dependency_outputs: self.dependency_outputs(i),
            substituted,
        };
        self.executor.start(request);
    }

    /// The outputs of task `i`'s dependencies, by task id.
    fn dependency_outputs(&self, i: usize) -> Vec<(String, Value)> {
        self.scheduler
            .plan()
            .deps(i)
            .iter()
            .filter_map(|&j| Some((self.tasks[j].task_id.clone(), self.lives[j].output.clone()?)))
            .collect()
    }

    /// The task's input with `{{tasks.X.output...}}` replaced by upstream outputs, and whether
    /// anything had to be substituted.
    fn resolve_input(&self, i: usize) -> Result<(AgentInput, bool), TaskError> {
        let agent = &self.tasks[i].agent;
        // Validation only lets a task reference its dependencies, so a task without any has
        // nothing to substitute: skip the JSON round trip on the hot path.
        if self.tasks[i].dependencies.is_empty() {
            return Ok((agent.clone(), false));
        }
        let mut input = agent.input_value();
        // A child batch's own references are the child's (see `Agent::CHILD_FIELDS`).
        let held = coordinated::hold_child_fields(agent.name(), &mut input);
        let ids: HashMap<&str, usize> = self.tasks[i]
            .dependencies
            .iter()
            .filter_map(|d| {
                self.scheduler
                    .plan()
                    .deps(i)
                    .iter()
                    .find(|&&j| self.tasks[j].task_id == *d)
                    // A child task refers to its siblings by their ids in the child batch.
                    .map(|&j| (coordinated::local_id(d), j))
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
            let output = self.lives[*j]
                .output
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
        coordinated::restore_child_fields(&mut input, held);
        // Read from a borrowed tree, so the input is still there to explain a failure.
        let tagged = serde_json::json!({"agent": agent.name(), "input_data": input});
        let resolved = match <AgentInput as serde::Deserialize>::deserialize(&tagged) {
            Ok(resolved) => resolved,
            Err(e) => {
                // A typed reference brought a value of the wrong type: say which one and where.
                let original = agent.input_value();
                let message = crate::batch::validate::substituted_value_problem(
                    agent.name(),
                    &original,
                    &tagged["input_data"],
                )
                .unwrap_or_else(|| {
                    format!("input no longer valid after substituting outputs: {e}")
                });
                return Err(TaskError::permanent(
                    ErrorKind::ReferenceUnresolved,
                    message,
                ));
            }
        };
        Ok((resolved, true))
    }

    fn executor_event(&mut self, event: ExecutorEvent) {
        match event {
            ExecutorEvent::Progress {
                attempt_id,
                progress,
                total,
                message,
            } => {
                let Some(&i) = self.current.get(&attempt_id) else {
                    return;
                };
                let attempt = self.lives[i].attempts;
                self.bus.emit(EventKind::TaskProgress {
                    task_id: self.tasks[i].task_id.clone(),
                    attempt,
                    progress,
                    total,
                    message,
                });
            }
            ExecutorEvent::Finished {
                attempt_id,
                end,
                files,
            } => self.attempt_ended(attempt_id, end, files),
            ExecutorEvent::Lost { attempt_id, reason } => {
                let error = TaskError::transient(
                    ErrorKind::WorkerLost,
                    format!("the executor lost the attempt: {reason}"),
                );
                self.attempt_ended(
                    attempt_id,
                    AttemptEnd::Finished(Err(error.into())),
                    Default::default(),
                );
            }
            ExecutorEvent::Waiting { queued, agents } => {
                self.bus
                    .emit(EventKind::WaitingForWorkers { queued, agents });
            }
            ExecutorEvent::Failed { reason } => {
                tracing::error!("stopping the run: {reason}");
                if self.stop.is_none() {
                    self.stop_run(CancelReason::ExecutorFailed);
                }
            }
        }
    }

    fn attempt_ended(&mut self, attempt_id: AttemptId, end: AttemptEnd, files: FilesTouched) {
        // An end for an attempt that is not current (reported twice, or late) changes nothing.
        let Some(i) = self.current.remove(&attempt_id) else {
            return;
        };
        self.lives[i].files = files;
        let now = Instant::now();
        // Health evidence for the breaker, judged before the end is consumed.
        let verdict = match &end {
            AttemptEnd::Cancelled => None,
            AttemptEnd::Finished(Ok(_)) => Some(Ok(())),
            AttemptEnd::Finished(Err(f)) => Some(Err(f.error.clone())),
        };
        let task = &self.tasks[i];
        let policy = self.settings.retry_policy(task.agent.name(), task.retries);
        let stopping = self.stop.is_some();
        // A lost worker is not the task's failure: it runs again at once, within its own budget
        // (past it, a loss is a transient failure like any other), and the retry policy counts
        // only the attempts that were not redelivered.
        let lost =
            matches!(&end, AttemptEnd::Finished(Err(f)) if f.error.kind == ErrorKind::WorkerLost);
        let redeliver = lost && !stopping && self.redeliveries[i] < self.max_redeliveries;
        if redeliver {
            self.redeliveries[i] += 1;
        }
        let redelivered = self.redeliveries[i] - u32::from(redeliver);
        let retry = |n: u32, e: &TaskError| {
            if stopping {
                None
            } else if redeliver {
                Some(std::time::Duration::ZERO)
            } else {
                policy.next_delay(n.saturating_sub(redelivered), e, fastrand::f64())
            }
        };
        let executed_by = self.executor.worker_of(attempt_id);
        let reason = self.stop.unwrap_or(CancelReason::Sigint);
        let Some((attempt, after, mut events)) =
            self.lives[i].attempt_ended(attempt_id, end, now, retry, reason)
        else {
            return;
        };
        if let Some(EventKind::AttemptFinished {
            executed_by: by, ..
        }) = events.first_mut()
        {
            *by = executed_by;
        }
        self.coord.explain_cancel(i, &mut events);

        self.workers.release();
        if let Some(limit) = self.agent_limits.get_mut(self.tasks[i].agent.name()) {
            limit.release();
        }
        self.lanes[attempt.worker] = false;
        if let (AfterAttempt::Succeeded, Some(cache)) = (&after, self.cache.as_mut())
            && let Some(EventKind::TaskFinished {
                output: Some(output),
                files,
                ..
            }) = events.last()
        {
            cache.spawn_store(i, &self.tasks[i], output.clone(), files.clone());
        }
        if let Some((key, permit)) = attempt.breaker {
            let breaker = self.breakers.get_mut(&key.label).expect("breaker exists");
            let transition = match verdict {
                Some(Ok(())) => breaker.on_success(permit),
                Some(Err(e)) if key.counts(&e) => breaker.on_failure(permit, now),
                _ => {
                    breaker.on_release(permit);
                    None
                }
            };
            self.breaker_changed(&key.label, transition);
        }
        self.publish(events);
        self.after_attempt(i, after);
    }

    /// What follows the end of task `i`'s attempt: dependents, a retry, skips.
    fn after_attempt(&mut self, i: usize, after: AfterAttempt) {
        match after {
            AfterAttempt::Succeeded => {
                for d in self.scheduler.succeeded(i) {
                    let events = self.lives[d].ready();
                    self.publish(events);
                }
            }
            AfterAttempt::RetryAt(due) => self.backing_off.push(Reverse((due, i))),
            AfterAttempt::Failed => self.after_failure(i),
            AfterAttempt::Cancelled => self.scheduler.finish(i),
        }
    }

    /// A lookup of task `i` came back: on a hit the task is done without running; otherwise it
    /// goes back to the ready set and starts like any other (and is stored if it succeeds).
    fn cache_answered(&mut self, i: usize, lookup: crate::cache::Lookup) {
        use crate::cache::Lookup;
        let task_id = self.tasks[i].task_id.clone();
        let event = match &lookup {
            Lookup::Hit {
                key,
                files_restored,
                ..
            } => EventKind::CacheChecked {
                task_id,
                hit: true,
                key: Some(key.clone()),
                reason: None,
                files_restored: *files_restored,
            },
            Lookup::Miss { key, reason } => EventKind::CacheChecked {
                task_id,
                hit: false,
                key: Some(key.clone()),
                reason: reason.clone(),
                files_restored: 0,
            },
            Lookup::Uncacheable { reason } => EventKind::CacheChecked {
                task_id,
                hit: false,
                key: None,
                reason: Some(reason.clone()),
                files_restored: 0,
            },
        };
        self.bus.emit(event);
        match lookup {
            // A stopping run starts nothing: the task stays unfinished and is cancelled.
            Lookup::Hit { output, files, .. } if self.stop.is_none() => {
                self.lives[i].files = files;
                let events = self.lives[i].cached(output);
                self.publish(events);
                for d in self.scheduler.succeeded(i) {
                    let events = self.lives[d].ready();
                    self.publish(events);
                }
            }
            _ => self.scheduler.requeue(i),
        }
    }

    /// `--rerun-failed`: a kept task with a `cache` object is kept only if its cache key is the
    /// one the previous run recorded; one whose declared inputs changed (a fixed source file)
    /// runs again, and so does everything downstream of a task that runs again.
    async fn recheck_cached(&mut self, reuse: &mut Reuse) {
        if self.cache.is_none() || !self.tasks.iter().any(|t| t.cache.is_some()) {
            return;
        }
        let n = self.tasks.len();
        // Dependencies before dependents (Kahn), so a dropped task drops what reads it.
        let mut unmet: Vec<usize> = (0..n)
            .map(|i| self.scheduler.plan().deps(i).len())
            .collect();
        let mut order: Vec<usize> = (0..n).filter(|&i| unmet[i] == 0).collect();
        let mut k = 0;
        while k < order.len() {
            let i = order[k];
            k += 1;
            for &d in self.scheduler.plan().dependents(i) {
                unmet[d] -= 1;
                if unmet[d] == 0 {
                    order.push(d);
                }
            }
        }
        for i in order {
            let Some(output) = reuse.outputs[i].clone() else {
                continue;
            };
            let upstream_runs = self
                .scheduler
                .plan()
                .deps(i)
                .iter()
                .any(|&j| reuse.outputs[j].is_none());
            let mut drop = upstream_runs;
            if !drop && self.tasks[i].cache.is_some() {
                let recorded = reuse.cache_keys.get(&self.tasks[i].task_id).cloned();
                let key = match self.resolve_input(i) {
                    Ok((input, _)) => {
                        let cache = self.cache.as_ref().expect("checked above");
                        cache.key_of(&self.tasks[i], input.input_value()).await
                    }
                    Err(e) => Err(e.message.clone()),
                };
                if let (Ok(now), Some(then)) = (&key, &recorded)
                    && now == then
                {
                    // Recorded again, so a rerun of this run can check it too.
                    self.bus.emit(EventKind::CacheChecked {
                        task_id: self.tasks[i].task_id.clone(),
                        hit: true,
                        key: Some(now.clone()),
                        reason: Some(format!(
                            "unchanged since run {}: its output is reused",
                            reuse.previous_run_id
                        )),
                        files_restored: 0,
                    });
                }
                let reason = match (&key, &recorded) {
                    (Ok(now), Some(then)) if now == then => None,
                    (Ok(_), Some(_)) => Some(format!(
                        "its declared inputs changed since run {}; it runs again",
                        reuse.previous_run_id
                    )),
                    (Ok(_), None) => Some(format!(
                        "run {} recorded no cache key for it; it runs again",
                        reuse.previous_run_id
                    )),
                    (Err(e), _) => Some(format!("{e}; it runs again")),
                };
                if let Some(reason) = reason {
                    drop = true;
                    self.bus.emit(EventKind::CacheChecked {
                        task_id: self.tasks[i].task_id.clone(),
                        hit: false,
                        key: key.ok(),
                        reason: Some(reason),
                        files_restored: 0,
                    });
                }
            }
            if drop {
                reuse.outputs[i] = None;
            } else {
                // Dependents' inputs are resolved from it while checking them.
                self.lives[i].output = Some(output);
            }
        }
    }

    fn retries_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, i))) = self.backing_off.peek().copied() {
            if due > now {
                break;
            }
            self.backing_off.pop();
            if self.lives[i].retry_due(now) {
                self.scheduler.requeue(i);
            }
        }
    }

    /// A final failure before or without an attempt (open breaker, unresolvable reference).
    fn fail(&mut self, i: usize, failure: Failure) {
        let events = self.lives[i].fail(failure);
        self.publish(events);
        self.after_failure(i);
    }

    /// Skips everything downstream of failed task `i` and stops the run under fail-fast.
    fn after_failure(&mut self, i: usize) {
        let status = match self.lives[i].state {
            crate::runner::task_state::TaskState::Done(s) => s,
            _ => TaskStatus::Error,
        };
        let failed_id = self.tasks[i].task_id.clone();
        for (skipped, because) in self.scheduler.failed(i) {
            let dep = &self.tasks[because].task_id;
            let message = if because == i {
                format!("dependency '{dep}' did not succeed ({})", status.as_str())
            } else {
                format!("dependency '{dep}' was skipped because '{failed_id}' did not succeed")
            };
            let events = self.lives[skipped].skip(message);
            self.publish(events);
        }
        // An alternative of `first_success` failing is what the construct is for.
        if self.settings.fail_fast && self.stop.is_none() && !self.coord.is_alternative(i) {
            self.stop_run(CancelReason::FailFast);
        }
    }

    fn interrupt(&mut self, interrupt: Interrupt) {
        if self.interrupted.is_some() {
            // A second interrupt: no more grace for process groups.
            self.executor.hurry();
            return;
        }
        self.interrupted = Some(interrupt);
        self.stop_run(interrupt.reason());
        self.executor.cancel_all();
    }

    /// Stops starting tasks. Tasks backing off end now: with their last failure under
    /// fail-fast, as cancelled on an interrupt.
    fn stop_run(&mut self, reason: CancelReason) {
        self.stop = Some(reason);
        self.bus.emit(EventKind::RunCancelled { reason });
        let waiting: Vec<usize> = self.backing_off.drain().map(|Reverse((_, i))| i).collect();
        for i in waiting {
            let (events, failed) = self.lives[i].give_up(reason);
            self.publish(events);
            if failed {
                self.after_failure(i);
            } else {
                self.scheduler.finish(i);
            }
        }
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

/// What [`Dispatcher::run`] hands back.
pub struct Dispatched {
    /// The record of the run (reading the journal back, when there is one).
    pub ledger: Ledger,
    /// The batch's tasks, as given.
    pub tasks: Vec<Task>,
    pub sinks: Vec<Box<dyn EventSink>>,
    pub interrupted: Option<Interrupt>,
}

async fn recv(rx: &mut Option<mpsc::Receiver<Interrupt>>) -> Option<Interrupt> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn cache_answer(
    cache: &mut Option<crate::cache::run::RunCache>,
) -> (usize, crate::cache::Lookup) {
    match cache {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The dispatcher over an executor that is not the local one: it answers every attempt
    //! itself, without running anything, and misbehaves the way a queue may.

    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;
    use crate::batch::validate::validate_value;
    use crate::events::AttemptOutcome;

    /// Answers each attempt at once: the first attempt of `lost` is lost; every other attempt
    /// succeeds with its task id, and every `Finished` is delivered twice, followed by progress
    /// and an end for attempts that never existed.
    #[derive(Default)]
    struct Scripted {
        queue: VecDeque<ExecutorEvent>,
        in_flight: usize,
        started: Vec<AttemptRequest>,
    }

    impl Executor for Scripted {
        fn start(&mut self, request: AttemptRequest) {
            let attempt_id = request.attempt_id;
            self.in_flight += 1;
            if request.task_id == "lost" && request.attempt == 1 {
                self.queue.push_back(ExecutorEvent::Lost {
                    attempt_id,
                    reason: "worker went away".into(),
                });
            } else {
                let end = || AttemptEnd::Finished(Ok(json!({"stdout": request.task_id.clone()})));
                let files = || FilesTouched {
                    read: vec![crate::files::FileRecord::new(
                        format!("{}.txt", request.task_id),
                        b"in",
                    )],
                    ..FilesTouched::default()
                };
                self.queue.push_back(ExecutorEvent::Finished {
                    attempt_id,
                    end: end(),
                    files: files(),
                });
                self.queue.push_back(ExecutorEvent::Finished {
                    attempt_id,
                    end: end(),
                    files: files(),
                });
            }
            self.queue.push_back(ExecutorEvent::Progress {
                attempt_id: AttemptId(999),
                progress: 1.0,
                total: None,
                message: None,
            });
            self.queue.push_back(ExecutorEvent::Finished {
                attempt_id: AttemptId(1000),
                end: AttemptEnd::Cancelled,
                files: Default::default(),
            });
            self.started.push(request);
        }
        fn cancel(&mut self, _: AttemptId) {}
        fn cancel_all(&mut self) {}
        fn hurry(&mut self) {}
        fn in_flight(&self) -> usize {
            // Stays "busy" while duplicates are queued, as a queue consumer would.
            self.in_flight.max(usize::from(!self.queue.is_empty()))
        }
        async fn next_event(&mut self) -> Option<ExecutorEvent> {
            let event = self.queue.pop_front()?;
            if matches!(
                event,
                ExecutorEvent::Finished { attempt_id, .. } | ExecutorEvent::Lost { attempt_id, .. }
                    if attempt_id.0 < 999
            ) {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            Some(event)
        }
        async fn drain(&mut self) {}
        async fn close(&mut self) {}
    }

    #[tokio::test]
    async fn duplicate_late_and_stray_reports_are_ignored_and_lost_attempts_retried() {
        let batch = validate_value(json!({"tasks": [
            {"task_id": "a", "agent": "command", "input_data": {"argv": ["x"]}},
            {"task_id": "lost", "agent": "command", "retries": 1, "input_data": {"argv": ["x"]}},
            {"task_id": "b", "agent": "command", "dependencies": ["a"],
             "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}"]}}
        ], "config": {"retry_backoff_ms": 0}}))
        .unwrap();
        let settings = RunSettings::resolve(&[&batch.batch.config]);
        let dispatcher = Dispatcher::with_executor(
            batch,
            settings,
            Arc::new(Services::default()),
            Vec::new(),
            Scripted::default(),
        );
        let done = dispatcher.run("run-1".into(), None).await;
        assert!(done.interrupted.is_none());
        let batch = crate::Batch {
            tasks: done.tasks,
            config: Default::default(),
        };
        let record = crate::reporter::ledger::RunLog::new(done.ledger, batch)
            .record()
            .unwrap();
        let statuses: Vec<_> = record.tasks.iter().map(|t| t.status).collect();
        assert!(
            statuses.iter().all(|s| *s == Some(TaskStatus::Success)),
            "{statuses:?}"
        );
        let lost = &record.tasks[1];
        let outcomes: Vec<_> = lost.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [Some(AttemptOutcome::Error), Some(AttemptOutcome::Success)]
        );
        // Each task finished exactly once although every end was delivered twice.
        let finished = record
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::TaskFinished { .. }))
            .count();
        assert_eq!(finished, 3);
        // Each task's files came with its end, once; on its result and on its attempt.
        for t in &record.tasks {
            let want = vec![crate::files::FileRecord::new(
                format!("{}.txt", t.task_id),
                b"in",
            )];
            assert_eq!(t.files.read, want, "{}", t.task_id);
            assert_eq!(t.attempts.last().unwrap().files.read, want);
        }
        assert!(record.tasks[1].attempts[0].files.is_empty(), "lost: none");
        assert_eq!(record.summary.files.read, 3);
        assert!(
            !record
                .events
                .iter()
                .any(|e| matches!(e.kind, EventKind::TaskProgress { .. })),
            "progress of an unknown attempt is dropped"
        );
    }
}

#[cfg(test)]
mod redelivery_tests {
    //! Attempts lost with their worker are started again within `max_redeliveries`, apart from
    //! the task's `retries`, and name the worker that had them.

    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;
    use crate::batch::validate::validate_value;

    /// Task `gone` is always lost; task `flaky` is lost once, then fails transiently once, then
    /// succeeds.
    #[derive(Default)]
    struct Losing {
        queue: VecDeque<ExecutorEvent>,
        seen: HashMap<String, u32>,
    }

    impl Executor for Losing {
        fn start(&mut self, request: AttemptRequest) {
            let n = self.seen.entry(request.task_id.clone()).or_default();
            *n += 1;
            let attempt_id = request.attempt_id;
            let event = match (request.task_id.as_str(), *n) {
                ("gone", _) | ("flaky", 1) => ExecutorEvent::Lost {
                    attempt_id,
                    reason: "worker 'w9' did not renew its lease".into(),
                },
                ("flaky", 2) => ExecutorEvent::Finished {
                    attempt_id,
                    end: AttemptEnd::Finished(Err(TaskError::transient(
                        ErrorKind::ExitStatus,
                        "flaked",
                    )
                    .into())),
                    files: Default::default(),
                },
                _ => ExecutorEvent::Finished {
                    attempt_id,
                    end: AttemptEnd::Finished(Ok(json!({"stdout": "ok"}))),
                    files: Default::default(),
                },
            };
            self.queue.push_back(event);
        }
        fn cancel(&mut self, _: AttemptId) {}
        fn cancel_all(&mut self) {}
        fn hurry(&mut self) {}
        fn in_flight(&self) -> usize {
            self.queue.len()
        }
        async fn next_event(&mut self) -> Option<ExecutorEvent> {
            self.queue.pop_front()
        }
        fn worker_of(&mut self, _: AttemptId) -> Option<String> {
            Some("w9".into())
        }
        async fn drain(&mut self) {}
        async fn close(&mut self) {}
    }

    #[tokio::test]
    async fn lost_attempts_are_redelivered_within_their_own_budget() {
        let batch = validate_value(json!({"tasks": [
            {"task_id": "gone", "agent": "command", "retries": 1, "input_data": {"argv": ["x"]}},
            {"task_id": "flaky", "agent": "command", "retries": 1, "input_data": {"argv": ["x"]}}
        ], "config": {"retry_backoff_ms": 0}}))
        .unwrap();
        let settings = RunSettings::resolve(&[&batch.batch.config]);
        let done = Dispatcher::with_executor(
            batch,
            settings,
            Arc::new(Services::default()),
            Vec::new(),
            Losing::default(),
        )
        .redelivering(2)
        .run("run-1".into(), None)
        .await;
        let batch = crate::Batch {
            tasks: done.tasks,
            config: Default::default(),
        };
        let record = crate::reporter::ledger::RunLog::new(done.ledger, batch)
            .record()
            .unwrap();
        let gone = &record.tasks[0];
        // The first loss, two redeliveries, then the one retry; the fourth loss is final.
        assert_eq!(gone.status, Some(TaskStatus::Error));
        assert_eq!(gone.attempts.len(), 4);
        assert!(gone.attempts.iter().all(|a| {
            a.error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::WorkerLost)
                && a.executed_by.as_deref() == Some("w9")
        }));
        // The loss did not use up the one retry the transient failure needed.
        let flaky = &record.tasks[1];
        assert_eq!(flaky.status, Some(TaskStatus::Success));
        assert_eq!(flaky.attempts.len(), 3);
    }
}
