//! The `coder` and `debug` agents offline (no key, no network), through the real binary:
//! scaffolds of every node type at every level, hand-broken modules failing the right level,
//! workspace safety, and debug analysis of real syntax errors and real traces produced by
//! python3, node and rustc.

#[path = "common/agents.rs"]
mod agents;
mod common;
#[path = "common/modules.rs"]
mod modules;

use std::process::Command;

use agents::{run_offline, run_with_env};
use common::*;
use serde_json::{Value, json};

const TYPES: [(&str, &str); 4] = [
    ("Effect", "execute_effect"),
    ("Compute", "execute_compute"),
    ("Reducer", "execute_reduction"),
    ("Orchestrator", "execute_orchestration"),
];

#[test]
fn template_scaffolds_every_node_type_passing_every_level() {
    let sb = Sandbox::new();
    let mut tasks = Vec::new();
    for (ty, _) in TYPES {
        for level in ["lenient", "moderate", "strict"] {
            tasks.push(json!({"task_id": format!("{ty}-{level}"), "agent": "coder", "input_data": {
                "contract_description": "Sync customer invoices with the billing system",
                "node_type": ty, "output_path": format!("out/{level}"), "validation_level": level}}));
        }
    }
    let run = run_offline(&sb, &json!({"tasks": tasks}));
    assert_eq!(run.code, 0, "{}", run.stdout);
    for (ty, entry) in TYPES {
        for level in ["lenient", "moderate", "strict"] {
            let out = &run.result(&format!("{ty}-{level}"))["output"];
            let file = format!(
                "out/{level}/node_sync_customer_invoices_{}.py",
                ty.to_lowercase()
            );
            assert_eq!(out["generated_file"], file);
            assert_eq!(out["class_name"], format!("NodeSyncCustomerInvoices{ty}"));
            assert_eq!(out["node_name"], "sync_customer_invoices");
            assert_eq!(out["backend"], "template");
            assert_eq!(out["scaffold"], true);
            assert_eq!(out["attempts"], 0);
            assert_eq!(out["usage"], Value::Null);
            assert_eq!(
                out["validation"],
                json!({"level": level, "passed": true, "issues": []})
            );
            let text = std::fs::read_to_string(sb.path().join(&file)).unwrap();
            assert_eq!(out["lines_generated"], text.lines().count());
            assert!(text.contains(&format!("async def {entry}(self, input_data: ModelSyncCustomerInvoicesInput) -> ModelSyncCustomerInvoicesOutput:")));
            assert!(text.contains("Sync customer invoices with the billing system"));
            assert!(text.contains(&format!("class NodeSyncCustomerInvoices{ty}(Node{ty}):")));
            // CPython agrees with the validator that the module is valid Python.
            let status = Command::new("python3")
                .args(["-m", "py_compile", &file])
                .current_dir(sb.path())
                .status()
                .expect("python3 runs");
            assert!(status.success(), "{file} does not compile");
        }
    }
    // No summary usage without a model.
    assert!(run.json["summary"].get("usage").is_none());
}

/// Runs coder with the `command` backend replaying a fixed module (plain stdout is the answer),
/// so hand-written modules go through the real validation path.
fn validate_module(sb: &Sandbox, module: &str, level: &str) -> Value {
    let src = sb.write("module.txt", module);
    let argv = json!(["cat", src]).to_string();
    let batch = json!({"tasks": [{"task_id": "gen", "agent": "coder", "input_data": {
        "contract_description": "Fetch a user", "node_type": "Effect",
        "output_path": "gen/node_fetch_user_effect.py", "validation_level": level,
        "overwrite": true, "backend": "command"}}]});
    let run = run_with_env(sb, &batch, &[("DISPATCH_LLM_COMMAND", &argv)], &[]);
    run.result("gen").clone()
}

fn rules_of(result: &Value) -> Vec<(String, u64)> {
    result["output"]["validation"]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["rule"].as_str().unwrap().to_string(),
                i["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn hand_broken_modules_fail_each_level_for_the_right_reason() {
    let sb = Sandbox::new();
    // Lenient: the missing colon on line 27.
    let r = validate_module(&sb, &modules::syntax_broken(), "lenient");
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["kind"], "validation_failed");
    let rules = rules_of(&r);
    assert!(
        !rules.is_empty() && rules.iter().all(|(rule, _)| rule == "syntax_error"),
        "{rules:?}"
    );
    assert_eq!(rules[0].1, 27, "{rules:?}");
    assert_eq!(r["output"]["written"], true);
    assert_eq!(
        std::fs::read_to_string(sb.path().join("gen/node_fetch_user_effect.py")).unwrap(),
        modules::syntax_broken()
    );

    // Not async: passes lenient, fails moderate with entry_async only.
    assert_eq!(
        validate_module(&sb, &modules::not_async(), "lenient")["status"],
        "success"
    );
    let r = validate_module(&sb, &modules::not_async(), "moderate");
    assert_eq!(rules_of(&r), [("entry_async".to_string(), 27)]);

    // Not strict: passes moderate, fails strict for docstring, TODO, annotations, empty body.
    assert_eq!(
        validate_module(&sb, &modules::not_strict(), "moderate")["status"],
        "success"
    );
    let r = validate_module(&sb, &modules::not_strict(), "strict");
    let rules: Vec<String> = rules_of(&r).into_iter().map(|(r, _)| r).collect();
    for expected in ["docstring", "todo", "annotation", "empty_body"] {
        assert!(
            rules.contains(&expected.to_string()),
            "{expected} missing in {rules:?}"
        );
    }
    assert!(r["error"]["message"].as_str().unwrap().contains("strict"));

    // The good module passes strict.
    assert_eq!(
        validate_module(&sb, modules::GOOD_EFFECT, "strict")["status"],
        "success"
    );
}

#[test]
fn conventions_wrong_class_file_and_types_are_named() {
    let sb = Sandbox::new();
    let wrong_base = modules::GOOD_EFFECT.replace("(NodeEffect)", "(NodeCompute)");
    assert_eq!(
        rules_of(&validate_module(&sb, &wrong_base, "moderate"))[0].0,
        "node_class"
    );
    let renamed = modules::GOOD_EFFECT.replace("class NodeFetchUserEffect", "class FetchUser");
    assert_eq!(
        rules_of(&validate_module(&sb, &renamed, "moderate"))[0].0,
        "class_name"
    );
    let other_name = modules::GOOD_EFFECT.replace("NodeFetchUserEffect", "NodeLoadUserEffect");
    assert_eq!(
        rules_of(&validate_module(&sb, &other_name, "moderate"))[0].0,
        "file_name"
    );
    let untyped = modules::GOOD_EFFECT.replace("input_data: ModelFetchUserInput", "input_data");
    assert_eq!(
        rules_of(&validate_module(&sb, &untyped, "moderate"))[0].0,
        "typed_input"
    );
    let no_return = modules::GOOD_EFFECT.replace(") -> ModelFetchUserOutput:", "):");
    assert_eq!(
        rules_of(&validate_module(&sb, &no_return, "moderate"))[0].0,
        "typed_output"
    );
}

#[test]
fn node_name_and_output_file_are_honoured() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "named", "agent": "coder", "input_data": {"contract_description": "anything",
         "node_type": "Compute", "output_path": "src", "node_name": "PriceQuote"}},
        {"task_id": "file", "agent": "coder", "input_data": {"contract_description": "anything",
         "node_type": "Reducer", "output_path": "pkg/node_order_totals_reducer.py"}}]});
    let run = run_offline(&sb, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.result("named")["output"]["generated_file"],
        "src/node_price_quote_compute.py"
    );
    assert_eq!(
        run.result("named")["output"]["class_name"],
        "NodePriceQuoteCompute"
    );
    assert_eq!(run.result("file")["output"]["node_name"], "order_totals");
    assert!(sb.path().join("pkg/node_order_totals_reducer.py").is_file());
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("gen")).unwrap();
    sb.write("gen/node_fetch_user_effect.py", "# mine\n");
    let task = |overwrite: bool| {
        json!({"tasks": [{"task_id": "gen", "agent": "coder", "input_data": {
        "contract_description": "Fetch a user", "node_type": "Effect", "node_name": "fetch_user",
        "output_path": "gen", "overwrite": overwrite}}]})
    };
    let run = run_offline(&sb, &task(false));
    assert_eq!(run.result("gen")["error"]["kind"], "file_exists");
    assert_eq!(
        std::fs::read_to_string(sb.path().join("gen/node_fetch_user_effect.py")).unwrap(),
        "# mine\n"
    );
    let run = run_offline(&sb, &task(true));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("gen")["output"]["overwritten"], true);
    assert!(
        std::fs::read_to_string(sb.path().join("gen/node_fetch_user_effect.py"))
            .unwrap()
            .contains("NodeFetchUserEffect")
    );
}

#[test]
fn paths_outside_the_workspace_are_refused() {
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), sb.path().join("escape")).unwrap();
    sb.write("ok.py", "x = 1\n");
    let coder = |id: &str, path: &str, ctx: &[&str]| {
        json!({"task_id": id, "agent": "coder", "input_data": {
        "contract_description": "x", "node_type": "Compute", "output_path": path, "context_files": ctx}})
    };
    let batch = json!({"tasks": [
        coder("dotdot", "../gen", &[]),
        coder("absolute", outside.path().to_str().unwrap(), &[]),
        coder("symlink", "escape/gen", &[]),
        coder("context", "gen", &["../../etc/passwd"]),
        {"task_id": "debug", "agent": "debug", "input_data": {
            "problem_description": "x", "affected_files": ["ok.py", "escape/../../x.py"]}},
        coder("inside", "gen", &["ok.py"])]});
    let run = run_offline(&sb, &batch);
    for id in ["dotdot", "absolute", "symlink", "context", "debug"] {
        assert_eq!(
            run.result(id)["error"]["kind"],
            "path_outside_workspace",
            "{id}"
        );
    }
    assert_eq!(run.status("inside"), "success");
    assert_eq!(
        run.result("inside")["output"]["context_files"][0]["path"],
        "ok.py"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(!sb.path().parent().unwrap().join("gen").exists());
}

#[test]
fn workspace_flag_sets_the_root() {
    let sb = Sandbox::new();
    let ws = tempfile::tempdir().unwrap();
    let batch = json!({"tasks": [{"task_id": "gen", "agent": "coder", "input_data": {
        "contract_description": "Count words", "node_type": "Compute", "output_path": "gen"}}]});
    let run = run_with_env(
        &sb,
        &batch,
        &[],
        &["--workspace", ws.path().to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(ws.path().join("gen/node_count_words_compute.py").is_file());
    assert!(!sb.path().join("gen").exists());
    let run = run_with_env(&sb, &batch, &[], &["--workspace", "/no/such/dir"]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.contains("--workspace"));
}

fn debug_task(id: &str, files: &[&str], traces: &[&str], depth: &str) -> Value {
    json!({"task_id": id, "agent": "debug", "input_data": {
        "problem_description": "it fails", "affected_files": files, "error_traces": traces,
        "analysis_depth": depth}})
}

fn finding_lines(out: &Value, rule: &str) -> Vec<(String, u64)> {
    out["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == rule)
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn debug_finds_the_real_line_of_syntax_errors() {
    let sb = Sandbox::new();
    sb.write(
        "app.py",
        "import os\n\n\ndef load(path):\n    with open(path) as f\n        return f.read()\n",
    );
    sb.write(
        "main.rs",
        "fn main() {\n    let x = 1;\n    let y = x +;\n    println!(\"{y}\");\n}\n",
    );
    sb.write(
        "app.js",
        "function f(a) {\n  return a + 1;\n}\nconst b = f(1;\nconsole.log(b);\n",
    );
    let batch = json!({"tasks": [debug_task("d", &["app.py", "main.rs", "app.js"], &[], "quick")]});
    let run = run_offline(&sb, &batch);
    let out = &run.result("d")["output"];
    assert_eq!(
        finding_lines(out, "syntax_error").first(),
        Some(&("app.py".to_string(), 5)),
        "{out}"
    );
    assert!(
        finding_lines(out, "syntax_error").contains(&("main.rs".to_string(), 3)),
        "{out}"
    );
    assert!(
        finding_lines(out, "syntax_error").contains(&("app.js".to_string(), 4)),
        "{out}"
    );
    // CPython agrees about the Python line.
    let py = Command::new("python3")
        .args(["-m", "py_compile", "app.py"])
        .current_dir(sb.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&py.stderr).contains("line 5"));
    assert_eq!(out["root_cause"]["confidence"], 0.9);
    assert_eq!(out["root_cause"]["file"], "app.py");
    assert_eq!(out["root_cause"]["line"], 5);
    assert!(
        out["suggested_fixes"][0]
            .as_str()
            .unwrap()
            .starts_with("app.py:5")
    );
}

#[test]
fn debug_parses_typescript_with_its_own_grammar() {
    let sb = Sandbox::new();
    // Valid TypeScript that a JavaScript parser would reject (type annotations, an interface).
    sb.write(
        "ok.ts",
        "interface User { id: number }\nexport function name(u: User): string {\n  return `u${u.id}`;\n}\n",
    );
    sb.write(
        "broken.ts",
        "interface User { id: number }\nfunction f(u: User): number {\n  return u.id +;\n}\nvar x: number = 1;\nif (x == 1) {}\n",
    );
    sb.write(
        "view.tsx",
        "export const V = (p: { n: number }) => <div>{p.n}</div>;\n",
    );
    let batch =
        json!({"tasks": [debug_task("d", &["ok.ts", "broken.ts", "view.tsx"], &[], "standard")]});
    let run = run_offline(&sb, &batch);
    let out = &run.result("d")["output"];
    let syntax = finding_lines(out, "syntax_error");
    assert_eq!(syntax, vec![("broken.ts".to_string(), 3)], "{out}");
    // The JavaScript bug patterns apply to TypeScript as well.
    assert!(
        finding_lines(out, "var_declaration").contains(&("broken.ts".to_string(), 5)),
        "{out}"
    );
    assert!(
        finding_lines(out, "loose_equality").contains(&("broken.ts".to_string(), 6)),
        "{out}"
    );
    assert!(
        !out.to_string().contains("no grammar"),
        "TypeScript files are parsed: {out}"
    );
}

fn stderr_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("program runs");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn innermost_workspace_frame(out: &Value) -> &Value {
    out["trace_frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["in_workspace"] == true)
        .unwrap_or_else(|| panic!("no workspace frame: {out}"))
}

#[test]
fn real_python_traceback_is_mapped_to_source() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("pkg")).unwrap();
    sb.write(
        "pkg/stats.py",
        "def mean(xs, acc=[]):\n    total = sum(xs)\n    return total / len(xs) if xs != None else 0\n",
    );
    sb.write("main.py", "from pkg.stats import mean\n\nprint(mean([]))\n");
    let trace = stderr_of(
        Command::new("python3")
            .arg("main.py")
            .current_dir(sb.path()),
    );
    assert!(trace.contains("ZeroDivisionError"), "{trace}");
    let batch =
        json!({"tasks": [debug_task("d", &["pkg/stats.py", "main.py"], &[&trace], "standard")]});
    let run = run_offline(&sb, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let out = &run.result("d")["output"];
    assert_eq!(out["errors"][0]["error_type"], "ZeroDivisionError");
    let f = innermost_workspace_frame(out);
    assert_eq!(f["workspace_file"], "pkg/stats.py");
    assert_eq!(f["line"], 3);
    assert_eq!(f["function"], "mean");
    assert!(
        f["snippet"]
            .as_str()
            .unwrap()
            .contains("return total / len(xs)")
    );
    // The outer frame is main.py line 3.
    let frames = out["trace_frames"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .any(|f| f["workspace_file"] == "main.py" && f["line"] == 3)
    );
    assert_eq!(out["root_cause"]["file"], "pkg/stats.py");
    assert_eq!(out["root_cause"]["line"], 3);
    // A bug pattern on the crashing line (`!= None`) is stronger evidence.
    assert_eq!(out["root_cause"]["confidence"], 0.85);
    assert!(
        out["suggested_fixes"]
            .to_string()
            .contains("guard the division")
    );
}

#[test]
fn real_node_stack_trace_is_mapped_to_source() {
    let sb = Sandbox::new();
    sb.write("greet.js", "function greet(user) {\n  return 'hi ' + user.name.toUpperCase();\n}\nmodule.exports = { greet };\n");
    sb.write(
        "main.js",
        "const { greet } = require('./greet');\nconsole.log(greet({}));\n",
    );
    let trace = stderr_of(Command::new("node").arg("main.js").current_dir(sb.path()));
    let batch = json!({"tasks": [debug_task("d", &["greet.js"], &[&trace], "standard")]});
    let run = run_offline(&sb, &batch);
    let out = &run.result("d")["output"];
    assert_eq!(out["errors"][0]["error_type"], "TypeError", "{trace}");
    let f = innermost_workspace_frame(out);
    assert_eq!(f["workspace_file"], "greet.js");
    assert_eq!(f["line"], 2);
    assert_eq!(f["function"], "greet");
    assert!(
        f["snippet"]
            .as_str()
            .unwrap()
            .contains("user.name.toUpperCase()")
    );
    assert_eq!(out["root_cause"]["line"], 2);
    assert_eq!(out["root_cause"]["confidence"], 0.7);
}

#[test]
fn real_rust_panic_is_mapped_to_source() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("src")).unwrap();
    sb.write(
        "src/main.rs",
        "fn pick(v: &[i32], i: usize) -> i32 {\n    v[i]\n}\n\nfn main() {\n    let v = vec![1, 2, 3];\n    println!(\"{}\", pick(&v, 10));\n}\n",
    );
    let status = Command::new("rustc")
        .args(["-g", "-o", "prog", "src/main.rs"])
        .current_dir(sb.path())
        .status()
        .expect("rustc runs");
    assert!(status.success());
    let trace = stderr_of(
        Command::new("./prog")
            .env("RUST_BACKTRACE", "1")
            .current_dir(sb.path()),
    );
    assert!(trace.contains("index out of bounds"), "{trace}");
    let batch = json!({"tasks": [debug_task("d", &["src/main.rs"], &[&trace], "standard")]});
    let run = run_offline(&sb, &batch);
    let out = &run.result("d")["output"];
    assert_eq!(out["errors"][0]["error_type"], "panic");
    let f = innermost_workspace_frame(out);
    assert_eq!(f["workspace_file"], "src/main.rs");
    assert_eq!(f["line"], 2, "{out}");
    assert!(f["snippet"].as_str().unwrap().contains("v[i]"));
    assert_eq!(out["root_cause"]["line"], 2);
    assert!(out["suggested_fixes"].to_string().contains(".get(i)"));
}

#[test]
fn depth_controls_patterns_and_deep_says_when_no_model_is_configured() {
    let sb = Sandbox::new();
    sb.write(
        "lib.py",
        "def add(item, bucket=[]):\n    bucket.append(item)\n    return bucket\n",
    );
    let batch = json!({"tasks": [
        debug_task("quick", &["lib.py"], &[], "quick"),
        debug_task("standard", &["lib.py"], &[], "standard"),
        debug_task("deep", &["lib.py"], &[], "deep")]});
    let run = run_offline(&sb, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("quick")["output"]["findings"], json!([]));
    assert_eq!(
        run.result("quick")["output"]["root_cause"]["confidence"],
        0.1
    );
    let std_out = &run.result("standard")["output"];
    assert_eq!(
        finding_lines(std_out, "mutable_default_argument"),
        [("lib.py".to_string(), 1)]
    );
    assert_eq!(std_out["root_cause"]["confidence"], 0.3);
    let deep = &run.result("deep")["output"];
    assert_eq!(deep["backend"], "static");
    assert_eq!(deep["model_analysis"], Value::Null);
    assert!(
        deep["notes"]
            .to_string()
            .contains("no model backend is configured")
    );
}

#[test]
fn hypothesis_is_checked_against_the_evidence() {
    let sb = Sandbox::new();
    sb.write(
        "calc.py",
        "def ratio(a, b):\n    return a / b\n\nratio(1, 0)\n",
    );
    let trace = stderr_of(
        Command::new("python3")
            .arg("calc.py")
            .current_dir(sb.path()),
    );
    let with = |id: &str, h: &str| {
        let mut t = debug_task(id, &["calc.py"], &[&trace], "standard");
        t["input_data"]["hypothesis"] = json!(h);
        t
    };
    let batch = json!({"tasks": [
        with("right", "ratio divides by b without checking for zero"),
        with("wrong", "the database connection times out")]});
    let run = run_offline(&sb, &batch);
    assert_eq!(
        run.result("right")["output"]["hypothesis_check"]["supported"],
        true
    );
    assert_eq!(
        run.result("wrong")["output"]["hypothesis_check"]["supported"],
        false
    );
}

#[test]
fn debug_then_coder_passes_the_analysis_downstream() {
    let sb = Sandbox::new();
    sb.write("calc.py", "def ratio(a, b):\n    return a / b\n");
    let batch = json!({"tasks": [
        debug_task("dbg", &["calc.py"], &[], "standard"),
        {"task_id": "fix", "agent": "coder", "dependencies": ["dbg"], "input_data": {
            "contract_description": "Safe ratio. Analysis: {{tasks.dbg.output.root_cause.description}}",
            "node_type": "Compute", "node_name": "safe_ratio", "output_path": "gen"}}]});
    let run = run_offline(&sb, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let text = std::fs::read_to_string(sb.path().join("gen/node_safe_ratio_compute.py")).unwrap();
    assert!(text.contains("no evidence of a cause"), "{text}");
}
