//! The `debug` agent: analyses a failure from the affected files and error traces, and ranks a
//! root cause from the evidence.
//!
//! Offline (`static`, the default) it locates syntax errors with tree-sitter (Python, Rust,
//! JavaScript), maps Python tracebacks, Rust panics and JavaScript stack traces to workspace files
//! and lines with source context, and at `standard` depth and above checks well-known bug
//! patterns. At `deep` depth a configured model adds its own analysis; without one the output
//! says so.
//!
//! Confidence of the root cause: a syntax error in an affected file 0.9; the innermost
//! workspace frame of a trace that meets a finding (same file and line) 0.85; the
//! innermost workspace frame alone 0.7; a trace with no workspace frame 0.4; bug patterns alone
//! 0.3; nothing 0.1.

pub mod rules;
pub use crate::syntax;
pub mod traces;

use crate::passed::Passed;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::agents::AgentContext;
use crate::llm::{self, Conversation, ModelBackend, Usage};
use crate::task_error::{ErrorKind, Failure, TaskError};
use crate::workspace::Workspace;

use syntax::Lang;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisDepth {
    /// Syntax errors and traces only.
    Quick,
    /// Plus bug patterns.
    #[default]
    Standard,
    /// Plus a model's analysis, when a model backend is configured.
    Deep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DebugBackend {
    /// Offline analysis only.
    Static,
    Anthropic,
    Openai,
    Command,
}

impl DebugBackend {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "static" => Some(DebugBackend::Static),
            "anthropic" => Some(DebugBackend::Anthropic),
            "openai" => Some(DebugBackend::Openai),
            "command" => Some(DebugBackend::Command),
            _ => None,
        }
    }

    fn model(self) -> Option<ModelBackend> {
        match self {
            DebugBackend::Static => None,
            DebugBackend::Anthropic => Some(ModelBackend::Anthropic),
            DebugBackend::Openai => Some(ModelBackend::Openai),
            DebugBackend::Command => Some(ModelBackend::Command),
        }
    }
}

/// Input of the `debug` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebugInput {
    /// What goes wrong.
    #[schemars(length(min = 1))]
    pub problem_description: String,
    /// Files to analyse, inside the workspace; or a typed reference (`{"$output": ...}`) to
    /// a list of them in another task's output.
    #[schemars(schema_with = "crate::passed::non_empty_strings")]
    pub affected_files: Passed<Vec<String>>,
    /// Stack traces, tracebacks or panic messages, one per string; or a typed reference.
    #[serde(default, skip_serializing_if = "Passed::is_empty_list")]
    pub error_traces: Passed<Vec<String>>,
    #[serde(default)]
    pub analysis_depth: AnalysisDepth,
    /// Your guess; the output says whether the evidence supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypothesis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<DebugBackend>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// `error`, `warning` or `info`.
    pub severity: String,
    pub rule: String,
    pub message: String,
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TraceFrame {
    /// Which of `error_traces` (from 0).
    pub trace: usize,
    /// As printed in the trace.
    pub file: String,
    /// The workspace file it maps to, if any.
    pub workspace_file: Option<String>,
    pub line: usize,
    pub column: Option<usize>,
    pub function: Option<String>,
    pub in_workspace: bool,
    pub snippet: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TraceError {
    pub trace: usize,
    pub language: String,
    pub error_type: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RootCause {
    pub description: String,
    /// 0 to 1; see the agent documentation for the scale.
    pub confidence: f64,
    pub evidence: Vec<String>,
    pub file: Option<String>,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HypothesisCheck {
    pub hypothesis: String,
    pub supported: bool,
    pub reason: String,
}

/// Output of the `debug` agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DebugOutput {
    pub summary: String,
    pub findings: Vec<Finding>,
    pub errors: Vec<TraceError>,
    pub trace_frames: Vec<TraceFrame>,
    pub root_cause: RootCause,
    pub suggested_fixes: Vec<String>,
    pub files_analyzed: Vec<String>,
    pub analysis_depth: AnalysisDepth,
    pub backend: String,
    pub hypothesis_check: Option<HypothesisCheck>,
    /// The model's analysis (`deep` with a model backend).
    pub model_analysis: Option<String>,
    /// Plain remarks about the analysis itself (e.g. no model configured for `deep`).
    pub notes: Vec<String>,
    pub usage: Option<Usage>,
}

struct File {
    display: String,
    lang: Option<Lang>,
    text: String,
}

/// The model this task will call, if any (for its circuit breaker): only a deep analysis with a
/// model backend calls one.
pub fn model_backend(input: &DebugInput, llm: &crate::llm::LlmConfig) -> Option<ModelBackend> {
    if input.analysis_depth != AnalysisDepth::Deep {
        return None;
    }
    match input.backend {
        Some(b) => b.model(),
        None => DebugBackend::parse(llm.agents.debug.as_deref()?)?.model(),
    }
}

pub async fn run(input: DebugInput, ctx: &AgentContext) -> Result<DebugOutput, Failure> {
    let ws = super::coder::workspace(ctx)?;
    let backend = match input.backend {
        Some(b) => b,
        None => match ctx.services.llm.agents.debug.as_deref() {
            None => DebugBackend::Static,
            Some(name) => DebugBackend::parse(name).ok_or_else(|| {
                TaskError::permanent(
                    ErrorKind::InvalidInput,
                    format!("configured debug backend '{name}' is not one of static, anthropic, openai, command"),
                )
            })?,
        },
    };
    input.affected_files.value("affected_files")?;
    input.error_traces.value("error_traces")?;
    if input.affected_files.items().is_empty() {
        return Err(TaskError::permanent(
            ErrorKind::InvalidInput,
            "affected_files must name at least one file",
        )
        .into());
    }
    // Reading and parsing are blocking and can be slow (4 MiB per file): they run on the
    // blocking pool so this task's timeout and cancellation still bite. Dropping `guard` (the
    // task was abandoned) tells the analysis to stop at the next file.
    let guard = StopOnDrop::default();
    let stop = guard.0.clone();
    let ledger = ctx.files.clone();
    let (input, analysis) = crate::workspace::blocking(move || {
        let a = analyse(&input, &ws, &stop, &ledger);
        (input, a)
    })
    .await?;
    let Analysis {
        files,
        findings,
        errors,
        frames,
        root_cause,
        fixes,
        hypothesis_check,
        mut notes,
    } = analysis?;

    let mut model_analysis = None;
    let mut usage = None;
    match (input.analysis_depth, backend.model()) {
        (AnalysisDepth::Deep, Some(model)) => {
            let (text, u) = ask_model(model, &input, &files, &findings, &errors, &root_cause, ctx).await?;
            model_analysis = Some(text);
            usage = Some(u);
        }
        (AnalysisDepth::Deep, None) => notes.push(
            "deep analysis: no model backend is configured (set the task's 'backend' or the debug agent's default backend), so this is the static analysis only".into(),
        ),
        (_, Some(_)) => notes.push(format!(
            "backend '{}' is consulted only at analysis_depth 'deep'",
            backend_name(backend)
        )),
        _ => {}
    }

    let summary = format!(
        "{}: {} finding(s) in {} file(s), {} trace(s) parsed; most likely cause ({:.0}% confidence): {}",
        input.problem_description.lines().next().unwrap_or(""),
        findings.len(),
        files.len(),
        errors.len(),
        root_cause.confidence * 100.0,
        root_cause.description
    );
    Ok(DebugOutput {
        summary,
        findings,
        errors,
        trace_frames: frames,
        root_cause,
        suggested_fixes: fixes,
        files_analyzed: files.iter().map(|f| f.display.clone()).collect(),
        analysis_depth: input.analysis_depth,
        backend: backend_name(backend).into(),
        hypothesis_check,
        model_analysis,
        notes,
        usage,
    })
}

/// What the static analysis found, before any model is asked.
struct Analysis {
    files: Vec<File>,
    findings: Vec<Finding>,
    errors: Vec<TraceError>,
    frames: Vec<TraceFrame>,
    root_cause: RootCause,
    fixes: Vec<String>,
    hypothesis_check: Option<HypothesisCheck>,
    notes: Vec<String>,
}

/// Set when the task that started an analysis is dropped (timed out or cancelled).
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn stopped(stop: &AtomicBool) -> Result<(), TaskError> {
    if stop.load(Ordering::Relaxed) {
        return Err(TaskError::permanent(
            ErrorKind::Cancelled,
            "the analysis was abandoned",
        ));
    }
    Ok(())
}

/// Reads the affected files, parses them and the traces, and ranks a root cause; every file it
/// reads goes on `ledger`. Blocking.
fn analyse(
    input: &DebugInput,
    ws: &Workspace,
    stop: &AtomicBool,
    ledger: &crate::files::FileLedger,
) -> Result<Analysis, TaskError> {
    let cap = 4 * 1024 * 1024;
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for given in input.affected_files.items() {
        stopped(stop)?;
        let p = ws.resolve(given)?;
        let (text, cut) = ws.read_text(&p, cap)?;
        ledger.read(p.display.clone(), text.as_bytes());
        if cut {
            notes.push(format!("{}: only the first 4 MiB were analysed", p.display));
        }
        let lang = Lang::of_path(&p.display);
        if lang.is_none() {
            notes.push(format!(
                "{}: no grammar for this file type; only trace mapping applies",
                p.display
            ));
        }
        files.push(File {
            display: p.display,
            lang,
            text,
        });
    }

    let mut findings = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    for f in &files {
        stopped(stop)?;
        let Some(lang) = f.lang else { continue };
        let tree = syntax::parse(lang, &f.text);
        for e in syntax::syntax_errors(&tree, &f.text, 10) {
            findings.push(Finding {
                file: f.display.clone(),
                line: e.line,
                column: e.column,
                severity: "error".into(),
                rule: "syntax_error".into(),
                message: e.message,
                snippet: syntax::snippet(&f.text, e.line, 2, 2),
            });
        }
        if input.analysis_depth != AnalysisDepth::Quick {
            for h in rules::check(lang, &tree, &f.text) {
                findings.push(Finding {
                    file: f.display.clone(),
                    line: h.line,
                    column: h.column,
                    severity: h.severity.into(),
                    rule: h.rule.into(),
                    message: h.message,
                    snippet: syntax::snippet(&f.text, h.line, 1, 1),
                });
                push_unique(&mut fixes, format!("{}:{}: {}", f.display, h.line, h.fix));
            }
        }
    }

    let mut errors = Vec::new();
    let mut frames = Vec::new();
    for (i, text) in input.error_traces.items().iter().enumerate() {
        stopped(stop)?;
        let Some(t) = traces::parse(text) else {
            notes.push(format!(
                "error_traces[{i}] is not a Python traceback, Rust panic or JavaScript stack trace"
            ));
            continue;
        };
        errors.push(TraceError {
            trace: i,
            language: t.language.as_str().into(),
            error_type: t.error_type.clone(),
            message: t.message.clone(),
        });
        for raw in t.frames {
            let mapped = map_frame(ws, &files, &raw.file);
            let snippet = mapped.as_ref().and_then(|m| {
                let text = files
                    .iter()
                    .find(|f| &f.display == m)
                    .map(|f| f.text.clone())
                    .or_else(|| {
                        // A workspace file a trace points at, opened for its snippet.
                        let p = ws.resolve(m).ok()?;
                        let (t, _) = ws.read_text(&p, cap).ok()?;
                        ledger.read(p.display, t.as_bytes());
                        Some(t)
                    })?;
                Some(syntax::snippet(&text, raw.line, 2, 2)).filter(|s| !s.is_empty())
            });
            frames.push(TraceFrame {
                trace: i,
                file: raw.file,
                in_workspace: mapped.is_some(),
                workspace_file: mapped,
                line: raw.line,
                column: raw.column,
                function: raw.function,
                snippet,
            });
        }
    }

    let root_cause = rank(&findings, &errors, &frames);
    for e in &errors {
        if let Some(fix) = fix_for_error(&e.error_type, &e.message) {
            let at = frames
                .iter()
                .find(|f| f.trace == e.trace && f.in_workspace)
                .map(|f| format!("{}:{}: ", f.workspace_file.as_deref().unwrap_or(""), f.line))
                .unwrap_or_default();
            fixes.insert(0, format!("{at}{fix}"));
        }
    }
    for f in findings.iter().filter(|f| f.rule == "syntax_error").rev() {
        fixes.insert(
            0,
            format!("{}:{}: fix the syntax ({})", f.file, f.line, f.message),
        );
    }
    fixes.dedup();

    let hypothesis_check = input
        .hypothesis
        .as_ref()
        .map(|h| check_hypothesis(h, &root_cause, &errors, &frames, &findings));
    Ok(Analysis {
        files,
        findings,
        errors,
        frames,
        root_cause,
        fixes,
        hypothesis_check,
        notes,
    })
}

fn backend_name(b: DebugBackend) -> &'static str {
    b.model().map_or("static", ModelBackend::as_str)
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The workspace file a trace path refers to: the path itself when it lies inside the workspace
/// and exists, else an affected file it ends with (traces from another machine or container).
fn map_frame(ws: &Workspace, files: &[File], file: &str) -> Option<String> {
    if file.starts_with('<') || file.starts_with("node:") || file.is_empty() {
        return None;
    }
    if let Ok(p) = ws.resolve(file)
        && p.real.is_file()
    {
        return Some(p.display);
    }
    let normal = file.replace('\\', "/");
    files
        .iter()
        .filter(|f| {
            normal == f.display
                || normal.ends_with(&format!("/{}", f.display))
                || normal.trim_start_matches("./") == f.display
        })
        .map(|f| f.display.clone())
        .next()
}

fn rank(findings: &[Finding], errors: &[TraceError], frames: &[TraceFrame]) -> RootCause {
    if let Some(s) = findings.iter().find(|f| f.rule == "syntax_error") {
        return RootCause {
            description: format!(
                "syntax error in {} at line {}: {}",
                s.file, s.line, s.message
            ),
            confidence: 0.9,
            evidence: vec![format!(
                "tree-sitter parse of {} fails at {}:{}",
                s.file, s.line, s.column
            )],
            file: Some(s.file.clone()),
            line: Some(s.line),
        };
    }
    let mut best: Option<RootCause> = None;
    for e in errors {
        let error = if e.message.is_empty() {
            e.error_type.clone()
        } else {
            format!("{}: {}", e.error_type, e.message)
        };
        let innermost = frames.iter().find(|f| f.trace == e.trace && f.in_workspace);
        let candidate = match innermost {
            Some(f) => {
                let file = f.workspace_file.clone().unwrap_or_default();
                let func = f
                    .function
                    .as_deref()
                    .map(|n| format!(" in {n}"))
                    .unwrap_or_default();
                let mut evidence = vec![format!(
                    "innermost workspace frame of trace {}: {file}:{}{func}",
                    e.trace, f.line
                )];
                let meets: Vec<&Finding> = findings
                    .iter()
                    .filter(|x| x.file == file && x.line == f.line)
                    .collect();
                for m in &meets {
                    evidence.push(format!(
                        "{} at {}:{}: {}",
                        m.rule, m.file, m.line, m.message
                    ));
                }
                let confidence = if meets.is_empty() { 0.7 } else { 0.85 };
                let also = meets
                    .first()
                    .map(|m| format!(", where the code has {}", m.rule))
                    .unwrap_or_default();
                RootCause {
                    description: format!("{error} raised at {file}:{}{func}{also}", f.line),
                    confidence,
                    evidence,
                    file: Some(file),
                    line: Some(f.line),
                }
            }
            None => RootCause {
                description: format!("{error} raised outside the workspace files"),
                confidence: 0.4,
                evidence: vec![format!("trace {} has no frame in the workspace", e.trace)],
                file: None,
                line: None,
            },
        };
        if best
            .as_ref()
            .is_none_or(|b| candidate.confidence > b.confidence)
        {
            best = Some(candidate);
        }
    }
    if let Some(b) = best {
        return b;
    }
    let by_severity = |s: &str| match s {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    };
    if let Some(f) = findings.iter().min_by_key(|f| by_severity(&f.severity)) {
        return RootCause {
            description: format!("{} at {}:{}: {}", f.rule, f.file, f.line, f.message),
            confidence: 0.3,
            evidence: vec![format!(
                "bug pattern '{}' (no trace given to confirm it)",
                f.rule
            )],
            file: Some(f.file.clone()),
            line: Some(f.line),
        };
    }
    RootCause {
        description: "no evidence of a cause was found in the given files and traces".into(),
        confidence: 0.1,
        evidence: Vec::new(),
        file: None,
        line: None,
    }
}

/// A fix for well-known runtime errors.
fn fix_for_error(error_type: &str, message: &str) -> Option<&'static str> {
    let m = message.to_lowercase();
    Some(match error_type {
        "ZeroDivisionError" => "guard the division: check the divisor for zero before dividing",
        "KeyError" => "check the key exists ('in') or use dict.get() with a default",
        "IndexError" => "check the index against len() before indexing",
        "AttributeError" if m.contains("nonetype") => {
            "a value is None where an object was expected: check for None before using it"
        }
        "AttributeError" => "check the object's type; the attribute does not exist on it",
        "NameError" => "define or import the name before using it",
        "ModuleNotFoundError" | "ImportError" => "install the module or fix the import path",
        "RecursionError" => "add or fix the recursion's base case",
        "FileNotFoundError" => "check the path exists (and the working directory) before opening",
        "TypeError" if m.contains("undefined") || m.contains("null") => {
            "a value is undefined/null where an object was expected: check it before use (optional chaining ?.)"
        }
        "TypeError" => "check the types of the values involved",
        "ReferenceError" => "declare the variable before using it",
        "RangeError" => "check the value range (array length, recursion depth)",
        "panic" if m.contains("index out of bounds") => {
            "check the index against len() or use .get(i)"
        }
        "panic" if m.contains("unwrap()") || m.contains("expect") => {
            "handle the None/Err case instead of unwrapping"
        }
        "panic" if m.contains("overflow") => "use checked_/saturating_ arithmetic",
        "panic" if m.contains("divide by zero") => "check the divisor for zero",
        _ => return None,
    })
}

/// Whether the hypothesis names what the evidence points at: the root cause's file, function,
/// error type, or a rule that fired there.
fn check_hypothesis(
    h: &str,
    root: &RootCause,
    errors: &[TraceError],
    frames: &[TraceFrame],
    findings: &[Finding],
) -> HypothesisCheck {
    let lower = h.to_lowercase();
    let mut keys: Vec<(String, String)> = Vec::new();
    if let Some(file) = &root.file {
        let base = file.rsplit('/').next().unwrap_or(file).to_string();
        keys.push((base.to_lowercase(), format!("file {file}")));
    }
    for e in errors {
        keys.push((
            e.error_type.to_lowercase(),
            format!("error {}", e.error_type),
        ));
    }
    for f in frames.iter().filter(|f| f.in_workspace) {
        if let Some(func) = &f.function {
            let short = func.rsplit("::").next().unwrap_or(func).to_lowercase();
            if short.len() > 2 && !short.starts_with('<') {
                keys.push((short, format!("function {func}")));
            }
        }
    }
    for f in findings {
        keys.push((f.rule.replace('_', " "), format!("finding {}", f.rule)));
        if f.rule == "syntax_error" {
            keys.push(("syntax".into(), "a syntax error".into()));
        }
    }
    match keys
        .iter()
        .find(|(k, _)| !k.is_empty() && lower.contains(k.as_str()))
    {
        Some((_, what)) => HypothesisCheck {
            hypothesis: h.to_string(),
            supported: true,
            reason: format!("it names {what}, which the evidence points at"),
        },
        None => HypothesisCheck {
            hypothesis: h.to_string(),
            supported: false,
            reason: format!(
                "it names none of the file, function, error or pattern the evidence points at ({})",
                root.description
            ),
        },
    }
}

async fn ask_model(
    model: ModelBackend,
    input: &DebugInput,
    files: &[File],
    findings: &[Finding],
    errors: &[TraceError],
    root: &RootCause,
    ctx: &AgentContext,
) -> Result<(String, Usage), TaskError> {
    let cap = ctx.services.llm.context_max_bytes;
    let mut prompt = format!("Problem: {}\n", input.problem_description);
    if let Some(h) = &input.hypothesis {
        prompt.push_str(&format!("Hypothesis: {h}\n"));
    }
    for f in files {
        let mut text = f.text.clone();
        if text.len() > cap {
            let mut end = cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        prompt.push_str(&format!("\nFile {}:\n```\n{text}\n```\n", f.display));
    }
    for t in input.error_traces.items() {
        prompt.push_str(&format!("\nError trace:\n```\n{t}\n```\n"));
    }
    let static_view = json!({"findings": findings, "errors": errors, "root_cause": root});
    prompt.push_str(&format!(
        "\nStatic analysis so far:\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&static_view).expect("serializable")
    ));
    let conversation = Conversation::new(
        "You are a debugging assistant. Find the root cause of the problem from the files and \
         traces, say how sure you are, and propose concrete fixes with file and line. Be brief.",
        prompt,
    );
    let context = json!({
        "task_id": ctx.task_id,
        "agent": "debug",
        "problem_description": input.problem_description,
        "affected_files": files.iter().map(|f| &f.display).collect::<Vec<_>>(),
        "static_analysis": static_view,
        "dependency_outputs": ctx.dependency_outputs,
    });
    let reply = llm::complete(model, &conversation, &context, ctx).await?;
    Ok((reply.text, reply.usage))
}

/// The `debug` agent.
pub struct DebugAgent;

impl crate::agents::Agent for DebugAgent {
    type Input = DebugInput;
    type Output = DebugOutput;

    async fn run(input: DebugInput, ctx: &AgentContext) -> Result<DebugOutput, Failure> {
        run(input, ctx).await
    }

    fn remote_dependency(
        input: &DebugInput,
        services: &crate::services::Services,
    ) -> Option<String> {
        model_backend(input, &services.llm).map(|b| crate::agents::model_breaker(b, services))
    }

    fn example_input() -> serde_json::Value {
        json!({"problem_description": "x", "affected_files": ["a.py"]})
    }
}
