//! What validation may know beyond the batch. Agents check their inputs against it, so it lives
//! outside `batch` (which depends on the agents, not the other way round).

use std::collections::BTreeSet;

use crate::limits::Limits;

/// What validation may know beyond the batch: the size limits, and the environment the batch
/// will run in (empty by default: then only the batch itself is checked).
#[derive(Debug, Clone, Default)]
pub struct ValidationContext {
    pub limits: Limits,
    /// Names of the configured MCP servers; `mcp` tasks naming another are rejected.
    pub mcp_servers: Option<BTreeSet<String>>,
    /// The model settings the run will use; tasks that need a model whose backend is not
    /// configured (no key, no program) are rejected with `model_not_configured`.
    pub llm: Option<crate::llm::LlmConfig>,
}
