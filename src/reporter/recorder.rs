//! Folds the event stream into a record of the run: every task with its attempts and final state,
//! plus the events themselves. The result document and the trace are both read off this record.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{
    AttemptOutcome, Event, EventKind, EventSink, RunStatus, Summary, TaskInfo, TaskStatus,
};
use crate::files::FilesTouched;
use crate::task_error::TaskError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: usize,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<f64>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<TaskError>,
    /// Milliseconds since run start; kept for timelines.
    pub start_ms: f64,
    /// The worker that ran it (`--redis` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    /// The files it read and wrote.
    #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
    pub files: FilesTouched,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub agent: String,
    pub description: String,
    pub dependencies: Vec<String>,
    /// None only while the run is in progress.
    pub status: Option<TaskStatus>,
    pub output: Option<Value>,
    pub error: Option<TaskError>,
    pub attempts: Vec<AttemptRecord>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub execution_time_ms: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    /// The output came from the result cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The files of its last attempt (of a reused or cached output: the run that made it).
    #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
    pub files: FilesTouched,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run_id: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: Option<RunStatus>,
    pub config: Value,
    pub summary: Summary,
    pub tasks: Vec<TaskRecord>,
    pub events: Vec<Event>,
}

/// The subscriber that builds a [`RunRecord`].
#[derive(Debug, Default)]
pub struct Recorder {
    record: Option<RunRecord>,
    index: HashMap<String, usize>,
    first_start_ms: Vec<Option<f64>>,
}

impl Recorder {
    pub fn into_record(self) -> Option<RunRecord> {
        self.record
    }

    pub fn record(&self) -> Option<&RunRecord> {
        self.record.as_ref()
    }
}

impl EventSink for Recorder {
    fn on_event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted {
                run_id,
                previous_run_id,
                config,
                tasks,
            } => {
                self.index = tasks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.task_id.clone(), i))
                    .collect();
                self.first_start_ms = vec![None; tasks.len()];
                self.record = Some(RunRecord {
                    run_id: run_id.clone(),
                    previous_run_id: previous_run_id.clone(),
                    started_at: event.at.clone(),
                    finished_at: None,
                    status: None,
                    config: config.clone(),
                    summary: Summary {
                        total_tasks: tasks.len(),
                        ..Summary::default()
                    },
                    tasks: tasks.iter().map(TaskRecord::new).collect(),
                    events: Vec::new(),
                });
            }
            EventKind::AttemptStarted { task_id, .. }
            | EventKind::AttemptFinished { task_id, .. }
            | EventKind::TaskFinished { task_id, .. } => {
                let Some(&i) = self.index.get(task_id.as_str()) else {
                    return self.keep(event);
                };
                if let Some(r) = self.record.as_mut() {
                    r.tasks[i].apply(&mut self.first_start_ms[i], event);
                    if let EventKind::TaskFinished { status, .. } = &event.kind {
                        r.summary.count(*status);
                    }
                }
            }
            EventKind::RunFinished { status, summary } => {
                if let Some(r) = self.record.as_mut() {
                    r.status = Some(*status);
                    r.summary = summary.clone();
                    r.finished_at = Some(event.at.clone());
                }
            }
            EventKind::TaskReady { .. }
            | EventKind::RetryScheduled { .. }
            | EventKind::BreakerChanged { .. }
            | EventKind::TaskProgress { .. }
            | EventKind::CacheChecked { .. }
            | EventKind::WaitingForWorkers { .. }
            | EventKind::RunCancelled { .. } => {}
        }
        self.keep(event);
    }
}

impl Recorder {
    fn keep(&mut self, event: &Event) {
        if let Some(r) = self.record.as_mut() {
            r.events.push(event.clone());
        }
    }
}

impl TaskRecord {
    /// The record of a task that has not started, from what `run_started` says of it.
    pub fn new(info: &TaskInfo) -> TaskRecord {
        TaskRecord {
            task_id: info.task_id.clone(),
            agent: info.agent.clone(),
            description: info.description.clone(),
            dependencies: info.dependencies.clone(),
            status: None,
            output: None,
            error: None,
            attempts: Vec::new(),
            started_at: None,
            finished_at: None,
            execution_time_ms: 0,
            reused: false,
            cached: false,
            files: FilesTouched::default(),
        }
    }

    /// Folds one of this task's own events (attempt started or finished, task finished) into
    /// the record; `first_start_ms` is when its first attempt started, for `execution_time_ms`.
    /// Other events change nothing.
    pub fn apply(&mut self, first_start_ms: &mut Option<f64>, event: &Event) {
        match &event.kind {
            EventKind::AttemptStarted {
                attempt, worker, ..
            } => {
                if self.started_at.is_none() {
                    self.started_at = Some(event.at.clone());
                }
                self.attempts.push(AttemptRecord {
                    attempt: *attempt,
                    worker: *worker,
                    started_at: event.at.clone(),
                    finished_at: None,
                    duration_ms: None,
                    outcome: None,
                    error: None,
                    start_ms: event.elapsed_ms,
                    executed_by: None,
                    files: FilesTouched::default(),
                });
                first_start_ms.get_or_insert(event.elapsed_ms);
            }
            EventKind::AttemptFinished {
                attempt,
                outcome,
                duration_ms,
                error,
                executed_by,
                files,
                ..
            } => {
                if let Some(a) = self
                    .attempts
                    .iter_mut()
                    .rev()
                    .find(|a| a.attempt == *attempt)
                {
                    a.finished_at = Some(event.at.clone());
                    a.duration_ms = Some(*duration_ms);
                    a.outcome = Some(*outcome);
                    a.error = error.clone();
                    a.executed_by = executed_by.clone();
                    a.files = files.clone();
                }
            }
            EventKind::TaskFinished {
                status,
                output,
                error,
                reused,
                cached,
                files,
                ..
            } => {
                self.status = Some(*status);
                self.files = files.clone();
                self.reused = *reused;
                self.cached = *cached;
                self.output = output.clone();
                self.error = error.clone();
                if self.started_at.is_some() {
                    self.finished_at = Some(event.at.clone());
                }
                self.execution_time_ms =
                    first_start_ms.map_or(0, |s| (event.elapsed_ms - s).max(0.0).round() as u64);
            }
            _ => {}
        }
    }
}
