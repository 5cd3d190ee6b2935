//! The run journal (`<trace_dir>/dispatch-<run_id>.journal`) and `dispatch_runner resume`:
//! the journal is written while the run goes, survives a SIGKILL of the runner, and a resumed
//! run ends with one result and one trace covering the whole run.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The journal files in the sandbox's `traces` folder.
fn journals(sb: &Sandbox) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(sb.path().join("traces")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    found.sort();
    found
}

/// The journal's lines parsed (the last one only if it is whole).
fn journal_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn finished_tasks(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["event"] == "task_finished")
        .map(|l| l["task_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_journal_grows_while_the_run_goes_and_matches_the_trace() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("quick", "echo hi", &[]),
        sh_task("second", "touch second_may_end; while [ ! -e let_second_end ]; do sleep 0.02; done", &[]),
        sh_task("slow", "while [ ! -e let_slow_end ]; do sleep 0.02; done; echo slow", &[])
    ], "config": {"max_workers": 3}});
    let child = spawn_with_input(
        sb.cmd(&["--trace-dir", "traces", "--journal-fsync", "always"]),
        &batch.to_string(),
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            journals(&sb)
                .first()
                .is_some_and(|j| finished_tasks(&journal_lines(j)) == ["quick"])
        }),
        "the journal did not record the quick task while the run was going: {:?}",
        journals(&sb)
    );
    let journal = journals(&sb).remove(0);
    let before = journal_lines(&journal);
    assert!(before[0]["journal_format"] == 1, "{}", before[0]);
    assert_eq!(before[1]["event"], "run_started");
    // No trace yet: the run is still going.
    assert!(!journal.with_extension("json").exists());

    std::fs::write(sb.path().join("let_second_end"), "").unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            finished_tasks(&journal_lines(&journal)) == ["quick", "second"]
        }),
        "the journal did not grow when the second task ended"
    );
    assert!(journal_lines(&journal).len() > before.len());

    std::fs::write(sb.path().join("let_slow_end"), "").unwrap();
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(60)));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let trace = run.trace();
    let lines = journal_lines(&journal);
    // The header, then exactly the trace's events.
    assert_eq!(lines[0]["run_id"], trace["run_id"]);
    assert_eq!(&lines[1..], trace["events"].as_array().unwrap().as_slice());
    assert_eq!(lines.last().unwrap()["event"], "run_finished");
}

#[test]
fn the_fsync_policy_is_checked_on_the_command_line() {
    let sb = Sandbox::new();
    let out = sb
        .cmd(&["run", "--journal-fsync", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--journal-fsync"));
    for policy in ["never", "interval"] {
        let batch = json!({"tasks": [sh_task("a", "echo a", &[])]});
        let run = sb.run_json(
            &["--trace-dir", "traces", "--journal-fsync", policy],
            &batch,
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(journals(&sb).len(), 2);
}

const SECRET: &str = "journal-planted-secret-7c41d9";

#[test]
fn secrets_never_enter_the_journal() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "echo_key", "agent": "command",
         "input_data": {"argv": ["sh", "-c", "echo \"key=$SERVICE_API_KEY\""],
                        "env": {"SERVICE_API_KEY": SECRET}}}
    ]});
    let run = sb.run_json(&["--trace-dir", "traces"], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let journal = journals(&sb).remove(0);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains(SECRET), "secret in the journal:\n{text}");
    assert!(text.contains("key=[REDACTED]"), "{text}");
}
