//! `dispatch_runner serve`: the runner behind HTTP (axum on hyper, HTTP/1.1).
//!
//! - `POST /v1/dispatch`: a batch in (`Content-Type: application/json`), the result document out
//!   (200), or the `invalid` document (400). With `?wait=false`: 202 at once, with the run id and
//!   a `Location` to poll. Runs are bounded (429 with `Retry-After` beyond the limit) and so are
//!   bodies (413, before the body is read when `Content-Length` says so).
//! - `GET /v1/runs/{run_id}`: a running run's live status, or a finished run's trace and result.
//!   `DELETE /v1/runs/{run_id}`: cancels a running run (its processes are killed, its trace is
//!   written) and answers its result.
//! - `?result=compact` on these three: the compact result (`--result compact`) in place of the
//!   full one (for a finished run's `GET`, instead of the trace too).
//! - `GET /`, `GET /v1/runs`, `GET /v1/runs/{run_id}/events`, `GET /v1/workers`: the live
//!   dashboard and its data (see [`dashboard`]).
//! - `GET /health`: liveness, version, agents, MCP reachability. `GET /metrics`: Prometheus text,
//!   cumulative across the runs this instance served, plus runs in flight; every series with
//!   known label values is there at zero from start-up.
//!
//! A run belongs to the server, not to the HTTP connection that submitted it: it is a task of its
//! own, so a client that goes away changes nothing about the run, its trace or its slot.
//!
//! Every request passes [`guard`] first. Browsers let any web page send "simple" cross-site POSTs
//! (no pre-flight) and DNS rebinding gives a page a foreign host name for 127.0.0.1, so: the `Host`
//! must be the listen address, a loopback name or an allowed name; an `Origin`, if any, must be
//! this server; bodies must be `application/json` (a type no page can send cross-site without a
//! pre-flight this server never answers). With `DISPATCH_API_TOKEN` set, everything but `/health`
//! and the dashboard page `/` (no data in it) needs `Authorization: Bearer <token>`; without it
//! the server refuses to listen on anything but loopback. Every error answer is a JSON document.
//!
//! Connections are served by hand (not `axum::serve`) for three things it does not offer: a
//! header read timeout, a body read timeout, and a lingering close, so a client that writes its
//! whole body before reading (Python's urllib) reads our early 413 instead of a reset.
//!
//! On SIGTERM/SIGINT it stops accepting, gives in-flight runs a grace period, then cancels them;
//! their traces are written either way. Instances share nothing but the trace directory, so
//! several can sit behind a load balancer with the same `--trace-dir` on shared storage.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::batch::BatchConfig;
use crate::config::AgentSection;
use crate::events::{Event, EventKind, EventSink, Summary};
use crate::frontend::{Intake, error_document, invalid_document};
use crate::mcp::Transport;
use crate::redact::redacted;
use crate::reporter::RunResult;
use crate::reporter::compact::{CompactContext, ResultForm, compact};
use crate::reporter::metrics::{Metrics, MetricsSink};
use crate::reporter::recorder::RunRecord;
use crate::runner::{Interrupt, RunOptions, RunnerError, new_run_id, run};
use crate::services::Services;

pub mod dashboard;

pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const TOKEN_ENV: &str = "DISPATCH_API_TOKEN";

/// How long a connection is kept reading (and discarding) after its last answer, so the client
/// reads that answer rather than a reset; and how long it may stay silent meanwhile.
const LINGER_TOTAL: Duration = Duration::from_secs(10);
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// How the server runs; built by the front end from flags, configuration and environment.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// `None` means no authentication, which is only allowed on loopback.
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub max_concurrent_runs: usize,
    /// How long in-flight runs may keep going after a shutdown signal before they are cancelled.
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// Host names accepted in `Host` and `Origin` besides the listen address and loopback names;
    /// `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Layers below each batch's own config (file, environment), lowest first.
    pub base_layers: Vec<BatchConfig>,
    pub agents: BTreeMap<String, AgentSection>,
    /// Every run's trace goes here, whatever the batch says, so `GET /v1/runs/{id}` finds it.
    pub trace_dir: PathBuf,
    /// How batches are read and checked: the same as the command line.
    pub intake: Intake,
    pub services: Arc<Services>,
    /// Send every run's attempts to this Redis pool's workers (`serve --redis`).
    pub redis: Option<crate::remote::RedisOptions>,
    /// The result cache, run history and retention of the configuration file, as `run` uses them.
    pub stores: crate::runner::StoreOptions,
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

/// The answer a finished run gives to whoever waits for it.
struct Finished {
    status: StatusCode,
    body: Value,
}

/// A run in progress: how to stop it, what it is doing, and when it is done.
struct RunHandle {
    interrupts: mpsc::Sender<Interrupt>,
    live: Arc<Mutex<LiveStatus>>,
    done: watch::Receiver<Option<Arc<Finished>>>,
}

struct AppState {
    options: ServerOptions,
    hosts: HostPolicy,
    /// Cumulative across every run this instance served.
    metrics: Metrics,
    slots: Arc<Semaphore>,
    runs: Mutex<HashMap<String, RunHandle>>,
    shutting_down: AtomicBool,
    /// What the dashboard shows. Its workers panel: [`dashboard::Dashboard::with_workers`].
    dashboard: dashboard::Dashboard,
}

/// Binds `listen`, refusing an address beyond loopback when no token protects it (shared by
/// `serve` and `mcp-server --listen`).
pub(crate) async fn bind_protected(
    listen: SocketAddr,
    has_token: bool,
) -> Result<tokio::net::TcpListener, ServeError> {
    if !has_token && !listen.ip().is_loopback() {
        return Err(ServeError::Unprotected(listen));
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })
}

/// Serves until `shutdown` resolves, then drains as described in the module docs.
pub async fn serve(
    options: ServerOptions,
    shutdown: impl Future<Output = Interrupt> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let listener = bind_protected(options.listen, options.token.is_some()).await?;
    let local = listener.local_addr()?;
    on_listening(local);
    let redis_url = options.redis.as_ref().map(|r| r.url.clone());
    let state = Arc::new(AppState {
        hosts: HostPolicy::new(local, &options.allowed_hosts),
        metrics: Metrics::for_server(),
        slots: Arc::new(Semaphore::new(options.max_concurrent_runs.max(1))),
        options,
        runs: Mutex::new(HashMap::new()),
        shutting_down: AtomicBool::new(false),
        dashboard: match &redis_url {
            Some(url) => dashboard::Dashboard::default().with_workers(PoolWorkers::watch(url)),
            None => dashboard::Dashboard::default(),
        },
    });
    let app = Router::new()
        .route("/v1/dispatch", post(dispatch))
        .route("/v1/runs/{run_id}", get(get_run).delete(cancel_run))
        .route("/", get(dashboard::page))
        .route("/v1/runs", get(dashboard::list_runs))
        .route("/v1/runs/{run_id}/events", get(dashboard::events))
        .route("/v1/workers", get(dashboard::workers))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::map_response(json_errors))
        .with_state(state.clone());

    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let signal = loop {
        tokio::select! {
            signal = &mut shutdown => break signal,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(
                        stream,
                        app.clone(),
                        state.options.header_read_timeout,
                        close_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight runs");
    state.shutting_down.store(true, Ordering::SeqCst);
    let _ = close_tx.send(true);
    let canceller = {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(state.options.shutdown_grace).await;
            let senders: Vec<_> = lock(&state.runs)
                .values()
                .map(|h| h.interrupts.clone())
                .collect();
            for tx in senders {
                let _ = tx.send(signal).await;
            }
        })
    };
    while connections.join_next().await.is_some() {}
    // Runs submitted with `wait=false` have no connection waiting for them.
    loop {
        let pending: Vec<_> = lock(&state.runs).values().map(|h| h.done.clone()).collect();
        if pending.is_empty() {
            break;
        }
        for mut done in pending {
            let _ = done.wait_for(Option::is_some).await;
        }
    }
    canceller.abort();
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data usable for what we do with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

/// Serves one connection: HTTP/1.1 with a header read timeout, graceful close on shutdown, then
/// a lingering close.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tower = hyper_util::service::TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req| -> BoxedResponse {
        Box::pin(hyper::service::Service::call(&tower, req))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut closing = std::pin::pin!(async move {
        let _ = close.wait_for(|c| *c).await;
    });
    let mut graceful = false;
    let served = std::future::poll_fn(|cx| {
        if !graceful && closing.as_mut().poll(cx).is_ready() {
            graceful = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        conn.poll_without_shutdown(cx)
    })
    .await;
    match served {
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        // Header timeout, a malformed request, a client that went away: nothing to say.
        Err(e) => tracing::debug!("connection ended: {e}"),
    }
}

/// Closes like nginx's lingering close: send FIN after the last answer, then read and discard
/// what the client still sends (the rest of a body we refused) for a while. Closing with unread
/// data would make the kernel send a reset, which can destroy our answer before it is read.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let idle = tokio::time::Instant::now() + LINGER_IDLE;
        match tokio::time::timeout_at(deadline.min(idle), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Host, Origin, token, content type and declared size, before anything else looks at a request.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let token = state.options.token.as_deref();
    if let Some(refused) = admit(&state.hosts, token, state.options.max_body_bytes, &request) {
        return refused;
    }
    next.run(request).await
}

/// The checks of [`guard`], shared with `mcp-server --listen`: `Some` is the answer refusing the
/// request. `/health` needs no token.
pub(crate) fn admit(
    hosts: &HostPolicy,
    token: Option<&str>,
    max_body_bytes: usize,
    request: &Request,
) -> Option<Response> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if hosts.host(&host_name(host)) => {}
        Some(host) => {
            return Some(error(
                StatusCode::FORBIDDEN,
                &format!(
                    "Host '{}' is not this server (allowed: the listen address, localhost, loopback addresses, --allow-host)",
                    printable(host)
                ),
            ));
        }
        None => return Some(error(StatusCode::BAD_REQUEST, "the Host header is missing")),
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !hosts.origin(origin)
    {
        let shown = printable(origin.to_str().unwrap_or("(not text)"));
        return Some(error(
            StatusCode::FORBIDDEN,
            &format!("cross-origin requests are refused (Origin '{shown}')"),
        ));
    }
    // The dashboard page holds no data (a browser cannot add a header to a navigation); what
    // it shows comes from endpoints that need the token.
    if let Some(token) = token
        && !matches!(request.uri().path(), "/health" | "/")
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <DISPATCH_API_TOKEN>)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(response);
        }
    }
    if request.method() == Method::POST && !is_json(headers) {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be sent as Content-Type: application/json",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return Some(too_large(max_body_bytes));
    }
    None
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Header values are the client's: shown shortened and without control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// The host name of a `Host` header value (port and IPv6 brackets removed), lower case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Which names a request may use for this server, in `Host` and `Origin`.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    /// The address actually bound (port 0 resolved).
    local: SocketAddr,
    /// Extra names (`--allow-host`), normalised; `*` accepts any.
    allowed: Vec<String>,
}

impl HostPolicy {
    pub(crate) fn new(local: SocketAddr, allowed: &[String]) -> Self {
        let allowed = allowed
            .iter()
            .map(|h| if h == "*" { h.clone() } else { host_name(h) })
            .collect();
        HostPolicy { local, allowed }
    }

    fn any(&self) -> bool {
        self.allowed.iter().any(|h| h == "*")
    }

    /// `localhost`, a loopback address, the listen address (any address when listening on all of
    /// them), or a name on the allow-list. A DNS-rebinding page always arrives under its own
    /// domain name, which is none of these.
    fn host(&self, name: &str) -> bool {
        if self.any() || name == "localhost" || self.allowed.iter().any(|h| h == name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.local.ip() || self.local.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    /// An `Origin` is this server itself: an accepted host on the port we listen on, or a name on
    /// the allow-list (which may sit behind a proxy on another port). Its only page is its own
    /// dashboard, so any other origin is a foreign page calling it.
    fn origin(&self, origin: &HeaderValue) -> bool {
        if self.any() {
            return true;
        }
        let Some(url) = origin
            .to_str()
            .ok()
            .and_then(|o| reqwest::Url::parse(o).ok())
        else {
            return false; // `null` (sandboxed pages, file://) included
        };
        let Some(host) = url.host_str() else {
            return false;
        };
        let name = host_name(host);
        if self.allowed.contains(&name) {
            return true;
        }
        self.host(&name) && url.port_or_known_default() == Some(self.local.port())
    }
}

/// Answers that axum makes itself (404 of an unknown path, 405, a failed extractor) are plain
/// text; turn every error into the JSON document, keeping headers such as `Allow`.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_error || is_json {
        return response;
    }
    let (parts, _) = response.into_parts();
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let mut answer = error(status, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &error_document(message, None))
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than the limit of {limit} bytes (--max-body-bytes)"),
    )
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (status, axum::Json(redacted(value))).into_response()
}

/// `wait` from the query string: `true` (the default) or `false`.
fn wait_param(query: Option<&str>) -> Result<bool, String> {
    query_param(query, "wait", true, "true or false", |v| match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    })
}

/// `result` from the query string: `full` (the default) or `compact` (the agent-sized form).
fn result_param(query: Option<&str>) -> Result<ResultForm, String> {
    query_param(
        query,
        "result",
        ResultForm::Full,
        "full or compact",
        |v| match v {
            "full" => Some(ResultForm::Full),
            "compact" => Some(ResultForm::Compact),
            _ => None,
        },
    )
}

/// One parameter of the query string read with `parse`: the last occurrence wins, the first one
/// `parse` refuses is the error (`expected` says what it takes), none at all is `default`.
fn query_param<T>(
    query: Option<&str>,
    key: &str,
    default: T,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, String> {
    let mut found = default;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, value) = pair.split_once('=').unwrap_or((pair, ""));
        if k != key {
            continue;
        }
        found = parse(value).ok_or_else(|| {
            format!(
                "query parameter {key} must be {expected}, not '{}'",
                printable(value)
            )
        })?;
    }
    Ok(found)
}

/// A finished run's answer in the compact form: the compact result, or the `error` document with
/// a compact `result`.
fn compacted(body: &Value) -> Value {
    let context = CompactContext::default();
    let compact = |v: &Value| {
        serde_json::from_value::<RunResult>(v.clone())
            .ok()
            .and_then(|r| compact(&r, context.clone()).ok())
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
    };
    if let Some(doc) = compact(body) {
        return doc;
    }
    let mut body = body.clone();
    if let Some(doc) = body.get("result").and_then(compact) {
        body["result"] = doc;
    }
    body
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let wait = match wait_param(request.uri().query()) {
        Ok(w) => w,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let form = match result_param(request.uri().query()) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let limit = state.options.max_body_bytes;
    // Bodies sent in chunks have no Content-Length to refuse early; the limit applies as they
    // arrive.
    let read =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(request.into_body(), limit));
    let body = match tokio::time::timeout(state.options.body_read_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(limit),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
        Err(_) => {
            let mut response = error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within the read timeout",
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    // Checking a large batch takes CPU time; keep it off the threads that serve connections.
    let checked = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            state.options.intake.check(body.to_vec(), "request body")
        })
        .await
    };
    let validated = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(issues)) => {
            return json_response(StatusCode::BAD_REQUEST, &invalid_document(&issues));
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if state.shutting_down.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let Ok(slot) = state.slots.clone().try_acquire_owned() else {
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
    let mut settings = crate::frontend::settings(
        &options.base_layers,
        &validated.batch.config,
        &BatchConfig::default(),
        &options.agents,
    );
    settings.trace_dir = options.trace_dir.clone();
    // The batch was checked against the cap; the configuration file is held to it here.
    settings.max_output_bytes = settings
        .max_output_bytes
        .min(options.intake.limits.max_output_bytes);
    let (interrupts, rx) = mpsc::channel(2);
    // Complete from the start: a GET may come before the run has published anything.
    let live = Arc::new(Mutex::new(LiveStatus::new(
        validated.batch.tasks.iter().map(|t| t.task_id.clone()),
    )));
    let (done_tx, done) = watch::channel(None);
    let handle = RunHandle {
        interrupts,
        live: live.clone(),
        done: done.clone(),
    };
    // Ids are time plus 24 random bits: taken and registered under one lock, so two runs of the
    // same second can never share one.
    let run_id = {
        let mut runs = lock(&state.runs);
        let id = std::iter::repeat_with(new_run_id)
            .find(|id| !runs.contains_key(id))
            .expect("an endless supply of ids");
        runs.insert(id.clone(), handle);
        id
    };
    let mut run_options = RunOptions::new(settings);
    run_options.stores = options.stores.clone();
    run_options.run_id = Some(run_id.clone());
    run_options.sinks = vec![
        Box::new(MetricsSink::new(state.metrics.clone(), None)),
        Box::new(LiveSink(live.clone())),
        Box::new(
            state
                .dashboard
                .register(&run_id, validated.batch.tasks.len()),
        ),
    ];
    run_options.interrupts = Some(rx);
    run_options.redis = options.redis.clone();
    // MCP sessions belong to one run (they are closed when it ends), so each run gets its own
    // pool while sharing everything else.
    let mut services = (*options.services).clone();
    services.mcp_pool = Arc::new(crate::mcp::McpPool::new());
    run_options.services = Arc::new(services);
    let registration = Registration {
        state: state.clone(),
        run_id: run_id.clone(),
    };
    let in_flight = state.metrics.run_in_flight();
    tokio::spawn(async move {
        let outcome = run(validated, run_options).await;
        // Before the answer goes out: whoever got it and then scrapes sees the run finished.
        drop(in_flight);
        let _ = done_tx.send(Some(Arc::new(finished(outcome))));
        drop(registration);
        drop(slot);
    });
    if !wait {
        let location = format!("/v1/runs/{run_id}");
        let mut response = json_response(
            StatusCode::ACCEPTED,
            &json!({"status": "accepted", "run_id": run_id, "location": location}),
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return response;
    }
    answer_when_done(done, form).await
}

async fn answer_when_done(
    mut done: watch::Receiver<Option<Arc<Finished>>>,
    form: ResultForm,
) -> Response {
    match done.wait_for(Option::is_some).await {
        Ok(finished) => {
            let finished = finished.clone().expect("checked by wait_for");
            match form {
                ResultForm::Full => json_response(finished.status, &finished.body),
                ResultForm::Compact => json_response(finished.status, &compacted(&finished.body)),
            }
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the run ended without a result",
        ),
    }
}

/// Removes a run from the table of running runs when its task ends, however it ends.
struct Registration {
    state: Arc<AppState>,
    run_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.state.runs).remove(&self.run_id);
    }
}

/// The answer for a run that ended: its result, or why the runner failed.
fn finished(outcome: Result<crate::RunReport, RunnerError>) -> Finished {
    match outcome {
        Ok(report) => Finished {
            status: StatusCode::OK,
            body: serde_json::to_value(&report.result).unwrap_or(Value::Null),
        },
        Err(e @ RunnerError::Executor(_)) => Finished {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: error_document(&e.to_string(), None),
        },
        Err(e @ RunnerError::TraceDir { .. }) => Finished {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: error_document(&e.to_string(), None),
        },
        Err(RunnerError::TraceWrite {
            path,
            source,
            report,
        }) => Finished {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: error_document(
                &format!("cannot write trace file '{}': {source}", path.display()),
                Some(&report.result),
            ),
        },
    }
}

/// The checks every `/v1/runs/{run_id}` request starts with: the `result` form asked for, and
/// a run id of ours.
fn run_request(run_id: &str, query: Option<&str>) -> Result<ResultForm, Box<Response>> {
    let form = result_param(query)
        .map_err(|message| Box::new(error(StatusCode::BAD_REQUEST, &message)))?;
    if !well_formed(run_id) {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "no such run")));
    }
    Ok(form)
}

/// Run ids are ours: anything else (a path, `..`) is simply not a run.
fn well_formed(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

async fn get_run(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let form = match run_request(&run_id, query.as_deref()) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let live = lock(&state.runs)
        .get(&run_id)
        .filter(|h| h.done.borrow().is_none())
        .map(|h| lock(&h.live).view(&run_id));
    if let Some(view) = live {
        return json_response(StatusCode::OK, &view);
    }
    finished_view(&state, &run_id, form).await
}

/// A finished run as its trace says (any instance sharing the trace directory can answer):
/// the trace, plus `state` and the result document; compact, only the compact result and `state`.
async fn finished_view(state: &AppState, run_id: &str, form: ResultForm) -> Response {
    let path = crate::reporter::trace::trace_path(&state.options.trace_dir, run_id);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "no such run");
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let parsed = tokio::task::spawn_blocking(move || {
        let trace: Value = serde_json::from_slice(&bytes).ok()?;
        let record: RunRecord = serde_json::from_value(trace.clone()).ok()?;
        Some((trace, record))
    })
    .await;
    let Ok(Some((mut trace, record))) = parsed else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "trace file is unreadable",
        );
    };
    let result = RunResult::from_record(&record, &path);
    if form == ResultForm::Compact {
        let Ok(compacted) = compact(&result, CompactContext::default()) else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "trace file is unreadable",
            );
        };
        let mut doc = serde_json::to_value(compacted).unwrap_or(Value::Null);
        doc["state"] = json!("finished");
        return json_response(StatusCode::OK, &doc);
    }
    if let Some(doc) = trace.as_object_mut() {
        doc.insert("state".into(), json!("finished"));
        doc.insert(
            "result".into(),
            serde_json::to_value(result).unwrap_or(Value::Null),
        );
    }
    json_response(StatusCode::OK, &trace)
}

async fn cancel_run(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let form = match run_request(&run_id, query.as_deref()) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let handle = lock(&state.runs)
        .get(&run_id)
        .map(|h| (h.interrupts.clone(), h.done.clone()));
    let Some((interrupts, done)) = handle else {
        let path = crate::reporter::trace::trace_path(&state.options.trace_dir, &run_id);
        return if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            error(StatusCode::CONFLICT, "the run has already finished")
        } else {
            error(StatusCode::NOT_FOUND, "no such run")
        };
    };
    // The run cancels as on SIGTERM: no new tasks, running ones are terminated (then killed),
    // the trace is written. A full channel means a cancel is already on its way.
    let _ = interrupts.try_send(Interrupt::Request);
    answer_when_done(done, form).await
}

/// What a running run is doing, kept up to date from its event stream.
#[derive(Debug, Default)]
struct LiveStatus {
    started_at: Option<String>,
    cancelling: bool,
    summary: Summary,
    tasks: Vec<LiveTask>,
    index: HashMap<String, usize>,
}

#[derive(Debug, serde::Serialize)]
struct LiveTask {
    task_id: String,
    /// pending, ready, running, retrying, or the final status.
    status: &'static str,
    attempts: u32,
}

impl LiveStatus {
    fn new(task_ids: impl Iterator<Item = String>) -> Self {
        let mut live = LiveStatus::default();
        live.reset(task_ids);
        live
    }

    /// Every task pending.
    fn reset(&mut self, task_ids: impl Iterator<Item = String>) {
        self.tasks = task_ids
            .map(|task_id| LiveTask {
                task_id,
                status: "pending",
                attempts: 0,
            })
            .collect();
        self.index = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.clone(), i))
            .collect();
        self.summary = Summary {
            total_tasks: self.tasks.len(),
            ..Summary::default()
        };
    }

    fn view(&self, run_id: &str) -> Value {
        let running = self.tasks.iter().filter(|t| t.status == "running").count();
        let mut summary = serde_json::to_value(&self.summary).unwrap_or(Value::Null);
        if let Some(s) = summary.as_object_mut() {
            s.insert("running".into(), json!(running));
        }
        json!({
            "run_id": run_id,
            "state": if self.cancelling { "cancelling" } else { "running" },
            "started_at": self.started_at,
            "summary": summary,
            "tasks": self.tasks,
        })
    }

    fn set(&mut self, task_id: &str, status: &'static str, attempts: Option<u32>) {
        if let Some(task) = self.index.get(task_id).and_then(|&i| self.tasks.get_mut(i)) {
            task.status = status;
            if let Some(a) = attempts {
                task.attempts = a;
            }
        }
    }
}

/// The subscriber that keeps a [`LiveStatus`]: the event stream is the one source of truth for
/// the live view as for every other output.
struct LiveSink(Arc<Mutex<LiveStatus>>);

impl EventSink for LiveSink {
    fn on_event(&mut self, event: &Event) {
        let mut live = lock(&self.0);
        match &event.kind {
            EventKind::RunStarted { tasks, .. } => {
                live.started_at = Some(event.at.clone());
                live.reset(tasks.iter().map(|t| t.task_id.clone()));
            }
            EventKind::TaskReady { task_id } => live.set(task_id, "ready", None),
            EventKind::AttemptStarted {
                task_id, attempt, ..
            } => live.set(task_id, "running", Some(*attempt)),
            EventKind::RetryScheduled { task_id, .. } => live.set(task_id, "retrying", None),
            EventKind::TaskFinished {
                task_id, status, ..
            } => {
                live.summary.count(*status);
                live.set(task_id, status.as_str(), None);
            }
            EventKind::RunCancelled { .. } => live.cancelling = true,
            EventKind::RunFinished { summary, .. } => live.summary = summary.clone(),
            _ => {}
        }
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

/// The dashboard's workers panel under `serve --redis`: the pool's live workers as
/// `dispatch_runner workers` lists them (no secrets: names, hosts, agents, load), refreshed in
/// the background so a page's poll never waits on Redis.
struct PoolWorkers(std::sync::Mutex<Vec<Value>>);

impl PoolWorkers {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    fn watch(url: &str) -> Arc<PoolWorkers> {
        let pool = Arc::new(PoolWorkers(std::sync::Mutex::new(Vec::new())));
        let weak = Arc::downgrade(&pool);
        let url = url.to_string();
        tokio::spawn(async move {
            let mut warned = false;
            // Ends with the server: the dashboard holds the only strong reference.
            while let Some(pool) = weak.upgrade() {
                let listed = match crate::remote::list_workers(&url).await {
                    Ok(workers) => {
                        warned = false;
                        workers
                            .iter()
                            .filter_map(|w| serde_json::to_value(w).ok())
                            .collect()
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!("dashboard: cannot list the pool's workers: {e}");
                            warned = true;
                        }
                        Vec::new()
                    }
                };
                *pool.0.lock().unwrap_or_else(|p| p.into_inner()) = listed;
                drop(pool);
                tokio::time::sleep(Self::EVERY).await;
            }
        });
        pool
    }
}

impl dashboard::WorkerSource for PoolWorkers {
    fn workers(&self) -> Vec<Value> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_brackets_and_case() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("evil.example."), "evil.example");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn host_policy() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let policy = HostPolicy::new(local, &["Dispatch.Internal:443".into()]);
        for ok in [
            "localhost",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "dispatch.internal",
        ] {
            assert!(policy.host(ok), "{ok}");
        }
        for bad in ["evil.example", "10.0.0.5", "localhost.evil.example", ""] {
            assert!(!policy.host(bad), "{bad}");
        }
        let origin = |o: &str| policy.origin(&HeaderValue::from_str(o).unwrap());
        assert!(origin("http://127.0.0.1:8080"));
        assert!(origin("http://localhost:8080"));
        assert!(origin("https://dispatch.internal"));
        assert!(!origin("http://localhost:3000"));
        assert!(!origin("http://evil.example:8080"));
        assert!(!origin("null"));

        // Listening on every address: any address literal is the listen address, names are not.
        let all = HostPolicy::new("0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(all.host("10.0.0.5"));
        assert!(!all.host("evil.example"));
        assert!(HostPolicy::new(local, &["*".into()]).host("evil.example"));
    }

    #[test]
    fn live_status_follows_the_event_stream() {
        let live = Arc::new(Mutex::new(LiveStatus::new(
            ["a", "b"].into_iter().map(String::from),
        )));
        let mut sink = LiveSink(live.clone());
        let mut seq = 0;
        let mut emit = |kind: EventKind| {
            sink.on_event(&Event {
                seq,
                at: "2026-01-01T00:00:00.000Z".into(),
                elapsed_ms: 0.0,
                kind,
            });
            seq += 1;
        };
        emit(EventKind::TaskReady {
            task_id: "a".into(),
        });
        emit(EventKind::AttemptStarted {
            task_id: "a".into(),
            attempt: 1,
            worker: 0,
            breaker: None,
            timeout: None,
        });
        let view = lock(&live).view("r1");
        assert_eq!(view["state"], "running");
        assert_eq!(view["summary"]["total_tasks"], 2);
        assert_eq!(view["summary"]["running"], 1);
        assert_eq!(view["tasks"][0]["status"], "running");
        assert_eq!(view["tasks"][1]["status"], "pending");
        emit(EventKind::TaskFinished {
            task_id: "a".into(),
            status: crate::events::TaskStatus::Success,
            output: None,
            error: None,
            attempts: 1,
            reused: false,
            cached: false,
            files: Default::default(),
        });
        emit(EventKind::RunCancelled {
            reason: crate::events::CancelReason::Sigterm,
        });
        let view = lock(&live).view("r1");
        assert_eq!(view["state"], "cancelling");
        assert_eq!(view["summary"]["successful"], 1);
        assert_eq!(view["summary"]["running"], 0);
        assert_eq!(view["tasks"][0]["status"], "success");
        assert_eq!(view["tasks"][0]["attempts"], 1);
    }

    #[test]
    fn wait_parameter() {
        assert_eq!(wait_param(None), Ok(true));
        assert_eq!(wait_param(Some("wait=false")), Ok(false));
        assert_eq!(wait_param(Some("x=1&wait=0")), Ok(false));
        assert!(wait_param(Some("wait=maybe")).is_err());
        assert_eq!(result_param(None), Ok(ResultForm::Full));
        assert_eq!(
            result_param(Some("wait=1&result=compact")),
            Ok(ResultForm::Compact)
        );
        assert!(result_param(Some("result=short")).is_err());
    }
}
