//! Command-line arguments (raw, as clap parses them) and their conversion to run settings.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};

use crate::batch::BatchConfig;
use crate::batch::limits::{self, Limits};

pub const EXIT_CODES: &str = "\
Exit codes:
  0    every task succeeded (validate: the batch is valid)
  1    the batch ran and at least one task did not succeed
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
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
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
}

#[derive(Debug, Args, Clone, Default)]
pub struct InputArgs {
    /// Read the batch from this file instead of stdin.
    #[arg(short = 'f', long = "input-file", value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// Largest input accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: usize,
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
            max_depth: self.max_depth,
            max_tasks: self.max_tasks,
            max_string_bytes: self.max_string_bytes,
        }
    }
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
    /// Bytes kept of each captured output stream (overrides config.max_output_bytes).
    #[arg(long, value_name = "BYTES", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_output_bytes: Option<usize>,
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
            max_output_bytes: self.max_output_bytes,
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
