//! The `mcp` agent against real servers nobody here wrote: `@modelcontextprotocol/server-everything`
//! (npm) over Streamable HTTP and stdio, and a server built on the Python `mcp` SDK. Also
//! validation of server names, `--check-tools`, `doctor`, session sharing, session expiry and
//! cancellation on timeout.

mod common;
mod mcp_support;

use std::time::Duration;

use common::*;
use mcp_support::*;
use serde_json::{Value, json};

fn config_args(sb: &Sandbox, yaml: &str) -> String {
    sb.write("dispatch.yaml", yaml).display().to_string()
}

fn progress_events<'a>(trace: &'a Value, task: &str) -> Vec<&'a Value> {
    events(trace, "task_progress")
        .into_iter()
        .filter(|e| e["task_id"] == task)
        .collect()
}

/// The same checks over either transport of server-everything.
fn check_everything_batch(sb: &Sandbox, cfg: &str, server: &str) -> Run {
    let batch = json!({"config": {"retries": 0}, "tasks": [
        mcp_task("echo", server, "echo", json!({"message": "hello mcp"})),
        mcp_task("sum", server, "get-sum", json!({"a": 19, "b": 23})),
        mcp_task("bad", server, "get-sum", json!({"a": "nineteen", "b": 23})),
        mcp_task("long", server, "trigger-long-running-operation", json!({"duration": 1, "steps": 4})),
        {"task_id": "use_sum", "agent": "command", "dependencies": ["sum"],
         "input_data": {"argv": ["echo", "{{tasks.sum.output.text}}"]}}
    ]});
    let run = sb.run_json(&["--config", cfg], &batch);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let echo = run.result("echo");
    assert_eq!(echo["status"], "success");
    assert_eq!(echo["output"]["server"], server);
    assert_eq!(echo["output"]["tool"], "echo");
    assert_eq!(echo["output"]["text"], "Echo: hello mcp");
    assert_eq!(
        echo["output"]["content"],
        json!([{"type": "text", "text": "Echo: hello mcp"}])
    );
    assert_eq!(echo["output"]["parsed"], Value::Null);
    assert_eq!(
        run.result("sum")["output"]["text"],
        "The sum of 19 and 23 is 42."
    );
    assert_eq!(
        run.result("use_sum")["output"]["stdout"],
        "The sum of 19 and 23 is 42.\n"
    );
    let bad = run.result("bad");
    assert_eq!(bad["status"], "error");
    assert_eq!(bad["error"]["kind"], "tool_error");
    assert_eq!(bad["attempts"], 1, "tool errors are permanent");
    assert!(
        bad["output"]["text"]
            .as_str()
            .unwrap()
            .contains("expected number"),
        "{bad}"
    );
    let long = run.result("long");
    assert_eq!(long["status"], "success");
    assert!(
        long["output"]["text"]
            .as_str()
            .unwrap()
            .contains("Steps: 4")
    );
    let trace = run.trace();
    let progress = progress_events(&trace, "long");
    let values: Vec<f64> = progress
        .iter()
        .map(|e| e["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0], "{progress:?}");
    assert!(
        progress
            .iter()
            .all(|e| e["total"] == 4.0 && e["attempt"] == 1)
    );
    // Progress comes between the attempt's start and its end.
    let seq = |name: &str| {
        trace["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == name && e["task_id"] == "long")
            .unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let first = progress[0]["seq"].as_u64().unwrap();
    let last = progress[3]["seq"].as_u64().unwrap();
    assert!(seq("attempt_started") < first && last < seq("attempt_finished"));
    run
}

#[test]
fn everything_over_streamable_http() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("everything", &server.url())]));
    check_everything_batch(&sb, &cfg, "everything");
}

#[test]
fn everything_over_stdio_and_the_server_is_stopped_after_the_run() {
    let sb = Sandbox::new();
    let tag = format!("dispatch-test-{}", std::process::id());
    let cfg = config_args(
        &sb,
        &format!(
            "mcp:\n  servers:\n    everything:\n      command: node\n      args: [\"{}\", \"stdio\", \"{tag}\"]\n",
            everything_js()
        ),
    );
    check_everything_batch(&sb, &cfg, "everything");
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&tag)
            .is_empty()),
        "stdio server still running: {:?}",
        processes_matching(&tag)
    );
}

#[test]
fn python_sdk_server_over_http_with_progress_errors_and_cancellation() {
    let sb = Sandbox::new();
    let markers = tempfile::tempdir().unwrap();
    let server = start_python_http(markers.path());
    let cfg = config_args(&sb, &http_config(&[("py", &server.url())]));
    let batch = json!({"config": {"retries": 0, "timeout_seconds": 20}, "tasks": [
        mcp_task("shout", "py", "shout", json!({"text": "quiet"})),
        mcp_task("stats", "py", "stats", json!({"numbers": [1, 2, 6]})),
        mcp_task("fail", "py", "fail", json!({"reason": "test"})),
        mcp_task("countdown", "py", "countdown", json!({"steps": 3})),
        {"task_id": "slow", "agent": "mcp", "timeout_seconds": 1,
         "input_data": {"server": "py", "tool": "slow", "arguments": {"seconds": 30, "tag": "t1"}}}
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("shout")["output"]["text"], "QUIET");
    let stats = &run.result("stats")["output"];
    assert_eq!(
        stats["parsed"],
        json!({"count": 3, "sum": 9.0, "mean": 3.0})
    );
    let fail = run.result("fail");
    assert_eq!(fail["error"]["kind"], "tool_error");
    assert_eq!(fail["attempts"], 1);
    assert_eq!(run.result("countdown")["output"]["text"], "counted 3 steps");
    let trace = run.trace();
    let messages: Vec<&str> = progress_events(&trace, "countdown")
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["step 1 of 3", "step 2 of 3", "step 3 of 3"]);
    let slow = run.result("slow");
    assert_eq!(slow["status"], "timeout");
    assert_eq!(slow["error"]["kind"], "timeout");
    // The timeout reached the server as notifications/cancelled: its handler was cancelled.
    let marker = markers.path().join("cancelled-t1");
    assert!(
        eventually(Duration::from_secs(10), || marker.exists()),
        "the server never saw the cancellation"
    );
}

#[test]
fn python_sdk_server_over_stdio() {
    let sb = Sandbox::new();
    let cfg = config_args(
        &sb,
        &format!(
            "mcp:\n  servers:\n    py:\n      command: \"{}\"\n      args: [\"{}\", \"stdio\"]\n",
            python(),
            python_server_script()
        ),
    );
    let batch = json!({"tasks": [
        mcp_task("a", "py", "shout", json!({"text": "one"})),
        mcp_task("b", "py", "shout", json!({"text": "two"}))
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("a")["output"]["text"], "ONE");
    assert_eq!(run.result("b")["output"]["text"], "TWO");
}

#[test]
fn unknown_server_is_rejected_before_anything_runs() {
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("files", "http://127.0.0.1:9/mcp")]));
    let batch = json!({"tasks": [
        {"task_id": "side_effect", "agent": "command", "input_data": {"argv": ["touch", "ran"]}},
        mcp_task("q", "nowhere", "search", json!({})),
        {"task_id": "both", "agent": "mcp",
         "input_data": {"tool": "x", "server": "files", "url": "http://127.0.0.1:9/mcp"}}
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json["status"], "invalid");
    let errors = run.error_messages();
    assert_eq!(errors[0].0, "/tasks/1/input_data/server");
    assert!(
        errors[0].1.contains("unknown MCP server 'nowhere'"),
        "{errors:?}"
    );
    assert!(
        errors[0].1.contains("configured servers: files "),
        "{errors:?}"
    );
    assert_eq!(errors[1].0, "/tasks/2/input_data/url");
    assert!(!sb.path().join("ran").exists());
    // `validate` applies the same check.
    let v = sb.run_json(&["--config", &cfg, "validate"], &batch);
    assert_eq!(v.code, 2);
    // The default server `archon` exists only when ARCHON_MCP_URL names it.
    let default =
        json!({"tasks": [{"task_id": "q", "agent": "mcp", "input_data": {"tool": "rag_query"}}]});
    // A fresh sandbox: `./dispatch.yaml` of this one would be found without `--config`.
    let sb = Sandbox::new();
    let mut cmd = sb.cmd(&["validate"]);
    cmd.env_remove("ARCHON_MCP_URL");
    let none = sb.run_cmd(cmd, &default.to_string());
    assert_eq!(none.code, 2, "{}", none.stdout);
    assert!(
        none.stdout
            .contains("unknown MCP server 'archon'; configured servers: none")
            && none.stdout.contains("ARCHON_MCP_URL"),
        "{}",
        none.stdout
    );
    let mut cmd = sb.cmd(&["validate"]);
    cmd.env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp");
    let ok = sb.run_cmd(cmd, &default.to_string());
    assert_eq!(ok.code, 0, "{}", ok.stdout);
}

#[test]
fn check_tools_rejects_missing_tools_and_bad_arguments() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("everything", &server.url())]));
    let bad = json!({"tasks": [
        {"task_id": "side_effect", "agent": "command", "input_data": {"argv": ["touch", "ran"]}},
        mcp_task("typo", "everything", "ehco", json!({"message": "x"})),
        mcp_task("args", "everything", "get-sum", json!({"a": "one", "b": 2})),
        mcp_task("missing", "everything", "echo", json!({}))
    ]});
    let run = sb.run_json(&["--config", &cfg, "--check-tools"], &bad);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/tasks/1/input_data/tool",
            "/tasks/2/input_data/arguments/a",
            "/tasks/3/input_data/arguments"
        ],
        "{errors:?}"
    );
    assert!(errors[0].1.contains("no tool 'ehco'") && errors[0].1.contains("echo"));
    assert!(!sb.path().join("ran").exists());

    let good = json!({"tasks": [mcp_task("ok", "everything", "get-sum", json!({"a": 1, "b": 2}))]});
    let v = sb.run_json(&["--config", &cfg, "validate", "--check-tools"], &good);
    assert_eq!(v.code, 0, "{}", v.stdout);
    let run = sb.run_json(&["--config", &cfg, "--check-tools"], &good);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.result("ok")["output"]["text"],
        "The sum of 1 and 2 is 3."
    );

    // A server that cannot be reached cannot vouch for its tools.
    let down = format!("http://127.0.0.1:{}/mcp", free_port());
    let cfg2 = config_args(&sb, &http_config(&[("down", &down)]));
    let run = sb.run_json(
        &["--config", &cfg2, "--check-tools"],
        &json!({"tasks": [mcp_task("x", "down", "echo", json!({}))]}),
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.error_messages()[0].0, "/tasks/0/input_data/server");
}

#[test]
fn doctor_reports_each_server_honestly() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let down = format!("http://127.0.0.1:{}/mcp", free_port());
    let cfg = config_args(
        &sb,
        &format!(
            "mcp:\n  servers:\n    everything:\n      url: \"{}\"\n    down:\n      url: \"{down}\"\n    py:\n      command: \"{}\"\n      args: [\"{}\", \"stdio\"]\n",
            server.url(),
            python(),
            python_server_script()
        ),
    );
    let out = sb
        .cmd(&["--config", &cfg, "doctor"])
        .env("ARCHON_MCP_URL", server.url())
        .output()
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.json["healthy"], false);
    let servers = run.json["servers"].as_array().unwrap();
    let get = |n: &str| servers.iter().find(|s| s["name"] == n).unwrap();
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["archon", "down", "everything", "py"]);
    for name in ["archon", "everything"] {
        let s = get(name);
        assert_eq!(s["reachable"], true, "{s}");
        assert_eq!(s["protocol_version"], "2025-11-25");
        assert_eq!(s["server_name"], "mcp-servers/everything");
        assert!(s["tools"].as_u64().unwrap() >= 10, "{s}");
        assert!(s["latency_ms"].is_u64());
        assert_eq!(s["error"], Value::Null);
    }
    let py = get("py");
    assert_eq!(py["reachable"], true, "{py}");
    assert_eq!(py["transport"], "stdio");
    assert_eq!(py["tools"], 5);
    let d = get("down");
    assert_eq!(d["reachable"], false);
    assert_eq!(d["error"]["kind"], "unavailable");
    assert!(d["tools"].is_null());

    // All healthy: exit 0.
    let cfg_ok = config_args(&sb, &http_config(&[("everything", &server.url())]));
    let out = sb
        .cmd(&["--config", &cfg_ok, "doctor"])
        .env("ARCHON_MCP_URL", server.url())
        .output()
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["healthy"], true);
}

#[test]
fn two_hundred_tasks_share_one_session() {
    let server = start_everything_http();
    let proxy = Proxy::start(&server.url(), None);
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("everything", &proxy.url())]));
    let tasks: Vec<Value> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                mcp_task(
                    &format!("t{i}"),
                    "everything",
                    "echo",
                    json!({"message": format!("m{i}")}),
                )
            } else {
                mcp_task(
                    &format!("t{i}"),
                    "everything",
                    "get-sum",
                    json!({"a": i, "b": 1000}),
                )
            }
        })
        .collect();
    let batch = json!({"config": {"max_workers": 16, "timeout_seconds": 60}, "tasks": tasks});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["summary"]["successful"], 200);
    for i in 0..200 {
        let text = run.result(&format!("t{i}"))["output"]["text"].clone();
        let expected = if i % 2 == 0 {
            format!("Echo: m{i}")
        } else {
            format!("The sum of {i} and 1000 is {}.", i + 1000)
        };
        assert_eq!(text, expected);
    }
    assert_eq!(proxy.initializes(), 1, "one session for the whole run");
    let calls = proxy
        .methods()
        .iter()
        .filter(|m| *m == "tools/call")
        .count();
    assert_eq!(calls, 200);
}

#[test]
fn expired_session_is_replaced_once_and_the_run_carries_on() {
    let server = start_everything_http();
    let proxy = Proxy::start(&server.url(), Some(4));
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("everything", &proxy.url())]));
    let tasks: Vec<Value> = (0..10)
        .map(|i| {
            mcp_task(
                &format!("t{i}"),
                "everything",
                "echo",
                json!({"message": format!("m{i}")}),
            )
        })
        .collect();
    let batch = json!({"config": {"max_workers": 2, "retries": 0}, "tasks": tasks});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for i in 0..10 {
        assert_eq!(
            run.result(&format!("t{i}"))["output"]["text"],
            format!("Echo: m{i}")
        );
        assert_eq!(run.result(&format!("t{i}"))["attempts"], 1);
    }
    assert_eq!(proxy.initializes(), 2, "{:?}", proxy.methods());
}

#[test]
fn a_timeout_sends_cancelled_to_the_server() {
    let server = start_everything_http();
    let proxy = Proxy::start(&server.url(), None);
    let sb = Sandbox::new();
    let cfg = config_args(&sb, &http_config(&[("everything", &proxy.url())]));
    let batch = json!({"config": {"retries": 0, "timeout_seconds": 1}, "tasks": [
        mcp_task("long", "everything", "trigger-long-running-operation", json!({"duration": 20, "steps": 2}))
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("long"), "timeout");
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .methods()
            .iter()
            .any(|m| m == "notifications/cancelled")),
        "{:?}",
        proxy.methods()
    );
}

#[test]
fn the_example_batch_runs_against_server_everything() {
    let server = start_everything_http();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sb = Sandbox::new();
    // The example configuration, pointed at this test's port instead of 3001.
    let yaml = std::fs::read_to_string(root.join("examples/dispatch.mcp.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:3001/mcp", &server.url());
    let cfg = config_args(&sb, &yaml);
    let example = root.join("examples/mcp_everything.json");
    let run = sb.to_run(
        sb.cmd(&["--config", &cfg, "-f", example.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.result("report")["output"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        report.starts_with("Echo: hello from dispatch_runner / The sum of 40 and 2 is 42. / "),
        "{report}"
    );
    assert_eq!(progress_events(&run.trace(), "long_job").len(), 4);
}

#[test]
fn doctor_without_configuration_is_healthy_and_archon_only_when_asked_for() {
    let sb = Sandbox::new();
    // No configuration file and no ARCHON_MCP_URL: no servers, nothing unhealthy.
    let out = sb
        .cmd(&["doctor"])
        .env_remove("ARCHON_MCP_URL")
        .output()
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json["healthy"], true);
    assert_eq!(run.json["servers"], json!([]));

    // ARCHON_MCP_URL names the built-in server; a refused port makes it unhealthy.
    let down = format!("http://127.0.0.1:{}/mcp", free_port());
    let out = sb
        .cmd(&["doctor"])
        .env("ARCHON_MCP_URL", &down)
        .output()
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.json["healthy"], false);
    let servers = run.json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{}", run.stdout);
    assert_eq!(servers[0]["name"], "archon");
    assert_eq!(servers[0]["target"], down.as_str());
    assert_eq!(servers[0]["reachable"], false);
    assert_eq!(servers[0]["error"]["kind"], "unavailable");
}
