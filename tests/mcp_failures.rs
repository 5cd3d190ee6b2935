//! The `mcp` agent when servers are down, die, hang or answer garbage: every path ends in a
//! documented status and error kind, with the full result and trace written.

mod common;
mod mcp_support;

use common::*;
use mcp_support::*;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs the batch; returns the sandbox too, since the trace lives in it.
fn run_against(url: &str, config: Value, tasks: Vec<Value>) -> (Sandbox, Run) {
    let sb = Sandbox::new();
    let cfg = sb
        .write("dispatch.yaml", &http_config(&[("srv", url)]))
        .display()
        .to_string();
    let run = sb.run_json(
        &["--config", &cfg],
        &json!({"config": config, "tasks": tasks}),
    );
    // Whatever happened, the trace is complete.
    let trace = run.trace();
    assert_eq!(
        events(&trace, "task_finished").len(),
        tasks_len(&run),
        "every task has a final event"
    );
    assert_eq!(events(&trace, "run_finished").len(), 1);
    (sb, run)
}

fn tasks_len(run: &Run) -> usize {
    run.json["results"].as_array().unwrap().len()
}

fn echo(id: &str) -> Value {
    mcp_task(id, "srv", "echo", json!({"message": id}))
}

#[test]
fn server_down_from_the_start_is_transient_and_retried() {
    let url = format!("http://127.0.0.1:{}/mcp", free_port());
    let (_sb, run) = run_against(
        &url,
        json!({"retries": 1, "retry_backoff_ms": 10}),
        vec![echo("a")],
    );
    assert_eq!(run.code, 1);
    let a = run.result("a");
    assert_eq!(a["status"], "error");
    assert_eq!(a["error"]["kind"], "unavailable");
    assert_eq!(a["attempts"], 2, "transient errors are retried");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MCP server 'srv'"),
        "{a}"
    );
}

#[test]
fn server_answering_500_is_unavailable() {
    let bad = Misbehaving::start(Misbehavior::Status500);
    let (_sb, run) = run_against(
        &bad.url(),
        json!({"retries": 1, "retry_backoff_ms": 10}),
        vec![echo("a")],
    );
    let a = run.result("a");
    assert_eq!(a["status"], "error");
    assert_eq!(a["error"]["kind"], "unavailable");
    assert!(
        a["error"]["message"].as_str().unwrap().contains("500"),
        "{a}"
    );
    assert_eq!(a["attempts"], 2);
}

#[test]
fn server_answering_invalid_json_is_a_protocol_error() {
    let bad = Misbehaving::start(Misbehavior::InvalidJson);
    let (_sb, run) = run_against(&bad.url(), json!({"retries": 0}), vec![echo("a")]);
    let a = run.result("a");
    assert_eq!(a["status"], "error");
    assert_eq!(a["error"]["kind"], "protocol_error", "{a}");
}

#[test]
fn server_hanging_past_the_timeout_times_out() {
    let bad = Misbehaving::start(Misbehavior::Hang);
    let (_sb, run) = run_against(
        &bad.url(),
        json!({"retries": 0, "timeout_seconds": 1}),
        vec![echo("a")],
    );
    let a = run.result("a");
    assert_eq!(a["status"], "timeout");
    assert_eq!(a["error"]["kind"], "timeout");
}

#[test]
fn server_killed_mid_run_opens_the_breaker_and_the_run_still_reports_everything() {
    let server = start_everything_http();
    let pid = server.pid();
    let mut tasks = vec![echo("before1"), echo("before2")];
    tasks.push(
        json!({"task_id": "kill", "agent": "command", "dependencies": ["before1", "before2"],
        "input_data": {"argv": ["kill", "-9", pid.to_string()]}}),
    );
    for i in 0..6 {
        let mut t = echo(&format!("after{i}"));
        t["dependencies"] = json!(["kill"]);
        tasks.push(t);
    }
    let config = json!({"max_workers": 1, "retries": 0,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}});
    let (_sb, run) = run_against(&server.url(), config, tasks);
    assert_eq!(run.code, 1);
    assert_eq!(run.json["status"], "partial");
    assert_eq!(run.result("before1")["output"]["text"], "Echo: before1");
    assert_eq!(run.status("kill"), "success");
    let kinds: Vec<String> = (0..6)
        .map(|i| {
            run.result(&format!("after{i}"))["error"]["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "unavailable",
            "unavailable",
            "circuit_open",
            "circuit_open",
            "circuit_open",
            "circuit_open"
        ],
        "{}",
        run.stdout
    );
    let s = &run.json["summary"];
    assert_eq!(
        (s["total_tasks"].as_u64(), s["successful"].as_u64()),
        (Some(9), Some(3))
    );
    let trace = run.trace();
    let opened: Vec<&Value> = events(&trace, "breaker_changed")
        .into_iter()
        .filter(|e| e["breaker"] == "mcp:srv" && e["to"] == "open")
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
}

#[test]
fn expanded_header_values_never_reach_results_traces_or_logs() {
    let bad = Misbehaving::start(Misbehavior::Status500);
    let sb = Sandbox::new();
    let secret = "s3cr3t-header-value-9f2c";
    let cfg = sb
        .write(
            "dispatch.yaml",
            &format!(
                "mcp:\n  servers:\n    srv:\n      url: \"{}\"\n      headers:\n        X-Api-Token: \"Bearer ${{DISPATCH_TEST_MCP_SECRET}}\"\n",
                bad.url()
            ),
        )
        .display()
        .to_string();
    let batch = json!({"config": {"retries": 0}, "tasks": [echo("a")]});
    let mut cmd = sb.cmd(&["--config", &cfg]);
    cmd.env("DISPATCH_TEST_MCP_SECRET", secret)
        .env("RUST_LOG", "trace");
    let out = wait_with_deadline(
        spawn_with_input(cmd, &batch.to_string()),
        std::time::Duration::from_secs(60),
    );
    let run = sb.to_run(out);
    assert_eq!(run.result("a")["error"]["kind"], "unavailable");
    assert!(bad.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let trace_text =
        std::fs::read_to_string(sb.path().join(run.json["trace_file"].as_str().unwrap())).unwrap();
    for (what, text) in [
        ("stdout", &run.stdout),
        ("stderr", &run.stderr),
        ("trace", &trace_text),
    ] {
        assert!(!text.contains(secret), "secret leaked into {what}");
    }
    assert!(!run.stderr.is_empty(), "trace logging produced output");
}

#[test]
fn tool_errors_never_open_the_breaker() {
    let server = start_everything_http();
    // The tool rejects its arguments four times (`tool_error`); the server is fine throughout.
    let mut tasks: Vec<Value> = (0..4)
        .map(|i| {
            mcp_task(
                &format!("bad{i}"),
                "srv",
                "get-sum",
                json!({"a": "nineteen", "b": 23}),
            )
        })
        .collect();
    tasks.push(echo("after"));
    let config = json!({"max_workers": 1, "retries": 0,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}});
    let (_sb, run) = run_against(&server.url(), config, tasks);
    for i in 0..4 {
        let r = run.result(&format!("bad{i}"));
        assert_eq!(r["error"]["kind"], "tool_error", "{r}");
        assert_eq!(r["attempts"], 1);
    }
    assert_eq!(run.status("after"), "success");
    let trace = run.trace();
    assert!(events(&trace, "breaker_changed").is_empty());
    assert_eq!(events(&trace, "attempt_started")[0]["breaker"], "mcp:srv");
}

#[test]
fn an_inline_url_server_has_its_own_breaker_labelled_without_the_url() {
    let port = free_port();
    let url = format!("http://user:hunter22@127.0.0.1:{port}/mcp");
    let tasks: Vec<Value> = (0..4)
        .map(|i| {
            json!({"task_id": format!("t{i}"), "agent": "mcp",
            "input_data": {"url": url, "tool": "echo", "arguments": {"message": "x"}}})
        })
        .collect();
    let sb = Sandbox::new();
    let run = sb.run_json(
        &[],
        &json!({"tasks": tasks, "config": {"max_workers": 1, "retries": 0,
            "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}}}),
    );
    assert_eq!(run.result("t0")["error"]["kind"], "unavailable");
    assert_eq!(run.result("t1")["error"]["kind"], "unavailable");
    assert_eq!(run.result("t2")["error"]["kind"], "circuit_open");
    let trace = run.trace();
    let opened = events(&trace, "breaker_changed");
    assert_eq!(opened.len(), 1);
    let label = opened[0]["breaker"].as_str().unwrap();
    let digest = label.strip_prefix("mcp:url:").expect(label);
    assert_eq!(digest.len(), 12, "{label}");
    assert!(digest.chars().all(|c| c.is_ascii_hexdigit()), "{label}");
    assert!(!label.contains(&port.to_string()) && !label.contains("hunter22"));
}

/// Runs one `echo` task against a stdio server `sh -c <script>`; returns the run and how long
/// it took. `MCP_TEST_TOKEN` is handed to the server through `${VAR}`, so it is a secret.
fn run_stdio_script(script: &str, timeout_seconds: u64, log_level: &str) -> (Run, Duration) {
    let sb = Sandbox::new();
    let cfg = sb
        .write(
            "dispatch.yaml",
            &format!(
                "mcp:\n  servers:\n    srv:\n      command: sh\n      args: [\"-c\", {}]\n      env:\n        TOKEN: \"${{MCP_TEST_TOKEN}}\"\n",
                serde_json::to_string(script).unwrap()
            ),
        )
        .display()
        .to_string();
    let batch = json!({"config": {"retries": 0, "timeout_seconds": timeout_seconds},
                       "tasks": [echo("a")]});
    let mut cmd = sb.cmd(&["--config", &cfg]);
    cmd.env("MCP_TEST_TOKEN", "s3cret-stdio-token-4711")
        .env("RUST_LOG", log_level);
    let started = Instant::now();
    let run = sb.run_cmd(cmd, &batch.to_string());
    (run, started.elapsed())
}

#[test]
fn stdio_server_printing_non_json_before_initialize_is_a_protocol_error_at_once() {
    let (run, took) = run_stdio_script("echo \"hello $TOKEN\"; sleep 30", 30, "warn");
    assert_eq!(run.code, 1, "{}", run.stdout);
    let a = run.result("a");
    assert_eq!(a["status"], "error", "{a}");
    assert_eq!(a["error"]["kind"], "protocol_error", "{a}");
    assert!(
        a["error"]["message"].as_str().unwrap().contains("not JSON"),
        "{a}"
    );
    // Well before the 30 s timeout (and rmcp's 30 s handshake limit).
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The secret the server echoed reaches neither the result nor the log.
    assert!(!run.stdout.contains("s3cret-stdio-token-4711"));
    assert!(
        !run.stderr.contains("s3cret-stdio-token-4711"),
        "{}",
        run.stderr
    );
    // rmcp's own log line about the broken stream goes through our (redacting) logging.
    let rmcp_line = run
        .stderr
        .lines()
        .find(|l| l.contains("rmcp::") && l.contains("not JSON"))
        .unwrap_or_else(|| panic!("no rmcp log line:\n{}", run.stderr));
    assert!(rmcp_line.contains("ERROR"), "{rmcp_line}");
    assert!(rmcp_line.contains("[REDACTED]"), "{rmcp_line}");
}

#[test]
fn stdio_server_printing_non_json_during_a_call_is_a_protocol_error_at_once() {
    // Answers initialize properly, then prints a debug line instead of the tool result.
    let script = r#"read init
id=$(printf '%s' "$init" | sed 's/.*"id":\([0-9]*\).*/\1/')
printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"sh","version":"1"}}}\n' "$id"
read initialized
read call
echo "debug: calling the tool"
sleep 30"#;
    let (run, took) = run_stdio_script(script, 30, "warn");
    assert_eq!(run.code, 1, "{}", run.stdout);
    let a = run.result("a");
    assert_eq!(a["status"], "error", "{a}");
    assert_eq!(a["error"]["kind"], "protocol_error", "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("debug: calling the tool"),
        "{a}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
