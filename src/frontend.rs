//! The front end shared by the binary and the server: reading a batch (limits, byte-order mark,
//! UTF-8), checking it against the configuration (MCP server names), layering settings, setting up
//! services and the workspace, the status documents (`invalid`, `error`) and the exit codes.
//!
//! `main.rs` only parses flags and calls [`main`]; the server calls [`Intake`] and [`settings`], so
//! the same bytes get the same verdict from `dispatch_runner run` and from `POST /v1/dispatch`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::batch::Limits;
use crate::batch::schema::batch_schema;
use crate::batch::{BatchConfig, ValidationContext};
use crate::cli::{
    Cli, Command, DoctorArgs, InputArgs, McpServerArgs, ReportArgs, ResumeArgs, RunArgs, ServeArgs,
};
use crate::config::{AgentSection, Config, ConfigError, Layer, LogFormat, explain};
use crate::events::RunStatus;
use crate::reporter::RunResult;
use crate::reporter::compact::{CompactContext, ResultForm, TailLimits};
use crate::reporter::outputs::Delivery;
use crate::reporter::trace::write_json_atomic;
use crate::{Interrupt, Issue, RunOptions, RunSettings, RunnerError, Services, ValidatedBatch};

pub const EXIT_OK: u8 = 0;
pub const EXIT_TASKS_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_RUNNER: u8 = 3;

/// The whole command line: parsed flags in, the exit code out. Prints the one JSON document of
/// the invocation on stdout and messages on stderr.
pub fn main(cli: Cli) -> u8 {
    crate::redact::register_env_secrets();
    // These need no configuration: a broken config file must not break them.
    match &cli.command {
        Some(Command::Schema) => {
            print_json(batch_schema());
            return EXIT_OK;
        }
        Some(Command::Completions(args)) => return completions(args.shell),
        Some(Command::Man) => return man_page(),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => return config_error(&errors),
    };
    init_logging(&config);
    let code = match cli.command {
        Some(Command::Schema | Command::Completions(_) | Command::Man) => {
            unreachable!("handled above")
        }
        Some(Command::Validate(input)) => validate(&config, &input),
        Some(Command::Config(args)) => show_config(&config, &args),
        Some(Command::Serve(args)) => serve(&config, args),
        Some(Command::McpServer(args)) => mcp_server(&config, args),
        Some(Command::Doctor(args)) => doctor(&config, &args),
        Some(Command::Run(args)) => run(&config, args),
        Some(Command::Resume(args)) => resume(&config, args),
        Some(Command::Report(args)) => report(&args),
        Some(Command::Cache(args)) => crate::cache::cli::main(&config, args),
        Some(Command::Worker(args)) => worker(&config, args),
        Some(Command::Workers(args)) => workers(&args),
        Some(Command::Prune(args)) => prune(&config, &args),
        None => run(&config, cli.run),
    };
    // Everything this invocation started has been cleaned up: the watchdog may go.
    crate::process::watchdog::bye();
    code
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(config.log_directive()).unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::redact::RedactingWriter::new(std::io::stderr()))
        .with_ansi(ansi);
    match config.file.logging.format.unwrap_or_default() {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn config_error(errors: &[ConfigError]) -> u8 {
    for e in errors {
        eprintln!("dispatch_runner: configuration error: {e}");
    }
    let errors: Vec<_> = errors
        .iter()
        .map(|e| json!({"path": e.path, "message": e.message}))
        .collect();
    print_json(&json!({"status": "error", "errors": errors}));
    EXIT_RUNNER
}

/// The configuration layers below the batch, lowest first.
fn base_layers(config: &Config) -> (BatchConfig, BatchConfig) {
    (config.file_layer(), config.env.clone())
}

fn show_config(config: &Config, args: &RunArgs) -> u8 {
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
        "journal_fsync": config.journal_fsync(args.journal_fsync),
        "logging": {
            "level": config.log_directive(),
            "format": config.file.logging.format.unwrap_or_default(),
        },
    });
    print_json(&doc);
    EXIT_OK
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

/// Completion scripts and the man page come from the same clap definitions as the parser, so
/// they cannot drift from it.
fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dispatch_runner", &mut text);
    write_stdout(&text)
}

fn man_page() -> u8 {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut text = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut text) {
        eprintln!("dispatch_runner: cannot render the man page: {e}");
        return EXIT_RUNNER;
    }
    // troff reads bytes, not UTF-8: non-ASCII characters of the help text (`×`, `–`) become
    // groff's named Unicode escapes so `man -l` renders them without warnings.
    let mut roff = String::with_capacity(text.len());
    for c in String::from_utf8_lossy(&text).chars() {
        if c.is_ascii() {
            roff.push(c);
        } else {
            roff.push_str(&format!("\\[u{:04X}]", c as u32));
        }
    }
    write_stdout(roff.as_bytes())
}

/// Writes a whole document to stdout; a reader that went away (`| head`) is not worth a panic.
fn write_stdout(bytes: &[u8]) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("dispatch_runner: cannot write to stdout: {e}");
            EXIT_RUNNER
        }
    }
}

/// Prints the one JSON document of this invocation, with secrets redacted.
fn print_json(value: &impl serde::Serialize) {
    print_json_value(serde_json::to_value(value).expect("serializable"));
}

/// As [`print_json`], for a document written as it is serialized (the result of a big run, or a
/// big plan, is never one JSON tree). The document redacts itself piece by piece, or the caller
/// has redacted its strings (no key of it may be a secret's).
fn print_streamed(doc: &impl serde::Serialize) {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, doc)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    // A reader that went away (`| head`) is not worth a panic; the exit code still tells.
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("dispatch_runner: cannot write to stdout: {e}");
    }
}

/// As [`print_json`], for a document already built as JSON: redacted in place, not copied.
fn print_json_value(mut value: serde_json::Value) {
    crate::redact::redact_json(&mut value);
    let text = serde_json::to_string_pretty(&value).expect("serializable");
    // A reader that went away (`| head`) is not worth a panic; the exit code still tells.
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("dispatch_runner: cannot write to stdout: {e}");
    }
}

/// How a batch is read and checked: the input limits and the MCP servers that exist. The one
/// checking path for the command line and the server.
#[derive(Debug, Clone)]
pub struct Intake {
    pub limits: Limits,
    /// Names of the configured MCP servers (the built-in `archon` included).
    pub mcp_servers: BTreeSet<String>,
    /// The model settings (which backends a `prompt` task can call).
    pub llm: crate::llm::LlmConfig,
}

impl Intake {
    /// Limits as given, MCP servers and model settings from `services` (what the run will use).
    pub fn new(limits: Limits, services: &Services) -> Self {
        Intake {
            limits,
            mcp_servers: services.mcp.servers.keys().cloned().collect(),
            llm: services.llm.clone(),
        }
    }

    /// Checks raw input bytes: the size limit, an optional UTF-8 byte-order mark, UTF-8, then the
    /// batch itself. `what` names the input in messages ("stdin", "request body").
    pub fn check(&self, bytes: Vec<u8>, what: &str) -> Result<ValidatedBatch, Vec<Issue>> {
        if bytes.len() > self.limits.max_input_bytes {
            return Err(vec![self.limits.input_too_large(what)]);
        }
        let text = utf8(bytes, what).map_err(|issue| vec![issue])?;
        let ctx = ValidationContext {
            limits: self.limits,
            mcp_servers: Some(self.mcp_servers.clone()),
            llm: Some(self.llm.clone()),
        };
        crate::batch::validate_text_with(&text, &ctx)
    }
}

/// The settings of one run: configuration file, environment, the batch's own `config`, then
/// flags (or, for the server, its own overrides), lowest first; plus the per-agent sections.
pub fn settings(
    base: &[BatchConfig],
    batch: &BatchConfig,
    overrides: &BatchConfig,
    agents: &std::collections::BTreeMap<String, AgentSection>,
) -> RunSettings {
    let mut layers: Vec<&BatchConfig> = base.iter().collect();
    layers.push(batch);
    layers.push(overrides);
    let mut settings = RunSettings::resolve(&layers);
    settings.agents = agents.clone();
    settings
}

/// The `invalid` document: the input was rejected and nothing ran (exit 2, HTTP 400).
pub fn invalid_document(errors: &[Issue]) -> Value {
    json!({"status": "invalid", "errors": errors})
}

/// The `error` document: the runner itself could not work (exit 3, HTTP 4xx/5xx), with the result
/// when the run happened anyway.
pub fn error_document(message: &str, result: Option<&RunResult>) -> Value {
    let mut doc = json!({"status": "error", "errors": [{"path": "", "message": message}]});
    if let Some(result) = result {
        doc["result"] = serde_json::to_value(result).expect("serializable");
    }
    doc
}

/// The exit code of a run that happened: interrupted (130/143), else 0 when every task
/// succeeded, else 1.
pub fn run_exit_code(report: &crate::RunReport) -> u8 {
    if let Some(interrupt) = report.interrupted {
        return interrupt.exit_code() as u8;
    }
    if report.result.status == RunStatus::Success {
        EXIT_OK
    } else {
        EXIT_TASKS_FAILED
    }
}

/// Reads and checks the batch (against the configured MCP servers too); on failure prints the
/// `invalid` document and returns exit 2.
fn load(config: &Config, input: &InputArgs) -> Result<ValidatedBatch, u8> {
    let limits = input.limits();
    let (bytes, what) = read_input(input, &limits).map_err(|issue| invalid(vec![issue]))?;
    let intake = Intake {
        limits,
        mcp_servers: config.mcp_servers().servers.keys().cloned().collect(),
        llm: config.llm(),
    };
    intake.check(bytes, &what).map_err(invalid)
}

/// `--check-tools`: asks the MCP servers the batch uses whether its tools and arguments fit.
async fn check_tools(validated: &ValidatedBatch, services: &Services) -> Result<(), u8> {
    let issues = crate::mcp::check::check_tools(&validated.batch, services).await;
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

fn doctor(config: &Config, args: &DoctorArgs) -> u8 {
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    let mcp = config.mcp_servers();
    let limit = std::time::Duration::from_secs_f64(args.timeout_seconds);
    let report = runtime.block_on(crate::mcp::doctor::doctor(&mcp, limit));
    print_json(&report);
    for s in report.servers.iter().filter(|s| s.error.is_some()) {
        eprintln!(
            "dispatch_runner: MCP server '{}' is not healthy: {}",
            s.name,
            s.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
        );
    }
    if report.healthy {
        EXIT_OK
    } else {
        EXIT_TASKS_FAILED
    }
}

/// The input's bytes (at most one past the limit) and its name for messages.
fn read_input(input: &InputArgs, limits: &Limits) -> Result<(Vec<u8>, String), Issue> {
    // Read at most one byte past the limit: enough to know it was exceeded, never the whole of
    // an endless stream.
    let cap = limits.max_input_bytes as u64 + 1;
    match &input.input_file {
        Some(path) => {
            let what = format!("input file '{}'", path.display());
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| {
                    // `take` hides the file's size from `read_to_end`; without it the buffer
                    // grows by doubling, and a 100 MB batch briefly costs twice its size.
                    let size = f.metadata().map_or(0, |m| m.len()).min(cap);
                    let _ = bytes.try_reserve_exact(size as usize + 1);
                    f.take(cap).read_to_end(&mut bytes)
                })
                .map_err(|e| Issue::new("", format!("cannot read {what}: {e}")))?;
            Ok((bytes, what))
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
            Ok((bytes, "stdin".to_string()))
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

/// Most problems listed on stderr; the JSON document on stdout holds every one.
pub const MAX_ERRORS_SHOWN: usize = 50;

fn invalid(errors: Vec<Issue>) -> u8 {
    {
        // A batch with 20,000 bad tasks would otherwise scroll 40,000 lines past a person.
        let mut err = std::io::BufWriter::new(std::io::stderr().lock());
        let _ = writeln!(err, "dispatch_runner: the batch is invalid; nothing ran:");
        for e in errors.iter().take(MAX_ERRORS_SHOWN) {
            let _ = writeln!(err, "  {e}");
        }
        if errors.len() > MAX_ERRORS_SHOWN {
            let _ = writeln!(
                err,
                "  ... and {} more (all {} are in the JSON document on stdout)",
                errors.len() - MAX_ERRORS_SHOWN,
                errors.len()
            );
        }
        let _ = err.flush();
    }
    print_streamed(&InvalidDoc(&errors));
    EXIT_INVALID
}

/// [`invalid_document`] as it is written: each path and message redacted as it is serialized,
/// without a `Value` copy of what may be millions of problems.
struct InvalidDoc<'a>(&'a [Issue]);

impl serde::Serialize for InvalidDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
        struct Errors<'a>(&'a [Issue]);
        impl serde::Serialize for Errors<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for issue in self.0 {
                    seq.serialize_element(&RedactedIssue(issue))?;
                }
                seq.end()
            }
        }
        struct RedactedIssue<'a>(&'a Issue);
        impl serde::Serialize for RedactedIssue<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut st = s.serialize_struct("Issue", 2)?;
                st.serialize_field("path", &crate::redact::redact_text(&self.0.path))?;
                st.serialize_field("message", &crate::redact::redact_text(&self.0.message))?;
                st.end()
            }
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("status", "invalid")?;
        map.serialize_entry("errors", &Errors(self.0))?;
        map.end()
    }
}

/// The `valid` document (`validate` of a good batch): the plan, with the task ids borrowed from
/// it and redacted one by one as they are written.
#[derive(serde::Serialize)]
pub struct ValidDocument<'a> {
    #[serde(flatten)]
    plan: crate::graph::PlanSummary<std::borrow::Cow<'a, str>>,
    status: &'static str,
    /// The makespan and critical path in time, when the run history knows tasks of the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate: Option<crate::history::Forecast>,
}

impl<'a> ValidDocument<'a> {
    pub fn of(plan: &'a crate::graph::Plan) -> Self {
        ValidDocument {
            plan: plan.summary_by(crate::redact::redact_text),
            status: "valid",
            estimate: None,
        }
    }

    pub fn estimated(self, estimate: Option<crate::history::Forecast>) -> Self {
        ValidDocument { estimate, ..self }
    }
}

fn validate(config: &Config, input: &InputArgs) -> u8 {
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
            let forecast = forecast(config, &v.batch, &v.plan);
            let ValidatedBatch { batch, plan } = v;
            // The process ends after the document: freeing a million tasks one allocation at a
            // time would only delay that (and the peak, while checking, is past).
            std::mem::forget(batch);
            // Written as it is serialized: a `Value` of a million-task plan would cost more
            // than checking it.
            print_streamed(&ValidDocument::of(&plan).estimated(forecast));
            std::mem::forget(plan);
            EXIT_OK
        }
        Err(code) => code,
    }
}

/// `validate`'s prediction from the run history in the batch's trace directory, if the history
/// exists and knows any of its tasks; printed on stderr for people, returned for the document.
fn forecast(
    config: &Config,
    batch: &crate::Batch,
    plan: &crate::graph::Plan,
) -> Option<crate::history::Forecast> {
    if config.file.history.enabled == Some(false) {
        return None;
    }
    let (file, env) = base_layers(config);
    let settings = settings(
        &[file, env],
        &batch.config,
        &BatchConfig::default(),
        &config.file.agents,
    );
    let dir = &settings.trace_dir;
    let store = crate::history::Store::open_existing(dir)?;
    let key = crate::rerun::DigestKey::load(dir).ok().flatten();
    let ids = crate::history::identities(batch, key.as_ref());
    let estimates = store.load(&ids).ok()?;
    let options = config.file.history.options();
    let mut f = crate::history::forecast(
        plan,
        &estimates,
        options.keep as usize,
        settings.max_workers,
    )?;
    for id in &mut f.critical_path {
        *id = crate::redact::redact_text(id).into_owned();
    }
    let shown = 12;
    let mut path = f.critical_path[..f.critical_path.len().min(shown)].join(" -> ");
    if f.critical_path.len() > shown {
        path.push_str(&format!(" -> ... ({} tasks)", f.critical_path.len()));
    }
    eprintln!(
        "dispatch_runner: estimated makespan {:.2} s on {} workers (history for {} of {} tasks); critical path in time {:.2} s: {path}",
        f.makespan_seconds,
        f.workers,
        f.tasks_with_history,
        plan.len(),
        f.critical_path_seconds
    );
    Some(f)
}

/// `resume`: the batch and the plan come from the journal, then the run goes on as `run`.
fn resume(config: &Config, args: ResumeArgs) -> u8 {
    let ResumeArgs { target, run: args } = args;
    if args.rerun_failed.is_some() {
        return invalid(vec![Issue::new(
            "",
            "--rerun-failed does not go with resume",
        )]);
    }
    let (file, env) = base_layers(config);
    let base = settings(
        &[file, env],
        &BatchConfig::default(),
        &args.overrides(),
        &config.file.agents,
    );
    let path = crate::journal::locate(&target, &base.trace_dir);
    let new_batch = match &args.input.input_file {
        Some(_) => match load(config, &args.input) {
            Ok(v) => Some(v),
            Err(code) => return code,
        },
        None => None,
    };
    let (validated, reuse, run_id) = match crate::journal::prepare_resume(&path, new_batch) {
        Ok(prepared) => prepared,
        Err(issues) => return invalid(issues),
    };
    if !args.quiet {
        let finished = reuse.resume.as_ref().map_or(0, |r| {
            r.events
                .iter()
                .filter(|e| matches!(e.kind, crate::events::EventKind::TaskFinished { .. }))
                .count()
        });
        eprintln!(
            "dispatch_runner: resuming run {run_id} from '{}': {finished} of {} tasks finished before",
            path.display(),
            validated.batch.tasks.len()
        );
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    execute(config, args, validated, Some(reuse), Some((run_id, dir)))
}

fn run(config: &Config, args: RunArgs) -> u8 {
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
            match crate::rerun::prepare(trace, new_batch) {
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
    execute(config, args, validated, reuse, None)
}

/// Runs a checked batch: a new run, a rerun, or (with `resumed`: the run id and the journal's
/// folder) the rest of a run that stopped.
fn execute(
    config: &Config,
    args: RunArgs,
    validated: ValidatedBatch,
    reuse: Option<crate::rerun::Reuse>,
    resumed: Option<(String, std::path::PathBuf)>,
) -> u8 {
    let (file, env) = base_layers(config);
    let mut settings = settings(
        &[file, env],
        &validated.batch.config,
        &args.overrides(),
        &config.file.agents,
    );
    let run_id = resumed.map(|(id, dir)| {
        // The trace goes beside the journal, whatever the configuration says now.
        settings.trace_dir = dir;
        id
    });
    let services = match services(config, args.workspace.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(issue) => return invalid(vec![issue]),
    };
    let redis = match redis_options(config, &args) {
        Ok(r) => r,
        Err(message) => return runner_error(&message, None),
    };
    let plan = args.plan();
    // Every file the run will write is checked before anything runs, so a typo costs nothing.
    let mut unwritable = plan.check().err().unwrap_or_default();
    if let Some(path) = &args.output_file
        && let Err(e) = crate::reporter::output::check_writable("--output-file", path)
    {
        unwritable.insert(0, e);
    }
    if !unwritable.is_empty() {
        return runner_error(&unwritable.join("; "), None);
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
        options.stores = config.stores(args.journal_fsync, args.no_history, args.no_cache);
        options.sinks = std::mem::take(&mut outputs.sinks);
        options.interrupts = Some(rx);
        options.services = services;
        options.reuse = reuse;
        options.run_id = run_id;
        options.redis = redis;
        match crate::run(validated, options).await {
            Ok(mut report) => {
                let delivery = outputs.finish(std::mem::take(&mut report.sinks)).await;
                finish(&args, &report, &delivery)
            }
            Err(e @ (RunnerError::TraceDir { .. } | RunnerError::Executor(_))) => {
                runner_error(&e.to_string(), None)
            }
            Err(RunnerError::TraceWrite {
                path,
                source,
                mut report,
            }) => {
                let delivery = outputs.finish(std::mem::take(&mut report.sinks)).await;
                warn(&delivery);
                let message = format!("cannot write trace file '{}': {source}", path.display());
                if args.result_form == ResultForm::Compact {
                    eprintln!("dispatch_runner: error: {message}");
                    let mut doc = error_document(&message, None);
                    doc["result"] =
                        serde_json::to_value(compact_result(&args, &report.result, false))
                            .expect("serializable");
                    print_json_value(doc);
                    return EXIT_RUNNER;
                }
                runner_error(&message, Some(&report.result))
            }
        }
    })
}

/// The Redis pool a run sends its attempts to: `--redis` (or `DISPATCH_REDIS_URL`), else
/// `executor.redis.url`; the other values from the flags, else the file, else the defaults.
pub fn redis_options(
    config: &Config,
    args: &RunArgs,
) -> Result<Option<crate::remote::RedisOptions>, String> {
    let file = config.file.executor.redis.clone().unwrap_or_default();
    let Some(url) = args.redis.clone().or(file.url.clone()) else {
        return Ok(None);
    };
    let seconds = |flag: Option<f64>, key: &str, value: Option<f64>| match flag.or(value) {
        Some(v) if v.is_finite() && v > 0.0 => Ok(Some(std::time::Duration::from_secs_f64(v))),
        Some(_) => Err(format!(
            "executor.redis.{key} must be a positive number of seconds"
        )),
        None => Ok(None),
    };
    let mut options = crate::remote::RedisOptions::new(url);
    if let Some(d) = seconds(args.lease_seconds, "lease_seconds", file.lease_seconds)? {
        // Workers renew every 250 ms: a shorter lease would take live workers for dead ones.
        if d < std::time::Duration::from_secs(1) {
            return Err("the lease (--lease-seconds, executor.redis.lease_seconds) must be at least 1 second".into());
        }
        options.lease = d;
    }
    if let Some(d) = seconds(
        args.redis_reconnect_seconds,
        "reconnect_seconds",
        file.reconnect_seconds,
    )? {
        options.reconnect_for = d;
    }
    options.queue_timeout = seconds(
        args.queue_timeout,
        "queue_timeout_seconds",
        file.queue_timeout_seconds,
    )?;
    if let Some(n) = args.max_redeliveries.or(file.max_redeliveries) {
        options.max_redeliveries = n;
    }
    Ok(Some(options))
}

/// `worker`: serves attempts from a Redis pool until a signal.
fn worker(config: &Config, args: crate::cli::WorkerArgs) -> u8 {
    let services = match services(config, args.workspace.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(issue) => return runner_error(&issue.message, None),
    };
    // `batch` and `first_success` are run by the coordinator's dispatcher, never by a worker.
    let served = crate::agents::executed_agents();
    let agents = if args.agents.is_empty() {
        served.iter().map(|a| a.to_string()).collect()
    } else {
        args.agents.clone()
    };
    if let Some(bad) = agents.iter().find(|a| !served.contains(&a.as_str())) {
        return runner_error(
            &format!(
                "--agents: '{bad}' is not an agent a worker runs (these are: {})",
                served.join(", ")
            ),
            None,
        );
    }
    let capacity = args
        .max_workers
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::remote::hostname(), std::process::id()));
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c == ' ') {
        return runner_error("--name must be 1 to 200 characters without spaces", None);
    }
    let options = crate::remote::worker::WorkerOptions {
        url: args.redis.clone(),
        name,
        capacity,
        agents,
        drain: std::time::Duration::from_secs_f64(args.drain_seconds),
        reconnect_for: std::time::Duration::from_secs_f64(args.reconnect_seconds),
    };
    with_runtime(|rx| crate::remote::worker::run_worker(options, services, rx))
}

/// `workers`: the live workers of a pool, as JSON.
fn workers(args: &crate::cli::WorkersArgs) -> u8 {
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    match runtime.block_on(crate::remote::list_workers(&args.redis)) {
        Ok(list) => {
            print_json(&json!({"workers": list}));
            EXIT_OK
        }
        Err(e) => runner_error(&e, None),
    }
}

fn warn(delivery: &Delivery) {
    for w in &delivery.warnings {
        eprintln!("dispatch_runner: warning: {w}");
    }
    for e in &delivery.errors {
        eprintln!("dispatch_runner: error: {e}");
    }
}

/// Prints the result in the form asked for; `output_written` says whether `-o` holds the full one.
fn print_result(args: &RunArgs, result: &RunResult, output_written: bool) {
    match args.result_form {
        ResultForm::Full => print_streamed(&result.redacted()),
        ResultForm::Compact => match compact_result(args, result, output_written) {
            Ok(doc) => print_json(&doc),
            Err(e) => eprintln!("dispatch_runner: error: cannot read the run's results back: {e}"),
        },
    }
}

fn compact_result(
    args: &RunArgs,
    result: &RunResult,
    output_written: bool,
) -> Result<crate::reporter::compact::CompactResult, String> {
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let context = CompactContext {
        tails: TailLimits {
            lines: args.tail_lines,
            bytes: args.tail_bytes,
        },
        output_file: args
            .output_file
            .as_ref()
            .filter(|_| output_written)
            .map(path),
        input_file: args.input.input_file.as_ref().map(path),
        rerun_command: true,
    };
    crate::reporter::compact::compact(result, context)
}

fn finish(args: &RunArgs, report: &crate::RunReport, delivery: &Delivery) -> u8 {
    let result = &report.result;
    warn(delivery);
    if let Some(path) = &args.output_file
        && let Err(e) = write_json_atomic(path, &result.redacted())
    {
        print_result(args, result, false);
        eprintln!(
            "dispatch_runner: cannot write output file '{}': {e}",
            path.display()
        );
        return EXIT_RUNNER;
    }
    print_result(args, result, true);
    if !args.quiet {
        let s = &result.summary;
        let cached = if s.cached > 0 {
            format!(" ({} from the cache)", s.cached)
        } else {
            String::new()
        };
        let files = if s.files.is_empty() {
            String::new()
        } else {
            format!(
                "; {} file{} read, {} written",
                s.files.read,
                if s.files.read == 1 { "" } else { "s" },
                s.files.written
            )
        };
        eprintln!(
            "dispatch_runner: {} tasks: {} succeeded{cached}, {} failed, {} timed out, {} skipped, {} cancelled in {:.1}s{files}; trace: {}",
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
        return EXIT_RUNNER;
    }
    run_exit_code(report)
}

fn report(args: &ReportArgs) -> u8 {
    let plan = args.plan();
    let bad_input = |message: String| {
        eprintln!("dispatch_runner: {message}");
        print_json(&json!({"status": "invalid", "errors": [{"path": "", "message": message}]}));
        EXIT_INVALID
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
        EXIT_OK
    } else {
        let errors: Vec<_> = delivery
            .errors
            .iter()
            .map(|m| json!({"path": "", "message": m}))
            .collect();
        print_json(&json!({"status": "error", "errors": errors, "files": written}));
        EXIT_RUNNER
    }
}

fn runner_error(message: &str, result: Option<&RunResult>) -> u8 {
    eprintln!("dispatch_runner: error: {message}");
    print_json_value(error_document(message, result));
    EXIT_RUNNER
}

/// `prune`: the trace retention rule (flags over the configuration file) applied on demand.
fn prune(config: &Config, args: &crate::cli::PruneArgs) -> u8 {
    let (file, env) = base_layers(config);
    let dir = args
        .trace_dir
        .clone()
        .unwrap_or_else(|| RunSettings::resolve(&[&file, &env]).trace_dir);
    let rule = config
        .file
        .trace_retention
        .overlay(&crate::retention::Retention {
            max_age_days: args.max_age_days,
            max_count: args.max_count,
            max_bytes: args.max_bytes,
        });
    if !rule.is_set() {
        return invalid(vec![Issue::new(
            "",
            "nothing to prune by: give --max-age-days, --max-count or --max-bytes, or set trace_retention in the configuration file",
        )]);
    }
    let mut pruned = match crate::retention::plan(&dir, &rule, std::time::SystemTime::now(), None) {
        Ok(p) => p,
        Err(e) => {
            return runner_error(
                &format!("cannot read trace directory '{}': {e}", dir.display()),
                None,
            );
        }
    };
    if !args.dry_run {
        crate::retention::apply(&mut pruned);
    }
    for e in &pruned.errors {
        eprintln!("dispatch_runner: warning: {e}");
    }
    eprintln!(
        "dispatch_runner: {} {} runs ({} bytes) from '{}'; kept {} finished and {} unfinished",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        pruned.removed.len(),
        pruned.removed_bytes,
        dir.display(),
        pruned.kept_runs,
        pruned.kept_unfinished.len()
    );
    let mut doc = serde_json::to_value(&pruned).expect("serializable");
    doc["status"] = if args.dry_run { "dry_run" } else { "pruned" }.into();
    doc["trace_dir"] = dir.display().to_string().into();
    print_json_value(doc);
    EXIT_OK
}

fn serve(config: &Config, args: ServeArgs) -> u8 {
    use crate::server::{ServerOptions, TOKEN_ENV};
    let (file, env) = base_layers(config);
    let trace_dir = args
        .trace_dir
        .clone()
        .unwrap_or_else(|| RunSettings::resolve(&[&file, &env]).trace_dir);
    // A token of only blanks would be a guessable secret: treat it as none (loopback only).
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if let Some(t) = &token {
        crate::redact::register_secret(t);
    }
    let services = match services(config, None) {
        Ok(s) => Arc::new(s),
        Err(issue) => return runner_error(&issue.message, None),
    };
    let limits = args.limits();
    let redis_args = RunArgs {
        redis: args.redis.clone(),
        ..RunArgs::default()
    };
    let redis = match redis_options(config, &redis_args) {
        Ok(r) => r,
        Err(message) => return runner_error(&message, None),
    };
    let options = ServerOptions {
        redis,
        listen: args.listen,
        token,
        max_body_bytes: args.max_body_bytes,
        max_concurrent_runs: args.max_concurrent_runs as usize,
        shutdown_grace: std::time::Duration::from_secs_f64(args.shutdown_grace_seconds),
        header_read_timeout: std::time::Duration::from_secs_f64(args.header_read_timeout_seconds),
        body_read_timeout: std::time::Duration::from_secs_f64(args.body_read_timeout_seconds),
        allowed_hosts: args.allow_host.clone(),
        base_layers: vec![file, env],
        agents: config.file.agents.clone(),
        trace_dir,
        intake: Intake::new(limits, &services),
        services,
        stores: config.stores(None, false, false),
    };
    with_runtime(|mut rx| async move {
        let shutdown = async move { rx.recv().await.unwrap_or(Interrupt::Sigterm) };
        let announce = |addr| eprintln!("dispatch_runner: listening on http://{addr}");
        match crate::server::serve(options, shutdown, announce).await {
            Ok(()) => {
                eprintln!("dispatch_runner: server stopped");
                EXIT_OK
            }
            Err(e) => runner_error(&e.to_string(), None),
        }
    })
}

/// `mcp-server`: the tools run batches as `serve` does (the server's trace folder and limits).
fn mcp_server(config: &Config, args: McpServerArgs) -> u8 {
    use crate::mcp::server::{DispatchServer, HttpOptions, McpServerOptions};
    let (file, env) = base_layers(config);
    let trace_dir = args
        .trace_dir
        .clone()
        .unwrap_or_else(|| RunSettings::resolve(&[&file, &env]).trace_dir);
    let token = std::env::var(crate::server::TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty() && args.listen.is_some());
    if let Some(t) = &token {
        crate::redact::register_secret(t);
    }
    let services = match services(config, args.workspace.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(issue) => return runner_error(&issue.message, None),
    };
    let server = DispatchServer::new(McpServerOptions {
        base_layers: vec![file, env],
        overrides: BatchConfig::default(),
        agents: config.file.agents.clone(),
        trace_dir,
        intake: Intake::new(args.limits(), &services),
        services,
        max_concurrent_runs: args.max_concurrent_runs as usize,
        max_workers: args.max_workers.map(|n| n as usize),
        stores: config.stores(None, false, false),
        confine_trace_files: args.listen.is_some(),
    });
    with_runtime(|mut rx| async move {
        let shutdown = async move { rx.recv().await.unwrap_or(Interrupt::Sigterm) };
        let outcome = match args.listen {
            None => crate::mcp::server::serve_stdio(server, shutdown).await,
            Some(listen) => {
                let options = HttpOptions {
                    listen,
                    token,
                    allowed_hosts: args.allow_host.clone(),
                    max_body_bytes: args.max_input_bytes,
                    header_read_timeout: std::time::Duration::from_secs(10),
                };
                let announce = |addr| eprintln!("dispatch_runner: listening on http://{addr}/mcp");
                crate::mcp::server::serve_http(server, options, shutdown, announce)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match outcome {
            Ok(()) => EXIT_OK,
            // stdout may be the protocol's: the message goes to stderr only.
            Err(message) => {
                eprintln!("dispatch_runner: error: {message}");
                EXIT_RUNNER
            }
        }
    })
}

/// Runs `body` on a multi-threaded runtime with SIGINT and SIGTERM arriving as interrupts.
fn with_runtime<F: Future<Output = u8>>(body: impl FnOnce(mpsc::Receiver<Interrupt>) -> F) -> u8 {
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => return runner_error(&format!("cannot start the async runtime: {e}"), None),
    };
    let code = runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(4);
        if let Err(e) = crate::signal::forward(tx) {
            return runner_error(&format!("cannot install signal handlers: {e}"), None);
        }
        body(rx).await
    });
    // Dropping a runtime waits for every blocking-pool thread; one stuck in a system call must
    // not keep a finished (or interrupted) run from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake() -> Intake {
        Intake {
            limits: Limits {
                max_input_bytes: 200,
                ..Limits::default()
            },
            mcp_servers: ["archon".to_string()].into(),
            llm: Default::default(),
        }
    }

    const BATCH: &str =
        r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}}]}"#;

    #[test]
    fn a_byte_order_mark_is_skipped_and_bad_utf8_named() {
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(BATCH.as_bytes());
        assert!(intake().check(bytes, "stdin").is_ok());
        let issues = intake()
            .check(b"{\"tasks\": \xff}".to_vec(), "request body")
            .unwrap_err();
        assert_eq!(
            issues[0].message,
            "request body is not UTF-8 text (invalid byte at offset 10)"
        );
    }

    #[test]
    fn size_limit_and_mcp_server_names_are_checked() {
        let issues = intake().check(vec![b' '; 201], "stdin").unwrap_err();
        assert!(
            issues[0]
                .message
                .starts_with("stdin is larger than the input limit of 200")
        );
        let unknown = r#"{"tasks": [{"task_id": "m", "agent": "mcp", "input_data": {"server": "nope", "tool": "t"}}]}"#;
        let issues = intake()
            .check(unknown.as_bytes().to_vec(), "x")
            .unwrap_err();
        assert_eq!(issues[0].path, "/tasks/0/input_data/server");
    }
}
