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

/// A batch of `n` command tasks `t0`..`t{n-1}` where each depends on the one before, listed last
/// task first; with `cyclic`, `t0` depends on the last one, closing one cycle through all.
/// `extra` tasks (JSON text) are appended.
fn long_graph(n: usize, cyclic: bool, extra: &[&str]) -> String {
    let mut text = String::with_capacity(n * 100);
    text.push_str(r#"{"tasks":["#);
    for i in (0..n).rev() {
        let dep = match i {
            0 if cyclic => format!(r#","dependencies":["t{}"]"#, n - 1),
            0 => String::new(),
            _ => format!(r#","dependencies":["t{}"]"#, i - 1),
        };
        text.push_str(&format!(
            r#"{{"task_id":"t{i}","agent":"command","input_data":{{"argv":["true"]}}{dep}}},"#
        ));
    }
    for e in extra {
        text.push_str(e);
        text.push(',');
    }
    text.pop();
    text.push_str("]}");
    text
}

/// `validate -f` on `text`, with room for a batch of a million tasks (about 100 MB).
fn validate_big(sb: &Sandbox, text: &str) -> Run {
    let file = sb.write("big.json", text);
    let child = sb
        .cmd(&[
            "validate",
            "--max-input-bytes",
            "400000000",
            "--max-tasks",
            "2000000",
            "-f",
            file.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(300)));
    assert!(!run.stderr.contains("overflow"), "{}", run.stderr);
    run
}

/// The cycle error for a cycle through every task of [`long_graph`]: one issue, its message
/// naming both ends of the cycle and the count between, not a million names.
fn assert_long_cycle(errors: &[(String, String)], n: usize) {
    let cycle: Vec<_> = errors
        .iter()
        .filter(|(_, m)| m.starts_with("dependency cycle"))
        .collect();
    assert_eq!(cycle.len(), 1, "{errors:?}");
    let (path, message) = cycle[0];
    assert_eq!(path, "/tasks/0/dependencies/0");
    let last = n - 1;
    assert!(
        message.starts_with(&format!("dependency cycle: t{last} -> t{} -> ", last - 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!(" -> ... ({} more) ... -> ", n + 1 - 20)),
        "{message}"
    );
    assert!(
        message.contains(&format!("t1 -> t0 -> t{last} (each")),
        "{message}"
    );
    assert!(message.len() < 500, "{} bytes", message.len());
}

/// Above what once overflowed the stack (a recursive strongly-connected-components search).
/// Release builds check the full million; debug builds, several times slower, a fifth of it.
const LONG: usize = if cfg!(debug_assertions) {
    200_000
} else {
    1_000_000
};

#[test]
fn a_million_task_cycle_is_one_short_error_not_a_crash() {
    let n = 1_000_000;
    let sb = Sandbox::new();
    let run = validate_big(&sb, &long_graph(n, true, &[]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_long_cycle(&errors, n);
    assert!(run.stdout.len() < 2_000, "{}", run.stdout);
}

#[test]
fn a_million_task_chain_listed_backwards_is_valid() {
    let n = 1_000_000;
    let sb = Sandbox::new();
    let run = validate_big(&sb, &long_graph(n, false, &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["task_count"], n);
    assert_eq!(run.json["levels"].as_array().unwrap().len(), n);
    let path = run.json["critical_path"].as_array().unwrap();
    assert_eq!(path.len(), n);
    assert_eq!(path[0], "t0");
}

#[test]
fn long_cycles_and_chains_with_unrelated_errors() {
    let sb = Sandbox::new();
    let unknown_field =
        r#"{"task_id":"x","agent":"command","input_data":{"argv":["true"]},"bogus":1}"#;
    let nul = r#"{"task_id":"y","agent":"command","input_data":{"argv":["a\u0000b"]}}"#;

    let run = validate_big(&sb, &long_graph(LONG, true, &[unknown_field, nul]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_long_cycle(&errors, LONG);
    assert_eq!(errors[1].0, format!("/tasks/{LONG}/bogus"));
    assert_eq!(
        errors[2].0,
        format!("/tasks/{}/input_data/argv/0", LONG + 1)
    );

    let run = validate_big(&sb, &long_graph(LONG, false, &[unknown_field]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].1.contains("unknown field 'bogus'"), "{errors:?}");

    // Only graph problems besides the cycle: an unknown dependency and a repeated key.
    let unknown_dep = r#"{"task_id":"z","agent":"command","input_data":{"argv":["true"]},"dependencies":["nope"]}"#;
    let repeated =
        r#"{"task_id":"w","agent":"command","input_data":{"argv":["true"]},"task_id":"v"}"#;
    let run = validate_big(&sb, &long_graph(LONG, true, &[unknown_dep, repeated]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_long_cycle(&errors, LONG);
    assert!(errors[1].1.contains("unknown task 'nope'"), "{errors:?}");
    assert_eq!(errors[2].0, format!("/tasks/{}", LONG + 1));
    assert!(
        errors[2].1.contains("duplicate key 'task_id'"),
        "{errors:?}"
    );
}

#[test]
fn rejecting_an_over_limit_batch_builds_no_document_tree() {
    // 60 MB of tasks, one more than --max-tasks allows: refused after reading, without the
    // `Value` tree of the whole batch (gigabytes). Address space is capped at 1 GiB.
    let n = 600_000;
    let sb = Sandbox::new();
    let file = sb.write("big.json", &long_graph(n, false, &[]));
    let mut cmd = sb.cmd(&[
        "validate",
        "--max-tasks",
        &(n - 1).to_string(),
        "-f",
        file.to_str().unwrap(),
    ]);
    limit_memory(&mut cmd, 1 << 30);
    let started = std::time::Instant::now();
    let run = sb.to_run(cmd.output().unwrap());
    let (path, message) = only_error(&run);
    assert_eq!(path, "/tasks");
    assert!(
        message.contains("600000 tasks is more than the limit of 599999"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// Caps the data segment of the command's process (`RLIMIT_DATA`, which counts heap and
/// anonymous mappings), so a test fails when the runner allocates more.
fn limit_memory(cmd: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `serve` on a free loopback port with `args`; killed when the guard drops.
struct Served {
    child: std::process::Child,
    base: String,
    _sb: Sandbox,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    let sb = Sandbox::new();
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut child = sb
        .cmd(&all)
        .env_remove("DISPATCH_API_TOKEN")
        .env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads stderr to its end, so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("dispatch_runner: listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server listens");
    Served {
        child,
        base,
        _sb: sb,
    }
}

#[tokio::test]
async fn a_long_cycle_sent_to_the_server_is_a_400_and_the_server_lives_on() {
    let mut server = serve(&[]);
    let base = server.base.clone();
    let client = dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // Another client's run, in flight while the cycle is checked.
    let other = json!({"tasks": [sh_task("slow", "sleep 1; echo done", &[])]});
    let other = tokio::spawn(
        client
            .post(format!("{base}/v1/dispatch"))
            .header("content-type", "application/json")
            .body(other.to_string())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cycle = long_graph(25_000, true, &[]);
    assert!(cycle.len() > 2_000_000);
    let resp = client
        .post(format!("{base}/v1/dispatch"))
        .header("content-type", "application/json")
        .body(cycle)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "invalid");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("(24981 more)"),
        "{body}"
    );

    let other = other.await.unwrap().expect("the other run is answered");
    assert_eq!(other.status().as_u16(), 200);
    let result: Value = other.json().await.unwrap();
    assert_eq!(result["results"][0]["status"], "success", "{result}");
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is still up"
    );
}

#[tokio::test]
async fn the_server_caps_output_and_batches_cannot_raise_it() {
    let server = serve(&["--max-output-bytes", "1000"]);
    let client = dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let post = |batch: Value| {
        client
            .post(format!("{}/v1/dispatch", server.base))
            .header("content-type", "application/json")
            .body(batch.to_string())
            .send()
    };
    let loud = sh_task("loud", "head -c 5000 /dev/zero | tr '\\0' x", &[]);

    let resp = post(json!({"tasks": [loud.clone()], "config": {"max_output_bytes": 1001}}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["path"], "/config/max_output_bytes",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1000 bytes"),
        "{body}"
    );

    // Without a request of its own the batch gets the default (1 MiB), held to the cap.
    let resp = post(json!({"tasks": [loud]})).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let result: Value = resp.json().await.unwrap();
    let output = &result["results"][0]["output"];
    assert_eq!(output["stdout"].as_str().unwrap().len(), 1000, "{result}");
    assert_eq!(output["truncated"], true);
}
