//! The `dispatch_runner` binary: parse flags, read the batch, make one library call, print the
//! JSON document, and map the outcome to an exit code.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;

use std::sync::Arc;

use dispatch_runner::batch::Limits;
use dispatch_runner::batch::schema::batch_schema;
use dispatch_runner::batch::{BatchConfig, ValidationContext};
use dispatch_runner::cli::{Cli, Command, DoctorArgs, InputArgs, ReportArgs, RunArgs, ServeArgs};
use dispatch_runner::config::{Config, ConfigError, Layer, LogFormat, explain};
use dispatch_runner::events::RunStatus;
use dispatch_runner::reporter::outputs::Delivery;
use dispatch_runner::reporter::trace::write_json_atomic;
use dispatch_runner::{
    Interrupt, Issue, RunOptions, RunSettings, RunnerError, Services, ValidatedBatch,
};

const EXIT_OK: u8 = 0;
const EXIT_TASKS_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_RUNNER: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch_runner::redact::register_env_secrets();
    if let Some(Command::Schema) = cli.command {
        print_json(batch_schema());
        return ExitCode::from(EXIT_OK);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => return config_error(&errors),
    };
    init_logging(&config);
    match cli.command {
        Some(Command::Schema) => unreachable!("handled above"),
        Some(Command::Validate(input)) => validate(&config, &input),
        Some(Command::Config(args)) => show_config(&config, &args),
        Some(Command::Serve(args)) => serve(&config, args),
        Some(Command::Doctor(args)) => doctor(&config, &args),
        Some(Command::Run(args)) => run(&config, args),
        Some(Command::Report(args)) => report(&args),
        None => run(&config, cli.run),
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(config.log_directive()).unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| dispatch_runner::redact::RedactingWriter::new(std::io::stderr()))
        .with_ansi(ansi);
    match config.file.logging.format.unwrap_or_default() {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn config_error(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("dispatch_runner: configuration error: {e}");
    }
    let errors: Vec<_> = errors
        .iter()
        .map(|e| json!({"path": e.path, "message": e.message}))
        .collect();
    print_json(&json!({"status": "error", "errors": errors}));
    ExitCode::from(EXIT_RUNNER)
}

/// The configuration layers below the batch, lowest first.
fn base_layers(config: &Config) -> (BatchConfig, BatchConfig) {
    (config.file_layer(), config.env.clone())
}

fn show_config(config: &Config, args: &RunArgs) -> ExitCode {
    let (file, env) = base_layers(config);
    let batch = match &args.input.input_file {
        Some(_) => match load(config, &args.input) {
            Ok(v) => Some(v.batch.config),
            Err(code) => return code,
        },
        None => None,
    };
    let flags = args.overrides();
    let file_source = match &config.file_path {
        Some(p) => format!("file:{}", p.display()),
        None => "file".into(),
    };
    let mut layers = vec![Layer {
        source: file_source,
        config: &file,
    }];
    let env_source = |field: &str| {
        config
            .env_sources
            .get(field)
            .map(|v| format!("env:{v}"))
            .unwrap_or_else(|| "env".into())
    };
    // Each environment variable sets one field; name it as the source of that field.
    let env_layers: Vec<(String, BatchConfig)> = config
        .env_sources
        .keys()
        .map(|field| {
            let mut one = BatchConfig::default();
            match *field {
                "max_workers" => one.max_workers = env.max_workers,
                "timeout_seconds" => one.timeout_seconds = env.timeout_seconds,
                "trace_dir" => one.trace_dir = env.trace_dir.clone(),
                _ => {}
            }
            (env_source(field), one)
        })
        .collect();
    for (source, layer) in &env_layers {
        layers.push(Layer {
            source: source.clone(),
            config: layer,
        });
    }
    if let Some(batch) = &batch {
        layers.push(Layer {
            source: "batch".into(),
            config: batch,
        });
    }
    layers.push(Layer {
        source: "flag".into(),
        config: &flags,
    });
    let doc = json!({
        "config_file": config.file_path.as_ref().map(|p| p.display().to_string()),
        "dispatcher": explain(&layers),
        "workspace": config.workspace().map(|p| p.display().to_string()),
        "agents": config.file.agents,
        "mcp": {"servers": config.mcp_servers().servers},
        "llm": config.llm(),
        "logging": {
            "level": config.log_directive(),
            "format": config.file.logging.format.unwrap_or_default(),
        },
    });
    print_json(&doc);
    ExitCode::from(EXIT_OK)
}

/// Run-wide state for agents. The workspace is `--workspace`, else `dispatcher.workspace` from
/// the file, else the current directory; it must be an existing directory.
fn services(config: &Config, workspace_flag: Option<&Path>) -> Result<Services, Issue> {
    let mut services = Services {
        mcp: config.mcp_servers(),
        llm: config.llm(),
        ..Services::default()
    };
    let chosen = match workspace_flag {
        Some(dir) => Some(("--workspace", dir.to_path_buf())),
        None => config.workspace().map(|dir| ("dispatcher.workspace", dir)),
    };
    if let Some((source, dir)) = chosen {
        services.workspace = match dir.canonicalize() {
            Ok(root) if root.is_dir() => root,
            Ok(_) => {
                let msg = format!("{source} '{}' is not a directory", dir.display());
                return Err(Issue::new("", msg));
            }
            Err(e) => {
                let msg = format!("{source} '{}': {e}", dir.display());
                return Err(Issue::new("", msg));
            }
        };
    }
    Ok(services)
}

/// Prints the one JSON document of this invocation, with secrets redacted.
fn print_json(value: &impl serde::Serialize) {
    print_json_value(serde_json::to_value(value).expect("serializable"));
}

/// As [`print_json`], for a document already built as JSON: redacted in place, not copied.
fn print_json_value(mut value: serde_json::Value) {
    dispatch_runner::redact::redact_json(&mut value);
    let text = serde_json::to_string_pretty(&value).expect("serializable");
    // A reader that went away (`| head`) is not worth a panic; the exit code still tells.
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("dispatch_runner: cannot write to stdout: {e}");
    }
}

/// Reads and checks the batch (against the configured MCP servers too); on failure prints the
/// `invalid` document and returns exit 2.
fn load(config: &Config, input: &InputArgs) -> Result<ValidatedBatch, ExitCode> {
    let limits = input.limits();
    let text = read_input(input, &limits).map_err(|issue| invalid(vec![issue]))?;
    let ctx = ValidationContext {
        limits,
        mcp_servers: Some(config.mcp_servers().servers.keys().cloned().collect()),
    };
    dispatch_runner::batch::validate_text_with(&text, &ctx).map_err(invalid)
}

/// `--check-tools`: asks the MCP servers the batch uses whether its tools and arguments fit.
async fn check_tools(validated: &ValidatedBatch, services: &Services) -> Result<(), ExitCode> {
    let issues = dispatch_runner::mcp::check::check_tools(&validated.batch, services).await;
    if issues.is_empty() {
        Ok(())
    } else {
        services.mcp_pool.close_all().await;
        Err(invalid(issues))
    }
}

fn new_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn doctor(config: &Config, args: &DoctorArgs) -> ExitCode {
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    let mcp = config.mcp_servers();
    let limit = std::time::Duration::from_secs_f64(args.timeout_seconds);
    let report = runtime.block_on(dispatch_runner::mcp::doctor::doctor(&mcp, limit));
    print_json(&report);
    for s in report.servers.iter().filter(|s| s.error.is_some()) {
        eprintln!(
            "dispatch_runner: MCP server '{}' is not healthy: {}",
            s.name,
            s.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
        );
    }
    ExitCode::from(if report.healthy {
        EXIT_OK
    } else {
        EXIT_TASKS_FAILED
    })
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

fn validate(config: &Config, input: &InputArgs) -> ExitCode {
    match load(config, input) {
        Ok(v) => {
            if input.check_tools {
                let services = match services(config, None) {
                    Ok(s) => s,
                    Err(issue) => return invalid(vec![issue]),
                };
                let checked = match new_runtime() {
                    Ok(rt) => rt.block_on(async {
                        let r = check_tools(&v, &services).await;
                        services.mcp_pool.close_all().await;
                        r
                    }),
                    Err(e) => {
                        return runner_error(&format!("cannot start the async runtime: {e}"), None);
                    }
                };
                if let Err(code) = checked {
                    return code;
                }
            }
            let summary = v.plan.summary();
            // The batch is not needed for the plan document; freeing it first lowers the peak
            // memory of checking large batches.
            drop(v);
            let mut doc = serde_json::to_value(summary).expect("serializable");
            doc.as_object_mut()
                .expect("object")
                .insert("status".into(), json!("valid"));
            print_json_value(doc);
            ExitCode::from(EXIT_OK)
        }
        Err(code) => code,
    }
}

fn run(config: &Config, args: RunArgs) -> ExitCode {
    let (validated, reuse) = match &args.rerun_failed {
        None => match load(config, &args.input) {
            Ok(v) => (v, None),
            Err(code) => return code,
        },
        Some(trace) => {
            let new_batch = match &args.input.input_file {
                Some(_) => match load(config, &args.input) {
                    Ok(v) => Some(v),
                    Err(code) => return code,
                },
                None => None,
            };
            match dispatch_runner::rerun::prepare(trace, new_batch) {
                Ok((v, reuse)) => {
                    if !args.quiet {
                        eprintln!(
                            "dispatch_runner: rerunning {} of {} tasks from run {}",
                            v.batch.tasks.len() - reuse.kept(),
                            v.batch.tasks.len(),
                            reuse.previous_run_id
                        );
                    }
                    (v, Some(reuse))
                }
                Err(issues) => return invalid(issues),
            }
        }
    };
    let (file, env) = base_layers(config);
    let mut settings =
        RunSettings::resolve(&[&file, &env, &validated.batch.config, &args.overrides()]);
    settings.agents = config.file.agents.clone();
    let services = match services(config, args.workspace.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(issue) => return invalid(vec![issue]),
    };
    let plan = args.plan();
    if let Err(errors) = plan.check() {
        return runner_error(&errors.join("; "), None);
    }
    with_runtime(|rx| async move {
        if args.input.check_tools
            && let Err(code) = check_tools(&validated, &services).await
        {
            return code;
        }
        let mut outputs = match plan.build() {
            Ok(o) => o,
            Err(e) => return runner_error(&e, None),
        };
        let mut options = RunOptions::new(settings);
        options.sinks = std::mem::take(&mut outputs.sinks);
        options.interrupts = Some(rx);
        options.services = services;
        options.reuse = reuse;
        match dispatch_runner::run(validated, options).await {
            Ok(mut report) => {
                let delivery = outputs.finish(std::mem::take(&mut report.sinks)).await;
                finish(&args, &report, &delivery)
            }
            Err(e @ RunnerError::TraceDir { .. }) => runner_error(&e.to_string(), None),
            Err(RunnerError::TraceWrite {
                path,
                source,
                mut report,
            }) => {
                let delivery = outputs.finish(std::mem::take(&mut report.sinks)).await;
                warn(&delivery);
                let message = format!("cannot write trace file '{}': {source}", path.display());
                runner_error(&message, Some(&report.result))
            }
        }
    })
}

fn warn(delivery: &Delivery) {
    for w in &delivery.warnings {
        eprintln!("dispatch_runner: warning: {w}");
    }
    for e in &delivery.errors {
        eprintln!("dispatch_runner: error: {e}");
    }
}

fn finish(args: &RunArgs, report: &dispatch_runner::RunReport, delivery: &Delivery) -> ExitCode {
    let result = &report.result;
    warn(delivery);
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
    if !delivery.errors.is_empty() {
        return ExitCode::from(EXIT_RUNNER);
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

fn report(args: &ReportArgs) -> ExitCode {
    let plan = args.plan();
    let bad_input = |message: String| {
        eprintln!("dispatch_runner: {message}");
        print_json(&json!({"status": "invalid", "errors": [{"path": "", "message": message}]}));
        ExitCode::from(EXIT_INVALID)
    };
    if !plan.has_files() {
        return bad_input("nothing to write: give --html, --chrome-trace and/or --junit".into());
    }
    if let Err(errors) = plan.check() {
        return runner_error(&errors.join("; "), None);
    }
    let delivery = match plan.replay_trace(&args.trace_file) {
        Ok(d) => d,
        Err(e) => return bad_input(e),
    };
    warn(&delivery);
    let written: serde_json::Map<String, serde_json::Value> = delivery
        .written
        .iter()
        .map(|(flag, p)| {
            (
                flag.trim_start_matches('-').replace('-', "_"),
                json!(p.display().to_string()),
            )
        })
        .collect();
    if delivery.errors.is_empty() {
        print_json(&json!({"status": "written", "files": written}));
        ExitCode::from(EXIT_OK)
    } else {
        let errors: Vec<_> = delivery
            .errors
            .iter()
            .map(|m| json!({"path": "", "message": m}))
            .collect();
        print_json(&json!({"status": "error", "errors": errors, "files": written}));
        ExitCode::from(EXIT_RUNNER)
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

fn serve(config: &Config, args: ServeArgs) -> ExitCode {
    use dispatch_runner::server::{ServerOptions, TOKEN_ENV};
    let (file, env) = base_layers(config);
    let trace_dir = args
        .trace_dir
        .clone()
        .unwrap_or_else(|| RunSettings::resolve(&[&file, &env]).trace_dir);
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    if let Some(t) = &token {
        dispatch_runner::redact::register_secret(t);
    }
    let options = ServerOptions {
        listen: args.listen,
        token,
        max_body_bytes: args.max_body_bytes,
        max_concurrent_runs: args.max_concurrent_runs as usize,
        shutdown_grace: std::time::Duration::from_secs_f64(args.shutdown_grace_seconds),
        base_layers: vec![file, env],
        agents: config.file.agents.clone(),
        trace_dir,
        services: match services(config, None) {
            Ok(s) => Arc::new(s),
            Err(issue) => return runner_error(&issue.message, None),
        },
    };
    with_runtime(|mut rx| async move {
        let shutdown = async move { rx.recv().await.unwrap_or(Interrupt::Sigterm) };
        let announce = |addr| eprintln!("dispatch_runner: listening on http://{addr}");
        match dispatch_runner::server::serve(options, shutdown, announce).await {
            Ok(()) => {
                eprintln!("dispatch_runner: server stopped");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => runner_error(&e.to_string(), None),
        }
    })
}

/// Runs `body` on a multi-threaded runtime with SIGINT and SIGTERM arriving as interrupts.
fn with_runtime<F: Future<Output = ExitCode>>(
    body: impl FnOnce(mpsc::Receiver<Interrupt>) -> F,
) -> ExitCode {
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    let code = runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(4);
        if let Err(e) = dispatch_runner::signal::forward(tx) {
            return runner_error(&format!("cannot install signal handlers: {e}"), None);
        }
        body(rx).await
    });
    // Dropping a runtime waits for every blocking-pool thread; one stuck in a system call must
    // not keep a finished (or interrupted) run from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
