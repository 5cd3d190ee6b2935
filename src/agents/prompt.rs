//! The `prompt` agent: one model call for a role in a pipeline (a planner that writes the plan, a
//! builder that does the work, a reviewer that gives a verdict, ...). The task names a role (a
//! preset or its own system prompt), instructions, optional JSON context and workspace files,
//! and optionally a JSON Schema the reply must satisfy; the reply is `text`, and `json` when a
//! schema was given, so `{{tasks.review.output.json.verdict}}` works downstream.
//!
//! Backends are those of `coder` and `debug` (Anthropic Messages, OpenAI-compatible chat
//! completions, a command-line agent such as Claude Code in its own folder). There is no offline
//! backend, so a task whose backend cannot be called (no key, no program) is refused when the
//! batch is checked, with `model_not_configured`, rather than failing half-way through a run.
//! A reply that is not JSON valid under `output_schema` goes back to the model with the
//! validator's findings, in the repair loop the `coder` uses.

use std::path::{Component, Path};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agents::AgentContext;
use crate::agents::coder::ContextFile;
use crate::llm::{self, Conversation, LlmConfig, ModelBackend, Usage, Verdict};
use crate::task_error::{ErrorKind, Failure, TaskError};
use crate::validation::ValidationContext;

/// The role presets: name and system prompt.
pub const ROLES: &[(&str, &str)] = &[
    (
        "planner",
        "You are the planner. Break the request into concrete, well-scoped steps that others can \
carry out, in parallel where they do not depend on each other. For each step say what it needs, \
what it produces and which steps it waits for. Do not do the work yourself.",
    ),
    (
        "builder",
        "You are the builder. Carry out the instructions exactly and produce the complete result \
asked for (code, configuration, text), ready to use, with no placeholders. State briefly any \
assumption you had to make.",
    ),
    (
        "reviewer",
        "You are the reviewer. Check the work you are given against the instructions: \
correctness first, then completeness, security and clarity. Point to the exact place of each \
problem, say how to fix it, and give a clear verdict.",
    ),
    (
        "analyst",
        "You are the analyst. Examine the material you are given and answer with evidence: the \
facts from the material first, then your inferences, marked as such, then a short conclusion.",
    ),
    (
        "tester",
        "You are the tester. Derive test cases from the instructions and the material: normal \
cases, edge cases and failure cases, each with its input, the expected result and why it \
matters. Where code is given, write runnable tests.",
    ),
    (
        "documenter",
        "You are the documenter. Write accurate, concise documentation for the audience named \
(developers if none): what it is, how to use it, with an example, and its limits. Document only \
what the material shows.",
    ),
];

/// Most files one task may include.
pub const MAX_FILES: usize = 64;
/// Most validator findings sent back to the model (and quoted in an error) at once.
const MAX_FINDINGS: usize = 10;

/// Input of the `prompt` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptInput {
    /// A preset (`planner`, `builder`, `reviewer`, `analyst`, `tester`, `documenter`), or any
    /// other text, which is then the system prompt itself.
    #[schemars(length(min = 1))]
    pub role: String,
    /// What to do.
    #[schemars(length(min = 1))]
    pub instructions: String,
    /// Any JSON the model should see (e.g. upstream outputs through `{{tasks...}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// Workspace-relative paths of files whose content goes into the prompt (each cut to
    /// `llm.context_max_bytes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILES), inner(length(min = 1)))]
    pub files: Vec<String>,
    /// A JSON Schema: the reply must be one JSON value valid under it, which becomes
    /// `output.json`. A reply that is not is sent back for a repair, up to `llm.max_repairs`
    /// times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_schema")]
    pub output_schema: Option<Value>,
    /// The backend (default: the agent's configured one, else `anthropic` when its key is set,
    /// else `openai` when its key or base URL is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ModelBackend>,
    /// The model, instead of the backend's configured one (`anthropic` and `openai` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub model: Option<String>,
}

fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object"})
}

/// Output of the `prompt` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PromptOutput {
    /// The role's preset name, or `custom` for a role given as text.
    pub role: String,
    /// The model's (last) reply, as written.
    pub text: String,
    /// With `output_schema`: the reply as JSON, valid under the schema; null otherwise.
    pub json: Option<Value>,
    pub backend: String,
    /// The files included in the prompt; `truncated` when cut to the cap.
    pub included_files: Vec<ContextFile>,
    /// Model calls made, repairs included.
    pub attempts: u32,
    /// Tokens and cost.
    pub usage: Usage,
}

/// The system prompt of a role, and its name in the output.
fn role_prompt(role: &str) -> (&str, &str) {
    match ROLES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(role.trim()))
    {
        Some((name, prompt)) => (name, prompt),
        None => ("custom", role),
    }
}

/// Why the backend for `input` cannot be chosen: the task names none and no default applies.
fn choose_backend(
    given: Option<ModelBackend>,
    llm: &LlmConfig,
) -> Result<ModelBackend, (ErrorKind, String)> {
    if let Some(b) = given {
        return Ok(b);
    }
    if let Some(name) = llm.agents.prompt.as_deref() {
        return ModelBackend::parse(name).ok_or_else(|| {
            (
                ErrorKind::InvalidInput,
                format!(
                    "the configured prompt backend '{name}' is not one of anthropic, openai, command"
                ),
            )
        });
    }
    [ModelBackend::Anthropic, ModelBackend::Openai]
        .into_iter()
        .find(|b| llm.not_configured(*b).is_none())
        .ok_or_else(|| {
            (
                ErrorKind::ModelNotConfigured,
                "no model backend is configured: set $ANTHROPIC_API_KEY, $OPENAI_API_KEY or \
$OPENAI_BASE_URL, or name a backend in the task's 'backend', agents.prompt.backend in the \
configuration file, or $DISPATCH_PROMPT_BACKEND"
                    .to_string(),
            )
        })
}

/// Why `path` is certainly outside the workspace, from its text alone: absolute, or climbing
/// above its start with `..`. (Symlinks are followed when the file is read.)
fn lexical_escape(path: &str) -> Option<&'static str> {
    let mut depth = 0usize;
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Some("it is absolute; files are relative to the workspace");
            }
            Component::ParentDir => {
                let Some(up) = depth.checked_sub(1) else {
                    return Some("'..' leads out of the workspace");
                };
                depth = up;
            }
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
        }
    }
    None
}

/// The model settings for this task: the run's, with the task's own model if it names one.
fn task_config(
    input_model: Option<&str>,
    backend: ModelBackend,
    llm: &LlmConfig,
) -> Result<LlmConfig, String> {
    let mut config = llm.clone();
    match (input_model, backend) {
        (None, _) => {}
        (Some(m), ModelBackend::Anthropic) => config.anthropic.model = Some(m.to_string()),
        (Some(m), ModelBackend::Openai) => config.openai.model = Some(m.to_string()),
        (Some(_), ModelBackend::Command) => {
            return Err(
                "'model' applies to the anthropic and openai backends; the command \
backend's model is part of its command line (llm.command.argv)"
                    .into(),
            );
        }
    }
    Ok(config)
}

/// Checks before anything runs: the files stay inside the workspace, the schema compiles, and
/// the backend can be called (when the context knows the model settings).
pub fn check(input: &Value, ctx: &ValidationContext) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let has_ref = |s: &str| s.contains("{{");
    if let Some(files) = input.get("files").and_then(Value::as_array) {
        for (i, f) in files.iter().enumerate() {
            if let Some(f) = f.as_str()
                && !has_ref(f)
                && let Some(why) = lexical_escape(f)
            {
                problems.push((
                    format!("/files/{i}"),
                    format!("path_outside_workspace: '{f}' is outside the workspace ({why})"),
                ));
            }
        }
    }
    if let Some(schema) = input.get("output_schema").filter(|s| s.is_object())
        && let Err(e) = jsonschema::validator_for(schema)
    {
        // References are filled in later; a schema is judged then.
        let text = schema.to_string();
        if !has_ref(&text) && !text.contains("\"$output\"") {
            problems.push((
                "/output_schema".into(),
                format!("is not a usable JSON Schema: {e}"),
            ));
        }
    }
    let Some(llm) = &ctx.llm else {
        return problems;
    };
    let given = match input.get("backend") {
        None | Some(Value::Null) => None,
        Some(b) => match b.as_str().and_then(ModelBackend::parse) {
            Some(b) => Some(b),
            // Not a backend: the schema says so, and there is nothing to check against.
            None => return problems,
        },
    };
    let at = if given.is_some() { "/backend" } else { "" };
    let backend = match choose_backend(given, llm) {
        Ok(b) => b,
        Err((kind, why)) => {
            problems.push((at.into(), format!("{}: {why}", kind.as_str())));
            return problems;
        }
    };
    let model = input.get("model").and_then(Value::as_str);
    if let Err(why) = task_config(model, backend, llm) {
        problems.push(("/model".into(), why));
    }
    if let Some(why) = llm.not_configured(backend) {
        problems.push((at.into(), format!("model_not_configured: {why}")));
    }
    problems
}

/// `text` cut to `cap` bytes (on a character boundary), marked when cut.
fn clip(mut text: String, cap: usize) -> String {
    if text.len() > cap {
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n... (cut)");
    }
    text
}

/// The reply as JSON: a ```json (or untagged) block, else the whole reply, else the outermost
/// object or array in it (models like to put a sentence before the answer).
fn reply_json(text: &str) -> Result<Value, String> {
    let body = llm::extract_code(text, &["json"]);
    let first_error = match serde_json::from_str(body.trim()) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    let start = text.find(['{', '[']);
    let end = text.rfind(['}', ']']);
    if let (Some(s), Some(e)) = (start, end)
        && s < e
        && let Ok(v) = serde_json::from_str(&text[s..=e])
    {
        return Ok(v);
    }
    Err(first_error)
}

/// What is wrong with a reply under the schema: findings as `at '<pointer>': <message>`, empty
/// when it is valid. `None` when the reply is not JSON at all (the parse error then).
fn judge(validator: &jsonschema::Validator, text: &str) -> (Option<Value>, Vec<String>) {
    let value = match reply_json(text) {
        Ok(v) => v,
        Err(e) => return (None, vec![format!("the reply is not JSON ({e})")]),
    };
    let findings = validator
        .iter_errors(&value)
        .take(MAX_FINDINGS)
        .map(|e| {
            let message: String = e.to_string().chars().take(300).collect();
            format!("at '{}': {message}", e.instance_path().as_str())
        })
        .collect();
    (Some(value), findings)
}

fn repair_prompt(findings: &[String]) -> String {
    let mut p = String::from(
        "Your reply is not one JSON value valid under the JSON Schema given. Fix every problem \
and reply again with only the corrected JSON value:\n",
    );
    for f in findings {
        p.push_str(&format!("- {f}\n"));
    }
    p
}

fn system_prompt(role: &str, schema: Option<&Value>) -> String {
    let mut p = format!(
        "{role}\n\nYou are one step of an automated pipeline: your reply is read by programs and \
other agents, so answer directly, without greetings or offers of further help."
    );
    if let Some(schema) = schema {
        let schema = serde_json::to_string_pretty(schema).expect("serializable");
        p.push_str(&format!(
            "\n\nReply with exactly one JSON value valid under this JSON Schema and nothing else \
(no prose before or after it):\n```json\n{schema}\n```"
        ));
    }
    p
}

fn user_prompt(
    input: &PromptInput,
    files: &[(String, String, bool)],
    ctx: &AgentContext,
    cap: usize,
) -> String {
    let mut p = format!("Instructions:\n{}\n", input.instructions);
    if let Some(context) = &input.context {
        let text = clip(
            serde_json::to_string_pretty(context).expect("serializable"),
            cap,
        );
        p.push_str(&format!("\nContext:\n```json\n{text}\n```\n"));
    }
    for (path, text, truncated) in files {
        let cut = if *truncated {
            format!(" (the first {cap} bytes)")
        } else {
            String::new()
        };
        p.push_str(&format!("\nFile {path}{cut}:\n```\n{text}\n```\n"));
    }
    for (id, out) in &ctx.dependency_outputs {
        let text = clip(
            serde_json::to_string_pretty(out).expect("serializable"),
            cap,
        );
        p.push_str(&format!(
            "\nOutput of the upstream task '{id}':\n```json\n{text}\n```\n"
        ));
    }
    p
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::permanent(ErrorKind::InvalidInput, message)
}

/// Reads the task's files, under the workspace rules, recording each in the attempt's ledger.
async fn read_files(
    input: &PromptInput,
    ctx: &AgentContext,
    cap: usize,
) -> Result<Vec<(String, String, bool)>, TaskError> {
    if input.files.is_empty() {
        return Ok(Vec::new());
    }
    let ws = crate::agents::coder::workspace(ctx)?;
    let mut read = Vec::new();
    for (i, given) in input.files.iter().enumerate() {
        let named = |mut e: TaskError| {
            e.message = format!("input_data/files/{i}: {}", e.message);
            e
        };
        if let Some(why) = lexical_escape(given) {
            return Err(named(TaskError::permanent(
                ErrorKind::PathOutsideWorkspace,
                format!("'{given}' is outside the workspace ({why})"),
            )));
        }
        let path = ws.resolve(given).map_err(named)?;
        let (text, truncated) = ws.read_text_async(&path, cap).await.map_err(named)?;
        ctx.files.read(path.display.clone(), text.as_bytes());
        read.push((path.display, text, truncated));
    }
    Ok(read)
}

pub async fn run(input: PromptInput, ctx: &AgentContext) -> Result<PromptOutput, Failure> {
    let llm = &ctx.services.llm;
    let backend = choose_backend(input.backend, llm)
        .map_err(|(kind, why)| TaskError::permanent(kind, why))?;
    let config = task_config(input.model.as_deref(), backend, llm).map_err(invalid)?;
    // The environment may have changed since the batch was checked (a server lives long).
    let probe = config.clone();
    if let Some(why) = crate::workspace::blocking(move || probe.not_configured(backend)).await? {
        return Err(TaskError::permanent(ErrorKind::ModelNotConfigured, why).into());
    }
    let validator = match &input.output_schema {
        None => None,
        Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
            |e| {
                invalid(format!(
                    "input_data/output_schema is not a usable JSON Schema: {e}"
                ))
            },
        )?)),
    };

    let cap = config.context_max_bytes;
    let files = read_files(&input, ctx, cap).await?;
    let (role_name, role_text) = role_prompt(&input.role);
    let conversation = Conversation::new(
        system_prompt(role_text, input.output_schema.as_ref()),
        user_prompt(&input, &files, ctx, cap),
    );
    let context_json = json!({
        "task_id": ctx.task_id,
        "agent": "prompt",
        "role": role_name,
        "instructions": input.instructions,
        "context": input.context,
        "files": files.iter().map(|(p, t, cut)| json!({"path": p, "content": t, "truncated": cut})).collect::<Vec<_>>(),
        "output_schema": input.output_schema,
        "dependency_outputs": ctx.dependency_outputs,
    });
    let check = |text: String| {
        let validator = validator.clone();
        async move {
            let Some(validator) = validator else {
                return Ok(Verdict::Accept((None, Vec::new())));
            };
            // Schema keywords such as `pattern` can cost real CPU time on a long reply.
            let (value, findings) =
                crate::workspace::blocking(move || judge(&validator, &text)).await?;
            Ok(if findings.is_empty() {
                Verdict::Accept((value, findings))
            } else {
                let repair = repair_prompt(&findings);
                Verdict::Repair((None, findings), repair)
            })
        }
    };
    let done =
        llm::complete_with_repairs(&config, backend, conversation, &context_json, ctx, check)
            .await?;
    let (json, findings) = done.value;
    let output = PromptOutput {
        role: role_name.to_string(),
        text: done.reply,
        json,
        backend: backend.as_str().to_string(),
        included_files: files
            .iter()
            .map(|(path, text, truncated)| ContextFile {
                path: path.clone(),
                bytes: text.len(),
                truncated: *truncated,
            })
            .collect(),
        attempts: done.calls,
        usage: done.usage,
    };
    if done.accepted {
        return Ok(output);
    }
    let message = format!(
        "after {} model call(s) the reply is still not JSON valid under output_schema: {}",
        output.attempts,
        findings
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    Err(Failure {
        error: TaskError::permanent(ErrorKind::ValidationFailed, message),
        output: Some(serde_json::to_value(&output).expect("serializable")),
    })
}

/// The `prompt` agent.
pub struct PromptAgent;

impl crate::agents::Agent for PromptAgent {
    type Input = PromptInput;
    type Output = PromptOutput;
    const CHECKS_INPUT: bool = true;

    async fn run(input: PromptInput, ctx: &AgentContext) -> Result<PromptOutput, Failure> {
        run(input, ctx).await
    }

    fn remote_dependency(
        input: &PromptInput,
        services: &crate::services::Services,
    ) -> Option<String> {
        let backend = choose_backend(input.backend, &services.llm).ok()?;
        Some(crate::agents::model_breaker(backend, services))
    }

    fn check_input(input: &Value, ctx: &ValidationContext) -> Vec<(String, String)> {
        check(input, ctx)
    }

    fn example_input() -> Value {
        json!({"role": "reviewer", "instructions": "Review the change."})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_workspace_are_told_from_their_text() {
        assert!(lexical_escape("src/a.rs").is_none());
        assert!(lexical_escape("./a/../b").is_none());
        assert!(lexical_escape("a/../../b").is_some());
        assert!(lexical_escape("../secret").is_some());
        assert!(lexical_escape("/etc/passwd").is_some());
    }

    #[test]
    fn json_is_found_in_fences_prose_or_alone() {
        assert_eq!(reply_json("{\"a\": 1}").unwrap(), json!({"a": 1}));
        assert_eq!(
            reply_json("Here:\n```json\n{\"a\": 2}\n```\n").unwrap(),
            json!({"a": 2})
        );
        assert_eq!(
            reply_json("The verdict is {\"a\": [3]} as asked.").unwrap(),
            json!({"a": [3]})
        );
        assert!(reply_json("no json here").is_err());
    }

    #[test]
    fn findings_name_the_place() {
        let schema = json!({"type": "object", "required": ["verdict"],
            "properties": {"verdict": {"enum": ["approve", "reject"]}}});
        let v = jsonschema::validator_for(&schema).unwrap();
        let (value, findings) = judge(&v, "{\"verdict\": \"maybe\"}");
        assert_eq!(value, Some(json!({"verdict": "maybe"})));
        assert_eq!(findings.len(), 1);
        assert!(findings[0].starts_with("at '/verdict'"), "{findings:?}");
        assert!(judge(&v, "{\"verdict\": \"approve\"}").1.is_empty());
        let (value, findings) = judge(&v, "sure!");
        assert!(value.is_none() && findings[0].contains("not JSON"));
    }

    /// Every file the agent reads is in the attempt's ledger, as much of it as the model saw.
    #[tokio::test]
    async fn files_read_are_recorded_in_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "fn a() {}\n").unwrap();
        std::fs::write(dir.path().join("big.txt"), "y".repeat(100)).unwrap();
        let services = crate::services::Services {
            workspace: dir.path().to_path_buf(),
            ..Default::default()
        };
        let ctx = AgentContext {
            task_id: "t".into(),
            max_output_bytes: 1024,
            kill_grace: std::time::Duration::from_millis(10),
            reaper: Default::default(),
            services: Arc::new(services),
            dependency_outputs: Vec::new(),
            progress: Default::default(),
            files: Default::default(),
        };
        let input: PromptInput = serde_json::from_value(json!({"role": "tester",
            "instructions": "x", "files": ["./src/a.rs", "big.txt"]}))
        .unwrap();
        let read = read_files(&input, &ctx, 40).await.unwrap();
        assert_eq!(read[0], ("src/a.rs".into(), "fn a() {}\n".into(), false));
        assert!(read[1].2, "cut to the cap");
        let touched = ctx.files.take();
        assert!(touched.written.is_empty());
        assert_eq!(
            touched.read,
            vec![
                crate::files::FileRecord::new("src/a.rs", b"fn a() {}\n"),
                crate::files::FileRecord::new("big.txt", "y".repeat(40).as_bytes()),
            ]
        );
    }

    #[test]
    fn roles_are_presets_or_the_prompt_itself() {
        assert_eq!(role_prompt("Reviewer").0, "reviewer");
        assert_eq!(role_prompt("You are a poet.").0, "custom");
        assert_eq!(role_prompt("You are a poet.").1, "You are a poet.");
    }
}
