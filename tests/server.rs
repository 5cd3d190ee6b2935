//! `dispatch_runner serve` over real HTTP on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
    sb: Sandbox,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let sb = Sandbox::new();
        Self::start_in(sb, args, env)
    }

    fn start_in(sb: Sandbox, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = sb.cmd(&all);
        cmd.env_remove("DISPATCH_API_TOKEN")
            .env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("dispatch_runner: listening on ") {
                break addr.to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base, sb }
    }

    /// Whether the trace file a result names exists in the server's folder.
    fn wrote_trace_of(&self, result: &Value) -> bool {
        let file = result["trace_file"].as_str().expect("trace_file");
        self.sb.path().join(file).is_file()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn post(
    url: &str,
    body: String,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json::<Value>().await.unwrap_or(Value::Null),
    )
}

fn batch() -> Value {
    json!({"tasks": [sh_task("hello", "echo hi", &[]), sh_task("after", "echo {{tasks.hello.output.stdout}}", &["hello"])],
           "config": {"trace_dir": "/should/be/ignored"}})
}

#[tokio::test]
async fn dispatch_then_fetch_the_trace() {
    let server = Server::start(&["--trace-dir", "server_traces"], &[]);
    let (status, _, result) = post(&server.url("/v1/dispatch"), batch().to_string(), None).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["status"], "success");
    assert_eq!(
        result["results"][1]["output"]["stdout"], "hi\n",
        "the script is `echo hi<newline>`"
    );
    let run_id = result["run_id"].as_str().unwrap();
    assert!(
        result["trace_file"]
            .as_str()
            .unwrap()
            .starts_with("server_traces/")
    );
    assert!(server.wrote_trace_of(&result));

    let (status, trace) = get(&server.url(&format!("/v1/runs/{run_id}")), None).await;
    assert_eq!(status, 200);
    assert_eq!(trace["run_id"], run_id);
    assert_eq!(trace["tasks"].as_array().unwrap().len(), 2);
    for bad in ["nope", "..%2F..%2Fetc%2Fpasswd", "a.b"] {
        let (status, body) = get(&server.url(&format!("/v1/runs/{bad}")), None).await;
        assert_eq!(status, 404, "{bad}: {body}");
    }

    let (status, _, invalid) = post(
        &server.url("/v1/dispatch"),
        r#"{"tasks": [{"task_id": "x"}]}"#.into(),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(invalid["status"], "invalid");
    assert!(!invalid["errors"].as_array().unwrap().is_empty());
    let (status, _, invalid) = post(&server.url("/v1/dispatch"), "{not json".into(), None).await;
    assert_eq!(status, 400);
    assert!(
        invalid["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
}

#[tokio::test]
async fn metrics_are_cumulative_across_runs() {
    let server = Server::start(&[], &[("DISPATCH_API_TOKEN", "metrics-token-1")]);
    let batch = json!({"tasks": [sh_task("ok", "true", &[]), sh_task("bad", "exit 1", &[])]});
    for _ in 0..2 {
        let (status, _, _) = post(
            &server.url("/v1/dispatch"),
            batch.to_string(),
            Some("metrics-token-1"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let unauthorized = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);
    let resp = client()
        .get(server.url("/metrics"))
        .bearer_auth("metrics-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    let samples = dispatch_runner::reporter::metrics::parse_text(&text).unwrap();
    let count = |status: &str| {
        dispatch_runner::reporter::metrics::sample(
            &samples,
            "dispatch_tasks_total",
            &[("agent", "command"), ("status", status)],
        )
    };
    assert_eq!(count("success"), Some(2.0), "{text}");
    assert_eq!(count("error"), Some(2.0), "{text}");
}

#[tokio::test]
async fn health_reports_agents_and_mcp_reachability() {
    let sb = Sandbox::new();
    // A configured server that points at a port that is listening (a throwaway listener).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    sb.write("dispatch.yaml", &format!("mcp:\n  servers:\n    up:\n      url: http://127.0.0.1:{port}/mcp\n    tool:\n      command: sh\n"));
    let server = Server::start_in(sb, &[], &[]);
    let (status, health) = get(&server.url("/health"), None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        health["agents_available"]
            .as_array()
            .unwrap()
            .contains(&json!("command"))
    );
    assert_eq!(
        health["mcp"],
        json!({"archon": false, "up": true, "tool": true})
    );
    drop(listener);
}

#[tokio::test]
async fn bearer_token_guards_everything_but_health() {
    let server = Server::start(&[], &[("DISPATCH_API_TOKEN", "s3cret-token-value")]);
    let (status, headers, _) = post(&server.url("/v1/dispatch"), batch().to_string(), None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(
        &server.url("/v1/dispatch"),
        batch().to_string(),
        Some("wrong"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = get(&server.url("/v1/runs/whatever"), None).await;
    assert_eq!(status, 401);
    let (status, _) = get(&server.url("/health"), None).await;
    assert_eq!(status, 200);
    let (status, _, result) = post(
        &server.url("/v1/dispatch"),
        batch().to_string(),
        Some("s3cret-token-value"),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    // The token is a secret: a task that echoes it gets it redacted.
    let leak = json!({"tasks": [sh_task("leak", "echo $DISPATCH_API_TOKEN", &[])]});
    let (_, _, result) = post(
        &server.url("/v1/dispatch"),
        leak.to_string(),
        Some("s3cret-token-value"),
    )
    .await;
    assert_eq!(result["results"][0]["output"]["stdout"], "[REDACTED]\n");
}

#[test]
fn refuses_non_loopback_without_a_token() {
    let sb = Sandbox::new();
    let out = sb
        .cmd(&["serve", "--listen", "0.0.0.0:0"])
        .env_remove("DISPATCH_API_TOKEN")
        .output()
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 3);
    assert!(run.error_messages()[0].1.contains("DISPATCH_API_TOKEN"));
}

#[tokio::test]
async fn body_limit_is_413() {
    let server = Server::start(&["--max-body-bytes", "1000"], &[]);
    let mut big = batch();
    big["tasks"][0]["description"] = json!("x".repeat(2000));
    let (status, _, _) = post(&server.url("/v1/dispatch"), big.to_string(), None).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn too_many_runs_is_429_with_retry_after() {
    let server = Server::start(&["--max-concurrent-runs", "1"], &[]);
    let slow = json!({"tasks": [sh_task("slow", "sleep 2", &[])]});
    let url = server.url("/v1/dispatch");
    let first = tokio::spawn({
        let url = url.clone();
        let body = slow.to_string();
        async move { post(&url, body, None).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, headers, body) = post(&url, batch().to_string(), None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "5");
    let (status, _, result) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(result["status"], "success");
}

#[tokio::test]
async fn sigterm_drains_then_cancels_in_flight_runs_and_writes_their_traces() {
    let server = Server::start(&["--shutdown-grace-seconds", "0.5"], &[]);
    let long = json!({"tasks": [sh_task("long", "sleep 424.24", &[])]});
    let url = server.url("/v1/dispatch");
    let in_flight = tokio::spawn(async move { post(&url, long.to_string(), None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(server.child.id(), libc::SIGTERM);
    let (status, _, result) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["results"][0]["status"], "cancelled");
    assert!(server.wrote_trace_of(&result));
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap();
    assert_eq!(exit.0.code(), Some(0));
    assert!(processes_matching("sleep 424.24").is_empty());
}
