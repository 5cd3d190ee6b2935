//! The run history: `<trace_dir>/history.sqlite`, an embedded SQLite store of how long each task's
//! recent attempts took and how they ended. Runs learn from it: the scheduler weighs the critical
//! path by estimated time instead of task count, `timeout_seconds: "auto"` derives a timeout from
//! the recent high percentile, and `validate` estimates the makespan.
//!
//! A task is known by its id plus a keyed digest of its agent and input (the trace directory's
//! digest key, as for `--rerun-failed`: an unkeyed hash of an input holding a short secret could
//! be guessed offline), and, when its definition changed, by its id alone.
//!
//! SQLite in WAL mode with a busy timeout lets several runs share the file; writes happen on a
//! thread of their own, never on the async runtime. History is an optimisation: every failure to
//! use it is a warning, and a file that is not a database (or is damaged) is moved aside and
//! started afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, params};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::events::{AttemptOutcome, Event, EventKind, EventSink};

/// The store's file name inside the trace directory.
pub const FILE_NAME: &str = "history.sqlite";
/// Attempts kept per task identity (id and digest) unless configured.
pub const DEFAULT_KEEP: u32 = 20;
/// Past this many rows the oldest go, whatever their task: a store used by many different
/// batches stays small.
const MAX_ROWS: i64 = 1_000_000;
/// How long a run waits for another run's write lock before giving up on one write.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `history:` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    /// `false` turns the history off: nothing is read or recorded (as `--no-history`).
    pub enabled: Option<bool>,
    /// Attempts kept per task (default 20).
    pub keep: Option<u32>,
    #[serde(default)]
    pub adaptive_timeouts: AdaptiveSection,
}

impl HistorySection {
    /// Values that parsed but make no sense, as `(key under history, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .adaptive_timeouts
            .problems()
            .into_iter()
            .map(|(k, m)| (format!("adaptive_timeouts.{k}"), m))
            .collect();
        if self.keep.is_some_and(|k| !(1..=1000).contains(&k)) {
            out.push(("keep".into(), "must be from 1 to 1000".into()));
        }
        out
    }

    /// What a run does with the history under this section.
    pub fn options(&self) -> HistoryOptions {
        HistoryOptions {
            keep: self.keep.unwrap_or(DEFAULT_KEEP),
            adaptive: self.adaptive_timeouts.resolve(),
        }
    }
}

/// `history.adaptive_timeouts:` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSection {
    /// `true`: tasks without a `timeout_seconds` of their own behave as `"auto"` (default false).
    pub default: Option<bool>,
    /// The timeout is this multiple of the percentile (default 3).
    pub multiple: Option<f64>,
    /// The percentile of recent successful durations (default 95).
    pub percentile: Option<f64>,
    /// Successful attempts needed before the history is trusted (default 5).
    pub min_samples: Option<u32>,
    /// Lower bound in seconds (default 1).
    pub min_seconds: Option<f64>,
    /// Upper bound in seconds (default 3600).
    pub max_seconds: Option<f64>,
    /// Timeout while there are too few samples (default: the timeout the task would have
    /// without `"auto"`: its agent's, else the run's).
    pub fallback_seconds: Option<f64>,
}

/// How adaptive timeouts are chosen, every field set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveTimeouts {
    pub default: bool,
    pub multiple: f64,
    pub percentile: f64,
    pub min_samples: u32,
    pub min_seconds: f64,
    pub max_seconds: f64,
    pub fallback_seconds: Option<f64>,
}

impl Default for AdaptiveTimeouts {
    fn default() -> Self {
        AdaptiveSection::default().resolve()
    }
}

impl AdaptiveSection {
    pub fn resolve(&self) -> AdaptiveTimeouts {
        AdaptiveTimeouts {
            default: self.default.unwrap_or(false),
            multiple: self.multiple.unwrap_or(3.0),
            percentile: self.percentile.unwrap_or(95.0),
            min_samples: self.min_samples.unwrap_or(5),
            min_seconds: self.min_seconds.unwrap_or(1.0),
            max_seconds: self.max_seconds.unwrap_or(3600.0),
            fallback_seconds: self.fallback_seconds,
        }
    }

    /// Values that parsed but make no sense, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
        for (key, v) in [
            ("multiple", self.multiple),
            ("min_seconds", self.min_seconds),
            ("max_seconds", self.max_seconds),
            ("fallback_seconds", self.fallback_seconds),
        ] {
            if !positive(v) {
                out.push((key, "must be a positive, finite number".to_string()));
            }
        }
        if self
            .percentile
            .is_some_and(|p| !(p.is_finite() && p > 0.0 && p <= 100.0))
        {
            out.push(("percentile", "must be above 0 and at most 100".to_string()));
        }
        if let (Some(lo), Some(hi)) = (self.min_seconds, self.max_seconds)
            && lo > hi
        {
            out.push(("min_seconds", "must not be above max_seconds".to_string()));
        }
        out
    }
}

/// What a run does with the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryOptions {
    pub keep: u32,
    pub adaptive: AdaptiveTimeouts,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            keep: DEFAULT_KEEP,
            adaptive: AdaptiveTimeouts::default(),
        }
    }
}

/// The store's path in a trace directory.
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// One finished attempt, as recorded.
#[derive(Debug, Clone)]
pub struct Record {
    pub task_id: String,
    pub digest: String,
    pub outcome: &'static str,
    pub duration_ms: f64,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating on first use) the store in `dir`. A file that is not a database, or a
    /// damaged one, is renamed `history.sqlite.corrupt-<time>` and a new store is created, with
    /// a warning.
    pub fn open(dir: &Path) -> Result<Store, String> {
        let path = store_path(dir);
        match Store::open_at(&path) {
            Ok(store) => Ok(store),
            Err(e) if is_corrupt(&e) => {
                let aside = move_aside(&path)?;
                tracing::warn!(
                    "the run history '{}' is damaged ({e}); moved it to '{}' and started a new one",
                    path.display(),
                    aside.display()
                );
                eprintln!(
                    "dispatch_runner: warning: the run history '{}' is damaged ({e}); moved it to '{}' and started a new one",
                    path.display(),
                    aside.display()
                );
                Store::open_at(&path).map_err(|e| format!("'{}': {e}", path.display()))
            }
            Err(e) => Err(format!("'{}': {e}", path.display())),
        }
    }

    /// Opens the store only if it exists (for `validate`, which creates nothing).
    pub fn open_existing(dir: &Path) -> Option<Store> {
        let path = store_path(dir);
        if !path.is_file() {
            return None;
        }
        Store::open(dir)
            .map_err(|e| tracing::warn!("cannot read the run history: {e}"))
            .ok()
    }

    fn open_at(path: &Path) -> rusqlite::Result<Store> {
        // Task ids and timings are the batch author's business: owner only, like the traces.
        // Created empty here with that mode (SQLite takes an empty file as a new database and
        // gives its WAL files the database's mode), so it is never readable by others.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Every run opens and closes the store once; a checkpoint on close would cost every
        // run four fsyncs at its end. SQLite still checkpoints when the WAL grows past its
        // threshold (1000 pages), so the WAL file stays small.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // Reading the mode back touches the file: a file that is not a database fails here.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS attempts (
                 id INTEGER PRIMARY KEY,
                 task_id TEXT NOT NULL,
                 digest TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 duration_ms REAL NOT NULL,
                 finished_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (task_id, digest, id);",
        )?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `records` in one transaction, then forgets all but the newest `keep` attempts of
    /// each identity written.
    pub fn record(&mut self, records: &[Record], keep: u32) -> rusqlite::Result<()> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO attempts (task_id, digest, outcome, duration_ms, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut trim = tx.prepare_cached(
                "DELETE FROM attempts WHERE task_id = ?1 AND digest = ?2 AND id <= (
                     SELECT id FROM attempts WHERE task_id = ?1 AND digest = ?2
                     ORDER BY id DESC LIMIT 1 OFFSET ?3)",
            )?;
            for r in records {
                insert.execute(params![r.task_id, r.digest, r.outcome, r.duration_ms, now])?;
                trim.execute(params![r.task_id, r.digest, keep])?;
            }
        }
        tx.execute(
            "DELETE FROM attempts WHERE id <= (SELECT MAX(id) FROM attempts) - ?1",
            [MAX_ROWS],
        )?;
        tx.commit()
    }

    /// The recent successful durations of each task of `tasks` (id, digest), newest first:
    /// those of the same definition, else those of the same id.
    pub fn load(&self, tasks: &[(String, Option<String>)]) -> rusqlite::Result<Estimates> {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
        for (i, (id, _)) in tasks.iter().enumerate() {
            index.insert(id.as_str(), i);
        }
        // (same definition, same id only), each newest first.
        let mut found: HashMap<usize, (Vec<f64>, Vec<f64>)> = HashMap::new();
        // One scan of a table bounded by MAX_ROWS beats a million indexed look-ups.
        let mut stmt = self.conn.prepare(
            "SELECT task_id, digest, duration_ms FROM attempts WHERE outcome = 'success'
             ORDER BY id DESC",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let task_id = row.get_ref(0)?.as_str()?;
            let Some(&i) = index.get(task_id) else {
                continue;
            };
            let digest = row.get_ref(1)?.as_str()?;
            let ms: f64 = row.get(2)?;
            if !ms.is_finite() || ms < 0.0 {
                continue;
            }
            let entry = found.entry(i).or_default();
            if tasks[i].1.as_deref() == Some(digest) {
                if entry.0.len() < DEFAULT_KEEP as usize * 5 {
                    entry.0.push(ms);
                }
            } else if entry.1.len() < DEFAULT_KEEP as usize * 5 {
                entry.1.push(ms);
            }
        }
        let samples = found
            .into_iter()
            .map(|(i, (exact, loose))| {
                let exact_match = !exact.is_empty();
                (
                    i,
                    Samples {
                        durations_ms: if exact_match { exact } else { loose },
                        exact: exact_match,
                    },
                )
            })
            .collect();
        Ok(Estimates {
            samples,
            n: tasks.len(),
        })
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// Renames a damaged store (and its WAL files) out of the way; returns the new name.
fn move_aside(path: &Path) -> Result<PathBuf, String> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let aside = path.with_extension(format!("sqlite.corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|e| {
        format!(
            "the run history '{}' is damaged and cannot be moved aside: {e}",
            path.display()
        )
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    Ok(aside)
}

/// A task's recent successful durations.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Newest first.
    pub durations_ms: Vec<f64>,
    /// From attempts of the same definition (else of the same task id).
    pub exact: bool,
}

/// What the history says about the tasks of one batch, by task index.
#[derive(Debug, Clone, Default)]
pub struct Estimates {
    samples: HashMap<usize, Samples>,
    n: usize,
}

impl Estimates {
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn samples(&self, i: usize) -> Option<&Samples> {
        self.samples.get(&i)
    }

    /// The median of task `i`'s recent durations, if it has any.
    pub fn median_ms(&self, i: usize, keep: usize) -> Option<f64> {
        let s = self.samples.get(&i)?;
        let mut recent: Vec<f64> = s.durations_ms.iter().take(keep.max(1)).copied().collect();
        Some(percentile(&mut recent, 50.0))
    }

    /// Estimated time of every task in milliseconds: its recent median; a task never seen gets
    /// the median of the known ones. `None` when nothing is known (every task then counts as
    /// one unit, as without history).
    pub fn durations_ms(&self, keep: usize) -> Option<Vec<f64>> {
        if self.samples.is_empty() {
            return None;
        }
        let mut known: Vec<(usize, f64)> = self
            .samples
            .keys()
            .filter_map(|&i| Some((i, self.median_ms(i, keep)?)))
            .collect();
        known.sort_unstable_by_key(|&(i, _)| i);
        let mut medians: Vec<f64> = known.iter().map(|&(_, m)| m).collect();
        let unseen = percentile(&mut medians, 50.0);
        let mut out = vec![unseen; self.n];
        for (i, m) in known {
            out[i] = m;
        }
        Some(out)
    }

    /// The timeout of an `"auto"` task `i` and where it came from.
    pub fn auto_timeout(
        &self,
        i: usize,
        keep: usize,
        rule: &AdaptiveTimeouts,
        otherwise: Duration,
    ) -> ChosenTimeout {
        let fallback = || ChosenTimeout {
            seconds: rule.fallback_seconds.unwrap_or(otherwise.as_secs_f64()),
            source: TimeoutSource::Fallback,
            samples: self
                .samples
                .get(&i)
                .map_or(0, |s| s.durations_ms.len().min(keep)),
        };
        let Some(s) = self.samples.get(&i) else {
            return fallback();
        };
        let mut recent: Vec<f64> = s.durations_ms.iter().take(keep.max(1)).copied().collect();
        if recent.len() < rule.min_samples.max(1) as usize {
            return fallback();
        }
        let high = percentile(&mut recent, rule.percentile) / 1000.0;
        let seconds = (high * rule.multiple).clamp(rule.min_seconds, rule.max_seconds);
        ChosenTimeout {
            seconds,
            source: TimeoutSource::History,
            samples: recent.len(),
        }
    }
}

/// Estimated weights in microseconds (at least one each), as the scheduler uses them.
pub fn weights_us(durations_ms: &[f64]) -> Vec<u64> {
    durations_ms
        .iter()
        .map(|m| (m * 1000.0).round().max(1.0) as u64)
        .collect()
}

/// What `validate` predicts from the history.
#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    /// The run's length if every task took its estimate, scheduled as the runner does (longest
    /// remaining path in time first) on `workers` workers.
    pub makespan_seconds: f64,
    /// The longest path through the graph in estimated time: no schedule beats it.
    pub critical_path_seconds: f64,
    pub critical_path: Vec<String>,
    pub workers: usize,
    /// Tasks with recorded durations (the others are estimated by the median of these).
    pub tasks_with_history: usize,
}

/// Simulates the run on `workers` workers with every task taking its estimate.
pub fn forecast(
    plan: &crate::graph::Plan,
    estimates: &Estimates,
    keep: usize,
    workers: usize,
) -> Option<Forecast> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let ms = estimates.durations_ms(keep)?;
    let w = weights_us(&ms);
    let (path, total) = plan.critical_path_weighted(&w);
    let priority = plan.weighted_chain(&w);
    let n = plan.len();
    let mut unmet: Vec<usize> = (0..n).map(|i| plan.deps(i).len()).collect();
    let mut ready: BinaryHeap<(u64, Reverse<usize>)> = (0..n)
        .filter(|&i| unmet[i] == 0)
        .map(|i| (priority[i], Reverse(i)))
        .collect();
    let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut now, mut end) = (0u64, 0u64);
    let workers = workers.max(1);
    loop {
        while running.len() < workers
            && let Some((_, Reverse(i))) = ready.pop()
        {
            running.push(Reverse((now.saturating_add(w[i]), i)));
        }
        let Some(Reverse((t, i))) = running.pop() else {
            break;
        };
        now = t;
        end = end.max(t);
        for &d in plan.dependents(i) {
            unmet[d] -= 1;
            if unmet[d] == 0 {
                ready.push((priority[d], Reverse(d)));
            }
        }
    }
    Some(Forecast {
        makespan_seconds: end as f64 / 1e6,
        critical_path_seconds: total as f64 / 1e6,
        critical_path: path.iter().map(|&i| plan.id(i).to_string()).collect(),
        workers,
        tasks_with_history: estimates.samples.len(),
    })
}

/// The timeout an `"auto"` attempt ran under, as the trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChosenTimeout {
    pub seconds: f64,
    pub source: TimeoutSource,
    /// Recent successful durations it was computed from (or that were too few).
    pub samples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutSource {
    /// A multiple of the task's recent high percentile, clamped to the bounds.
    History,
    /// Too few recorded runs: the configured fallback.
    Fallback,
}

/// The `p`-th percentile (nearest rank) of `values`; 0 for none.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Each task's id with its keyed digest (none without a digest key).
pub fn identities(
    batch: &Batch,
    key: Option<&crate::rerun::DigestKey>,
) -> Vec<(String, Option<String>)> {
    batch
        .tasks
        .iter()
        .map(|t| {
            let digest = key.map(|k| {
                let value = serde_json::to_value(&t.agent).unwrap_or_default();
                k.digest(&value)
            });
            (t.task_id.clone(), digest)
        })
        .collect()
}

/// Records finished attempts on a thread of its own, a transaction per burst.
pub struct Writer {
    tx: mpsc::Sender<Record>,
    thread: JoinHandle<()>,
}

impl Writer {
    pub fn start(mut store: Store, keep: u32) -> Writer {
        let (tx, rx) = mpsc::channel::<Record>();
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                let mut warned = false;
                while let Ok(first) = rx.recv() {
                    let mut burst = vec![first];
                    burst.extend(rx.try_iter());
                    if let Err(e) = store.record(&burst, keep)
                        && !warned
                    {
                        warned = true;
                        tracing::warn!(
                            "cannot record in the run history '{}': {e}",
                            store.path().display()
                        );
                    }
                }
            })
            .expect("spawn the history writer");
        Writer { tx, thread }
    }

    /// An event sink feeding this writer. Events numbered below `skip_below` (replayed from
    /// the journal of a resumed run) were recorded by the run that lived them.
    pub fn sink(&self, ids: &[(String, Option<String>)], skip_below: u64) -> HistorySink {
        HistorySink {
            tx: self.tx.clone(),
            digests: ids
                .iter()
                .map(|(id, d)| (id.clone(), d.clone().unwrap_or_default()))
                .collect(),
            skip_below,
        }
    }

    /// Waits (blocking: call it off the runtime) for everything sent to be written. Every
    /// sink must be gone.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// Sends each finished attempt to the [`Writer`].
pub struct HistorySink {
    tx: mpsc::Sender<Record>,
    digests: HashMap<String, String>,
    skip_below: u64,
}

impl EventSink for HistorySink {
    fn on_event(&mut self, event: &Event) {
        if event.seq < self.skip_below {
            return;
        }
        if let EventKind::AttemptFinished {
            task_id,
            outcome,
            duration_ms,
            ..
        } = &event.kind
        {
            let outcome = match outcome {
                AttemptOutcome::Success => "success",
                AttemptOutcome::Error => "error",
                AttemptOutcome::Timeout => "timeout",
                // Says nothing about the task.
                AttemptOutcome::Cancelled | AttemptOutcome::Interrupted => return,
            };
            let Some(digest) = self.digests.get(task_id) else {
                return;
            };
            let _ = self.tx.send(Record {
                task_id: task_id.clone(),
                digest: digest.clone(),
                outcome,
                duration_ms: *duration_ms,
            });
        }
    }
}

/// The history a run starts with.
pub struct Loaded {
    pub estimates: Estimates,
    pub writer: Option<Writer>,
    pub ids: Vec<(String, Option<String>)>,
}

/// Opens the store in `dir` and reads what it knows about `ids` (blocking). Any failure is a
/// warning and an empty history.
pub fn load_for_run(dir: &Path, ids: Vec<(String, Option<String>)>, keep: u32) -> Loaded {
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("the run history is not used: {e}");
            eprintln!("dispatch_runner: warning: the run history is not used: {e}");
            return Loaded {
                estimates: Estimates::default(),
                writer: None,
                ids,
            };
        }
    };
    let estimates = store.load(&ids).unwrap_or_else(|e| {
        tracing::warn!("cannot read the run history: {e}");
        Estimates::default()
    });
    Loaded {
        estimates,
        writer: Some(Writer::start(store, keep)),
        ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 50.0), 3.0);
        assert_eq!(percentile(&mut v, 95.0), 5.0);
        assert_eq!(percentile(&mut v, 1.0), 1.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn records_trims_and_falls_back_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let rec = |id: &str, d: &str, ms: f64| Record {
            task_id: id.into(),
            digest: d.into(),
            outcome: "success",
            duration_ms: ms,
        };
        let many: Vec<Record> = (0..30).map(|k| rec("a", "d1", k as f64)).collect();
        store.record(&many, 10).unwrap();
        store.record(&[rec("b", "old", 7.0)], 10).unwrap();
        let ids = vec![
            ("a".to_string(), Some("d1".to_string())),
            ("b".to_string(), Some("new".to_string())),
            ("c".to_string(), None),
        ];
        let e = store.load(&ids).unwrap();
        let a = e.samples(0).unwrap();
        assert!(a.exact);
        assert_eq!(a.durations_ms.len(), 10, "trimmed to the newest 10");
        assert_eq!(a.durations_ms[0], 29.0);
        let b = e.samples(1).unwrap();
        assert!(!b.exact);
        assert_eq!(b.durations_ms, vec![7.0]);
        assert!(e.samples(2).is_none());
        let d = e.durations_ms(20).unwrap();
        // c is unseen: the median of a (24.5 -> nearest rank 24) and b (7).
        assert_eq!(d[2], d[1].min(d[0]));
    }

    #[test]
    fn auto_timeout_needs_samples_and_stays_in_bounds() {
        let mut e = Estimates {
            samples: HashMap::new(),
            n: 1,
        };
        let rule = AdaptiveTimeouts {
            min_seconds: 2.0,
            max_seconds: 10.0,
            fallback_seconds: Some(42.0),
            ..AdaptiveTimeouts::default()
        };
        let t = e.auto_timeout(0, 20, &rule, Duration::from_secs(300));
        assert_eq!((t.seconds, t.source), (42.0, TimeoutSource::Fallback));
        e.samples.insert(
            0,
            Samples {
                durations_ms: vec![100.0; 4],
                exact: true,
            },
        );
        let t = e.auto_timeout(0, 20, &rule, Duration::from_secs(300));
        assert_eq!(t.source, TimeoutSource::Fallback);
        e.samples.get_mut(&0).unwrap().durations_ms.push(100.0);
        let t = e.auto_timeout(0, 20, &rule, Duration::from_secs(300));
        assert_eq!((t.seconds, t.source), (2.0, TimeoutSource::History));
        e.samples.get_mut(&0).unwrap().durations_ms = vec![9000.0; 5];
        let t = e.auto_timeout(0, 20, &rule, Duration::from_secs(300));
        assert_eq!(t.seconds, 10.0);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(store_path(dir.path()), vec![b'x'; 4096]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load(&[]).unwrap().is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
