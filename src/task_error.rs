//! How a task or an attempt failed: a stable, machine-readable kind plus a human message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stable error kinds. Scripts and agents match on these strings; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command ran and exited non-zero (or was killed by a signal).
    ExitStatus,
    /// The attempt ran past its timeout and was abandoned.
    Timeout,
    /// The agent's circuit breaker was open; the task was not attempted.
    CircuitOpen,
    /// A dependency did not succeed, so the task was skipped.
    DependencyFailed,
    /// The program could not be started.
    SpawnFailed,
    /// The input was unusable in a way only visible at run time (e.g. a missing `cwd`).
    InvalidInput,
    /// A `{{tasks...}}` reference could not be resolved against the upstream output.
    ReferenceUnresolved,
    /// The run was interrupted or stopped by `fail_fast` before the task finished.
    Cancelled,
    /// Reading or writing failed.
    Io,
    /// A bug in the runner or an agent (a panic); reported against the task, never retried.
    Internal,
    /// A file path given to an agent resolves outside the workspace root.
    PathOutsideWorkspace,
    /// The file to write exists and `overwrite` is false.
    FileExists,
    /// Generated code does not pass its validation level (the file is still written).
    ValidationFailed,
    /// A model backend was chosen but is not usable (no API key, no model name).
    ModelNotConfigured,
    /// The model provider said 429 (too many requests); transient, `retry-after` is honoured.
    ModelRateLimited,
    /// The model provider failed (5xx) or could not be reached; transient.
    ModelUnavailable,
    /// The model provider refused the request (a 4xx other than 429); permanent.
    ModelRequestRejected,
    /// The model's reply could not be understood; transient (a second call usually works).
    ModelMalformedResponse,
    /// An MCP tool answered with `isError: true`.
    ToolError,
    /// An MCP server answered a request with a JSON-RPC error (e.g. unknown tool, bad arguments).
    McpError,
    /// A server could not be reached or used: connection refused or reset, HTTP 5xx, the server
    /// process exited, the session broke.
    Unavailable,
    /// A server answered something that is not valid protocol (invalid JSON, wrong shape).
    ProtocolError,
    /// The executor lost track of the attempt (its worker went away); transient.
    AttemptLost,
    /// The worker running the attempt stopped renewing its lease (it died, froze or was
    /// stopped); the attempt is started again elsewhere up to `max_redeliveries` times.
    WorkerLost,
    /// No worker took the attempt within `--queue-timeout`.
    QueueTimeout,
    /// A file an agent was to read or write is a FIFO, socket or device, not a regular file.
    NotARegularFile,
    /// A task's input would grow past `max_expanded_input_bytes` once `{{tasks...}}` references
    /// are replaced by upstream outputs.
    InputTooLarge,
    /// A child batch (`batch` agent) is invalid, or nests deeper than `config.max_batch_depth`;
    /// nothing of it ran.
    InvalidBatch,
    /// Some task of a child batch did not succeed, or no alternative of `first_success` did.
    ChildFailed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ExitStatus => "exit_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::DependencyFailed => "dependency_failed",
            ErrorKind::SpawnFailed => "spawn_failed",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::ReferenceUnresolved => "reference_unresolved",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::PathOutsideWorkspace => "path_outside_workspace",
            ErrorKind::FileExists => "file_exists",
            ErrorKind::ValidationFailed => "validation_failed",
            ErrorKind::ModelNotConfigured => "model_not_configured",
            ErrorKind::ModelRateLimited => "model_rate_limited",
            ErrorKind::ModelUnavailable => "model_unavailable",
            ErrorKind::ModelRequestRejected => "model_request_rejected",
            ErrorKind::ModelMalformedResponse => "model_malformed_response",
            ErrorKind::ToolError => "tool_error",
            ErrorKind::McpError => "mcp_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ProtocolError => "protocol_error",
            ErrorKind::AttemptLost => "attempt_lost",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::NotARegularFile => "not_a_regular_file",
            ErrorKind::InputTooLarge => "input_too_large",
            ErrorKind::InvalidBatch => "invalid_batch",
            ErrorKind::ChildFailed => "child_failed",
        }
    }
}

/// A task's error as shown in results and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
    /// Whether another attempt might succeed. Decides retries and breaker counting.
    #[serde(skip)]
    pub transient: bool,
    /// The earliest sensible retry, when the failing side said so (HTTP `retry-after`): a hint
    /// the retry policy takes as a lower bound for its backoff.
    #[serde(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl TaskError {
    pub fn transient(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            transient: true,
            retry_after: None,
        }
    }

    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }

    /// The same error with a retry hint.
    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// A failed attempt: the error, and whatever output the agent produced before failing (a command's
/// stderr is the most useful part of its failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: TaskError,
    pub output: Option<Value>,
}

impl From<TaskError> for Failure {
    fn from(error: TaskError) -> Self {
        Failure {
            error,
            output: None,
        }
    }
}
