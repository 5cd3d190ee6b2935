//! The run journal, `<trace_dir>/dispatch-<run_id>.journal`: what survives a runner that dies
//! mid-run (SIGKILL, OOM killer, power loss) so that `dispatch_runner resume` can continue it.
//!
//! The trace is written once, atomically, at the end; a run that never ends leaves none. The
//! journal is written as the run goes: a header line (the redacted batch and the keyed digests of
//! its real task definitions, as in the trace), then every event as one NDJSON line, redacted like
//! the trace. Each line goes to the operating system in one `write` as it happens, so a crash of
//! the process loses nothing; `fsync` (what survives a crash of the machine) follows
//! [`FsyncPolicy`].
//!
//! Reading tolerates exactly one kind of damage: a torn last line (no newline, or not JSON), the
//! mark of a crash in the middle of a write. Anything wrong earlier means the file is not what the
//! runner wrote, and is refused with its line number.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::events::{Event, EventKind, EventSink};
use crate::reporter::trace::Digests;

/// Version of the journal layout; bumped on incompatible changes.
pub const JOURNAL_FORMAT: u32 = 1;
/// How often [`FsyncPolicy::Interval`] forces new lines to disk.
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(200);

/// When the journal is forced to disk (`--journal-fsync`). Every line reaches the operating
/// system at once whatever the policy; this only decides what a power loss can take.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every line: slowest, nothing acknowledged is lost.
    Always,
    /// Every 200 ms while there are new lines (a background thread, so the run never waits on
    /// the disk), and at the run's end.
    #[default]
    Interval,
    /// Never: the operating system writes back when it likes.
    Never,
}

/// The first line of a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub journal_format: u32,
    pub tool_version: String,
    pub run_id: String,
    /// The batch as given, redacted.
    pub batch: Batch,
    pub digests: Digests,
}

/// `<dir>/dispatch-<run_id>.journal`, next to the trace.
pub fn journal_path(dir: &Path, run_id: &str) -> PathBuf {
    crate::reporter::trace::trace_path(dir, run_id).with_extension("journal")
}

/// The event sink that writes the journal.
pub struct JournalSink {
    file: Option<File>,
    path: PathBuf,
    policy: FsyncPolicy,
    /// Interval policy: lines written since the syncing thread last forced them to disk.
    dirty: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Events numbered below this are already in the file (a resumed run replays them).
    skip_below: u64,
    /// Length of the file: where the next line goes.
    len: u64,
}

impl JournalSink {
    /// Creates the journal (it must not exist) and writes its header, durably.
    pub fn create(
        path: &Path,
        run_id: &str,
        batch: &Batch,
        digests: &Digests,
        policy: FsyncPolicy,
    ) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        // Like the trace (and the outputs it holds): readable by the owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        // Held while the run goes, so `resume` can tell a live run from a dead one. Advisory and
        // best-effort: a file system without locks still gets its journal.
        let _ = file.try_lock();
        let mut line = header_line(run_id, batch, digests)?;
        line.push(b'\n');
        file.write_all(&line)?;
        if policy != FsyncPolicy::Never {
            file.sync_all()?;
        }
        Ok(Self::over(file, path, policy, 0, line.len() as u64))
    }

    /// Opens an existing journal to continue it after `keep` bytes (the torn tail, if any, is
    /// cut off first); events numbered below `skip_below` are not written again.
    pub fn append(
        path: &Path,
        keep: u64,
        skip_below: u64,
        policy: FsyncPolicy,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).open(path)?;
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            return Err(std::io::Error::other(format!(
                "'{}' is in use by a runner that is still going",
                path.display()
            )));
        }
        file.set_len(keep)?;
        Ok(Self::over(file, path, policy, skip_below, keep))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn over(file: File, path: &Path, policy: FsyncPolicy, skip_below: u64, len: u64) -> Self {
        tracing::debug!(journal = %path.display(), fsync = ?policy, "journal opened");
        let dirty = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        if policy == FsyncPolicy::Interval
            && let Ok(handle) = file.try_clone()
        {
            let (dirty, stop) = (dirty.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("journal-fsync".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(FSYNC_INTERVAL);
                        if dirty.swap(false, Ordering::AcqRel) {
                            let _ = handle.sync_data();
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the journal's fsync thread: {e}");
            }
        }
        JournalSink {
            file: Some(file),
            path: path.to_path_buf(),
            policy,
            dirty,
            stop,
            skip_below,
            len,
        }
    }

    /// Writes `event` as the next line; returns where the line is (offset and length), or
    /// `None` when nothing was written: the event is already in the file (a resumed run's), or
    /// the journal can no longer be written.
    pub fn write(&mut self, event: &Event) -> Option<(u64, u32)> {
        if event.seq < self.skip_below {
            return None;
        }
        let file = self.file.as_mut()?;
        let mut line = event_line(event);
        line.push(b'\n');
        // One write per line: what a crash can tear is the last line only.
        let mut written = file.write_all(&line);
        let run_end = matches!(event.kind, EventKind::RunFinished { .. });
        let sync = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval => run_end,
            FsyncPolicy::Never => false,
        };
        if written.is_ok() {
            if sync {
                written = file.sync_data();
            } else {
                self.dirty.store(true, Ordering::Release);
            }
        }
        if let Err(e) = written {
            // One report, then stop: a full disk would otherwise give one error per event.
            tracing::warn!(
                "cannot write the journal '{}': {e}; the run goes on, but cannot be resumed \
                 from here if it stops",
                self.path.display()
            );
            self.file = None;
            return None;
        }
        let at = self.len;
        self.len += line.len() as u64;
        u32::try_from(line.len()).ok().map(|len| (at, len))
    }
}

impl EventSink for JournalSink {
    fn on_event(&mut self, event: &Event) {
        self.write(event);
    }
}

/// The header line (without its newline), redacted, written task by task: a batch of a million
/// tasks is never one JSON tree.
fn header_line(run_id: &str, batch: &Batch, digests: &Digests) -> std::io::Result<Vec<u8>> {
    use crate::reporter::stream::{Part, Spliced};
    let skeleton = Header {
        journal_format: JOURNAL_FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        run_id: run_id.to_string(),
        batch: Batch {
            tasks: Vec::new(),
            config: batch.config.clone(),
        },
        digests: Digests {
            algorithm: digests.algorithm.clone(),
            key_id: digests.key_id.clone(),
            tasks: Vec::new(),
        },
    };
    let doc = Spliced {
        skeleton: crate::redact::redacted(&skeleton),
        splices: vec![
            ("batch", Part::Batch(batch)),
            ("digests", Part::Digests(digests)),
        ],
    };
    Ok(serde_json::to_vec(&doc)?)
}

/// An event's line (without its newline), redacted; `run_started`'s list of tasks one task at
/// a time.
pub(crate) fn event_line(event: &Event) -> Vec<u8> {
    use crate::reporter::stream::{Part, Spliced};
    match &event.kind {
        EventKind::RunStarted {
            run_id,
            previous_run_id,
            config,
            tasks,
        } => {
            let skeleton = Event {
                kind: EventKind::RunStarted {
                    run_id: run_id.clone(),
                    previous_run_id: previous_run_id.clone(),
                    config: config.clone(),
                    tasks: Vec::new(),
                },
                seq: event.seq,
                at: event.at.clone(),
                elapsed_ms: event.elapsed_ms,
            };
            let doc = Spliced {
                skeleton: crate::redact::redacted(&skeleton),
                splices: vec![("tasks", Part::InfoList(tasks))],
            };
            serde_json::to_vec(&doc).expect("events serialize")
        }
        _ => serde_json::to_vec(&crate::redact::redacted(event)).expect("events serialize"),
    }
}

impl Drop for JournalSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A journal read back.
#[derive(Debug, Clone)]
pub struct Journal {
    pub header: Header,
    pub events: Vec<Event>,
    /// Where each event's line is: offset and length, newline included.
    pub lines: Vec<(u64, u32)>,
    /// Bytes of whole, valid lines: where appending continues.
    pub valid_len: u64,
    /// A torn last line was found and dropped.
    pub torn_tail: bool,
}

/// Reads a journal. Errors name the line (1-based).
pub fn read(path: &Path) -> Result<Journal, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read journal '{}': {e}", path.display()))?;
    let name = path.display();
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    let mut torn_tail = false;
    // A last line without its newline was cut by a crash mid-write.
    if lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
        lines.pop();
        torn_tail = true;
    }
    let count = lines.len();
    let mut header: Option<Header> = None;
    let mut events = Vec::new();
    let mut offsets = Vec::new();
    let mut valid_len = 0u64;
    for (n, line) in lines.into_iter().enumerate() {
        let number = n + 1;
        let text = &line[..line.len() - 1];
        let parsed: Result<(), String> = if n == 0 {
            serde_json::from_slice::<Header>(text)
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    if h.journal_format != JOURNAL_FORMAT {
                        return Err(format!(
                            "journal format {} is not {JOURNAL_FORMAT}",
                            h.journal_format
                        ));
                    }
                    header = Some(h);
                    Ok(())
                })
        } else {
            serde_json::from_slice::<Event>(text)
                .map_err(|e| e.to_string())
                .and_then(|e| {
                    let expected = events.len() as u64;
                    if e.seq != expected {
                        return Err(format!("event number {} where {expected} was due", e.seq));
                    }
                    events.push(e);
                    Ok(())
                })
        };
        match parsed {
            Ok(()) => {
                if n > 0 {
                    offsets.push((valid_len, u32::try_from(line.len()).unwrap_or(u32::MAX)));
                }
                valid_len += line.len() as u64;
            }
            // The last line may also be torn inside a newline-terminated write only if it is
            // the last: still a crash's mark.
            Err(_) if number == count && number > 1 => {
                torn_tail = true;
                break;
            }
            Err(e) => {
                return Err(format!(
                    "'{name}' line {number}: not a dispatch_runner journal line: {e}"
                ));
            }
        }
    }
    let header = header.ok_or_else(|| format!("'{name}' line 1: the journal is empty"))?;
    if !matches!(
        events.first().map(|e| &e.kind),
        Some(EventKind::RunStarted { run_id, .. }) if *run_id == header.run_id
    ) {
        return Err(format!(
            "'{name}' line 2: the journal does not start with the run_started event of run '{}'",
            header.run_id
        ));
    }
    Ok(Journal {
        header,
        events,
        lines: offsets,
        valid_len,
        torn_tail,
    })
}

/// The digests in a journal's header, read without reading its batch into memory.
pub fn read_digests(path: &Path) -> Result<Digests, String> {
    #[derive(Deserialize)]
    struct DigestsOnly {
        digests: Digests,
    }
    let file = File::open(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    let mut lines = serde_json::Deserializer::from_reader(std::io::BufReader::new(file))
        .into_iter::<DigestsOnly>();
    match lines.next() {
        Some(Ok(h)) => Ok(h.digests),
        Some(Err(e)) => Err(format!("'{}' line 1: {e}", path.display())),
        None => Err(format!("'{}' is empty", path.display())),
    }
}

/// What a resumed run continues from.
#[derive(Debug, Clone, Default)]
pub struct Resumed {
    /// The events of the journal, replayed into the resumed run before it goes on.
    pub events: Vec<Event>,
    /// Where each of those events' line is in the journal (offset, length).
    pub lines: Vec<(u64, u32)>,
    /// Bytes of whole lines in the journal: appending continues there (a torn line is cut).
    pub journal_len: u64,
}

/// The journal `target` names: a path to a journal file, or a run id in `trace_dir`.
pub fn locate(target: &str, trace_dir: &Path) -> PathBuf {
    let path = Path::new(target);
    if path.is_file() || target.ends_with(".journal") || target.contains('/') {
        path.to_path_buf()
    } else {
        journal_path(trace_dir, target)
    }
}

/// Builds the batch, the reuse plan and the run id for `resume`. Problems are input errors
/// (exit 2): an unreadable or damaged journal (with its line), a run that finished, a batch from
/// `-f` that is not the journal's, a task that would run with a redacted value.
pub fn prepare_resume(
    path: &Path,
    new_batch: Option<crate::ValidatedBatch>,
) -> Result<(crate::ValidatedBatch, crate::rerun::Reuse, String), Vec<crate::Issue>> {
    use crate::Issue;
    let journal = read(path).map_err(|e| vec![Issue::new("", e)])?;
    let name = path.display();
    // A runner still writing the journal holds its lock: resuming would run tasks twice.
    if let Ok(f) = File::open(path)
        && let Err(std::fs::TryLockError::WouldBlock) = f.try_lock_shared()
    {
        return Err(vec![Issue::new(
            "",
            format!("'{name}': the run is still going (another runner holds its journal)"),
        )]);
    }
    let run_id = journal.header.run_id.clone();
    if let Some(n) = journal
        .events
        .iter()
        .position(|e| matches!(e.kind, EventKind::RunFinished { .. }))
    {
        return Err(vec![Issue::new(
            "",
            format!(
                "'{name}' line {}: run '{run_id}' finished; there is nothing to resume",
                n + 2
            ),
        )]);
    }
    if let Some(v) = &new_batch {
        let issues = foreign(&journal.header, &v.batch, path);
        if !issues.is_empty() {
            return Err(issues);
        }
    }
    let mut recorder = crate::reporter::Recorder::default();
    for e in &journal.events {
        recorder.on_event(e);
    }
    let record = recorder
        .into_record()
        .ok_or_else(|| vec![Issue::new("", format!("'{name}' line 2: no run_started"))])?;
    let settled: Vec<String> = record
        .tasks
        .iter()
        .filter(|t| t.status.is_some())
        .map(|t| t.task_id.clone())
        .collect();
    let trace = crate::reporter::trace::Trace {
        format: crate::reporter::trace::TRACE_FORMAT,
        tool_version: journal.header.tool_version.clone(),
        batch: journal.header.batch.clone(),
        digests: Some(journal.header.digests.clone()),
        run: record,
    };
    let (validated, mut reuse) =
        crate::rerun::prepare_from(trace, path, new_batch, "dispatch_runner resume", &settled)?;
    reuse.resume = Some(Resumed {
        events: journal.events,
        lines: journal.lines,
        journal_len: journal.valid_len,
    });
    Ok((validated, reuse, run_id))
}

/// Tasks of `batch` (from `-f`) that are not those of the journal's batch: judged on the keyed
/// digests when the key is at hand, else on the redacted copies.
fn foreign(header: &Header, batch: &Batch, path: &Path) -> Vec<crate::Issue> {
    let name = path.display();
    let refuse = |pointer: String, why: String| {
        crate::Issue::new(
            pointer,
            format!("'{name}' line 1: the journal does not belong to this batch: {why}"),
        )
    };
    let old: Vec<&str> = header
        .batch
        .tasks
        .iter()
        .map(|t| t.task_id.as_str())
        .collect();
    let new: Vec<&str> = batch.tasks.iter().map(|t| t.task_id.as_str()).collect();
    if old != new {
        return vec![refuse(
            "/tasks".into(),
            format!("its tasks are {old:?}, the batch's are {new:?}"),
        )];
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let key = crate::rerun::DigestKey::load(dir)
        .ok()
        .flatten()
        .filter(|k| header.digests.key_id.as_deref() == Some(k.id()));
    let mut issues = Vec::new();
    for (i, (task, stored)) in batch.tasks.iter().zip(&header.batch.tasks).enumerate() {
        let value = serde_json::to_value(task).expect("task serializes");
        let digest = header
            .digests
            .tasks
            .get(i)
            .and_then(|s| s.digest.as_deref());
        let same = match (&key, digest) {
            (Some(key), Some(digest)) => key.matches(&value, digest),
            _ => {
                crate::redact::redacted(&value)
                    == serde_json::to_value(stored).expect("task serializes")
            }
        };
        if !same {
            issues.push(refuse(
                format!("/tasks/{i}"),
                format!("task '{}' differs", task.task_id),
            ));
        }
    }
    issues
}
