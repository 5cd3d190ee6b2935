//! The `batch` agent: runs a child batch (given inline, or as text a planner task printed), or
//! fans out one task per element of a list an upstream task produced. The dispatcher runs it
//! itself (`runner::groups`): the child's tasks join the run under the parent's worker limit,
//! breakers and cancellation, as `<task_id>/<child id>`. This module is its input and output.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::context::AgentContext;
use crate::task_error::{ErrorKind, Failure, TaskError};

/// Input of the `batch` agent: `batch`, or `for_each` with `task`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("dependentSchemas" = {
    "batch": {"properties": {"for_each": false, "task": false}},
    "for_each": {"required": ["task"]},
    "task": {"required": ["for_each"]}
}))]
pub struct BatchInput {
    /// The child batch: an object (its `{{tasks...}}` references are to its own tasks), or a
    /// string holding one, e.g. `"{{tasks.plan.output.stdout}}"`. It is validated in full before
    /// any of it runs; of its `config`, `timeout_seconds` and `retries` apply to its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_or_string")]
    pub batch: Option<Value>,
    /// Fan-out: one child task per element of this array, or of a string holding a JSON array
    /// (e.g. `"{{tasks.list.output.stdout}}"`), or of a typed reference
    /// (`{"$output": "list/parsed"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "array_or_string")]
    pub for_each: Option<Value>,
    /// With `for_each`: the task each element becomes (`agent` and `input_data`). In its strings,
    /// `{{item}}` is the element (a string as-is, anything else as compact JSON), `{{item.f}}`
    /// a field of it, `{{index}}` its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "TaskBody")]
    pub task: Option<TaskBody>,
}

/// A task without an id or dependencies: an agent and its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// Any agent of the batch format.
    #[schemars(length(min = 1))]
    pub agent: String,
    /// That agent's input.
    pub input_data: Map<String, Value>,
    /// Per-attempt timeout in seconds (default: the run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::limits::MIN_TIMEOUT_SECONDS))]
    pub timeout_seconds: Option<f64>,
}

// `anyOf` rather than a list of types: strict validators (ajv) refuse unions of types.
fn object_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"anyOf": [{"type": "object"}, {"type": "string"}]})
}

fn array_or_string(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let output_ref = g.subschema_for::<crate::passed::OutputRef>();
    schemars::json_schema!({"anyOf": [{"type": "array"}, {"type": "string"}, output_ref]})
}

/// Output of the `batch` agent: the child's result document.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BatchOutput {
    /// `success`, `partial` or `failure` as for a run; `invalid` when the child batch did not
    /// pass validation (nothing of it ran).
    pub status: String,
    /// The child's counts, as the run's `summary`.
    pub summary: Value,
    /// One result per child task, in the child's order: `task_id` (the child's own id),
    /// `agent`, `status`, `output`, `error`, `attempts`.
    pub results: Vec<Value>,
    /// The child's validation problems (`path` is a JSON Pointer into the child batch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Value>,
}

/// The `batch` agent.
pub struct BatchAgent;

impl crate::agents::Agent for BatchAgent {
    type Input = BatchInput;
    type Output = BatchOutput;
    const COORDINATED: bool = true;
    const CHILD_FIELDS: &'static [&'static str] = &["batch", "task"];

    async fn run(_: BatchInput, _: &AgentContext) -> Result<BatchOutput, Failure> {
        Err(coordinated_only("batch"))
    }

    fn example_input() -> Value {
        serde_json::json!({"batch": {"tasks": [
            {"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}}
        ]}})
    }
}

/// What an executor answers when handed an agent only the dispatcher can run.
pub fn coordinated_only(agent: &str) -> Failure {
    TaskError::permanent(
        ErrorKind::Internal,
        format!("the {agent} agent runs in the dispatcher, not in an executor"),
    )
    .into()
}
