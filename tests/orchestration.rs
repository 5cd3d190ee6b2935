//! Orchestration through the real binary: the agent registry is complete everywhere it shows
//! (schema, docs, `--help`), batches that run batches, fan-out, and first-success.

mod common;

use std::path::Path;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every agent the library registers is in the published schema's `agent` enum (and the
/// checked-in copy), has its input rule there, is in the table of docs/agents.md and in
/// `run --help`; and nothing else is.
#[test]
fn every_registered_agent_is_in_the_schema_the_docs_and_help() {
    let registered: Vec<&str> = dispatch_runner::agents::ALL_AGENTS.to_vec();
    assert!(registered.contains(&"command"), "{registered:?}");

    let sb = Sandbox::new();
    let schema = sb.run(&["schema"], "").json;
    let checked_in = read_json(&root().join("schemas/task-batch.schema.json"));
    assert_eq!(
        schema, checked_in,
        "schemas/task-batch.schema.json is stale: regenerate it"
    );
    let task = &schema["$defs"]["Task"];
    let listed: Vec<&str> = task["properties"]["agent"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, registered);
    for agent in &registered {
        let rule = task["allOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["if"]["properties"]["agent"]["const"] == *agent);
        let input = &rule.unwrap_or_else(|| panic!("no input rule for {agent}"))["then"]["properties"]
            ["input_data"];
        assert!(input["description"].is_string(), "{agent}: {input}");
    }

    let docs = std::fs::read_to_string(root().join("docs/agents.md")).unwrap();
    let table: Vec<&str> = docs
        .lines()
        .skip_while(|l| !l.starts_with("| agent |"))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |").map(|(a, _)| a))
        .collect();
    assert_eq!(table, registered, "the agent table of docs/agents.md");

    let help = sb.cmd(&["run", "--help"]).output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let section: Vec<&str> = help
        .split("Agents (")
        .nth(1)
        .expect("an Agents section in run --help")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(section, registered, "{help}");
}
