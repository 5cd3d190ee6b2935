//! `run --rerun-failed TRACE`: run again only what did not succeed.
//!
//! The batch comes from the previous trace (or from `-f`, which must then agree with the trace on
//! every task it keeps). Tasks that succeeded keep their outputs, so `{{tasks.X.output...}}`
//! references still resolve; every other task runs, and with it everything downstream.
//!
//! Traces hold the batch redacted, so a task whose definition held a secret (an `API_TOKEN` in
//! its `env`, credentials in a URL) is stored with `[REDACTED]` in its place. Such a task must
//! never run from the trace: without `-f` the rerun refuses and names it. To recognise it in a
//! batch given again with `-f`, the trace records a keyed digest (HMAC-SHA-256) of every task's
//! real definition. The key is 32 random bytes in `<trace_dir>/.dispatch-key` (mode 0600),
//! created by the first run that writes a trace there; being keyed, a digest cannot be used to
//! test guesses of a short secret by anyone who has only the trace. Losing the key only means
//! that tasks with redacted values in older traces can no longer be matched.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::batch::{Batch, Issue, Task, ValidatedBatch, validate_value};
use crate::events::TaskStatus;
use crate::redact::REDACTED;
use crate::reporter::trace::{Digests, TaskSeal, Trace, read_trace};

/// The key file, inside the trace directory.
pub const KEY_FILE: &str = ".dispatch-key";
/// The value of `digests.algorithm` in traces.
pub const DIGEST_ALGORITHM: &str = "hmac-sha256";
const KEY_LEN: usize = 32;
/// Input of the key id: what `key_id` is the HMAC of.
const KEY_ID_LABEL: &[u8] = b"dispatch_runner trace digest key id";

type HmacSha256 = Hmac<Sha256>;

/// What a rerun reuses from the previous run.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    pub previous_run_id: String,
    /// `outputs[i]`: the kept output of task `i`, `None` for tasks that run again.
    pub outputs: Vec<Option<Value>>,
    /// `files[i]`: the files recorded with the kept output of task `i` (may be shorter).
    pub files: Vec<crate::files::FilesTouched>,
    /// `seals[i]`: for a kept task whose definition comes from the previous trace (no `-f`), its
    /// entry there, carried into the new trace: the definition at hand is the redacted copy, so
    /// its digest and redacted places cannot be worked out again.
    pub seals: Vec<Option<TaskSeal>>,
    /// The key id the carried digests were made with.
    pub seal_key_id: Option<String>,
    /// Set by `resume`: the run continues from its journal instead of starting anew.
    pub resume: Option<crate::journal::Resumed>,
    /// The cache key the previous run recorded for each task that has a `cache` object, by
    /// task id: a kept task whose key changed since runs again.
    pub cache_keys: HashMap<String, String>,
}

impl Reuse {
    pub fn kept(&self) -> usize {
        self.outputs.iter().filter(|o| o.is_some()).count()
    }
}

/// The key for trace digests.
pub struct DigestKey {
    key: [u8; KEY_LEN],
    id: String,
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestKey").field("id", &self.id).finish()
    }
}

impl DigestKey {
    fn new(key: [u8; KEY_LEN]) -> Self {
        let mut k = DigestKey {
            key,
            id: String::new(),
        };
        let mut mac = k.mac();
        mac.update(KEY_ID_LABEL);
        k.id = hex(&mac.finalize().into_bytes()[..8]);
        k
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key of trace directory `dir`; `None` when there is none.
    pub fn load(dir: &Path) -> std::io::Result<Option<DigestKey>> {
        match read_key(&key_path(dir)) {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the key of trace directory `dir`, creating it first if there is none. Creation is
    /// atomic and never replaces a key (the complete file is linked into place only if the name
    /// is free, like `O_EXCL`), so two runs starting at once end up with the same key.
    pub fn load_or_create(dir: &Path) -> std::io::Result<DigestKey> {
        if let Some(k) = Self::load(dir)? {
            return Ok(k);
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        // Temporary files are created with mode 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".dispatch-key-")
            .tempfile_in(dir)?;
        tmp.write_all(&key)?;
        tmp.as_file().sync_all()?;
        let path = key_path(dir);
        match tmp.persist_noclobber(&path) {
            Ok(_) => Ok(DigestKey::new(key)),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path),
            Err(e) => Err(e.error),
        }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The digest of a task definition: HMAC-SHA-256 of its canonical JSON, as hex.
    pub fn digest(&self, task: &Value) -> String {
        let mut mac = self.mac();
        mac.update(&canonical_json(task));
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `task` has the digest `expected`, compared in constant time.
    pub fn matches(&self, task: &Value, expected: &str) -> bool {
        let Some(bytes) = unhex(expected) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(&canonical_json(task));
        mac.verify_slice(&bytes).is_ok()
    }
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

fn read_key(path: &Path) -> std::io::Result<DigestKey> {
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    std::fs::File::open(path)?
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "'{}' is not a trace digest key ({KEY_LEN} bytes); delete it to start a new one \
                 (tasks with redacted values in older traces can then no longer be matched)",
                path.display()
            ),
        )
    })?;
    Ok(DigestKey::new(key))
}

/// JSON with object keys sorted at every level, compact: one byte string per value, whatever
/// order the keys were written or parsed in.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value)).expect("JSON values serialize")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The `digests` section of a new trace for `batch`, with the key of trace directory `dir`
/// (created if needed). Kept tasks of a rerun from the trace carry their previous entries.
pub fn seal_batch(batch: &Batch, dir: &Path, reuse: Option<&Reuse>) -> Digests {
    let key = match DigestKey::load_or_create(dir) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(
                "cannot use the trace digest key in '{}': {e}; the trace records no digests, so \
                 tasks with redacted values cannot be matched in a rerun",
                dir.display()
            );
            None
        }
    };
    let key_id = key.as_ref().map(|k| k.id.clone());
    let tasks = batch
        .tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            if let Some(reuse) = reuse
                && let Some(Some(seal)) = reuse.seals.get(i)
                && seal.task_id == task.task_id
            {
                let mut seal = seal.clone();
                if reuse.seal_key_id != key_id {
                    seal.digest = None;
                }
                return seal;
            }
            let mut value = serde_json::to_value(task).expect("task serializes");
            let digest = key.as_ref().map(|k| k.digest(&value));
            let redacted = crate::redact::redact_json_reporting(&mut value);
            TaskSeal {
                task_id: task.task_id.clone(),
                digest,
                redacted,
            }
        })
        .collect();
    Digests {
        algorithm: DIGEST_ALGORITHM.to_string(),
        key_id,
        tasks,
    }
}

/// Each task's entry of the trace. A trace from before digests gets entries without digests,
/// whose redacted places are found by looking for the marker.
fn seals_of(trace: &Trace) -> HashMap<String, TaskSeal> {
    if let Some(d) = &trace.digests
        && d.algorithm == DIGEST_ALGORITHM
    {
        return d
            .tasks
            .iter()
            .map(|s| (s.task_id.clone(), s.clone()))
            .collect();
    }
    trace
        .batch
        .tasks
        .iter()
        .map(|t| {
            let mut redacted = Vec::new();
            let value = serde_json::to_value(t).expect("task serializes");
            find_marker(&value, &mut String::new(), &mut redacted);
            let seal = TaskSeal {
                task_id: t.task_id.clone(),
                digest: None,
                redacted,
            };
            (t.task_id.clone(), seal)
        })
        .collect()
}

fn find_marker(value: &Value, path: &mut String, out: &mut Vec<String>) {
    let mut visit = |segment: &str, v: &Value, out: &mut Vec<String>| {
        let len = path.len();
        path.push('/');
        path.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        find_marker(v, path, out);
        path.truncate(len);
    };
    match value {
        Value::String(s) if s.contains(REDACTED) => out.push(path.clone()),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                visit(&i.to_string(), v, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                visit(k, v, out);
            }
        }
        _ => {}
    }
}

/// Builds the batch and the reuse plan for a rerun. Problems (an unreadable trace, a batch that
/// changed under a kept task, a task that would run with a redacted value) are input errors,
/// reported like validation issues.
pub fn prepare(
    trace_path: &Path,
    new_batch: Option<ValidatedBatch>,
) -> Result<(ValidatedBatch, Reuse), Vec<Issue>> {
    let trace = read_trace(trace_path).map_err(|e| vec![Issue::new("", e)])?;
    prepare_from(trace, trace_path, new_batch, "--rerun-failed", &[])
}

/// [`prepare`] for a trace at hand (`resume` rebuilds one from the journal at `trace_path`);
/// `command` is how messages tell to pass the batch again.
/// `settled`: tasks that will not run again although they did not succeed (`resume` keeps
/// every finished task's result), so their redacted values do not matter.
pub fn prepare_from(
    trace: Trace,
    trace_path: &Path,
    new_batch: Option<ValidatedBatch>,
    command: &str,
    settled: &[String],
) -> Result<(ValidatedBatch, Reuse), Vec<Issue>> {
    let succeeded: HashMap<&str, Option<&Value>> = trace
        .run
        .tasks
        .iter()
        .filter(|t| t.status == Some(TaskStatus::Success))
        .map(|t| (t.task_id.as_str(), t.output.as_ref()))
        .collect();
    let kept_files: HashMap<&str, &crate::files::FilesTouched> = trace
        .run
        .tasks
        .iter()
        .filter(|t| t.status == Some(TaskStatus::Success))
        .map(|t| (t.task_id.as_str(), &t.files))
        .collect();
    let seals = seals_of(&trace);
    let trace_key_id = trace.digests.as_ref().and_then(|d| d.key_id.clone());

    let (validated, carry) = match new_batch {
        Some(v) => {
            let dir = trace_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let key = DigestKey::load(dir).map_err(|e| {
                vec![Issue::new(
                    "",
                    format!("cannot read the trace digest key: {e}"),
                )]
            })?;
            let key = key.filter(|k| Some(&k.id) == trace_key_id.as_ref());
            let previous = Previous {
                tasks: trace
                    .batch
                    .tasks
                    .iter()
                    .map(|t| (t.task_id.as_str(), t))
                    .collect(),
                seals: &seals,
                key: key.as_ref(),
                key_file: key_path(dir),
            };
            let changed = changed_kept_tasks(&v.batch, &previous, &succeeded);
            if !changed.is_empty() {
                return Err(changed);
            }
            (v, false)
        }
        None => {
            let holding = holding_redacted(
                &trace.batch,
                &seals,
                &succeeded,
                trace_path,
                command,
                settled,
            );
            if !holding.is_empty() {
                return Err(holding);
            }
            let value = serde_json::to_value(&trace.batch).expect("batch serializes");
            let v = validate_value(value).map_err(|issues| {
                let mut v = vec![Issue::new(
                    "",
                    format!(
                        "the batch recorded in '{}' no longer validates",
                        trace_path.display()
                    ),
                )];
                v.extend(issues);
                v
            })?;
            (v, true)
        }
    };
    let mut cache_keys = HashMap::new();
    for e in &trace.run.events {
        if let crate::events::EventKind::CacheChecked {
            task_id,
            key: Some(key),
            ..
        } = &e.kind
        {
            cache_keys.insert(task_id.clone(), key.clone());
        }
    }
    let outputs: Vec<Option<Value>> = validated
        .batch
        .tasks
        .iter()
        .map(|t| {
            succeeded
                .get(t.task_id.as_str())
                .map(|o| o.cloned().unwrap_or(Value::Null))
        })
        .collect();
    let files = validated
        .batch
        .tasks
        .iter()
        .zip(&outputs)
        .map(|(t, kept)| {
            kept.as_ref()
                .and_then(|_| kept_files.get(t.task_id.as_str()).map(|f| (*f).clone()))
                .unwrap_or_default()
        })
        .collect();
    let task_seals = if carry {
        validated
            .batch
            .tasks
            .iter()
            .zip(&outputs)
            .map(|(t, kept)| kept.as_ref().and_then(|_| seals.get(&t.task_id).cloned()))
            .collect()
    } else {
        Vec::new()
    };
    Ok((
        validated,
        Reuse {
            previous_run_id: trace.run.run_id,
            outputs,
            files,
            seals: task_seals,
            seal_key_id: trace_key_id,
            resume: None,
            cache_keys,
        },
    ))
}

/// Tasks that would run again from the trace although it holds only `[REDACTED]` for some of
/// their values.
fn holding_redacted(
    batch: &Batch,
    seals: &HashMap<String, TaskSeal>,
    succeeded: &HashMap<&str, Option<&Value>>,
    trace_path: &Path,
    command: &str,
    settled: &[String],
) -> Vec<Issue> {
    batch
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| !succeeded.contains_key(t.task_id.as_str()))
        .filter(|(_, t)| !settled.contains(&t.task_id))
        .filter_map(|(i, t)| {
            let seal = seals.get(&t.task_id).filter(|s| !s.redacted.is_empty())?;
            Some(Issue::new(
                format!("/tasks/{i}"),
                format!(
                    "task '{}' would run again, but the trace holds redacted values for it ({}), \
                     never the real ones; pass the batch again: {command} {} -f BATCH_FILE",
                    t.task_id,
                    seal.redacted.join(", "),
                    trace_path.display()
                ),
            ))
        })
        .collect()
}

/// The previous run as the comparison with a new batch needs it.
struct Previous<'a> {
    tasks: HashMap<&'a str, &'a Task>,
    seals: &'a HashMap<String, TaskSeal>,
    /// The key the trace's digests were made with, if it is still there.
    key: Option<&'a DigestKey>,
    key_file: PathBuf,
}

/// Kept tasks whose definition differs between the previous run and the new batch: judged on
/// the digests where the trace has them and the key is at hand, else on the stored definition,
/// which is only trusted when nothing in it was redacted.
fn changed_kept_tasks(
    batch: &Batch,
    previous: &Previous<'_>,
    succeeded: &HashMap<&str, Option<&Value>>,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (i, task) in batch.tasks.iter().enumerate() {
        if !succeeded.contains_key(task.task_id.as_str()) {
            continue;
        }
        let Some(old) = previous.tasks.get(task.task_id.as_str()) else {
            continue;
        };
        let seal = previous.seals.get(&task.task_id);
        let redacted: &[String] = seal.map(|s| s.redacted.as_slice()).unwrap_or(&[]);
        let digest = seal.and_then(|s| s.digest.as_deref());
        let new = serde_json::to_value(task).expect("task serializes");
        let stored = serde_json::to_value(old).expect("task serializes");
        let unchanged = match (previous.key, digest) {
            (Some(key), Some(digest)) => key.matches(&new, digest),
            _ if redacted.is_empty() => stored == new,
            _ => {
                issues.push(Issue::new(
                    format!("/tasks/{i}"),
                    format!(
                        "task '{}' succeeded in the previous run, but the trace holds redacted \
                         values for it ({}) and the key its digest was made with ('{}') is \
                         missing or was replaced, so it cannot be matched and counts as changed; \
                         its old output cannot be reused: run the batch without --rerun-failed",
                        task.task_id,
                        redacted.join(", "),
                        previous.key_file.display()
                    ),
                ));
                continue;
            }
        };
        if unchanged {
            continue;
        }
        // Name the fields that changed, as far as the redacted copy shows them; a change only
        // inside redacted values shows as the fields holding them.
        let mut shown = new.clone();
        crate::redact::redact_json(&mut shown);
        let mut fields: std::collections::BTreeSet<String> =
            match (stored.as_object(), shown.as_object()) {
                (Some(a), Some(b)) => a
                    .keys()
                    .chain(b.keys())
                    .filter(|k| a.get(*k) != b.get(*k))
                    .cloned()
                    .collect(),
                _ => Default::default(),
            };
        if fields.is_empty() {
            fields = redacted
                .iter()
                .filter_map(|p| p.split('/').nth(1))
                .map(|f| format!("{f} (a redacted value)"))
                .collect();
        }
        issues.push(Issue::new(
            format!("/tasks/{i}"),
            format!(
                "task '{}' succeeded in the previous run but changed since ({}); its old output \
                 cannot be reused: restore it, or run the batch without --rerun-failed",
                task.task_id,
                fields.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, {"c": 3, "d": 2}]}, "b": 1}"#)
                .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn key_is_created_once_private_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DigestKey::load(dir.path()).unwrap().is_none());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || DigestKey::load_or_create(&d).unwrap().id)
            })
            .collect();
        let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let key = DigestKey::load(dir.path()).unwrap().unwrap();
        assert_eq!(key.id, ids[0]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
        let task = json!({"task_id": "a", "env": {"K": "v"}});
        let d = key.digest(&task);
        assert_eq!(d.len(), 64);
        assert!(key.matches(&task, &d));
        assert!(!key.matches(&json!({"task_id": "a", "env": {"K": "w"}}), &d));
        assert!(!key.matches(&task, "zz"));
    }

    #[test]
    fn a_truncated_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(key_path(dir.path()), b"short").unwrap();
        let e = DigestKey::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a trace digest key"), "{e}");
    }
}
