//! Long-lived things that agents share during a run: configuration sections and, later,
//! connection pools and sessions (one MCP session per server, model clients). Built once per run
//! (or once per server process) and handed to every attempt through `AgentContext`.

use std::path::PathBuf;

use std::sync::Arc;

use crate::llm::LlmConfig;
use crate::mcp::{McpConfig, McpPool};

/// Shared state for agents. Each agent that needs run-wide state adds a field here.
#[derive(Debug, Clone)]
pub struct Services {
    /// Root that file paths given to agents must stay inside.
    pub workspace: PathBuf,
    /// Configured MCP servers, the built-in `archon` included.
    pub mcp: McpConfig,
    /// Model backends of the `coder` and `debug` agents.
    pub llm: LlmConfig,
    /// Open MCP sessions, one per server, shared by all tasks; closed when the run ends.
    pub mcp_pool: Arc<McpPool>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            workspace: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            mcp: McpConfig::default().with_defaults(),
            llm: LlmConfig::from_env(),
            mcp_pool: Arc::new(McpPool::new()),
        }
    }
}
