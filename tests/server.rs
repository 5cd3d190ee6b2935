//! `dispatch_runner serve` over real HTTP on loopback.

mod common;

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
        let base = common::listening_base(&mut child);
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
    promtool_check("serve /metrics after two runs", &text);
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

// ---- Runs belong to the server; one checking path; hardened HTTP (issues 10 and 11) ----

/// A raw HTTP/1.1 exchange: writes `request` whole, then reads the answer until the server
/// closes (the request should say `Connection: close`). Returns status, headers (lower-case
/// names) and body.
fn raw_exchange(base: &str, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn raw_post(base: &str, extra_headers: &str, body: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let host = base.trim_start_matches("http://");
    let mut request = format!(
        "POST /v1/dispatch HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_exchange(base, &request)
}

/// Every error answer is the JSON error document.
fn assert_json_error(status: u16, headers: &[(String, String)], body: &str) {
    assert!(
        header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")),
        "{status}: {headers:?}"
    );
    let doc: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: {e}: {body}"));
    assert_eq!(doc["status"], "error", "{status}: {doc}");
    assert!(
        !doc["errors"][0]["message"].as_str().unwrap().is_empty(),
        "{doc}"
    );
}

/// Trace files in a folder.
fn traces_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_its_run() {
    let server = Server::start(&["--max-concurrent-runs", "1", "--trace-dir", "tr"], &[]);
    let run = json!({"tasks": [sh_task("slow", "sleep 2; echo done > finished.txt", &[])]});
    let body = run.to_string();
    let base = server.base.clone();
    // Like `curl -m 1`: send the batch, wait a moment, hang up.
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        let request = format!(
            "POST /v1/dispatch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();
    let marker = server.sb.path().join("finished.txt");
    let traces = server.sb.path().join("tr");
    let finished = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(20), || {
            marker.is_file() && traces_in(&traces).len() == 1
        })
    })
    .await
    .unwrap();
    assert!(finished, "the task must finish and its trace be written");
    let trace = read_json(&traces_in(&server.sb.path().join("tr"))[0]);
    assert_eq!(trace["tasks"][0]["status"], "success", "{trace}");
    // The run's slot is free again: with a limit of one, the next batch runs.
    let (status, _, result) = post(&server.url("/v1/dispatch"), batch().to_string(), None).await;
    assert_eq!(status, 200, "{result}");
}

#[tokio::test]
async fn wait_false_answers_202_and_the_run_can_be_followed_to_its_result() {
    let server = Server::start(&["--trace-dir", "tr"], &[]);
    let run = json!({"tasks": [
        sh_task("quick", "echo quick", &[]),
        sh_task("slow", "sleep 2; echo slow", &[]),
        sh_task("after", "echo after", &["slow"]),
    ]});
    let (status, headers, accepted) = post(
        &server.url("/v1/dispatch?wait=false"),
        run.to_string(),
        None,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let location = headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/runs/{run_id}"));
    assert_eq!(accepted["location"], location.as_str());

    // While it runs: counts and per-task status.
    let (status, live) = get(&server.url(&location), None).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["state"], "running", "{live}");
    assert_eq!(live["run_id"], run_id.as_str());
    assert_eq!(live["summary"]["total_tasks"], 3, "{live}");
    let statuses: Vec<&str> = live["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 3);
    assert!(
        ["pending", "ready", "running"].contains(&statuses[1]),
        "slow is not done yet: {live}"
    );
    assert!(
        ["pending", "ready"].contains(&statuses[2]),
        "after waits for slow: {live}"
    );

    // Then the result and the trace.
    let mut finished = Value::Null;
    for _ in 0..200 {
        let (status, view) = get(&server.url(&location), None).await;
        assert_eq!(status, 200, "{view}");
        if view["state"] == "finished" {
            finished = view;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["state"], "finished", "never finished");
    assert_eq!(finished["result"]["status"], "success", "{finished}");
    assert_eq!(
        finished["result"]["results"][2]["output"]["stdout"],
        "after\n"
    );
    assert_eq!(finished["run_id"], run_id.as_str());
    assert_eq!(event_names(&finished).last().unwrap(), "run_finished");
    assert!(server.wrote_trace_of(&finished["result"]));
}

#[tokio::test]
async fn delete_cancels_a_run_kills_its_processes_and_writes_its_trace() {
    let server = Server::start(&["--trace-dir", "tr"], &[]);
    let run = json!({"tasks": [sh_task("long", "sleep 434.34", &[]), sh_task("next", "true", &["long"])]});
    let (status, _, accepted) = post(
        &server.url("/v1/dispatch?wait=false"),
        run.to_string(),
        None,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let url = server.url(accepted["location"].as_str().unwrap());
    let started = tokio::task::spawn_blocking(|| {
        eventually(Duration::from_secs(10), || {
            !processes_matching("sleep 434.34").is_empty()
        })
    })
    .await
    .unwrap();
    assert!(started);
    let (_, live) = get(&url, None).await;
    assert_eq!(live["tasks"][0]["status"], "running", "{live}");

    let resp = client().delete(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["results"][0]["status"], "cancelled", "{result}");
    assert_eq!(result["results"][1]["status"], "cancelled", "{result}");
    let message = result["results"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("a client cancelled the run"), "{message}");
    assert!(processes_matching("sleep 434.34").is_empty());
    assert!(server.wrote_trace_of(&result));

    let (status, view) = get(&url, None).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "finished");
    assert_eq!(view["result"]["results"][0]["status"], "cancelled");
    let resp = client().delete(&url).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        409,
        "a finished run cannot be cancelled"
    );
    let resp = client()
        .delete(server.url("/v1/runs/20990101T000000Z-000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// The CLI's verdict on `bytes` (exit code and document) next to the server's (status, body).
async fn cli_and_server(bytes: &[u8]) -> ((i32, Value), (u16, Value)) {
    let server = Server::start(&[], &[]);
    let input = server.sb.path().join("batch.json");
    std::fs::write(&input, bytes).unwrap();
    let out = server
        .sb
        .cmd(&["run", "-q", "-f", "batch.json"])
        .env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp")
        .output()
        .unwrap();
    let cli = server.sb.to_run(out);
    let resp = client()
        .post(server.url("/v1/dispatch"))
        .header("content-type", "application/json")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    ((cli.code, cli.json), (status, resp.json().await.unwrap()))
}

#[tokio::test]
async fn an_unknown_mcp_server_is_400_as_it_is_exit_2_on_the_command_line() {
    let batch = json!({"tasks": [{"task_id": "m", "agent": "mcp",
        "input_data": {"server": "no-such-server", "tool": "echo", "arguments": {}}}]});
    let ((code, cli), (status, body)) = cli_and_server(batch.to_string().as_bytes()).await;
    assert_eq!(code, 2, "{cli}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["status"], "invalid");
    assert_eq!(body["errors"], cli["errors"]);
    assert_eq!(body["errors"][0]["path"], "/tasks/0/input_data/server");
}

#[tokio::test]
async fn a_byte_order_mark_is_accepted_as_on_the_command_line() {
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(
        json!({"tasks": [sh_task("a", "echo bom", &[])]})
            .to_string()
            .as_bytes(),
    );
    let ((code, cli), (status, body)) = cli_and_server(&bytes).await;
    assert_eq!(code, 0, "{cli}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["output"]["stdout"], "bom\n");
    // And bytes that are not UTF-8 are refused the same way by both.
    let ((code, cli), (status, body)) = cli_and_server(b"{\"tasks\": [\xff]}").await;
    assert_eq!((code, status), (2, 400), "{cli} {body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not UTF-8")
    );
}

#[tokio::test]
async fn every_error_answer_is_a_json_document() {
    let server = Server::start(
        &["--max-body-bytes", "1000"],
        &[("DISPATCH_API_TOKEN", "tok-json-errors")],
    );
    let auth = "Authorization: Bearer tok-json-errors\r\nContent-Type: application/json\r\n";
    let (status, headers, body) =
        raw_post(&server.base, "Content-Type: application/json\r\n", b"{}");
    assert_eq!(status, 401);
    assert_json_error(status, &headers, &body);
    let (status, headers, body) = raw_post(&server.base, auth, &[b' '; 5000]);
    assert_eq!(status, 413);
    assert_json_error(status, &headers, &body);
    let host = server.base.trim_start_matches("http://");
    for (request, expected) in [
        (
            format!(
                "GET /nowhere HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer tok-json-errors\r\n\r\n"
            ),
            404,
        ),
        (
            format!(
                "GET /v1/runs/nope HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer tok-json-errors\r\n\r\n"
            ),
            404,
        ),
        (
            format!(
                "PUT /v1/dispatch HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer tok-json-errors\r\nContent-Length: 0\r\n\r\n"
            ),
            405,
        ),
    ] {
        let (status, headers, body) = raw_exchange(&server.base, request.as_bytes());
        assert_eq!(status, expected, "{request}");
        assert_json_error(status, &headers, &body);
    }
    drop(server);

    let server = Server::start(&["--max-concurrent-runs", "1"], &[]);
    let slow = json!({"tasks": [sh_task("slow", "sleep 2", &[])]});
    let (status, _, _) = post(
        &server.url("/v1/dispatch?wait=false"),
        slow.to_string(),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (status, headers, body) = raw_post(
        &server.base,
        "Content-Type: application/json\r\n",
        batch().to_string().as_bytes(),
    );
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    assert_json_error(status, &headers, &body);
}

#[tokio::test]
async fn a_413_reaches_clients_that_send_the_whole_body_before_reading() {
    let server = Server::start(&["--max-body-bytes", "1000"], &[]);
    // A raw client: everything written (2 MB, far more than socket buffers hold), then read.
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, headers, body) =
        raw_post(&server.base, "Content-Type: application/json\r\n", &big);
    assert_eq!(status, 413);
    assert_json_error(status, &headers, &body);

    // Python's urllib does the same.
    let script = r#"
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b" " * (2 * 1024 * 1024),
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=30)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read())["status"])
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &server.url("/v1/dispatch")])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "413 error",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn content_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let server = Server::start(&["--max-body-bytes", "1000"], &[]);
    let base = server.base.clone();
    let (status, headers, body, waited) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let host = base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let start = std::time::Instant::now();
        // Headers only: the body never comes.
        write!(
            stream,
            "POST /v1/dispatch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let (s, h, b) = parse_answer(&answer);
        (s, h, b, start.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(status, 413);
    assert_json_error(status, &headers, &body);
    assert!(
        waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn cross_site_requests_are_refused() {
    let server = Server::start(&["--allow-host", "dispatch.internal"], &[]);
    let touch = json!({"tasks": [sh_task("t", "touch pwned", &[])]}).to_string();
    let port = server.base.rsplit(':').next().unwrap().to_string();

    // A web page's "simple" request: text/plain needs no pre-flight.
    let (status, headers, body) = raw_post(
        &server.base,
        "Content-Type: text/plain\r\n",
        touch.as_bytes(),
    );
    assert_eq!(status, 415);
    assert_json_error(status, &headers, &body);
    let (status, _, _) = raw_post(&server.base, "", touch.as_bytes());
    assert_eq!(status, 415, "no content type at all");

    // A foreign page, with the right content type (a browser would pre-flight; we refuse anyway).
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://evil.example:{port}"),
        "http://localhost:3000",
    ] {
        let (status, headers, body) = raw_post(
            &server.base,
            &format!("Content-Type: application/json\r\nOrigin: {origin}\r\n"),
            touch.as_bytes(),
        );
        assert_eq!(status, 403, "{origin}");
        assert_json_error(status, &headers, &body);
    }

    // DNS rebinding: the right address under a foreign name.
    let host = server.base.trim_start_matches("http://");
    for foreign in [format!("evil.example:{port}"), "attacker.test".to_string()] {
        let request = format!(
            "POST /v1/dispatch HTTP/1.1\r\nHost: {foreign}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{touch}",
            touch.len()
        );
        let (status, headers, body) = raw_exchange(&server.base, request.as_bytes());
        assert_eq!(status, 403, "{foreign}");
        assert_json_error(status, &headers, &body);
    }
    assert!(
        !server.sb.path().join("pwned").exists(),
        "nothing may have run"
    );

    // This server's own names and origin, and the allowed name, are fine.
    for (host_header, origin) in [
        (host.to_string(), format!("http://{host}")),
        (
            format!("localhost:{port}"),
            format!("http://localhost:{port}"),
        ),
        (
            "dispatch.internal".to_string(),
            "https://dispatch.internal".to_string(),
        ),
    ] {
        let request = format!(
            "POST /v1/dispatch HTTP/1.1\r\nHost: {host_header}\r\nOrigin: {origin}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{touch}",
            touch.len()
        );
        let (status, _, body) = raw_exchange(&server.base, request.as_bytes());
        assert_eq!(status, 200, "{host_header} {origin}: {body}");
    }
    assert!(server.sb.path().join("pwned").exists());
}

#[tokio::test]
async fn slow_senders_are_dropped_after_the_read_timeouts() {
    let server = Server::start(
        &[
            "--header-read-timeout-seconds",
            "1",
            "--body-read-timeout-seconds",
            "1",
        ],
        &[],
    );
    let base = server.base.clone();
    // Headers at a few bytes a second: the connection is closed, nothing is answered.
    let (closed_after, answer) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let start = std::time::Instant::now();
        let request = b"POST /v1/dispatch HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut answer = Vec::new();
        for byte in request.iter().cycle() {
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (start.elapsed(), answer)
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(10),
        "a slow sender was held for {closed_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{answer:?}"
    );

    // Headers in time, the body at a byte a second: 408 as a JSON document.
    let base = server.base.clone();
    let (took, answer) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let host = base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let start = std::time::Instant::now();
        write!(
            stream,
            "POST /v1/dispatch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            if stream.write_all(b" ").is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        (start.elapsed(), answer)
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(10), "held for {took:?}");
    let (status, headers, body) = parse_answer(&answer);
    assert_eq!(status, 408);
    assert_json_error(status, &headers, &body);
}

#[tokio::test]
async fn a_token_of_blanks_is_no_token() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd(&["serve", "--listen", "0.0.0.0:0"]);
    cmd.env("DISPATCH_API_TOKEN", "   ")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let out = wait_with_deadline(child, Duration::from_secs(20));
    let run = sb.to_run(out);
    assert_eq!(
        run.code, 3,
        "a blank token must not protect a public address"
    );
    assert!(run.error_messages()[0].1.contains("DISPATCH_API_TOKEN"));

    let server = Server::start(&[], &[("DISPATCH_API_TOKEN", " \t ")]);
    let (status, _, result) = post(&server.url("/v1/dispatch"), batch().to_string(), None).await;
    assert_eq!(status, 200, "{result}");
}

#[tokio::test]
async fn sigterm_also_ends_runs_nobody_waits_for_and_writes_their_traces() {
    let server = Server::start(
        &["--shutdown-grace-seconds", "0.5", "--trace-dir", "tr"],
        &[],
    );
    let long = json!({"tasks": [sh_task("long", "sleep 454.54", &[])]});
    let (status, _, accepted) = post(
        &server.url("/v1/dispatch?wait=false"),
        long.to_string(),
        None,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let started = tokio::task::spawn_blocking(|| {
        eventually(Duration::from_secs(10), || {
            !processes_matching("sleep 454.54").is_empty()
        })
    })
    .await
    .unwrap();
    assert!(started);
    send_signal(server.child.id(), libc::SIGTERM);
    let mut server = server;
    let (exit, server) = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap();
    assert_eq!(exit.code(), Some(0));
    let trace = read_json(&server.sb.path().join(format!("tr/dispatch-{run_id}.json")));
    assert_eq!(trace["tasks"][0]["status"], "cancelled", "{trace}");
    assert!(processes_matching("sleep 454.54").is_empty());
}

/// The configuration file's result cache and run history apply to served runs as to `run`.
#[tokio::test]
async fn serve_applies_the_configured_cache_and_history() {
    let cached_batch = || {
        json!({"tasks": [{
            "task_id": "t", "agent": "command",
            "input_data": {"argv": ["sh", "-c", "echo run >> counter"]},
            "cache": {}
        }]})
        .to_string()
    };
    let runs = |sb: &Sandbox| {
        std::fs::read_to_string(sb.path().join("counter"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    // Cache on (the default): the second dispatch is a hit; the history store is kept.
    let server = Server::start(&["--trace-dir", "traces"], &[]);
    for _ in 0..2 {
        let (status, _, result) = post(&server.url("/v1/dispatch"), cached_batch(), None).await;
        assert_eq!(status, 200, "{result}");
    }
    assert_eq!(runs(&server.sb), 1);
    assert!(server.sb.path().join("traces/history.sqlite").is_file());
    // Turned off in the configuration file: every dispatch runs, nothing is recorded.
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "cache:\n  enabled: false\nhistory:\n  enabled: false\n",
    );
    let server = Server::start_in(sb, &["--trace-dir", "traces"], &[]);
    for _ in 0..2 {
        let (status, _, result) = post(&server.url("/v1/dispatch"), cached_batch(), None).await;
        assert_eq!(status, 200, "{result}");
        assert!(result["results"][0].get("cached").is_none(), "{result}");
    }
    assert_eq!(runs(&server.sb), 2);
    assert!(!server.sb.path().join("traces/history.sqlite").exists());
}
