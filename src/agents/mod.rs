//! Typed agents. Each agent is one module with its input type, its output type and its `run`
//! function; [`AgentInput`] is the tagged union the batch carries (`agent` + `input_data`).
//!
//! Adding an agent means adding a module and a variant here. The scheduler, the policies and the
//! reporters never look inside an agent.

pub mod coder;
pub mod command;
pub mod debug;
pub mod mcp;

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::process::Reaper;
use crate::runner::executor::AttemptId;
use crate::services::Services;
use crate::task_error::Failure;

pub use coder::{CoderInput, CoderOutput};
pub use command::{CommandInput, CommandOutput};
pub use debug::{DebugInput, DebugOutput};
pub use mcp::{McpInput, McpOutput};

/// Every agent name of the batch format.
pub const ALL_AGENTS: &[&str] = &["command", "coder", "debug", "mcp"];

pub fn is_agent_name(name: &str) -> bool {
    ALL_AGENTS.contains(&name)
}

/// An agent with its input, tagged by `agent` with the input under `input_data`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "agent", content = "input_data", rename_all = "snake_case")]
pub enum AgentInput {
    /// Run a program with arguments, without a shell.
    Command(CommandInput),
    /// Write an ONEX node module from a contract (offline scaffold or a model).
    Coder(CoderInput),
    /// Analyse a failure: syntax errors, stack traces, bug patterns, a ranked root cause.
    Debug(DebugInput),
    /// Call a tool on a Model Context Protocol server.
    Mcp(McpInput),
}

/// What an attempt gets from the runner besides its input.
#[derive(Clone)]
pub struct AgentContext {
    pub task_id: String,
    /// Cap for each captured output stream.
    pub max_output_bytes: usize,
    /// Time between TERM and KILL when a process group is stopped.
    pub kill_grace: Duration,
    pub reaper: Reaper,
    /// Run-wide shared state (configuration, sessions, clients).
    pub services: Arc<Services>,
    /// Outputs of the task's dependencies (task id, output), in the order they are listed.
    pub dependency_outputs: Vec<(String, Value)>,
    /// Where the attempt reports progress; it becomes `task_progress` events.
    pub progress: ProgressSink,
}

/// A progress report from a running attempt, published by the dispatcher as `task_progress`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressNote {
    pub attempt_id: AttemptId,
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Sends an attempt's progress to its executor, which passes it to the dispatcher, which alone
/// publishes events. Progress is best-effort: when the dispatcher is behind by
/// [`PROGRESS_BUFFER`] notes, further notes are dropped rather than slowing the agent.
#[derive(Debug, Clone, Default)]
pub struct ProgressSink {
    tx: Option<tokio::sync::mpsc::Sender<ProgressNote>>,
    attempt_id: AttemptId,
}

pub const PROGRESS_BUFFER: usize = 1024;

impl ProgressSink {
    pub fn new(tx: tokio::sync::mpsc::Sender<ProgressNote>, attempt_id: AttemptId) -> Self {
        ProgressSink {
            tx: Some(tx),
            attempt_id,
        }
    }

    pub fn report(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(ProgressNote {
                attempt_id: self.attempt_id,
                progress,
                total,
                message,
            });
        }
    }
}

impl AgentInput {
    /// The agent's name as written in the batch.
    pub fn name(&self) -> &'static str {
        match self {
            AgentInput::Command(_) => "command",
            AgentInput::Coder(_) => "coder",
            AgentInput::Debug(_) => "debug",
            AgentInput::Mcp(_) => "mcp",
        }
    }

    /// The remote dependency this task calls, as a breaker label: one per MCP server, one per
    /// model endpoint. `None` for local work (commands, the offline coder and debug backends).
    pub fn dependency_breaker(&self, services: &Services) -> Option<String> {
        use crate::policy::breaker::short_digest;
        let model = |backend: crate::llm::ModelBackend| {
            let llm = &services.llm;
            let endpoint = match backend {
                crate::llm::ModelBackend::Anthropic => llm.anthropic_base_url().to_string(),
                crate::llm::ModelBackend::Openai => llm.openai_base_url().to_string(),
                crate::llm::ModelBackend::Command => llm.command.argv.join("\0"),
            };
            format!("model:{}:{}", backend.as_str(), short_digest(&endpoint))
        };
        match self {
            AgentInput::Command(_) => None,
            AgentInput::Mcp(input) => Some(match (&input.url, &input.server) {
                (Some(url), _) => format!("mcp:url:{}", short_digest(url)),
                _ => format!("mcp:{}", input.server_key()),
            }),
            AgentInput::Coder(input) => coder::model_backend(input, &services.llm).map(model),
            AgentInput::Debug(input) => debug::model_backend(input, &services.llm).map(model),
        }
    }

    /// The input as JSON, for output-reference substitution.
    pub fn input_value(&self) -> Value {
        let tagged = serde_json::to_value(self).expect("agent input serializes");
        tagged["input_data"].clone()
    }

    /// The same agent with a new input (after substitution); fails if it no longer fits the type.
    pub fn with_input(&self, input: Value) -> Result<AgentInput, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"agent": self.name(), "input_data": input}))
    }

    /// Runs one attempt. Dropping the future abandons the attempt and releases what it holds.
    pub async fn run(self, ctx: &AgentContext) -> Result<Value, Failure> {
        match self {
            AgentInput::Command(input) => to_json(command::run(input, ctx).await),
            AgentInput::Coder(input) => to_json(coder::run(input, ctx).await),
            AgentInput::Debug(input) => to_json(debug::run(input, ctx).await),
            AgentInput::Mcp(input) => to_json(mcp::run(input, ctx).await),
        }
    }
}

fn to_json<T: Serialize>(r: Result<T, Failure>) -> Result<Value, Failure> {
    r.map(|v| serde_json::to_value(v).expect("agent output serializes"))
}

/// Top-level field names of an agent's output, to check `{{tasks.X.output.<field>}}` up front.
/// Read from each output's JSON Schema once: a batch checks this once per reference.
pub fn output_fields(agent: &str) -> Option<&'static [String]> {
    use std::sync::OnceLock;
    type Fields = Vec<(&'static str, Option<Vec<String>>)>;
    static FIELDS: OnceLock<Fields> = OnceLock::new();
    let all = FIELDS.get_or_init(|| {
        let fields = |a: &str| -> Option<Vec<String>> {
            let props = output_schema(a)?.get("properties")?.as_object()?;
            Some(props.keys().cloned().collect())
        };
        ALL_AGENTS.iter().map(|a| (*a, fields(a))).collect()
    });
    all.iter()
        .find(|(a, _)| *a == agent)
        .and_then(|(_, f)| f.as_deref())
}

/// The JSON Schema of an agent's output (with its `$defs`), to check typed references up front.
pub fn output_schema(agent: &str) -> Option<&'static Value> {
    use std::sync::OnceLock;
    static SCHEMAS: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        let to_value = |s: schemars::Schema| serde_json::to_value(s).expect("schema serializes");
        vec![
            ("command", to_value(schemars::schema_for!(CommandOutput))),
            ("coder", to_value(schemars::schema_for!(CoderOutput))),
            ("debug", to_value(schemars::schema_for!(DebugOutput))),
            ("mcp", to_value(schemars::schema_for!(McpOutput))),
        ]
    });
    all.iter().find(|(a, _)| *a == agent).map(|(_, s)| s)
}

/// Checks an agent's input against the run's context (e.g. configured server names) before
/// anything runs. Returns problems as (JSON Pointer relative to `input_data`, message).
/// Whether [`check_input`] checks anything for this agent (saves serializing inputs otherwise).
pub fn has_input_checks(agent: &str) -> bool {
    agent == "mcp"
}

pub fn check_input(
    agent: &str,
    input: &Value,
    ctx: &crate::batch::validate::ValidationContext,
) -> Vec<(String, String)> {
    match agent {
        "mcp" => mcp::check(input, ctx),
        _ => Vec::new(),
    }
}
