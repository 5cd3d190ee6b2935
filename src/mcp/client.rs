//! The project's own small MCP client: connect (initialize + version negotiation), list tools,
//! call a tool (with progress and cancel-on-drop), close. `rmcp` stays behind this interface so
//! its often-changing API touches one file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientConfig,
    ClientRequest, Implementation, ProgressNotificationParam, ProtocolVersion, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    HttpStatusError, StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};

use crate::mcp::config::Transport;
use crate::mcp::stdio::{StdioServer, Violation};
use crate::task_error::{ErrorKind, TaskError};

/// The protocol version we ask for; the server may answer with an older one it supports.
pub const PREFERRED_PROTOCOL_VERSION: &str = "2025-11-25";

/// How long connecting (TCP + TLS) to an HTTP server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the initialize handshake may take before the server counts as unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why talking to a server failed, already classified for retry and breaker decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct McpError {
    pub kind: ErrorKind,
    pub message: String,
    pub transient: bool,
}

impl McpError {
    fn unavailable(message: impl Into<String>) -> Self {
        McpError {
            kind: ErrorKind::Unavailable,
            message: message.into(),
            transient: true,
        }
    }

    fn protocol(message: impl Into<String>) -> Self {
        McpError {
            kind: ErrorKind::ProtocolError,
            message: message.into(),
            transient: true,
        }
    }

    fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        McpError {
            kind,
            message: message.into(),
            transient: false,
        }
    }

    /// Whether the session that produced this error is unusable for later calls.
    pub fn session_is_broken(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::ProtocolError)
    }

    pub fn into_task_error(self, server: &str) -> TaskError {
        let message = format!("MCP server '{server}': {}", self.message);
        if self.transient {
            TaskError::transient(self.kind, message)
        } else {
            TaskError::permanent(self.kind, message)
        }
    }
}

impl std::fmt::Display for McpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// One progress notification for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// A tool as the server lists it.
#[derive(Debug, Clone)]
pub struct ToolInfo {
    pub name: String,
    pub input_schema: Value,
}

/// The result of `tools/call`, as the server returned it.
#[derive(Debug, Clone)]
pub struct ToolResult {
    pub content: Vec<Value>,
    pub structured_content: Option<Value>,
    pub is_error: bool,
}

/// Receives progress notifications and routes them to the call that asked for them.
#[derive(Clone)]
struct Handler {
    progress: ProgressDispatcher,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info.client_info = Implementation::new("dispatch_runner", env!("CARGO_PKG_VERSION"));
        info
    }
}

/// An initialized session with one server.
pub struct Session {
    service: tokio::sync::Mutex<Option<RunningService<RoleClient, Handler>>>,
    peer: rmcp::Peer<RoleClient>,
    progress: ProgressDispatcher,
    /// Cancellation notices still being sent; `close` lets them finish first.
    cancels: PendingCancels,
    /// Set when a stdio server wrote something that is not JSON-RPC to stdout.
    violation: Violation,
    /// The protocol version both sides agreed on.
    pub protocol_version: String,
    /// The server's name and version, as it announced them.
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    /// How long connect + initialize took.
    pub connect_latency: Duration,
}

impl Session {
    /// Starts (stdio) or reaches (HTTP) the server and performs the initialize handshake.
    pub async fn connect(transport: &Transport) -> Result<Session, McpError> {
        let started = Instant::now();
        let handler = Handler {
            progress: ProgressDispatcher::new(),
        };
        let progress = handler.progress.clone();
        let violation = Violation::default();
        let service = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            serve(handler, transport, violation.clone()),
        )
        .await
        .map_err(|_| {
            McpError::unavailable(format!(
                "no answer to initialize within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| blame(&violation, e))?;
        let info = service.peer().peer_info();
        let (protocol_version, server_name, server_version) = match info {
            Some(info) => (
                info.protocol_version.to_string(),
                info.server_info.as_ref().map(|s| s.name.clone()),
                info.server_info.as_ref().map(|s| s.version.clone()),
            ),
            None => return Err(McpError::protocol("the server sent no initialize result")),
        };
        if !ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .any(|v| v.to_string() == protocol_version)
        {
            return Err(McpError::permanent(
                ErrorKind::ProtocolError,
                format!(
                    "the server speaks protocol version '{protocol_version}', which this client does not know"
                ),
            ));
        }
        Ok(Session {
            peer: service.peer().clone(),
            service: tokio::sync::Mutex::new(Some(service)),
            progress,
            cancels: PendingCancels::default(),
            violation,
            protocol_version,
            server_name,
            server_version,
            connect_latency: started.elapsed(),
        })
    }

    /// Whether the connection is gone (server exited, stream closed).
    pub fn is_closed(&self) -> bool {
        self.peer.is_transport_closed()
    }

    /// Every tool the server offers (following pagination).
    pub async fn list_tools(&self) -> Result<Vec<ToolInfo>, McpError> {
        let tools = self
            .peer
            .list_all_tools()
            .await
            .map_err(|e| blame(&self.violation, service_error(e)))?;
        Ok(tools
            .into_iter()
            .map(|t| ToolInfo {
                name: t.name.to_string(),
                input_schema: Value::Object((*t.input_schema).clone()),
            })
            .collect())
    }

    /// Calls a tool. `on_progress` sees each progress notification for this call. Dropping the
    /// future before the answer arrives tells the server to cancel the request.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Map<String, Value>,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<ToolResult, McpError> {
        let mut params = CallToolRequestParams::new(name.to_string());
        params.arguments = Some(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = self
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| blame(&self.violation, service_error(e)))?;
        let mut guard = CancelOnDrop {
            peer: self.peer.clone(),
            id: Some(handle.id.clone()),
            pending: self.cancels.clone(),
        };
        let mut updates = self.progress.subscribe(handle.progress_token.clone()).await;
        let response = handle.await_response();
        tokio::pin!(response);
        let result = loop {
            tokio::select! {
                biased;
                Some(p) = futures_next(&mut updates) => on_progress(Progress {
                    progress: p.progress,
                    total: p.total,
                    message: p.message,
                }),
                r = &mut response => break r,
            }
        };
        // Answered (or failed) on its own: nothing to cancel.
        guard.id = None;
        // Notifications that arrived just before the answer still belong to this call.
        while let Ok(Some(p)) =
            tokio::time::timeout(Duration::ZERO, futures_next(&mut updates)).await
        {
            on_progress(Progress {
                progress: p.progress,
                total: p.total,
                message: p.message,
            });
        }
        match result.map_err(|e| blame(&self.violation, service_error(e)))? {
            ServerResult::CallToolResult(r) => Ok(ToolResult {
                content: r
                    .content
                    .iter()
                    .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                    .collect(),
                structured_content: r.structured_content,
                is_error: r.is_error.unwrap_or(false),
            }),
            other => Err(McpError::protocol(format!(
                "unexpected answer to tools/call: {}",
                short(&format!("{other:?}"))
            ))),
        }
    }

    /// Ends the session: closes the HTTP session or shuts the stdio server down.
    pub async fn close(&self) {
        let pending: Vec<_> = std::mem::take(&mut *self.cancels.lock().expect("cancels lock"));
        for cancel in pending {
            let _ = tokio::time::timeout(Duration::from_secs(2), cancel).await;
        }
        if let Some(mut service) = self.service.lock().await.take() {
            let _ = service.close_with_timeout(Duration::from_secs(5)).await;
        }
    }
}

async fn futures_next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// Sends `notifications/cancelled` for a request whose caller stopped waiting (timeout, run
/// interrupted), so the server can stop working on it.
struct CancelOnDrop {
    peer: rmcp::Peer<RoleClient>,
    id: Option<rmcp::model::RequestId>,
    pending: PendingCancels,
}

type PendingCancels = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let peer = self.peer.clone();
        let handle = rt.spawn(async move {
            let params = CancelledNotificationParam::new(
                Some(id),
                Some("the caller stopped waiting (timeout or cancellation)".into()),
            );
            let _ = peer.notify_cancelled(params).await;
        });
        let mut pending = self.pending.lock().expect("cancels lock");
        pending.retain(|h| !h.is_finished());
        pending.push(handle);
    }
}

/// A closed connection whose stdio server wrote non-JSON to stdout is that server's protocol
/// error, not an outage; it is not retried, as the same server would do the same again.
fn blame(violation: &Violation, e: McpError) -> McpError {
    match violation.get() {
        Some(what) if e.kind != ErrorKind::McpError => {
            McpError::permanent(ErrorKind::ProtocolError, what.clone())
        }
        _ => e,
    }
}

async fn serve(
    handler: Handler,
    transport: &Transport,
    violation: Violation,
) -> Result<RunningService<RoleClient, Handler>, McpError> {
    match transport {
        Transport::Http { url, headers } => {
            let client = crate::http::client_builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| McpError::unavailable(format!("cannot build HTTP client: {e}")))?;
            let mut custom = HashMap::new();
            for (name, value) in headers {
                let n = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    McpError::permanent(
                        ErrorKind::InvalidInput,
                        format!("'{name}' is not a valid header name"),
                    )
                })?;
                // The value is a secret: never quote it.
                let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                    McpError::permanent(
                        ErrorKind::InvalidInput,
                        format!("the value of header '{name}' is not a valid header value"),
                    )
                })?;
                v.set_sensitive(true);
                custom.insert(n, v);
            }
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(custom)
                .reinit_on_expired_session(true);
            let transport = StreamableHttpClientTransport::with_client(client, config);
            handler.serve(transport).await.map_err(init_error)
        }
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args).envs(env);
            // Its own process group: a Ctrl-C at the terminal reaches the runner, which then
            // shuts the server down in order; the watchdog kills the group should the runner die
            // without doing so.
            crate::process::watchdog::tie_to_runner(&mut cmd);
            if let Some(cwd) = cwd {
                cmd.current_dir(cwd);
            }
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let child = cmd.spawn().map_err(|e| {
                let transient = !matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                );
                McpError {
                    kind: ErrorKind::SpawnFailed,
                    message: format!("cannot start '{command}': {e}"),
                    transient,
                }
            })?;
            if let Some(pid) = child.id() {
                crate::process::watchdog::register(pid);
            }
            let server = StdioServer::new(child, violation).map_err(|e| {
                McpError::permanent(ErrorKind::SpawnFailed, format!("'{command}': {e}"))
            })?;
            handler.serve(server).await.map_err(init_error)
        }
    }
}

fn init_error(e: rmcp::service::ClientInitializeError) -> McpError {
    use rmcp::service::ClientInitializeError as E;
    match e {
        E::TransportError { error, context } => {
            let mut err = classify_dyn(error.error.as_ref());
            err.message = format!("{context}: {}", err.message);
            err
        }
        E::JsonRpcError(data) => McpError::permanent(
            ErrorKind::McpError,
            format!("initialize failed: {} (code {})", data.message, data.code.0),
        ),
        E::ConnectionClosed(what) => {
            McpError::unavailable(format!("connection closed during initialize ({what})"))
        }
        other => McpError::protocol(format!("initialize failed: {}", short(&other.to_string()))),
    }
}

fn service_error(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(data) => McpError::permanent(
            ErrorKind::McpError,
            format!("{} (JSON-RPC error {})", data.message, data.code.0),
        ),
        ServiceError::TransportSend(error) => classify_dyn(error.error.as_ref()),
        ServiceError::TransportClosed => {
            McpError::unavailable("the connection to the server closed")
        }
        ServiceError::Timeout { timeout } => McpError {
            kind: ErrorKind::Timeout,
            message: format!("no answer within {timeout:?}"),
            transient: true,
        },
        ServiceError::UnexpectedResponse => McpError::protocol("unexpected response type"),
        other => McpError::protocol(short(&other.to_string())),
    }
}

/// Classifies a transport error by walking its source chain: HTTP status, connection failures,
/// unreadable answers.
fn classify_dyn(error: &(dyn std::error::Error + 'static)) -> McpError {
    let text = short(&error_chain(error));
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(status) = e.downcast_ref::<HttpStatusError>() {
            return McpError::unavailable(format!("HTTP {}", status.status));
        }
        if let Some(http) = e.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            match http {
                StreamableHttpError::HttpStatus(s) => {
                    return McpError::unavailable(format!("HTTP {}", s.status));
                }
                StreamableHttpError::Client(r) => return reqwest_error(r, &text),
                StreamableHttpError::Deserialize(_)
                | StreamableHttpError::UnexpectedServerResponse(_)
                | StreamableHttpError::UnexpectedContentType(_)
                | StreamableHttpError::MissingSessionIdInResponse
                | StreamableHttpError::ResponseBodyTooLarge { .. } => {
                    return McpError::protocol(text);
                }
                StreamableHttpError::AuthRequired(_)
                | StreamableHttpError::InsufficientScope(_) => {
                    return McpError::permanent(
                        ErrorKind::Unavailable,
                        format!("the server refused our credentials: {text}"),
                    );
                }
                StreamableHttpError::ReservedHeaderConflict(name) => {
                    return McpError::permanent(
                        ErrorKind::InvalidInput,
                        format!(
                            "header '{name}' is set by the MCP transport and cannot be configured"
                        ),
                    );
                }
                _ => {}
            }
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return reqwest_error(r, &text);
        }
        if e.downcast_ref::<serde_json::Error>().is_some() {
            return McpError::protocol(text);
        }
        cur = e.source();
    }
    McpError::unavailable(text)
}

fn reqwest_error(e: &reqwest::Error, text: &str) -> McpError {
    if let Some(status) = e.status() {
        return McpError::unavailable(format!("HTTP {status}"));
    }
    if e.is_connect() {
        return McpError::unavailable(format!("cannot connect: {text}"));
    }
    if e.is_decode() || e.is_body() {
        return McpError::protocol(text.to_string());
    }
    McpError::unavailable(text.to_string())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn short(s: &str) -> String {
    const MAX: usize = 500;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Shared handle to a session.
pub type SharedSession = Arc<Session>;
