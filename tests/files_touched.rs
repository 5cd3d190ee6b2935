//! Files consumed and produced, through the built binary: what `coder`, `debug` and the command
//! model backend read and write lands on the task's result (`files`), on its attempts and
//! events in the trace, in the summary, the stderr line and the HTML report; failed attempts
//! keep theirs; reused (`--rerun-failed`, `resume`), cached and Redis-executed results carry
//! them. Sizes and digests are checked against the files on disk.

#[path = "common/agents.rs"]
mod agents;
mod common;
#[path = "common/modules.rs"]
mod modules;
#[path = "common/redis.rs"]
mod redis_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The record a file under `root` must have, computed here from the file on disk.
fn record_in(root: &Path, rel: &str) -> Value {
    let bytes = std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    json!({"path": rel, "bytes": bytes.len(), "digest": sha256(&bytes)})
}

fn record_of(sb: &Sandbox, rel: &str) -> Value {
    record_in(sb.path(), rel)
}

fn write(sb: &Sandbox, rel: &str, content: &str) {
    let p = sb.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Runs `run -f batch.json` plus `extra`, offline (no model variables), with the summary line
/// on stderr (no `-q`).
fn run_loud(sb: &Sandbox, batch: &Value, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let file = sb.write("batch.json", &batch.to_string());
    let mut args = vec![
        "run",
        "-f",
        file.to_str().unwrap(),
        "--status-interval",
        "3600",
    ];
    args.extend_from_slice(extra);
    let mut cmd = sb.cmd(&args);
    for v in agents::LLM_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sb.to_run(wait_with_deadline(child, Duration::from_secs(120)))
}

fn coder_task(id: &str) -> Value {
    json!({"task_id": id, "agent": "coder", "input_data": {
        "contract_description": "Fetch a user record from the directory service by id",
        "node_type": "Effect", "output_path": "out", "node_name": "fetch_user",
        "context_files": ["ctx/contract.md"]}})
}

const CONTRACT: &str = "# Contract\n\nGiven a user id, return the user record. Ünïcode too.\n";

#[test]
fn coder_offline_records_the_context_it_read_and_the_module_it_wrote() {
    let sb = Sandbox::new();
    write(&sb, "ctx/contract.md", CONTRACT);
    let run = run_loud(&sb, &json!({"tasks": [coder_task("gen")]}), &[], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let module = "out/node_fetch_user_effect.py";
    let want = json!({
        "read": [record_of(&sb, "ctx/contract.md")],
        "written": [record_of(&sb, module)],
    });
    assert_eq!(run.result("gen")["files"], want);
    assert_eq!(
        run.json["summary"]["files"],
        json!({"read": 1, "written": 1})
    );
    assert!(
        run.stderr.contains("; 1 file read, 1 written; trace:"),
        "{}",
        run.stderr
    );
    // The same on the trace's task, its attempt, and the events that ended them.
    let trace = run.trace();
    assert_eq!(trace["tasks"][0]["files"], want);
    assert_eq!(trace["tasks"][0]["attempts"][0]["files"], want);
    assert_eq!(events(&trace, "attempt_finished")[0]["files"], want);
    assert_eq!(events(&trace, "task_finished")[0]["files"], want);
}

#[test]
fn tasks_that_touch_no_files_have_no_files_field() {
    let sb = Sandbox::new();
    let run = run_loud(
        &sb,
        &json!({"tasks": [sh_task("t", "echo hi", &[])]}),
        &[],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.result("t").get("files").is_none(), "{}", run.stdout);
    assert!(run.json["summary"].get("files").is_none());
    assert!(!run.stderr.contains("file"), "{}", run.stderr);
}

const APP: &str = "from lib.util import helper\n\ndef main():\n    return helper()\n\nmain()\n";
const UTIL: &str = "def helper():\n    return 1 / 0\n";
const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"app.py\", line 6, in <module>\n    main()\n  File \"app.py\", line 4, in main\n    return helper()\n  File \"lib/util.py\", line 2, in helper\n    return 1 / 0\nZeroDivisionError: division by zero\n";

#[test]
fn debug_records_the_sources_it_analysed_and_the_files_its_trace_led_to() {
    let sb = Sandbox::new();
    write(&sb, "app.py", APP);
    write(&sb, "lib/util.py", UTIL);
    write(&sb, "unrelated.py", "x = 1\n");
    let batch = json!({"tasks": [{"task_id": "dbg", "agent": "debug", "input_data": {
        "problem_description": "main() crashes", "affected_files": ["app.py"],
        "error_traces": [TRACEBACK]}}]});
    let run = agents::run_offline(&sb, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let files = &run.result("dbg")["files"];
    // lib/util.py was not named, but the traceback pointed into it and it was opened.
    assert_eq!(
        files["read"],
        json!([record_of(&sb, "app.py"), record_of(&sb, "lib/util.py")])
    );
    assert!(files.get("written").is_none(), "{files}");
}

#[test]
fn a_failed_attempt_still_reports_its_files_on_the_result_and_on_each_attempt() {
    let sb = Sandbox::new();
    write(&sb, "app.py", APP);
    // The first file is read, the second does not exist: the analysis fails after a read.
    let batch = json!({"tasks": [{"task_id": "dbg", "agent": "debug", "retries": 1,
        "input_data": {"problem_description": "crash", "affected_files": ["app.py", "missing.py"]}}],
        "config": {"retry_backoff_ms": 0}});
    let run = agents::run_offline(&sb, &batch);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.status("dbg"), "error");
    let want = json!({"read": [record_of(&sb, "app.py")]});
    assert_eq!(run.result("dbg")["files"], want);
    let trace = run.trace();
    let attempts = trace["tasks"][0]["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty());
    for a in attempts {
        assert_eq!(a["files"], want, "{a}");
    }
}

/// Stands in for `claude -p`: leaves a file of its own in its working folder (and links out of
/// it, which must not be followed), then answers with the module in `FAKE_MODULE`.
const FAKE_CLAUDE: &str = r##"
import json, os, sys
sys.stdin.read()
os.makedirs("notes", exist_ok=True)
with open("notes/plan.md", "w") as f:
    f.write("# plan\nfetch the user\n")
os.symlink(os.environ["FAKE_SECRET"], "leak.txt")
os.symlink(os.path.dirname(os.environ["FAKE_SECRET"]), "up")
module = open(os.environ["FAKE_MODULE"]).read()
print(json.dumps({"type": "result", "is_error": False, "result": "```python\n" + module + "```"}))
"##;

#[test]
fn the_command_backend_records_what_the_cli_left_in_its_task_folder_also_on_failure() {
    let sb = Sandbox::new();
    write(&sb, "ctx/contract.md", CONTRACT);
    let script = sb.write("fake_claude.py", FAKE_CLAUDE);
    // Fails strict validation: the module is written for inspection and the task fails.
    let module = sb.write("module.txt", &modules::not_strict());
    let secret = sb.write("secret.txt", "do not read me");
    let argv = json!(["python3", script, "-p", "--output-format", "json"]).to_string();
    let mut task = coder_task("gen");
    task["input_data"]["backend"] = json!("command");
    task["input_data"]["validation_level"] = json!("strict");
    let run = run_loud(
        &sb,
        &json!({"tasks": [task]}),
        &["-q"],
        &[
            ("DISPATCH_LLM_COMMAND", &argv),
            ("FAKE_MODULE", module.to_str().unwrap()),
            ("FAKE_SECRET", secret.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("gen")["error"]["kind"], "validation_failed");
    let files = &run.result("gen")["files"];
    assert_eq!(files["read"], json!([record_of(&sb, "ctx/contract.md")]));
    let plan = b"# plan\nfetch the user\n";
    let mut written = files["written"].as_array().unwrap().clone();
    written.sort_by_key(|r| r["path"].as_str().unwrap().to_string());
    assert_eq!(
        written,
        [
            record_of(&sb, "out/node_fetch_user_effect.py"),
            json!({"path": "task-folder:notes/plan.md", "bytes": plan.len(), "digest": sha256(plan)}),
        ],
        "the runner's own prompt.txt and context.json, and both links, are not recorded: {files}"
    );
    assert!(!run.stdout.contains("do not read me"));
}

#[test]
fn the_html_report_lists_files_with_hostile_names_escaped() {
    let sb = Sandbox::new();
    let hostile = "<img src=x onerror=alert(1)>.py";
    write(&sb, hostile, "x = 1\n");
    let batch = json!({"tasks": [{"task_id": "dbg", "agent": "debug", "input_data": {
        "problem_description": "look", "affected_files": [hostile]}}]});
    let run = run_loud(&sb, &batch, &["-q", "--html", "report.html"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let record = record_of(&sb, hostile);
    assert_eq!(run.result("dbg")["files"]["read"], json!([record]));
    let html = std::fs::read_to_string(sb.path().join("report.html")).unwrap();
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;.py"),
        "the path is shown, escaped"
    );
    assert!(!html.contains("<img"), "no markup from a file name");
    let digest = record["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(html.contains(&format!("<td title=\"{digest}\">{}</td>", &hex[..12])));
    assert!(html.contains("<td>read</td>") && html.contains("<td>6 B</td>"));
    assert!(html.contains("files read"), "a summary card");
}

/// A batch whose `gen` succeeds (recording files) and whose `bad` fails.
fn half_failing_batch() -> Value {
    json!({"tasks": [coder_task("gen"), sh_task("bad", "exit 3", &[])]})
}

#[test]
fn rerun_failed_keeps_the_files_of_a_reused_result() {
    let sb = Sandbox::new();
    write(&sb, "ctx/contract.md", CONTRACT);
    let first = agents::run_offline(&sb, &half_failing_batch());
    assert_eq!(first.code, 1, "{}", first.stdout);
    let files = first.result("gen")["files"].clone();
    assert_eq!(files["written"].as_array().unwrap().len(), 1, "{files}");
    let trace = first.json["trace_file"].as_str().unwrap().to_string();
    let second = sb.run(&["run", "-q", "--rerun-failed", &trace], "");
    assert_eq!(second.code, 1, "{}", second.stdout);
    assert_eq!(second.result("gen")["reused"], true);
    assert_eq!(second.result("gen")["files"], files);
    assert_eq!(
        second.json["summary"]["files"],
        json!({"read": 1, "written": 1})
    );
    let trace = second.trace();
    assert_eq!(events(&trace, "task_finished")[0]["files"], files);
}

#[test]
fn a_resumed_run_keeps_the_files_of_tasks_finished_before_the_crash() {
    let sb = Sandbox::new();
    write(&sb, "ctx/contract.md", CONTRACT);
    let batch = json!({"tasks": [
        coder_task("gen"),
        sh_task("long", "if [ -e resumed ]; then echo done; else echo $$ > long.pid; exec sleep 297.53; fi", &[])
    ], "config": {"max_workers": 2}});
    let mut cmd = sb.cmd(&["run", "-q", "--trace-dir", "traces"]);
    for v in agents::LLM_VARS {
        cmd.env_remove(v);
    }
    let child = spawn_with_input(cmd, &batch.to_string());
    let journal = || {
        std::fs::read_dir(sb.path().join("traces"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "journal"))
    };
    assert!(
        eventually(Duration::from_secs(30), || {
            sb.path().join("long.pid").exists()
                && journal().is_some_and(|j| {
                    std::fs::read_to_string(j)
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.contains("\"task_finished\"") && l.contains("\"gen\""))
                })
        }),
        "the run did not get to the long task with gen finished"
    );
    send_signal(child.id(), libc::SIGKILL);
    let _ = wait_with_deadline(child, Duration::from_secs(30));
    let pid: i32 = std::fs::read_to_string(sb.path().join("long.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions; the task leads its process group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    std::fs::write(sb.path().join("resumed"), "").unwrap();
    let journal = journal().unwrap();
    let run = sb.run(&["resume", journal.to_str().unwrap()], "");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let want = json!({
        "read": [record_of(&sb, "ctx/contract.md")],
        "written": [record_of(&sb, "out/node_fetch_user_effect.py")],
    });
    assert_eq!(run.result("gen")["files"], want);
    assert_eq!(run.result("gen")["attempts"], 1, "gen did not run again");
    assert_eq!(
        run.json["summary"]["files"],
        json!({"read": 1, "written": 1})
    );
}

#[test]
fn a_cached_result_keeps_the_files_of_the_run_that_stored_it() {
    let sb = Sandbox::new();
    write(&sb, "ctx/contract.md", CONTRACT);
    let mut task = coder_task("gen");
    task["cache"] = json!({"inputs": ["ctx/contract.md"]});
    let batch = json!({"tasks": [task]});
    let first = agents::run_offline(&sb, &batch);
    assert_eq!(first.code, 0, "{}", first.stdout);
    let files = first.result("gen")["files"].clone();
    assert!(files["written"].is_array(), "{files}");
    // It does not run again (it would refuse to overwrite its module): the cache answers.
    let second = agents::run_offline(&sb, &batch);
    assert_eq!(second.code, 0, "{}", second.stdout);
    assert_eq!(second.result("gen")["cached"], true);
    assert_eq!(second.result("gen")["files"], files);
}

#[test]
fn a_redis_worker_sends_the_files_of_its_attempt_to_the_coordinator() {
    let redis = redis_support::RedisServer::start();
    let sb = Sandbox::new();
    // The worker has a workspace of its own: what is recorded there comes back through Redis.
    let remote = sb.path().join("remote");
    std::fs::create_dir_all(remote.join("ctx")).unwrap();
    std::fs::write(remote.join("ctx/contract.md"), CONTRACT).unwrap();
    let url = redis.url();
    let _w = redis_support::Worker::start(&remote, &url, "wf", &[]);
    let mut cmd = sb.cmd(&["run", "--redis", &url, "-q"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn_with_input(cmd, &json!({"tasks": [coder_task("gen")]}).to_string());
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(120)));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("gen")["executed_by"], "wf");
    assert_eq!(
        run.result("gen")["files"],
        json!({
            "read": [record_in(&remote, "ctx/contract.md")],
            "written": [record_in(&remote, "out/node_fetch_user_effect.py")],
        })
    );
    assert!(
        !sb.path().join("out").exists(),
        "written on the worker's side"
    );
}
