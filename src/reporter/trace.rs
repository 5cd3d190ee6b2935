//! The per-run trace file, `<trace_dir>/dispatch-<run_id>.json`: the batch as given, the effective
//! settings, every task with every attempt, and the ordered event list. Written atomically
//! (temporary file in the same folder, then rename) so a reader never sees half a trace.

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
    #[serde(flatten)]
    pub run: RunRecord,
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
