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

/// `run --help`: the agents (from the registry, with their descriptions from the schema), then
/// [`RUN_HELP`].
pub fn run_help() -> String {
    let mut text = String::from(
        "Agents (a task's \"agent\"; `dispatch_runner schema` has each one's input):\n",
    );
    for agent in crate::agents::ALL_AGENTS {
        let about = crate::batch::schema::agent_input_schema(agent)
            .and_then(|s| s.get("description"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let first = about.lines().next().unwrap_or("");
        text.push_str(&format!("  {agent:<14}{first}\n"));
    }
    text.push('\n');
    text.push_str(RUN_HELP);
    text
}

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
    after_long_help = run_help()
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
    #[command(after_help = EXIT_CODES, after_long_help = run_help())]
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
    /// Serve the runner as an MCP server (stdio, or Streamable HTTP with --listen): tools
    /// `dispatch`, `validate`, `schema`, `rerun_failed`, `get_run`.
    #[command(after_help = MCP_SERVER_HELP)]
    McpServer(McpServerArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, powershell, elvish).
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout; read it with `dispatch_runner man | man -l -`.
    Man,
    /// The result cache of tasks with a `cache` object: `stats` and `prune`, as JSON.
    #[command(after_help = crate::cache::cli::CACHE_HELP)]
    Cache(crate::cache::cli::CacheArgs),
    /// Run attempts for coordinators (`run --redis`) from a Redis pool, until SIGTERM.
    #[command(after_help = WORKER_HELP)]
    Worker(WorkerArgs),
    /// Print the live workers of a Redis pool as JSON.
    Workers(WorkersArgs),
    /// Remove the traces and journals of old finished runs from the trace directory, by age,
    /// count and total size (`trace_retention` in the configuration file, or the flags). Prints
    /// what was removed as JSON.
    #[command(after_help = PRUNE_HELP)]
    Prune(PruneArgs),
}

pub const WORKER_HELP: &str = "\
A worker takes attempts from the Redis streams of the agents it serves, runs each like a local
run does (timeouts, process groups, output caps) with this machine's configuration file (MCP
servers, model keys, workspace), and sends back each outcome. Anyone who can write to the
streams can run commands here: protect Redis (ACL users, rediss://, a private network) and
restrict the agents (--agents) and the workspace. See docs/scale-out.md.

SIGTERM/SIGINT: stop taking attempts, let running ones finish for --drain-seconds, then kill them
(their coordinators run them again elsewhere) and exit 0. A second signal ends the wait.

Exit codes: 0 stopped on a signal; 3 Redis unreachable (at start, or past the reconnect bound)
or bad configuration.";

#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// The Redis pool: redis://[user:password@]host:port/db, or rediss:// for TLS.
    #[arg(
        long,
        value_name = "URL",
        env = "DISPATCH_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: String,
    /// Most attempts running at once on this worker (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_workers: Option<u64>,
    /// The worker's name in the pool (default: host name and process id). Unique per pool.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The agents this worker serves, comma-separated (default: command,coder,debug,mcp).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Root that agents' file paths must stay inside (default: dispatcher.workspace, else the
    /// current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Seconds running attempts may go on after SIGTERM before they are killed.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_seconds_or_zero)]
    pub drain_seconds: f64,
    /// Seconds to keep reconnecting when Redis goes away before stopping (exit 3).
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_seconds)]
    pub reconnect_seconds: f64,
}

#[derive(Debug, Args, Clone)]
pub struct WorkersArgs {
    /// The Redis pool: redis://[user:password@]host:port/db, or rediss:// for TLS.
    #[arg(
        long,
        value_name = "URL",
        env = "DISPATCH_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: String,
}

pub const PRUNE_HELP: &str = "\
Only dispatch-<run_id>.json (traces) and dispatch-<run_id>.journal files directly in the trace
directory are removed, a run's trace and journal together. A journal without a trace belongs to a
run that has not finished (still going, or waiting for `resume`): it is always kept. The run
history (history.sqlite), the digest key and every other file are never touched. Flags override
the configuration file's trace_retention limit by limit.

Exit codes:
  0    done (or, with --dry-run, shown)
  2    no limit given: neither flags nor trace_retention in the configuration file
  3    the trace directory cannot be read";

#[derive(Debug, Args, Clone, Default)]
pub struct PruneArgs {
    /// The trace directory (default: the configured one, else ./traces).
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Remove runs whose trace is older than this many days.
    #[arg(long, value_name = "DAYS", value_parser = parse_seconds)]
    pub max_age_days: Option<f64>,
    /// Keep only the newest N finished runs.
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_count: Option<usize>,
    /// Remove the oldest finished runs until traces and journals take at most this many bytes.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bytes: Option<u64>,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
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
    /// Run every batch's attempts on the workers of this Redis pool (see `run --redis`;
    /// default: $DISPATCH_REDIS_URL, else executor.redis.url in the configuration file).
    #[arg(
        long,
        value_name = "URL",
        env = "DISPATCH_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
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

pub const MCP_SERVER_HELP: &str = "\
Register it with Claude Code:
  claude mcp add dispatch -- dispatch_runner mcp-server

Over stdio (the default) stdout carries only the protocol. With --listen ADDR the endpoint is
http://ADDR/mcp, with `serve`'s rules: DISPATCH_API_TOKEN (when set) is required as `Authorization:
Bearer <token>`, without it only loopback addresses are allowed, and requests whose Host or Origin
names another site are refused (403; see --allow-host).

Every run's trace goes to the trace folder (--trace-dir, else the configured one), whatever the
batch says. A batch may ask for less than the server's limits (output bytes, workers), never more.
A client that cancels a `dispatch` call cancels its run (processes killed, trace written); so do
the end of a stdio session and SIGTERM/SIGINT.

Exit codes: 0 the client went away or a signal stopped the server; 3 cannot start (address in
use, unprotected non-loopback address, bad configuration).";

#[derive(Debug, Args, Clone)]
pub struct McpServerArgs {
    /// Serve Streamable HTTP on this address (endpoint /mcp; port 0 picks a free port, printed on
    /// stderr) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Another host name (or `*` for any) accepted in `Host` and `Origin` headers with --listen,
    /// besides the listen address and loopback names. Repeatable.
    #[arg(long, value_name = "NAME", requires = "listen")]
    pub allow_host: Vec<String>,
    /// Folder for every run's trace (overrides configuration; batches cannot change it here).
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Root folder that agents' file paths (coder, debug) must stay inside (default: the
    /// configured one, else the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Largest batch accepted, in bytes (and, with --listen, request body).
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: usize,
    /// Most runs in progress at once; a `dispatch` beyond it is refused.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_concurrent_runs: u64,
    /// Most tasks running at once in one run: a batch's `config.max_workers` may ask for fewer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_workers: Option<u64>,
    #[command(flatten)]
    pub shape: ShapeLimitArgs,
    /// Most bytes kept of each captured output stream. A batch's `config.max_output_bytes` may
    /// ask for less, never more; the configuration file cannot raise it either.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_SERVER_MAX_OUTPUT_BYTES,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::MAX_OUTPUT_BYTES as u64))]
    pub max_output_bytes: usize,
}

impl McpServerArgs {
    /// The input limits of batches given to the tools.
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.max_input_bytes,
            max_depth: self.shape.max_depth,
            max_tasks: self.shape.max_tasks,
            max_string_bytes: self.shape.max_string_bytes,
            max_output_bytes: self.max_output_bytes,
        }
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
    /// Run attempts on the workers of this Redis pool (`dispatch_runner worker`) instead of
    /// here: redis://[user:password@]host:port/db or rediss:// (TLS). Default:
    /// $DISPATCH_REDIS_URL, else executor.redis.url in the configuration file.
    #[arg(
        long,
        value_name = "URL",
        env = "DISPATCH_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// With --redis: seconds an attempt may wait for a worker before it fails `queue_timeout`
    /// (default: no limit).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub queue_timeout: Option<f64>,
    /// With --redis: seconds after which an attempt whose worker stopped renewing it is lost
    /// and started again (default 30).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub lease_seconds: Option<f64>,
    /// With --redis: most times a task's attempt is lost with its worker and started again,
    /// apart from its retries (default 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_redeliveries: Option<u32>,
    /// With --redis: seconds to keep reconnecting when Redis goes away; past it unfinished
    /// tasks are cancelled (default 30).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub redis_reconnect_seconds: Option<f64>,
    /// Neither read nor record the run history (`<trace_dir>/history.sqlite`): every task counts
    /// as one unit on the critical path and `"auto"` timeouts take their fallback.
    #[arg(long)]
    pub no_history: bool,
    /// Neither use nor store results in the result cache (`<trace_dir>/cache`): tasks with a
    /// `cache` object run as if they had none.
    #[arg(long)]
    pub no_cache: bool,
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
