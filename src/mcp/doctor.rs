//! `dispatch_runner doctor`: connect to every configured MCP server and report, per server,
//! whether it is reachable, the negotiated protocol version, how many tools it offers and how
//! long connecting took, or the error.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mcp::McpConfig;
use crate::mcp::client::Session;

/// The health of one server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerHealth {
    pub name: String,
    /// `http` or `stdio`.
    pub transport: &'static str,
    /// The URL, or the command line of a stdio server (no env values: they may be secret).
    pub target: String,
    pub reachable: bool,
    pub protocol_version: Option<String>,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub tools: Option<usize>,
    /// Connect + initialize + list tools, in milliseconds.
    pub latency_ms: u64,
    pub error: Option<HealthError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthError {
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub healthy: bool,
    pub servers: Vec<ServerHealth>,
}

/// Checks every server concurrently, each within `limit`.
pub async fn doctor(config: &McpConfig, limit: Duration) -> DoctorReport {
    let checks = config.servers.iter().map(|(name, server)| {
        let name = name.clone();
        let server = server.clone();
        async move {
            let (transport, target) = match (&server.url, &server.command) {
                (Some(url), _) => ("http", url.clone()),
                (None, Some(cmd)) => (
                    "stdio",
                    std::iter::once(cmd.clone())
                        .chain(server.args.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => ("none", String::new()),
            };
            let started = Instant::now();
            let mut health = ServerHealth {
                name,
                transport,
                target,
                reachable: false,
                protocol_version: None,
                server_name: None,
                server_version: None,
                tools: None,
                latency_ms: 0,
                error: None,
            };
            let probe = async {
                let t = server.transport().map_err(|m| HealthError {
                    kind: "invalid_input",
                    message: format!("configuration: {m}"),
                })?;
                let session = Session::connect(&t).await.map_err(|e| HealthError {
                    kind: e.kind.as_str(),
                    message: e.message.clone(),
                })?;
                let tools = session.list_tools().await;
                session.close().await;
                Ok::<_, HealthError>((session, tools))
            };
            match tokio::time::timeout(limit, probe).await {
                Err(_) => {
                    health.error = Some(HealthError {
                        kind: "timeout",
                        message: format!("no answer within {}s", limit.as_secs_f64()),
                    })
                }
                Ok(Err(e)) => health.error = Some(e),
                Ok(Ok((session, tools))) => {
                    health.reachable = true;
                    health.protocol_version = Some(session.protocol_version.clone());
                    health.server_name = session.server_name.clone();
                    health.server_version = session.server_version.clone();
                    match tools {
                        Ok(t) => health.tools = Some(t.len()),
                        Err(e) => {
                            health.error = Some(HealthError {
                                kind: e.kind.as_str(),
                                message: format!("tools/list failed: {}", e.message),
                            })
                        }
                    }
                }
            }
            health.latency_ms = started.elapsed().as_millis() as u64;
            health
        }
    });
    let servers = join_all(checks.collect()).await;
    DoctorReport {
        healthy: servers.iter().all(|s| s.reachable && s.error.is_none()),
        servers,
    }
}

async fn join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("doctor check does not panic"));
    }
    out
}
