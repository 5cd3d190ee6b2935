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

/// Five tasks that ignore SIGTERM (and so do the `sleep`s they start); each writes its own pid
/// and its child's. Returns those pids once all five are running.
fn start_stubborn_run(sb: &Sandbox) -> (std::process::Child, Vec<i32>) {
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            sh_task(
                &format!("stubborn{i}"),
                &format!("trap '' TERM; sleep 300 & echo \"$$ $!\" > pids{i}.tmp; mv pids{i}.tmp pids{i}; wait"),
                &[],
            )
        })
        .collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 5}});
    let child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
    let files: Vec<_> = (0..5).map(|i| sb.path().join(format!("pids{i}"))).collect();
    assert!(
        eventually(Duration::from_secs(30), || files.iter().all(|f| f.exists())),
        "tasks never started"
    );
    let pids = read_pids(&files);
    (child, pids)
}

#[test]
fn a_second_signal_kills_every_process_group_at_once() {
    // INT then TERM in quick succession, 20 times: the first asks the groups to stop (they ignore
    // TERM), the second must KILL them all, whether it lands while attempts are still being
    // cancelled or after the dispatch loop ended.
    for trial in 0..20 {
        let sb = Sandbox::new();
        let (child, pids) = start_stubborn_run(&sb);
        assert_eq!(pids.len(), 10);
        send_signal(child.id(), libc::SIGINT);
        std::thread::sleep(Duration::from_millis(if trial % 2 == 0 { 5 } else { 100 }));
        send_signal(child.id(), libc::SIGTERM);
        let out = wait_with_deadline(child, Duration::from_secs(30));
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        // Clean up before failing, so a failure does not leave 300-second sleeps behind.
        for &p in &left {
            send_signal(p as u32, libc::SIGKILL);
        }
        assert!(
            left.is_empty(),
            "trial {trial}: still alive after the runner exited: {left:?}"
        );
        let run = sb.to_run(out);
        assert_eq!(run.code, 130, "trial {trial}: {}", run.stderr);
        for i in 0..5 {
            assert_eq!(run.status(&format!("stubborn{i}")), "cancelled");
        }
    }
}

#[test]
fn a_signal_after_the_dispatch_loop_still_cuts_the_grace_period_short() {
    // The task ends at once but leaves a child in its group that ignores TERM: the run is over,
    // and only the child's grace period (2 s) stands between us and exit. A signal now must
    // KILL it instead of being ignored.
    let sb = Sandbox::new();
    let task = sh_task(
        "leaves_child",
        "trap '' TERM; sleep 300 >/dev/null 2>&1 & echo $! > pid.tmp; mv pid.tmp pid",
        &[],
    );
    let events = sb.path().join("events.ndjson");
    let child = spawn_with_input(
        sb.cmd(&["--events", events.to_str().unwrap()]),
        &json!({"tasks": [task]}).to_string(),
    );
    let file = sb.path().join("pid");
    assert!(eventually(Duration::from_secs(30), || file.exists()));
    let pid: i32 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The task has finished (so the dispatch loop is over): the runner is in the grace period.
    assert!(eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"task_finished\""))
    }));
    let signalled = std::time::Instant::now();
    send_signal(child.id(), libc::SIGINT);
    let out = wait_with_deadline(child, Duration::from_secs(30));
    let took = signalled.elapsed();
    let still = alive(pid);
    if still {
        send_signal(pid as u32, libc::SIGKILL);
    }
    assert!(!still, "the leftover child survived the runner");
    eprintln!("exit {took:?} after the signal");
    assert!(
        took < Duration::from_millis(1500),
        "the signal was not acted on: exit took {took:?} (grace period is 2 s)"
    );
    let run = sb.to_run(out);
    assert_eq!(run.status("leaves_child"), "success");
}
