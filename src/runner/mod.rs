//! Running a validated batch: the dispatcher (run state, scheduling decisions, events), the
//! lifecycle of one task (`task_state`), and the executor (where attempts run: the `Executor`
//! trait and the in-process `LocalExecutor`), plus the entry point that ties them to the trace
//! file.

pub mod dispatcher;
pub mod executor;
pub mod task_state;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::batch::ValidatedBatch;
use crate::events::{CancelReason, EventSink};
use crate::reporter::trace::{self, TRACE_FORMAT, Trace};
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
        }
    }
}

/// Everything a finished run produced.
pub struct RunReport {
    pub result: RunResult,
    pub record: RunRecord,
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
    #[error("cannot write trace file '{path}': {source}")]
    TraceWrite {
        path: PathBuf,
        source: std::io::Error,
        /// The run happened; its result is still reported.
        report: Box<RunReport>,
    },
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
    } = options;
    let dir = settings.trace_dir.clone();
    trace::prepare_dir(&dir).map_err(|source| RunnerError::TraceDir {
        dir: dir.clone(),
        source,
    })?;
    let run_id = run_id.unwrap_or_else(new_run_id);
    let trace_file = trace::trace_path(&dir, &run_id);
    let batch = validated.batch.clone();
    // Values under secret-looking keys (a command's `API_KEY` env) are scrubbed everywhere,
    // including from output that echoes them.
    crate::redact::register_secrets_in(&serde_json::to_value(&batch).unwrap_or_default());

    let mut sinks = sinks;
    sinks.insert(0, Box::new(crate::reporter::log::LogSink));
    let dispatcher = dispatcher::Dispatcher::new(validated, settings, services.clone(), sinks);
    // Kept tasks of a rerun from the trace keep their digest entries in the new trace.
    let carried = reuse.as_ref().map(|r| crate::rerun::Reuse {
        seals: r.seals.clone(),
        seal_key_id: r.seal_key_id.clone(),
        ..Default::default()
    });
    let dispatcher = match reuse {
        Some(reuse) => dispatcher.reusing(reuse),
        None => dispatcher,
    };
    // The dispatcher's executor ends the run's MCP sessions before it returns.
    let (record, mut sinks, interrupted) = dispatcher.run(run_id, interrupts).await;
    sinks.remove(0);

    let result = RunResult::from_record(&record, &trace_file);
    let trace = Trace {
        format: TRACE_FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        digests: Some(crate::rerun::seal_batch(&batch, &dir, carried.as_ref())),
        batch,
        run: record,
    };
    let written = trace::write_json_atomic(&trace_file, &crate::redact::redacted(&trace));
    let report = RunReport {
        result,
        record: trace.run,
        trace_file: trace_file.clone(),
        interrupted,
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
