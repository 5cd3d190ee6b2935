//! Validation before anything runs, through the real binary: every error kind, all at once, exit 2.

mod common;

use common::*;
use serde_json::{Value, json};

fn invalid(batch: &str) -> Vec<(String, String)> {
    let sb = Sandbox::new();
    let run = sb.run(&[], batch);
    assert_eq!(
        run.code, 2,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(run.json["status"], "invalid");
    assert!(
        !sb.path().join("traces").exists(),
        "an invalid batch must not start a run"
    );
    run.error_messages()
}

fn has(errors: &[(String, String)], path: &str, fragment: &str) -> bool {
    errors
        .iter()
        .any(|(p, m)| p == path && m.contains(fragment))
}

#[test]
fn malformed_json_names_line_and_column() {
    let errors = invalid("{\n  \"tasks\": [\n    {\"task_id\": }\n  ]\n}");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "");
    assert!(errors[0].1.contains("line 3, column 17"), "{}", errors[0].1);
}

#[test]
fn truncated_and_empty_input() {
    assert!(invalid("")[0].1.contains("unexpected end of input"));
    assert!(invalid("{\"tasks\": [")[0].1.contains("line 1"));
}

#[test]
fn unknown_agent_lists_the_valid_ones() {
    let errors = invalid(r#"{"tasks": [{"task_id": "a", "agent": "shell", "input_data": {}}]}"#);
    assert!(
        has(
            &errors,
            "/tasks/0/agent",
            "unknown agent \"shell\"; valid agents: command, coder, debug, mcp"
        ),
        "{errors:?}"
    );
}

#[test]
fn every_agent_checks_its_own_input() {
    let errors = invalid(
        r#"{"tasks": [{"task_id": "a", "agent": "coder", "input_data": {}},
                      {"task_id": "b", "agent": "debug", "input_data": {"problem_description": "x", "affected_files": []}},
                      {"task_id": "c", "agent": "mcp", "input_data": {"arguments": {}}}]}"#,
    );
    assert!(
        has(
            &errors,
            "/tasks/0/input_data",
            "\"contract_description\" is a required property"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/1/input_data/affected_files",
            "less than 1 item"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/2/input_data",
            "\"tool\" is a required property"
        ),
        "{errors:?}"
    );
}

#[test]
fn bad_input_data_is_reported_by_the_agents_own_schema() {
    let errors = invalid(
        r#"{"tasks": [
            {"task_id": "a", "agent": "command", "input_data": {"argv": []}},
            {"task_id": "b", "agent": "command", "input_data": {"argv": "ls"}},
            {"task_id": "c", "agent": "command", "input_data": {"args": ["ls"]}},
            {"task_id": "d", "agent": "command", "input_data": {"argv": ["ls"], "env": {"X": 1}}}
        ]}"#,
    );
    assert!(
        has(&errors, "/tasks/0/input_data/argv", "less than 1 item"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/1/input_data/argv", "not of type \"array\""),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/2/input_data",
            "\"argv\" is a required property"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/2/input_data/args",
            "unknown field 'args'; expected one of: argv, cwd, env, stdin"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/3/input_data/env/X",
            "not of type \"string\""
        ),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|(_, m)| !m.contains("oneOf") && !m.contains("any of")),
        "messages must come from the agent schema: {errors:?}"
    );
}

#[test]
fn unknown_fields_anywhere_are_errors() {
    let errors = invalid(
        r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}, "depends_on": []}],
            "config": {"workers": 3, "circuit_breaker": {"threshold": 1}}, "extra": true}"#,
    );
    assert!(
        has(&errors, "/extra", "unknown field 'extra'"),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/0/depends_on",
            "expected one of: task_id, agent"
        ),
        "{errors:?}"
    );
    assert!(has(&errors, "/config/workers", "max_workers"), "{errors:?}");
    assert!(
        has(
            &errors,
            "/config/circuit_breaker/threshold",
            "failure_threshold"
        ),
        "{errors:?}"
    );
}

#[test]
fn task_id_rules() {
    let long = "x".repeat(129);
    let batch = json!({"tasks": [
        {"task_id": "has space", "agent": "command", "input_data": {"argv": ["true"]}},
        {"task_id": "", "agent": "command", "input_data": {"argv": ["true"]}},
        {"task_id": long, "agent": "command", "input_data": {"argv": ["true"]}},
        {"task_id": "ok_1-2.3", "agent": "command", "input_data": {"argv": ["true"]}},
        {"agent": "command", "input_data": {"argv": ["true"]}}
    ]});
    let errors = invalid(&batch.to_string());
    assert!(
        has(&errors, "/tasks/0/task_id", "may contain only"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/1/task_id", "shorter than 1"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/2/task_id", "longer than 128"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/4", "\"task_id\" is a required property"),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|(p, _)| p.starts_with("/tasks/3")),
        "{errors:?}"
    );
}

#[test]
fn graph_errors_duplicates_unknown_self_and_every_cycle() {
    let batch = json!({"tasks": [
        sh_task("a", "true", &["c"]),
        sh_task("b", "true", &["a"]),
        sh_task("c", "true", &["b"]),
        sh_task("a", "true", &[]),
        sh_task("s", "true", &["s"]),
        sh_task("u", "true", &["zz"]),
        sh_task("x", "true", &["y"]),
        sh_task("y", "true", &["x"]),
        sh_task("fine", "true", &[])
    ]});
    let errors = invalid(&batch.to_string());
    assert!(
        has(&errors, "/tasks/3/task_id", "duplicate task_id 'a'"),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/4/dependencies/0",
            "task 's' depends on itself"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/5/dependencies/0",
            "task 'u' depends on unknown task 'zz'"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/0/dependencies/0",
            "dependency cycle: a -> c -> b -> a"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/6/dependencies/0",
            "dependency cycle: x -> y -> x"
        ),
        "{errors:?}"
    );
    let cycles = errors.iter().filter(|(_, m)| m.contains("cycle")).count();
    assert_eq!(cycles, 2, "one error per cycle: {errors:?}");
}

#[test]
fn output_references_are_checked_before_running() {
    let batch = json!({"tasks": [
        sh_task("build", "echo hi", &[]),
        cmd_task("not_dep", &["echo", "{{tasks.build.output.stdout}}"], &[]),
        cmd_task("bad_field", &["echo", "{{tasks.build.output.stdot}}"], &["build"]),
        cmd_task("malformed", &["echo", "{{tasks.build.stdout}}"], &["build"]),
        cmd_task("unterminated", &["echo", "{{tasks.build.output.stdout"], &["build"]),
        cmd_task("unknown", &["echo", "{{tasks.nope.output.stdout}}"], &["build"]),
        cmd_task("good", &["echo", "{{tasks.build.output.stdout}} {{ tasks.build.output.exit_code }}"], &["build"])
    ]});
    let errors = invalid(&batch.to_string());
    assert!(
        has(
            &errors,
            "/tasks/1/input_data/argv/1",
            "does not list it in its dependencies"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/2/input_data/argv/1",
            "no output field 'stdot'"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/3/input_data/argv/1", "malformed reference"),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "/tasks/4/input_data/argv/1",
            "unterminated reference"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/5/input_data/argv/1", "unknown task 'nope'"),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|(p, _)| p.starts_with("/tasks/6")),
        "{errors:?}"
    );
}

#[test]
fn all_errors_at_once_and_nothing_runs() {
    let sb = Sandbox::new();
    let marker = sb.path().join("ran");
    let batch = json!({"tasks": [
        cmd_task("touch", &["touch", marker.to_str().unwrap()], &[]),
        sh_task("a", "true", &["missing"]),
        {"task_id": "b", "agent": "nope", "input_data": {}}
    ], "config": {"max_workers": 0}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 2);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        !marker.exists(),
        "no task may run when the batch is invalid"
    );
    assert!(run.stderr.contains("nothing ran"), "{}", run.stderr);
}

#[test]
fn hostile_shapes_get_exit_2_not_a_panic() {
    let deep = "[".repeat(100_000);
    let cases: Vec<String> = vec![
        "null".into(),
        "[]".into(),
        "42".into(),
        "{}".into(),
        r#"{"tasks": {}}"#.into(),
        r#"{"tasks": [null, 1, "x", []]}"#.into(),
        r#"{"tasks": [{"task_id": 5, "agent": "command", "input_data": {"argv": ["true"]}, "dependencies": [1, null]}]}"#.into(),
        r#"{"tasks": [], "config": {"timeout_seconds": -1, "retries": 1e400}}"#.into(),
        r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}, "timeout_seconds": 0}]}"#.into(),
        deep,
    ];
    for case in cases {
        let sb = Sandbox::new();
        let run = sb.run(&[], &case);
        assert_eq!(run.code, 2, "input {:.60}: {}", case, run.stdout);
        assert!(!run.error_messages().is_empty());
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    // Not UTF-8 at all.
    let sb = Sandbox::new();
    let path = sb.path().join("bad.json");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    let out = sb
        .cmd(&["validate", "-f", path.to_str().unwrap()])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 2);
    assert!(run.error_messages()[0].1.contains("not UTF-8"));
}

#[test]
fn repeated_keys_are_errors_wherever_they_are() {
    // `Value` keeps the last of repeated keys: this batch would have run as task `b` with
    // `A=2`, a retry count of 3 and `sh` instead of `true`.
    let errors = invalid(
        r#"{"tasks": [
            {"task_id": "a", "agent": "command", "task_id": "b",
             "input_data": {"argv": ["true"], "env": {"A": "1", "\u0041": "2"}, "argv": ["sh"]}},
            {"task_id": "m", "agent": "mcp", "input_data": {"url": "http://127.0.0.1:9/mcp", "tool": "t", "arguments": {"x": {"y": 1, "y": 2}}}}],
          "config": {"retries": 1, "retries": 3}}"#,
    );
    for (path, key) in [
        ("/tasks/0", "'task_id'"),
        ("/tasks/0/input_data", "'argv'"),
        ("/tasks/0/input_data/env", "'A'"),
        ("/tasks/1/input_data/arguments/x", "'y'"),
        ("/config", "'retries'"),
    ] {
        assert!(
            has(&errors, path, &format!("duplicate key {key}")),
            "{path}: {errors:?}"
        );
    }
    assert_eq!(errors.len(), 5, "{errors:?}");
    // The same names in different objects are fine.
    let sb = Sandbox::new();
    let ok = r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": "t",
        "url": "http://127.0.0.1:9/mcp", "arguments": {"tool": 1, "a": {"tool": 2, "a": [{"a": 3}]}}}}]}"#;
    assert_eq!(sb.run(&["validate"], ok).code, 0);
}

#[test]
fn command_inputs_that_can_never_spawn_are_errors() {
    let errors = invalid(
        r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {
            "argv": ["echo", "a\u0000b"], "cwd": "/tmp\u0000x",
            "env": {"A=B": "c", "": "d", "N\u0000": "e", "OK": "f\u0000g"}}}]}"#,
    );
    let nul = "contains a NUL character";
    assert!(
        has(&errors, "/tasks/0/input_data/argv/1", nul),
        "{errors:?}"
    );
    assert!(has(&errors, "/tasks/0/input_data/cwd", nul), "{errors:?}");
    assert!(
        has(
            &errors,
            "/tasks/0/input_data/env/A=B",
            "name 'A=B' contains '='"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/0/input_data/env/", "name '' is empty"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/0/input_data/env/N\0", nul),
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/0/input_data/env/OK", nul),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 6, "{errors:?}");
}

#[test]
fn max_output_bytes_has_a_maximum() {
    let errors = invalid(r#"{"tasks": [], "config": {"max_output_bytes": 1000000000000}}"#);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/config/max_output_bytes");
    assert!(errors[0].1.contains("67108864"), "{errors:?}");
    let sb = Sandbox::new();
    let top = r#"{"tasks": [], "config": {"max_output_bytes": 67108864}}"#;
    assert_eq!(sb.run(&["validate"], top).code, 0);
    // Nor can the flag go past it.
    let out = sb
        .cmd(&["run", "--max-output-bytes", "67108865"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("67108864"), "{stderr}");
}

#[test]
fn errors_quote_only_a_prefix_of_huge_values() {
    // A 3 MB key (under the string limit) that is not a known field, and a 3 MB unknown
    // dependency: each is named, but not echoed in full.
    let key = "k".repeat(3_000_000);
    let batch = format!(
        r#"{{"tasks": [{{"task_id": "a", "agent": "command", "input_data": {{"argv": ["true"]}},
           "dependencies": ["{key}"], "{key}": 1}}]}}"#
    );
    let sb = Sandbox::new();
    let run = sb.run(&["validate"], &batch);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stdout.len() < 10_000,
        "{} bytes on stdout",
        run.stdout.len()
    );
    assert!(
        run.stderr.len() < 10_000,
        "{} bytes on stderr",
        run.stderr.len()
    );
    let errors = run.error_messages();
    assert!(
        errors
            .iter()
            .any(|(p, m)| p.starts_with("/tasks/0/kkk") && m.contains("unknown field 'kkk")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|(_, m)| m.contains("(3000000 bytes)")),
        "{errors:?}"
    );
    // Over the string limit (a 5 MB key): the same.
    let key = "k".repeat(5_000_000);
    let run = sb.run(&["validate"], &format!(r#"{{"tasks": [], "{key}": 1}}"#));
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.len() < 10_000,
        "{} bytes on stdout",
        run.stdout.len()
    );
    assert!(
        run.stderr.len() < 10_000,
        "{} bytes on stderr",
        run.stderr.len()
    );
    assert!(
        run.error_messages()[0]
            .1
            .contains("string of 5000000 bytes")
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let sb = Sandbox::new();
    let run = sb.run(&["validate"], "\u{feff}{\"tasks\": []}");
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[test]
fn missing_input_file_is_exit_2() {
    let sb = Sandbox::new();
    let out = sb.cmd(&["run", "-f", "nope.json"]).output().unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 2);
    assert!(
        run.error_messages()[0]
            .1
            .contains("cannot read input file 'nope.json'")
    );
}

#[test]
fn validate_prints_the_plan() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("checkout", "true", &[]),
        sh_task("lint", "true", &["checkout"]),
        sh_task("build", "true", &["checkout"]),
        sh_task("test", "true", &["build"]),
        sh_task("package", "true", &["lint", "test"]),
        sh_task("notify", "true", &[])
    ]});
    let path = sb.write("b.json", &batch.to_string());
    let run = to_run(
        sb.cmd(&["validate", "-f", path.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["status"], "valid");
    assert_eq!(run.json["task_count"], 6);
    assert_eq!(run.json["dependency_count"], 5);
    assert_eq!(
        run.json["levels"],
        json!([
            ["checkout", "notify"],
            ["lint", "build"],
            ["test"],
            ["package"]
        ])
    );
    assert_eq!(
        run.json["critical_path"],
        json!(["checkout", "build", "test", "package"])
    );
    assert!(!sb.path().join("traces").exists(), "validate runs nothing");

    let run = sb.run(&["validate"], r#"{"tasks": [{"task_id": "a"}]}"#);
    assert_eq!(run.code, 2);
    assert_eq!(run.json["status"], "invalid");
}

#[test]
fn checked_in_schema_matches_the_code() {
    let out = std::process::Command::new(bin())
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checked_in = read_json(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/task-batch.schema.json"),
    );
    assert_eq!(
        generated, checked_in,
        "schemas/task-batch.schema.json is stale: run `cargo run -- schema > schemas/task-batch.schema.json`"
    );
    assert_eq!(
        generated["$defs"]["Task"]["properties"]["agent"]["enum"],
        json!(dispatch_runner::agents::ALL_AGENTS)
    );
}

#[test]
fn help_everywhere_with_exit_codes() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
    ] {
        let out = std::process::Command::new(bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        if args[0] != "schema" {
            assert!(
                text.contains("130") && text.contains("every task succeeded"),
                "{args:?}: {text}"
            );
        }
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = std::process::Command::new(bin())
        .args(["--max-workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-workers"));
    assert!(
        out.stdout.is_empty(),
        "stdout is only for the JSON document"
    );
}

/// Values the schema refuses are refused at their own place, all at once (they used to pass the
/// schema and fail in serde with an empty path, hiding the rest), and integral numbers such as
/// `2.0` are integers, as JSON Schema says.
#[test]
fn integer_edges_are_named_at_their_place_and_integral_floats_count() {
    let errors = invalid(
        r#"{"tasks": [{"task_id": "a", "agent": "mcp",
              "input_data": {"tool": "t", "server": "archon", "url": "http://127.0.0.1:9/mcp"}}],
            "config": {"max_workers": 2.5, "max_output_bytes": 18446744073709551616,
                       "circuit_breaker": {"failure_threshold": 4294967296}}}"#,
    );
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/config/circuit_breaker/failure_threshold",
            "/config/max_output_bytes",
            "/config/max_workers",
            "/tasks/0/input_data/url"
        ],
        "{errors:?}"
    );
    assert!(
        has(&errors, "/tasks/0/input_data/url", "not both"),
        "{errors:?}"
    );
    let sb = Sandbox::new();
    let run = sb.run(
        &["validate"],
        r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}, "retries": 1.0}],
            "config": {"max_workers": 2.0, "retry_backoff_ms": 1e3,
                       "circuit_breaker": {"failure_threshold": 4294967295}}}"#,
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["status"], "valid");
}
