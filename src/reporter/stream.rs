//! Writing documents too big to hold as one JSON tree (the trace, the result document, the
//! journal's header and `run_started` line of a batch of 200,000 tasks) one piece at a time.
//!
//! A document is a small *skeleton* (the document with its big arrays left empty), redacted as a
//! whole, into which the big arrays are spliced as they are written, each element redacted on
//! its own. Redaction looks only at a value and the key it sits under, and none of the keys on
//! the way to those arrays is secret, so the text is the same as redacting the whole document at
//! once, without the whole document ever being in memory.

use std::cell::RefCell;

use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::batch::{Batch, Task};
use crate::events::TaskInfo;
use crate::reporter::ledger::RunLog;
use crate::reporter::result::TaskResults;
use crate::reporter::trace::{Digests, TaskSeal};

/// `value`, redacted, when serialized.
pub struct Redacted<'a, T>(pub &'a T);

impl<T: Serialize> Serialize for Redacted<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::redact::redacted(self.0).serialize(s)
    }
}

/// An array written from an iterator, once; an item that cannot be produced (the journal cannot
/// be read back) fails the whole write.
pub struct Seq<I>(RefCell<Option<I>>);

impl<I> Seq<I> {
    pub fn new(items: I) -> Self {
        Seq(RefCell::new(Some(items)))
    }
}

impl<I, T> Serialize for Seq<I>
where
    I: Iterator<Item = Result<T, String>>,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| S::Error::custom("a streamed array can be written once"))?;
        let mut seq = s.serialize_seq(None)?;
        for item in items {
            seq.serialize_element(&item.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// An object written in the key order of `skeleton` (already redacted), with the values of the
/// keys in `splices` written from elsewhere.
pub struct Spliced<'a> {
    pub skeleton: Value,
    pub splices: Vec<(&'static str, Part<'a>)>,
}

impl Serialize for Spliced<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(map) = &self.skeleton else {
            return self.skeleton.serialize(s);
        };
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            match self.splices.iter().find(|(key, _)| key == k) {
                Some((_, part)) => m.serialize_entry(k, part)?,
                None => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

/// The big parts of documents, each written piece by piece, every piece redacted.
pub enum Part<'a> {
    /// The tasks of a batch, as given.
    Tasks(&'a [Task]),
    /// The tasks of a batch as `run_started` announces them.
    Infos(&'a [Task]),
    /// `run_started`'s own list.
    InfoList(&'a [TaskInfo]),
    /// A whole batch.
    Batch(&'a Batch),
    /// Whole digests.
    Digests(&'a Digests),
    /// The digests' per-task list.
    Seals(&'a [TaskSeal]),
    /// The trace's `tasks`: each task's record, read back from the run's log.
    Records(&'a RunLog),
    /// The trace's `events`, read back from the run's log.
    Events(&'a RunLog),
    /// The result document's `results`.
    Results(&'a TaskResults),
}

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Part::Tasks(tasks) => Seq::new(tasks.iter().map(|t| Ok(Redacted(t)))).serialize(s),
            Part::Infos(tasks) => {
                Seq::new(tasks.iter().map(|t| Ok(Redacted(&TaskInfo::of(t)).value()))).serialize(s)
            }
            Part::InfoList(infos) => Seq::new(infos.iter().map(|t| Ok(Redacted(t)))).serialize(s),
            Part::Batch(batch) => Spliced {
                skeleton: batch_skeleton(batch),
                splices: vec![("tasks", Part::Tasks(&batch.tasks))],
            }
            .serialize(s),
            Part::Digests(digests) => Spliced {
                skeleton: digests_skeleton(digests),
                splices: vec![("tasks", Part::Seals(&digests.tasks))],
            }
            .serialize(s),
            Part::Seals(seals) => Seq::new(seals.iter().map(|t| Ok(Redacted(t)))).serialize(s),
            Part::Records(log) => {
                Seq::new(log.task_records().map(|r| r.map(|r| Redacted(&r).value()))).serialize(s)
            }
            Part::Events(log) => Seq::new(log.events()).serialize(s),
            Part::Results(results) => {
                Seq::new(results.iter().map(|r| r.map(|r| Redacted(&r).value()))).serialize(s)
            }
        }
    }
}

impl<T: Serialize> Redacted<'_, T> {
    pub fn value(&self) -> Value {
        crate::redact::redacted(self.0)
    }
}

/// `batch` without its tasks, redacted.
pub fn batch_skeleton(batch: &Batch) -> Value {
    let skeleton = Batch {
        tasks: Vec::new(),
        config: batch.config.clone(),
    };
    crate::redact::redacted(&skeleton)
}

/// `digests` without their per-task list, redacted.
pub fn digests_skeleton(digests: &Digests) -> Value {
    let skeleton = Digests {
        algorithm: digests.algorithm.clone(),
        key_id: digests.key_id.clone(),
        tasks: Vec::new(),
    };
    crate::redact::redacted(&skeleton)
}
