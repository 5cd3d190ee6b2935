//! Running a validated batch: the dispatcher (run state, scheduling decisions, events), the
//! lifecycle of one task (`task_state`), and the executor (where attempts run: the `Executor`
//! trait and the in-process `LocalExecutor`), plus the entry point that ties them to the trace
//! file.

pub mod dispatcher;
pub mod executor;
pub mod groups;
pub mod task_state;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::batch::ValidatedBatch;
use crate::events::{CancelReason, EventSink};
use crate::reporter::ledger::RunLog;
use crate::reporter::trace;
use crate::reporter::{RunRecord, RunResult};
use crate::rerun::Reuse;
use crate::services::Services;
use crate::settings::RunSettings;

/// A request to stop the run, usually from a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Sigint,
    Sigterm,
    /// A client cancelled the run (server mode); handled as SIGTERM.
    Request,
}

impl Interrupt {
    pub fn reason(self) -> CancelReason {
        match self {
            Interrupt::Sigint => CancelReason::Sigint,
            Interrupt::Sigterm => CancelReason::Sigterm,
            Interrupt::Request => CancelReason::Request,
        }
    }

    /// The conventional exit code: 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            Interrupt::Sigint => 130,
            Interrupt::Sigterm | Interrupt::Request => 143,
        }
    }
}

/// How to run a batch beyond the batch itself.
pub struct RunOptions {
    pub settings: RunSettings,
    /// Fixed run id (tests); a fresh one otherwise.
    pub run_id: Option<String>,
    /// Extra subscribers to the event stream.
    pub sinks: Vec<Box<dyn EventSink>>,
    /// Interrupt requests; the run stops starting tasks and cancels running ones on the first,
    /// and skips the kill grace period on the second.
    pub interrupts: Option<mpsc::Receiver<Interrupt>>,
    /// Shared state for agents.
    pub services: Arc<Services>,
    /// Outputs kept from a previous run (`--rerun-failed`).
    pub reuse: Option<Reuse>,
    /// Run attempts on the workers of this Redis pool instead of in this process.
    pub redis: Option<crate::remote::RedisOptions>,
    /// The journal's fsync, the result cache, the run history and trace retention.
    pub stores: StoreOptions,
}

/// What runs keep and reuse between runs, from the configuration file and flags: the journal's
/// fsync policy, the result cache, the run history and trace retention. `run`, `serve` and
/// `mcp-server` build it the same way ([`crate::config::Config::stores`]), so a batch behaves
/// the same whichever of them runs it.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// When the run's journal is forced to disk.
    pub journal_fsync: crate::journal::FsyncPolicy,
    /// The result cache's settings (`cache:` in the configuration file).
    pub cache: crate::cache::CacheConfig,
    /// Read and record `<trace_dir>/history.sqlite` (off by default for library callers; the
    /// command line turns it on unless `--no-history`).
    pub use_history: bool,
    /// How much history is kept and how `"auto"` timeouts are chosen (they take their fallback
    /// without history).
    pub history: crate::history::HistoryOptions,
    /// Old traces removed when the run ends (nothing when no limit is set).
    pub retention: crate::retention::Retention,
}

impl RunOptions {
    pub fn new(settings: RunSettings) -> Self {
        RunOptions {
            settings,
            run_id: None,
            sinks: Vec::new(),
            interrupts: None,
            services: Arc::new(Services::default()),
            reuse: None,
            redis: None,
            stores: StoreOptions::default(),
        }
    }
}

/// Everything a finished run produced.
pub struct RunReport {
    /// The result document; its `results` are read from the run's journal as it is written.
    pub result: RunResult,
    /// The record of the run, on disk (see [`RunReport::record`]).
    pub log: Arc<RunLog>,
    pub trace_file: PathBuf,
    pub interrupted: Option<Interrupt>,
    /// The extra sinks given in [`RunOptions::sinks`], handed back.
    pub sinks: Vec<Box<dyn EventSink>>,
}

/// The runner could not do its job (as opposed to tasks failing).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot use trace directory '{dir}': {source}")]
    TraceDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The executor could not start (Redis unreachable); nothing ran.
    #[error("{0}")]
    Executor(String),
    #[error("cannot write trace file '{path}': {source}")]
    TraceWrite {
        path: PathBuf,
        source: std::io::Error,
        /// The run happened; its result is still reported.
        report: Box<RunReport>,
    },
}

impl RunReport {
    /// The whole record of the run, read into memory (for tests and small runs: it holds every
    /// event).
    pub fn record(&self) -> Result<RunRecord, String> {
        self.log.record()
    }
}

impl std::fmt::Debug for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunReport")
            .field("result", &self.result)
            .field("trace_file", &self.trace_file)
            .field("interrupted", &self.interrupted)
            .finish()
    }
}

/// Runs a validated batch and writes its trace. Returns once every task has finished, been
/// skipped or been cancelled, and every process it started is gone.
pub async fn run(validated: ValidatedBatch, options: RunOptions) -> Result<RunReport, RunnerError> {
    let RunOptions {
        settings,
        run_id,
        sinks,
        interrupts,
        services,
        reuse,
        redis,
        stores:
            StoreOptions {
                journal_fsync,
                cache,
                use_history,
                history,
                retention,
            },
    } = options;
    let dir = settings.trace_dir.clone();
    trace::prepare_dir(&dir).map_err(|source| RunnerError::TraceDir {
        dir: dir.clone(),
        source,
    })?;
    let run_id = run_id.unwrap_or_else(new_run_id);
    // Connected before anything is written: an unreachable Redis leaves no journal behind.
    let remote = match redis {
        Some(options) => {
            let redeliveries = options.max_redeliveries;
            let executor = crate::remote::coordinator::RedisExecutor::connect(options, &run_id)
                .await
                .map_err(RunnerError::Executor)?;
            Some((executor, redeliveries))
        }
        None => None,
    };
    let trace_file = trace::trace_path(&dir, &run_id);
    let batch = &validated.batch;
    // Values under secret-looking keys (a command's `API_KEY` env) are scrubbed everywhere,
    // including from output that echoes them. One task at a time: a batch of a million tasks
    // is never one JSON tree.
    for task in &batch.tasks {
        crate::redact::register_secrets_in(&serde_json::to_value(task).unwrap_or_default());
    }
    crate::redact::register_secrets_in(&serde_json::to_value(&batch.config).unwrap_or_default());

    // Kept tasks of a rerun from the trace keep their digest entries in the new trace.
    let carried = reuse.as_ref().map(|r| crate::rerun::Reuse {
        seals: r.seals.clone(),
        seal_key_id: r.seal_key_id.clone(),
        ..Default::default()
    });
    let digests = crate::rerun::seal_batch(batch, &dir, carried.as_ref());
    drop(carried);
    // A resumed run appends to its journal after the last whole line.
    let resume_at = reuse
        .as_ref()
        .and_then(|r| r.resume.as_ref())
        .map(|r| (r.journal_len, r.events.len() as u64));
    let journal = open_journal(&dir, &run_id, batch, &digests, journal_fsync, resume_at)?;
    let config = batch.config.clone();
    // A new journal's header holds the digests: they are read back from there for the trace
    // rather than held through the run (about 200 bytes a task).
    let journal_file = crate::journal::journal_path(&dir, &run_id);
    let digests = resume_at.is_some().then_some(digests);

    // The history is read before the first task starts and written by a thread of its own.
    let loaded = if use_history {
        let ids = crate::history::identities(
            &validated.batch,
            crate::rerun::DigestKey::load_or_create(&dir).ok().as_ref(),
        );
        let (dir, keep) = (dir.clone(), history.keep);
        tokio::task::spawn_blocking(move || crate::history::load_for_run(&dir, ids, keep))
            .await
            .ok()
    } else {
        None
    };
    let mut sinks = sinks;
    sinks.insert(0, Box::new(crate::reporter::log::LogSink));
    let mut estimates = crate::history::Estimates::default();
    let mut writer = None;
    if let Some(loaded) = loaded {
        estimates = loaded.estimates;
        if let Some(w) = loaded.writer {
            let skip_below = resume_at.map_or(0, |(_, n)| n);
            sinks.insert(1, Box::new(w.sink(&loaded.ids, skip_below)));
            writer = Some(w);
        }
    }
    let own_sinks = 1 + usize::from(writer.is_some());
    // The result cache, when a task asks for it and the configuration does not turn it off.
    let cache = (cache.enabled() && batch.tasks.iter().any(|t| t.cache.is_some()))
        .then(|| Arc::new(crate::cache::Cache::new(&dir, &services.workspace, cache)));
    // The dispatcher's executor ends the run's MCP sessions before it returns.
    let done = match remote {
        Some((executor, redeliveries)) => {
            let dispatcher = dispatcher::Dispatcher::with_executor(
                validated,
                settings,
                services.clone(),
                sinks,
                executor,
            )
            .redelivering(redeliveries)
            .with_history(estimates, history);
            drive(
                dispatcher,
                journal,
                cache,
                reuse,
                run_id.clone(),
                interrupts,
            )
            .await
        }
        None => {
            let dispatcher =
                dispatcher::Dispatcher::new(validated, settings, services.clone(), sinks)
                    .with_history(estimates, history);
            drive(
                dispatcher,
                journal,
                cache,
                reuse,
                run_id.clone(),
                interrupts,
            )
            .await
        }
    };
    let mut sinks = done.sinks;
    // The log sink (and the history's) are ours, not the caller's.
    sinks.drain(..own_sinks);
    if let Some(w) = writer {
        let _ = tokio::task::spawn_blocking(move || w.finish()).await;
    }

    // The trace and the result are read back from the journal, one task at a time.
    let batch = crate::Batch {
        tasks: done.tasks,
        config,
    };
    let log = Arc::new(RunLog::new(done.ledger, batch));
    let result = RunResult::from_log(log.clone(), &trace_file);
    let digests = digests.unwrap_or_else(|| {
        crate::journal::read_digests(&journal_file).unwrap_or_else(|e| {
            tracing::warn!("cannot read the digests back from the journal: {e}");
            crate::rerun::seal_batch(log.batch(), &dir, None)
        })
    });
    let written = log.write_trace(&trace_file, Some(&digests));
    drop(digests);
    if written.is_ok() && retention.is_set() {
        let dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::retention::after_run(&dir, &retention, &run_id)
        })
        .await;
    }
    let report = RunReport {
        result,
        log,
        trace_file: trace_file.clone(),
        interrupted: done.interrupted,
        sinks,
    };
    match written {
        Ok(()) => Ok(report),
        Err(source) => Err(RunnerError::TraceWrite {
            path: trace_file,
            source,
            report: Box::new(report),
        }),
    }
}

async fn drive<E: executor::Executor>(
    dispatcher: dispatcher::Dispatcher<E>,
    journal: crate::journal::JournalSink,
    cache: Option<Arc<crate::cache::Cache>>,
    reuse: Option<Reuse>,
    run_id: String,
    interrupts: Option<mpsc::Receiver<Interrupt>>,
) -> dispatcher::Dispatched {
    let dispatcher = dispatcher.journaled(journal);
    let dispatcher = match cache {
        Some(cache) => dispatcher.caching(cache),
        None => dispatcher,
    };
    let dispatcher = match reuse {
        Some(reuse) => dispatcher.reusing(reuse),
        None => dispatcher,
    };
    dispatcher.run(run_id, interrupts).await
}

/// Creates the run's journal, or (resuming) reopens it after its last whole line.
fn open_journal(
    dir: &std::path::Path,
    run_id: &str,
    batch: &crate::Batch,
    digests: &trace::Digests,
    policy: crate::journal::FsyncPolicy,
    resume_at: Option<(u64, u64)>,
) -> Result<crate::journal::JournalSink, RunnerError> {
    let path = crate::journal::journal_path(dir, run_id);
    let opened = match resume_at {
        Some((keep, skip_below)) => {
            crate::journal::JournalSink::append(&path, keep, skip_below, policy)
        }
        None => crate::journal::JournalSink::create(&path, run_id, batch, digests, policy),
    };
    opened.map_err(|e| RunnerError::TraceDir {
        dir: dir.to_path_buf(),
        source: std::io::Error::new(
            e.kind(),
            format!("cannot write the journal '{}': {e}", path.display()),
        ),
    })
}

/// A sortable, readable run id: UTC time plus random hex, e.g. `20261122T101500Z-3fa2c1`.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "{}-{:06x}",
        now.format(&fmt).unwrap_or_default(),
        fastrand::u32(..0x100_0000)
    )
}
