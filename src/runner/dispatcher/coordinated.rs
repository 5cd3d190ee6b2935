//! The dispatcher's side of coordinated tasks (`batch`, `first_success`; see `runner::groups`):
//! a group task holds no worker and sends nothing to the executor. Its children are added to the
//! run as tasks of their own (`<task_id>/<child id>`), so they take the parent's worker slots,
//! breakers, retries, cancellation, events and trace; the group ends from their outcomes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::Dispatcher;
use crate::agents::AgentInput;
use crate::batch::{Task, ValidationContext};
use crate::events::{EventKind, Summary, TaskStatus};
use crate::graph::Plan;
use crate::runner::executor::{AttemptEnd, AttemptId, Executor};
use crate::runner::groups::{self, GroupKind};
use crate::runner::task_state::{TaskLife, TaskState};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// Every group of the run and who belongs to which.
#[derive(Default)]
pub(super) struct Coordination {
    groups: HashMap<usize, Group>,
    /// Child task → its group's task.
    parent_of: HashMap<usize, usize>,
    /// `batch` nesting of added tasks (absent: 0, a task of the batch itself).
    depth: HashMap<usize, u32>,
    /// Race losers being cancelled, with the error they end with.
    superseded: HashMap<usize, TaskError>,
}

struct Group {
    kind: GroupKind,
    /// Nesting of its children.
    depth: u32,
    /// Its children, in the child batch's order (alternatives as they start).
    members: Vec<usize>,
    /// Each member's result entry, once it finished.
    results: Vec<Option<Value>>,
    /// Alternatives not started yet (`sequential`).
    waiting: VecDeque<Task>,
    done: bool,
}

impl Coordination {
    pub(super) fn is_group(&self, i: usize) -> bool {
        self.groups.contains_key(&i)
    }

    /// Whether task `i` is an alternative of a `first_success`.
    pub(super) fn is_alternative(&self, i: usize) -> bool {
        self.parent_of
            .get(&i)
            .and_then(|p| self.groups.get(p))
            .is_some_and(|g| g.kind != GroupKind::Batch)
    }

    /// The result entry of child task `i` finishing with `event`, if `i` is a child.
    pub(super) fn member_entry(
        &self,
        i: usize,
        task: &Task,
        event: &EventKind,
    ) -> Option<(usize, Value)> {
        self.parent_of.get(&i)?;
        let EventKind::TaskFinished {
            status,
            output,
            error,
            attempts,
            ..
        } = event
        else {
            return None;
        };
        Some((
            i,
            json!({
                "task_id": local_id(&task.task_id),
                "agent": task.agent.name(),
                "status": status,
                "output": output,
                "error": error,
                "attempts": attempts,
            }),
        ))
    }

    /// A race loser's cancellation says why, not "the run was interrupted".
    pub(super) fn explain_cancel(&mut self, i: usize, events: &mut [EventKind]) {
        let Some(why) = self.superseded.remove(&i) else {
            return;
        };
        for e in events {
            if let EventKind::TaskFinished {
                status: TaskStatus::Cancelled,
                error,
                ..
            } = e
            {
                *error = Some(why.clone());
            }
        }
    }
}

/// A child task's id in its own batch: the last part of its path (task ids hold no `/`).
pub(super) fn local_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Takes the child-batch fields out of an input before the parent fills in its references.
pub(super) fn hold_child_fields(agent: &str, input: &mut Value) -> Vec<(String, Value)> {
    let mut held = Vec::new();
    if let Value::Object(m) = input {
        for f in crate::agents::child_fields(agent) {
            if m.get(*f).is_some_and(|v| !v.is_string())
                && let Some(v) = m.shift_remove(*f)
            {
                held.push((f.to_string(), v));
            }
        }
    }
    held
}

pub(super) fn restore_child_fields(input: &mut Value, held: Vec<(String, Value)>) {
    if let Value::Object(m) = input {
        for (k, v) in held {
            m.insert(k, v);
        }
    }
}

impl<E: Executor> Dispatcher<E> {
    /// Starts coordinated task `i`: its children are checked and added to the run, or it fails
    /// at once with why.
    pub(super) fn start_group(&mut self, i: usize, input: AgentInput) {
        let now = Instant::now();
        self.last_attempt_id += 1;
        let attempt_id = AttemptId(self.last_attempt_id);
        // A lane past the worker pool: the task holds no worker while its children run.
        let events = self.lives[i].start(attempt_id, self.settings.max_workers, None, now);
        self.publish(events);
        self.current.insert(attempt_id, i);

        let ctx = ValidationContext {
            limits: Default::default(),
            mcp_servers: Some(self.services.mcp.servers.keys().cloned().collect()),
            llm: Some(self.services.llm.clone()),
        };
        let depth = self.coord.depth.get(&i).copied().unwrap_or(0);
        let max_depth = self.settings.max_batch_depth;
        let max_tasks = ctx.limits.max_tasks;
        let total = self.tasks.len();
        let children = groups::children(&input, &ctx).and_then(|c| {
            let n = c.batch.batch.tasks.len();
            if c.nests && depth >= max_depth {
                Err(Failure::from(TaskError::permanent(
                    ErrorKind::InvalidBatch,
                    format!(
                        "batch nesting too deep: this child batch would be level {} but config.max_batch_depth is {max_depth}; nothing of it ran",
                        depth + 1
                    ),
                )))
            } else if total + n > max_tasks {
                Err(Failure::from(TaskError::permanent(
                    ErrorKind::InvalidBatch,
                    format!(
                        "the child batch's {n} tasks would take the run past {max_tasks} tasks; nothing of it ran"
                    ),
                )))
            } else {
                Ok(c)
            }
        });
        let children = match children {
            Ok(c) => c,
            Err(failure) => return self.group_ended(i, AttemptEnd::Finished(Err(failure))),
        };
        let child_depth = depth + u32::from(children.nests);
        let mut group = Group {
            kind: children.kind,
            depth: child_depth,
            members: Vec::new(),
            results: Vec::new(),
            waiting: VecDeque::new(),
            done: false,
        };
        let crate::batch::ValidatedBatch { batch, plan } = children.batch;
        if group.kind == GroupKind::Sequential {
            group.waiting = batch.tasks.into();
            self.coord.groups.insert(i, group);
            self.start_next_alternative(i);
            return;
        }
        self.coord.groups.insert(i, group);
        self.splice(i, batch.tasks, plan);
        if self.coord.groups[&i].members.is_empty() {
            self.group_check(i);
        }
    }

    /// Adds `tasks` (planned by `plan`) to the run as children of group `parent`.
    fn splice(&mut self, parent: usize, tasks: Vec<Task>, plan: Plan) {
        let prefix = self.tasks[parent].task_id.clone();
        let depth = self.coord.groups[&parent].depth;
        let base = self.tasks.len();
        let mut ids = Vec::with_capacity(tasks.len());
        for (k, mut task) in tasks.into_iter().enumerate() {
            task.task_id = format!("{prefix}/{}", task.task_id);
            for d in &mut task.dependencies {
                *d = format!("{prefix}/{d}");
            }
            // A child's inputs can hold secrets the run has not seen (a planner wrote them).
            crate::redact::register_secrets_in(&serde_json::to_value(&task).unwrap_or_default());
            self.lives.push(TaskLife::new(task.task_id.clone()));
            self.bus.ledger.add_task(&task.task_id);
            self.pending.push(plan.dependents(k).len() as u32);
            self.coord.parent_of.insert(base + k, parent);
            if depth > 0 {
                self.coord.depth.insert(base + k, depth);
            }
            ids.push(task.task_id.clone());
            self.tasks.push(task);
        }
        let added = self.tasks.len() - base;
        // Per-task state kept by index grows with the run.
        self.redeliveries.resize(self.tasks.len(), 0);
        if let Some(cache) = self.cache.as_mut() {
            cache.grow(self.tasks.len());
        }
        let group = self.coord.groups.get_mut(&parent).expect("group exists");
        group.members.extend(base..base + added);
        group.results.resize(group.members.len(), None);
        for r in self.scheduler.extend(plan, ids) {
            let events = self.lives[r].ready();
            self.publish(events);
        }
    }

    fn start_next_alternative(&mut self, parent: usize) {
        let group = self.coord.groups.get_mut(&parent).expect("group exists");
        let Some(next) = group.waiting.pop_front() else {
            return self.group_check(parent);
        };
        let plan = Plan::build_valid(vec![next.task_id.clone()], |_| &[]).expect("one task");
        self.splice(parent, vec![next], plan);
    }

    /// Child task `i` finished: its group may end, start its next alternative, or cancel the
    /// rest of a race.
    pub(super) fn member_finished(&mut self, i: usize, entry: Value) {
        let Some(&parent) = self.coord.parent_of.get(&i) else {
            return;
        };
        let Some(group) = self.coord.groups.get_mut(&parent) else {
            return;
        };
        if group.done {
            return;
        }
        let Some(pos) = group.members.iter().position(|&m| m == i) else {
            return;
        };
        let succeeded = entry["status"] == "success";
        group.results[pos] = Some(entry);
        match group.kind {
            GroupKind::Batch => self.group_check(parent),
            GroupKind::Race if succeeded => self.race_won(parent, pos),
            GroupKind::Race => self.group_check(parent),
            GroupKind::Sequential if succeeded => self.group_check(parent),
            GroupKind::Sequential => self.start_next_alternative(parent),
        }
    }

    /// Cancels every other alternative of a race `pos` won: running ones are stopped through
    /// the executor (their processes are killed), the others never start.
    fn race_won(&mut self, parent: usize, pos: usize) {
        let group = &self.coord.groups[&parent];
        let winner = self.tasks[group.members[pos]].task_id.clone();
        let others: Vec<usize> = group
            .members
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != pos)
            .map(|(_, &m)| m)
            .collect();
        let why = TaskError::permanent(
            ErrorKind::Cancelled,
            format!("cancelled: alternative '{winner}' succeeded first"),
        );
        for m in others {
            self.cancel_task(m, &why);
        }
        self.group_check(parent);
    }

    /// Stops task `m` with `why`: a running attempt through the executor (its process is
    /// killed), a running group through its children, anything not started at once.
    fn cancel_task(&mut self, m: usize, why: &TaskError) {
        match &self.lives[m].state {
            TaskState::Done(_) => {}
            TaskState::Running(_) if self.coord.is_group(m) => {
                let members = self.coord.groups[&m].members.clone();
                self.coord.groups.get_mut(&m).expect("group").done = true;
                for c in members {
                    self.cancel_task(c, why);
                }
                self.coord.superseded.insert(m, why.clone());
                self.group_ended(m, AttemptEnd::Cancelled);
            }
            TaskState::Running(attempt) => {
                let id = attempt.id;
                self.coord.superseded.insert(m, why.clone());
                self.executor.cancel(id);
            }
            _ => {
                self.scheduler.finish(m);
                let events = self.lives[m].cancel_with(why.clone());
                self.publish(events);
            }
        }
    }

    /// Ends group `parent` if its outcome is known.
    fn group_check(&mut self, parent: usize) {
        let group = &self.coord.groups[&parent];
        if group.done {
            return;
        }
        let entries: Vec<&Value> = group.results.iter().flatten().collect();
        let all_done = entries.len() == group.members.len();
        let winner = group
            .results
            .iter()
            .position(|r| r.as_ref().is_some_and(|e| e["status"] == "success"));
        let end = match group.kind {
            GroupKind::Batch if all_done => Some(batch_end(&group.results)),
            GroupKind::Batch => None,
            _ => match winner {
                Some(pos) => {
                    let e = group.results[pos].as_ref().expect("winner finished");
                    // Losers still being stopped are cancelled already as far as the outcome goes.
                    let alternatives: Vec<Value> = group
                        .members
                        .iter()
                        .zip(&group.results)
                        .map(|(&m, e)| match e {
                            Some(e) => json!({"task_id": e["task_id"], "status": e["status"], "error": e["error"]}),
                            None => json!({"task_id": local_id(&self.tasks[m].task_id), "status": "cancelled", "error": null}),
                        })
                        .collect();
                    let prefix = &self.tasks[parent].task_id;
                    Some(AttemptEnd::Finished(Ok(json!({
                        "winner": pos,
                        "winner_task": format!("{prefix}/{}", e["task_id"].as_str().unwrap_or("")),
                        "agent": e["agent"],
                        "output": e["output"],
                        "alternatives": alternatives,
                    }))))
                }
                None if all_done && group.waiting.is_empty() => {
                    Some(alternatives_failed(&group.results))
                }
                None => None,
            },
        };
        if let Some(end) = end {
            self.group_ended(parent, end);
        }
    }

    /// Ends group task `i`'s attempt with `end` (never retried: a retry would add its children
    /// again).
    pub(super) fn group_ended(&mut self, i: usize, end: AttemptEnd) {
        if let Some(g) = self.coord.groups.get_mut(&i) {
            g.done = true;
        }
        let Some(attempt_id) = self.lives[i].current().map(|a| a.id) else {
            return;
        };
        self.current.remove(&attempt_id);
        let reason = self.stop.unwrap_or(crate::events::CancelReason::Sigint);
        let Some((_, after, mut events)) =
            self.lives[i].attempt_ended(attempt_id, end, Instant::now(), |_, _| None, reason)
        else {
            return;
        };
        self.coord.explain_cancel(i, &mut events);
        self.publish(events);
        if after == crate::runner::task_state::AfterAttempt::Cancelled {
            self.scheduler.finish(i);
        } else {
            self.after_attempt(i, after);
        }
    }
}

/// The end of a child batch whose tasks all finished: its result document, as the output (all
/// succeeded) or with a `child_failed` error.
fn batch_end(results: &[Option<Value>]) -> AttemptEnd {
    let entries: Vec<Value> = results.iter().flatten().cloned().collect();
    let mut summary = Summary {
        total_tasks: entries.len(),
        ..Summary::default()
    };
    for e in &entries {
        if let Ok(status) = serde_json::from_value::<TaskStatus>(e["status"].clone()) {
            summary.count(status);
        }
        if let Some(out) = e.get("output").filter(|o| o.is_object()) {
            summary.add_usage(out);
        }
    }
    let status = summary.run_status();
    let failed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["status"] != "success")
        .collect();
    let doc = json!({"status": status, "summary": summary, "results": entries});
    if failed.is_empty() {
        return AttemptEnd::Finished(Ok(doc));
    }
    let first = failed[0];
    let why = first["error"]["message"].as_str().unwrap_or("");
    let message = format!(
        "{} of {} child tasks did not succeed; first: '{}' {}: {why}",
        failed.len(),
        summary.total_tasks,
        first["task_id"].as_str().unwrap_or(""),
        first["status"].as_str().unwrap_or("")
    );
    AttemptEnd::Finished(Err(Failure {
        error: TaskError::permanent(ErrorKind::ChildFailed, message),
        output: Some(doc),
    }))
}

/// No alternative succeeded: each one's error.
fn alternatives_failed(results: &[Option<Value>]) -> AttemptEnd {
    let entries: Vec<&Value> = results.iter().flatten().collect();
    let reasons: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["task_id"].as_str().unwrap_or(""),
                e["error"]["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    let alternatives: Vec<Value> = entries
        .iter()
        .map(|e| json!({"task_id": e["task_id"], "status": e["status"], "error": e["error"]}))
        .collect();
    let mut output = Map::new();
    output.insert("alternatives".into(), Value::Array(alternatives));
    AttemptEnd::Finished(Err(Failure {
        error: TaskError::permanent(
            ErrorKind::ChildFailed,
            format!("no alternative succeeded: {}", reasons.join("; ")),
        ),
        output: Some(Value::Object(output)),
    }))
}
