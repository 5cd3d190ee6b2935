//! Model Context Protocol: server configuration (and, with the `mcp` agent, the client and the
//! per-run session pool).

pub mod config;

pub use config::{McpConfig, ServerConfig, Transport};
