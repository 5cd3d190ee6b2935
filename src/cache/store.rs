//! The cache's storage under `<trace_dir>/cache/`: an index in SQLite (`index.sqlite`: one row
//! per key with the stored output and the list of its files) and the files' contents in
//! `blobs/<2 hex>/<sha256>`, content-addressed so identical files are stored once.
//!
//! SQLite because several runs may share a trace folder at once: its locking (WAL mode, a busy
//! timeout) makes every insert, hit count and prune a transaction, and the index stays
//! inspectable with the `sqlite3` tool. Blobs are written to a temporary file and renamed into
//! place, after the blob and before the row that names it, so a reader never sees a half-written
//! file; a blob whose content no longer matches its name is treated as missing.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const INDEX_FILE: &str = "index.sqlite";
pub const BLOB_DIR: &str = "blobs";
const TMP_DIR: &str = "tmp";

/// A file stored with an entry: where it goes (relative to the workspace) and its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub executable: bool,
}

/// A stored result.
#[derive(Debug, Clone)]
pub struct Entry {
    pub output: serde_json::Value,
    pub files: Vec<StoredFile>,
    /// The files the attempt that produced it recorded (empty for entries stored before
    /// they were kept, or unreadable ones).
    pub touched: crate::files::FilesTouched,
    /// Unix seconds.
    pub created_at: i64,
}

/// What [`Store::put`] stores under a key.
pub struct NewEntry<'a> {
    pub agent: &'a str,
    /// The output, as JSON text.
    pub output: &'a str,
    pub files: &'a [StoredFile],
    /// The attempt's file records, as JSON text.
    pub touched: Option<&'a str>,
}

/// What `stats` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub entries: u64,
    /// Bytes of the entries: stored outputs plus the sizes of their files.
    pub bytes: u64,
    pub hits: u64,
    pub blobs: u64,
    /// Bytes of the blob files on disk (a file shared by entries is stored once).
    pub blob_bytes: u64,
    /// Unix seconds of the oldest and newest entry.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

/// What a prune removed and what is left.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub removed_entries: u64,
    pub removed_blobs: u64,
    pub freed_bytes: u64,
    pub entries: u64,
    pub bytes: u64,
}

pub struct Store {
    dir: PathBuf,
    conn: Connection,
}

/// Whether an SQLite error means the index file is damaged (rather than busy or unwritable).
pub fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    ) || matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..)
    )
}

impl Store {
    /// Opens (creating it if needed) the store in `dir`. A damaged index is moved aside to
    /// `index.sqlite.corrupt` and a new one started: the cache is a cache, losing it costs runs.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir.join(BLOB_DIR))
            .and_then(|()| std::fs::create_dir_all(dir.join(TMP_DIR)))
            .map_err(|e| format!("cannot create the cache folder '{}': {e}", dir.display()))?;
        match Store::try_open(dir) {
            Ok(s) => Ok(s),
            Err(e) if is_corrupt(&e) => {
                tracing::warn!(
                    "the cache index in '{}' is damaged ({e}); starting a new one",
                    dir.display()
                );
                Store::set_aside(dir);
                Store::try_open(dir).map_err(|e| format!("cannot open the cache index: {e}"))
            }
            Err(e) => Err(format!(
                "cannot open the cache index in '{}': {e}",
                dir.display()
            )),
        }
    }

    fn try_open(dir: &Path) -> rusqlite::Result<Store> {
        let conn = Connection::open(dir.join(INDEX_FILE))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // WAL lets one run read while another writes; NORMAL syncs at checkpoints only (a
        // power cut may lose the last entries, which is a miss, not damage).
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS entries(
                 key TEXT PRIMARY KEY,
                 task_id TEXT NOT NULL,
                 agent TEXT NOT NULL,
                 output TEXT NOT NULL,
                 files TEXT NOT NULL,
                 bytes INTEGER NOT NULL,
                 created_at INTEGER NOT NULL,
                 used_at INTEGER NOT NULL,
                 hits INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS entries_used ON entries(used_at);",
        )?;
        // Indexes made before file records were kept lack their column. Two runs may add it
        // at once: the loser's "duplicate column" is fine.
        let has_touched = conn.prepare("SELECT touched FROM entries LIMIT 0").is_ok();
        if !has_touched {
            match conn.execute("ALTER TABLE entries ADD COLUMN touched TEXT", []) {
                Err(e) if !e.to_string().contains("duplicate column") => return Err(e),
                _ => {}
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            conn,
        })
    }

    /// Moves a damaged index (and its WAL files) out of the way; the next open starts anew.
    pub fn set_aside(dir: &Path) {
        let index = dir.join(INDEX_FILE);
        let _ = std::fs::rename(&index, dir.join(format!("{INDEX_FILE}.corrupt")));
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{INDEX_FILE}{suffix}")));
        }
    }

    /// The entry stored under `key`; `None` when there is none or its row cannot be read.
    pub fn get(&self, key: &str) -> rusqlite::Result<Option<Entry>> {
        let row = self
            .conn
            .query_row(
                "SELECT output, files, created_at, touched FROM entries WHERE key = ?1",
                params![key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(|(output, files, created_at, touched)| {
            Some(Entry {
                output: serde_json::from_str(&output).ok()?,
                files: serde_json::from_str(&files).ok()?,
                // Only a record: unreadable, it is left out rather than the entry lost.
                touched: touched
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default(),
                created_at,
            })
        }))
    }

    /// Counts a hit on each of `keys`, for least-recently-used eviction and `stats`.
    pub fn touch(&mut self, keys: &[String], now: i64) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare("UPDATE entries SET used_at = ?2, hits = hits + 1 WHERE key = ?1")?;
            for key in keys {
                stmt.execute(params![key, now])?;
            }
        }
        tx.commit()
    }

    pub fn put(
        &self,
        key: &str,
        task_id: &str,
        entry: NewEntry<'_>,
        now: i64,
    ) -> rusqlite::Result<()> {
        let NewEntry {
            agent,
            output,
            files,
            touched,
        } = entry;
        let bytes = (output.len() + touched.map_or(0, str::len)) as u64
            + files.iter().map(|f| f.size).sum::<u64>();
        let files = serde_json::to_string(files).expect("file list serializes");
        self.conn.execute(
            "INSERT OR REPLACE INTO entries(key, task_id, agent, output, files, bytes, created_at, used_at, hits, touched)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 0, ?8)",
            params![key, task_id, agent, output, files, bytes as i64, now, touched],
        )?;
        Ok(())
    }

    pub fn stats(&self) -> rusqlite::Result<Stats> {
        let mut stats = self.conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(hits), 0), min(created_at), max(created_at) FROM entries",
            [],
            |r| {
                Ok(Stats {
                    entries: r.get::<_, i64>(0)? as u64,
                    bytes: r.get::<_, i64>(1)? as u64,
                    hits: r.get::<_, i64>(2)? as u64,
                    oldest: r.get(3)?,
                    newest: r.get(4)?,
                    ..Stats::default()
                })
            },
        )?;
        for (_, size) in blob_files(&self.dir) {
            stats.blobs += 1;
            stats.blob_bytes += size;
        }
        Ok(stats)
    }

    /// Removes entries older than `max_age` seconds, then the least recently used ones until
    /// the rest fit in `max_bytes`, then blobs no entry names. Blobs younger than `blob_grace`
    /// are kept: another run may have written one and not yet stored the entry naming it.
    pub fn prune(
        &mut self,
        max_bytes: u64,
        max_age: f64,
        now: i64,
        blob_grace: Duration,
    ) -> rusqlite::Result<Pruned> {
        let mut pruned = Pruned::default();
        let cutoff = now.saturating_sub(max_age.min(i64::MAX as f64) as i64);
        let tx = self.conn.transaction()?;
        let (n, freed): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM entries WHERE created_at < ?1",
            params![cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute("DELETE FROM entries WHERE created_at < ?1", params![cutoff])?;
        pruned.removed_entries += n as u64;
        pruned.freed_bytes += freed as u64;
        let total: i64 = tx.query_row("SELECT coalesce(sum(bytes), 0) FROM entries", [], |r| {
            r.get(0)
        })?;
        let mut total = total as u64;
        if total > max_bytes {
            let victims: Vec<(String, i64)> = {
                let mut stmt =
                    tx.prepare("SELECT key, bytes FROM entries ORDER BY used_at, created_at")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let mut victims = Vec::new();
                for row in rows {
                    if total <= max_bytes {
                        break;
                    }
                    let (key, bytes): (String, i64) = row?;
                    total = total.saturating_sub(bytes as u64);
                    victims.push((key, bytes));
                }
                victims
            };
            for (key, bytes) in victims {
                tx.execute("DELETE FROM entries WHERE key = ?1", params![key])?;
                pruned.removed_entries += 1;
                pruned.freed_bytes += bytes as u64;
            }
        }
        let mut referenced = HashSet::new();
        {
            let mut stmt = tx.prepare("SELECT files FROM entries")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for files in rows {
                let files: Vec<StoredFile> = serde_json::from_str(&files?).unwrap_or_default();
                referenced.extend(files.into_iter().map(|f| f.sha256));
            }
        }
        let (entries, bytes): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.commit()?;
        pruned.entries = entries as u64;
        pruned.bytes = bytes as u64;
        let young = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < blob_grace)
        };
        for (path, size) in blob_files(&self.dir) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !referenced.contains(name) && !young(&path) && std::fs::remove_file(&path).is_ok() {
                pruned.removed_blobs += 1;
                pruned.freed_bytes += size;
            }
        }
        // Temporary files of writers that died.
        if let Ok(dir) = std::fs::read_dir(self.dir.join(TMP_DIR)) {
            for e in dir.flatten() {
                if !young(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(pruned)
    }
}

/// Every blob file under `dir/blobs`, with its size.
fn blob_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(dir.join(BLOB_DIR)) else {
        return out;
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            if let Ok(m) = f.metadata()
                && m.is_file()
            {
                out.push((f.path(), m.len()));
            }
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn blob_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(BLOB_DIR)
        .join(&sha256[..2.min(sha256.len())])
        .join(sha256)
}

/// Copies `from` to `to` while hashing what was copied; returns the SHA-256 (hex) and size.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// The SHA-256 (hex) of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    copy_hashing(&mut f, &mut std::io::sink()).map(|(h, _)| h)
}

/// Stores the content of `src` as a blob of the store in `dir`; returns its hash and size.
pub fn put_blob(dir: &Path, src: &Path) -> std::io::Result<(String, u64)> {
    let mut from = File::open(src)?;
    let mut tmp = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(dir.join(TMP_DIR))?;
    let (sha, size) = copy_hashing(&mut from, tmp.as_file_mut())?;
    let path = blob_path(dir, &sha);
    // A blob already there is kept only if it still holds its content (a damaged one would
    // make every later hit a miss).
    if path.is_file() && hash_file(&path).is_ok_and(|h| h == sha) {
        return Ok((sha, size));
    }
    std::fs::create_dir_all(path.parent().expect("blob paths have a parent"))?;
    // Same name, same content: a concurrent writer's rename is as good as ours.
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok((sha, size))
}

/// Copies blob `file` next to `dest` (a temporary file in its folder, to be renamed into place),
/// checking its content against its name. Any problem (missing blob, wrong content) is an error.
pub fn stage_blob(
    dir: &Path,
    file: &StoredFile,
    dest: &Path,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut from = File::open(blob_path(dir, &file.sha256))?;
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent folder"))?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".dispatch-restore-")
        .tempfile_in(parent)?;
    let (sha, _) = copy_hashing(&mut from, tmp.as_file_mut())?;
    if sha != file.sha256 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("blob {} does not hold its content", file.sha256),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if file.executable { 0o755 } else { 0o644 };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_made_before_file_records_gains_their_column_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        {
            // The layout of earlier versions, with one entry.
            let conn = Connection::open(dir.path().join(INDEX_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE entries(key TEXT PRIMARY KEY, task_id TEXT NOT NULL, agent TEXT NOT NULL,
                     output TEXT NOT NULL, files TEXT NOT NULL, bytes INTEGER NOT NULL,
                     created_at INTEGER NOT NULL, used_at INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO entries VALUES ('old', 't', 'command', '{\"x\":1}', '[]', 7, 5, 5, 0);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let old = store.get("old").unwrap().expect("kept");
        assert_eq!(old.output, serde_json::json!({"x": 1}));
        assert!(old.touched.is_empty());
        let touched = crate::files::FilesTouched {
            written: vec![crate::files::FileRecord::new("out.txt", b"x")],
            ..Default::default()
        };
        let text = serde_json::to_string(&touched).unwrap();
        let entry = NewEntry {
            agent: "coder",
            output: "2",
            files: &[],
            touched: Some(&text),
        };
        store.put("new", "t2", entry, 9).unwrap();
        assert_eq!(store.get("new").unwrap().unwrap().touched, touched);
        // A second opener (another run) finds the column there.
        drop(Store::open(dir.path()).unwrap());
    }
}
