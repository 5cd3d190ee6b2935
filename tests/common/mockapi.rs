//! A stand-in for a paid model API on 127.0.0.1 (a free port): it answers with scripted
//! responses in order and records every request (method, path, headers, JSON body), so tests
//! can assert exactly what was sent. It speaks whatever wire format the script holds; helpers
//! build the Anthropic Messages and OpenAI chat-completions reply shapes.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Scripted>,
    requests: Vec<Recorded>,
}

pub struct MockApi {
    pub base: String,
    state: Arc<Mutex<State>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl MockApi {
    /// Starts a server that plays `script` in order (and answers 599 once it runs out).
    pub fn start(script: Vec<Scripted>) -> MockApi {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            requests: Vec::new(),
        }));
        let (tx_port, rx_port) = std::sync::mpsc::channel();
        let (tx_stop, rx_stop) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx_port.send(listener.local_addr().unwrap().port()).unwrap();
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let st = st.clone();
                        async move { handle(st, method, uri, headers, body) }
                    },
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx_stop.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let port = rx_port.recv().unwrap();
        MockApi {
            base: format!("http://127.0.0.1:{port}"),
            state,
            _shutdown: tx_stop,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn handle(
    st: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = st.lock().unwrap();
    s.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        // JSON as JSON; any other UTF-8 body (a Prometheus push) as a string.
        body: serde_json::from_slice(&body).unwrap_or_else(|_| {
            String::from_utf8(body.to_vec())
                .map(Value::String)
                .unwrap_or(Value::Null)
        }),
    });
    let Some(reply) = s.script.pop_front() else {
        return (StatusCode::from_u16(599).unwrap(), "script exhausted").into_response();
    };
    let mut response = Response::builder().status(reply.status);
    let mut has_type = false;
    for (k, v) in &reply.headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        response = response.header(k, v);
    }
    if !has_type {
        response = response.header("content-type", "application/json");
    }
    response.body(reply.body.into()).unwrap()
}

/// An Anthropic Messages reply carrying `text`.
pub fn anthropic_ok(text: &str, input_tokens: u64, output_tokens: u64) -> Scripted {
    Scripted {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}
        })
        .to_string(),
    }
}

/// An OpenAI chat-completions reply carrying `text`.
pub fn openai_ok(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Scripted {
    Scripted {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        })
        .to_string(),
    }
}

/// An error reply in the providers' shared `{"error": {...}}` shape.
pub fn error(status: u16, headers: &[(&str, &str)], message: &str) -> Scripted {
    Scripted {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: json!({"type": "error", "error": {"type": "api_error", "message": message}})
            .to_string(),
    }
}

pub fn raw(status: u16, body: &str) -> Scripted {
    Scripted {
        status,
        headers: vec![],
        body: body.to_string(),
    }
}

pub fn fenced(code: &str) -> String {
    format!("Here is the module:\n\n```python\n{code}```\n")
}

/// Test keys the provider stand-ins expect; tests assert they never appear in any output.
pub const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789abcdef";
pub const OPENAI_KEY: &str = "sk-openai-test-0123456789abcdef";

/// A model provider whose wire format the stand-in speaks. Tests add their own inherent
/// methods (what they read back from a recorded request).
#[derive(Clone, Copy, Debug)]
pub enum Provider {
    Anthropic,
    Openai,
}

pub const BOTH: [Provider; 2] = [Provider::Anthropic, Provider::Openai];

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openai => "openai",
        }
    }

    /// A successful reply with `text` and the token counts, in this provider's shape.
    pub fn ok(self, text: &str, i: u64, o: u64) -> Scripted {
        match self {
            Provider::Anthropic => anthropic_ok(text, i, o),
            Provider::Openai => openai_ok(text, i, o),
        }
    }

    /// The environment pointing the runner at `api` as this provider, with its test key.
    pub fn env(self, api: &MockApi) -> Vec<(&'static str, String)> {
        match self {
            Provider::Anthropic => vec![
                ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
                ("ANTHROPIC_BASE_URL", api.base.clone()),
                ("ANTHROPIC_MODEL", "claude-sonnet-4-5".into()),
            ],
            Provider::Openai => vec![
                ("OPENAI_API_KEY", OPENAI_KEY.into()),
                ("OPENAI_BASE_URL", format!("{}/v1", api.base)),
                ("OPENAI_MODEL", "gpt-4o-mini".into()),
            ],
        }
    }
}
