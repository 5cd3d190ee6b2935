//! `--events PATH`: every event of the run as one JSON object per line (NDJSON), redacted, and
//! flushed as it happens so that a dashboard or a calling agent can follow the run live.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::events::{Event, EventSink};
use crate::reporter::output::Problems;

pub struct NdjsonSink {
    out: Option<BufWriter<File>>,
    path: String,
    problems: Problems,
}

impl NdjsonSink {
    /// Creates (truncates) the file now, so a bad path fails before the run starts.
    pub fn create(path: &Path, problems: Problems) -> Result<Self, String> {
        let file = File::create(path)
            .map_err(|e| format!("cannot write --events '{}': {e}", path.display()))?;
        Ok(NdjsonSink {
            out: Some(BufWriter::new(file)),
            path: path.display().to_string(),
            problems,
        })
    }
}

impl EventSink for NdjsonSink {
    fn on_event(&mut self, event: &Event) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let line = serde_json::to_string(&crate::redact::redacted(event)).expect("serializable");
        let written = out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            // One report, then stop: a full disk would otherwise produce one error per event.
            self.problems
                .push(format!("cannot write --events '{}': {e}", self.path));
            self.out = None;
        }
    }
}
