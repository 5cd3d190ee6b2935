//! `dispatch_runner serve`: the runner behind HTTP (axum).
//!
//! - `POST /v1/dispatch`: a batch in, the result document out (200), or the `invalid` document
//!   (400). Runs are bounded (429 with `Retry-After` beyond the limit) and so are bodies (413).
//! - `GET /v1/runs/{run_id}`: that run's trace. `GET /health`: liveness, version, agents, MCP
//!   reachability. `GET /metrics`: Prometheus text, cumulative across the runs this instance
//!   served.
//! - With `DISPATCH_API_TOKEN` set, everything but `/health` needs `Authorization: Bearer <token>`;
//!   without it the server refuses to listen on anything but loopback.
//! - On SIGTERM/SIGINT it stops accepting, gives in-flight runs a grace period, then cancels them;
//!   their traces are written either way.
//!
//! Instances share nothing but the trace directory, so several can sit behind a load balancer
//! with the same `--trace-dir` on shared storage.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::batch::{BatchConfig, validate_text};
use crate::config::AgentSection;
use crate::mcp::Transport;
use crate::redact::redacted;
use crate::reporter::metrics::{Metrics, MetricsSink};
use crate::runner::{Interrupt, RunOptions, RunnerError, run};
use crate::services::Services;
use crate::settings::RunSettings;

pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const TOKEN_ENV: &str = "DISPATCH_API_TOKEN";

/// How the server runs; built by the binary from flags, configuration and environment.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub max_concurrent_runs: usize,
    /// How long in-flight runs may keep going after a shutdown signal before they are cancelled.
    pub shutdown_grace: Duration,
    /// Layers below each batch's own config (file, environment), lowest first.
    pub base_layers: Vec<BatchConfig>,
    pub agents: BTreeMap<String, AgentSection>,
    /// Every run's trace goes here, whatever the batch says, so `GET /v1/runs/{id}` finds it.
    pub trace_dir: PathBuf,
    pub services: Arc<Services>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on non-loopback address {0} without {TOKEN_ENV}: set a token or listen on 127.0.0.1"
    )]
    Unprotected(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

struct AppState {
    options: ServerOptions,
    /// Cumulative across every run this instance served.
    metrics: Metrics,
    runs: Semaphore,
    in_flight: Mutex<HashMap<u64, mpsc::Sender<Interrupt>>>,
    next_run: AtomicU64,
}

/// Serves until `shutdown` resolves, then drains as described in the module docs.
pub async fn serve(
    options: ServerOptions,
    shutdown: impl Future<Output = Interrupt> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    if options.token.is_none() && !options.listen.ip().is_loopback() {
        return Err(ServeError::Unprotected(options.listen));
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.listen,
            source,
        })?;
    on_listening(listener.local_addr()?);
    let max_body = options.max_body_bytes;
    let state = Arc::new(AppState {
        metrics: Metrics::new(),
        runs: Semaphore::new(options.max_concurrent_runs.max(1)),
        options,
        in_flight: Mutex::new(HashMap::new()),
        next_run: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/dispatch", post(dispatch))
        .route("/v1/runs/{run_id}", get(get_run))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    let drain = {
        let state = state.clone();
        async move {
            let signal = shutdown.await;
            tracing::info!("shutting down: no new connections; draining in-flight runs");
            let grace = state.options.shutdown_grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let senders: Vec<_> = state
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .values()
                    .cloned()
                    .collect();
                for tx in senders {
                    let _ = tx.send(signal).await;
                }
            });
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drain)
        .await?;
    Ok(())
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(token) = &state.options.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <DISPATCH_API_TOKEN>)",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "errors": [{"path": "", "message": message}]})),
    )
        .into_response()
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (status, axum::Json(redacted(value))).into_response()
}

async fn dispatch(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"status": "invalid", "errors": [{"path": "", "message": "body is not UTF-8 text"}]}),
        );
    };
    let validated = match validate_text(text) {
        Ok(v) => v,
        Err(errors) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"status": "invalid", "errors": errors}),
            );
        }
    };
    let Ok(_permit) = state.runs.try_acquire() else {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many runs in progress; retry later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };

    let options = &state.options;
    let mut layers: Vec<&BatchConfig> = options.base_layers.iter().collect();
    layers.push(&validated.batch.config);
    let mut settings = RunSettings::resolve(&layers);
    settings.trace_dir = options.trace_dir.clone();
    settings.agents = options.agents.clone();

    let id = state.next_run.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(2);
    state
        .in_flight
        .lock()
        .expect("in-flight lock")
        .insert(id, tx);
    let mut run_options = RunOptions::new(settings);
    run_options.sinks = vec![Box::new(MetricsSink::new(state.metrics.clone(), None))];
    run_options.interrupts = Some(rx);
    // MCP sessions belong to one run (they are closed when it ends), so each run gets its own
    // pool while sharing everything else.
    let mut services = (*options.services).clone();
    services.mcp_pool = Arc::new(crate::mcp::McpPool::new());
    run_options.services = Arc::new(services);
    let outcome = run(validated, run_options).await;
    state.in_flight.lock().expect("in-flight lock").remove(&id);
    match outcome {
        Ok(report) => json_response(StatusCode::OK, &report.result),
        Err(e @ RunnerError::TraceDir { .. }) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(RunnerError::TraceWrite {
            path,
            source,
            report,
        }) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"status": "error",
                    "errors": [{"path": "", "message": format!("cannot write trace file '{}': {source}", path.display())}],
                    "result": report.result}),
        ),
    }
}

async fn get_run(State(state): State<Arc<AppState>>, Path(run_id): Path<String>) -> Response {
    // Run ids are ours: anything else (a path, `..`) is simply not a run.
    let well_formed = !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !well_formed {
        return error(StatusCode::NOT_FOUND, "no such run");
    }
    let path = crate::reporter::trace::trace_path(&state.options.trace_dir, &run_id);
    match tokio::fs::read(&path).await {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(trace) => json_response(StatusCode::OK, &trace),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "trace file is unreadable",
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no such run")
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::redact::redact_text(&state.metrics.encode()).into_owned(),
    )
        .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let servers: Vec<(String, Option<Transport>)> = state
        .options
        .services
        .mcp
        .servers
        .iter()
        .map(|(name, server)| (name.clone(), server.transport().ok()))
        .collect();
    let checks = servers
        .into_iter()
        .map(|(name, transport)| async move { (name, reachable(transport).await) });
    let mcp: serde_json::Map<String, Value> = futures_join_all(checks)
        .await
        .into_iter()
        .map(|(name, ok)| (name, Value::Bool(ok)))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "status": "healthy",
            "version": env!("CARGO_PKG_VERSION"),
            "agents_available": crate::batch::schema::available_agents(),
            "mcp": mcp,
        }),
    )
}

/// Whether an MCP server can be reached: a TCP connection to an HTTP server's port, or a stdio
/// server's program being found.
async fn reachable(transport: Option<Transport>) -> bool {
    match transport {
        Some(Transport::Http { url, .. }) => {
            let Ok(url) = reqwest::Url::parse(&url) else {
                return false;
            };
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return false;
            };
            let connect = tokio::net::TcpStream::connect((host.to_string(), port));
            matches!(
                tokio::time::timeout(Duration::from_millis(500), connect).await,
                Ok(Ok(_))
            )
        }
        Some(Transport::Stdio { command, .. }) => program_exists(&command),
        None => false,
    }
}

fn program_exists(command: &str) -> bool {
    if command.contains('/') {
        return std::path::Path::new(command).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
}

/// Awaits futures concurrently (a tiny join_all, to avoid a dependency for one call).
async fn futures_join_all<F: Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
