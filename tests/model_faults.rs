//! A model endpoint that hangs or dies in the middle of a run: the attempt times out (and is
//! retried), or fails as `model_unavailable`; repeated failures open the agent's breaker; the run
//! still ends with every result and a complete trace.

#[path = "common/agents.rs"]
mod agents;
mod common;
#[path = "common/mockapi.rs"]
mod mockapi;
#[path = "common/modules.rs"]
mod modules;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use agents::run_with_env;
use common::*;
use serde_json::{Value, json};

/// What the endpoint does with one connection.
enum Conn {
    /// Answer 200 with this JSON body.
    Reply(String),
    /// Read the request, then close the connection without answering (the process died).
    Close,
    /// Read the request and never answer.
    Hang,
}

/// A raw HTTP endpoint on 127.0.0.1 that plays `script`, one connection each, then stops
/// listening: later connections are refused, as when the server process is gone.
fn endpoint(script: Vec<Conn>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut hung: Vec<TcpStream> = Vec::new();
        for conn in script {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            read_request(&mut stream);
            match conn {
                Conn::Reply(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body.as_bytes());
                }
                Conn::Close => drop(stream),
                Conn::Hang => hung.push(stream),
            }
        }
        drop(listener);
        // Hung connections stay open (unanswered) until the test is long over.
        std::thread::sleep(Duration::from_secs(120));
        drop(hung);
    });
    base
}

fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

fn good_reply() -> String {
    mockapi::anthropic_ok(&mockapi::fenced(modules::GOOD_EFFECT), 10, 5).body
}

fn coder(id: &str) -> Value {
    json!({"task_id": id, "agent": "coder", "input_data": {
        "contract_description": "Fetch a user record from the directory service by id",
        "node_type": "Effect", "output_path": format!("{id}/node_fetch_user_effect.py"),
        "backend": "anthropic"}})
}

fn run(sb: &Sandbox, base: &str, batch: &Value) -> Run {
    let env = [
        ("ANTHROPIC_API_KEY", "sk-ant-test-faults-0123456789"),
        ("ANTHROPIC_BASE_URL", base),
        ("ANTHROPIC_MODEL", "claude-sonnet-4-5"),
    ];
    let run = run_with_env(sb, batch, &env, &[]);
    let trace = run.trace();
    let total = run.json["results"].as_array().unwrap().len();
    assert_eq!(
        events(&trace, "task_finished").len(),
        total,
        "every task has a final event"
    );
    assert_eq!(events(&trace, "run_finished").len(), 1);
    run
}

#[test]
fn a_hanging_endpoint_times_out_and_the_retry_succeeds() {
    let base = endpoint(vec![Conn::Hang, Conn::Reply(good_reply())]);
    let sb = Sandbox::new();
    let mut task = coder("gen");
    task["timeout_seconds"] = json!(1.0);
    task["retries"] = json!(1);
    let start = Instant::now();
    let run = run(
        &sb,
        &base,
        &json!({"tasks": [task], "config": {"retry_backoff_ms": 10}}),
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(run.code, 0, "{}", run.stdout);
    let outcomes = attempt_outcomes(&run.trace(), 0);
    assert_eq!(outcomes, ["timeout", "success"]);
    assert!(sb.path().join("gen/node_fetch_user_effect.py").is_file());
}

#[test]
fn an_endpoint_killed_mid_run_fails_transiently_then_opens_the_breaker() {
    // First call answered, second connection dropped mid-request, then nothing listens.
    let base = endpoint(vec![Conn::Reply(good_reply()), Conn::Close]);
    let sb = Sandbox::new();
    let tasks: Vec<Value> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| coder(id))
        .collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 1,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}}});
    let run = run(&sb, &base, &batch);
    assert_eq!(run.code, 1);
    assert_eq!(run.json["status"], "partial");
    assert_eq!(run.status("a"), "success");
    for id in ["b", "c"] {
        let r = run.result(id);
        assert_eq!(r["error"]["kind"], "model_unavailable", "{id}: {r}");
        assert_eq!(r["attempts"], 1);
    }
    for id in ["d", "e"] {
        let r = run.result(id);
        assert_eq!(r["error"]["kind"], "circuit_open", "{id}: {r}");
        assert_eq!(r["attempts"], 0, "not attempted");
    }
    let trace = run.trace();
    let opened = events(&trace, "breaker_changed");
    assert_eq!(opened.len(), 1);
    // One breaker per model endpoint, labelled without the URL itself.
    let label = opened[0]["breaker"].as_str().unwrap();
    assert!(label.starts_with("model:anthropic:"), "{label}");
    assert!(!label.contains("127.0.0.1"), "{label}");
    assert_eq!(opened[0]["to"], "open");
}

#[test]
fn a_model_refusing_requests_never_opens_the_breaker() {
    // 400 is the model (or its gateway) rejecting this request: the endpoint is healthy.
    let api = mockapi::MockApi::start(
        (0..4)
            .map(|_| mockapi::error(400, &[], "prompt is too long"))
            .collect(),
    );
    let sb = Sandbox::new();
    let tasks: Vec<Value> = ["a", "b", "c", "d"].iter().map(|id| coder(id)).collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 1,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}}});
    let run = run(&sb, &api.base, &batch);
    for id in ["a", "b", "c", "d"] {
        let r = run.result(id);
        assert_eq!(r["error"]["kind"], "model_request_rejected", "{id}: {r}");
        assert_eq!(r["attempts"], 1, "{id} was attempted");
    }
    assert_eq!(api.requests().len(), 4);
    assert!(events(&run.trace(), "breaker_changed").is_empty());
}
