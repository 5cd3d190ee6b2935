//! Command-line arguments (raw, as clap parses them) and their conversion to run settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};

use crate::batch::BatchConfig;
use crate::batch::limits::{self, Limits};
use crate::reporter::junit::JunitFormat;
use crate::reporter::outputs::OutputPlan;

macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0    every task succeeded (validate: the batch is valid)
  1    the batch ran and at least one task did not succeed (doctor: a server is unhealthy)
  2    the input was invalid; nothing ran
  3    the runner itself could not work (e.g. the trace directory cannot be created)
  130  interrupted by SIGINT (results and trace are still written)
  143  terminated by SIGTERM (results and trace are still written)"
    };
}

pub const EXIT_CODES: &str = exit_codes!();

/// `run --help`: how breakers and signals behave, then the exit codes.
pub const RUN_HELP: &str = concat!(
    "\
Circuit breakers:
  A breaker protects a remote dependency: one per MCP server, one per model endpoint. Commands
  and the offline coder/debug backends have none, so a failing command never stops another.
  It opens after circuit_breaker.failure_threshold (default 5) consecutive infrastructure
  failures: connection refused or reset, HTTP 5xx or 429, timeouts of calls to it. A tool's
  error result, a model refusing a request, or a non-zero exit never count. While open, tasks
  behind it end `circuit_open` without running; after recovery_timeout_seconds (default 60)
  one probe decides. Opt in for commands with a task's \"breaker\": \"<name>\" (or
  agents.command.breaker in the config file): those tasks share it and their failures count.
  Turn breakers off with \"config\": {\"circuit_breaker\": {\"enabled\": false}}.

Signals:
  The first SIGINT/SIGTERM stops starting tasks and sends TERM to running process groups (KILL
  after 2 s); a second one KILLs them at once.

",
    exit_codes!()
);

#[derive(Debug, Parser)]
#[command(
    name = "dispatch_runner",
    version,
    about = "Check a batch of tasks (JSON on stdin), run it in parallel on typed agents, print one JSON result.",
    long_about = "Check a batch of tasks (JSON on stdin), run it in parallel on typed agents, print one JSON result.\n\n\
        Without a subcommand, `dispatch_runner` is `dispatch_runner run`. stdout carries only the JSON \
        document; logs and messages go to stderr (RUST_LOG sets the log level).",
    after_help = EXIT_CODES,
    after_long_help = RUN_HELP
)]
pub struct Cli {
    /// Configuration file (YAML). Default: $PARALLEL_DISPATCH_CONFIG, else ./dispatch.yaml, else
    /// /etc/parallel-dispatch/config.yaml, else none.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and run a batch, print the result document (the default command).
    #[command(after_help = EXIT_CODES, after_long_help = RUN_HELP)]
    Run(RunArgs),
    /// Check a batch without running it and print the plan: task count, dependency levels and the
    /// longest dependency chain.
    #[command(after_help = EXIT_CODES)]
    Validate(InputArgs),
    /// Print the JSON Schema of the batch format.
    Schema,
    /// Turn a trace file into a self-contained HTML report, a Chrome trace or JUnit XML.
    #[command(after_help = REPORT_EXIT_CODES)]
    Report(ReportArgs),
    /// Print the effective configuration as JSON, with where each value came from.
    #[command(after_help = EXIT_CODES)]
    Config(RunArgs),
    /// Connect to every configured MCP server (and `archon` when ARCHON_MCP_URL is set) and print
    /// a JSON health report per server. Exit 0 when all are healthy, 1 otherwise.
    Doctor(DoctorArgs),
    /// Continue a run that did not finish (the runner was killed) from its journal: finished tasks
    /// keep their results, attempts that were running are recorded as `interrupted` and run
    /// again, the rest run as planned; one result and one trace cover the whole run.
    #[command(after_help = EXIT_CODES, after_long_help = RESUME_HELP)]
    Resume(ResumeArgs),
    /// Serve the runner over HTTP: POST /v1/dispatch, GET and DELETE /v1/runs/{run_id}, GET /health,
    /// GET /metrics.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, powershell, elvish).
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout; read it with `dispatch_runner man | man -l -`.
    Man,
}

pub const COMPLETIONS_HELP: &str = "\
Enable them:
  bash  dispatch_runner completions bash > ~/.local/share/bash-completion/completions/dispatch_runner
  zsh   dispatch_runner completions zsh > \"${fpath[1]}/_dispatch_runner\"
  fish  dispatch_runner completions fish > ~/.config/fish/completions/dispatch_runner.fish";

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub const SERVE_HELP: &str = "\
Endpoints (every error answer is a JSON document):
  POST /v1/dispatch       a batch in (Content-Type: application/json); 200 with the result
                          document, 400 with the invalid document (the same checks as `run`),
                          413 body too large, 415 not JSON, 429 too many runs (Retry-After)
  POST /v1/dispatch?wait=false
                          202 at once with the run id and Location: /v1/runs/{run_id}
  GET  /v1/runs/{run_id}  a running run's live status, or a finished run's trace and result
  DELETE /v1/runs/{run_id}
                          cancel a running run (its processes are killed, its trace is written)
  GET  /v1/runs           the runs served, newest first: state, status, counts, duration
  GET  /v1/runs/{run_id}/events
                          the run's events as Server-Sent Events (id = seq; resumes after
                          Last-Event-ID); `curl -N` follows a run live
  GET  /                  the live dashboard (open it in a browser)
  GET  /health            {\"status\": \"healthy\", \"version\", \"agents_available\", \"mcp\"}
  GET  /metrics           Prometheus text format, cumulative across the runs served

A run belongs to the server: a client that disconnects does not cancel it. With
DISPATCH_API_TOKEN set (not blank), every endpoint but /health and the dashboard page / needs
`Authorization: Bearer <token>`; without it the server only listens on loopback addresses.
Requests whose Host or Origin names another site are refused (403; see --allow-host). SIGTERM or SIGINT: stop accepting, let
in-flight runs finish for the grace period, then cancel them (their traces are written).

Exit codes: 0 clean shutdown; 3 cannot start (address in use, unprotected non-loopback address,
bad configuration).";

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Folder for every run's trace (overrides configuration; batches cannot change it here).
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Largest accepted request body.
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most runs in progress at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_concurrent_runs: u64,
    /// Seconds in-flight runs may continue after SIGTERM before they are cancelled.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds_or_zero)]
    pub shutdown_grace_seconds: f64,
    /// Seconds a client may take to send a request's headers; slower connections are closed.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    pub header_read_timeout_seconds: f64,
    /// Seconds a client may take to send a request's body; slower requests get 408.
    #[arg(long, value_name = "S", default_value = "60", value_parser = parse_seconds)]
    pub body_read_timeout_seconds: f64,
    /// Another host name (or `*` for any) accepted in `Host` and `Origin` headers, besides the
    /// listen address and loopback names (localhost, 127.0.0.1, [::1]). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
    #[command(flatten)]
    pub shape: ShapeLimitArgs,
    /// Most bytes kept of each captured output stream. A batch's `config.max_output_bytes` may
    /// ask for less, never more (400); the configuration file cannot raise it either.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_SERVER_MAX_OUTPUT_BYTES,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::MAX_OUTPUT_BYTES as u64))]
    pub max_output_bytes: usize,
}

impl ServeArgs {
    /// The input limits of batches sent to the server (the body limit is the size limit).
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.max_body_bytes,
            max_depth: self.shape.max_depth,
            max_tasks: self.shape.max_tasks,
            max_string_bytes: self.shape.max_string_bytes,
            max_output_bytes: self.max_output_bytes,
        }
    }
}

fn parse_seconds_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' must be a number of seconds, 0 or more")),
    }
}

pub const REPORT_EXIT_CODES: &str = "\
Exit codes:
  0    every output was written
  2    the trace file cannot be read, or no output was asked for
  3    an output could not be written";

pub const RESUME_HELP: &str = "\
JOURNAL_OR_RUN_ID is a journal file (`<trace_dir>/dispatch-<run_id>.journal`) or a run id, looked
up in the trace folder (--trace-dir, else the configured one). The resumed run keeps the run id
and appends to the same journal. The journal holds the batch redacted: when a task that still has
to run had secret values, pass the batch again with -f (it must be the journal's batch).

A torn last line (the runner died mid-write) is dropped; a journal damaged earlier, of another
batch, or of a run that finished is refused (exit 2, naming the line).";

#[derive(Debug, Args, Clone)]
pub struct ResumeArgs {
    /// The journal of the run to continue, or its run id.
    #[arg(value_name = "JOURNAL_OR_RUN_ID")]
    pub target: String,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// A trace file written by `dispatch_runner run` (`<trace_dir>/dispatch-<run_id>.json`).
    #[arg(value_name = "TRACE_FILE")]
    pub trace_file: PathBuf,
    /// Write the HTML report (one self-contained file) here.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Write the run in Trace Event Format (Perfetto, chrome://tracing) here.
    #[arg(long, value_name = "PATH")]
    pub chrome_trace: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// The dialect of the --junit file: `jenkins` (valid against the Jenkins xunit plugin's
    /// junit-10.xsd) or `surefire` (nextest / Maven Surefire: timestamps and times on test cases
    /// and on flakyFailure / rerunFailure).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "jenkins")]
    pub junit_format: JunitFormat,
}

impl ReportArgs {
    pub fn plan(&self) -> OutputPlan {
        OutputPlan {
            html: self.html.clone(),
            chrome_trace: self.chrome_trace.clone(),
            junit: self.junit.clone(),
            junit_format: self.junit_format,
            ..OutputPlan::default()
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// Seconds each server may take to connect and list its tools.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    pub timeout_seconds: f64,
}

#[derive(Debug, Args, Clone, Default)]
pub struct InputArgs {
    /// Read the batch from this file instead of stdin.
    #[arg(short = 'f', long = "input-file", value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// Before running, connect to the MCP servers the batch uses and reject (exit 2) tasks whose
    /// tool does not exist or whose arguments do not match the tool's input schema.
    #[arg(long)]
    pub check_tools: bool,
    /// Largest input accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: usize,
    #[command(flatten)]
    pub shape: ShapeLimitArgs,
}

/// Limits on a batch's shape, the same for `run`, `validate` and `serve`.
#[derive(Debug, Args, Clone, Default)]
pub struct ShapeLimitArgs {
    /// Deepest nesting of arrays and objects accepted (the JSON parser stops at 127 regardless).
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_DEPTH,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::PARSER_MAX_DEPTH as u64))]
    pub max_depth: usize,
    /// Most tasks accepted in one batch.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_TASKS)]
    pub max_tasks: usize,
    /// Longest string accepted anywhere in the batch (object keys included), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_STRING_BYTES)]
    pub max_string_bytes: usize,
}

impl InputArgs {
    /// The input limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.max_input_bytes,
            max_depth: self.shape.max_depth,
            max_tasks: self.shape.max_tasks,
            max_string_bytes: self.shape.max_string_bytes,
            ..Limits::default()
        }
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Also write the result document to this file (always the full one).
    #[arg(short = 'o', long = "output-file", value_name = "PATH")]
    pub output_file: Option<PathBuf>,
    /// The result document on stdout: `full` (every task with its whole output) or `compact`
    /// (status, summary, trace path, and for each task that did not succeed its error and the
    /// last lines of its stdout and stderr; for AI agents: pair it with -o for the full one).
    #[arg(
        long = "result",
        value_enum,
        value_name = "FORM",
        default_value = "full"
    )]
    pub result_form: crate::reporter::compact::ResultForm,
    /// With --result compact: lines kept of the end of each output stream of a failed task.
    #[arg(long, value_name = "N", default_value_t = crate::reporter::compact::DEFAULT_TAIL_LINES,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub tail_lines: usize,
    /// With --result compact: most bytes kept of each of those tails.
    #[arg(long, value_name = "BYTES", default_value_t = crate::reporter::compact::DEFAULT_TAIL_BYTES,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=1_048_576))]
    pub tail_bytes: usize,
    /// Most tasks running at once (overrides config.max_workers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_workers: Option<u64>,
    /// Per-attempt timeout in seconds (overrides config.timeout_seconds).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub timeout_seconds: Option<f64>,
    /// Folder for the trace file (overrides config.trace_dir).
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Extra attempts after a transient failure (overrides config.retries).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: Option<u32>,
    /// Bytes kept of each captured output stream (overrides config.max_output_bytes).
    #[arg(long, value_name = "BYTES",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::MAX_OUTPUT_BYTES as u64))]
    pub max_output_bytes: Option<usize>,
    /// Most bytes of a task's input after `{{tasks...}}` references are replaced; over it the
    /// task fails with `input_too_large` (overrides config.max_expanded_input_bytes; default
    /// 4 × max_output_bytes, at least 4 MiB).
    #[arg(long, value_name = "BYTES", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_expanded_input_bytes: Option<usize>,
    /// Stop starting tasks after the first failure (overrides config.fail_fast).
    #[arg(long)]
    pub fail_fast: bool,
    /// Root folder that agents' file paths (coder, debug) must stay inside (default: the current
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Run again only the tasks of a previous run (given by its trace file) that did not succeed,
    /// and their dependents, reusing the outputs of the tasks that succeeded. The batch is the
    /// one recorded in the trace; with -f, that batch is used instead after checking that the
    /// tasks being reused have not changed.
    #[arg(long, value_name = "TRACE_FILE")]
    pub rerun_failed: Option<PathBuf>,
    /// When the run's journal (`<trace_dir>/dispatch-<run_id>.journal`, what `resume` continues
    /// from) is forced to disk: `always` after every line, `interval` every 200 ms while it
    /// grows and at the end, `never`. Every line reaches the operating system at once (a killed
    /// runner loses nothing) whatever this says; this is about power loss. Default:
    /// $PARALLEL_DISPATCH_JOURNAL_FSYNC, else `dispatcher.journal_fsync` in the configuration
    /// file, else `interval`.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub journal_fsync: Option<crate::journal::FsyncPolicy>,
    /// No progress and no summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Seconds between plain status lines when stderr is not a terminal.
    #[arg(long, value_name = "S", value_parser = parse_seconds, default_value = "5")]
    pub status_interval: f64,
    /// Write every event as it happens to this file, one JSON object per line (NDJSON).
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Write JUnit XML (one test case per task) here when the run ends.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// The dialect of the --junit file: `jenkins` (valid against the Jenkins xunit plugin's
    /// junit-10.xsd) or `surefire` (nextest / Maven Surefire: timestamps and times on test cases
    /// and on flakyFailure / rerunFailure).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "jenkins")]
    pub junit_format: JunitFormat,
    /// Write the self-contained HTML report here when the run ends.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Write the run in Trace Event Format (Perfetto, chrome://tracing) here when it ends.
    #[arg(long, value_name = "PATH")]
    pub chrome_trace: Option<PathBuf>,
    /// Write Prometheus metrics (text format, atomically) here when the run ends.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Push Prometheus metrics to this Pushgateway (job `dispatch_runner`) when the run ends; a
    /// failed push is a warning, not a failed run.
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    pub pushgateway: Option<String>,
}

impl RunArgs {
    /// The outputs these flags ask for.
    pub fn plan(&self) -> OutputPlan {
        OutputPlan {
            events: self.events.clone(),
            junit: self.junit.clone(),
            junit_format: self.junit_format,
            html: self.html.clone(),
            chrome_trace: self.chrome_trace.clone(),
            metrics_file: self.metrics_file.clone(),
            pushgateway: self.pushgateway.clone(),
            progress: (!self.quiet).then(|| Duration::from_secs_f64(self.status_interval)),
        }
    }

    /// The overrides these flags make, as a configuration layer above the batch's own.
    pub fn overrides(&self) -> BatchConfig {
        BatchConfig {
            max_workers: self.max_workers.map(|n| n as usize),
            timeout_seconds: self.timeout_seconds,
            trace_dir: self
                .trace_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            retries: self.retries,
            fail_fast: self.fail_fast.then_some(true),
            max_output_bytes: self.max_output_bytes,
            max_expanded_input_bytes: self.max_expanded_input_bytes,
            ..BatchConfig::default()
        }
    }
}

fn parse_http_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_string()),
        Ok(_) => Err(format!("'{s}' is not an http:// or https:// URL")),
        Err(e) => Err(format!("'{s}' is not a URL: {e}")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("'{s}' must be a positive number of seconds"))
    }
}
