//! Typed agents. Each agent is one module: its input type (serde + schemars, so the batch schema
//! and validation come from it), its output type, and its execution, tied together by the
//! [`Agent`] trait. [`AgentInput`], the tagged union the batch carries (`agent` + `input_data`),
//! and every table keyed by agent name are generated from the one list in `registry!` below.
//!
//! Adding an agent means adding a module with an `impl Agent` and one line in that list. The
//! scheduler, the policies and the reporters never look inside an agent.

pub mod batch;
pub mod coder;
pub mod command;
pub mod debug;
pub mod first_success;
pub mod mcp;
pub mod prompt;

use std::future::Future;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::services::Services;
use crate::task_error::Failure;
use crate::validation::ValidationContext;

pub use crate::context::{AgentContext, PROGRESS_BUFFER, ProgressNote, ProgressSink};
pub use coder::{CoderInput, CoderOutput};
pub use command::{CommandInput, CommandOutput};
pub use debug::{DebugInput, DebugOutput};
pub use mcp::{McpInput, McpOutput};

/// One agent: what it takes, what it gives, how it runs. Implemented by a unit type in the
/// agent's module and listed once in `registry!`.
pub trait Agent {
    /// The task's `input_data`. Its JSON Schema becomes that agent's part of the batch schema.
    type Input: Serialize + DeserializeOwned + JsonSchema + Clone + std::fmt::Debug + Send + 'static;
    /// The task's `output`. Its JSON Schema is what `{{tasks.X.output...}}` references are checked
    /// against before the run.
    type Output: Serialize + JsonSchema;

    /// Whether [`Agent::check_input`] checks anything (saves serializing inputs otherwise).
    const CHECKS_INPUT: bool = false;

    /// Whether the dispatcher runs this agent itself, by adding tasks to the run
    /// (`runner::groups`), rather than handing attempts to an executor; `run` is then never
    /// called by the runner.
    const COORDINATED: bool = false;

    /// Top-level input fields that hold tasks of a child batch: `{{tasks...}}` references inside
    /// them (when they are objects) are the child's own, so the parent neither checks nor fills
    /// them in. A string there is the parent's (it is how a planner's output becomes a batch).
    const CHILD_FIELDS: &'static [&'static str] = &[];

    /// Runs one attempt. Dropping the future abandons the attempt and releases what it holds.
    fn run(
        input: Self::Input,
        ctx: &AgentContext,
    ) -> impl Future<Output = Result<Self::Output, Failure>> + Send;

    /// The remote dependency this input calls, as a breaker label (see
    /// [`AgentInput::dependency_breaker`]); `None` for local work.
    fn remote_dependency(_input: &Self::Input, _services: &Services) -> Option<String> {
        None
    }

    /// Checks the input against the run's context (e.g. configured server names) before
    /// anything runs. Problems as (JSON Pointer relative to `input_data`, message).
    fn check_input(_input: &Value, _ctx: &ValidationContext) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A small valid input, which tests break one schema rule at a time and run offline.
    fn example_input() -> Value;
}

/// The one list of agents. Each line: the variant's doc comment (the agent's description in the
/// schema), its variant name, its name in the batch, and the type implementing [`Agent`].
macro_rules! registry {
    ($( $(#[doc = $doc:literal])* $variant:ident($name:literal) => $agent:ty, )*) => {
        /// An agent with its input, tagged by `agent` with the input under `input_data`.
        #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "agent", content = "input_data")]
        pub enum AgentInput {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant(<$agent as Agent>::Input), )*
        }

        /// Every agent name of the batch format, in declaration order.
        pub const ALL_AGENTS: &[&str] = &[$($name),*];

        /// The agents whose attempts an executor runs (a Redis worker serves these): all but
        /// the ones the dispatcher runs itself.
        pub fn executed_agents() -> Vec<&'static str> {
            let mut names = Vec::new();
            $( if !<$agent as Agent>::COORDINATED { names.push($name); } )*
            names
        }

        impl AgentInput {
            /// The agent's name as written in the batch.
            pub fn name(&self) -> &'static str {
                match self {
                    $( AgentInput::$variant(_) => $name, )*
                }
            }

            /// The remote dependency this task calls, as a breaker label: one per MCP server,
            /// one per model endpoint. `None` for local work (commands, the offline coder and
            /// debug backends).
            pub fn dependency_breaker(&self, services: &Services) -> Option<String> {
                match self {
                    $( AgentInput::$variant(input) => <$agent as Agent>::remote_dependency(input, services), )*
                }
            }

            /// Whether the dispatcher runs this task itself (see [`Agent::COORDINATED`]).
            pub fn is_coordinated(&self) -> bool {
                match self {
                    $( AgentInput::$variant(_) => <$agent as Agent>::COORDINATED, )*
                }
            }

            /// Runs one attempt. Dropping the future abandons the attempt and releases what it
            /// holds.
            pub async fn run(self, ctx: &AgentContext) -> Result<Value, Failure> {
                match self {
                    $( AgentInput::$variant(input) => to_json(<$agent as Agent>::run(input, ctx).await), )*
                }
            }
        }

        /// Each agent's output schema, by name.
        fn output_schemas() -> Vec<(&'static str, Value)> {
            let to_value = |s: schemars::Schema| serde_json::to_value(s).expect("schema serializes");
            vec![$( ($name, to_value(schemars::schema_for!(<$agent as Agent>::Output))), )*]
        }

        /// Whether [`check_input`] checks anything for this agent (saves serializing inputs
        /// otherwise).
        pub fn has_input_checks(agent: &str) -> bool {
            match agent {
                $( $name => <$agent as Agent>::CHECKS_INPUT, )*
                _ => false,
            }
        }

        /// Checks an agent's input against the run's context (e.g. configured server names)
        /// before anything runs. Returns problems as (JSON Pointer relative to `input_data`,
        /// message).
        pub fn check_input(agent: &str, input: &Value, ctx: &ValidationContext) -> Vec<(String, String)> {
            match agent {
                $( $name => <$agent as Agent>::check_input(input, ctx), )*
                _ => Vec::new(),
            }
        }

        /// The input fields that belong to a child batch (see [`Agent::CHILD_FIELDS`]).
        pub fn child_fields(agent: &str) -> &'static [&'static str] {
            match agent {
                $( $name => <$agent as Agent>::CHILD_FIELDS, )*
                _ => &[],
            }
        }

        /// A small valid input of the agent (see [`Agent::example_input`]).
        pub fn example_input(agent: &str) -> Option<Value> {
            match agent {
                $( $name => Some(<$agent as Agent>::example_input()), )*
                _ => None,
            }
        }
    };
}

registry! {
    /// Run a program with arguments, without a shell.
    Command("command") => command::CommandAgent,
    /// Write an ONEX node module from a contract (offline scaffold or a model).
    Coder("coder") => coder::CoderAgent,
    /// Analyse a failure: syntax errors, stack traces, bug patterns, a ranked root cause.
    Debug("debug") => debug::DebugAgent,
    /// Call a tool on a Model Context Protocol server.
    Mcp("mcp") => mcp::McpAgent,
    /// Run a child batch (inline, or as text a planner printed), or one task per element of a list.
    Batch("batch") => batch::BatchAgent,
    /// Run alternatives (race or in order) until one succeeds; its output and which one won.
    FirstSuccess("first_success") => first_success::FirstSuccessAgent,
    /// Ask a model in a role (planner, builder, reviewer, ...); its reply as text, and as JSON under a schema.
    Prompt("prompt") => prompt::PromptAgent,
}

pub fn is_agent_name(name: &str) -> bool {
    ALL_AGENTS.contains(&name)
}

/// The breaker label of a model endpoint, for agents that call a model.
pub fn model_breaker(backend: crate::llm::ModelBackend, services: &Services) -> String {
    use crate::policy::breaker::short_digest;
    let llm = &services.llm;
    let endpoint = match backend {
        crate::llm::ModelBackend::Anthropic => llm.anthropic_base_url().to_string(),
        crate::llm::ModelBackend::Openai => llm.openai_base_url().to_string(),
        crate::llm::ModelBackend::Command => llm.command.argv.join("\0"),
    };
    format!("model:{}:{}", backend.as_str(), short_digest(&endpoint))
}

/// The part of an input the parent batch owns: the input without its child-batch fields that
/// are objects (see [`Agent::CHILD_FIELDS`]), or `None` when it has none (use it as it is).
pub fn parent_scope(agent: &str, input: &Value) -> Option<Value> {
    let fields = child_fields(agent);
    let obj = input.as_object()?;
    if !fields
        .iter()
        .any(|f| obj.get(*f).is_some_and(|v| !v.is_string()))
    {
        return None;
    }
    let mut scoped = obj.clone();
    for f in fields {
        if scoped.get(*f).is_some_and(|v| !v.is_string()) {
            scoped.shift_remove(*f);
        }
    }
    Some(Value::Object(scoped))
}

impl AgentInput {
    /// The input as JSON, for output-reference substitution.
    pub fn input_value(&self) -> Value {
        let tagged = serde_json::to_value(self).expect("agent input serializes");
        tagged["input_data"].clone()
    }

    /// The same agent with a new input (after substitution); fails if it no longer fits the type.
    pub fn with_input(&self, input: Value) -> Result<AgentInput, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"agent": self.name(), "input_data": input}))
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
    let all = SCHEMAS.get_or_init(output_schemas);
    all.iter().find(|(a, _)| *a == agent).map(|(_, s)| s)
}
