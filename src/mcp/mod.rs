//! Model Context Protocol: server configuration, the project's own client over `rmcp`
//! (Streamable HTTP and stdio), the per-run session pool, the `--check-tools` pre-flight and the
//! `doctor` health report; and the runner's own MCP server (`mcp-server`).

pub mod check;
pub mod client;
pub mod config;
pub mod doctor;
pub mod pool;
pub mod server;
pub mod stdio;

pub use client::{McpError, Progress, Session, ToolInfo, ToolResult};
pub use config::{McpConfig, ServerConfig, Transport};
pub use pool::McpPool;
