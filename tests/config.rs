//! The configuration file and environment through the binary: discovery, precedence (flag >
//! batch > environment > file > default), per-agent settings, errors (exit 3), `config`.

mod common;

use common::*;
use serde_json::{Value, json};

fn one_task() -> Value {
    json!({"tasks": [sh_task("t", "true", &[])]})
}

fn effective(run: &Run) -> Value {
    run.trace()["config"].clone()
}

#[test]
fn precedence_flag_batch_env_file_default() {
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "dispatcher:\n  max_workers: 2\n  retries: 4\n  timeout_seconds: 50\n  retry_backoff_ms: 7\n",
    );
    // File only (found as ./dispatch.yaml).
    let run = sb.run_json(&[], &one_task());
    let c = effective(&run);
    assert_eq!(
        (c["max_workers"].as_u64(), c["retries"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(c["retry_backoff_ms"], 7);
    assert_eq!(c["fail_fast"], false, "default");

    // Environment beats the file.
    let mut cmd = sb.cmd(&[]);
    cmd.env("PARALLEL_DISPATCH_MAX_WORKERS", "3")
        .env("PARALLEL_DISPATCH_TIMEOUT", "40");
    let run = sb.run_cmd(cmd, &one_task().to_string());
    let c = effective(&run);
    assert_eq!(
        (c["max_workers"].as_u64(), c["timeout_seconds"].as_f64()),
        (Some(3), Some(40.0))
    );

    // The batch beats the environment.
    let mut batch = one_task();
    batch["config"] = json!({"max_workers": 4});
    let mut cmd = sb.cmd(&[]);
    cmd.env("PARALLEL_DISPATCH_MAX_WORKERS", "3");
    let c = effective(&sb.run_cmd(cmd, &batch.to_string()));
    assert_eq!(c["max_workers"], 4);
    assert_eq!(c["retries"], 4, "still from the file");

    // The flag beats the batch.
    let mut cmd = sb.cmd(&["--max-workers", "5"]);
    cmd.env("PARALLEL_DISPATCH_MAX_WORKERS", "3");
    let c = effective(&sb.run_cmd(cmd, &batch.to_string()));
    assert_eq!(c["max_workers"], 5);
}

#[test]
fn config_file_discovery_order() {
    let sb = Sandbox::new();
    sb.write("dispatch.yaml", "dispatcher:\n  max_workers: 2\n");
    sb.write("other.yaml", "dispatcher:\n  max_workers: 6\n");
    sb.write("env.yaml", "dispatcher:\n  max_workers: 7\n");
    let mut cmd = sb.cmd(&["--config", "other.yaml"]);
    cmd.env("PARALLEL_DISPATCH_CONFIG", "env.yaml");
    assert_eq!(
        effective(&sb.run_cmd(cmd, &one_task().to_string()))["max_workers"],
        6,
        "--config first"
    );
    let mut cmd = sb.cmd(&[]);
    cmd.env("PARALLEL_DISPATCH_CONFIG", "env.yaml");
    assert_eq!(
        effective(&sb.run_cmd(cmd, &one_task().to_string()))["max_workers"],
        7,
        "then the variable"
    );
    let cmd = sb.cmd(&[]);
    assert_eq!(
        effective(&sb.run_cmd(cmd, &one_task().to_string()))["max_workers"],
        2,
        "then ./dispatch.yaml"
    );
}

#[test]
fn per_agent_settings_sit_between_task_and_dispatcher() {
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "dispatcher:\n  timeout_seconds: 100\nagents:\n  command:\n    timeout_seconds: 0.3\n",
    );
    let batch = json!({"tasks": [
        sh_task("agent_timeout", "sleep 5", &[]),
        {"task_id": "task_timeout", "agent": "command", "timeout_seconds": 10,
         "input_data": {"argv": ["sh", "-c", "sleep 0.5; echo fine"]}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.status("agent_timeout"), "timeout");
    assert_eq!(
        run.result("agent_timeout")["error"]["message"],
        "attempt timed out after 0.300s"
    );
    assert_eq!(run.status("task_timeout"), "success");
}

#[test]
fn agent_max_concurrency_caps_inside_the_worker_limit() {
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "dispatcher:\n  max_workers: 8\nagents:\n  command:\n    max_concurrency: 2\n",
    );
    let tasks = concurrency_probe_tasks(&sb, 12);
    let run = sb.run_json(&[], &json!({"tasks": tasks}));
    assert_eq!(run.code, 0);
    let counts = probe_counts(&sb);
    assert!(counts.iter().all(|&c| c <= 2), "{counts:?}");
    assert_eq!(peak_concurrency(&run.trace()), 2);
}

#[test]
fn bad_configuration_is_exit_3_with_its_path() {
    let sb = Sandbox::new();
    for (text, path, fragment) in [
        (
            "dispatcher:\n  max_wrkers: 3\n",
            "dispatcher.max_wrkers",
            "unknown field `max_wrkers`",
        ),
        (
            "dispatcher:\n  max_workers: many\n",
            "dispatcher.max_workers",
            "invalid type",
        ),
        (
            "agents:\n  shell:\n    retries: 1\n",
            "agents.shell",
            "unknown agent 'shell'",
        ),
        (
            "mcp:\n  servers:\n    broken: {}\n",
            "mcp.servers.broken",
            "set `url`",
        ),
        (
            "logging:\n  format: xml\n",
            "logging.format",
            "unknown variant `xml`",
        ),
        ("dispatcher: [1, 2\n", "", "line"),
    ] {
        sb.write("bad.yaml", text);
        let run = sb.run_json(&["--config", "bad.yaml"], &one_task());
        assert_eq!(run.code, 3, "{text}: {}", run.stdout);
        assert_eq!(run.json["status"], "error");
        let (p, m) = &run.error_messages()[0];
        assert!(
            p.starts_with("bad.yaml") && p.ends_with(path),
            "{text}: {p}"
        );
        assert!(m.contains(fragment), "{text}: {m}");
        assert!(!sb.path().join("traces").exists(), "nothing ran");
    }
    let run = sb.run_json(&["--config", "missing.yaml"], &one_task());
    assert_eq!(run.code, 3);
    let mut cmd = sb.cmd(&[]);
    cmd.env("PARALLEL_DISPATCH_MAX_WORKERS", "zero");
    let run = sb.run_cmd(cmd, &one_task().to_string());
    assert_eq!(run.code, 3);
    assert_eq!(run.error_messages()[0].0, "PARALLEL_DISPATCH_MAX_WORKERS");
}

#[test]
fn config_subcommand_shows_values_sources_and_redacts_secrets() {
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "dispatcher:\n  retries: 2\nmcp:\n  servers:\n    kb:\n      url: http://127.0.0.1:9/mcp\n      headers:\n        Authorization: Bearer literal-secret-value\n",
    );
    let batch = sb.write(
        "b.json",
        &json!({"tasks": [], "config": {"fail_fast": true}}).to_string(),
    );
    let mut cmd = sb.cmd(&[
        "config",
        "-f",
        batch.to_str().unwrap(),
        "--max-workers",
        "9",
    ]);
    cmd.env("PARALLEL_DISPATCH_TRACE_DIR", "env_traces")
        .env("ARCHON_MCP_URL", "http://127.0.0.1:8/mcp");
    let out = cmd.output().unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let d = &run.json["dispatcher"];
    assert_eq!(d["max_workers"], json!({"value": 9, "source": "flag"}));
    assert_eq!(d["fail_fast"], json!({"value": true, "source": "batch"}));
    assert_eq!(
        d["trace_dir"],
        json!({"value": "env_traces", "source": "env:PARALLEL_DISPATCH_TRACE_DIR"})
    );
    assert_eq!(
        d["retries"],
        json!({"value": 2, "source": "file:dispatch.yaml"})
    );
    assert_eq!(d["timeout_seconds"]["source"], "default");
    assert_eq!(run.json["config_file"], "dispatch.yaml");
    assert_eq!(
        run.json["mcp"]["servers"]["archon"]["url"],
        "http://127.0.0.1:8/mcp"
    );
    assert_eq!(
        run.json["mcp"]["servers"]["kb"]["headers"]["Authorization"],
        "[REDACTED]"
    );
    assert!(!run.stdout.contains("literal-secret-value"));
}

#[test]
fn dispatch_debug_turns_on_debug_logs_on_stderr_only() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd(&[]);
    cmd.env("DISPATCH_DEBUG", "1").env_remove("RUST_LOG");
    let quiet = sb.run_cmd(sb.cmd(&["-q"]), &one_task().to_string());
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
    let run = sb.run_cmd(cmd, &one_task().to_string());
    assert!(run.stderr.contains("DEBUG"), "{}", run.stderr);
    assert_eq!(
        run.json["status"], "success",
        "stdout is still only the document"
    );

    sb.write(
        "dispatch.yaml",
        "logging:\n  level: debug\n  format: json\n",
    );
    let mut cmd = sb.cmd(&[]);
    cmd.env_remove("RUST_LOG");
    let run = sb.run_cmd(cmd, &one_task().to_string());
    let first = run
        .stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON log line");
    let line: Value = serde_json::from_str(first).unwrap();
    assert_eq!(line["level"], "DEBUG");
}

#[test]
fn out_of_range_configuration_is_exit_3_with_key_path_and_line() {
    let sb = Sandbox::new();
    for (text, key, line) in [
        (
            "dispatcher:\n  timeout_seconds: -1\n",
            "dispatcher.timeout_seconds",
            2,
        ),
        (
            "dispatcher:\n  timeout_seconds: 0\n",
            "dispatcher.timeout_seconds",
            2,
        ),
        (
            "dispatcher:\n  timeout_seconds: .nan\n",
            "dispatcher.timeout_seconds",
            2,
        ),
        (
            "dispatcher:\n  timeout_seconds: .inf\n",
            "dispatcher.timeout_seconds",
            2,
        ),
        (
            "dispatcher:\n  fail_fast: true\n  max_workers: 100000\n",
            "dispatcher.max_workers",
            3,
        ),
        (
            "dispatcher:\n  max_workers: 0\n",
            "dispatcher.max_workers",
            2,
        ),
        ("dispatcher:\n  retries: 100000\n", "dispatcher.retries", 2),
        (
            "dispatcher:\n  retry_backoff_ms: 3600001\n",
            "dispatcher.retry_backoff_ms",
            2,
        ),
        (
            "dispatcher:\n  max_output_bytes: 0\n",
            "dispatcher.max_output_bytes",
            2,
        ),
        ("dispatcher:\n  trace_dir: ''\n", "dispatcher.trace_dir", 2),
        (
            "agents:\n  command:\n    max_concurrency: 0\n",
            "agents.command.max_concurrency",
            3,
        ),
        (
            "agents:\n  mcp:\n    timeout_seconds: -5\n",
            "agents.mcp.timeout_seconds",
            3,
        ),
        (
            "agents:\n  debug:\n    retries: 101\n",
            "agents.debug.retries",
            3,
        ),
        (
            "circuit_breaker:\n  recovery_timeout_seconds: -1\n",
            "circuit_breaker.recovery_timeout_seconds",
            2,
        ),
        (
            "dispatcher: {max_workers: 0}\n",
            "dispatcher.max_workers",
            1,
        ),
        ("llm:\n  max_repairs: 100000\n", "llm.max_repairs", 2),
    ] {
        sb.write("bad.yaml", text);
        let run = sb.run_json(&["--config", "bad.yaml"], &one_task());
        assert_eq!(run.code, 3, "{text}: {}", run.stdout);
        assert_eq!(run.json["status"], "error");
        let errors = run.error_messages();
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        let (p, m) = &errors[0];
        assert_eq!(p, &format!("bad.yaml: {key}"), "{text}");
        assert!(m.contains(&format!("at line {line} column")), "{text}: {m}");
        assert!(!sb.path().join("traces").exists(), "{text}: nothing ran");
    }
    // Every violation is reported at once, each with its own line.
    sb.write(
        "bad.yaml",
        "dispatcher:\n  timeout_seconds: -1\n  max_workers: 0\nagents:\n  command:\n    max_concurrency: 0\n",
    );
    let run = sb.run_json(&["--config", "bad.yaml"], &one_task());
    assert_eq!(run.code, 3);
    let mut got: Vec<String> = run
        .error_messages()
        .into_iter()
        .map(|(p, m)| format!("{p} | {m}"))
        .collect();
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("bad.yaml: agents.command.max_concurrency | out of range")
            && got[0].contains("line 6"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("bad.yaml: dispatcher.max_workers |") && got[1].contains("line 3"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("bad.yaml: dispatcher.timeout_seconds |") && got[2].contains("line 2"),
        "{got:?}"
    );
    // The edges of every range are fine, and those values are used.
    sb.write(
        "edge.yaml",
        "dispatcher:\n  timeout_seconds: 0.001\n  max_workers: 4096\n  retries: 100\nagents:\n  command:\n    max_concurrency: 1\n    timeout_seconds: 30\n",
    );
    let run = sb.run_json(&["--config", "edge.yaml"], &one_task());
    assert_eq!(run.code, 0, "{}", run.stdout);
    let settings = effective(&run);
    assert_eq!(settings["max_workers"], 4096, "{settings}");
    assert_eq!(settings["retries"], 100, "{settings}");
}
