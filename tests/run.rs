//! Running batches through the real binary: ordering, output passing, skips, fail-fast, timeouts,
//! retries, breakers, the worker limit, the trace, and exit codes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[test]
fn pipeline_succeeds_with_results_in_input_order_and_a_trace() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("slow_first", "sleep 0.3; echo slow", &[]),
        sh_task("fast", "echo fast", &[]),
        sh_task("join", "echo joined", &["slow_first", "fast"])
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["status"], "success");
    let ids: Vec<&str> = run.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["slow_first", "fast", "join"]);
    let s = &run.json["summary"];
    assert_eq!(
        (s["total_tasks"].as_u64(), s["successful"].as_u64()),
        (Some(3), Some(3))
    );
    let r = run.result("slow_first");
    assert_eq!(
        r["output"],
        json!({"exit_code": 0, "stdout": "slow\n", "stderr": "", "truncated": false})
    );
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["attempts"], 1);
    assert!(r["execution_time_ms"].as_u64().unwrap() >= 250);
    assert!(r["started_at"].as_str().unwrap().ends_with('Z'));

    let trace_file = run.json["trace_file"].as_str().unwrap();
    assert!(trace_file.starts_with("traces/dispatch-") && trace_file.ends_with(".json"));
    assert!(trace_file.contains(run.json["run_id"].as_str().unwrap()));
    let trace = read_json(&sb.path().join(trace_file));
    assert_eq!(trace["run_id"], run.json["run_id"]);
    assert_eq!(trace["config"]["max_workers"], 5);
    assert_eq!(
        trace["batch"]["tasks"][2]["dependencies"],
        json!(["slow_first", "fast"])
    );
    assert_eq!(trace["tasks"][2]["attempts"][0]["outcome"], "success");
    let names = event_names(&trace);
    assert_eq!(names.first(), Some(&"run_started".to_string()));
    assert_eq!(names.last(), Some(&"run_finished".to_string()));
    // join is ready only after both its dependencies finished.
    let pos = |pred: &dyn Fn(&Value) -> bool| {
        trace["events"]
            .as_array()
            .unwrap()
            .iter()
            .position(pred)
            .unwrap()
    };
    let join_ready = pos(&|e| e["event"] == "task_ready" && e["task_id"] == "join");
    let slow_done = pos(&|e| e["event"] == "task_finished" && e["task_id"] == "slow_first");
    assert!(join_ready > slow_done);
    let seqs: Vec<u64> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // No temporary files left beside the trace (the digest key is meant to stay).
    let leftovers: Vec<_> = std::fs::read_dir(sb.path().join("traces"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_name() != ".dispatch-key")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn outputs_flow_to_dependents() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("version", "printf 1.2.3", &[]),
        sh_task("count", "echo 7; exit 0", &[]),
        {"task_id": "use", "agent": "command", "dependencies": ["version", "count"],
         "input_data": {"argv": ["sh", "-c", "echo \"v=$V n=$1 code={{tasks.count.output.exit_code}}\"", "sh", "{{tasks.count.output.stdout}}"],
                        "env": {"V": "{{tasks.version.output.stdout}}"}}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.result("use")["output"]["stdout"],
        "v=1.2.3 n=7\n code=0\n"
    );
}

#[test]
fn failure_skips_dependents_transitively_and_other_branches_run() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("compile", "echo 'error: boom' >&2; exit 3", &[]),
        sh_task("test", "true", &["compile"]),
        sh_task("deploy", "true", &["test"]),
        sh_task("docs", "echo docs", &[]),
        sh_task("publish_docs", "true", &["docs"])
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1);
    assert_eq!(run.json["status"], "partial");
    let compile = run.result("compile");
    assert_eq!(compile["status"], "error");
    assert_eq!(compile["error"]["kind"], "exit_status");
    assert_eq!(
        compile["error"]["message"],
        "'sh' exited with code 3: error: boom"
    );
    assert_eq!(compile["output"]["exit_code"], 3);
    assert_eq!(compile["output"]["stderr"], "error: boom\n");
    let test = run.result("test");
    assert_eq!(test["status"], "skipped");
    assert_eq!(test["error"]["kind"], "dependency_failed");
    assert!(
        test["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'compile'")
    );
    assert_eq!(test["attempts"], 0);
    let deploy = run.result("deploy");
    assert_eq!(deploy["status"], "skipped");
    assert!(
        deploy["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'test'")
    );
    assert_eq!(run.status("docs"), "success");
    assert_eq!(run.status("publish_docs"), "success");
    assert_eq!(run.json["summary"]["skipped"], 2);
    assert_eq!(run.json["summary"]["failed"], 1);
}

#[test]
fn all_failing_is_status_failure() {
    let sb = Sandbox::new();
    let run = sb.run_json(&[], &json!({"tasks": [sh_task("a", "exit 1", &[])]}));
    assert_eq!(run.code, 1);
    assert_eq!(run.json["status"], "failure");
}

#[test]
fn fail_fast_lets_running_tasks_finish_and_cancels_the_rest() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("fails", "sleep 0.2; exit 1", &[]),
        sh_task("running", "sleep 0.8; echo done", &[]),
        sh_task("waiting", "echo never", &[]),
        sh_task("after", "echo never", &["running"])
    ], "config": {"max_workers": 2, "fail_fast": true}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.status("fails"), "error");
    assert_eq!(run.status("running"), "success", "running tasks finish");
    assert_eq!(run.result("running")["output"]["stdout"], "done\n");
    for id in ["waiting", "after"] {
        assert_eq!(run.status(id), "cancelled");
        assert_eq!(run.result(id)["error"]["kind"], "cancelled");
        assert_eq!(run.result(id)["attempts"], 0);
    }
    assert_eq!(
        events(&run.trace(), "run_cancelled")[0]["reason"],
        "fail_fast"
    );

    // The flag overrides a batch that says otherwise.
    let mut batch = batch;
    batch["config"]["fail_fast"] = json!(false);
    let run = sb.run_json(&["--fail-fast"], &batch);
    assert_eq!(run.status("waiting"), "cancelled");
}

#[test]
fn timeout_kills_the_whole_process_tree() {
    let sb = Sandbox::new();
    // The marker makes these sleeps findable in the process table.
    let batch = json!({"tasks": [
        {"task_id": "hang", "agent": "command", "timeout_seconds": 0.5,
         "input_data": {"argv": ["sh", "-c", "sleep 417.17 & sleep 417.17 & sleep 417.17; echo never"]}}
    ]});
    let start = Instant::now();
    let run = sb.run_json(&[], &batch);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(run.code, 1);
    let r = run.result("hang");
    assert_eq!(r["status"], "timeout");
    assert_eq!(r["error"]["kind"], "timeout");
    assert_eq!(r["error"]["message"], "attempt timed out after 0.500s");
    assert_eq!(run.json["summary"]["timed_out"], 1);
    assert_eq!(run.trace()["tasks"][0]["attempts"][0]["outcome"], "timeout");
    assert!(
        processes_matching("sleep 417.17").is_empty(),
        "orphans left: {:?}",
        processes_matching("sleep 417.17")
    );
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "stubborn", "agent": "command", "timeout_seconds": 0.3,
         "input_data": {"argv": ["sh", "-c", "trap '' TERM; sleep 418.18; sleep 418.18"]}}
    ]});
    let start = Instant::now();
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.status("stubborn"), "timeout");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(processes_matching("sleep 418.18").is_empty());
}

#[test]
fn background_children_do_not_outlive_a_finished_task() {
    let sb = Sandbox::new();
    let run = sb.run_json(
        &[],
        &json!({"tasks": [sh_task("spawner", "sleep 419.19 & echo started", &[])]}),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("spawner")["output"]["stdout"], "started\n");
    assert!(processes_matching("sleep 419.19").is_empty());
}

#[test]
fn retries_a_command_that_fails_twice_then_succeeds() {
    let sb = Sandbox::new();
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n; [ $n -ge 3 ]";
    let batch = json!({"tasks": [
        {"task_id": "flaky", "agent": "command", "retries": 2, "input_data": {"argv": ["sh", "-c", script]}}
    ], "config": {"retry_backoff_ms": 40}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let r = run.result("flaky");
    assert_eq!(r["attempts"], 3);
    assert_eq!(r["output"]["stdout"], "attempt 3\n");
    let trace = run.trace();
    let retries = events(&trace, "retry_scheduled");
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0]["attempt"], 2);
    let delays: Vec<u64> = retries
        .iter()
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert!((20..=40).contains(&delays[0]), "first delay {delays:?}");
    assert!((40..=80).contains(&delays[1]), "doubled delay {delays:?}");
    let outcomes = attempt_outcomes(&trace, 0);
    assert_eq!(outcomes, ["error", "error", "success"]);

    // Not enough retries: the last failure stands.
    std::fs::remove_file(sb.path().join("count")).unwrap();
    let run = sb.run_json(
        &["--retries", "1"],
        &json!({"tasks": [sh_task("flaky", script, &[])], "config": {"retry_backoff_ms": 10}}),
    );
    assert_eq!(run.status("flaky"), "error");
    assert_eq!(run.result("flaky")["attempts"], 2);
}

#[test]
fn permanent_errors_are_not_retried() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "nocwd", "agent": "command", "retries": 3,
         "input_data": {"argv": ["true"], "cwd": "/definitely/not/here"}},
        {"task_id": "noprog", "agent": "command", "retries": 3,
         "input_data": {"argv": ["no-such-program-xyz"]}}
    ], "config": {"retry_backoff_ms": 10}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.result("nocwd")["error"]["kind"], "invalid_input");
    assert!(
        run.result("nocwd")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/definitely/not/here")
    );
    assert_eq!(run.result("nocwd")["attempts"], 1);
    assert_eq!(run.result("noprog")["error"]["kind"], "spawn_failed");
    assert_eq!(run.result("noprog")["attempts"], 1);
    assert!(events(&run.trace(), "retry_scheduled").is_empty());
}

#[test]
fn timeouts_are_retried_too() {
    let sb = Sandbox::new();
    let script =
        "n=$(cat c 2>/dev/null || echo 0); n=$((n+1)); echo $n > c; [ $n -ge 2 ] || sleep 420.2";
    let batch = json!({"tasks": [{"task_id": "t", "agent": "command", "retries": 1, "timeout_seconds": 0.4,
        "input_data": {"argv": ["sh", "-c", script]}}], "config": {"retry_backoff_ms": 10}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.status("t"), "success", "{}", run.stdout);
    let outcomes = attempt_outcomes(&run.trace(), 0);
    assert_eq!(outcomes, ["timeout", "success"]);
}

#[test]
fn worker_limit_holds_under_load() {
    let sb = Sandbox::new();
    let tasks = concurrency_probe_tasks(&sb, 40);
    let run = sb.run_json(
        &["--max-workers", "3"],
        &json!({"tasks": tasks, "config": {"max_workers": 20}}),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let counts = probe_counts(&sb);
    assert_eq!(counts.len(), 40);
    assert!(
        counts.iter().all(|&c| c <= 3),
        "more than 3 at once: {counts:?}"
    );
    assert!(
        counts.iter().any(|&c| c >= 2),
        "never ran in parallel: {counts:?}"
    );

    // The trace agrees: at most 3 attempts between their start and finish events, on lanes 0..3.
    let trace = run.trace();
    assert_eq!(peak_concurrency(&trace), 3);
    for e in events(&trace, "attempt_started") {
        assert!(e["worker"].as_u64().unwrap() < 3);
    }
    assert_eq!(
        trace["config"]["max_workers"], 3,
        "the flag wins over the batch"
    );
}

#[test]
fn critical_path_starts_first() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("i1", "true", &[]),
        sh_task("i2", "true", &[]),
        sh_task("c1", "true", &[]),
        sh_task("c2", "true", &["c1"]),
        sh_task("c3", "true", &["c2"])
    ], "config": {"max_workers": 1}});
    let run = sb.run_json(&[], &batch);
    let order: Vec<String> = events(&run.trace(), "attempt_started")
        .iter()
        .map(|e| e["task_id"].as_str().unwrap().to_string())
        .collect();
    // c1 heads the longest chain, then c2 still has the longest chain ahead; after that c3, i1
    // and i2 all have chains of one, and ties go in input order.
    assert_eq!(order, ["c1", "c2", "i1", "i2", "c3"]);
}

#[test]
fn circuit_breaker_opens_and_rejects_without_attempting() {
    let sb = Sandbox::new();
    // Commands share a breaker only when the user groups them under one.
    let tasks: Vec<Value> = (0..5)
        .map(|i| {
            let mut t = sh_task(&format!("f{i}"), "exit 1", &[]);
            t["breaker"] = json!("group");
            t
        })
        .collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 1,
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 600}}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 1);
    assert_eq!(run.result("f0")["error"]["kind"], "exit_status");
    assert_eq!(run.result("f1")["error"]["kind"], "exit_status");
    for i in 2..5 {
        let r = run.result(&format!("f{i}"));
        assert_eq!(r["error"]["kind"], "circuit_open", "{r}");
        assert_eq!(r["attempts"], 0);
        assert_eq!(r["status"], "error");
    }
    let trace = run.trace();
    let changes = events(&trace, "breaker_changed");
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (
            changes[0]["breaker"].as_str(),
            changes[0]["from"].as_str(),
            changes[0]["to"].as_str()
        ),
        (Some("group"), Some("closed"), Some("open"))
    );
}

#[test]
fn circuit_breaker_half_opens_after_recovery_and_a_good_probe_closes_it() {
    let sb = Sandbox::new();
    let script = "n=$(cat c 2>/dev/null || echo 0); n=$((n+1)); echo $n > c; [ $n -ge 2 ]";
    let batch = json!({"tasks": [
        {"task_id": "flaky", "agent": "command", "retries": 1, "breaker": "flaky-dep", "input_data": {"argv": ["sh", "-c", script]}},
        sh_task("later", "true", &["flaky"])
    ], "config": {"retry_backoff_ms": 600, "circuit_breaker": {"failure_threshold": 1, "recovery_timeout_seconds": 0.2}}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let transitions: Vec<(String, String)> = events(&run.trace(), "breaker_changed")
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("closed".into(), "open".into()),
            ("open".into(), "half_open".into()),
            ("half_open".into(), "closed".into())
        ]
    );
}

#[test]
fn output_is_capped_and_flagged() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [sh_task("loud", "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2", &[])],
        "config": {"max_output_bytes": 10}});
    let run = sb.run_json(&[], &batch);
    let out = &run.result("loud")["output"];
    assert_eq!(out["stdout"], "xxxxxxxxxx");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["truncated"], true);
}

#[test]
fn stdin_env_and_cwd_are_honoured() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("sub")).unwrap();
    let batch = json!({"tasks": [
        {"task_id": "t", "agent": "command", "input_data": {
            "argv": ["sh", "-c", "read line; echo \"$line $GREETING $(basename $(pwd))\""],
            "stdin": "hello\n", "env": {"GREETING": "world"}, "cwd": "sub"}}
    ]});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.result("t")["output"]["stdout"], "hello world sub\n");
}

#[test]
fn output_file_and_flags_override_config() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [sh_task("slow", "sleep 5", &[])],
        "config": {"timeout_seconds": 100, "trace_dir": "batch_traces"}});
    let run = sb.run_json(
        &[
            "run",
            "-o",
            "result.json",
            "--timeout-seconds",
            "0.3",
            "--trace-dir",
            "cli_traces",
            "-q",
        ],
        &batch,
    );
    assert_eq!(run.status("slow"), "timeout");
    assert!(
        run.json["trace_file"]
            .as_str()
            .unwrap()
            .starts_with("cli_traces/")
    );
    assert!(!sb.path().join("batch_traces").exists());
    assert_eq!(read_json(&sb.path().join("result.json")), run.json);
    assert!(run.stderr.is_empty(), "--quiet: {}", run.stderr);
}

#[test]
fn unusable_trace_dir_is_exit_3_and_nothing_runs() {
    let sb = Sandbox::new();
    sb.write("blocker", "a file, not a folder");
    let marker = sb.path().join("ran");
    let batch = json!({"tasks": [cmd_task("t", &["touch", marker.to_str().unwrap()], &[])],
        "config": {"trace_dir": "blocker/traces"}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert_eq!(run.json["status"], "error");
    assert!(run.error_messages()[0].1.contains("blocker/traces"));
    assert!(!marker.exists());
}

#[test]
fn empty_batch_succeeds() {
    let sb = Sandbox::new();
    let run = sb.run(&[], r#"{"tasks": []}"#);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["status"], "success");
    assert_eq!(run.json["summary"]["total_tasks"], 0);
}
