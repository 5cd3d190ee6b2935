//! The `mcp` agent: calls one tool on a Model Context Protocol server (a configured one, by name,
//! or an ad-hoc Streamable HTTP URL) through the run's shared session for that server.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agents::AgentContext;
use crate::mcp::config::{DEFAULT_SERVER, Transport};
use crate::mcp::{McpError, ToolResult};
use crate::services::Services;
use crate::task_error::{ErrorKind, Failure, TaskError};
use crate::validation::ValidationContext;

/// Input of the `mcp` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("dependentSchemas" = {"server": {"properties": {"url": false}}}))]
pub struct McpInput {
    /// Name of the tool to call.
    #[schemars(length(min = 1))]
    pub tool: String,
    /// The tool's arguments. Strings may hold `{{tasks...}}` references (replaced by text); an
    /// object `{"$output": "<task_id>/<JSON Pointer>"}` (optionally with `"$each"`) anywhere in
    /// them is replaced by that value of the task's output, its JSON type kept.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// A server named in the configuration (`mcp.servers`). Default: `archon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// An ad-hoc Streamable HTTP endpoint (instead of `server`), e.g. `http://127.0.0.1:3001/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Output of the `mcp` agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct McpOutput {
    /// The server's name, or the URL for an ad-hoc server.
    pub server: String,
    pub tool: String,
    /// The tool's content items, as returned.
    pub content: Vec<Value>,
    /// The tool's structured result, when it gave one.
    pub structured_content: Option<Value>,
    /// The text items joined with newlines.
    pub text: String,
    /// `text` parsed as JSON when it is valid JSON, else null.
    pub parsed: Option<Value>,
}

impl McpInput {
    /// The server as named in results, breakers and the session pool.
    pub fn server_key(&self) -> String {
        match (&self.url, &self.server) {
            (Some(url), _) => url.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => DEFAULT_SERVER.to_string(),
        }
    }
}

/// Checks that need the run's context: the named server must be configured.
pub fn check(input: &Value, ctx: &ValidationContext) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let server = input.get("server").and_then(Value::as_str);
    let url = input.get("url").and_then(Value::as_str);
    // `server` and `url` together are refused by the schema (`dependentSchemas`).
    if let Some(url) = url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.push((
            "/url".to_string(),
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    if url.is_none()
        && let Some(known) = &ctx.mcp_servers
    {
        let name = server.unwrap_or(DEFAULT_SERVER);
        if !known.contains(name) {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            let list = if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            };
            let hint = if name == DEFAULT_SERVER {
                " or set ARCHON_MCP_URL"
            } else {
                ""
            };
            problems.push((
                "/server".to_string(),
                format!(
                    "unknown MCP server '{name}'; configured servers: {list} (add it under mcp.servers in the configuration file{hint})"
                ),
            ));
        }
    }
    problems
}

/// Where the task's server is: its configuration (with `${VAR}` expanded), or the ad-hoc URL.
pub fn transport_for(input: &McpInput, services: &Services) -> Result<Transport, McpError> {
    if let Some(url) = &input.url {
        return Ok(Transport::Http {
            url: url.clone(),
            headers: Default::default(),
        });
    }
    let key = input.server_key();
    let config = services.mcp.servers.get(&key).ok_or_else(|| McpError {
        kind: ErrorKind::InvalidInput,
        message: "not configured".into(),
        transient: false,
    })?;
    config.transport().map_err(|m| McpError {
        kind: ErrorKind::InvalidInput,
        message: format!("configuration: {m}"),
        transient: false,
    })
}

pub async fn run(input: McpInput, ctx: &AgentContext) -> Result<McpOutput, Failure> {
    let key = input.server_key();
    let fail = |e: McpError| Failure::from(e.into_task_error(&key));
    let services = &ctx.services;
    let session = services
        .mcp_pool
        .session(&key, || transport_for(&input, services))
        .await
        .map_err(fail)?;
    let progress = &ctx.progress;
    let result = session
        .call_tool(&input.tool, input.arguments.clone(), |p| {
            progress.report(p.progress, p.total, p.message)
        })
        .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            if e.session_is_broken() {
                services.mcp_pool.discard(&key, &session).await;
            }
            return Err(fail(e));
        }
    };
    let output = to_output(&key, &input.tool, result.clone());
    if result.is_error {
        let detail = if output.text.is_empty() {
            "no details given".to_string()
        } else {
            output.text.clone()
        };
        return Err(Failure {
            error: TaskError::permanent(
                ErrorKind::ToolError,
                format!(
                    "tool '{}' on '{key}' reported an error: {detail}",
                    input.tool
                ),
            ),
            output: Some(serde_json::to_value(output).expect("serializable")),
        });
    }
    Ok(output)
}

fn to_output(server: &str, tool: &str, result: ToolResult) -> McpOutput {
    let text = result
        .content
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed = serde_json::from_str(&text).ok();
    McpOutput {
        server: server.to_string(),
        tool: tool.to_string(),
        content: result.content,
        structured_content: result.structured_content,
        text,
        parsed,
    }
}

/// The `mcp` agent.
pub struct McpAgent;

impl crate::agents::Agent for McpAgent {
    type Input = McpInput;
    type Output = McpOutput;
    const CHECKS_INPUT: bool = true;

    async fn run(input: McpInput, ctx: &AgentContext) -> Result<McpOutput, Failure> {
        run(input, ctx).await
    }

    fn remote_dependency(input: &McpInput, _services: &Services) -> Option<String> {
        use crate::policy::breaker::short_digest;
        Some(match (&input.url, &input.server) {
            (Some(url), _) => format!("mcp:url:{}", short_digest(url)),
            _ => format!("mcp:{}", input.server_key()),
        })
    }

    fn check_input(input: &Value, ctx: &ValidationContext) -> Vec<(String, String)> {
        check(input, ctx)
    }

    fn example_input() -> Value {
        serde_json::json!({"tool": "echo", "arguments": {}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_joins_text_and_parses_json() {
        let out = to_output(
            "s",
            "t",
            ToolResult {
                content: vec![
                    json!({"type": "text", "text": "{\"a\":"}),
                    json!({"type": "image", "data": "x", "mimeType": "image/png"}),
                    json!({"type": "text", "text": "1}"}),
                ],
                structured_content: None,
                is_error: false,
            },
        );
        assert_eq!(out.text, "{\"a\":\n1}");
        assert_eq!(out.parsed, Some(json!({"a": 1})));
        let plain = to_output(
            "s",
            "t",
            ToolResult {
                content: vec![json!({"type": "text", "text": "Echo: hi"})],
                structured_content: Some(json!({"x": 1})),
                is_error: false,
            },
        );
        assert_eq!(plain.parsed, None);
        assert_eq!(plain.structured_content, Some(json!({"x": 1})));
    }

    #[test]
    fn check_rejects_unknown_servers_and_both_targets() {
        let ctx = ValidationContext {
            mcp_servers: Some(["archon".to_string(), "files".to_string()].into()),
            ..ValidationContext::default()
        };
        assert!(check(&json!({"tool": "x"}), &ctx).is_empty());
        assert!(check(&json!({"tool": "x", "server": "files"}), &ctx).is_empty());
        let p = check(&json!({"tool": "x", "server": "nope"}), &ctx);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "/server");
        assert!(p[0].1.contains("'nope'") && p[0].1.contains("archon, files"));
        let p = check(
            &json!({"tool": "x", "server": "files", "url": "ftp://h"}),
            &ctx,
        );
        // Both targets at once are the schema's to refuse (`dependentSchemas`); the URL's scheme
        // is this check's.
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "/url");
        // Without a context, names are not checked.
        assert!(
            check(
                &json!({"tool": "x", "server": "nope"}),
                &ValidationContext::default()
            )
            .is_empty()
        );
    }
}
