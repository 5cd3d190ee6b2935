//! `--result compact` (and `?result=compact` in serve mode): the agent-sized result document,
//! through the built binary.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{Value, json};

/// A failing test run as test frameworks print it: progress and the failure report on stdout,
/// one line on stderr, exit 101.
const TEST_LIKE: &str = r#"for i in $(seq 1 120); do echo "test suite::case_$i ... ok"; done
echo "test suite::parses_dates ... FAILED"
echo
echo "failures:"
echo
echo "---- suite::parses_dates stdout ----"
echo "thread 'suite::parses_dates' panicked at src/dates.rs:42:9:"
echo "assertion \`left == right\` failed"
echo "  left: 2026"
echo " right: 2025"
echo
echo "test result: FAILED. 120 passed; 1 failed; 0 ignored"
echo "error: test failed, to rerun pass \`--lib\`" >&2
exit 101"#;

/// 200 tasks: 195 that succeed and print something, a test-like failure, a failure on stderr,
/// a timeout, a task skipped behind the first failure, and one that fails without output.
fn big_batch() -> Value {
    let mut tasks: Vec<Value> = (0..195)
        .map(|i| {
            sh_task(
                &format!("ok{i}"),
                &format!("echo 'success output of task {i}, a line long enough to matter'"),
                &[],
            )
        })
        .collect();
    tasks.push(sh_task("unit", TEST_LIKE, &[]));
    tasks.push(sh_task(
        "lint",
        "echo 'warning: unused variable' >&2; echo 'error[E0425]: cannot find value `x`' >&2; exit 2",
        &[],
    ));
    let mut slow = cmd_task("slow", &["sleep", "30"], &[]);
    slow["timeout_seconds"] = json!(0.5);
    tasks.push(slow);
    tasks.push(sh_task("package", "echo packaged", &["unit"]));
    tasks.push(cmd_task("quiet", &["false"], &[]));
    json!({"tasks": tasks, "config": {"max_workers": 8}})
}

fn not_succeeded<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["not_succeeded"]
        .as_array()
        .expect("not_succeeded")
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {doc}"))
}

#[test]
fn two_hundred_tasks_give_a_small_document_with_the_failures_tails() {
    let sb = Sandbox::new();
    let batch_file = sb.write("batch.json", &big_batch().to_string());
    let run = sb.run(
        &[
            "run",
            "-q",
            "-f",
            "batch.json",
            "--result",
            "compact",
            "-o",
            "full.json",
        ],
        "",
    );
    assert!(
        run.stdout.len() < 8 * 1024,
        "compact document is {} bytes:\n{}",
        run.stdout.len(),
        run.stdout
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let doc = &run.json;
    assert_eq!(doc["result_form"], "compact");
    assert_eq!(doc["status"], "partial");
    assert!(doc.get("results").is_none(), "no per-task list: {doc}");
    assert_eq!(doc["summary"]["total_tasks"], 200);
    assert_eq!(doc["summary"]["successful"], 195);
    // 195 successes are only counted.
    assert!(doc.get("succeeded").is_none(), "{doc}");
    let ids: Vec<&str> = doc["not_succeeded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["unit", "lint", "slow", "package", "quiet"]);

    // The test-like failure: its report is the end of stdout, which is what is kept.
    let unit = not_succeeded(doc, "unit");
    assert_eq!(unit["status"], "error");
    assert_eq!(unit["error"]["kind"], "exit_status");
    assert_eq!(unit["exit_code"], 101);
    let stdout = unit["stdout"]["text"].as_str().unwrap();
    assert_eq!(stdout.lines().count(), 20, "{stdout}");
    assert!(stdout.ends_with("test result: FAILED. 120 passed; 1 failed; 0 ignored\n"));
    for line in [
        "test suite::parses_dates ... FAILED",
        "---- suite::parses_dates stdout ----",
        "assertion `left == right` failed",
    ] {
        assert!(stdout.contains(line), "{line} missing from {stdout}");
    }
    assert!(!stdout.contains("case_1 ..."), "{stdout}");
    // 120 + 11 lines printed, 20 kept.
    assert_eq!(unit["stdout"]["cut_lines"], 111);
    let full_stdout_len = 131; // lines
    assert!(unit["stdout"]["cut_bytes"].as_u64().unwrap() > 111 * 20);
    assert_eq!(
        unit["stderr"]["text"],
        "error: test failed, to rerun pass `--lib`\n"
    );
    assert!(unit["stderr"].get("cut_lines").is_none());

    let lint = not_succeeded(doc, "lint");
    assert_eq!(
        lint["stderr"]["text"],
        "warning: unused variable\nerror[E0425]: cannot find value `x`\n"
    );
    assert!(lint.get("stdout").is_none(), "empty stdout is left out");
    assert_eq!(not_succeeded(doc, "slow")["status"], "timeout");
    assert_eq!(not_succeeded(doc, "slow")["error"]["kind"], "timeout");
    let package = not_succeeded(doc, "package");
    assert_eq!(package["status"], "skipped");
    assert_eq!(package["error"]["kind"], "dependency_failed");
    assert_eq!(package["attempts"], 0);
    assert_eq!(not_succeeded(doc, "quiet")["exit_code"], 1);

    // Where the full result is, and how to rerun what failed.
    assert_eq!(doc["output_file"], "full.json");
    let full = read_json(&sb.path().join("full.json"));
    assert_eq!(full["results"].as_array().unwrap().len(), 200);
    assert_eq!(full["run_id"], doc["run_id"]);
    let full_unit = &full["results"][195];
    assert_eq!(full_unit["task_id"], "unit");
    assert_eq!(
        full_unit["output"]["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .count(),
        full_stdout_len
    );
    assert!(
        std::fs::metadata(sb.path().join("full.json"))
            .unwrap()
            .len()
            > 8 * 8 * 1024,
        "the full document is the big one"
    );
    let trace = sb.path().join(doc["trace_file"].as_str().unwrap());
    assert!(trace.is_file());
    let rerun = doc["rerun_command"].as_str().unwrap();
    assert_eq!(
        rerun,
        format!(
            "dispatch_runner run --rerun-failed {} -f batch.json",
            doc["trace_file"].as_str().unwrap()
        )
    );
    assert!(batch_file.is_file());

    // The rerun command works as printed: it runs only the five again, reusing 195 outputs.
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &format!("{rerun} -q --result compact")])
        .current_dir(sb.path())
        .env("PATH", path);
    let again = sb.run_cmd(cmd, "");
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(again.json["previous_run_id"], doc["run_id"]);
    assert_eq!(again.json["summary"]["successful"], 195);
    assert_eq!(again.json["not_succeeded"].as_array().unwrap().len(), 5);
}

#[test]
fn exit_codes_are_those_of_the_full_result() {
    let sb = Sandbox::new();
    let batch = big_batch();
    let full = sb.run_json(&["run", "-q"], &batch);
    let compact = sb.run_json(&["run", "-q", "--result", "compact"], &batch);
    assert_eq!(full.code, 1);
    assert_eq!(compact.code, full.code);
    assert!(full.stdout.len() > 4 * compact.stdout.len());
    // Without -o the full result is only in the trace.
    assert!(compact.json.get("output_file").is_none());

    let ok = json!({"tasks": [cmd_task("a", &["true"], &[]), cmd_task("b", &["true"], &["a"])]});
    let run = sb.run_json(&["run", "-q", "--result", "compact"], &ok);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["status"], "success");
    assert_eq!(run.json["succeeded"], json!(["a", "b"]));
    assert_eq!(run.json["not_succeeded"], json!([]));
    assert!(run.json.get("rerun_command").is_none());

    let explicit_full = sb.run_json(&["run", "-q", "--result", "full"], &ok);
    assert_eq!(explicit_full.json["results"].as_array().unwrap().len(), 2);
    let bad = sb
        .cmd(&["run", "-q", "--result", "short"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap refuses an unknown form");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("compact"));
}

#[test]
fn tail_limits_and_cut_markers() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        sh_task("many", "seq 1 1000; exit 1", &[]),
        sh_task("wide", "printf 'x%.0s' $(seq 1 5000); echo; exit 1", &[]),
    ]});
    let run = sb.run_json(
        &[
            "run",
            "-q",
            "--result",
            "compact",
            "--tail-lines",
            "5",
            "--tail-bytes",
            "300",
        ],
        &batch,
    );
    assert_eq!(run.code, 1);
    let many = not_succeeded(&run.json, "many");
    assert_eq!(many["stdout"]["text"], "996\n997\n998\n999\n1000\n");
    assert_eq!(many["stdout"]["cut_lines"], 995);
    let printed = (1..=1000).map(|i| format!("{i}\n")).collect::<String>();
    assert_eq!(
        many["stdout"]["cut_bytes"].as_u64().unwrap() as usize,
        printed.len() - "996\n997\n998\n999\n1000\n".len()
    );
    let wide = not_succeeded(&run.json, "wide");
    let text = wide["stdout"]["text"].as_str().unwrap();
    assert_eq!(text.len(), 300, "one line longer than the byte cap");
    assert_eq!(wide["stdout"]["cut_bytes"], 5001 - 300);

    let none = sb.run_json(
        &["run", "-q", "--result", "compact", "--tail-lines", "0"],
        &batch,
    );
    assert_eq!(not_succeeded(&none.json, "many")["stdout"]["text"], "");
    let too_many = sb.cmd(&["run", "--tail-lines", "10001"]).output().unwrap();
    assert_eq!(too_many.status.code(), Some(2));
}

#[test]
fn many_failures_keep_tails_for_the_first_twenty_only() {
    let sb = Sandbox::new();
    let tasks: Vec<Value> = (0..60)
        .map(|i| {
            sh_task(
                &format!("f{i}"),
                &format!("seq 1 100; echo 'failure {i}' >&2; exit 1"),
                &[],
            )
        })
        .collect();
    let run = sb.run_json(
        &["run", "-q", "--result", "compact"],
        &json!({"tasks": tasks, "config": {"max_workers": 8}}),
    );
    assert_eq!(run.code, 1);
    let list = run.json["not_succeeded"].as_array().unwrap();
    assert_eq!(list.len(), 60, "every failure is listed");
    let with_tails = list.iter().filter(|t| t.get("stderr").is_some()).count();
    assert_eq!(with_tails, 20);
    assert_eq!(list[0]["stderr"]["text"], "failure 0\n");
    assert_eq!(list[59]["output_omitted"], true);
    assert_eq!(
        list[59]["error"]["message"],
        "'sh' exited with code 1: failure 59"
    );
    assert!(run.stdout.len() < 64 * 1024, "{} bytes", run.stdout.len());
}

#[test]
fn secrets_are_redacted_before_the_tail_is_cut() {
    let sb = Sandbox::new();
    let secret = "sk-live-0123456789abcdefghijklmnop";
    let mut task = sh_task(
        "leak",
        "echo \"token is $API_TOKEN\"; echo \"again: $API_TOKEN\" >&2; echo done; exit 1",
        &[],
    );
    task["input_data"]["env"] = json!({"API_TOKEN": secret});
    let batch = json!({"tasks": [task]});
    // A byte cap that would start the tail inside the secret if it were cut before redaction.
    for bytes in ["20", "30", "4096"] {
        let run = sb.run_json(
            &[
                "run",
                "-q",
                "--result",
                "compact",
                "--tail-bytes",
                bytes,
                "-o",
                "full.json",
            ],
            &batch,
        );
        assert_eq!(run.code, 1);
        for part in [secret, &secret[10..], &secret[..12]] {
            assert!(!run.stdout.contains(part), "{part} leaked: {}", run.stdout);
        }
        let full = std::fs::read_to_string(sb.path().join("full.json")).unwrap();
        assert!(!full.contains(secret));
    }
    let run = sb.run_json(&["run", "-q", "--result", "compact"], &batch);
    let leak = not_succeeded(&run.json, "leak");
    assert_eq!(leak["stdout"]["text"], "token is [REDACTED]\ndone\n");
    assert_eq!(leak["stderr"]["text"], "again: [REDACTED]\n");
}

#[test]
fn serve_answers_compact_results_on_request() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--trace-dir", "t"])
        .env_remove("DISPATCH_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = common::listening_base(&mut child);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = common::client();
    let call = |method: reqwest::Method, path: &str, body: Option<String>| {
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        runtime.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        })
    };
    let batch = json!({"tasks": [
        sh_task("ok", "echo fine", &[]),
        sh_task("bad", "seq 1 50; echo broken >&2; exit 3", &[]),
    ]})
    .to_string();

    let (status, doc) = call(
        reqwest::Method::POST,
        "/v1/dispatch?result=compact",
        Some(batch.clone()),
    );
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["result_form"], "compact");
    assert!(doc.get("results").is_none());
    assert_eq!(doc["succeeded"], json!(["ok"]));
    let bad = not_succeeded(&doc, "bad");
    assert_eq!(bad["exit_code"], 3);
    assert_eq!(bad["stdout"]["cut_lines"], 30);
    assert_eq!(bad["stderr"]["text"], "broken\n");
    assert!(doc.get("rerun_command").is_none(), "no rerun over HTTP");

    let run_id = doc["run_id"].as_str().unwrap();
    let (status, view) = call(
        reqwest::Method::GET,
        &format!("/v1/runs/{run_id}?result=compact"),
        None,
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "finished");
    assert_eq!(view["result_form"], "compact");
    assert!(view.get("events").is_none(), "not the trace: {view}");
    assert_eq!(view["not_succeeded"], doc["not_succeeded"]);

    let (status, full) = call(reqwest::Method::POST, "/v1/dispatch", Some(batch.clone()));
    assert_eq!(status, 200);
    assert_eq!(full["results"].as_array().unwrap().len(), 2);
    let (status, err) = call(
        reqwest::Method::POST,
        "/v1/dispatch?result=tiny",
        Some(batch),
    );
    assert_eq!(status, 400);
    assert!(
        err.to_string().contains("result must be full or compact"),
        "{err}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
