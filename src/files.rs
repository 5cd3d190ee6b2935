//! Files an attempt read and wrote, recorded by the agents that touch files (`coder`, `debug`,
//! `prompt` with `files`, a command-line model working in its task folder), so the result, the
//! trace and the reports can say what each task consumed and produced.
//!
//! Paths are workspace-relative as the agent names them; each record carries the size and the
//! SHA-256 of the content the agent actually saw or wrote, so two runs can be compared. Files a
//! command-line model left in its own task folder are not workspace files: their paths start
//! with [`TASK_FOLDER_PREFIX`].
//!
//! Lists are bounded: at most [`MAX_RECORDS`] records each, however they arrive (an agent, a
//! journal, a remote worker's outcome message); what is left out is counted in `omitted`, so a
//! hostile or runaway list costs a counter, not memory.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Most records in each of `read` and `written`; more are counted in `omitted`.
pub const MAX_RECORDS: usize = 1000;
/// Longest path kept in a record (bytes); a record read back with a longer one is dropped.
pub const MAX_PATH_BYTES: usize = 4096;
/// What the path of a file in a command-line model's task folder starts with. Workspace paths
/// are relative (`src/a.py`); these are `task-folder:notes.md`, relative to the folder the
/// model ran in, which is deleted after the call.
pub const TASK_FOLDER_PREFIX: &str = "task-folder:";
/// Most files recorded from one task folder, most entries looked at in it, and most bytes
/// hashed from it (larger files past the budget are counted in `omitted`).
pub const MAX_FOLDER_FILES: usize = 200;
pub const MAX_FOLDER_ENTRIES: usize = 10_000;
pub const MAX_FOLDER_HASH_BYTES: u64 = 64 * 1024 * 1024;

/// One file as an attempt saw or wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileRecord {
    /// Workspace-relative path (`/`-separated), or `task-folder:` and a path in the task folder
    /// of a command-line model.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// `sha256:` and the hex digest of the content.
    pub digest: String,
}

impl FileRecord {
    pub fn new(path: impl Into<String>, content: &[u8]) -> Self {
        FileRecord {
            path: path.into(),
            bytes: content.len() as u64,
            digest: digest_text(&Sha256::digest(content)),
        }
    }

    /// The record of everything `reader` yields, hashed as it streams.
    pub fn from_reader(path: impl Into<String>, mut reader: impl Read) -> std::io::Result<Self> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(FileRecord {
            path: path.into(),
            bytes,
            digest: digest_text(&hasher.finalize()),
        })
    }

    /// Whether a record read back from elsewhere (a journal, a worker) is one this runner makes.
    fn is_sound(&self) -> bool {
        let hex = self.digest.strip_prefix("sha256:").unwrap_or("");
        !self.path.is_empty()
            && self.path.len() <= MAX_PATH_BYTES
            && hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

fn digest_text(sum: &[u8]) -> String {
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in sum {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The files of one attempt: read (consumed) and written (produced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(from = "RawFiles")]
pub struct FilesTouched {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<FileRecord>,
    /// Records left out: past [`MAX_RECORDS`] in a list, past the caps of a task folder's scan,
    /// or unsound when read back (a path longer than [`MAX_PATH_BYTES`], a digest that is not
    /// SHA-256).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FilesTouched {
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.written.is_empty() && self.omitted == 0
    }
}

/// How [`FilesTouched`] is read: each list through [`Bounded`].
#[derive(Deserialize, JsonSchema)]
struct RawFiles {
    #[serde(default)]
    #[schemars(with = "Vec<FileRecord>")]
    read: Bounded,
    #[serde(default)]
    #[schemars(with = "Vec<FileRecord>")]
    written: Bounded,
    #[serde(default)]
    omitted: u64,
}

impl From<RawFiles> for FilesTouched {
    fn from(raw: RawFiles) -> Self {
        FilesTouched {
            omitted: raw
                .omitted
                .saturating_add(raw.read.1)
                .saturating_add(raw.written.1),
            read: raw.read.0,
            written: raw.written.0,
        }
    }
}

/// A list of records kept to its first [`MAX_RECORDS`] sound ones, and how many were dropped.
/// Records past the cap are skipped without being built.
#[derive(Default)]
struct Bounded(Vec<FileRecord>, u64);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bounded;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of file records")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bounded, A::Error> {
                let mut out = Bounded::default();
                while out.0.len() < MAX_RECORDS {
                    match seq.next_element::<FileRecord>()? {
                        Some(r) if r.is_sound() => out.0.push(r),
                        Some(_) => out.1 += 1,
                        None => return Ok(out),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    out.1 += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// Where an attempt records the files it touches. Cloned into the attempt's context; the
/// executor takes the records when the attempt ends. A path recorded twice keeps its last
/// record (a file rewritten within one attempt is reported as it was left).
#[derive(Debug, Clone, Default)]
pub struct FileLedger(Arc<Mutex<FilesTouched>>);

impl FileLedger {
    pub fn read(&self, path: impl Into<String>, content: &[u8]) {
        self.read_record(FileRecord::new(path, content));
    }

    pub fn written(&self, path: impl Into<String>, content: &[u8]) {
        self.written_record(FileRecord::new(path, content));
    }

    pub fn read_record(&self, record: FileRecord) {
        let mut files = self.lock();
        let FilesTouched { read, omitted, .. } = &mut *files;
        upsert(read, omitted, record);
    }

    pub fn written_record(&self, record: FileRecord) {
        let mut files = self.lock();
        let FilesTouched {
            written, omitted, ..
        } = &mut *files;
        upsert(written, omitted, record);
    }

    /// Counts records left out (a scan that stopped at its caps).
    pub fn omitted(&self, n: u64) {
        let mut files = self.lock();
        files.omitted = files.omitted.saturating_add(n);
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

fn upsert(list: &mut Vec<FileRecord>, omitted: &mut u64, record: FileRecord) {
    if let Some(old) = list.iter_mut().find(|r| r.path == record.path) {
        *old = record;
    } else if list.len() < MAX_RECORDS {
        list.push(record);
    } else {
        *omitted = omitted.saturating_add(1);
    }
}

/// Records as written the regular files in `dir` (a command-line model's task folder), each as
/// [`TASK_FOLDER_PREFIX`] and its path relative to `dir`, except the files in `unchanged` that
/// still hold exactly the content given (what the runner put there itself). Symbolic links are
/// never followed (nor recorded): a link cannot take the scan out of the folder. At most
/// [`MAX_FOLDER_FILES`] files, [`MAX_FOLDER_ENTRIES`] entries looked at, and
/// [`MAX_FOLDER_HASH_BYTES`] hashed; what the caps leave out is counted as omitted. Blocking.
pub fn record_task_folder(dir: &Path, unchanged: &[(&str, &[u8])], ledger: &FileLedger) {
    let mut budget = MAX_FOLDER_HASH_BYTES;
    let mut seen = 0usize;
    let mut recorded = 0usize;
    let mut omitted = 0u64;
    // Depth-first in name order, so what the caps keep does not depend on directory order.
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subfolders = Vec::new();
        for entry in entries {
            seen += 1;
            if seen > MAX_FOLDER_ENTRIES {
                omitted += 1;
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Not following links: a link is neither a file nor a folder here.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                subfolders.push((entry.path(), path));
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if let Some((_, content)) = unchanged.iter().find(|(n, _)| *n == path)
                && std::fs::read(entry.path()).is_ok_and(|now| now == *content)
            {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            if recorded >= MAX_FOLDER_FILES || size > budget {
                omitted += 1;
                continue;
            }
            match open_no_follow(&entry.path()).and_then(|f| {
                FileRecord::from_reader(format!("{TASK_FOLDER_PREFIX}{path}"), f.take(budget))
            }) {
                Ok(record) => {
                    budget = budget.saturating_sub(record.bytes);
                    recorded += 1;
                    ledger.written_record(record);
                }
                Err(_) => omitted += 1,
            }
        }
        // A folder's files before its subfolders, which then come in name order.
        stack.extend(subfolders.into_iter().rev());
    }
    if omitted > 0 {
        ledger.omitted(omitted);
    }
}

/// Opens a regular file for reading, refusing a symbolic link swapped in since it was listed
/// (and a FIFO, which would block the open).
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
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
        assert_eq!(
            FileRecord::from_reader("x", &b"abc"[..]).unwrap(),
            FileRecord::new("x", b"abc")
        );
    }

    #[test]
    fn lists_are_capped_when_recorded_and_when_read_back() {
        let ledger = FileLedger::default();
        for i in 0..MAX_RECORDS + 5 {
            ledger.read(format!("f{i}"), b"x");
        }
        let files = ledger.take();
        assert_eq!((files.read.len(), files.omitted), (MAX_RECORDS, 5));

        let good = FileRecord::new("a", b"a");
        let many: Vec<&FileRecord> = std::iter::repeat_n(&good, 3 * MAX_RECORDS).collect();
        let bad = [
            serde_json::json!({"path": "x".repeat(MAX_PATH_BYTES + 1), "bytes": 1, "digest": good.digest}),
            serde_json::json!({"path": "b", "bytes": 1, "digest": "<script>"}),
        ];
        let doc = serde_json::json!({"read": many, "written": bad, "omitted": 2});
        let back: FilesTouched = serde_json::from_value(doc).unwrap();
        assert_eq!(back.read.len(), MAX_RECORDS);
        assert!(back.written.is_empty());
        assert_eq!(back.omitted, 2 + 2 * MAX_RECORDS as u64 + 2);
        let round: FilesTouched =
            serde_json::from_str(&serde_json::to_string(&files).unwrap()).unwrap();
        assert_eq!(round, files);
        assert_eq!(
            serde_json::to_string(&FilesTouched::default()).unwrap(),
            "{}"
        );
        let schema = serde_json::to_value(schemars::schema_for!(FilesTouched)).unwrap();
        for field in ["read", "written", "omitted"] {
            assert!(schema["properties"].get(field).is_some(), "{schema}");
        }
    }

    #[test]
    fn a_task_folder_scan_stops_at_its_caps() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..MAX_FOLDER_FILES + 3 {
            std::fs::write(dir.path().join(format!("f{i:04}")), "x").unwrap();
        }
        let ledger = FileLedger::default();
        record_task_folder(dir.path(), &[], &ledger);
        let files = ledger.take();
        assert_eq!(files.written.len(), MAX_FOLDER_FILES);
        assert_eq!(files.omitted, 3);
        // Sorted: the first ones are kept, whatever order the folder lists them in.
        assert_eq!(files.written[0].path, "task-folder:f0000");
    }

    #[test]
    fn a_task_folder_is_scanned_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        std::fs::write(dir.path().join("prompt.txt"), "the prompt").unwrap();
        std::fs::write(dir.path().join("context.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/out.md"), "made").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("f")).unwrap();
        let ledger = FileLedger::default();
        // context.json changed: it is recorded; prompt.txt did not.
        record_task_folder(
            dir.path(),
            &[
                ("prompt.txt", b"the prompt"),
                ("context.json", b"{\"a\":1}"),
            ],
            &ledger,
        );
        let files = ledger.take();
        let paths: Vec<&str> = files.written.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["task-folder:context.json", "task-folder:sub/out.md"]
        );
        assert_eq!(
            files.written[1],
            FileRecord::new("task-folder:sub/out.md", b"made")
        );
        assert_eq!(files.omitted, 0);
    }
}
