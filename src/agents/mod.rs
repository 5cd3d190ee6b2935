//! Typed agents. Each agent is one module with its input type, its output type and its `run`
//! function; [`AgentInput`] is the tagged union the batch carries (`agent` + `input_data`).
//!
//! Adding an agent means adding a module and a variant here. The scheduler, the policies and the
//! reporters never look inside an agent.

pub mod coder;
pub mod command;
pub mod debug;

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::process::Reaper;
use crate::services::Services;
use crate::task_error::Failure;

pub use coder::{CoderInput, CoderOutput};
pub use command::{CommandInput, CommandOutput};
pub use debug::{DebugInput, DebugOutput};

/// Every agent name of the batch format, built or not.
pub const ALL_AGENTS: &[&str] = &["command", "coder", "debug", "mcp"];

/// Agent names the batch format keeps for agents that are not in this build yet.
pub const RESERVED_AGENTS: &[&str] = &["mcp"];

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
}

impl AgentInput {
    /// The agent's name as written in the batch.
    pub fn name(&self) -> &'static str {
        match self {
            AgentInput::Command(_) => "command",
            AgentInput::Coder(_) => "coder",
            AgentInput::Debug(_) => "debug",
        }
    }

    /// Which circuit breaker guards this task: one per agent.
    pub fn breaker_key(&self) -> String {
        self.name().to_string()
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
        }
    }
}

fn to_json<T: Serialize>(r: Result<T, Failure>) -> Result<Value, Failure> {
    r.map(|v| serde_json::to_value(v).expect("agent output serializes"))
}

/// Top-level field names of an agent's output, to check `{{tasks.X.output.<field>}}` up front.
pub fn output_fields(agent: &str) -> Option<Vec<String>> {
    let schema = match agent {
        "command" => schemars::schema_for!(CommandOutput),
        "coder" => schemars::schema_for!(CoderOutput),
        "debug" => schemars::schema_for!(DebugOutput),
        _ => return None,
    };
    let props = schema.get("properties")?.as_object()?;
    Some(props.keys().cloned().collect())
}
