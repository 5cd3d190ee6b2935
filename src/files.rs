//! Files an attempt read and wrote, recorded by the agents that touch files (`coder`, `debug`,
//! `prompt` with `files`, a command-line model working in its task folder), so the result, the
//! trace and the reports can say what each task consumed and produced.
//!
//! Paths are workspace-relative as the agent names them; each record carries the size and the
//! SHA-256 of the content the agent actually saw or wrote, so two runs can be compared.

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One file as an attempt saw or wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileRecord {
    /// Workspace-relative path (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// `sha256:` and the hex digest of the content.
    pub digest: String,
}

impl FileRecord {
    pub fn new(path: impl Into<String>, content: &[u8]) -> Self {
        let mut hex = String::with_capacity(71);
        hex.push_str("sha256:");
        for b in Sha256::digest(content) {
            hex.push_str(&format!("{b:02x}"));
        }
        FileRecord {
            path: path.into(),
            bytes: content.len() as u64,
            digest: hex,
        }
    }
}

/// The files of one attempt: read (consumed) and written (produced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FilesTouched {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<FileRecord>,
}

impl FilesTouched {
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.written.is_empty()
    }
}

/// Where an attempt records the files it touches. Cloned into the attempt's context; the
/// executor takes the records when the attempt ends. A path recorded twice keeps its last
/// record (a file rewritten within one attempt is reported as it was left).
#[derive(Debug, Clone, Default)]
pub struct FileLedger(Arc<Mutex<FilesTouched>>);

impl FileLedger {
    pub fn read(&self, path: impl Into<String>, content: &[u8]) {
        let record = FileRecord::new(path, content);
        upsert(&mut self.lock().read, record);
    }

    pub fn written(&self, path: impl Into<String>, content: &[u8]) {
        let record = FileRecord::new(path, content);
        upsert(&mut self.lock().written, record);
    }

    /// The records so far, leaving the ledger empty.
    pub fn take(&self) -> FilesTouched {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FilesTouched> {
        // A panicking agent cannot leave the list half-updated (upsert is one push or one
        // assignment), so a poisoned lock still holds consistent records.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn upsert(list: &mut Vec<FileRecord>, record: FileRecord) {
    match list.iter_mut().find(|r| r.path == record.path) {
        Some(old) => *old = record,
        None => list.push(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_size_and_digest_and_keeps_the_last_write() {
        let ledger = FileLedger::default();
        ledger.read("src/a.py", b"abc");
        ledger.written("out/b.py", b"first");
        ledger.written("out/b.py", b"second!");
        let clone = ledger.clone();
        clone.read("src/c.py", b"");
        let files = ledger.take();
        assert_eq!(files.read.len(), 2);
        assert_eq!(
            files.read[0].digest,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(files.read[0].bytes, 3);
        assert_eq!(files.written, vec![FileRecord::new("out/b.py", b"second!")]);
        assert!(ledger.take().is_empty());
    }
}
