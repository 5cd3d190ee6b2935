//! The `coder` agent: writes an ONEX node module (Python) from a contract, validates it against
//! the conventions of docs/onex.md at the requested level, and writes it into the workspace.
//!
//! Offline (`template`, the default) it scaffolds the module itself. With a model backend it
//! prompts the model with the contract, the conventions, the context files and the outputs of
//! the task's dependencies, extracts the code from the reply, validates it, and sends the
//! validator's issues back for a repair, up to `llm.max_repairs` times.

pub mod onex;
pub mod template;

use crate::passed::Passed;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agents::AgentContext;
use crate::llm::{self, Conversation, ModelBackend, Usage, Verdict};
use crate::task_error::{ErrorKind, Failure, TaskError};
use crate::workspace::Workspace;

pub use onex::{Validation, ValidationIssue, ValidationLevel};

/// The four ONEX node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeType {
    /// External I/O (APIs, databases, files, queues).
    Effect,
    /// Pure transformation.
    Compute,
    /// Aggregation and state.
    Reducer,
    /// Workflow coordination.
    Orchestrator,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Effect => "Effect",
            NodeType::Compute => "Compute",
            NodeType::Reducer => "Reducer",
            NodeType::Orchestrator => "Orchestrator",
        }
    }

    pub fn snake(self) -> &'static str {
        match self {
            NodeType::Effect => "effect",
            NodeType::Compute => "compute",
            NodeType::Reducer => "reducer",
            NodeType::Orchestrator => "orchestrator",
        }
    }

    pub fn base_class(self) -> &'static str {
        match self {
            NodeType::Effect => "NodeEffect",
            NodeType::Compute => "NodeCompute",
            NodeType::Reducer => "NodeReducer",
            NodeType::Orchestrator => "NodeOrchestrator",
        }
    }

    pub fn entry_method(self) -> &'static str {
        match self {
            NodeType::Effect => "execute_effect",
            NodeType::Compute => "execute_compute",
            NodeType::Reducer => "execute_reduction",
            NodeType::Orchestrator => "execute_orchestration",
        }
    }
}

/// Where the code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CoderBackend {
    /// The embedded offline scaffold (no model).
    Template,
    Anthropic,
    Openai,
    Command,
}

impl CoderBackend {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "template" => Some(CoderBackend::Template),
            other => ModelBackend::parse(other).map(CoderBackend::from),
        }
    }

    fn model(self) -> Option<ModelBackend> {
        match self {
            CoderBackend::Template => None,
            CoderBackend::Anthropic => Some(ModelBackend::Anthropic),
            CoderBackend::Openai => Some(ModelBackend::Openai),
            CoderBackend::Command => Some(ModelBackend::Command),
        }
    }

    fn as_str(self) -> &'static str {
        self.model().map_or("template", ModelBackend::as_str)
    }
}

impl From<ModelBackend> for CoderBackend {
    fn from(b: ModelBackend) -> Self {
        match b {
            ModelBackend::Anthropic => CoderBackend::Anthropic,
            ModelBackend::Openai => CoderBackend::Openai,
            ModelBackend::Command => CoderBackend::Command,
        }
    }
}

/// Input of the `coder` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoderInput {
    /// What the node must do.
    #[schemars(length(min = 1))]
    pub contract_description: String,
    pub node_type: NodeType,
    /// Where the module goes, inside the workspace: a `.py` file, or a folder that receives
    /// `node_<name>_<type>.py`.
    #[schemars(length(min = 1))]
    pub output_path: String,
    /// Snake-case node name (default: from the file name or the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Files (inside the workspace) shown to a model as context; or a typed reference
    /// (`{"$output": ...}`) to a list of them in another task's output.
    #[serde(default, skip_serializing_if = "Passed::is_empty_list")]
    pub context_files: Passed<Vec<String>>,
    #[serde(default)]
    pub validation_level: ValidationLevel,
    /// Replace an existing file.
    #[serde(default)]
    pub overwrite: bool,
    /// Override the configured backend for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<CoderBackend>,
}

/// Output of the `coder` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CoderOutput {
    /// Path of the written module, relative to the workspace.
    pub generated_file: String,
    pub node_name: String,
    pub class_name: String,
    pub node_type: NodeType,
    pub backend: String,
    /// True when the module is the offline scaffold rather than a model's implementation.
    pub scaffold: bool,
    pub lines_generated: usize,
    pub validation: Validation,
    /// Whether the file was written (also when validation failed, for inspection).
    pub written: bool,
    /// Whether an existing file was replaced.
    pub overwritten: bool,
    /// Context files given to the model (relative paths); `truncated` when cut to the cap.
    pub context_files: Vec<ContextFile>,
    /// Model calls made, repairs included (0 for the template).
    pub attempts: u32,
    /// Tokens and cost, when a model was used.
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ContextFile {
    pub path: String,
    pub bytes: usize,
    pub truncated: bool,
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::permanent(ErrorKind::InvalidInput, message)
}

/// The workspace of the run.
pub(crate) fn workspace(ctx: &AgentContext) -> Result<Workspace, TaskError> {
    Workspace::new(&ctx.services.workspace).map_err(|e| {
        TaskError::permanent(
            ErrorKind::Io,
            format!(
                "workspace '{}' is unusable: {e}",
                ctx.services.workspace.display()
            ),
        )
    })
}

/// A node name as given, checked: snake case, starting with a letter.
fn checked_name(given: &str) -> Result<String, TaskError> {
    let name = if given.chars().any(|c| c.is_ascii_uppercase()) {
        onex::snake(given)
    } else {
        given.to_string()
    };
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(invalid(format!(
            "node_name '{given}' must be snake case (letters, digits, '_'), starting with a letter"
        )))
    }
}

/// The node name and the module path (inside the workspace) for this input.
fn target(input: &CoderInput) -> Result<(String, String), TaskError> {
    let suffix = format!("_{}.py", input.node_type.snake());
    let is_file = input.output_path.ends_with(".py");
    let from_file = is_file
        .then(|| {
            let file = std::path::Path::new(&input.output_path)
                .file_name()?
                .to_str()?;
            file.strip_prefix("node_")?
                .strip_suffix(&suffix)
                .filter(|n| !n.is_empty())
                .map(String::from)
        })
        .flatten();
    let name = match (&input.node_name, from_file) {
        (Some(given), _) => checked_name(given)?,
        (None, Some(from_file)) => checked_name(&from_file)?,
        (None, None) => template::derive_name(&input.contract_description),
    };
    let path = if is_file {
        input.output_path.clone()
    } else {
        format!(
            "{}/node_{name}{suffix}",
            input.output_path.trim_end_matches('/')
        )
    };
    Ok((name, path))
}

/// The model this task will call, if any (for its circuit breaker); `None` for the offline
/// template backend and for a configured backend name that the run will reject.
pub fn model_backend(input: &CoderInput, llm: &crate::llm::LlmConfig) -> Option<ModelBackend> {
    match input.backend {
        Some(b) => b.model(),
        None => CoderBackend::parse(llm.agents.coder.as_deref()?)?.model(),
    }
}

pub async fn run(input: CoderInput, ctx: &AgentContext) -> Result<CoderOutput, Failure> {
    let ws = workspace(ctx)?;
    let backend = match input.backend {
        Some(b) => b,
        None => match ctx.services.llm.agents.coder.as_deref() {
            None => CoderBackend::Template,
            Some(name) => CoderBackend::parse(name).ok_or_else(|| {
                invalid(format!(
                    "configured coder backend '{name}' is not one of template, anthropic, openai, command"
                ))
            })?,
        },
    };
    let (name, path) = target(&input)?;
    let file = ws.resolve(&path)?;
    // Before any work (or tokens) is spent. File work runs on the blocking pool (see
    // `workspace`), so a slow or odd file never stalls the runtime or outlives the timeout.
    let existed = ws.check_writable_async(&file, input.overwrite).await?;

    let cap = ctx.services.llm.context_max_bytes;
    let mut context = Vec::new();
    let mut context_files = Vec::new();
    for given in input.context_files.value("context_files")? {
        let p = ws.resolve(given)?;
        let (text, truncated) = ws.read_text_async(&p, cap).await?;
        // What the model is shown: a file cut to the cap is recorded as cut.
        ctx.files.read(p.display.clone(), text.as_bytes());
        context_files.push(ContextFile {
            path: p.display.clone(),
            bytes: text.len(),
            truncated,
        });
        context.push((p.display, text));
    }

    let class_name = format!("Node{}{}", onex::pascal(&name), input.node_type.as_str());
    let level = input.validation_level;
    let (source, attempts, usage) = match backend.model() {
        None => (
            template::render(&name, input.node_type, &input.contract_description),
            0,
            None,
        ),
        Some(model) => {
            let job = Job {
                input: &input,
                name: &name,
                class_name: &class_name,
                file_display: &file.display,
                context: &context,
            };
            let (source, attempts, usage) = generate(&job, model, ctx).await?;
            (source, attempts, Some(usage))
        }
    };
    let validation = validate_off_runtime(&source, &file.display, input.node_type, level).await?;
    ws.write_atomic_async(&file, source.clone(), input.overwrite)
        .await?;
    ctx.files.written(file.display.clone(), source.as_bytes());
    let output = CoderOutput {
        generated_file: file.display.clone(),
        node_name: name,
        class_name,
        node_type: input.node_type,
        backend: backend.as_str().to_string(),
        scaffold: backend == CoderBackend::Template,
        lines_generated: source.lines().count(),
        written: true,
        overwritten: existed,
        context_files,
        attempts,
        usage,
        validation,
    };
    if output.validation.passed {
        return Ok(output);
    }
    let first: Vec<String> = output
        .validation
        .issues
        .iter()
        .take(3)
        .map(|i| format!("line {}: {} ({})", i.line, i.message, i.rule))
        .collect();
    let message = format!(
        "{} fails '{}' validation with {} issue(s): {}; the file was written for inspection",
        output.generated_file,
        level.as_str(),
        output.validation.issues.len(),
        first.join("; ")
    );
    Err(Failure {
        error: TaskError::permanent(ErrorKind::ValidationFailed, message),
        output: Some(serde_json::to_value(&output).expect("serializable")),
    })
}

struct Job<'a> {
    input: &'a CoderInput,
    name: &'a str,
    class_name: &'a str,
    file_display: &'a str,
    context: &'a [(String, String)],
}

/// Asks the model, validates, and asks for repairs. Returns the last code, calls made, usage.
async fn generate(
    job: &Job<'_>,
    model: ModelBackend,
    ctx: &AgentContext,
) -> Result<(String, u32, Usage), TaskError> {
    let input = job.input;
    let conversation = Conversation::new(system_prompt(), user_prompt(job, ctx));
    let context_json = json!({
        "task_id": ctx.task_id,
        "agent": "coder",
        "contract_description": input.contract_description,
        "node_type": input.node_type,
        "node_name": job.name,
        "class_name": job.class_name,
        "output_path": job.file_display,
        "validation_level": input.validation_level,
        "context_files": job.context.iter().map(|(p, t)| json!({"path": p, "content": t})).collect::<Vec<_>>(),
        "dependency_outputs": ctx.dependency_outputs,
    });
    let (file_display, node_type, level) =
        (job.file_display, input.node_type, input.validation_level);
    let check = |text: String| async move {
        let code = llm::extract_code(&text, &["python", "py", "python3"]);
        let v = validate_off_runtime(&code, file_display, node_type, level).await?;
        Ok(if v.passed {
            Verdict::Accept(code)
        } else {
            Verdict::Repair(code, repair_prompt(&v))
        })
    };
    let config = &ctx.services.llm;
    let done =
        llm::complete_with_repairs(config, model, conversation, &context_json, ctx, check).await?;
    Ok((done.value, done.calls, done.usage))
}

pub const CONVENTIONS: &str = "\
ONEX conventions (enforced by a validator):
- Exactly one node class named Node<Name><Type>, deriving from the base class Node<Type> \
(NodeEffect, NodeCompute, NodeReducer or NodeOrchestrator), imported with \
`from omnibase_core.nodes import Node<Type>`.
- The entry method is `async def`: execute_effect (Effect), execute_compute (Compute), \
execute_reduction (Reducer), execute_orchestration (Orchestrator).
- It takes a typed input model and returns a typed output model: \
`async def execute_x(self, input_data: Model<Name>Input) -> Model<Name>Output`, both pydantic \
models defined in the module.
- The module file is node_<name>_<type>.py in snake case.
- Strict level also requires: type annotations on every parameter and return, a docstring on \
every class and public function, no TODO, no body that is only `pass` or `...`.";

/// [`onex::validate`] on the blocking pool: tree-sitter parsing of a large reply is CPU work
/// that must not hold an async runtime thread.
async fn validate_off_runtime(
    source: &str,
    file_display: &str,
    node_type: NodeType,
    level: ValidationLevel,
) -> Result<Validation, TaskError> {
    let (source, file_display) = (source.to_string(), file_display.to_string());
    crate::workspace::blocking(move || onex::validate(&source, &file_display, node_type, level))
        .await
}

fn system_prompt() -> String {
    format!(
        "You write Python modules for ONEX nodes. Reply with the complete module in one \
```python fenced block and nothing else.\n\n{CONVENTIONS}"
    )
}

fn user_prompt(job: &Job<'_>, ctx: &AgentContext) -> String {
    let input = job.input;
    let mut p = format!(
        "Write the ONEX {ty} node module '{file}'.\n\nClass: {class}({base})\nEntry method: async def {entry}\nValidation level: {level}\n\nContract:\n{contract}\n",
        ty = input.node_type.as_str(),
        file = job.file_display,
        class = job.class_name,
        base = input.node_type.base_class(),
        entry = input.node_type.entry_method(),
        level = input.validation_level.as_str(),
        contract = input.contract_description,
    );
    for (path, text) in job.context {
        p.push_str(&format!("\nContext file {path}:\n```\n{text}\n```\n"));
    }
    if !ctx.dependency_outputs.is_empty() {
        let cap = ctx.services.llm.context_max_bytes;
        for (id, out) in &ctx.dependency_outputs {
            let mut text = serde_json::to_string_pretty(out).expect("serializable");
            if text.len() > cap {
                let mut end = cap;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("\n... (cut)");
            }
            p.push_str(&format!(
                "\nOutput of the upstream task '{id}':\n```json\n{text}\n```\n"
            ));
        }
    }
    p
}

fn repair_prompt(v: &Validation) -> String {
    let mut p = format!(
        "The module fails '{}' validation. Fix every issue and reply with the whole corrected module in one ```python block.\n",
        v.level.as_str()
    );
    for i in &v.issues {
        p.push_str(&format!("- line {}: [{}] {}\n", i.line, i.rule, i.message));
    }
    p
}

/// The `coder` agent.
pub struct CoderAgent;

impl crate::agents::Agent for CoderAgent {
    type Input = CoderInput;
    type Output = CoderOutput;

    async fn run(input: CoderInput, ctx: &AgentContext) -> Result<CoderOutput, Failure> {
        run(input, ctx).await
    }

    fn remote_dependency(
        input: &CoderInput,
        services: &crate::services::Services,
    ) -> Option<String> {
        model_backend(input, &services.llm).map(|b| crate::agents::model_breaker(b, services))
    }

    fn example_input() -> serde_json::Value {
        json!({"contract_description": "x", "node_type": "Effect", "output_path": "out.py"})
    }
}
