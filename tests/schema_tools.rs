//! The published batch schema under independent validators: ajv (JavaScript, strict mode),
//! Python `jsonschema` (Draft 2020-12) and `check-jsonschema`, all installed by
//! scripts/install-test-deps. Each must take the schema without error or warning, and over a
//! corpus of valid and invalid batches each must agree with `dispatch_runner validate`, except on
//! the checks a schema cannot express (the dependency graph, references between tasks, and the
//! run's context), which are listed as such.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

fn deps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps")
}

fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schema-tools")
}

fn installed(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps",
        p.display()
    );
    p
}

/// The schema as the built binary prints it (the checked-in copy is compared to it elsewhere).
fn schema_file(sb: &Sandbox) -> PathBuf {
    let out = sb.cmd(&["schema"]).output().expect("run schema");
    assert!(out.status.success());
    let p = sb.path().join("schema.json");
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ajv(schema: &Path, files: &[PathBuf]) -> Output {
    installed(deps().join("schema-node/node_modules/ajv"));
    Command::new("node")
        .arg(tools().join("ajv-check.js"))
        .arg(schema)
        .args(files)
        .env("NODE_PATH", deps().join("schema-node/node_modules"))
        .output()
        .expect("run node")
}

fn python_jsonschema(schema: &Path, files: &[PathBuf]) -> Output {
    Command::new(installed(deps().join("venv/bin/python")))
        .args(["-W", "error"])
        .arg(tools().join("py-check.py"))
        .arg(schema)
        .args(files)
        .output()
        .expect("run python")
}

fn check_jsonschema(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(installed(deps().join("venv/bin/check-jsonschema")))
        .args(args)
        .env("PYTHONWARNINGS", "error")
        .output()
        .expect("run check-jsonschema")
}

/// `file -> (valid, failing paths)` from the JSON lines the two scripts print.
fn verdicts(out: &Output) -> std::collections::HashMap<String, (bool, Vec<String>)> {
    assert!(out.status.success(), "{}", text(out));
    assert!(out.stderr.is_empty(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let paths = v["paths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            (
                v["file"].as_str().unwrap().to_string(),
                (v["valid"].as_bool().unwrap(), paths),
            )
        })
        .collect()
}

#[test]
fn the_schema_compiles_in_every_validator_without_warnings() {
    let sb = Sandbox::new();
    let schema = schema_file(&sb);
    // A schema they refuse or warn about makes the scripts exit 2 with the reason.
    let out = ajv(&schema, &[]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ajv: {}",
        text(&out)
    );
    let out = python_jsonschema(&schema, &[]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "jsonschema: {}",
        text(&out)
    );
    let out = check_jsonschema(&["--check-metaschema".as_ref(), schema.as_os_str()]);
    assert!(out.status.success(), "check-jsonschema: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_lowercase()
        + &String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!said.contains("warn"), "check-jsonschema: {}", text(&out));
    // The checked-in copy is the one published.
    let published = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/task-batch.schema.json"),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&published).unwrap(),
        serde_json::from_slice::<Value>(&std::fs::read(&schema).unwrap()).unwrap()
    );
}

/// What a corpus case is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Every validator and the runner accept it.
    Valid,
    /// Every validator and the runner refuse it, each naming the listed places.
    Invalid,
    /// The schema takes it, the runner refuses it: a check no JSON Schema expresses (the
    /// dependency graph, references between tasks, the configured servers, programs on PATH).
    BeyondSchema,
}

fn cmd(id: &str) -> Value {
    json!({"task_id": id, "agent": "command", "input_data": {"argv": ["true"]}})
}

fn with_config(config: Value) -> Value {
    json!({"tasks": [cmd("a")], "config": config})
}

fn with_task(extra: Value) -> Value {
    let mut t = cmd("a");
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    json!({"tasks": [t]})
}

fn mcp(input: Value) -> Value {
    json!({"tasks": [{"task_id": "a", "agent": "mcp", "input_data": input}]})
}

/// (name, kind, batch, the exact places the runner names when it refuses).
fn corpus() -> Vec<(&'static str, Kind, String, Vec<&'static str>)> {
    use Kind::*;
    let big = "18446744073709551616";
    let v =
        |name, kind, batch: Value, paths: Vec<&'static str>| (name, kind, batch.to_string(), paths);
    vec![
        v("one command", Valid, json!({"tasks": [cmd("a")]}), vec![]),
        v(
            "dependencies",
            Valid,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "command", "input_data": {"argv": ["true"]}, "dependencies": ["a"]}]}),
            vec![],
        ),
        v(
            "mcp by server",
            Valid,
            mcp(json!({"tool": "echo", "server": "archon"})),
            vec![],
        ),
        v(
            "mcp by url",
            Valid,
            mcp(json!({"tool": "echo", "url": "http://127.0.0.1:9/mcp"})),
            vec![],
        ),
        v(
            "max_workers 2.0",
            Valid,
            with_config(json!({"max_workers": 2.0})),
            vec![],
        ),
        v(
            "max_workers 4096",
            Valid,
            with_config(json!({"max_workers": 4096})),
            vec![],
        ),
        v(
            "retries 1e2",
            Valid,
            with_config(json!({"retries": 1e2})),
            vec![],
        ),
        v(
            "task retries 3.0",
            Valid,
            with_task(json!({"retries": 3.0})),
            vec![],
        ),
        v(
            "failure_threshold u32::MAX",
            Valid,
            with_config(json!({"circuit_breaker": {"failure_threshold": 4294967295u64}})),
            vec![],
        ),
        v(
            "failure_threshold 0",
            Valid,
            with_config(json!({"circuit_breaker": {"failure_threshold": 0}})),
            vec![],
        ),
        v(
            "max_output_bytes at the cap",
            Valid,
            with_config(json!({"max_output_bytes": 67108864})),
            vec![],
        ),
        v(
            "max_expanded_input_bytes 2^53-1",
            Valid,
            with_config(json!({"max_expanded_input_bytes": 9007199254740991u64})),
            vec![],
        ),
        v(
            "backoff at the cap",
            Valid,
            with_config(json!({"retry_backoff_ms": 3600000, "retry_backoff_max_ms": 3600000.0})),
            vec![],
        ),
        v(
            "shortest timeout",
            Valid,
            with_task(json!({"timeout_seconds": 0.001})),
            vec![],
        ),
        v(
            "null options",
            Valid,
            with_config(json!({"max_workers": null, "retries": null})),
            vec![],
        ),
        v(
            "breaker name",
            Valid,
            with_task(json!({"breaker": "x".repeat(64)})),
            vec![],
        ),
        v(
            "longest id",
            Valid,
            json!({"tasks": [cmd(&"i".repeat(128))]}),
            vec![],
        ),
        // The schema's own rules.
        v(
            "mcp server and url",
            Invalid,
            mcp(json!({"tool": "echo", "server": "archon", "url": "http://127.0.0.1:9/mcp"})),
            vec!["/tasks/0/input_data/url"],
        ),
        v(
            "failure_threshold 2^32",
            Invalid,
            with_config(json!({"circuit_breaker": {"failure_threshold": 4294967296u64}})),
            vec!["/config/circuit_breaker/failure_threshold"],
        ),
        v(
            "failure_threshold -1",
            Invalid,
            with_config(json!({"circuit_breaker": {"failure_threshold": -1}})),
            vec!["/config/circuit_breaker/failure_threshold"],
        ),
        v(
            "max_workers 2.5",
            Invalid,
            with_config(json!({"max_workers": 2.5})),
            vec!["/config/max_workers"],
        ),
        v(
            "max_workers 0",
            Invalid,
            with_config(json!({"max_workers": 0})),
            vec!["/config/max_workers"],
        ),
        v(
            "max_workers 4097",
            Invalid,
            with_config(json!({"max_workers": 4097})),
            vec!["/config/max_workers"],
        ),
        v(
            "retries 101",
            Invalid,
            with_config(json!({"retries": 101})),
            vec!["/config/retries"],
        ),
        v(
            "task retries 100.5",
            Invalid,
            with_task(json!({"retries": 100.5})),
            vec!["/tasks/0/retries"],
        ),
        v(
            "backoff over the cap",
            Invalid,
            with_config(json!({"retry_backoff_ms": 3600001})),
            vec!["/config/retry_backoff_ms"],
        ),
        v(
            "max_expanded_input_bytes 0",
            Invalid,
            with_config(json!({"max_expanded_input_bytes": 0})),
            vec!["/config/max_expanded_input_bytes"],
        ),
        v(
            "max_expanded_input_bytes 2^53",
            Invalid,
            with_config(json!({"max_expanded_input_bytes": 9007199254740992u64})),
            vec!["/config/max_expanded_input_bytes"],
        ),
        v(
            "timeout too short",
            Invalid,
            with_task(json!({"timeout_seconds": 0.0001})),
            vec!["/tasks/0/timeout_seconds"],
        ),
        v(
            "negative recovery",
            Invalid,
            with_config(json!({"circuit_breaker": {"recovery_timeout_seconds": -1}})),
            vec!["/config/circuit_breaker/recovery_timeout_seconds"],
        ),
        v(
            "id with a space",
            Invalid,
            json!({"tasks": [cmd("a b")]}),
            vec!["/tasks/0/task_id"],
        ),
        v(
            "id too long",
            Invalid,
            json!({"tasks": [cmd(&"i".repeat(129))]}),
            vec!["/tasks/0/task_id"],
        ),
        v(
            "breaker name too long",
            Invalid,
            with_task(json!({"breaker": "x".repeat(65)})),
            vec!["/tasks/0/breaker"],
        ),
        v(
            "empty argv",
            Invalid,
            json!({"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": []}}]}),
            vec!["/tasks/0/input_data/argv"],
        ),
        v(
            "empty tool",
            Invalid,
            mcp(json!({"tool": ""})),
            vec!["/tasks/0/input_data/tool"],
        ),
        v(
            "unknown agent",
            Invalid,
            json!({"tasks": [{"task_id": "a", "agent": "nope", "input_data": {}}]}),
            vec!["/tasks/0/agent"],
        ),
        v(
            "unknown config field",
            Invalid,
            with_config(json!({"max_wrokers": 2})),
            vec!["/config/max_wrokers"],
        ),
        v(
            "string for integer",
            Invalid,
            with_config(json!({"max_workers": "2"})),
            vec!["/config/max_workers"],
        ),
        // Several problems at once: each is named at its place, none hides another.
        (
            "every overflow at once",
            Invalid,
            format!(
                r#"{{"tasks": [{{"task_id": "a", "agent": "mcp", "input_data": {{"tool": "t", "server": "archon", "url": "http://127.0.0.1:9/mcp"}}}}],
                   "config": {{"max_workers": 2.5, "max_output_bytes": {big}, "circuit_breaker": {{"failure_threshold": 4294967296}}}}}}"#
            ),
            vec![
                "/config/circuit_breaker/failure_threshold",
                "/config/max_output_bytes",
                "/config/max_workers",
                "/tasks/0/input_data/url",
            ],
        ),
        (
            "max_output_bytes 2^64",
            Invalid,
            format!(
                r#"{{"tasks": [{{"task_id": "a", "agent": "command", "input_data": {{"argv": ["true"]}}}}], "config": {{"max_output_bytes": {big}}}}}"#
            ),
            vec!["/config/max_output_bytes"],
        ),
        v(
            "typed references",
            Valid,
            json!({"tasks": [
                cmd("a"),
                {"task_id": "gen", "agent": "coder", "input_data": {"contract_description": "x",
                    "node_type": "Compute", "output_path": "gen", "context_files": ["a.py"]}},
                {"task_id": "b", "agent": "mcp", "dependencies": ["a"], "input_data": {
                    "url": "http://127.0.0.1:9/mcp", "tool": "get-sum",
                    "arguments": {"a": {"$output": "a/exit_code"}, "b": 1}}},
                {"task_id": "c", "agent": "debug", "dependencies": ["gen"], "input_data": {
                    "problem_description": "x",
                    "affected_files": {"$output": "gen/context_files", "$each": "/path"}}}]}),
            vec![],
        ),
        v(
            "typed reference with an unknown key",
            Invalid,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "debug", "dependencies": ["a"], "input_data": {
                "problem_description": "x", "affected_files": {"$output": "a/stdout", "default": ["x.py"]}}}]}),
            vec![
                "/tasks/1/input_data/affected_files",
                "/tasks/1/input_data/affected_files/default",
            ],
        ),
        v(
            "typed reference that is not a JSON Pointer",
            Invalid,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "coder", "dependencies": ["a"], "input_data": {
                "contract_description": "x", "node_type": "Compute", "output_path": "gen",
                "context_files": {"$output": "a/std~out"}}}]}),
            vec![
                "/tasks/1/input_data/context_files",
                "/tasks/1/input_data/context_files/$output",
            ],
        ),
        // Beyond any schema.
        v(
            "unknown dependency",
            BeyondSchema,
            json!({"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}, "dependencies": ["zz"]}]}),
            vec!["/tasks/0/dependencies/0"],
        ),
        v(
            "duplicate id",
            BeyondSchema,
            json!({"tasks": [cmd("a"), cmd("a")]}),
            vec!["/tasks/1/task_id"],
        ),
        v(
            "reference to a non-dependency",
            BeyondSchema,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "command", "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}"]}}]}),
            vec!["/tasks/1/input_data/argv/1"],
        ),
        v(
            "typed reference to a non-dependency",
            BeyondSchema,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "mcp", "input_data": {
                "url": "http://127.0.0.1:9/mcp", "tool": "t", "arguments": {"n": {"$output": "a/exit_code"}}}}]}),
            vec!["/tasks/1/input_data/arguments/n"],
        ),
        v(
            "typed reference of the wrong type",
            BeyondSchema,
            json!({"tasks": [cmd("a"), {"task_id": "b", "agent": "debug", "dependencies": ["a"], "input_data": {
                "problem_description": "x", "affected_files": {"$output": "a/stdout"}}}]}),
            vec!["/tasks/1/input_data/affected_files"],
        ),
        v(
            "unconfigured server",
            BeyondSchema,
            mcp(json!({"tool": "echo", "server": "elsewhere"})),
            vec!["/tasks/0/input_data/server"],
        ),
        v(
            "NUL byte in argv",
            BeyondSchema,
            json!({"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["true", "a\u{0}b"]}}]}),
            vec!["/tasks/0/input_data/argv/1"],
        ),
    ]
}

#[test]
fn independent_validators_agree_with_validate() {
    let sb = Sandbox::new();
    let schema = schema_file(&sb);
    let cases = corpus();
    let files: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, _, batch, _))| sb.write(&format!("case{i}.json"), batch))
        .collect();
    let by_ajv = verdicts(&ajv(&schema, &files));
    let by_python = verdicts(&python_jsonschema(&schema, &files));
    let mut disagreements = Vec::new();
    for ((name, kind, batch, paths), file) in cases.iter().zip(&files) {
        let key = file.display().to_string();
        // `archon` (named by one case) is known only with ARCHON_MCP_URL set.
        let mut cmd = sb.cmd(&["validate"]);
        cmd.env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp");
        let run = sb.run_cmd(cmd, batch);
        let runner_valid = run.code == 0;
        let runner_paths: Vec<String> = if runner_valid {
            Vec::new()
        } else {
            assert_eq!(run.code, 2, "{name}: {}", run.stderr);
            let mut p: Vec<String> = run.json["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["path"].as_str().unwrap().to_string())
                .collect();
            p.sort();
            p.dedup();
            p
        };
        let cj = check_jsonschema(&[
            "--schemafile".as_ref(),
            schema.as_os_str(),
            file.as_os_str(),
        ]);
        let cj_valid = match cj.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("{name}: check-jsonschema: {}", text(&cj)),
        };
        let (ajv_valid, ajv_paths) = &by_ajv[&key];
        let (py_valid, py_paths) = &by_python[&key];
        let schema_valid = *kind != Kind::Invalid;
        for (tool, valid) in [
            ("ajv", *ajv_valid),
            ("jsonschema", *py_valid),
            ("check-jsonschema", cj_valid),
        ] {
            if valid != schema_valid {
                disagreements.push(format!("{name}: {tool} says valid={valid}"));
            }
        }
        if runner_valid != (*kind == Kind::Valid) {
            disagreements.push(format!(
                "{name}: validate says valid={runner_valid}: {}",
                run.stdout
            ));
        }
        if runner_paths != *paths {
            disagreements.push(format!(
                "{name}: validate names {runner_paths:?}, expected {paths:?}"
            ));
        }
        if *kind == Kind::Invalid {
            for p in paths {
                for (tool, found) in [("ajv", ajv_paths), ("jsonschema", py_paths)] {
                    // Python's jsonschema names the object for `dependentSchemas`, not the field.
                    let parent = &p[..p.rfind('/').unwrap_or(0)];
                    if !found.iter().any(|f| f == p || f == parent) {
                        disagreements.push(format!("{name}: {tool} does not name {p}: {found:?}"));
                    }
                }
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
