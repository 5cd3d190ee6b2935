//! Typed output passing (`{"$output": "<task>/<JSON Pointer>"}`, optionally with `"$each"`)
//! between real MCP servers nobody here wrote: server-memory's entities into its `open_nodes`
//! (an array of names), and numbers from server-everything and from a command into
//! server-everything's `get-sum`. Also the checks before the run (plain validation and
//! `--check-tools`) and failures at run time.

#[path = "common/agents.rs"]
mod agents;
mod common;
mod mcp_support;

use common::*;
use mcp_support::*;
use serde_json::{Value, json};

/// A configuration naming server-memory (stdio) with its graph file in `dir`.
fn memory_config(sb: &Sandbox, dir: &std::path::Path) -> String {
    let yaml = format!(
        "mcp:\n  servers:\n    memory:\n      command: node\n      args: [\"{}\"]\n      env:\n        MEMORY_FILE_PATH: \"{}\"\n",
        memory_js(),
        dir.join("memory.jsonl").display()
    );
    sb.write("dispatch.yaml", &yaml).display().to_string()
}

fn everything_config(sb: &Sandbox, url: &str) -> String {
    sb.write("dispatch.yaml", &http_config(&[("everything", url)]))
        .display()
        .to_string()
}

fn with_deps(mut task: Value, deps: &[&str]) -> Value {
    task["dependencies"] = json!(deps);
    task
}

fn names(graph: &Value) -> Vec<String> {
    let mut n: Vec<String> = graph["entities"]
        .as_array()
        .unwrap_or_else(|| panic!("no entities in {graph}"))
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn memory_entities_reach_open_nodes_as_an_array() {
    let sb = Sandbox::new();
    let store = tempfile::tempdir().unwrap();
    let cfg = memory_config(&sb, store.path());
    let entity = |name: &str, kind: &str| json!({"name": name, "entityType": kind, "observations": [format!("{name} is a {kind}")]});
    let batch = json!({"config": {"retries": 0}, "tasks": [
        mcp_task("create", "memory", "create_entities", json!({"entities": [
            entity("Ada", "person"), entity("Analytical Engine", "machine"), entity("Babbage", "person")
        ]})),
        with_deps(mcp_task("people", "memory", "search_nodes", json!({"query": "person"})), &["create"]),
        // Every name search_nodes found (its text parsed as JSON), as an array.
        with_deps(mcp_task("open_people", "memory", "open_nodes",
            json!({"names": {"$output": "people/parsed/entities", "$each": "/name"}})), &["people"]),
        with_deps(mcp_task("graph", "memory", "read_graph", json!({})), &["create"]),
        // From the structured result, one name picked by index, inside an array literal.
        with_deps(mcp_task("open_first", "memory", "open_nodes",
            json!({"names": [{"$output": "graph/structured_content/entities/0/name"}]})), &["graph"]),
        // The old form, for contrast: a template always becomes a string.
        with_deps(mcp_task("as_text", "memory", "open_nodes",
            json!({"names": "{{tasks.people.output.parsed.entities}}"})), &["people"]),
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for ok in ["create", "people", "open_people", "graph", "open_first"] {
        assert_eq!(run.status(ok), "success", "{ok}: {}", run.result(ok));
    }
    assert_eq!(
        names(&run.result("people")["output"]["parsed"]),
        ["Ada", "Babbage"]
    );
    let opened = &run.result("open_people")["output"];
    assert_eq!(names(&opened["structured_content"]), ["Ada", "Babbage"]);
    assert_eq!(names(&opened["parsed"]), ["Ada", "Babbage"]);
    let first = run.result("graph")["output"]["structured_content"]["entities"][0]["name"].clone();
    assert_eq!(
        run.result("open_first")["output"]["parsed"]["entities"][0]["name"],
        first
    );
    let text = run.result("as_text");
    assert_eq!(text["status"], "error", "{text}");
    assert_eq!(text["error"]["kind"], "tool_error", "{text}");
    // The server really wrote its graph where the test told it to.
    let stored = std::fs::read_to_string(store.path().join("memory.jsonl")).unwrap();
    assert!(stored.contains("Analytical Engine"), "{stored}");
}

#[test]
fn numbers_reach_get_sum_as_numbers() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let cfg = everything_config(&sb, &server.url());
    let batch = json!({"config": {"retries": 0}, "tasks": [
        cmd_task("probe", &["true"], &[]),
        mcp_task("weather", "everything", "get-structured-content", json!({"location": "Chicago"})),
        with_deps(mcp_task("sum", "everything", "get-sum", json!({
            "a": {"$output": "weather/structured_content/temperature"},
            "b": {"$output": "weather/structured_content/humidity"}})), &["weather"]),
        with_deps(mcp_task("with_exit_code", "everything", "get-sum", json!({
            "a": {"$output": "probe/exit_code"},
            "b": {"$output": "weather/parsed/temperature"}})), &["probe", "weather"]),
    ]});
    // The same batch passes every check before the run, --check-tools included, and runs.
    for args in [
        vec!["--config", &cfg],
        vec!["--config", &cfg, "--check-tools"],
    ] {
        let run = sb.run_json(&args, &batch);
        assert_eq!(run.code, 0, "{args:?}\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(
            run.result("weather")["output"]["structured_content"]["temperature"],
            36
        );
        assert_eq!(
            run.result("sum")["output"]["text"],
            "The sum of 36 and 82 is 118."
        );
        assert_eq!(
            run.result("with_exit_code")["output"]["text"],
            "The sum of 0 and 36 is 36."
        );
    }
}

#[test]
fn type_mismatches_are_refused_before_the_run() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let cfg = everything_config(&sb, &server.url());
    let batch = json!({"tasks": [
        {"task_id": "side_effect", "agent": "command", "input_data": {"argv": ["touch", "ran"]}},
        cmd_task("count", &["echo", "3"], &[]),
        with_deps(mcp_task("text_for_number", "everything", "get-sum", json!({
            "a": {"$output": "count/stdout"}, "b": 1})), &["count"]),
        with_deps(mcp_task("template_for_number", "everything", "get-sum", json!({
            "a": "{{tasks.count.output.exit_code}}", "b": 1})), &["count"]),
        with_deps(mcp_task("fine", "everything", "get-sum", json!({
            "a": {"$output": "count/exit_code"}, "b": 1})), &["count"]),
    ]});
    // Without the tools' schemas, get-sum's argument types are unknown: the batch is valid.
    let v = sb.run_json(&["--config", &cfg, "validate"], &batch);
    assert_eq!(v.code, 0, "{}", v.stdout);
    for args in [
        vec!["--config", &cfg, "--check-tools"],
        vec!["--config", &cfg, "validate", "--check-tools"],
    ] {
        let run = sb.run_json(&args, &batch);
        assert_eq!(run.code, 2, "{args:?}\n{}\n{}", run.stdout, run.stderr);
        let errors = run.error_messages();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/tasks/2/input_data/arguments/a",
                "/tasks/3/input_data/arguments/a"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].1.contains("takes number") && errors[0].1.contains("is of type string"),
            "{errors:?}"
        );
        assert!(
            errors[1].1.contains(r#"{"$output": "count/exit_code"}"#),
            "{errors:?}"
        );
    }
    assert!(!sb.path().join("ran").exists(), "a task ran");

    // Where the batch itself says what a place takes, no server is needed: `arguments` is an
    // object, and an exit code is an integer.
    let whole = json!({"tasks": [
        cmd_task("count", &["true"], &[]),
        {"task_id": "m", "agent": "mcp", "dependencies": ["count"], "input_data": {
            "server": "everything", "tool": "get-sum", "arguments": {"$output": "count/exit_code"}}},
    ]});
    let run = sb.run_json(&["--config", &cfg, "validate"], &whole);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/tasks/1/input_data/arguments");
    assert!(
        errors[0].1.contains("is of type integer") && errors[0].1.contains("takes object"),
        "{errors:?}"
    );
}

#[test]
fn malformed_typed_references_are_refused_with_their_place() {
    let sb = Sandbox::new();
    let m = |id: &str, deps: &[&str], args: Value| {
        json!({"task_id": id, "agent": "mcp", "dependencies": deps,
               "input_data": {"url": "http://127.0.0.1:9/mcp", "tool": "t", "arguments": args}})
    };
    let batch = json!({"tasks": [
        cmd_task("c", &["true"], &[]),
        m("unknown_field", &["c"], json!({"x": {"$output": "c/exit_status"}})),
        m("too_deep", &["c"], json!({"x": [1, {"$output": "c/exit_code/0"}]})),
        m("not_a_dependency", &[], json!({"x": {"$output": "c/stdout"}})),
        m("unknown_task", &["c"], json!({"x": {"$output": "nobody/stdout"}})),
        m("bad_pointer", &["c"], json!({"x": {"$output": "c/std~out"}})),
        m("each_on_text", &["c"], json!({"x": {"$output": "c/stdout", "$each": "/name"}})),
        m("extra_key", &["c"], json!({"x": {"$output": "c/stdout", "default": 1}})),
        m("not_a_string", &["c"], json!({"x": {"$output": 7}})),
    ]});
    let run = sb.run_json(&["validate"], &batch);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    let at = |i: usize| {
        errors
            .iter()
            .find(|(p, _)| p.starts_with(&format!("/tasks/{i}/")))
            .unwrap_or_else(|| panic!("nothing for task {i}: {errors:?}"))
    };
    let expect = [
        (
            1,
            "/tasks/1/input_data/arguments/x",
            "no field 'exit_status'",
        ),
        (2, "/tasks/2/input_data/arguments/x/1", "is of type integer"),
        (3, "/tasks/3/input_data/arguments/x", "does not list it"),
        (
            4,
            "/tasks/4/input_data/arguments/x",
            "unknown task 'nobody'",
        ),
        (
            5,
            "/tasks/5/input_data/arguments/x",
            "'~' must be followed by 0 or 1",
        ),
        (6, "/tasks/6/input_data/arguments/x", "needs an array"),
        (
            7,
            "/tasks/7/input_data/arguments/x",
            "unknown key 'default'",
        ),
        (8, "/tasks/8/input_data/arguments/x", "\"$output\" takes"),
    ];
    for (i, path, words) in expect {
        let (p, message) = at(i);
        assert_eq!(p, path, "{errors:?}");
        assert!(message.contains(words), "task {i}: {message}");
    }
    assert_eq!(errors.len(), expect.len(), "{errors:?}");
}

#[test]
fn values_that_do_not_fit_at_run_time_fail_their_task_clearly() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let cfg = everything_config(&sb, &server.url());
    let weather = mcp_task(
        "weather",
        "everything",
        "get-structured-content",
        json!({"location": "Chicago"}),
    );
    let sum = |id: &str, a: Value| {
        with_deps(
            mcp_task("x", "everything", "get-sum", json!({"a": a, "b": 1})),
            &["weather"],
        )
        .as_object()
        .map(|o| {
            let mut o = o.clone();
            o.insert("task_id".into(), json!(id));
            Value::Object(o)
        })
        .unwrap()
    };
    let batch = json!({"config": {"retries": 0, "max_expanded_input_bytes": 64}, "tasks": [
        weather,
        // The tool's output has no declared type here: the server refuses the string.
        sum("text", json!({"$output": "weather/structured_content/conditions"})),
        sum("absent", json!({"$output": "weather/structured_content/pressure"})),
        sum("each_on_text", json!({"$output": "weather/structured_content/conditions", "$each": "/x"})),
        // The whole content list is more than max_expanded_input_bytes as JSON.
        sum("too_big", json!({"$output": "weather/content"})),
    ]});
    let run = sb.run_json(&["--config", &cfg], &batch);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("weather"), "success");
    let text = run.result("text");
    assert_eq!(text["error"]["kind"], "tool_error", "{text}");
    assert!(
        text["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected number"),
        "{text}"
    );
    let absent = &run.result("absent")["error"];
    assert_eq!(absent["kind"], "reference_unresolved", "{absent}");
    assert_eq!(
        absent["message"],
        "input_data/arguments/a: the output of task 'weather' has nothing at '/structured_content/pressure'"
    );
    let each = &run.result("each_on_text")["error"];
    assert_eq!(each["kind"], "reference_unresolved", "{each}");
    assert!(
        each["message"]
            .as_str()
            .unwrap()
            .contains("\"$each\" needs an array, but '/structured_content/conditions' in the output of task 'weather' is of type string"),
        "{each}"
    );
    let big = &run.result("too_big")["error"];
    assert_eq!(big["kind"], "input_too_large", "{big}");
    assert!(
        big["message"]
            .as_str()
            .unwrap()
            .contains("input_data/arguments/a"),
        "{big}"
    );
}

/// Agent fields that take arrays: the coder's context files (typed in its output schema) reach
/// the debug agent's `affected_files` through `$each`, checked before the run; a file list kept
/// by server-memory (of a type no schema gives) reaches it at run time, and a value of the wrong
/// type there fails the task naming the field.
#[test]
fn agent_fields_take_typed_references() {
    let sb = Sandbox::new();
    sb.write("buggy.py", "def f(:\n    return 1\n");
    sb.write("helper.py", "x = 1\n");
    let store = tempfile::tempdir().unwrap();
    let cfg = memory_config(&sb, store.path());
    let batch = json!({"config": {"retries": 0}, "tasks": [
        {"task_id": "gen", "agent": "coder", "input_data": {"contract_description": "adds numbers",
            "node_type": "Compute", "output_path": "gen", "context_files": ["buggy.py", "helper.py"]}},
        {"task_id": "debug_context", "agent": "debug", "dependencies": ["gen"], "input_data": {
            "problem_description": "does not import",
            "affected_files": {"$output": "gen/context_files", "$each": "/path"}}},
        mcp_task("remember", "memory", "create_entities", json!({"entities": [
            {"name": "suspects", "entityType": "file list", "observations": ["buggy.py"]}]})),
        with_deps(mcp_task("recall", "memory", "open_nodes", json!({"names": ["suspects"]})), &["remember"]),
        {"task_id": "debug_recalled", "agent": "debug", "dependencies": ["recall"], "input_data": {
            "problem_description": "does not import",
            "affected_files": {"$output": "recall/structured_content/entities/0/observations"}}},
        {"task_id": "wrong_type", "agent": "debug", "dependencies": ["recall"], "input_data": {
            "problem_description": "does not import",
            "affected_files": {"$output": "recall/structured_content/entities/0/name"}}},
    ]});
    let run = agents::run_with_env(&sb, &batch, &[], &["--config", &cfg]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let files = |id: &str| run.result(id)["output"]["files_analyzed"].clone();
    assert_eq!(
        run.status("debug_context"),
        "success",
        "{}",
        run.result("debug_context")
    );
    assert_eq!(files("debug_context"), json!(["buggy.py", "helper.py"]));
    assert_eq!(
        run.status("debug_recalled"),
        "success",
        "{}",
        run.result("debug_recalled")
    );
    assert_eq!(files("debug_recalled"), json!(["buggy.py"]));
    let wrong = &run.result("wrong_type")["error"];
    assert_eq!(wrong["kind"], "reference_unresolved", "{wrong}");
    assert_eq!(
        wrong["message"],
        "input_data/affected_files: the value from \"recall/structured_content/entities/0/name\" is of type string, but this field takes array"
    );

    // Where the producing agent's output schema gives the type, a mismatch is refused before
    // the run, at the field's exact place.
    let bad = json!({"tasks": [
        {"task_id": "gen", "agent": "coder", "input_data": {"contract_description": "adds numbers",
            "node_type": "Compute", "output_path": "gen"}},
        {"task_id": "d", "agent": "debug", "dependencies": ["gen"], "input_data": {
            "problem_description": "x", "affected_files": {"$output": "gen/generated_file"}}},
        {"task_id": "e", "agent": "debug", "dependencies": ["gen"], "input_data": {
            "problem_description": "x", "affected_files": ["a.py"],
            "error_traces": {"$output": "gen/context_files", "$each": "/bytes"}}},
    ]});
    let run = sb.run_json(&["validate"], &bad);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, "/tasks/1/input_data/affected_files");
    assert_eq!(
        errors[0].1,
        "\"gen/generated_file\" is of type string in the output of task 'gen' (coder agent), but this field takes array"
    );
    assert_eq!(errors[1].0, "/tasks/2/input_data/error_traces");
    assert_eq!(
        errors[1].1,
        "the elements of \"gen/context_files\" with \"$each\": \"/bytes\" are of type integer in the output of task 'gen' (coder agent), but this field takes a list of string"
    );
}

/// examples/mcp_typed_outputs.json, run against the real servers it names.
#[test]
fn the_typed_outputs_example_runs() {
    let server = start_everything_http();
    let sb = Sandbox::new();
    let store = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}    memory:\n      command: node\n      args: [\"{}\"]\n      env:\n        MEMORY_FILE_PATH: \"{}\"\n",
        http_config(&[("everything", &server.url())]),
        memory_js(),
        store.path().join("memory.jsonl").display()
    );
    let cfg = sb.write("dispatch.yaml", &yaml).display().to_string();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mcp_typed_outputs.json");
    let run = sb.run(
        &["--config", &cfg, "--check-tools"],
        &std::fs::read_to_string(example).unwrap(),
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        names(&run.result("open_people")["output"]["structured_content"]),
        ["Ada", "Babbage"]
    );
    let report = run.result("report")["output"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        report.starts_with("The sum of 36 and 82 is 118. / "),
        "{report}"
    );
}
