//! Hostile input and faults, through the real binary: every limit ends in exit 2 with a path and a
//! message; process trees, an unwritable trace folder and a large wide run end with nothing lost.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn only_error(run: &Run) -> (String, String) {
    assert_eq!(
        run.code, 2,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(run.json["status"], "invalid");
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].clone()
}

fn small_batch() -> Value {
    json!({"tasks": [cmd_task("a", &["true"], &[]), cmd_task("b", &["true"], &["a"])]})
}

#[test]
fn input_over_the_size_limit_is_refused_from_stdin_and_from_a_file() {
    let sb = Sandbox::new();
    let text = small_batch().to_string();
    let run = sb.run(&["validate", "--max-input-bytes", "50"], &text);
    let (path, message) = only_error(&run);
    assert_eq!(path, "");
    assert!(
        message.contains("stdin is larger than the input limit of 50 bytes"),
        "{message}"
    );

    let file = sb.write("big.json", &text);
    let run = sb.run(
        &[
            "run",
            "--max-input-bytes",
            "50",
            "-f",
            file.to_str().unwrap(),
        ],
        "",
    );
    let (_, message) = only_error(&run);
    assert!(message.contains("big.json"), "{message}");
    assert!(message.contains("--max-input-bytes"), "{message}");
    assert!(!sb.path().join("traces").exists(), "nothing ran");

    // The same input passes under the default limit.
    assert_eq!(sb.run(&["validate"], &text).code, 0);
}

#[test]
fn an_endless_input_stream_is_cut_at_the_limit() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&["validate", "--max-input-bytes", "1000000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Keeps writing until the runner stops reading (broken pipe), far past the limit.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0usize;
        while stdin.write_all(&chunk).is_ok() {
            sent += chunk.len();
            if sent > 512 * 1024 * 1024 {
                break;
            }
        }
        sent
    });
    let out = wait_with_deadline(child, Duration::from_secs(60));
    let sent = writer.join().unwrap();
    assert!(sent < 512 * 1024 * 1024, "the runner read everything");
    let run = to_run(out);
    let (_, message) = only_error(&run);
    assert!(message.contains("larger than the input limit"), "{message}");
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"tasks": [{{"task_id": "a", "agent": "command", "input_data": {{"argv": ["true"], "x": {}1{}}}}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn nesting_deeper_than_the_limit_names_where() {
    let sb = Sandbox::new();
    // Document 1, tasks 2, task 3, input_data 4, then the arrays from depth 5.
    let (path, message) = only_error(&sb.run(&["validate"], &nested(70)));
    let expected = format!("/tasks/0/input_data/x{}", "/0".repeat(60));
    assert_eq!(path, expected);
    assert!(
        message.contains("nested deeper than the limit of 64 levels"),
        "{message}"
    );

    let (path, message) = only_error(&sb.run(&["validate", "--max-depth", "5"], &nested(3)));
    assert_eq!(path, "/tasks/0/input_data/x/0");
    assert!(message.contains("limit of 5 levels"), "{message}");

    // Far deeper than the parser's own limit: still a clean error, not a stack overflow.
    let (path, message) = only_error(&sb.run(&["validate"], &nested(100_000)));
    assert_eq!(path, "");
    assert!(message.contains("recursion limit exceeded"), "{message}");

    let bad = sb
        .cmd(&["validate", "--max-depth", "500"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "clap refuses an out-of-range flag"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1..=127"));
}

#[test]
fn more_tasks_than_the_limit_is_refused() {
    let sb = Sandbox::new();
    let tasks: Vec<Value> = (0..4)
        .map(|i| cmd_task(&format!("t{i}"), &["true"], &[]))
        .collect();
    let batch = json!({"tasks": tasks});
    let (path, message) = only_error(&sb.run_json(&["run", "--max-tasks", "3"], &batch));
    assert_eq!(path, "/tasks");
    assert!(
        message.contains("4 tasks is more than the limit of 3"),
        "{message}"
    );
    assert!(!sb.path().join("traces").exists(), "nothing ran");
    assert_eq!(
        sb.run_json(&["validate", "--max-tasks", "4"], &batch).code,
        0
    );
}

#[test]
fn strings_and_keys_longer_than_the_limit_are_refused() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [cmd_task("a", &["echo", "0123456789ABCDEFGHIJ"], &[])]});
    let (path, message) =
        only_error(&sb.run_json(&["validate", "--max-string-bytes", "15"], &batch));
    assert_eq!(path, "/tasks/0/input_data/argv/1");
    assert!(
        message.contains("string of 20 bytes is longer than the limit of 15 bytes"),
        "{message}"
    );

    let key = "k".repeat(40);
    let batch = json!({"tasks": [{"task_id": "a", "agent": "command",
        "input_data": {"argv": ["true"], "env": {key.clone(): "v"}}}]});
    let (path, _) = only_error(&sb.run_json(&["validate", "--max-string-bytes", "32"], &batch));
    assert_eq!(path, format!("/tasks/0/input_data/env/{key}"));
}

#[test]
fn output_capture_limit_from_the_command_line() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [sh_task("loud", "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2", &[])],
        "config": {"max_output_bytes": 1000000}});
    let run = sb.run_json(&["--max-output-bytes", "10"], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.result("loud")["output"];
    assert_eq!(out["stdout"], "xxxxxxxxxx");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["truncated"], true);
    assert_eq!(run.trace()["config"]["max_output_bytes"], 10);
    let zero = sb.cmd(&["--max-output-bytes", "0"]).output().unwrap();
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn a_task_whose_children_fork_ignore_term_and_outlive_it_leaves_no_process() {
    let sb = Sandbox::new();
    // A grandchild that ignores TERM, one more level down, and one holding stdout open: the task
    // itself exits at once.
    let script = "(trap '' TERM; sleep 431.31) & \
                  sh -c '(trap \"\" TERM; sleep 432.32) & sleep 433.33 &' & \
                  sleep 434.34 > /dev/stdout & echo parent-done";
    let run = sb.run_json(&[], &json!({"tasks": [sh_task("forker", script, &[])]}));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.status("forker"), "success");
    assert!(
        run.result("forker")["output"]["stdout"]
            .as_str()
            .unwrap()
            .starts_with("parent-done"),
    );
    for marker in [
        "sleep 431.31",
        "sleep 432.32",
        "sleep 433.33",
        "sleep 434.34",
    ] {
        assert!(
            processes_matching(marker).is_empty(),
            "{marker} outlived the run"
        );
    }
}

/// No temporary or partial trace files anywhere under `dir`.
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with(".dispatch-") || name.starts_with("dispatch-") {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[test]
fn trace_folder_lost_mid_run_is_exit_3_with_the_result_and_nothing_half_written() {
    let sb = Sandbox::new();
    // Permission bits do not stop root, so the task replaces the trace folder with a file: the
    // trace path then lies under a file, which no one can write to.
    let batch = json!({"tasks": [
        sh_task("first", "echo one", &[]),
        sh_task("saboteur", "rm -rf traces && echo 'not a folder' > traces", &["first"]),
    ], "config": {"trace_dir": "traces"}});
    let run = sb.run_json(&[], &batch);
    assert_eq!(
        run.code, 3,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(run.json["status"], "error");
    let (path, message) = &run.error_messages()[0];
    assert_eq!(path, "");
    assert!(
        message.starts_with("cannot write trace file 'traces/dispatch-"),
        "{message}"
    );
    assert!(
        run.stderr.contains("cannot write trace file"),
        "{}",
        run.stderr
    );
    // The run's result still comes back, every task accounted for.
    let result = &run.json["result"];
    assert_eq!(result["summary"]["successful"], 2);
    assert_eq!(result["results"][0]["output"]["stdout"], "one\n");
    assert_eq!(
        std::fs::read_to_string(sb.path().join("traces")).unwrap(),
        "not a folder\n"
    );
    assert_eq!(leftovers(sb.path()), Vec::<String>::new());
}

#[test]
fn trace_folder_under_proc_is_exit_3_before_anything_runs() {
    let sb = Sandbox::new();
    let marker = sb.path().join("ran");
    let batch = json!({"tasks": [cmd_task("t", &["touch", marker.to_str().unwrap()], &[])]});
    // /proc accepts no new files, root or not.
    let run = sb.run_json(&["--trace-dir", "/proc/self"], &batch);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(run.error_messages()[0].1.contains("/proc/self"));
    assert!(!marker.exists(), "nothing may run without a trace folder");
}

#[test]
fn ten_thousand_tasks_on_256_workers_are_all_accounted_for() {
    let sb = Sandbox::new();
    const N: usize = 10_000;
    let tasks: Vec<Value> = (0..N)
        .map(|i| {
            // A few chains and joins so the dependency bookkeeping is exercised at scale too.
            let deps: Vec<String> = match i {
                i if i >= 100 && i % 10 == 0 => {
                    vec![format!("t{}", i - 100), format!("t{}", i - 7)]
                }
                _ => vec![],
            };
            json!({"task_id": format!("t{i}"), "agent": "command",
                   "input_data": {"argv": ["true"]}, "dependencies": deps})
        })
        .collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 256}}).to_string();
    // A low open-file limit, as on many CI machines: 256 workers must fit in it.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 1024 2>/dev/null; exec \"$0\" run -q",
        bin().to_str().unwrap(),
    ])
    .current_dir(sb.path());
    let child = spawn_with_input(cmd, &batch);
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(300)));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let results = run.json["results"].as_array().unwrap();
    assert_eq!(results.len(), N);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["task_id"], format!("t{i}"), "results in input order");
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["attempts"], 1);
    }
    assert_eq!(run.json["summary"]["successful"], N);
    let trace = run.trace();
    assert_eq!(trace["tasks"].as_array().unwrap().len(), N);
    assert_eq!(events(&trace, "task_finished").len(), N);
    assert_eq!(events(&trace, "attempt_started").len(), N);
    let peak = peak_concurrency(&trace);
    assert!(peak <= 256, "{peak} attempts at once");
}

#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&["validate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our end of stdout before the runner writes anything.
    drop(child.stdout.take());
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(small_batch().to_string().as_bytes())
            .unwrap();
    }
    let out = wait_with_deadline(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_hundred_thousand_tasks_pass_the_default_limits() {
    let sb = Sandbox::new();
    let tasks: Vec<Value> = (0..100_000)
        .map(|i| {
            let deps = if i > 0 {
                vec![format!("t{}", i / 2)]
            } else {
                vec![]
            };
            json!({"task_id": format!("t{i}"), "agent": "command",
                   "input_data": {"argv": ["true"]}, "dependencies": deps})
        })
        .collect();
    let file = sb.write("big.json", &json!({"tasks": tasks}).to_string());
    let out = sb
        .cmd(&["validate", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["task_count"], 100_000);
    assert_eq!(run.json["dependency_count"], 99_999);
}
