//! Documentation cannot drift from the code: every JSON batch shown in the README and docs/ is
//! validated by the real binary, and every example in examples/ validates and runs as described.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The ```json blocks of a Markdown file.
fn json_blocks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```json") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

fn markdown_files() -> Vec<std::path::PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join(".claude/agents/parallel-dispatcher.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn every_batch_in_the_docs_is_valid() {
    let mut checked = 0;
    for file in markdown_files() {
        for block in json_blocks(&file) {
            let value: Value = serde_json::from_str(&block).unwrap_or_else(|e| {
                panic!(
                    "{}: a json block does not parse: {e}\n{block}",
                    file.display()
                )
            });
            if value.get("tasks").is_none() {
                continue; // a result document, not a batch
            }
            let sb = Sandbox::new();
            // Examples may use the default server `archon`, which exists when this is set, and
            // `prompt` tasks, whose backend is callable with a key (validation makes no call).
            let mut cmd = sb.cmd(&["validate"]);
            cmd.env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp")
                .env("ANTHROPIC_API_KEY", "sk-docs-example-not-a-key");
            let run = sb.run_cmd(cmd, &block);
            assert_eq!(
                run.code,
                0,
                "{}: invalid batch in docs:\n{block}\n{}",
                file.display(),
                run.stdout
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected batches in the docs, found {checked}"
    );
}

#[test]
fn ci_pipeline_example_runs_and_passes_outputs() {
    let sb = Sandbox::new();
    let example = root().join("examples/ci_pipeline.json");
    let run = sb.to_run(
        sb.cmd(&["run", "-f", example.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json["summary"]["successful"], 6);
    let package = run.result("package")["output"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(package.starts_with("packaging build/app.c"), "{package}");
    let report = run.result("report")["output"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        report.contains("tests: 12 passed") && report.contains("package: packaging"),
        "{report}"
    );
    // Fan-out: lint, build and unit_tests overlap in time.
    let trace = run.trace();
    let levels = run_levels(&sb, &example);
    assert_eq!(levels[1].as_array().unwrap().len(), 3);
    assert_eq!(events(&trace, "attempt_started").len(), 6);
}

fn run_levels(sb: &Sandbox, example: &Path) -> Vec<Value> {
    let run = to_run(
        sb.cmd(&["validate", "-f", example.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    run.json["levels"].as_array().unwrap().clone()
}

#[test]
fn failing_example_skips_dependents_and_runs_the_other_branch() {
    let sb = Sandbox::new();
    let example = root().join("examples/failing_task.json");
    let run = sb.to_run(
        sb.cmd(&["run", "-f", example.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.json["status"], "partial");
    assert_eq!(run.status("compile"), "error");
    assert_eq!(run.status("test"), "skipped");
    assert_eq!(run.status("deploy"), "skipped");
    assert_eq!(run.status("docs"), "success");
}

#[test]
fn claude_code_agent_definition_has_front_matter() {
    let text =
        std::fs::read_to_string(root().join(".claude/agents/parallel-dispatcher.md")).unwrap();
    let rest = text
        .strip_prefix("---\n")
        .expect("front matter opens the file");
    let (front, body) = rest.split_once("\n---\n").expect("front matter closes");
    let field = |name: &str| {
        front
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("front matter lacks {name}"))
    };
    assert_eq!(field("name"), "parallel-dispatcher");
    assert!(field("description").len() > 40);
    assert!(field("tools").contains("Bash"));
    // The MCP server's tools, under the name the registration command gives the server.
    assert!(field("tools").contains("mcp__dispatch__dispatch"));
    for must in [
        "dispatch_runner validate",
        "dispatch_runner schema",
        "--rerun-failed",
        "--result compact -o",
        "Exit code",
        "claude mcp add dispatch -- dispatch_runner mcp-server",
    ] {
        assert!(body.contains(must), "the agent prompt must cover {must}");
    }
}

#[test]
fn every_example_validates() {
    for entry in std::fs::read_dir(root().join("examples"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            // The example configuration names the MCP servers the examples use.
            let config = root().join("examples/dispatch.mcp.yaml");
            let out = std::process::Command::new(bin())
                .args(["--config", config.to_str().unwrap()])
                .args(["validate", "-f", path.to_str().unwrap()])
                .env("ANTHROPIC_API_KEY", "sk-docs-example-not-a-key")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

/// The agent examples run offline (no key: the model variables are cleared) from the
/// repository root, as the README says, and succeed; run twice to show a previous run's files do
/// not make them fail.
#[test]
fn agent_examples_run_offline_and_succeed() {
    let traces = tempfile::tempdir().unwrap();
    for name in [
        "01_parallel_generation.json",
        "02_debug_then_fix.json",
        "03_mixed_workflow.json",
    ] {
        for round in 0..2 {
            let mut cmd = std::process::Command::new(bin());
            cmd.args(["run", "-q", "-f", &format!("examples/{name}")])
                .args(["--trace-dir", traces.path().to_str().unwrap()])
                .current_dir(root());
            for v in [
                "ANTHROPIC_API_KEY",
                "OPENAI_API_KEY",
                "DISPATCH_CODER_BACKEND",
                "DISPATCH_DEBUG_BACKEND",
            ] {
                cmd.env_remove(v);
            }
            let run = to_run(cmd.output().unwrap());
            assert_eq!(run.code, 0, "{name} (run {round}): {}", run.stdout);
        }
    }
    let out = root().join("generated/fix/node_safe_mean_compute.py");
    let text = std::fs::read_to_string(out).unwrap();
    // The coder task got the debug task's root cause through an output reference.
    assert!(text.contains("ZeroDivisionError"), "{text}");
}
