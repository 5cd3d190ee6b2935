//! What the file-writing sinks share: atomic writes, a place to report write failures (a sink
//! cannot return an error from `on_event`), the writability check made before a run starts, and
//! replaying a recorded event list through sinks (the `report` subcommand).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::events::{Event, EventKind, EventSink};
use crate::reporter::recorder::{Recorder, RunRecord};

/// Failures of outputs, collected while the run goes on and reported when it is over.
#[derive(Debug, Clone, Default)]
pub struct Problems(Arc<Mutex<Vec<String>>>);

impl Problems {
    pub fn push(&self, message: String) {
        self.0.lock().expect("problems lock").push(message);
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("problems lock"))
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".dispatch-")
        .suffix(".tmp")
        .tempfile_in(parent(path))?;
    tmp.as_file_mut().write_all(bytes)?;
    // Temporary files are private (0600); reports and metrics files are meant to be read by
    // others (a CI server, node_exporter's textfile collector), like any file the user creates.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Checks, before anything runs, that a file can be created at `path` (its folder exists and is
/// writable, and the path is not a folder), so a typo fails fast rather than after a long run.
pub fn check_writable(flag: &str, path: &Path) -> Result<(), String> {
    let what = |e: String| format!("cannot write {flag} '{}': {e}", path.display());
    if path.is_dir() {
        return Err(what("it is a directory".into()));
    }
    let dir = parent(path);
    if !dir.is_dir() {
        return Err(what(format!(
            "directory '{}' does not exist",
            dir.display()
        )));
    }
    tempfile::Builder::new()
        .prefix(".dispatch-probe-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| what(e.to_string()))
}

/// Feeds recorded events to sinks in order, as if the run were happening now.
pub fn replay(events: &[Event], sinks: &mut [Box<dyn EventSink>]) {
    for event in events {
        for sink in sinks.iter_mut() {
            sink.on_event(event);
        }
    }
}

/// Where a file output goes and who hears about its failure.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub flag: &'static str,
    pub path: PathBuf,
    pub problems: Problems,
}

impl FileTarget {
    pub fn new(flag: &'static str, path: PathBuf, problems: Problems) -> Self {
        FileTarget {
            flag,
            path,
            problems,
        }
    }

    pub fn write(&self, bytes: &[u8]) {
        if let Err(e) = write_atomic(&self.path, bytes) {
            self.problems.push(format!(
                "cannot write {} '{}': {e}",
                self.flag,
                self.path.display()
            ));
        }
    }
}

/// A sink for outputs rendered from the whole run once it is over (JUnit, HTML, Chrome trace):
/// it folds the events into a [`RunRecord`] and, on `run_finished`, writes `render` of the
/// redacted record to its file.
pub struct RenderSink {
    recorder: Recorder,
    target: FileTarget,
    render: fn(&RunRecord) -> Vec<u8>,
}

impl RenderSink {
    pub fn new(target: FileTarget, render: fn(&RunRecord) -> Vec<u8>) -> Self {
        RenderSink {
            recorder: Recorder::default(),
            target,
            render,
        }
    }
}

impl EventSink for RenderSink {
    fn on_event(&mut self, event: &Event) {
        self.recorder.on_event(event);
        if matches!(event.kind, EventKind::RunFinished { .. })
            && let Some(record) = self.recorder.record()
        {
            self.target.write(&(self.render)(&redacted_record(record)));
        }
    }
}

/// A copy of the record with every secret replaced, for rendering.
pub fn redacted_record(record: &RunRecord) -> RunRecord {
    serde_json::from_value(crate::redact::redacted(record)).expect("a redacted record still fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_writability() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        check_writable("--junit", &p).unwrap();
        write_atomic(&p, b"hello").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        let err = check_writable("--junit", &dir.path().join("nope/out.xml")).unwrap_err();
        assert!(
            err.contains("--junit") && err.contains("does not exist"),
            "{err}"
        );
        let err = check_writable("--html", dir.path()).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn failed_write_is_a_problem() {
        let problems = Problems::default();
        let t = FileTarget::new("--junit", "/nonexistent-dir/x.xml".into(), problems.clone());
        t.write(b"x");
        let p = problems.take();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("--junit"), "{p:?}");
    }
}
