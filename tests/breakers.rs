//! Circuit breakers guard remote dependencies, not local programs: failing commands never stop
//! unrelated ones unless the user groups them under a named breaker, and breakers can be turned
//! off. (MCP and model breakers: tests/mcp_failures.rs, tests/model_faults.rs.)

mod common;
mod observe;

use common::*;
use dispatch_runner::reporter::metrics::{parse_text, sample};
use serde_json::{Value, json};

/// Six failing lint commands listed before six healthy test commands, one worker.
fn ci_batch(config: Value) -> Value {
    let mut tasks: Vec<Value> = (0..6)
        .map(|i| {
            sh_task(
                &format!("lint{i}"),
                "echo 'style violation' >&2; exit 1",
                &[],
            )
        })
        .collect();
    tasks.extend((0..6).map(|i| sh_task(&format!("test{i}"), "echo ok", &[])));
    let mut config = config;
    config["max_workers"] = json!(1);
    json!({"tasks": tasks, "config": config})
}

fn attempts_of(run: &Run, id: &str) -> u64 {
    run.result(id)["attempts"].as_u64().unwrap()
}

#[test]
fn failing_commands_do_not_stop_unrelated_commands() {
    let sb = Sandbox::new();
    // Default breaker settings (threshold 5): before, the fifth lint failure opened the shared
    // `command` breaker and everything after it ended `circuit_open` without running.
    let run = sb.run_json(&[], &ci_batch(json!({})));
    assert_eq!(run.code, 1, "{}", run.stdout);
    for i in 0..6 {
        let lint = run.result(&format!("lint{i}"));
        assert_eq!(lint["error"]["kind"], "exit_status", "{lint}");
        assert_eq!(attempts_of(&run, &format!("lint{i}")), 1);
        assert_eq!(run.status(&format!("test{i}")), "success");
        assert_eq!(attempts_of(&run, &format!("test{i}")), 1);
    }
    assert_eq!(run.json["summary"]["successful"], 6);
    assert_eq!(run.json["summary"]["failed"], 6);
    let trace = run.trace();
    assert!(events(&trace, "breaker_changed").is_empty());
    let started = events(&trace, "attempt_started");
    assert_eq!(started.len(), 12, "all twelve ran");
    assert!(
        started.iter().all(|e| e.get("breaker").is_none()),
        "local commands have no breaker: {started:?}"
    );
}

#[test]
fn a_named_breaker_groups_commands_and_opens_on_their_failures() {
    let sb = Sandbox::new();
    let mut tasks: Vec<Value> = (0..5)
        .map(|i| {
            let mut t = sh_task(&format!("db{i}"), "exit 1", &[]);
            t["breaker"] = json!("staging-db");
            t
        })
        .collect();
    // Not in the group: runs whatever happens to the group.
    tasks.push(sh_task("unrelated", "echo fine", &[]));
    let batch = json!({"tasks": tasks, "config": {"max_workers": 1,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}}});
    // Every reporter handles attempts with and without a breaker.
    let run = sb.run_json(
        &[
            "--metrics-file",
            "metrics.prom",
            "--html",
            "report.html",
            "--junit",
            "junit.xml",
            "--chrome-trace",
            "chrome.json",
            "--events",
            "events.ndjson",
        ],
        &batch,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let metrics = std::fs::read_to_string(sb.path().join("metrics.prom")).unwrap();
    promtool_check("the metrics file with a breaker", &metrics);
    let parsed = parse_text(&metrics).unwrap();
    assert_eq!(
        sample(
            &parsed,
            "dispatch_circuit_breaker_state",
            &[("breaker", "staging-db")]
        ),
        Some(2.0),
        "open is 2: {metrics}"
    );
    // Tasks the open breaker refused are JUnit errors; still valid for Jenkins' schema.
    let junit = sb.path().join("junit.xml");
    observe::xmllint_validate(&junit, &observe::junit_xsd())
        .unwrap_or_else(|e| panic!("JUnit does not validate:\n{e}"));
    assert!(
        std::fs::read_to_string(&junit)
            .unwrap()
            .contains("<error message="),
        "circuit_open is an error"
    );
    let chrome = std::fs::read_to_string(sb.path().join("chrome.json")).unwrap();
    assert!(chrome.contains("breaker staging-db"), "{chrome}");
    let html = std::fs::read_to_string(sb.path().join("report.html")).unwrap();
    assert!(html.contains("unrelated"));
    for i in 0..2 {
        assert_eq!(
            run.result(&format!("db{i}"))["error"]["kind"],
            "exit_status"
        );
    }
    for i in 2..5 {
        let r = run.result(&format!("db{i}"));
        assert_eq!(r["error"]["kind"], "circuit_open", "{r}");
        assert_eq!(r["attempts"], 0);
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'staging-db'")
        );
    }
    assert_eq!(run.status("unrelated"), "success");
    let trace = run.trace();
    let changes = events(&trace, "breaker_changed");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (
            &changes[0]["breaker"],
            &changes[0]["from"],
            &changes[0]["to"]
        ),
        (&json!("staging-db"), &json!("closed"), &json!("open"))
    );
    let started = events(&trace, "attempt_started");
    assert_eq!(started[0]["breaker"], "staging-db");
    let unrelated = started
        .iter()
        .find(|e| e["task_id"] == "unrelated")
        .unwrap();
    assert!(unrelated.get("breaker").is_none());
}

#[test]
fn a_named_breaker_can_be_set_for_every_command_in_the_config_file() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "dispatch.yaml",
        "agents:\n  command:\n    breaker: ci\ncircuit_breaker:\n  failure_threshold: 5\n",
    );
    let run = sb.run_json(&["--config", cfg.to_str().unwrap()], &ci_batch(json!({})));
    assert_eq!(run.code, 1);
    // The old behaviour, now by choice: five failures open `ci`, the rest is not attempted.
    for i in 0..5 {
        assert_eq!(
            run.result(&format!("lint{i}"))["error"]["kind"],
            "exit_status"
        );
    }
    assert_eq!(run.result("lint5")["error"]["kind"], "circuit_open");
    assert_eq!(run.result("test0")["error"]["kind"], "circuit_open");
    let trace = run.trace();
    assert_eq!(events(&trace, "breaker_changed")[0]["breaker"], "ci");
}

#[test]
fn breakers_can_be_turned_off() {
    let sb = Sandbox::new();
    let mut batch =
        ci_batch(json!({"circuit_breaker": {"enabled": false, "failure_threshold": 1}}));
    for t in batch["tasks"].as_array_mut().unwrap() {
        t["breaker"] = json!("everything");
    }
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1);
    for i in 0..6 {
        assert_eq!(attempts_of(&run, &format!("lint{i}")), 1);
        assert_eq!(run.status(&format!("test{i}")), "success");
    }
    let trace = run.trace();
    assert!(events(&trace, "breaker_changed").is_empty());
    assert!(
        events(&trace, "attempt_started")
            .iter()
            .all(|e| e.get("breaker").is_none())
    );
    assert_eq!(
        trace["config"]["breaker_enabled"], false,
        "{}",
        trace["config"]
    );
}

#[test]
fn bad_breaker_names_are_rejected_where_they_are_written() {
    let sb = Sandbox::new();
    let mut task = sh_task("a", "true", &[]);
    task["breaker"] = json!("http://user:pw@db.internal/");
    let run = sb.run_json(&[], &json!({"tasks": [task]}));
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stdout.contains("/tasks/0/breaker"), "{}", run.stdout);

    let cfg = sb.write("bad.yaml", "agents:\n  command:\n    breaker: \"a b\"\n");
    let run = sb.run_json(
        &["--config", cfg.to_str().unwrap()],
        &json!({"tasks": [sh_task("a", "true", &[])]}),
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("agents.command.breaker"),
        "{}",
        run.stderr
    );
}

#[test]
fn help_says_how_a_breaker_opens_and_how_to_turn_it_off() {
    let sb = Sandbox::new();
    let out = sb.cmd(&["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "one per MCP server",
        "non-zero exit never count",
        "\"breaker\": \"<name>\"",
        "\"circuit_breaker\": {\"enabled\": false}",
        "a second one KILLs them at once",
    ] {
        assert!(
            help.contains(needle),
            "`run --help` lacks {needle:?}:\n{help}"
        );
    }
}
