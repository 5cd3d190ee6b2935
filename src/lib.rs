//! dispatch_runner: check a batch of tasks as a whole, then run it in parallel on typed agents
//! under a worker limit, with timeouts, retries and circuit breakers, and report one JSON result
//! plus a per-run trace.
//!
//! # Overview
//! - [`batch`]: the input model, its JSON Schema, `{{tasks...}}` output references, validation.
//! - [`graph`]: dependency checks, levels, critical path. [`scheduler`]: which task is ready next.
//! - [`runner`]: a task's lifecycle (`runner::task_state`), the dispatcher (run state, events)
//!   and the [`Executor`](runner::executor::Executor) seam (where attempts run).
//! - [`policy`]: timeout, retry with backoff, circuit breaker, worker limit.
//! - [`agents`]: one module per agent. [`process`]: process groups and their termination.
//! - [`llm`]: model backends (Anthropic, OpenAI-compatible, a CLI agent) for `coder`/`debug`.
//! - [`workspace`]: the root agents' file paths must stay in; atomic, no-clobber writes.
//! - [`frontend`]: the command line and the server's shared entry point: reading and checking a
//!   batch, settings layering, the status documents and exit codes.
//! - [`events`]: the public event stream. [`reporter`]: its consumers (result, trace, progress,
//!   NDJSON events, metrics, JUnit, HTML report, Chrome trace). [`redact`]: secrets out of all of it.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dispatch_runner::{RunOptions, RunSettings, validate_text};
//!
//! let batch = validate_text(r#"{"tasks": [
//!     {"task_id": "hello", "agent": "command", "input_data": {"argv": ["echo", "hi"]}}
//! ]}"#).map_err(|issues| format!("{issues:?}"))?;
//! let settings = RunSettings::resolve(&[&batch.batch.config]);
//! let report = dispatch_runner::run(batch, RunOptions::new(settings)).await?;
//! // Results are read back from the run's journal (a run of many tasks never holds them all).
//! let results = report.result.results.to_vec()?;
//! assert_eq!(results[0].output.as_ref().unwrap()["stdout"], "hi\n");
//! # Ok(()) }
//! ```

pub mod agents;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod events;
pub mod files;
pub mod frontend;
pub mod graph;
pub mod history;
pub mod http;
pub mod issue;
pub mod journal;
pub mod limits;
pub mod llm;
pub mod mcp;
pub mod passed;
pub mod policy;
pub mod process;
pub mod redact;
pub mod remote;
pub mod reporter;
pub mod rerun;
pub mod retention;
pub mod runner;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod settings;
pub mod signal;
pub mod syntax;
pub mod task_error;
pub mod validation;
pub mod workspace;

pub use batch::{Batch, Issue, ValidatedBatch, validate_text, validate_value};
pub use runner::{Interrupt, RunOptions, RunReport, RunnerError, run};
pub use services::Services;
pub use settings::RunSettings;
