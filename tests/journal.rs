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
        sh_task("quick", "echo quick >> marks; echo hi", &[]),
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
    // A live run is not resumed: that would run its tasks twice.
    let live = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(live.code, 2, "{}", live.stdout);
    assert!(live.stdout.contains("still going"), "{}", live.stdout);

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
    assert_eq!(marks(&sb, "quick"), 1, "the refused resume ran nothing");
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

/// The policy the run used, read off its debug log line.
fn fsync_used(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> String {
    let batch = json!({"tasks": [sh_task("a", "echo a", &[])]});
    let mut args = vec!["--trace-dir", "traces"];
    args.extend_from_slice(extra);
    let mut cmd = sb.cmd(&args);
    cmd.env("RUST_LOG", "dispatch_runner::journal=debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = sb.run_cmd(cmd, &batch.to_string());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("journal opened"))
        .unwrap_or_else(|| panic!("no journal log line in:\n{}", run.stderr));
    line.split("fsync=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_fsync_policy_comes_from_flag_then_environment_then_file() {
    let sb = Sandbox::new();
    assert_eq!(fsync_used(&sb, &[], &[]), "Interval");
    sb.write("dispatch.yaml", "dispatcher:\n  journal_fsync: always\n");
    let file = ["--config", "dispatch.yaml"];
    assert_eq!(fsync_used(&sb, &file, &[]), "Always");
    let env = [("PARALLEL_DISPATCH_JOURNAL_FSYNC", "never")];
    assert_eq!(fsync_used(&sb, &file, &env), "Never");
    let flag = ["--config", "dispatch.yaml", "--journal-fsync", "interval"];
    assert_eq!(fsync_used(&sb, &flag, &env), "Interval");
    // `config` shows the effective policy.
    let out = sb
        .cmd(&["config", "--config", "dispatch.yaml"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["journal_fsync"], "always");
    // Bad values are configuration errors (exit 3) naming where they are.
    let out = sb
        .cmd(&["config"])
        .env("PARALLEL_DISPATCH_JOURNAL_FSYNC", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PARALLEL_DISPATCH_JOURNAL_FSYNC"));
    sb.write("bad.yaml", "dispatcher:\n  journal_fsync: sometimes\n");
    let out = sb
        .cmd(&["config", "--config", "bad.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("journal_fsync") && err.contains("line 2"),
        "{err}"
    );
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
    // Owner-only, like the trace.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// Marker lines each task appended to `marks`, counted by task.
fn marks(sb: &Sandbox, task: &str) -> usize {
    std::fs::read_to_string(sb.path().join("marks"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == task)
        .count()
}

/// Quick tasks that finish, one long task (it ends at once once `resumed` exists), and one
/// that needs a quick task's output and waits for the long one.
fn crash_batch(long_env: Option<Value>) -> Value {
    let mut long = sh_task(
        "long",
        "echo long >> marks; echo $$ > long.pid; \
         if [ -e resumed ]; then echo done; else sleep 297.31; fi",
        &[],
    );
    if let Some(env) = long_env {
        long["input_data"]["env"] = env;
    }
    json!({"tasks": [
        sh_task("quick1", "echo quick1 >> marks; echo hello", &[]),
        sh_task("quick2", "echo quick2 >> marks; echo two", &[]),
        long,
        sh_task("uses", "echo uses >> marks; echo got {{tasks.quick1.output.stdout}}", &["quick1", "long"])
    ], "config": {"max_workers": 3}})
}

/// Starts the batch, SIGKILLs the runner once the quick tasks are in the journal and the long
/// task runs, kills what the long task left (the runner could not), and lets the next attempt of
/// the long task end at once. Returns the journal.
fn killed_run(sb: &Sandbox, batch: &Value, extra: &[&str]) -> PathBuf {
    let mut args = vec!["run", "--trace-dir", "traces"];
    args.extend_from_slice(extra);
    let child = spawn_with_input(sb.cmd(&args), &batch.to_string());
    let pid_file = sb.path().join("long.pid");
    assert!(
        eventually(Duration::from_secs(30), || {
            pid_file.exists()
                && journals(sb).first().is_some_and(|j| {
                    let done = finished_tasks(&journal_lines(j));
                    batch["tasks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["task_id"].as_str().unwrap())
                        .filter(|id| !["long", "uses"].contains(id))
                        .all(|id| done.iter().any(|d| d == id))
                })
        }),
        "the run did not get to the long task"
    );
    send_signal(child.id(), libc::SIGKILL);
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), None, "the runner was killed");
    let pgid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions. The task leads its process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
        libc::kill(pgid, libc::SIGKILL);
    }
    assert!(eventually(Duration::from_secs(10), || processes_matching(
        "sleep 297.31"
    )
    .is_empty()));
    std::fs::write(sb.path().join("resumed"), "").unwrap();
    let journal = journals(sb).remove(0);
    assert!(!journal.with_extension("json").exists(), "no trace yet");
    journal
}

fn header_run_id(journal: &Path) -> String {
    journal_lines(journal)[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The resumed run's result and trace, checked for what every resume must give.
fn check_resumed(sb: &Sandbox, run: &Run, run_id: &str) {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json["run_id"], run_id, "{}", run.stdout);
    for id in ["quick1", "quick2", "long", "uses"] {
        assert_eq!(run.status(id), "success", "{id}: {}", run.stdout);
    }
    assert_eq!(run.result("uses")["output"]["stdout"], "got hello\n");
    // Tasks that had succeeded did not run again; the interrupted one did.
    assert_eq!(
        [
            marks(sb, "quick1"),
            marks(sb, "quick2"),
            marks(sb, "long"),
            marks(sb, "uses")
        ],
        [1, 1, 2, 1]
    );
    let traces: Vec<_> = std::fs::read_dir(sb.path().join("traces"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(traces.len(), 1, "one trace for the whole run");
    let trace = run.trace();
    assert_eq!(trace["run_id"], run_id);
    let long = trace["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["task_id"] == "long")
        .unwrap();
    assert_eq!(attempt_outcomes(&trace, long), ["interrupted", "success"]);
    assert_eq!(trace["tasks"][long]["attempts"][1]["attempt"], 2);
    // One stream: one run_started, one run_finished, numbered without gaps.
    assert_eq!(events(&trace, "run_started").len(), 1);
    assert_eq!(events(&trace, "run_finished").len(), 1);
    let seqs: Vec<u64> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
        "{seqs:?}"
    );
    // The same journal was continued: it holds the whole stream too.
    let journal = crate::journals(sb).remove(0);
    let lines = journal_lines(&journal);
    assert_eq!(&lines[1..], trace["events"].as_array().unwrap().as_slice());
}

#[test]
fn a_killed_run_resumes_where_it_stopped() {
    let sb = Sandbox::new();
    let journal = killed_run(&sb, &crash_batch(None), &[]);
    let run_id = header_run_id(&journal);
    let run = sb.run(&["resume", journal.to_str().unwrap()], "");
    check_resumed(&sb, &run, &run_id);
    // A finished run is not resumed again.
    let again = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(again.code, 2, "{}", again.stdout);
    assert!(
        again.stdout.contains("nothing to resume"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_torn_last_line_is_dropped_and_the_run_id_finds_the_journal() {
    let sb = Sandbox::new();
    let journal = killed_run(&sb, &crash_batch(None), &["--journal-fsync", "never"]);
    let run_id = header_run_id(&journal);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"seq":99,"at":"2026-"#).unwrap();
    drop(f);
    let run = sb.run(&["resume", "--trace-dir", "traces", &run_id], "");
    check_resumed(&sb, &run, &run_id);
    assert!(
        !std::fs::read_to_string(&journal)
            .unwrap()
            .contains(r#""seq":99"#)
    );
}

#[test]
fn a_journal_damaged_before_its_last_line_is_refused_with_the_line() {
    let sb = Sandbox::new();
    let journal = killed_run(&sb, &crash_batch(None), &[]);
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "{\"seq\": garbage";
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let run = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json["status"], "invalid");
    let (_, message) = &run.error_messages()[0];
    assert!(message.contains("line 4"), "{message}");
    assert_eq!(marks(&sb, "uses"), 0, "nothing ran");
}

#[test]
fn a_journal_of_another_batch_is_refused_with_the_line() {
    let sb = Sandbox::new();
    let journal = killed_run(&sb, &crash_batch(None), &[]);
    let mut other = crash_batch(None);
    other["tasks"][1] = sh_task("quick2", "echo something else", &[]);
    let path = sb.write("other.json", &other.to_string());
    let run = sb.run(
        &[
            "resume",
            journal.to_str().unwrap(),
            "-f",
            path.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    let (pointer, message) = &run.error_messages()[0];
    assert_eq!(pointer, "/tasks/1");
    assert!(
        message.contains("line 1") && message.contains("does not belong"),
        "{message}"
    );
    assert_eq!(marks(&sb, "uses"), 0, "nothing ran");
}

#[test]
fn a_batch_with_secrets_resumes_only_with_f_and_the_secret_stays_out_of_the_journal() {
    let sb = Sandbox::new();
    let batch = crash_batch(Some(json!({"SERVICE_API_KEY": SECRET})));
    let journal = killed_run(&sb, &batch, &[]);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains(SECRET), "secret in the journal:\n{text}");
    assert!(text.contains("[REDACTED]"));

    let refused = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(refused.code, 2, "{}", refused.stdout);
    let (pointer, message) = &refused.error_messages()[0];
    assert_eq!(pointer, "/tasks/2");
    assert!(message.contains("-f BATCH_FILE"), "{message}");
    assert_eq!(marks(&sb, "long"), 1, "nothing ran");

    let path = sb.write("batch.json", &batch.to_string());
    let run = sb.run(
        &[
            "resume",
            journal.to_str().unwrap(),
            "-f",
            path.to_str().unwrap(),
        ],
        "",
    );
    check_resumed(&sb, &run, &header_run_id(&journal));
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains(SECRET), "secret in the journal:\n{text}");
}

#[test]
fn a_task_that_failed_before_the_crash_keeps_its_failure() {
    let sb = Sandbox::new();
    let mut batch = crash_batch(None);
    // A failure whose definition held a secret: it does not run again, so no -f is needed.
    let mut bad = sh_task("bad", "echo bad >> marks; exit 3", &[]);
    bad["input_data"]["env"] = json!({"SERVICE_API_KEY": SECRET});
    batch["tasks"].as_array_mut().unwrap().push(bad);
    batch["tasks"].as_array_mut().unwrap().push(sh_task(
        "after_bad",
        "echo after_bad >> marks",
        &["bad"],
    ));
    let journal = killed_run(&sb, &batch, &[]);
    let run = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("bad"), "error");
    assert_eq!(run.status("after_bad"), "skipped");
    assert_eq!(run.status("uses"), "success");
    assert_eq!(
        [
            marks(&sb, "bad"),
            marks(&sb, "after_bad"),
            marks(&sb, "long")
        ],
        [1, 0, 2]
    );
    assert_eq!(
        events(&run.trace(), "task_finished").len(),
        6,
        "each task finished once"
    );
}
