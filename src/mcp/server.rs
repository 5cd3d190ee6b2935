//! `dispatch_runner mcp-server`: the runner as a Model Context Protocol server, so an AI agent
//! calls it as a tool (typed input, structured result, live progress) instead of writing a batch
//! to a file and running the binary in a shell.
//!
//! The protocol is `rmcp`'s (stdio, or Streamable HTTP behind the same Host/Origin/token checks as
//! `serve`); this module only says what the tools do, and every tool goes through the front end
//! the command line and `serve` use: [`Intake`] reads and checks a batch (the same bytes get the
//! same verdict), [`crate::frontend::settings`] layers the settings, [`crate::run`] runs it.
//!
//! Runs belong to the server: each is a task of its own holding a run slot, so a handler that
//! rmcp drops does not stop a run half-way. A client's cancellation (or the session ending, or
//! SIGTERM) interrupts the run as `DELETE /v1/runs/{id}` does: running process groups are
//! terminated, the trace is written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::batch::BatchConfig;
use crate::batch::schema::batch_schema;
use crate::config::AgentSection;
use crate::events::{Event, EventKind, EventSink};
use crate::frontend::{Intake, ValidDocument, error_document, invalid_document};
use crate::reporter::RunResult;
use crate::reporter::compact::{CompactContext, compact};
use crate::reporter::recorder::RunRecord;
use crate::runner::{Interrupt, RunOptions, RunnerError, new_run_id};
use crate::services::Services;
use crate::{Issue, ValidatedBatch};

/// What the server runs batches with; built by the front end from flags and configuration.
#[derive(Debug, Clone)]
pub struct McpServerOptions {
    /// Layers below each batch's own config (file, environment), lowest first.
    pub base_layers: Vec<BatchConfig>,
    /// Flags above the batch's config (`--max-workers`, ...).
    pub overrides: BatchConfig,
    pub agents: BTreeMap<String, AgentSection>,
    /// Every run's trace goes here, whatever the batch says, so `get_run` finds it.
    pub trace_dir: PathBuf,
    /// How batches are read and checked: the same as the command line.
    pub intake: Intake,
    pub services: Arc<Services>,
    pub max_concurrent_runs: usize,
    /// Most tasks running at once in one run; a batch may ask for fewer, never more.
    pub max_workers: Option<usize>,
    /// The journal's fsync, result cache, run history and retention, as `run` uses them.
    pub stores: crate::runner::StoreOptions,
    /// `rerun_failed` takes a trace file only from the trace folder (a remote client must not
    /// make the server read files of its choosing).
    pub confine_trace_files: bool,
}

/// The tool handler; cheap to clone (one per HTTP session, all sharing the runs).
#[derive(Clone)]
pub struct DispatchServer {
    inner: Arc<Inner>,
}

struct Inner {
    options: McpServerOptions,
    slots: Arc<Semaphore>,
    /// Runs in progress: done and total tasks, for `get_run`.
    running: Mutex<HashMap<String, (usize, usize)>>,
    /// Set on shutdown: every run in progress is interrupted.
    stopping: watch::Sender<bool>,
}

impl DispatchServer {
    pub fn new(options: McpServerOptions) -> Self {
        DispatchServer {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(options.max_concurrent_runs.max(1))),
                options,
                running: Mutex::new(HashMap::new()),
                stopping: watch::Sender::new(false),
            }),
        }
    }

    /// Interrupts every run in progress and waits until each has written its trace.
    pub async fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
        let all = self.inner.options.max_concurrent_runs.max(1) as u32;
        let _ = self.inner.slots.acquire_many(all).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const INSTRUCTIONS: &str = "\
dispatch_runner runs a batch of tasks (shell commands without a shell, MCP tool calls, code \
generation) in parallel, with dependencies, timeouts, retries and circuit breakers, and answers \
one JSON result. Use it when a job splits into several commands that can run side by side or wait \
on each other (lint + tests + build, test shards, a fan-out and a join); not for one quick \
command. Call `schema` once to learn the batch format, `validate` before a large batch, then \
`dispatch`. Read a result by `status` (success, partial, failure) and, for each task that did \
not succeed, its `error` and the last lines of its output; `rerun_failed` runs only what failed.";

const DISPATCH_DESCRIPTION: &str = "\
Run a batch of tasks in parallel and answer the result. The batch is checked as a whole first \
(an invalid one runs nothing and answers the errors with JSON Pointers). Tasks: {task_id, agent: \
command|mcp|coder|debug, input_data, dependencies?, timeout_seconds?, retries?}; a `command` task \
runs argv without a shell (use [\"sh\",\"-c\",\"...\"] for one); a task may use an upstream \
task's output as {{tasks.<id>.output.stdout}} when that task is in its dependencies. Progress \
notifications report tasks done/total. The answer is compact by default: status, summary, the \
trace file and, for each task that did not succeed, its error and the last lines of its stdout \
and stderr (`result: \"full\"` for every task's whole output). Cancelling the call cancels the \
run: running processes are killed, the trace is written. The server's limits (workers, output \
size, batch size) cap the batch's own config.";

const VALIDATE_DESCRIPTION: &str = "\
Check a batch without running it: the plan (task count, dependency levels, the longest \
dependency chain), or every problem with the JSON Pointer of where it is. Cheap; do it before a \
large batch.";

const SCHEMA_DESCRIPTION: &str = "\
The JSON Schema of the batch format (tasks, agents and their input_data, config). Call it once \
before writing a batch.";

const RERUN_DESCRIPTION: &str = "\
Run again only the tasks of a finished run that did not succeed, and their dependents, reusing \
the outputs of the tasks that succeeded. Give the run's `run_id` (or its `trace_file`); give \
`batch` to change the tasks being rerun (the tasks being reused must be unchanged, and a batch \
with secret values must be given again, since the trace holds them redacted).";

const GET_RUN_DESCRIPTION: &str = "\
A run's result by its run_id: compact by default, `result: \"full\"` for every task's output. A \
run still in progress answers `state: running` with tasks done and total.";

fn result_form_property() -> Value {
    json!({
        "type": "string",
        "enum": ["compact", "full"],
        "default": "compact",
        "description": "compact: status, summary, and for each task that did not succeed its error and the last lines of its output; full: every task with its whole output"
    })
}

/// The batch schema as a property of a tool's input: its definitions move to the input schema's
/// root, where its `#/$defs/...` references then point.
fn with_batch(mut properties: serde_json::Map<String, Value>, required: &[&str]) -> JsonObject {
    let mut batch = batch_schema().clone();
    let defs = batch
        .as_object_mut()
        .and_then(|o| {
            o.remove("$schema");
            o.remove("$defs")
        })
        .unwrap_or_else(|| json!({}));
    if let Some(o) = batch.as_object_mut() {
        o.insert(
            "description".into(),
            json!("The batch: {\"tasks\": [...], \"config\"?: {...}} (see the `schema` tool)"),
        );
    }
    properties.insert("batch".into(), batch);
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "$defs": defs,
    });
    match schema {
        Value::Object(o) => o,
        _ => unreachable!("built as an object"),
    }
}

fn object(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(o) => Arc::new(o),
        _ => unreachable!("built as an object"),
    }
}

/// Every document we answer has a `status`; a schema that says no more stays true of all of them
/// (valid, invalid, error, success, partial, failure, running).
fn status_output_schema() -> Arc<JsonObject> {
    object(json!({
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    }))
}

fn tools() -> Vec<Tool> {
    let mut dispatch_props = serde_json::Map::new();
    dispatch_props.insert("result".into(), result_form_property());
    let read_only = ToolAnnotations::new().read_only(true);
    vec![
        Tool::new("dispatch", DISPATCH_DESCRIPTION, with_batch(dispatch_props, &["batch"]))
            .with_title("Run a batch of tasks in parallel")
            .with_raw_output_schema(status_output_schema())
            .with_annotations(
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .open_world(true),
            ),
        Tool::new(
            "validate",
            VALIDATE_DESCRIPTION,
            with_batch(serde_json::Map::new(), &["batch"]),
        )
        .with_title("Check a batch without running it")
        .with_raw_output_schema(status_output_schema())
        .with_annotations(read_only.clone()),
        Tool::new(
            "schema",
            SCHEMA_DESCRIPTION,
            object(json!({"type": "object", "properties": {}})),
        )
        .with_title("The batch format")
        .with_raw_output_schema(object(json!({"type": "object"})))
        .with_annotations(read_only.clone()),
        Tool::new(
            "rerun_failed",
            RERUN_DESCRIPTION,
            with_batch(
                {
                    let mut p = serde_json::Map::new();
                    p.insert(
                        "run_id".into(),
                        json!({"type": "string", "description": "The run to rerun (its trace is in the server's trace folder)"}),
                    );
                    p.insert(
                        "trace_file".into(),
                        json!({"type": "string", "description": "The trace file of the run, instead of run_id"}),
                    );
                    p.insert("result".into(), result_form_property());
                    p
                },
                &[],
            ),
        )
        .with_title("Rerun what failed")
        .with_raw_output_schema(status_output_schema())
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .open_world(true),
        ),
        Tool::new(
            "get_run",
            GET_RUN_DESCRIPTION,
            object(json!({
                "type": "object",
                "properties": {
                    "run_id": {"type": "string", "description": "The run's id, as `dispatch` answered it"},
                    "result": result_form_property(),
                },
                "required": ["run_id"],
            })),
        )
        .with_title("A run's result")
        .with_raw_output_schema(status_output_schema())
        .with_annotations(read_only),
    ]
}

/// The answer of a tool: the document as structured content (and as text, for clients that read
/// only that), redacted; `is_error` when nothing ran or the runner failed.
fn answer(mut doc: Value, is_error: bool) -> CallToolResult {
    crate::redact::redact_json(&mut doc);
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let mut result = if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    result.structured_content = Some(doc);
    result
}

fn invalid(issues: &[Issue]) -> CallToolResult {
    answer(invalid_document(issues), true)
}

fn bad_argument(pointer: &str, message: &str) -> CallToolResult {
    invalid(&[Issue::new(pointer, message)])
}

/// `compact` (the default) or `full`.
fn full_form(args: &JsonObject) -> Result<bool, Issue> {
    match args.get("result") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "compact" => Ok(false),
        Some(Value::String(s)) if s == "full" => Ok(true),
        Some(_) => Err(Issue::new(
            "/result",
            "result must be \"compact\" or \"full\"",
        )),
    }
}

/// The batch argument as the bytes the command line would read: an object is written out as
/// JSON, a string (the batch as JSON text) is taken as it is.
fn batch_bytes(args: &JsonObject) -> Result<Option<Vec<u8>>, Issue> {
    match args.get("batch") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone().into_bytes())),
        Some(v @ Value::Object(_)) => Ok(Some(serde_json::to_vec(v).unwrap_or_default())),
        Some(_) => Err(Issue::new(
            "/batch",
            "batch must be an object ({\"tasks\": [...]}) or its JSON text",
        )),
    }
}

/// Counts finished tasks and hands each to the progress forwarder. A sink must not block the
/// run, so it only sends on an unbounded channel.
struct ProgressSink {
    total: usize,
    done: usize,
    tx: mpsc::UnboundedSender<(usize, usize, String)>,
    inner: Arc<Inner>,
    run_id: String,
}

impl EventSink for ProgressSink {
    fn on_event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { tasks, .. } => self.total = tasks.len(),
            EventKind::TaskFinished {
                task_id, status, ..
            } => {
                self.done += 1;
                lock(&self.inner.running).insert(self.run_id.clone(), (self.done, self.total));
                let message = format!(
                    "{}: {} ({}/{})",
                    crate::redact::redact_text(task_id),
                    status.as_str(),
                    self.done,
                    self.total
                );
                let _ = self.tx.send((self.done, self.total, message));
            }
            _ => {}
        }
    }
}

impl Inner {
    fn check(&self, bytes: Vec<u8>) -> Result<ValidatedBatch, Vec<Issue>> {
        self.options.intake.check(bytes, "batch")
    }

    /// The trace file `rerun_failed` names, by run id or path.
    fn trace_of(&self, args: &JsonObject) -> Result<PathBuf, Issue> {
        let run_id = args.get("run_id").and_then(Value::as_str);
        let file = args.get("trace_file").and_then(Value::as_str);
        match (run_id, file) {
            (Some(id), None) => {
                if !well_formed(id) {
                    return Err(Issue::new("/run_id", "no such run"));
                }
                Ok(crate::reporter::trace::trace_path(
                    &self.options.trace_dir,
                    id,
                ))
            }
            (None, Some(file)) => {
                let path = PathBuf::from(file);
                if self.options.confine_trace_files && !inside(&path, &self.options.trace_dir) {
                    return Err(Issue::new(
                        "/trace_file",
                        "over HTTP, the trace file must be in the server's trace folder (or give run_id)",
                    ));
                }
                Ok(path)
            }
            _ => Err(Issue::new(
                "",
                "give either run_id or trace_file (a string)",
            )),
        }
    }

    /// Runs a checked batch to its end and answers the result; progress goes to `context`'s
    /// progress token, cancellation comes from its token.
    async fn run(
        self: &Arc<Self>,
        validated: ValidatedBatch,
        reuse: Option<crate::rerun::Reuse>,
        full: bool,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return answer(
                error_document(
                    &format!(
                        "too many runs in progress (--max-concurrent-runs {}); retry later",
                        self.options.max_concurrent_runs
                    ),
                    None,
                ),
                true,
            );
        };
        if *self.stopping.borrow() {
            return answer(error_document("the server is shutting down", None), true);
        }
        let options = &self.options;
        let mut settings = crate::frontend::settings(
            &options.base_layers,
            &validated.batch.config,
            &options.overrides,
            &options.agents,
        );
        settings.trace_dir = options.trace_dir.clone();
        // The batch was checked against the cap; the configuration file is held to it here.
        settings.max_output_bytes = settings
            .max_output_bytes
            .min(options.intake.limits.max_output_bytes);
        if let Some(cap) = options.max_workers {
            settings.max_workers = settings.max_workers.min(cap);
        }
        let run_id = {
            let mut running = lock(&self.running);
            let id = std::iter::repeat_with(new_run_id)
                .find(|id| !running.contains_key(id))
                .expect("an endless supply of ids");
            running.insert(id.clone(), (0, validated.batch.tasks.len()));
            id
        };
        let (progress_tx, mut progress) = mpsc::unbounded_channel();
        let (interrupts, interrupt_rx) = mpsc::channel(2);
        let mut run_options = RunOptions::new(settings);
        run_options.stores = options.stores.clone();
        run_options.run_id = Some(run_id.clone());
        run_options.sinks = vec![Box::new(ProgressSink {
            total: validated.batch.tasks.len(),
            done: 0,
            tx: progress_tx,
            inner: self.clone(),
            run_id: run_id.clone(),
        })];
        run_options.interrupts = Some(interrupt_rx);
        run_options.reuse = reuse;
        // MCP sessions of the `mcp` agent belong to one run (closed when it ends).
        let mut services = (*options.services).clone();
        services.mcp_pool = Arc::new(crate::mcp::McpPool::new());
        run_options.services = Arc::new(services);

        // The run is a task of its own: it ends (trace written, slot freed) however this
        // handler ends. It watches the call's cancellation and the server's shutdown itself.
        let (done_tx, done) = oneshot::channel();
        let cancelled = context.ct.clone();
        let mut stopping = self.stopping.subscribe();
        let inner = self.clone();
        let id = run_id.clone();
        tokio::spawn(async move {
            let run = crate::run(validated, run_options);
            let mut run = std::pin::pin!(run);
            let outcome = tokio::select! {
                outcome = &mut run => outcome,
                () = async {
                    tokio::select! {
                        () = cancelled.cancelled() => {}
                        _ = stopping.wait_for(|stop| *stop) => {}
                    }
                } => {
                    tracing::info!("run {id}: cancelled by the client or shutdown");
                    let _ = interrupts.send(Interrupt::Request).await;
                    run.await
                }
            };
            lock(&inner.running).remove(&id);
            let _ = done_tx.send(outcome);
            drop(slot);
        });

        let token = context.meta.get_progress_token();
        let mut done = std::pin::pin!(done);
        let outcome = loop {
            tokio::select! {
                biased;
                Some((n, total, message)) = progress.recv() => {
                    if let Some(token) = &token {
                        let param = ProgressNotificationParam::new(token.clone(), n as f64)
                            .with_total(total as f64)
                            .with_message(message);
                        let _ = context.peer.notify_progress(param).await;
                    }
                }
                outcome = &mut done => break outcome,
            }
        };
        match outcome {
            Ok(outcome) => finished(outcome, full),
            Err(_) => answer(error_document("the run ended without a result", None), true),
        }
    }
}

/// The answer for a run that ended: its result (compact or full), or why the runner failed.
fn finished(outcome: Result<crate::RunReport, RunnerError>, full: bool) -> CallToolResult {
    match outcome {
        Ok(report) => match result_document(&report.result, full) {
            Ok(doc) => answer(doc, false),
            Err(e) => answer(
                error_document(&format!("cannot read the run's results back: {e}"), None),
                true,
            ),
        },
        Err(e @ (RunnerError::TraceDir { .. } | RunnerError::Executor(_))) => {
            answer(error_document(&e.to_string(), None), true)
        }
        Err(RunnerError::TraceWrite {
            path,
            source,
            report,
        }) => {
            let message = format!("cannot write trace file '{}': {source}", path.display());
            let mut doc = error_document(&message, None);
            if let Ok(result) = result_document(&report.result, full) {
                doc["result"] = result;
            }
            answer(doc, true)
        }
    }
}

fn result_document(result: &RunResult, full: bool) -> Result<Value, String> {
    if full {
        serde_json::to_value(result.redacted()).map_err(|e| e.to_string())
    } else {
        compact(result, CompactContext::default())
            .and_then(|c| serde_json::to_value(c).map_err(|e| e.to_string()))
    }
}

/// Run ids are ours: anything else (a path, `..`) is simply not a run.
fn well_formed(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Whether `path` is a file inside `dir` (both resolved, so `..` and links cannot leave it).
fn inside(path: &Path, dir: &Path) -> bool {
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => false,
    }
}

impl DispatchServer {
    async fn validate(&self, args: JsonObject) -> CallToolResult {
        let bytes = match batch_bytes(&args) {
            Ok(Some(b)) => b,
            Ok(None) => return bad_argument("/batch", "batch is required"),
            Err(issue) => return invalid(&[issue]),
        };
        let inner = self.inner.clone();
        // Checking a large batch takes CPU time: not on the threads that serve the protocol.
        let checked = tokio::task::spawn_blocking(move || {
            inner
                .check(bytes)
                .map(|v| serde_json::to_value(ValidDocument::of(&v.plan)).unwrap_or_default())
        })
        .await;
        match checked {
            Ok(Ok(doc)) => answer(doc, false),
            Ok(Err(issues)) => invalid(&issues),
            Err(e) => answer(error_document(&e.to_string(), None), true),
        }
    }

    async fn dispatch(
        &self,
        args: JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let full = match full_form(&args) {
            Ok(f) => f,
            Err(issue) => return invalid(&[issue]),
        };
        let bytes = match batch_bytes(&args) {
            Ok(Some(b)) => b,
            Ok(None) => return bad_argument("/batch", "batch is required"),
            Err(issue) => return invalid(&[issue]),
        };
        let inner = self.inner.clone();
        let checked = tokio::task::spawn_blocking(move || inner.check(bytes)).await;
        match checked {
            Ok(Ok(validated)) => self.inner.run(validated, None, full, context).await,
            Ok(Err(issues)) => invalid(&issues),
            Err(e) => answer(error_document(&e.to_string(), None), true),
        }
    }

    async fn rerun_failed(
        &self,
        args: JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let full = match full_form(&args) {
            Ok(f) => f,
            Err(issue) => return invalid(&[issue]),
        };
        let trace = match self.inner.trace_of(&args) {
            Ok(t) => t,
            Err(issue) => return invalid(&[issue]),
        };
        let bytes = match batch_bytes(&args) {
            Ok(b) => b,
            Err(issue) => return invalid(&[issue]),
        };
        let inner = self.inner.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let new_batch = bytes.map(|b| inner.check(b)).transpose()?;
            crate::rerun::prepare(&trace, new_batch)
        })
        .await;
        match prepared {
            Ok(Ok((validated, reuse))) => {
                self.inner.run(validated, Some(reuse), full, context).await
            }
            Ok(Err(issues)) => invalid(&issues),
            Err(e) => answer(error_document(&e.to_string(), None), true),
        }
    }

    async fn get_run(&self, args: JsonObject) -> CallToolResult {
        let full = match full_form(&args) {
            Ok(f) => f,
            Err(issue) => return invalid(&[issue]),
        };
        let Some(run_id) = args.get("run_id").and_then(Value::as_str) else {
            return bad_argument("/run_id", "run_id (a string) is required");
        };
        if !well_formed(run_id) {
            return bad_argument("/run_id", "no such run");
        }
        if let Some(&(done, total)) = lock(&self.inner.running).get(run_id) {
            return answer(
                json!({"status": "running", "run_id": run_id, "done": done, "total": total}),
                false,
            );
        }
        let path = crate::reporter::trace::trace_path(&self.inner.options.trace_dir, run_id);
        let read = tokio::task::spawn_blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err("no such run".to_string());
                }
                Err(e) => return Err(format!("cannot read the trace: {e}")),
            };
            let record: RunRecord = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the trace file is unreadable: {e}"))?;
            result_document(&RunResult::from_record(&record, &path), full)
        })
        .await;
        match read {
            Ok(Ok(doc)) => answer(doc, false),
            Ok(Err(message)) if message == "no such run" => bad_argument("/run_id", &message),
            Ok(Err(message)) => answer(error_document(&message, None), true),
            Err(e) => answer(error_document(&e.to_string(), None), true),
        }
    }
}

impl ServerHandler for DispatchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("dispatch_runner", env!("CARGO_PKG_VERSION"))
                    .with_title("dispatch_runner"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "validate" => self.validate(args).await,
            "dispatch" => self.dispatch(args, &context).await,
            "schema" => answer(batch_schema().clone(), false),
            "rerun_failed" => self.rerun_failed(args, &context).await,
            "get_run" => self.get_run(args).await,
            other => {
                return Err(ErrorData::invalid_params(
                    format!(
                        "no tool named '{}'",
                        crate::redact::redact_text(&other.chars().take(100).collect::<String>())
                    ),
                    None,
                ));
            }
        };
        Ok(result.into())
    }
}

/// Serves one client over stdin/stdout until it goes away (or `shutdown` resolves), then lets
/// the runs in progress end (interrupted: their traces are written).
pub async fn serve_stdio(
    server: DispatchServer,
    shutdown: impl Future<Output = Interrupt>,
) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = server
        .clone()
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(|e| format!("the MCP session did not start: {e}"))?;
    let cancel = running.cancellation_token();
    tokio::select! {
        ended = running.waiting() => {
            if let Err(e) = ended {
                tracing::warn!("the MCP session ended: {e}");
            }
        }
        _ = shutdown => cancel.cancel(),
    }
    server.shutdown().await;
    Ok(())
}

/// How `mcp-server --listen` serves: the endpoint is `/mcp`.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: std::net::SocketAddr,
    /// `None` means no authentication, which is only allowed on loopback.
    pub token: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub header_read_timeout: std::time::Duration,
}

/// Serves MCP over Streamable HTTP at `/mcp` until `shutdown` resolves. Every request passes
/// `serve`'s checks first (Host, Origin, bearer token, content type, declared size).
pub async fn serve_http(
    server: DispatchServer,
    options: HttpOptions,
    shutdown: impl Future<Output = Interrupt>,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), crate::server::ServeError> {
    use crate::server::{HostPolicy, admit, bind_protected, json_errors, serve_connection};
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };

    let listener = bind_protected(options.listen, options.token.is_some()).await?;
    let local = listener.local_addr()?;
    // Host and Origin are checked by `admit`, with `serve`'s rules (listen address, loopback
    // names, --allow-host); rmcp's own loopback-only list would refuse the listen address.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_max_request_body_bytes(options.max_body_bytes);
    let sessions_closed = config.cancellation_token.clone();
    let handler = server.clone();
    let service: StreamableHttpService<DispatchServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(handler.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
    struct Gate {
        hosts: HostPolicy,
        token: Option<String>,
        max_body_bytes: usize,
    }
    let gate = Arc::new(Gate {
        hosts: HostPolicy::new(local, &options.allowed_hosts),
        token: options.token.clone(),
        max_body_bytes: options.max_body_bytes,
    });
    async fn guard(
        axum::extract::State(gate): axum::extract::State<Arc<Gate>>,
        request: Request,
        next: Next,
    ) -> axum::response::Response {
        match admit(
            &gate.hosts,
            gate.token.as_deref(),
            gate.max_body_bytes,
            &request,
        ) {
            None => next.run(request).await,
            Some(refused) => refused,
        }
    }
    let app = axum::Router::new()
        .route_service("/mcp", service)
        .fallback(|| async {
            let body = error_document("no such endpoint (the MCP endpoint is /mcp)", None);
            (axum::http::StatusCode::NOT_FOUND, axum::Json(body))
        })
        .layer(middleware::from_fn_with_state(gate, guard))
        .layer(middleware::map_response(json_errors));
    on_listening(local);

    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(
                        stream,
                        app.clone(),
                        options.header_read_timeout,
                        close_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Runs first (their traces are written), then the sessions and their event streams.
    server.shutdown().await;
    sessions_closed.cancel();
    let _ = close_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
