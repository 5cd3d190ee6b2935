//! The record of a run, kept on disk: the subscriber the dispatcher folds every event into, in
//! place of holding every event and every task's attempts and output in memory.
//!
//! Each event goes to the run's journal as it happens (one line each); the ledger keeps only
//! where each line is (16 bytes an event), the events of each task chained together, and the
//! run's own fields. When the run is over, the trace's `tasks` and `events` and the result
//! document's `results` are read back from the journal one task or one event at a time
//! ([`RunLog`]), so memory does not grow with the number of tasks beyond that index.
//!
//! Two events are not read back. `run_started` lists every task of the batch: it is kept without
//! that list, which is written again from the batch (it is the batch's tasks, as announced). And
//! without a journal (the dispatcher used on its own, or a journal that could no longer be
//! written: a full disk), events are kept in memory as before, so the record is complete either
//! way.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::batch::Batch;
use crate::events::{Event, EventKind, Summary, TaskInfo};
use crate::journal::JournalSink;
use crate::reporter::recorder::{RunRecord, TaskRecord};
use crate::reporter::stream::{Part, Spliced};
use crate::reporter::trace::Digests;

const NONE: u32 = u32::MAX;
/// `Loc::len` of an event kept in memory (`Loc::at` is then its index in `Ledger::mem`).
const IN_MEMORY: u32 = u32::MAX;

/// Where an event is: a line of the journal, or a slot in memory; and the next event of the same
/// task.
#[derive(Debug, Clone, Copy)]
struct Loc {
    at: u64,
    len: u32,
    next: u32,
}

#[derive(Default)]
pub struct Ledger {
    journal: Option<JournalSink>,
    /// Reads the journal back (opened when it was created, so it outlives a rename).
    reader: Option<File>,
    mem: Vec<Event>,
    /// Every event, in order.
    locs: Vec<Loc>,
    /// Per task: its first and last event (indexes into `locs`).
    chains: Vec<(u32, u32)>,
    index: HashMap<Box<str>, u32>,
    /// The run's own fields (tasks and events left empty).
    head: Option<RunRecord>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("events", &self.locs.len())
            .field("in_memory", &self.mem.len())
            .finish()
    }
}

impl Ledger {
    /// A ledger that keeps everything in memory.
    pub fn in_memory() -> Self {
        Ledger::default()
    }

    /// A ledger that writes `journal` and reads events back from it.
    pub fn journaled(journal: JournalSink) -> Self {
        let reader = File::open(journal.path())
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot read back the journal '{}': {e}; the run's events stay in memory",
                    journal.path().display()
                )
            })
            .ok();
        Ledger {
            journal: Some(journal),
            reader,
            ..Ledger::default()
        }
    }

    /// Adds a task the run did not announce (a child batch's, see `runner::groups`) after the
    /// known ones; its index is theirs plus one, as in the dispatcher.
    pub fn add_task(&mut self, task_id: &str) {
        self.index.insert(task_id.into(), self.chains.len() as u32);
        self.chains.push((NONE, NONE));
    }

    /// The task with this id, by its index in the batch.
    pub fn task_index(&self, task_id: &str) -> Option<usize> {
        self.index.get(task_id).map(|&i| i as usize)
    }

    /// Records `event`: writes it to the journal (unless `known`, where the journal already holds
    /// it: a resumed run's earlier events) and notes where it is.
    pub fn record(&mut self, event: &Event, known: Option<(u64, u32)>) {
        let written = match (&mut self.journal, &self.reader) {
            (Some(journal), Some(_)) => known.or_else(|| journal.write(event)),
            (Some(journal), None) => {
                journal.write(event);
                None
            }
            (None, _) => None,
        };
        let slot = self.locs.len() as u32;
        let loc = match (&event.kind, written) {
            (
                EventKind::RunStarted {
                    run_id,
                    previous_run_id,
                    config,
                    tasks,
                },
                _,
            ) => {
                self.start(event, run_id, previous_run_id, config, tasks);
                // Kept without its list of tasks, which is the batch's.
                self.keep(Event {
                    seq: event.seq,
                    at: event.at.clone(),
                    elapsed_ms: event.elapsed_ms,
                    kind: EventKind::RunStarted {
                        run_id: run_id.clone(),
                        previous_run_id: previous_run_id.clone(),
                        config: config.clone(),
                        tasks: Vec::new(),
                    },
                })
            }
            (_, Some((at, len))) if len != IN_MEMORY => Loc {
                at,
                len,
                next: NONE,
            },
            _ => self.keep(event.clone()),
        };
        self.locs.push(loc);
        match &event.kind {
            EventKind::AttemptStarted { task_id, .. }
            | EventKind::AttemptFinished { task_id, .. }
            | EventKind::TaskFinished { task_id, .. } => {
                if let Some(&i) = self.index.get(task_id.as_str()) {
                    let (head, tail) = &mut self.chains[i as usize];
                    if *tail == NONE {
                        *head = slot;
                    } else {
                        self.locs[*tail as usize].next = slot;
                    }
                    *tail = slot;
                    if let (EventKind::TaskFinished { status, .. }, Some(r)) =
                        (&event.kind, self.head.as_mut())
                        // Tasks a child batch added count in their parent's output only.
                        && (i as usize) < r.summary.total_tasks
                    {
                        r.summary.count(*status);
                    }
                }
            }
            EventKind::RunFinished { status, summary } => {
                if let Some(r) = self.head.as_mut() {
                    r.status = Some(*status);
                    r.summary = summary.clone();
                    r.finished_at = Some(event.at.clone());
                }
            }
            _ => {}
        }
    }

    fn start(
        &mut self,
        event: &Event,
        run_id: &str,
        previous_run_id: &Option<String>,
        config: &Value,
        tasks: &[TaskInfo],
    ) {
        self.index = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.as_str().into(), i as u32))
            .collect();
        self.chains = vec![(NONE, NONE); tasks.len()];
        // A task that runs once has four events: room for them at once, rather than growing
        // (and briefly holding twice the room) as they come.
        self.locs
            .reserve((4 * tasks.len() + 2).saturating_sub(self.locs.len()));
        self.head = Some(RunRecord {
            run_id: run_id.to_string(),
            previous_run_id: previous_run_id.clone(),
            started_at: event.at.clone(),
            finished_at: None,
            status: None,
            config: config.clone(),
            summary: Summary {
                total_tasks: tasks.len(),
                ..Summary::default()
            },
            tasks: Vec::new(),
            events: Vec::new(),
        });
    }

    fn keep(&mut self, event: Event) -> Loc {
        self.mem.push(event);
        Loc {
            at: (self.mem.len() - 1) as u64,
            len: IN_MEMORY,
            next: NONE,
        }
    }

    /// Ends the writing: the journal is flushed and closed (and its lock released), the ledger
    /// can still read it.
    pub fn close(&mut self) {
        self.journal = None;
    }

    fn read(&self, loc: Loc, buf: &mut Vec<u8>) -> Result<Event, String> {
        if loc.len == IN_MEMORY {
            return Ok(self.mem[loc.at as usize].clone());
        }
        let reader = self
            .reader
            .as_ref()
            .ok_or("the journal cannot be read back")?;
        buf.resize(loc.len as usize, 0);
        reader
            .read_exact_at(buf, loc.at)
            .map_err(|e| format!("cannot read the journal back: {e}"))?;
        serde_json::from_slice(buf).map_err(|e| format!("cannot read the journal back: {e}"))
    }

    /// Task `i`'s record, from what the batch says of it and its events.
    pub fn task_record(&self, i: usize, info: &TaskInfo) -> Result<TaskRecord, String> {
        let mut record = TaskRecord::new(info);
        let mut first_start = None;
        let mut buf = Vec::new();
        let mut slot = self.chains.get(i).map_or(NONE, |c| c.0);
        while slot != NONE {
            let loc = self.locs[slot as usize];
            let event = self.read(loc, &mut buf)?;
            record.apply(&mut first_start, &event);
            slot = loc.next;
        }
        Ok(record)
    }

    /// Every event, in order, as JSON (what the trace needs: reading a line into its type and
    /// back costs twice as much); `run_started` as its type, without its list of tasks.
    pub fn event_values(&self) -> impl Iterator<Item = Result<Result<Value, Event>, String>> + '_ {
        let mut buf = Vec::new();
        self.locs.iter().map(move |&loc| {
            if loc.len == IN_MEMORY {
                let event = &self.mem[loc.at as usize];
                return Ok(match event.kind {
                    EventKind::RunStarted { .. } => Err(event.clone()),
                    _ => Ok(serde_json::to_value(event).expect("events serialize")),
                });
            }
            let reader = self
                .reader
                .as_ref()
                .ok_or("the journal cannot be read back")?;
            buf.resize(loc.len as usize, 0);
            reader
                .read_exact_at(&mut buf, loc.at)
                .map_err(|e| format!("cannot read the journal back: {e}"))?;
            serde_json::from_slice(&buf)
                .map(Ok)
                .map_err(|e| format!("cannot read the journal back: {e}"))
        })
    }

    /// Every event, in order; `run_started` without its list of tasks.
    pub fn events(&self) -> impl Iterator<Item = Result<Event, String>> + '_ {
        let mut buf = Vec::new();
        self.locs.iter().map(move |&loc| self.read(loc, &mut buf))
    }

    /// The run's own fields, once it has started.
    pub fn head(&self) -> Option<&RunRecord> {
        self.head.as_ref()
    }
}

/// A finished run: its ledger and its batch, for writing the trace and the result document.
#[derive(Debug)]
pub struct RunLog {
    ledger: Ledger,
    batch: Batch,
}

impl RunLog {
    /// `ledger` must have seen `run_started`.
    pub fn new(mut ledger: Ledger, batch: Batch) -> Self {
        ledger.close();
        RunLog { ledger, batch }
    }

    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The run's own fields (tasks and events left empty).
    pub fn head(&self) -> &RunRecord {
        self.ledger
            .head()
            .expect("a run log starts with run_started")
    }

    /// Each task's record, in batch order.
    pub fn task_records(&self) -> impl Iterator<Item = Result<TaskRecord, String>> + '_ {
        self.batch.tasks.iter().enumerate().map(|(i, t)| {
            let info = TaskInfo {
                task_id: t.task_id.clone(),
                agent: t.agent.name().to_string(),
                description: t.description.clone(),
                dependencies: t.dependencies.clone(),
                // A record has no input; no need to build it.
                input: Value::Null,
            };
            self.ledger.task_record(i, &info)
        })
    }

    /// Every event, in order, redacted, ready to write.
    pub fn events(&self) -> impl Iterator<Item = Result<EventDoc<'_>, String>> + '_ {
        self.ledger.event_values().map(|e| {
            e.map(|event| match event {
                Err(run_started) => EventDoc::RunStarted(Spliced {
                    skeleton: crate::redact::redacted(&run_started),
                    splices: vec![("tasks", Part::Infos(&self.batch.tasks))],
                }),
                Ok(mut value) => {
                    crate::redact::redact_json(&mut value);
                    EventDoc::Other(value)
                }
            })
        })
    }

    /// The whole record in memory (tests, small runs).
    pub fn record(&self) -> Result<RunRecord, String> {
        let mut record = self.head().clone();
        record.tasks = self.task_records().collect::<Result<_, _>>()?;
        for event in self.ledger.events() {
            let mut event = event?;
            if let EventKind::RunStarted { tasks, .. } = &mut event.kind {
                *tasks = self.batch.tasks.iter().map(TaskInfo::of).collect();
            }
            record.events.push(event);
        }
        Ok(record)
    }

    /// The trace, written piece by piece: the same document as serializing a
    /// [`crate::reporter::Trace`] of the whole run and redacting it.
    pub fn trace<'a>(&'a self, digests: Option<&'a Digests>) -> Spliced<'a> {
        // A skeleton made of the small parts, in the trace's key order.
        let skeleton = crate::reporter::trace::Trace {
            format: crate::reporter::trace::TRACE_FORMAT,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            batch: Batch {
                tasks: Vec::new(),
                config: self.batch.config.clone(),
            },
            digests: digests.map(|d| Digests {
                algorithm: d.algorithm.clone(),
                key_id: d.key_id.clone(),
                tasks: Vec::new(),
            }),
            run: self.head().clone(),
        };
        let mut splices = vec![
            ("batch", Part::Batch(&self.batch)),
            ("tasks", Part::Records(self)),
            ("events", Part::Events(self)),
        ];
        if let Some(d) = digests {
            splices.push(("digests", Part::Digests(d)));
        }
        Spliced {
            skeleton: crate::redact::redacted(&skeleton),
            splices,
        }
    }

    /// Writes the trace to `path` atomically.
    pub fn write_trace(&self, path: &Path, digests: Option<&Digests>) -> std::io::Result<()> {
        crate::reporter::trace::write_json_atomic(path, &self.trace(digests))
    }
}

/// One event of the trace, redacted.
pub enum EventDoc<'a> {
    RunStarted(Spliced<'a>),
    Other(Value),
}

impl Serialize for EventDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventDoc::RunStarted(doc) => doc.serialize(s),
            EventDoc::Other(v) => v.serialize(s),
        }
    }
}
