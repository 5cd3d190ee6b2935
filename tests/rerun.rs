//! `run --rerun-failed TRACE`: only what did not succeed runs again; reused outputs still feed
//! references; with -f, changed reused tasks are refused.

mod common;

use common::*;
use serde_json::{Value, json};

/// A batch where `flaky` fails until the file `fixed` exists; `use_both` needs `stable`'s output.
fn batch() -> Value {
    json!({"tasks": [
        sh_task("stable", "echo run >> stable_runs; echo stable-output", &[]),
        sh_task("flaky", "test -f fixed && echo ok", &[]),
        {"task_id": "use_both", "agent": "command", "dependencies": ["stable", "flaky"],
         "input_data": {"argv": ["echo", "{{tasks.stable.output.stdout}}+{{tasks.flaky.output.stdout}}"]}},
        sh_task("independent", "echo run >> independent_runs", &[])
    ]})
}

#[test]
fn reruns_only_what_did_not_succeed_and_reuses_outputs() {
    let sb = Sandbox::new();
    let first = sb.run_json(&[], &batch());
    assert_eq!(first.code, 1);
    assert_eq!(first.status("flaky"), "error");
    assert_eq!(first.status("use_both"), "skipped");
    let trace = first.json["trace_file"].as_str().unwrap().to_string();

    sb.write("fixed", "");
    let second = sb.run(&["run", "--rerun-failed", &trace], "");
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(second.json["previous_run_id"], first.json["run_id"]);
    assert_eq!(second.json["status"], "success");
    for id in ["stable", "independent"] {
        let r = second.result(id);
        assert_eq!(r["reused"], true, "{id}");
        assert_eq!(r["attempts"], 0, "{id}");
    }
    assert_eq!(
        second.result("stable")["output"]["stdout"],
        "stable-output\n"
    );
    assert_eq!(second.result("flaky")["attempts"], 1);
    assert!(second.result("flaky").get("reused").is_none());
    assert_eq!(
        second.result("use_both")["output"]["stdout"],
        "stable-output\n+ok\n\n",
        "references resolve against reused outputs"
    );
    // The reused tasks did not run again.
    let runs = |f: &str| {
        std::fs::read_to_string(sb.path().join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(runs("stable_runs"), 1);
    assert_eq!(runs("independent_runs"), 1);
    assert_eq!(second.trace()["previous_run_id"], first.json["run_id"]);
    let reused_events = events(&second.trace(), "task_finished")
        .into_iter()
        .filter(|e| e["reused"] == true)
        .count();
    assert_eq!(reused_events, 2);
}

fn rerun_with_file(sb: &Sandbox, trace: &str, batch: &std::path::Path) -> Run {
    sb.run(
        &[
            "run",
            "--rerun-failed",
            trace,
            "-f",
            batch.to_str().unwrap(),
        ],
        "",
    )
}

#[test]
fn with_a_batch_file_changed_reused_tasks_are_refused() {
    let sb = Sandbox::new();
    let first = sb.run_json(&[], &batch());
    let trace = first.json["trace_file"].as_str().unwrap().to_string();

    // Changing the failed task is the point of a rerun: allowed.
    let mut fixed = batch();
    fixed["tasks"][1] = sh_task("flaky", "echo ok", &[]);
    let path = sb.write("fixed.json", &fixed.to_string());
    let run = rerun_with_file(&sb, &trace, &path);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("stable")["reused"], true);

    // Changing a task whose output would be reused is not.
    let mut changed = batch();
    changed["tasks"][0]["input_data"]["argv"][2] = json!("echo different");
    changed["tasks"][3]["description"] = json!("now described");
    let path = sb.write("changed.json", &changed.to_string());
    let run = rerun_with_file(&sb, &trace, &path);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, "/tasks/0");
    assert!(
        errors[0].1.contains("task 'stable'") && errors[0].1.contains("input_data"),
        "{errors:?}"
    );
    assert!(
        errors[1].1.contains("task 'independent'") && errors[1].1.contains("description"),
        "{errors:?}"
    );
}

#[test]
fn a_missing_or_bogus_trace_is_exit_2() {
    let sb = Sandbox::new();
    let run = sb.run(&["run", "--rerun-failed", "nope.json"], "");
    assert_eq!(run.code, 2);
    assert!(
        run.error_messages()[0]
            .1
            .contains("cannot read trace 'nope.json'")
    );
    sb.write("bogus.json", "{\"not\": \"a trace\"}");
    let run = sb.run(&["run", "--rerun-failed", "bogus.json"], "");
    assert_eq!(run.code, 2);
    assert!(run.error_messages()[0].1.contains("is not a trace"));
}
