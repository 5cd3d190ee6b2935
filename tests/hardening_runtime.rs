//! Runtime hardening through the binary: agents never block the async runtime (FIFOs and other
//! special files are refused at once, slow file work cannot outlive a timeout or SIGTERM, and
//! `serve` stays responsive), and `{{tasks...}}` expansion is bounded.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

/// Runs `batch` in `sb` and gives up (killing the runner) after `deadline`.
fn run_within(sb: &Sandbox, args: &[&str], batch: &Value, deadline: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let child = spawn_with_input(sb.cmd(args), &batch.to_string());
    let out = wait_with_deadline(child, deadline);
    (sb.to_run(out), started.elapsed())
}

fn debug_task(id: &str, files: &[&str], timeout: f64) -> Value {
    json!({"task_id": id, "agent": "debug", "timeout_seconds": timeout, "input_data": {
        "problem_description": "it fails", "affected_files": files,
        "error_traces": ["Traceback (most recent call last):\n  File \"fifo.py\", line 1, in <module>\n    x()\nNameError: name 'x' is not defined"],
        "analysis_depth": "quick"}})
}

fn coder_task(id: &str, output: &str, context: &[&str], overwrite: bool) -> Value {
    json!({"task_id": id, "agent": "coder", "timeout_seconds": 30, "input_data": {
        "contract_description": "Add two numbers", "node_type": "Compute",
        "output_path": output, "context_files": context, "overwrite": overwrite}})
}

fn kind(run: &Run, id: &str) -> String {
    run.result(id)["error"]["kind"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn fifos_fail_at_once_with_their_own_kind_and_other_tasks_run() {
    let sb = Sandbox::new();
    mkfifo(&sb.path().join("fifo.py"));
    sb.write("ok.py", "def f():\n    return 1\n");
    let batch = json!({"tasks": [
        debug_task("debug_fifo", &["fifo.py"], 30.0),
        coder_task("coder_context_fifo", "gen/a.py", &["fifo.py"], false),
        coder_task("coder_output_fifo", "fifo.py", &[], true),
        // A trace naming the FIFO while the affected file is ordinary: nothing opens the FIFO.
        debug_task("debug_trace_names_fifo", &["ok.py"], 30.0),
        sh_task("plain", "echo fine", &[]),
    ]});
    let (run, took) = run_within(
        &sb,
        &["--workspace", ".", "--max-workers", "5"],
        &batch,
        Duration::from_secs(60),
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    for id in ["debug_fifo", "coder_context_fifo", "coder_output_fifo"] {
        assert_eq!(run.status(id), "error", "{id}: {}", run.stdout);
        assert_eq!(kind(&run, id), "not_a_regular_file", "{id}: {}", run.stdout);
        let msg = run.result(id)["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("fifo.py") && msg.contains("FIFO"),
            "{id}: {msg}"
        );
    }
    assert_eq!(
        run.status("debug_trace_names_fifo"),
        "success",
        "{}",
        run.stdout
    );
    assert_eq!(run.status("plain"), "success");
    // Refused before any timeout could fire (each task allows 30 s).
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        std::fs::symlink_metadata(sb.path().join("fifo.py"))
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO was not replaced"
    );
    assert!(!sb.path().join("gen/a.py").exists());
    let trace = run.trace();
    assert_eq!(trace["tasks"].as_array().unwrap().len(), 5);
}

use std::os::unix::fs::FileTypeExt;

/// About 4 MiB of valid Python: parsing it takes seconds in a debug build.
fn big_python(sb: &Sandbox, name: &str) {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 4 * 1024 * 1024 {
        text.push_str(&format!("def f{n}(x):\n    return x + {n}\n"));
        n += 1;
    }
    sb.write(name, &text);
}

#[test]
fn a_timeout_bites_while_an_agent_does_slow_file_work() {
    let sb = Sandbox::new();
    big_python(&sb, "big.py");
    let mut task = debug_task("slow", &["big.py"], 0.3);
    task["input_data"]
        .as_object_mut()
        .unwrap()
        .remove("error_traces");
    let batch = json!({"tasks": [task, sh_task("plain", "echo fine", &[])]});
    let (run, took) = run_within(&sb, &["--workspace", "."], &batch, Duration::from_secs(60));
    // Before the fix the parse held a runtime thread and the task "succeeded" after seconds.
    assert_eq!(run.status("slow"), "timeout", "{}", run.stdout);
    assert_eq!(kind(&run, "slow"), "timeout");
    assert_eq!(run.status("plain"), "success");
    let ms = run.result("slow")["execution_time_ms"].as_f64().unwrap();
    assert!(
        ms < 3000.0,
        "the attempt ran {ms} ms past its 0.3 s timeout"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn sigterm_ends_a_run_whose_agent_is_busy_with_files() {
    let sb = Sandbox::new();
    let files = ["a.py", "b.py", "c.py", "d.py"];
    for f in files {
        big_python(&sb, f);
    }
    let batch = json!({"tasks": [debug_task("slow", &files, 300.0)]});
    let mut cmd = sb.cmd(&["--workspace", ".", "-q"]);
    cmd.stdin(Stdio::piped());
    let child = spawn_with_input(cmd, &batch.to_string());
    let pid = child.id();
    // Let the analysis start.
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    send_signal(pid, libc::SIGTERM);
    let out = wait_with_deadline(child, Duration::from_secs(60));
    let waited = signalled.elapsed();
    let run = sb.to_run(out);
    assert_eq!(run.code, 143, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("slow"), "cancelled", "{}", run.stdout);
    assert!(
        waited < Duration::from_secs(10),
        "exited {waited:?} after SIGTERM"
    );
    let trace = run.trace();
    assert!(event_names(&trace).contains(&"run_cancelled".to_string()));
}

#[tokio::test]
async fn serve_stays_responsive_while_batches_hit_fifos() {
    let sb = Sandbox::new();
    mkfifo(&sb.path().join("fifo.py"));
    let mut child = sb
        .cmd(&["serve", "--listen", "127.0.0.1:0"])
        .env_remove("DISPATCH_API_TOKEN")
        .env("ARCHON_MCP_URL", "http://127.0.0.1:9/mcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().unwrap();
    let base = {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(a) = line.strip_prefix("dispatch_runner: listening on ") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        base
    };
    let client = dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let batch = json!({"tasks": [
        debug_task("debug_fifo", &["fifo.py"], 30.0),
        coder_task("coder_fifo", "gen/a.py", &["fifo.py"], false),
    ]})
    .to_string();
    let post = |body: String| {
        let (client, url) = (client.clone(), format!("{base}/v1/dispatch"));
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("dispatch answered");
            resp.json::<Value>().await.unwrap()
        })
    };
    let (a, b) = (post(batch.clone()), post(batch));
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("/health answers while the batches run");
    assert_eq!(health.status().as_u16(), 200);
    for r in [a.await.unwrap(), b.await.unwrap()] {
        assert_eq!(r["status"], "failure", "{r}");
        for res in r["results"].as_array().unwrap() {
            assert_eq!(res["error"]["kind"], "not_a_regular_file", "{r}");
        }
    }
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    drop(guard);
    let _ = child.wait();
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        send_signal(self.0, libc::SIGKILL);
    }
}

#[test]
fn reference_expansion_is_bounded_and_the_run_goes_on() {
    let sb = Sandbox::new();
    // One upstream output of 1 MB, referenced 3,000 times: 3 GB if expanded in full.
    let many = "{{tasks.up.output.stdout}}".repeat(3000);
    let batch = json!({"tasks": [
        sh_task("up", "head -c 1000000 /dev/zero | tr '\\0' x", &[]),
        {"task_id": "huge", "agent": "command", "dependencies": ["up"],
         "input_data": {"argv": ["wc", "-c"], "stdin": many}},
        {"task_id": "once", "agent": "command", "dependencies": ["up"],
         "input_data": {"argv": ["wc", "-c"], "stdin": "{{tasks.up.output.stdout}}"}},
        sh_task("other", "echo fine", &[]),
    ]});
    // Under a 2 GiB address-space limit the unbounded expansion aborted the whole runner.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -v 2097152 && exec \"$0\" \"$@\""])
        .arg(bin())
        .current_dir(sb.path())
        .env("NO_COLOR", "1");
    let run = sb.run_cmd(cmd, &batch.to_string());
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("huge"), "error", "{}", run.stdout);
    assert_eq!(kind(&run, "huge"), "input_too_large");
    let msg = run.result("huge")["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("/stdin") && msg.contains("max_expanded_input_bytes"),
        "{msg}"
    );
    assert_eq!(run.status("once"), "success");
    assert_eq!(run.result("once")["output"]["stdout"], "1000000\n");
    assert_eq!(run.status("other"), "success");
    assert_eq!(run.status("up"), "success");
    assert!(run.trace()["tasks"].as_array().unwrap().len() == 4);
}

#[test]
fn expansion_bound_is_configurable_by_flag_batch_and_file() {
    let sb = Sandbox::new();
    let batch = |config: Value| {
        json!({"tasks": [
            sh_task("up", "printf 0123456789", &[]),
            {"task_id": "down", "agent": "command", "dependencies": ["up"],
             "input_data": {"argv": ["cat"], "stdin": "{{tasks.up.output.stdout}}{{tasks.up.output.stdout}}"}},
        ], "config": config})
    };
    // 20 bytes fit a 20-byte bound, not a 19-byte one.
    let run = sb.run_json(&["--max-expanded-input-bytes", "20"], &batch(json!({})));
    assert_eq!(run.status("down"), "success", "{}", run.stdout);
    let run = sb.run_json(&["--max-expanded-input-bytes", "19"], &batch(json!({})));
    assert_eq!(kind(&run, "down"), "input_too_large", "{}", run.stdout);
    let run = sb.run_json(&[], &batch(json!({"max_expanded_input_bytes": 19})));
    assert_eq!(kind(&run, "down"), "input_too_large", "{}", run.stdout);
    sb.write("d.yaml", "dispatcher:\n  max_expanded_input_bytes: 19\n");
    let run = sb.run_json(&["--config", "d.yaml"], &batch(json!({})));
    assert_eq!(kind(&run, "down"), "input_too_large", "{}", run.stdout);
    // The batch beats the file.
    let run = sb.run_json(
        &["--config", "d.yaml"],
        &batch(json!({"max_expanded_input_bytes": 20})),
    );
    assert_eq!(run.status("down"), "success", "{}", run.stdout);
    // Zero is invalid input, as for every other size.
    let run = sb.run_json(&[], &batch(json!({"max_expanded_input_bytes": 0})));
    assert_eq!(run.code, 2, "{}", run.stdout);
    // The default follows max_output_bytes (4 ×, at least 4 MiB).
    let out = sb.cmd(&["config"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["dispatcher"]["max_expanded_input_bytes"],
        json!({"value": 4 * 1024 * 1024, "source": "default"})
    );
    let out = sb
        .cmd(&["config", "--max-output-bytes", "2000000"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["dispatcher"]["max_expanded_input_bytes"]["value"],
        8_000_000
    );
}
