//! Orchestration through the real binary: the agent registry is complete everywhere it shows
//! (schema, docs, `--help`), batches that run batches, fan-out, and first-success.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

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
    assert!(
        schema == checked_in,
        "schemas/task-batch.schema.json is stale: regenerate it with `dispatch_runner schema`"
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

/// The times each attempt of the tasks whose id satisfies `which` ran, from the trace's events.
fn attempt_spans(trace: &Value, which: impl Fn(&str) -> bool) -> Vec<(String, f64, f64)> {
    let mut open = std::collections::HashMap::new();
    let mut spans = Vec::new();
    for e in trace["events"].as_array().unwrap() {
        let id = e["task_id"].as_str().unwrap_or("").to_string();
        if !which(&id) {
            continue;
        }
        let at = e["elapsed_ms"].as_f64().unwrap();
        match e["event"].as_str().unwrap() {
            "attempt_started" => {
                open.insert(id, at);
            }
            "attempt_finished" => {
                let start = open.remove(&id).expect("started before finished");
                spans.push((id, start, at));
            }
            _ => {}
        }
    }
    spans
}

/// A planner (a command printing a batch) whose batch then runs inside the run: under its worker
/// limit (one worker: the children never overlap, and the `batch` task holds none), in its
/// events and trace as `run-plan/<id>`, with the child's result document as the output that a
/// later task reads.
#[test]
fn a_planned_batch_runs_under_the_parents_worker_limit() {
    let sb = Sandbox::new();
    // The planner prints a file: the parent would otherwise read the child's own references
    // as its own.
    let child = json!({"tasks": [
        sh_task("a", "sleep 0.3; echo alpha", &[]),
        sh_task("b", "sleep 0.3; echo beta", &[]),
        {"task_id": "c", "agent": "command", "dependencies": ["a", "b"],
         "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}+{{tasks.b.output.stdout}}"]}}
    ], "config": {"timeout_seconds": 30}});
    sb.write("plan.json", &child.to_string());
    let batch = json!({"tasks": [
        cmd_task("plan", &["cat", "plan.json"], &[]),
        {"task_id": "run-plan", "agent": "batch", "dependencies": ["plan"],
         "input_data": {"batch": "{{tasks.plan.output.stdout}}"}},
        {"task_id": "report", "agent": "command", "dependencies": ["run-plan"],
         "input_data": {"argv": ["echo", "{{tasks.run-plan.output.status}} {{tasks.run-plan.output.summary.successful}}"]}}
    ], "config": {"max_workers": 1}});
    let start = Instant::now();
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert_eq!(run.json["summary"]["total_tasks"], 3, "{}", run.stdout);
    let out = &run.result("run-plan")["output"];
    assert_eq!(out["status"], "success");
    assert_eq!(out["summary"]["successful"], 3);
    let ids: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(out["results"][2]["output"]["stdout"], "alpha\n+beta\n\n");
    assert_eq!(run.result("report")["output"]["stdout"], "success 3\n");
    // The children are tasks of the run: in its results and trace, under their path.
    assert_eq!(run.status("run-plan/c"), "success");
    let trace = run.trace();
    let started: Vec<&str> = events(&trace, "attempt_started")
        .iter()
        .map(|e| e["task_id"].as_str().unwrap())
        .collect();
    for id in ["run-plan/a", "run-plan/b", "run-plan/c"] {
        assert!(started.contains(&id), "{started:?}");
    }
    let traced: Vec<&str> = trace["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert!(traced.contains(&"run-plan/a"), "{traced:?}");
    // One worker: no two child attempts overlap.
    let mut spans = attempt_spans(&trace, |id| id.starts_with("run-plan/"));
    assert_eq!(spans.len(), 3);
    spans.sort_by(|x, y| x.1.total_cmp(&y.1));
    for w in spans.windows(2) {
        assert!(w[1].1 >= w[0].2, "overlap: {spans:?}");
    }
}

/// A planned batch that is not valid fails its task with the child's problems, each with its
/// JSON Pointer into the child; nothing of it runs, and its dependents are skipped.
#[test]
fn an_invalid_planned_batch_fails_with_pointers_and_runs_nothing() {
    let sb = Sandbox::new();
    let marker = sb.path().join("ran");
    let child = json!({"tasks": [
        {"task_id": "ok", "agent": "command", "input_data": {"argv": ["touch", marker]}},
        {"task_id": "bad", "agent": "command", "input_data": {"argv": []}},
        {"task_id": "worse", "agent": "nope", "input_data": {}, "dependencies": ["missing"]}
    ]});
    sb.write("plan.json", &child.to_string());
    let batch = json!({"tasks": [
        cmd_task("plan", &["cat", "plan.json"], &[]),
        {"task_id": "run-plan", "agent": "batch", "dependencies": ["plan"],
         "input_data": {"batch": "{{tasks.plan.output.stdout}}"}},
        cmd_task("after", &["true"], &["run-plan"])
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let r = run.result("run-plan");
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["kind"], "invalid_batch");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("/tasks/1/input_data/argv"), "{message}");
    let errors: Vec<(&str, &str)> = r["output"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    let paths: Vec<&str> = errors.iter().map(|e| e.0).collect();
    assert_eq!(
        paths,
        [
            "/tasks/1/input_data/argv",
            "/tasks/2/agent",
            "/tasks/2/dependencies/0"
        ],
        "{errors:?}"
    );
    assert!(errors[1].1.contains("unknown agent"), "{errors:?}");
    assert_eq!(r["output"]["status"], "invalid");
    assert_eq!(run.status("after"), "skipped");
    assert!(!marker.exists(), "a task of an invalid child batch ran");
    assert!(
        !run.stdout.contains("\"run-plan/"),
        "no child task joined the run"
    );
}

/// A planner that plans itself again (a batch that runs a batch that runs ...) stops at
/// `config.max_batch_depth` with a clear error instead of growing without end.
#[test]
fn batch_nesting_past_the_depth_limit_is_an_error_not_a_fork_bomb() {
    let sb = Sandbox::new();
    let level = json!({"tasks": [
        cmd_task("plan", &["cat", "plan.json"], &[]),
        {"task_id": "run", "agent": "batch", "dependencies": ["plan"],
         "input_data": {"batch": "{{tasks.plan.output.stdout}}"}}
    ]});
    sb.write("plan.json", &level.to_string());
    for (depth, config) in [(3, json!({})), (1, json!({"max_batch_depth": 1}))] {
        let mut batch = level.clone();
        batch["config"] = config;
        let start = Instant::now();
        let run = sb.run_json(&[], &batch);
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(run.code, 1, "{}", run.stdout);
        // Each level is a planner and a batch task; the innermost batch task fails.
        let deepest = format!("run{}", "/run".repeat(depth));
        let r = run.result(&deepest);
        assert_eq!(r["error"]["kind"], "invalid_batch", "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("config.max_batch_depth is {depth}")),
            "{message}"
        );
        assert_eq!(
            run.json["results"].as_array().unwrap().len(),
            2 + 2 * depth,
            "{}",
            run.stdout
        );
        // The failure comes up through every level.
        assert_eq!(run.result("run")["error"]["kind"], "child_failed");
    }
}

/// Fan-out: one task per element of a list an upstream task printed, then a join that reads
/// their results.
#[test]
fn fan_out_over_a_list_produced_upstream() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        cmd_task("list", &["echo", r#"[{"name": "lint"}, {"name": "unit"}, {"name": "docs"}]"#], &[]),
        {"task_id": "shards", "agent": "batch", "dependencies": ["list"],
         "input_data": {"for_each": "{{tasks.list.output.stdout}}",
                        "task": {"agent": "command",
                                 "input_data": {"argv": ["echo", "{{index}}:{{item.name}}"]}}}},
        {"task_id": "join", "agent": "command", "dependencies": ["shards"],
         "input_data": {"argv": ["echo", "{{tasks.shards.output.summary.successful}} of {{tasks.shards.output.summary.total_tasks}}"]}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let results = run.result("shards")["output"]["results"]
        .as_array()
        .unwrap()
        .clone();
    let outs: Vec<&str> = results
        .iter()
        .map(|r| r["output"]["stdout"].as_str().unwrap())
        .collect();
    assert_eq!(outs, ["0:lint\n", "1:unit\n", "2:docs\n"]);
    assert_eq!(run.status("shards/2"), "success");
    assert_eq!(run.result("join")["output"]["stdout"], "3 of 3\n");

    // Something that is not a list fails the task, naming what it got.
    let batch = json!({"tasks": [
        cmd_task("list", &["echo", "{\"not\": \"a list\"}"], &[]),
        {"task_id": "shards", "agent": "batch", "dependencies": ["list"],
         "input_data": {"for_each": "{{tasks.list.output.stdout}}",
                        "task": {"agent": "command", "input_data": {"argv": ["echo", "{{item}}"]}}}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1);
    let message = run.result("shards")["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("for_each must be a JSON array") && message.contains("an object"),
        "{message}"
    );
}

/// `race`: the first success wins, the loser is cancelled and its process is killed (it is seen
/// running in /proc during the run, and gone after it).
#[test]
fn a_race_cancels_the_loser_and_kills_its_process() {
    let sb = Sandbox::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let marker = format!("30.{}{nanos}", std::process::id());
    let batch = json!({"tasks": [
        {"task_id": "race", "agent": "first_success", "input_data": {"mode": "race", "alternatives": [
            {"agent": "command", "input_data": {"argv": ["sleep", marker]}},
            {"agent": "command", "input_data": {"argv": ["sh", "-c", "sleep 1; echo fast"]}}
        ]}},
        {"task_id": "use", "agent": "command", "dependencies": ["race"],
         "input_data": {"argv": ["echo", "{{tasks.race.output.output.stdout}}"]}}
    ]});
    let child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
    assert!(
        eventually(Duration::from_secs(10), || !processes_matching(&marker)
            .is_empty()),
        "the slow alternative never started"
    );
    let start = Instant::now();
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(60)));
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "the loser was waited for"
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = &run.result("race")["output"];
    assert_eq!(out["winner"], 1);
    assert_eq!(out["winner_task"], "race/alt-1");
    assert_eq!(out["output"]["stdout"], "fast\n");
    assert_eq!(out["alternatives"][0]["status"], "cancelled");
    assert_eq!(run.result("use")["output"]["stdout"], "fast\n\n");
    let loser = run.result("race/alt-0");
    assert_eq!(loser["status"], "cancelled");
    assert!(
        loser["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alternative 'race/alt-1' succeeded first"),
        "{loser}"
    );
    assert!(
        processes_matching(&marker).is_empty(),
        "the loser's process outlived the run: {:?}",
        processes_matching(&marker)
    );
    // Both alternatives' attempts are in the trace.
    let trace = run.trace();
    let spans = attempt_spans(&trace, |id| id.starts_with("race/"));
    assert_eq!(spans.len(), 2, "{spans:?}");
}

/// `sequential`: alternatives one after another until one succeeds; the failed one's attempts
/// (retries included) are in the trace, later ones never start. With none succeeding, the task
/// fails with each one's error.
#[test]
fn sequential_fallback_tries_alternatives_in_order() {
    let sb = Sandbox::new();
    let never = sb.path().join("never");
    let batch = json!({"tasks": [
        {"task_id": "call", "agent": "first_success", "input_data": {"mode": "sequential", "alternatives": [
            {"agent": "command", "input_data": {"argv": ["sh", "-c", "echo primary down >&2; exit 3"]}},
            {"agent": "command", "input_data": {"argv": ["echo", "fallback"]}},
            {"agent": "command", "input_data": {"argv": ["touch", never]}}
        ]}}
    ], "config": {"retries": 1, "retry_backoff_ms": 0, "fail_fast": true}});
    // fail_fast does not stop the run for an alternative that fails.
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let out = &run.result("call")["output"];
    assert_eq!(run.status("call"), "success");
    assert_eq!(out["winner"], 1);
    assert_eq!(out["output"]["stdout"], "fallback\n");
    assert_eq!(out["alternatives"][0]["status"], "error");
    assert!(!never.exists(), "an alternative after the winner started");
    assert!(!run.stdout.contains("call/alt-2"));
    let trace = run.trace();
    let spans = attempt_spans(&trace, |id| id == "call/alt-0");
    assert_eq!(
        spans.len(),
        2,
        "both attempts of the failed alternative: {spans:?}"
    );

    let batch = json!({"tasks": [
        {"task_id": "none", "agent": "first_success", "input_data": {"mode": "sequential", "alternatives": [
            {"agent": "command", "input_data": {"argv": ["false"]}},
            {"agent": "command", "input_data": {"argv": ["sh", "-c", "exit 4"]}}
        ]}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let none = run.result("none");
    assert_eq!(none["status"], "error");
    assert_eq!(none["error"]["kind"], "child_failed");
    let message = none["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("alt-0") && message.contains("code 4"),
        "{message}"
    );
    assert_eq!(run.status("none/alt-1"), "error");
}

/// The orchestration example (a planner, a fan-out, a fallback and a join) runs offline and the
/// join sees all three.
#[test]
fn the_orchestration_example_runs() {
    let sb = Sandbox::new();
    let example = root().join("examples/orchestration.json");
    let run = sb.run(&["run", "-f", example.to_str().unwrap()], "");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.result("join")["output"]["stdout"],
        "plan success, 3 of 3 shards, data from the fallback\n\n"
    );
    assert_eq!(run.status("run-plan/test"), "success");
    assert_eq!(run.status("shards/2"), "success");
    assert_eq!(run.status("fetch/alt-0"), "error");
}

/// An interrupt stops a child batch like any task: its running process is killed, the rest of
/// it and the `batch` task end `cancelled`, exit 130.
#[test]
fn an_interrupt_cancels_a_child_batch() {
    let sb = Sandbox::new();
    let marker = format!("31.{}", std::process::id());
    let batch = json!({"tasks": [{"task_id": "p", "agent": "batch", "input_data": {"batch": {"tasks": [
        {"task_id": "s", "agent": "command", "input_data": {"argv": ["sleep", marker]}},
        {"task_id": "t", "agent": "command", "dependencies": ["s"], "input_data": {"argv": ["true"]}}
    ]}}}]});
    let child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
    let pid = child.id();
    assert!(
        eventually(Duration::from_secs(10), || !processes_matching(&marker)
            .is_empty()),
        "the child task never started"
    );
    send_signal(pid, libc::SIGINT);
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(30)));
    assert_eq!(run.code, 130, "{}", run.stdout);
    for id in ["p", "p/s", "p/t"] {
        assert_eq!(run.status(id), "cancelled", "{id}: {}", run.stdout);
    }
    assert!(processes_matching(&marker).is_empty());
}

/// A race whose losing alternative is itself a child batch: the batch and its running task are
/// cancelled, and that task's process is killed.
#[test]
fn a_race_cancels_a_losing_child_batch() {
    let sb = Sandbox::new();
    let marker = format!("32.{}", std::process::id());
    let batch = json!({"tasks": [{"task_id": "r", "agent": "first_success", "input_data": {"alternatives": [
        {"agent": "batch", "input_data": {"batch": {"tasks": [
            {"task_id": "slow", "agent": "command", "input_data": {"argv": ["sleep", marker]}}]}}},
        {"agent": "command", "input_data": {"argv": ["sh", "-c", "sleep 0.5; echo ok"]}}
    ]}}]});
    let start = Instant::now();
    let run = sb.run_json(&[], &batch);
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("r")["output"]["winner"], 1);
    for id in ["r/alt-0", "r/alt-0/slow"] {
        assert_eq!(run.status(id), "cancelled", "{id}: {}", run.stdout);
    }
    assert!(processes_matching(&marker).is_empty());
}
