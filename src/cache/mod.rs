//! The result cache: a task that opts in with `"cache": {...}` is not run again when nothing it
//! declared changed; its stored output comes back with `"cached": true` and the files it
//! declared as outputs are restored.
//!
//! The key is a SHA-256 of the runner version, the agent, the task's input after `{{tasks...}}`
//! references are replaced, the content of the declared input files, and the declared
//! environment variables' values. Those values go in as an HMAC with the trace folder's key
//! (see [`crate::rerun::DigestKey`]), so nothing stored can be used to test guesses of a secret
//! without that key; the values themselves are never stored. Only successful results are
//! stored, redacted like every result. Everything here blocks (files, SQLite): callers run it on
//! the blocking pool ([`run::RunCache`]).
//!
//! The cache is never a reason for a run to fail: an unreadable, damaged or missing entry or
//! blob is a miss, a store that fails is a warning.

pub mod cli;
pub mod run;
pub mod spec;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use spec::{CacheConfig, CacheSpec};
use store::{Store, StoredFile};

/// The cache's folder inside a trace folder.
pub const CACHE_DIR: &str = "cache";
/// Changes when the key's recipe changes, so old entries are misses rather than wrong hits.
const KEY_FORMAT: u32 = 1;
/// Blobs not named by any entry survive a prune at the end of a run this long: another run may
/// have written one and not yet stored its entry.
const BLOB_GRACE: Duration = Duration::from_secs(3600);

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A stored result; its files are back in place.
    Hit {
        key: String,
        output: Value,
        files_restored: usize,
        /// The files the run that stored it recorded reading and writing.
        files: crate::files::FilesTouched,
    },
    /// Nothing usable under `key` (`reason` says why, when something was there).
    Miss { key: String, reason: Option<String> },
    /// No key could be made (an input file cannot be read): the task runs and is not stored.
    Uncacheable { reason: String },
}

enum Slot {
    Closed,
    Open(Store),
}

/// The cache of one trace folder, for one workspace.
pub struct Cache {
    dir: PathBuf,
    trace_dir: PathBuf,
    workspace: PathBuf,
    config: CacheConfig,
    store: Mutex<Slot>,
    env_key: OnceLock<Result<crate::rerun::DigestKey, String>>,
    /// Keys hit in this run, counted in one transaction at its end rather than one per hit.
    hits: Mutex<Vec<String>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn sha256_hex(bytes: &[u8]) -> String {
    store::hex(&Sha256::digest(bytes))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Cache {
    pub fn new(trace_dir: &Path, workspace: &Path, config: CacheConfig) -> Cache {
        Cache {
            dir: trace_dir.join(CACHE_DIR),
            trace_dir: trace_dir.to_path_buf(),
            workspace: workspace.to_path_buf(),
            config,
            store: Mutex::new(Slot::Closed),
            env_key: OnceLock::new(),
            hits: Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on the open store, opening it first if needed. A damaged index found on the way
    /// is closed, so the next use starts a new one.
    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*slot, Slot::Closed) {
            *slot = Slot::Open(Store::open(&self.dir)?);
        }
        let Slot::Open(store) = &mut *slot else {
            unreachable!("opened above")
        };
        match f(store) {
            Ok(v) => Ok(v),
            Err(e) => {
                if store::is_corrupt(&e) {
                    *slot = Slot::Closed;
                    // Opening again moves the damaged file aside.
                    drop(slot);
                    Store::set_aside(&self.dir);
                }
                Err(format!("cache index: {e}"))
            }
        }
    }

    /// The workspace files matching `globs`, by path relative to the workspace (with `/`).
    /// `follow`: whether symbolic links count (inputs: their targets are read; outputs: a link
    /// is never stored, its target may be outside the workspace).
    fn expand(&self, globs: &[String], follow: bool) -> Result<BTreeMap<String, PathBuf>, String> {
        let root = glob::Pattern::escape(&self.workspace.to_string_lossy());
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut found = BTreeMap::new();
        for g in globs {
            if let Some(why) = spec::glob_problem(g) {
                return Err(format!("glob '{g}' {why}"));
            }
            let paths = glob::glob_with(&format!("{root}/{g}"), options)
                .map_err(|e| format!("glob '{g}': {e}"))?;
            for path in paths {
                let path = path.map_err(|e| format!("glob '{g}': {e}"))?;
                let meta = if follow {
                    std::fs::metadata(&path)
                } else {
                    std::fs::symlink_metadata(&path)
                };
                if !meta.is_ok_and(|m| m.is_file()) {
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.workspace) else {
                    continue;
                };
                let Some(parts) = rel
                    .components()
                    .map(|c| match c {
                        Component::Normal(s) => s.to_str(),
                        _ => None,
                    })
                    .collect::<Option<Vec<&str>>>()
                else {
                    return Err(format!(
                        "glob '{g}' matches '{}', whose name cannot be stored",
                        rel.display()
                    ));
                };
                found.insert(parts.join("/"), path.clone());
            }
        }
        Ok(found)
    }

    fn env_digest(&self, names: &[String]) -> Result<Value, String> {
        if names.is_empty() {
            return Ok(Value::Null);
        }
        let key = self
            .env_key
            .get_or_init(|| {
                std::fs::create_dir_all(&self.trace_dir)
                    .and_then(|()| crate::rerun::DigestKey::load_or_create(&self.trace_dir))
                    .map_err(|e| format!("cannot use the trace folder's digest key: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let values: serde_json::Map<String, Value> = names
            .iter()
            .map(|n| {
                let v = std::env::var_os(n).map(|v| Value::String(v.to_string_lossy().into()));
                (n.clone(), v.unwrap_or(Value::Null))
            })
            .collect();
        Ok(Value::String(key.digest(&Value::Object(values))))
    }

    /// The cache key of a task: `agent` with `input` (references already replaced) under
    /// `spec`. Reads the declared input files.
    pub fn key(&self, agent: &str, input: &Value, spec: &CacheSpec) -> Result<String, String> {
        let mut files = serde_json::Map::new();
        for (rel, path) in self.expand(&spec.inputs, true)? {
            let sha = store::hash_file(&path)
                .map_err(|e| format!("cannot read input file '{rel}': {e}"))?;
            files.insert(rel, Value::String(sha));
        }
        let doc = json!({
            "format": KEY_FORMAT,
            "runner": env!("CARGO_PKG_VERSION"),
            "agent": agent,
            "input": input,
            "inputs": spec.inputs,
            "files": files,
            "env_names": spec.env,
            "env": self.env_digest(&spec.env)?,
            "outputs": spec.outputs,
        });
        Ok(sha256_hex(&crate::rerun::canonical_json(&doc)))
    }

    /// Looks a task up; on a hit its output files are restored before this returns.
    pub fn lookup(&self, agent: &str, input: &Value, spec: &CacheSpec) -> Lookup {
        let key = match self.key(agent, input, spec) {
            Ok(k) => k,
            Err(reason) => return Lookup::Uncacheable { reason },
        };
        let miss = |reason: Option<String>| Lookup::Miss {
            key: key.clone(),
            reason,
        };
        let entry = match self.with_store(|s| s.get(&key)) {
            Ok(Some(e)) => e,
            Ok(None) => return miss(None),
            Err(e) => return miss(Some(e)),
        };
        let now = now_unix();
        let max_age = spec
            .max_age_seconds
            .unwrap_or_else(|| self.config.max_age_seconds());
        let age = now.saturating_sub(entry.created_at);
        if age as f64 > max_age {
            return miss(Some(format!(
                "the stored result is {age} s old, older than max_age_seconds ({max_age})"
            )));
        }
        if let Err(e) = self.restore(&entry.files) {
            return miss(Some(e));
        }
        self.hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.clone());
        Lookup::Hit {
            files_restored: entry.files.len(),
            key,
            output: entry.output,
            files: entry.touched,
        }
    }

    /// Puts stored files back into the workspace: every blob is copied and checked first, then
    /// all are renamed into place, so a missing or damaged blob changes no file.
    fn restore(&self, files: &[StoredFile]) -> Result<(), String> {
        let root = self
            .workspace
            .canonicalize()
            .map_err(|e| format!("cannot resolve the workspace: {e}"))?;
        let mut staged = Vec::with_capacity(files.len());
        for f in files {
            let safe = is_sha256(&f.sha256)
                && !f.path.is_empty()
                && Path::new(&f.path)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !safe {
                return Err(format!(
                    "the stored file '{}' is not a usable entry",
                    f.path
                ));
            }
            let dest = root.join(&f.path);
            // The folder it lands in must be inside the workspace (no link out of it), checked
            // on its nearest existing ancestor before any folder is created.
            let mut existing = dest.parent();
            while let Some(p) = existing
                && !p.exists()
            {
                existing = p.parent();
            }
            if !existing
                .and_then(|p| p.canonicalize().ok())
                .is_some_and(|p| p.starts_with(&root))
            {
                return Err(format!(
                    "'{}' would be restored outside the workspace",
                    f.path
                ));
            }
            let tmp = store::stage_blob(&self.dir, f, &dest)
                .map_err(|e| format!("cannot restore '{}': {e}", f.path))?;
            staged.push((tmp, dest));
        }
        for (tmp, dest) in staged {
            tmp.persist(&dest)
                .map_err(|e| format!("cannot restore '{}': {}", dest.display(), e.error))?;
        }
        Ok(())
    }

    /// Stores a successful result under `key` (output redacted; declared output files as
    /// blobs; `touched`, the files the attempt recorded, with it). Returns the number of files
    /// stored.
    pub fn store(
        &self,
        key: &str,
        task_id: &str,
        agent: &str,
        mut output: Value,
        touched: &crate::files::FilesTouched,
        spec: &CacheSpec,
    ) -> Result<usize, String> {
        crate::redact::redact_json(&mut output);
        std::fs::create_dir_all(self.dir.join(store::BLOB_DIR))
            .map_err(|e| format!("cannot create '{}': {e}", self.dir.display()))?;
        // Opened first: it creates the folders blobs go to.
        self.with_store(|_| Ok(()))?;
        let mut files = Vec::new();
        for (rel, path) in self.expand(&spec.outputs, false)? {
            let (sha256, size) = store::put_blob(&self.dir, &path)
                .map_err(|e| format!("cannot store output file '{rel}': {e}"))?;
            #[cfg(unix)]
            let executable = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
            };
            #[cfg(not(unix))]
            let executable = false;
            files.push(StoredFile {
                path: rel,
                sha256,
                size,
                executable,
            });
        }
        let text = serde_json::to_string(&output).expect("JSON values serialize");
        let mut touched = serde_json::to_value(touched).expect("file records serialize");
        crate::redact::redact_json(&mut touched);
        let touched = Some(touched)
            .filter(|t| t.as_object().is_some_and(|o| !o.is_empty()))
            .map(|t| t.to_string());
        self.with_store(|s| {
            let entry = store::NewEntry {
                agent,
                output: &text,
                files: &files,
                touched: touched.as_deref(),
            };
            s.put(key, task_id, entry, now_unix())
        })?;
        Ok(files.len())
    }

    /// Counts this run's hits (last use and number of hits, for eviction and `stats`).
    pub fn record_hits(&self) {
        let keys = std::mem::take(&mut *self.hits.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.with_store(|s| s.touch(&keys, now_unix())) {
            tracing::warn!("cannot count the cache hits: {e}");
        }
    }

    /// Applies the size and age caps (after a run stored results).
    pub fn enforce_caps(&self) -> Result<store::Pruned, String> {
        let (max_bytes, max_age) = (self.config.max_bytes(), self.config.max_age_seconds());
        self.with_store(|s| s.prune(max_bytes, max_age, now_unix(), BLOB_GRACE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_input_files_and_stays_put_otherwise() {
        let ws = tempfile::tempdir().unwrap();
        let traces = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("a.txt"), "one").unwrap();
        let cache = Cache::new(traces.path(), ws.path(), CacheConfig::default());
        let spec = CacheSpec {
            inputs: vec!["*.txt".into()],
            ..CacheSpec::default()
        };
        let input = json!({"argv": ["cat", "a.txt"]});
        let k1 = cache.key("command", &input, &spec).unwrap();
        assert_eq!(k1, cache.key("command", &input, &spec).unwrap());
        std::fs::write(ws.path().join("a.txt"), "two").unwrap();
        let k2 = cache.key("command", &input, &spec).unwrap();
        assert_ne!(k1, k2);
        std::fs::write(ws.path().join("b.txt"), "new").unwrap();
        assert_ne!(k2, cache.key("command", &input, &spec).unwrap());
        assert_ne!(k2, cache.key("debug", &input, &spec).unwrap());
    }
}
