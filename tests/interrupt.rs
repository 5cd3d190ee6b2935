//! SIGINT and SIGTERM mid-run: running process groups are killed, unfinished tasks are cancelled,
//! and the result document and the trace are still written.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn interrupted_run(signal: i32, marker: &str) -> (Sandbox, Run) {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("quick", "echo done", &[]),
        sh_task("long", &format!("touch started; sleep {marker}; echo never"), &["quick"]),
        sh_task("after_long", "echo never", &["long"]),
        sh_task("other", &format!("sleep {marker}"), &[])
    ], "config": {"max_workers": 2}});
    let child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
    let started = sb.path().join("started");
    assert!(
        eventually(Duration::from_secs(20), || started.exists()),
        "task never started"
    );
    send_signal(child.id(), signal);
    let out = wait_with_deadline(child, Duration::from_secs(30));
    let run = sb.to_run(out);
    assert!(
        processes_matching(&format!("sleep {marker}")).is_empty(),
        "process groups left behind"
    );
    let trace = run.trace();
    assert_eq!(trace["status"], run.json["status"]);
    let names = event_names(&trace);
    assert!(names.iter().any(|n| n == "run_cancelled"));
    assert_eq!(names.last(), Some(&"run_finished".to_string()));
    (sb, run)
}

#[test]
fn sigint_cancels_running_tasks_and_writes_everything() {
    let (_sb, run) = interrupted_run(libc::SIGINT, "422.22");
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.status("quick"), "success");
    for id in ["long", "after_long", "other"] {
        assert_eq!(run.status(id), "cancelled", "{id}");
        assert_eq!(run.result(id)["error"]["kind"], "cancelled");
    }
    assert_eq!(run.result("long")["attempts"], 1);
    assert_eq!(run.result("after_long")["attempts"], 0);
    assert_eq!(run.json["summary"]["cancelled"], 3);
    assert_eq!(run.json["status"], "partial");
    let trace = run.trace();
    assert_eq!(events(&trace, "run_cancelled")[0]["reason"], "sigint");
    let long = &trace["tasks"][1]["attempts"][0];
    assert_eq!(long["outcome"], "cancelled");
}

#[test]
fn sigterm_exits_143() {
    let (_sb, run) = interrupted_run(libc::SIGTERM, "423.23");
    assert_eq!(run.code, 143);
    assert_eq!(run.status("long"), "cancelled");
    assert!(
        run.result("long")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGTERM")
    );
}
