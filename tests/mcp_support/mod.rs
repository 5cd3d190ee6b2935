//! Real MCP servers for the tests (server-everything from npm, a Python SDK server), a counting
//! proxy in front of them, and a small misbehaving server for failure paths no real server can be
//! made to show. Everything listens on 127.0.0.1 on a free port and stops when dropped.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;

pub fn deps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps")
}

/// server-everything's entry point; installed by scripts/install-test-deps.
pub fn everything_js() -> String {
    let p = deps().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps",
        p.display()
    );
    p.display().to_string()
}

/// server-memory's entry point (a stdio server keeping a knowledge graph in `MEMORY_FILE_PATH`);
/// installed by scripts/install-test-deps.
pub fn memory_js() -> String {
    let p = deps().join("node/node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps",
        p.display()
    );
    p.display().to_string()
}

pub fn python() -> String {
    let p = deps().join("venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps",
        p.display()
    );
    p.display().to_string()
}

pub fn python_server_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mcp_python_server.py")
        .display()
        .to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
pub struct ServerProc {
    pub child: Child,
    pub port: u16,
}

impl ServerProc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on port {port} did not start listening within 60s");
}

/// server-everything over Streamable HTTP (`node dist/index.js streamableHttp`, `PORT`, `/mcp`).
pub fn start_everything_http() -> ServerProc {
    let port = free_port();
    let mut child = Command::new("node")
        .args([everything_js().as_str(), "streamableHttp"])
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    wait_for_port(port, &mut child);
    ServerProc { child, port }
}

/// The Python SDK server over Streamable HTTP; cancelled `slow` calls leave marker files in
/// `marker_dir`.
pub fn start_python_http(marker_dir: &std::path::Path) -> ServerProc {
    let port = free_port();
    let mut child = Command::new(python())
        .args([
            python_server_script().as_str(),
            "http",
            &port.to_string(),
            marker_dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python");
    wait_for_port(port, &mut child);
    ServerProc { child, port }
}

/// An HTTP server on its own thread and runtime, stopped when dropped.
struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(router: axum::Router) -> Background {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Background {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Open SSE streams may keep the graceful shutdown waiting; do not block the test on them.
        drop(self.thread.take());
    }
}

#[derive(Default)]
pub struct ProxyState {
    upstream: String,
    /// `initialize` requests seen.
    pub initializes: AtomicUsize,
    /// JSON-RPC methods seen, in order.
    pub methods: Mutex<Vec<String>>,
    /// After this many `tools/call` requests, the session in use is declared expired (404).
    expire_after_calls: Option<usize>,
    calls: AtomicUsize,
    expired: Mutex<Vec<String>>,
    client: Option<reqwest::Client>,
}

/// A proxy in front of a real server that counts `initialize` requests, records methods, and can
/// expire a session (answer 404 for it) the way a server restart or idle timeout would.
pub struct Proxy {
    bg: Background,
    pub state: Arc<ProxyState>,
}

impl Proxy {
    pub fn start(upstream: &str, expire_after_calls: Option<usize>) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_string(),
            expire_after_calls,
            client: Some(dispatch_runner::http::client_builder().build().unwrap()),
            ..ProxyState::default()
        });
        let router = axum::Router::new()
            .route("/mcp", axum::routing::any(proxy))
            .with_state(state.clone());
        Proxy {
            bg: Background::start(router),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.bg.addr)
    }

    pub fn initializes(&self) -> usize {
        self.state.initializes.load(Ordering::SeqCst)
    }

    pub fn methods(&self) -> Vec<String> {
        self.state.methods.lock().unwrap().clone()
    }
}

const FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

async fn proxy(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rpc_method = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_string));
    if let Some(m) = &rpc_method {
        state.methods.lock().unwrap().push(m.clone());
        if m == "initialize" {
            state.initializes.fetch_add(1, Ordering::SeqCst);
        }
    }
    if let Some(s) = &session {
        let mut expired = state.expired.lock().unwrap();
        if !expired.contains(s)
            && rpc_method.as_deref() == Some("tools/call")
            && let Some(limit) = state.expire_after_calls
            && state.calls.fetch_add(1, Ordering::SeqCst) + 1 == limit
        {
            expired.push(s.clone());
        }
        if expired.contains(s) {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::from("session not found"))
                .unwrap();
        }
    }
    let client = state.client.as_ref().unwrap();
    let mut req = client.request(method, &state.upstream).body(body);
    for name in FORWARDED {
        if let Some(v) = headers.get(*name) {
            req = req.header(*name, v.clone());
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .unwrap();
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in ["content-type", "mcp-session-id", "mcp-protocol-version"] {
        if let Some(v) = resp.headers().get(name) {
            out = out.header(name, v.clone());
        }
    }
    let stream = futures_util::stream::unfold(resp, |mut r| async move {
        match r.chunk().await {
            Ok(Some(b)) => Some((Ok::<_, reqwest::Error>(b), r)),
            _ => None,
        }
    });
    out.body(Body::from_stream(stream)).unwrap()
}

/// How the misbehaving server answers every request.
#[derive(Clone, Copy, Debug)]
pub enum Misbehavior {
    /// HTTP 500 with a plain-text body.
    Status500,
    /// HTTP 200, `application/json`, but the body is not JSON.
    InvalidJson,
    /// Accepts the request and never answers.
    Hang,
}

pub struct Misbehaving {
    bg: Background,
    pub requests: Arc<AtomicUsize>,
}

impl Misbehaving {
    pub fn start(how: Misbehavior) -> Misbehaving {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let router = axum::Router::new().route(
            "/mcp",
            axum::routing::any(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    match how {
                        Misbehavior::Status500 => Response::builder()
                            .status(500)
                            .body(Body::from("internal error"))
                            .unwrap(),
                        Misbehavior::InvalidJson => Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(Body::from("{this is not json"))
                            .unwrap(),
                        Misbehavior::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            Response::new(Body::empty())
                        }
                    }
                }
            }),
        );
        Misbehaving {
            bg: Background::start(router),
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.bg.addr)
    }
}

/// An `mcp` task.
pub fn mcp_task(
    id: &str,
    server: &str,
    tool: &str,
    arguments: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({"task_id": id, "agent": "mcp",
        "input_data": {"server": server, "tool": tool, "arguments": arguments}})
}

/// A configuration file naming servers: `(name, url)` for HTTP.
pub fn http_config(servers: &[(&str, &str)]) -> String {
    let mut s = String::from("mcp:\n  servers:\n");
    for (name, url) in servers {
        s.push_str(&format!("    {name}:\n      url: \"{url}\"\n"));
    }
    s
}
