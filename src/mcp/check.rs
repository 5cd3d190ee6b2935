//! `--check-tools`: before running, connect to every server the batch uses, list its tools, and
//! reject tasks whose tool does not exist or whose arguments do not match the tool's input schema.
//! The sessions opened here stay in the pool for the run.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::agents::AgentInput;
use crate::agents::mcp::{McpInput, transport_for};
use crate::batch::{Batch, Issue};
use crate::mcp::ToolInfo;
use crate::services::Services;

/// Problems found, as issues with JSON Pointers into the batch (`/tasks/3/input_data/tool`).
pub async fn check_tools(batch: &Batch, services: &Services) -> Vec<Issue> {
    let mut by_server: BTreeMap<String, Vec<(usize, &McpInput)>> = BTreeMap::new();
    for (i, task) in batch.tasks.iter().enumerate() {
        if let AgentInput::Mcp(input) = &task.agent {
            by_server
                .entry(input.server_key())
                .or_default()
                .push((i, input));
        }
    }
    let mut issues = Vec::new();
    for (key, tasks) in by_server {
        let first = tasks[0].1;
        let tools = match services
            .mcp_pool
            .session(&key, || transport_for(first, services))
            .await
        {
            Ok(session) => session.list_tools().await,
            Err(e) => Err(e),
        };
        let tools = match tools {
            Ok(t) => t,
            Err(e) => {
                for (i, input) in &tasks {
                    let field = if input.url.is_some() { "url" } else { "server" };
                    issues.push(Issue::new(
                        format!("/tasks/{i}/input_data/{field}"),
                        format!("cannot list the tools of MCP server '{key}': {e}"),
                    ));
                }
                continue;
            }
        };
        for (i, input) in tasks {
            issues.extend(check_task(i, input, &key, &tools));
        }
    }
    issues
}

fn check_task(i: usize, input: &McpInput, server: &str, tools: &[ToolInfo]) -> Vec<Issue> {
    let Some(tool) = tools.iter().find(|t| t.name == input.tool) else {
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        return vec![Issue::new(
            format!("/tasks/{i}/input_data/tool"),
            format!(
                "MCP server '{server}' has no tool '{}'; its tools: {}",
                input.tool,
                names.join(", ")
            ),
        )];
    };
    let arguments = Value::Object(input.arguments.clone());
    // Output references are filled in at run time; their values cannot be checked yet.
    if arguments.to_string().contains("{{") {
        return Vec::new();
    }
    let validator = match jsonschema::validator_for(&tool.input_schema) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(server, tool = %tool.name, "tool input schema is unusable: {e}");
            return Vec::new();
        }
    };
    validator
        .iter_errors(&arguments)
        .map(|e| {
            Issue::new(
                format!(
                    "/tasks/{i}/input_data/arguments{}",
                    e.instance_path().as_str()
                ),
                format!(
                    "does not match the input schema of tool '{}': {e}",
                    tool.name
                ),
            )
        })
        .collect()
}
