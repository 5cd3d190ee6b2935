//! The `command` agent: runs a program (no shell unless the user asks for one) in its own process
//! group and captures its exit code and output.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Input of the `command` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandInput {
    /// Program and arguments. No shell is involved unless you write `["sh", "-c", "..."]`.
    #[schemars(length(min = 1))]
    pub argv: Vec<String>,
    /// Working directory (default: the runner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the inherited environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Text written to the program's standard input (default: none, stdin is closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// Output of the `command` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommandOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// True when either stream was longer than `max_output_bytes` and was cut.
    pub truncated: bool,
}

use crate::context::AgentContext;
use crate::process::program::{self, Program, ProgramOutput};
use crate::task_error::Failure;

impl From<ProgramOutput> for CommandOutput {
    fn from(o: ProgramOutput) -> Self {
        CommandOutput {
            exit_code: o.exit_code,
            stdout: o.stdout,
            stderr: o.stderr,
            truncated: o.truncated,
        }
    }
}

/// Runs the program to completion. Dropping the returned future terminates its process group.
pub async fn run(input: CommandInput, ctx: &AgentContext) -> Result<CommandOutput, Failure> {
    let program = Program {
        argv: input.argv,
        cwd: input.cwd,
        env: input.env,
        stdin: input.stdin,
    };
    program::run(program, &ctx.run_limits())
        .await
        .map(CommandOutput::from)
}

/// The `command` agent.
pub struct CommandAgent;

impl crate::agents::Agent for CommandAgent {
    type Input = CommandInput;
    type Output = CommandOutput;

    async fn run(input: CommandInput, ctx: &AgentContext) -> Result<CommandOutput, Failure> {
        run(input, ctx).await
    }

    fn example_input() -> serde_json::Value {
        serde_json::json!({"argv": ["true"], "env": {"K": "v"}})
    }
}
