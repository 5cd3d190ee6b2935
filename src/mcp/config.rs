//! MCP servers as configured: `mcp.servers.<name>` in the configuration file, either
//! `{url, headers}` (Streamable HTTP) or `{command, args, env, cwd}` (a stdio server the runner
//! starts and stops). Header and env values may say `${VAR}`; expanded values are registered as
//! secrets so they never reach any output.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::redact::register_secret;

/// Name of the server used when a task names none.
pub const DEFAULT_SERVER: &str = "archon";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Servers by name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// One server: set `url` for Streamable HTTP, or `command` for a stdio server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Streamable HTTP endpoint, e.g. `http://localhost:8051/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Extra HTTP headers; values may use `${VAR}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Program of a stdio server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Variables added to the server's environment; values may use `${VAR}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A server ready to connect to, with `${VAR}` expanded.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    },
}

impl McpConfig {
    /// The configured servers plus the built-in `archon` at `ARCHON_MCP_URL`, when that variable
    /// is set and the configuration defines no `archon` of its own. Without the variable there is
    /// no built-in server: `doctor` would otherwise report a server nobody asked for as down.
    pub fn with_defaults(mut self) -> Self {
        if let Some(url) = std::env::var("ARCHON_MCP_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            self.servers
                .entry(DEFAULT_SERVER.to_string())
                .or_insert_with(|| ServerConfig {
                    url: Some(url),
                    ..ServerConfig::default()
                });
        }
        self
    }

    /// Checks every server's shape; returns `(path, message)` problems.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (name, s) in &self.servers {
            let path = format!("mcp.servers.{name}");
            match (&s.url, &s.command) {
                (Some(_), Some(_)) => {
                    problems.push((path, "set either `url` or `command`, not both".into()))
                }
                (None, None) => problems.push((
                    path,
                    "set `url` (Streamable HTTP) or `command` (stdio)".into(),
                )),
                (Some(_), None) if !s.args.is_empty() || !s.env.is_empty() || s.cwd.is_some() => {
                    problems.push((
                        path,
                        "`args`, `env` and `cwd` are for stdio servers (`command`)".into(),
                    ))
                }
                (None, Some(_)) if !s.headers.is_empty() => {
                    problems.push((path, "`headers` are for HTTP servers (`url`)".into()))
                }
                _ => {}
            }
        }
        problems
    }
}

impl ServerConfig {
    /// Expands `${VAR}` in header and env values (registering the results as secrets).
    pub fn transport(&self) -> Result<Transport, String> {
        let expand_all =
            |m: &BTreeMap<String, String>| -> Result<BTreeMap<String, String>, String> {
                m.iter()
                    .map(|(k, v)| expand_env(v).map(|v| (k.clone(), v)))
                    .collect()
            };
        match (&self.url, &self.command) {
            (Some(url), None) => Ok(Transport::Http {
                url: {
                    // Credentials in the URL stay out of what we write, even in debug dumps.
                    crate::redact::register_url_secrets(url);
                    url.clone()
                },
                headers: expand_all(&self.headers)?,
            }),
            (None, Some(command)) => Ok(Transport::Stdio {
                command: command.clone(),
                args: self.args.clone(),
                env: expand_all(&self.env)?,
                cwd: self.cwd.clone(),
            }),
            _ => Err("set exactly one of `url` or `command`".into()),
        }
    }
}

/// Replaces `${VAR}` with the variable's value; an unset variable is an error naming it. Values
/// that came from the environment are registered as secrets.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in '{text}'"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'${{{name}}}' is not a valid variable reference"));
        }
        let value =
            std::env::var(name).map_err(|_| format!("environment variable '{name}' is not set"))?;
        register_secret(&value);
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_registers_secrets() {
        // SAFETY: test-only variable with a unique name.
        unsafe { std::env::set_var("DISPATCH_TEST_MCP_TOKEN", "tok-123456") };
        assert_eq!(
            expand_env("Bearer ${DISPATCH_TEST_MCP_TOKEN}").unwrap(),
            "Bearer tok-123456"
        );
        assert_eq!(crate::redact::redact_text("x tok-123456"), "x [REDACTED]");
        assert!(
            expand_env("${DISPATCH_TEST_UNSET_VAR}")
                .unwrap_err()
                .contains("DISPATCH_TEST_UNSET_VAR")
        );
        assert!(expand_env("${oops").is_err());
        assert_eq!(expand_env("plain $HOME").unwrap(), "plain $HOME");
    }

    #[test]
    fn archon_is_built_in_and_shapes_are_checked() {
        let mut own = McpConfig::default();
        own.servers.insert(
            "archon".into(),
            ServerConfig {
                url: Some("http://configured".into()),
                ..Default::default()
            },
        );
        // A configured `archon` is kept as configured, whatever the environment says.
        let c = own.with_defaults();
        assert_eq!(
            c.servers["archon"].url.as_deref(),
            Some("http://configured")
        );
        let mut bad = McpConfig::default();
        bad.servers.insert("x".into(), ServerConfig::default());
        bad.servers.insert(
            "y".into(),
            ServerConfig {
                url: Some("http://h".into()),
                command: Some("c".into()),
                ..Default::default()
            },
        );
        let problems = bad.check();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].0, "mcp.servers.x");
    }
}
