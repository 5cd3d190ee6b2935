//! The `first_success` agent: alternatives for the same step (the same MCP tool on a primary and
//! a fallback server, a quick model before an expensive one). `race` runs them all at once and
//! takes the first success, cancelling the rest (their processes are killed); `sequential` tries
//! them in order until one succeeds. The dispatcher runs it itself (`runner::groups`): each
//! alternative is a task of the run, `<task_id>/alt-<n>`, with its own attempts in the trace.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agents::batch::{TaskBody, coordinated_only};
use crate::context::AgentContext;
use crate::task_error::Failure;

/// Input of the `first_success` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirstSuccessInput {
    /// The alternatives, each an agent with its input; `{{tasks...}}` references in them are to
    /// this task's dependencies.
    #[schemars(length(min = 1, max = 64))]
    pub alternatives: Vec<TaskBody>,
    /// `race` (default): all at once, the first success wins and the others are cancelled.
    /// `sequential`: one after another, until one succeeds.
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Race,
    Sequential,
}

/// Output of the `first_success` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FirstSuccessOutput {
    /// Position of the alternative that won (0 for the first).
    pub winner: usize,
    /// Its task id in the run (`<task_id>/alt-<n>`).
    pub winner_task: String,
    /// Its agent.
    pub agent: String,
    /// Its output.
    pub output: Value,
    /// Every alternative started: `task_id`, `status` (a loser of a race is `cancelled`),
    /// `error`.
    pub alternatives: Vec<Value>,
}

/// The `first_success` agent.
pub struct FirstSuccessAgent;

impl crate::agents::Agent for FirstSuccessAgent {
    type Input = FirstSuccessInput;
    type Output = FirstSuccessOutput;
    const COORDINATED: bool = true;

    async fn run(_: FirstSuccessInput, _: &AgentContext) -> Result<FirstSuccessOutput, Failure> {
        Err(coordinated_only("first_success"))
    }

    fn example_input() -> Value {
        serde_json::json!({"alternatives": [{"agent": "command", "input_data": {"argv": ["true"]}}]})
    }
}
