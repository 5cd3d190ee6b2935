//! Command-line arguments (raw, as clap parses them) and their conversion to run settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::batch::BatchConfig;

pub const EXIT_CODES: &str = "\
Exit codes:
  0    every task succeeded (validate: the batch is valid)
  1    the batch ran and at least one task did not succeed (doctor: a server is unhealthy)
  2    the input was invalid; nothing ran
  3    the runner itself could not work (e.g. the trace directory cannot be created)
  130  interrupted by SIGINT (results and trace are still written)
  143  terminated by SIGTERM (results and trace are still written)";

#[derive(Debug, Parser)]
#[command(
    name = "dispatch_runner",
    version,
    about = "Check a batch of tasks (JSON on stdin), run it in parallel on typed agents, print one JSON result.",
    long_about = "Check a batch of tasks (JSON on stdin), run it in parallel on typed agents, print one JSON result.\n\n\
        Without a subcommand, `dispatch_runner` is `dispatch_runner run`. stdout carries only the JSON \
        document; logs and messages go to stderr (RUST_LOG sets the log level).",
    after_help = EXIT_CODES
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
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Check a batch without running it and print the plan: task count, dependency levels and the
    /// longest dependency chain.
    #[command(after_help = EXIT_CODES)]
    Validate(InputArgs),
    /// Print the JSON Schema of the batch format.
    Schema,
    /// Print the effective configuration as JSON, with where each value came from.
    #[command(after_help = EXIT_CODES)]
    Config(RunArgs),
    /// Connect to every configured MCP server (the built-in `archon` included) and print a JSON
    /// health report per server. Exit 0 when all are healthy, 1 otherwise.
    Doctor(DoctorArgs),
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
}

#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Also write the result document to this file.
    #[arg(short = 'o', long = "output-file", value_name = "PATH")]
    pub output_file: Option<PathBuf>,
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
    /// Stop starting tasks after the first failure (overrides config.fail_fast).
    #[arg(long)]
    pub fail_fast: bool,
    /// No summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl RunArgs {
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
            ..BatchConfig::default()
        }
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
