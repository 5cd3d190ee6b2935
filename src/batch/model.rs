//! The batch as users write it: tasks, their agents' inputs, and the run configuration.
//!
//! These types are the single source of the input JSON Schema (`dispatch_runner schema`): field
//! names here are a public contract that people, CI jobs and coding agents write by hand.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agents::AgentInput;
use crate::batch::limits::{
    MAX_BACKOFF_MS, MAX_BATCH_DEPTH, MAX_BREAKER_NAME_LEN, MAX_OUTPUT_BYTES, MAX_RETRIES,
    MAX_TASK_ID_LEN, MAX_WORKERS, MIN_TIMEOUT_SECONDS, NAME_PATTERN,
};

/// A batch of tasks plus optional run configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dispatch_runner task batch")]
pub struct Batch {
    /// The tasks to run. Results come back in this order.
    pub tasks: Vec<Task>,
    /// Run configuration; every field is optional and has a default.
    #[serde(default)]
    pub config: BatchConfig,
}

/// One unit of work: an agent, its input, and the tasks it waits for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Unique id: 1 to 128 letters, digits, `_`, `-` or `.`.
    #[schemars(length(min = 1, max = MAX_TASK_ID_LEN), regex(pattern = NAME_PATTERN))]
    pub task_id: String,
    /// The agent that runs this task, with its input.
    #[serde(flatten)]
    pub agent: AgentInput,
    /// Free text for humans; shown in reports.
    #[serde(default)]
    pub description: String,
    /// Tasks that must succeed before this one starts.
    #[serde(default)]
    #[schemars(inner(length(min = 1, max = MAX_TASK_ID_LEN), regex(pattern = NAME_PATTERN)))]
    pub dependencies: Vec<String>,
    /// Per-attempt timeout in seconds; overrides `config.timeout_seconds`. `"auto"`: learned
    /// from the run history (a multiple of the task's recent 95th percentile duration, within
    /// the configured bounds; a fallback until there are enough runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<TaskTimeout>,
    /// Extra attempts after a transient failure; overrides `config.retries`.
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_RETRIES))]
    pub retries: Option<u32>,
    /// Opt-in: tasks naming the same breaker share one circuit breaker, and every transient
    /// failure among them (a non-zero exit included) counts toward opening it. Without it, only
    /// tasks calling a remote dependency (an MCP server, a model endpoint) have a breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_BREAKER_NAME_LEN), regex(pattern = NAME_PATTERN))]
    pub breaker: Option<String>,
    /// Opt-in to the result cache: when the agent, the input and the declared files and
    /// environment variables are as in an earlier successful run, the task does not run and its
    /// stored output comes back (`"cached": true`); see docs/batch-format.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "crate::cache::CacheSpec")]
    pub cache: Option<crate::cache::CacheSpec>,
}

/// A task's own timeout: a number of seconds, or `"auto"` (from the run history).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TaskTimeout {
    Seconds(f64),
    Auto,
}

impl TaskTimeout {
    /// The explicit number, if it is one.
    pub fn seconds(self) -> Option<f64> {
        match self {
            TaskTimeout::Seconds(s) => Some(s),
            TaskTimeout::Auto => None,
        }
    }
}

impl Serialize for TaskTimeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TaskTimeout::Seconds(v) => s.serialize_f64(*v),
            TaskTimeout::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for TaskTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TaskTimeout;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of seconds or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TaskTimeout, E> {
                Ok(TaskTimeout::Seconds(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TaskTimeout, E> {
                Ok(TaskTimeout::Seconds(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TaskTimeout, E> {
                Ok(TaskTimeout::Seconds(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TaskTimeout, E> {
                match v {
                    "auto" => Ok(TaskTimeout::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for TaskTimeout {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TaskTimeout".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                {"type": "number", "minimum": MIN_TIMEOUT_SECONDS},
                {"type": "string", "const": "auto"}
            ]
        })
    }
}

/// Run configuration carried by the batch. Absent fields fall back to the defaults shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most tasks running at once (default 5).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = MAX_WORKERS))]
    pub max_workers: Option<usize>,
    /// Per-attempt timeout in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_TIMEOUT_SECONDS))]
    pub timeout_seconds: Option<f64>,
    /// Folder for the per-run trace file (default `./traces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub trace_dir: Option<String>,
    /// Extra attempts after a transient failure (default 0).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_RETRIES))]
    pub retries: Option<u32>,
    /// First retry delay in milliseconds, doubled on each retry, capped, with jitter (default 1000).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_BACKOFF_MS))]
    pub retry_backoff_ms: Option<u64>,
    /// Longest retry delay in milliseconds (default 30000).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_BACKOFF_MS))]
    pub retry_backoff_max_ms: Option<u64>,
    /// Stop starting new tasks after the first task fails (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// Bytes kept of each captured output stream; the rest is dropped and `truncated` set (default 1 MiB).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = MAX_OUTPUT_BYTES))]
    pub max_output_bytes: Option<usize>,
    /// Most bytes the strings of a task's input that contain `{{tasks...}}` references may hold
    /// together once the references are replaced by upstream outputs; over it the task fails
    /// with `input_too_large` (default 4 × `max_output_bytes`, at least 4 MiB).
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1))]
    pub max_expanded_input_bytes: Option<usize>,
    /// Most levels of `batch` tasks inside `batch` tasks (default 3): a child batch deeper than
    /// this fails its `batch` task before any of it runs.
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_BATCH_DEPTH))]
    pub max_batch_depth: Option<u32>,
    /// Circuit breaker settings: one breaker per remote dependency (MCP server, model endpoint)
    /// plus any named by tasks.
    #[serde(default, skip_serializing_if = "BreakerConfig::is_empty")]
    pub circuit_breaker: BreakerConfig,
}

impl BreakerConfig {
    pub fn is_empty(&self) -> bool {
        *self == BreakerConfig::default()
    }
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// `false` turns every circuit breaker off (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Consecutive counted failures that open a breaker (default 5; 0 disables it). Counted:
    /// connection and transport failures, HTTP 5xx/429 and timeouts of the dependency; for a
    /// named breaker, every transient failure.
    #[serde(
        default,
        deserialize_with = "crate::batch::integral::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_threshold: Option<u32>,
    /// Seconds an open breaker waits before letting one probe through (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub recovery_timeout_seconds: Option<f64>,
}
