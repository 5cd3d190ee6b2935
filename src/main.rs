//! The `dispatch_runner` binary: parse flags, read the batch, make one library call, print the
//! JSON document, and map the outcome to an exit code.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;

use dispatch_runner::batch::Limits;
use dispatch_runner::batch::schema::batch_schema;
use dispatch_runner::cli::{Cli, Command, InputArgs, RunArgs};
use dispatch_runner::events::RunStatus;
use dispatch_runner::reporter::trace::write_json_atomic;
use dispatch_runner::{Interrupt, Issue, RunOptions, RunSettings, RunnerError, ValidatedBatch};

const EXIT_OK: u8 = 0;
const EXIT_TASKS_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_RUNNER: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Some(Command::Schema) => {
            print_json(batch_schema());
            ExitCode::from(EXIT_OK)
        }
        Some(Command::Validate(input)) => validate(&input),
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Prints the one JSON document of this invocation, with secrets redacted.
fn print_json(value: &impl serde::Serialize) {
    let value = dispatch_runner::redact::redacted(value);
    let text = serde_json::to_string_pretty(&value).expect("serializable");
    // A reader that went away (`| head`) is not worth a panic; the exit code still tells.
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("dispatch_runner: cannot write to stdout: {e}");
    }
}

/// Reads and checks the batch; on failure prints the `invalid` document and returns exit 2.
fn load(input: &InputArgs) -> Result<ValidatedBatch, ExitCode> {
    let limits = input.limits();
    let text = read_input(input, &limits).map_err(|issue| invalid(vec![issue]))?;
    dispatch_runner::batch::validate_text_with(&text, &limits).map_err(invalid)
}

fn read_input(input: &InputArgs, limits: &Limits) -> Result<String, Issue> {
    // Read at most one byte past the limit: enough to know it was exceeded, never the whole of
    // an endless stream.
    let cap = limits.max_input_bytes as u64 + 1;
    match &input.input_file {
        Some(path) => {
            let what = format!("input file '{}'", path.display());
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(cap).read_to_end(&mut bytes))
                .map_err(|e| Issue::new("", format!("cannot read {what}: {e}")))?;
            if bytes.len() > limits.max_input_bytes {
                return Err(limits.input_too_large(&what));
            }
            utf8(bytes, &path.display().to_string())
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(Issue::new(
                    "",
                    "no batch given: pipe a batch into stdin or pass -f FILE (see --help)",
                ));
            }
            let mut bytes = Vec::new();
            stdin
                .take(cap)
                .read_to_end(&mut bytes)
                .map_err(|e| Issue::new("", format!("cannot read stdin: {e}")))?;
            if bytes.len() > limits.max_input_bytes {
                return Err(limits.input_too_large("stdin"));
            }
            utf8(bytes, "stdin")
        }
    }
}

fn utf8(mut bytes: Vec<u8>, what: &str) -> Result<String, Issue> {
    // Some editors start UTF-8 files with a byte-order mark; it is not part of the JSON.
    if bytes.starts_with(b"\xef\xbb\xbf") {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        Issue::new(
            "",
            format!(
                "{what} is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn invalid(errors: Vec<Issue>) -> ExitCode {
    eprintln!("dispatch_runner: the batch is invalid; nothing ran:");
    for e in &errors {
        eprintln!("  {e}");
    }
    print_json(&json!({"status": "invalid", "errors": errors}));
    ExitCode::from(EXIT_INVALID)
}

fn validate(input: &InputArgs) -> ExitCode {
    match load(input) {
        Ok(v) => {
            let summary = v.plan.summary();
            // The batch is not needed for the plan document; freeing it first lowers the peak
            // memory of checking large batches.
            drop(v);
            let mut doc = serde_json::to_value(summary).expect("serializable");
            doc.as_object_mut()
                .expect("object")
                .insert("status".into(), json!("valid"));
            print_json(&doc);
            ExitCode::from(EXIT_OK)
        }
        Err(code) => code,
    }
}

fn run(args: RunArgs) -> ExitCode {
    let validated = match load(&args.input) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let settings = RunSettings::resolve(&[&validated.batch.config, &args.overrides()]);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(4);
        if let Err(e) = forward_signals(tx) {
            return runner_error(&format!("cannot install signal handlers: {e}"), None);
        }
        let mut options = RunOptions::new(settings);
        options.interrupts = Some(rx);
        match dispatch_runner::run(validated, options).await {
            Ok(report) => finish(&args, &report),
            Err(e @ RunnerError::TraceDir { .. }) => runner_error(&e.to_string(), None),
            Err(RunnerError::TraceWrite {
                path,
                source,
                report,
            }) => {
                let message = format!("cannot write trace file '{}': {source}", path.display());
                runner_error(&message, Some(&report.result))
            }
        }
    })
}

fn finish(args: &RunArgs, report: &dispatch_runner::RunReport) -> ExitCode {
    let result = &report.result;
    if let Some(path) = &args.output_file
        && let Err(e) = write_json_atomic(path, &dispatch_runner::redact::redacted(result))
    {
        print_json(result);
        eprintln!(
            "dispatch_runner: cannot write output file '{}': {e}",
            path.display()
        );
        return ExitCode::from(EXIT_RUNNER);
    }
    print_json(result);
    if !args.quiet {
        let s = &result.summary;
        eprintln!(
            "dispatch_runner: {} tasks: {} succeeded, {} failed, {} timed out, {} skipped, {} cancelled in {:.1}s; trace: {}",
            s.total_tasks,
            s.successful,
            s.failed,
            s.timed_out,
            s.skipped,
            s.cancelled,
            s.total_time_ms as f64 / 1000.0,
            result.trace_file
        );
    }
    if let Some(interrupt) = report.interrupted {
        return ExitCode::from(interrupt.exit_code() as u8);
    }
    if result.status == RunStatus::Success {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_TASKS_FAILED)
    }
}

fn runner_error(message: &str, result: Option<&dispatch_runner::reporter::RunResult>) -> ExitCode {
    eprintln!("dispatch_runner: error: {message}");
    let mut doc = json!({"status": "error", "errors": [{"path": "", "message": message}]});
    if let Some(result) = result {
        doc["result"] = serde_json::to_value(result).expect("serializable");
    }
    print_json(&doc);
    ExitCode::from(EXIT_RUNNER)
}

/// Turns SIGINT and SIGTERM into interrupt messages for the dispatcher.
fn forward_signals(tx: mpsc::Sender<Interrupt>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let which = tokio::select! {
                _ = int.recv() => Interrupt::Sigint,
                _ = term.recv() => Interrupt::Sigterm,
            };
            if tx.send(which).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
