//! Trace retention: removes the traces and journals of old runs from the trace directory, by age,
//! by count and by total size (`trace_retention` in the configuration file, applied when a run
//! ends, and `dispatch_runner prune`).
//!
//! Only `dispatch-<run_id>.json` and `dispatch-<run_id>.journal` files directly in the trace
//! directory are candidates, and only as whole runs (trace and journal together). A journal
//! without a trace is a run that has not finished (still going, or killed and waiting for
//! `resume`): it is always kept. Nothing else (the run history, the digest key, other files,
//! symbolic links, sub-folders) is ever touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// `trace_retention:` in the configuration file. Unset fields do not limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Runs whose trace is older than this many days are removed.
    pub max_age_days: Option<f64>,
    /// Only the newest this many finished runs are kept.
    pub max_count: Option<usize>,
    /// The oldest finished runs go until the traces and journals take at most this many bytes.
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.max_age_days.is_some() || self.max_count.is_some() || self.max_bytes.is_some()
    }

    /// Values that parsed but make no sense, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self
            .max_age_days
            .is_some_and(|d| !(d.is_finite() && d > 0.0))
        {
            out.push(("max_age_days", "must be a positive, finite number".into()));
        }
        if self.max_count == Some(0) {
            out.push(("max_count", "must be at least 1".into()));
        }
        if self.max_bytes == Some(0) {
            out.push(("max_bytes", "must be at least 1".into()));
        }
        out
    }

    /// This rule with every limit `higher` sets replacing ours.
    pub fn overlay(&self, higher: &Retention) -> Retention {
        Retention {
            max_age_days: higher.max_age_days.or(self.max_age_days),
            max_count: higher.max_count.or(self.max_count),
            max_bytes: higher.max_bytes.or(self.max_bytes),
        }
    }
}

/// One run's files in the trace directory.
#[derive(Debug, Clone, Serialize)]
pub struct RunFiles {
    pub run_id: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    #[serde(skip)]
    modified: SystemTime,
    #[serde(skip)]
    finished: bool,
}

/// What a prune removes and keeps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub removed: Vec<RunFiles>,
    pub removed_bytes: u64,
    pub kept_runs: usize,
    /// Runs with a journal but no trace: not finished, never removed.
    pub kept_unfinished: Vec<String>,
    /// Files that could not be removed, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The run id of a trace or journal file name, and whether it is the trace.
fn run_file(name: &str) -> Option<(&str, bool)> {
    let rest = name.strip_prefix("dispatch-")?;
    if let Some(id) = rest.strip_suffix(".json") {
        return valid_id(id).then_some((id, true));
    }
    let id = rest.strip_suffix(".journal")?;
    valid_id(id).then_some((id, false))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The runs in `dir`, newest trace first.
fn scan(dir: &Path) -> std::io::Result<Vec<RunFiles>> {
    let mut runs: BTreeMap<String, RunFiles> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((id, is_trace)) = name.to_str().and_then(run_file) else {
            continue;
        };
        // Never follows a link: only regular files that are themselves in the folder.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        let run = runs.entry(id.to_string()).or_insert_with(|| RunFiles {
            run_id: id.to_string(),
            files: Vec::new(),
            bytes: 0,
            modified: SystemTime::UNIX_EPOCH,
            finished: false,
        });
        run.files.push(entry.path());
        run.bytes += meta.len();
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if is_trace {
            run.finished = true;
            run.modified = modified;
        } else if !run.finished {
            run.modified = run.modified.max(modified);
        }
    }
    let mut runs: Vec<RunFiles> = runs.into_values().collect();
    runs.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.run_id.cmp(&a.run_id)));
    for r in &mut runs {
        r.files.sort();
    }
    Ok(runs)
}

/// Decides what `rule` removes from `dir` (nothing is removed yet). `keep` names a run that
/// stays whatever the rule says (the run that just ended).
pub fn plan(
    dir: &Path,
    rule: &Retention,
    now: SystemTime,
    keep: Option<&str>,
) -> std::io::Result<Pruned> {
    let runs = scan(dir)?;
    let mut out = Pruned::default();
    // Unfinished runs count toward the size but are never candidates.
    let mut bytes: u64 = runs.iter().filter(|r| !r.finished).map(|r| r.bytes).sum();
    let mut kept = 0usize;
    for run in runs {
        if !run.finished {
            out.kept_unfinished.push(run.run_id);
            continue;
        }
        let pinned = keep == Some(run.run_id.as_str());
        let too_old = rule.max_age_days.is_some_and(|days| {
            now.duration_since(run.modified)
                .is_ok_and(|age| age > Duration::from_secs_f64(days * 86_400.0))
        });
        let too_many = rule.max_count.is_some_and(|n| kept >= n);
        // The newest finished run is never removed for size alone.
        let too_big = rule
            .max_bytes
            .is_some_and(|max| kept > 0 && bytes.saturating_add(run.bytes) > max);
        if !pinned && (too_old || too_many || too_big) {
            out.removed_bytes += run.bytes;
            out.removed.push(run);
        } else {
            kept += 1;
            bytes = bytes.saturating_add(run.bytes);
        }
    }
    out.kept_runs = kept;
    out.kept_unfinished.sort();
    Ok(out)
}

/// Removes what [`plan`] chose; a file that cannot be removed is reported, not fatal.
pub fn apply(pruned: &mut Pruned) {
    for run in &pruned.removed {
        for f in &run.files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => pruned
                    .errors
                    .push(format!("cannot remove '{}': {e}", f.display())),
            }
        }
    }
}

/// Applies `rule` to `dir` at the end of a run; problems are warnings.
pub fn after_run(dir: &Path, rule: &Retention, run_id: &str) {
    if !rule.is_set() {
        return;
    }
    match plan(dir, rule, SystemTime::now(), Some(run_id)) {
        Ok(mut pruned) => {
            apply(&mut pruned);
            for e in &pruned.errors {
                tracing::warn!("trace retention: {e}");
            }
            if !pruned.removed.is_empty() {
                tracing::info!(
                    "trace retention removed {} runs ({} bytes) from '{}'",
                    pruned.removed.len(),
                    pruned.removed_bytes,
                    dir.display()
                );
            }
        }
        Err(e) => tracing::warn!("trace retention: cannot read '{}': {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(run_file("dispatch-2026-ab.json"), Some(("2026-ab", true)));
        assert_eq!(run_file("dispatch-x.journal"), Some(("x", false)));
        assert_eq!(run_file("dispatch-x.json.tmp"), None);
        assert_eq!(run_file("dispatch-.json"), None);
        assert_eq!(run_file("dispatch-../a.json"), None);
        assert_eq!(run_file("history.sqlite"), None);
    }
}
