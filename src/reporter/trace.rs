//! The per-run trace file, `<trace_dir>/dispatch-<run_id>.json`: the batch as given, the effective
//! settings, every task with every attempt, and the ordered event list. Written atomically
//! (temporary file in the same folder, then rename) so a reader never sees half a trace.
//!
//! The batch is stored redacted, so it alone cannot say whether a task may run again from the
//! trace. `digests` adds, per task, where its stored copy was redacted and a keyed digest of its
//! real definition (see [`crate::rerun`]): enough for `--rerun-failed` to refuse to run a
//! `[REDACTED]` value and to recognise an unchanged task in a batch given again with `-f`, while
//! nobody without the key can test a guess of a secret against the trace.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::reporter::recorder::RunRecord;

/// Version of the trace layout; bumped on incompatible changes.
pub const TRACE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub format: u32,
    pub tool_version: String,
    pub batch: Batch,
    /// Absent in traces written before digests existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Digests>,
    #[serde(flatten)]
    pub run: RunRecord,
}

/// The trace's record of each task's real definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digests {
    /// Always `hmac-sha256`: HMAC-SHA-256 over the task's definition as canonical JSON (keys
    /// sorted, compact).
    pub algorithm: String,
    /// Names the key the digests were made with (an HMAC of a fixed label, not the key), so a
    /// rerun can tell a missing or replaced key from a changed task. Null when no key could be
    /// read or created; the digests are then null too.
    #[serde(default)]
    pub key_id: Option<String>,
    /// One entry per task, in batch order.
    pub tasks: Vec<TaskSeal>,
}

/// One task's entry in [`Digests`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSeal {
    pub task_id: String,
    /// Lowercase hex HMAC-SHA-256 of the unredacted task; null without a key.
    #[serde(default)]
    pub digest: Option<String>,
    /// JSON Pointers, within the task, of the values this trace holds redacted. A task with any
    /// cannot run again from the trace alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
}

pub fn trace_path(dir: &Path, run_id: &str) -> PathBuf {
    // `./traces` reads better as `traces` in results.
    let dir: PathBuf = dir
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    dir.join(format!("dispatch-{run_id}.json"))
}

/// Creates the trace folder and proves it is writable, before anything runs.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = tempfile::Builder::new()
        .prefix(".dispatch-probe-")
        .tempfile_in(dir)?;
    drop(probe);
    Ok(())
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".dispatch-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        serde_json::to_writer_pretty(&mut w, value)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads a trace written by [`write_json_atomic`].
pub fn read_trace(path: &Path) -> Result<Trace, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read trace '{}': {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("'{}' is not a trace: {e}", path.display()))
}
