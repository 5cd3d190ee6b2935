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

const TOKEN: &str = "s3cr3t-value";
const KEPT_SECRET: &str = "kept-secret-4411";

/// `stable` succeeds and holds a secret; `deploy` holds one and fails on its first run only;
/// `plain` holds none and fails on its first run only.
fn secret_batch() -> Value {
    json!({"tasks": [
        {"task_id": "stable", "agent": "command",
         "input_data": {"argv": ["sh", "-c", "echo stable >> stable_runs"],
                        "env": {"SERVICE_API_KEY": KEPT_SECRET}}},
        {"task_id": "deploy", "agent": "command",
         "input_data": {"argv": ["sh", "-c",
            "test -f marker || { touch marker; exit 1; }; printf %s \"$API_TOKEN\" > seen"],
                        "env": {"API_TOKEN": TOKEN}}},
        sh_task("plain", "test -f plain_marker || { touch plain_marker; exit 1; }; echo plain", &[])
    ]})
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn seal<'a>(trace: &'a Value, id: &str) -> &'a Value {
    trace["digests"]["tasks"]
        .as_array()
        .expect("digests.tasks")
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no digest entry for {id}"))
}

#[test]
fn a_task_holding_a_secret_never_reruns_with_the_redacted_value() {
    let sb = Sandbox::new();
    let first = sb.run_json(&[], &secret_batch());
    assert_eq!(first.code, 1, "{}", first.stderr);
    assert_eq!(first.status("deploy"), "error");
    assert_eq!(first.status("plain"), "error");
    let trace_file = first.json["trace_file"].as_str().unwrap().to_string();

    // The trace holds neither the secrets nor anything to test a guess against without the key.
    let text = std::fs::read_to_string(sb.path().join(&trace_file)).unwrap();
    for secret in [TOKEN, KEPT_SECRET] {
        assert!(!text.contains(secret), "{secret} in the trace");
        assert!(
            !text.contains(&sha256_hex(secret)),
            "sha256({secret}) in the trace"
        );
    }
    let trace = first.trace();
    assert_eq!(trace["digests"]["algorithm"], "hmac-sha256");
    assert_eq!(
        seal(&trace, "deploy")["redacted"],
        json!(["/input_data/env/API_TOKEN"])
    );
    assert_eq!(
        seal(&trace, "stable")["redacted"],
        json!(["/input_data/env/SERVICE_API_KEY"])
    );
    assert!(seal(&trace, "plain").get("redacted").is_none());
    assert_eq!(seal(&trace, "deploy")["digest"].as_str().unwrap().len(), 64);
    let key = std::fs::read(sb.path().join("traces/.dispatch-key")).unwrap();
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(sb.path().join("traces/.dispatch-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Without -f: refused, naming the task with redacted values (not the one without), and
    // nothing ran.
    let run = sb.run(&["run", "--rerun-failed", &trace_file], "");
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/tasks/1");
    assert!(
        errors[0].1.contains("task 'deploy'")
            && errors[0].1.contains("/input_data/env/API_TOKEN")
            && errors[0].1.contains("-f"),
        "{errors:?}"
    );
    assert!(!sb.path().join("seen").exists());

    // A trace written before digests existed is judged by the marker it holds: still refused.
    let mut old = trace.clone();
    old.as_object_mut().unwrap().remove("digests");
    sb.write("old_trace.json", &old.to_string());
    let run = sb.run(&["run", "--rerun-failed", "old_trace.json"], "");
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.error_messages()[0].1.contains("task 'deploy'"));

    // With -f and a batch whose kept task's secret changed: refused as changed, naming where.
    let mut changed = secret_batch();
    changed["tasks"][0]["input_data"]["env"]["SERVICE_API_KEY"] = json!("another-secret-99");
    let path = sb.write("changed.json", &changed.to_string());
    let run = rerun_with_file(&sb, &trace_file, &path);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].1.contains("task 'stable'")
            && errors[0]
                .1
                .contains("changed since (input_data (a redacted value))"),
        "{errors:?}"
    );
    assert!(!sb.path().join("seen").exists());

    // With -f and the identical batch: accepted on the digests; the task sees the real value.
    let path = sb.write("same.json", &secret_batch().to_string());
    let run = rerun_with_file(&sb, &trace_file, &path);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("stable")["reused"], true);
    assert_eq!(run.result("plain")["output"]["stdout"], "plain\n");
    assert_eq!(
        std::fs::read_to_string(sb.path().join("seen")).unwrap(),
        TOKEN
    );
    let runs = std::fs::read_to_string(sb.path().join("stable_runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the kept task did not run again");
    let text =
        std::fs::read_to_string(sb.path().join(run.json["trace_file"].as_str().unwrap())).unwrap();
    assert!(!text.contains(TOKEN) && !text.contains(KEPT_SECRET));
}

#[test]
fn kept_tasks_carry_their_digest_through_a_rerun_from_the_trace() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "secretive", "agent": "command",
         "input_data": {"argv": ["sh", "-c", "echo once >> secretive_runs"],
                        "env": {"API_TOKEN": TOKEN}}},
        sh_task("flaky", "test -f fixed && echo ok", &[])
    ]});
    let first = sb.run_json(&[], &batch);
    assert_eq!(first.code, 1);
    let trace1 = first.json["trace_file"].as_str().unwrap().to_string();

    // `flaky` holds no secret: it reruns from the trace without -f, as before.
    let second = sb.run(&["run", "--rerun-failed", &trace1], "");
    assert_eq!(second.code, 1, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(second.result("secretive")["reused"], true);
    let trace2 = second.json["trace_file"].as_str().unwrap().to_string();
    assert_eq!(
        seal(&second.trace(), "secretive"),
        seal(&first.trace(), "secretive"),
        "the kept task's entry is carried, not recomputed from the redacted copy"
    );

    // The batch given again to a rerun of the second trace is matched on the carried digest.
    sb.write("fixed", "");
    let path = sb.write("batch.json", &batch.to_string());
    let third = rerun_with_file(&sb, &trace2, &path);
    assert_eq!(third.code, 0, "{}\n{}", third.stdout, third.stderr);
    assert_eq!(third.result("secretive")["reused"], true);
    let runs = std::fs::read_to_string(sb.path().join("secretive_runs")).unwrap();
    assert_eq!(runs.lines().count(), 1);

    // Without the key, a task with redacted values cannot be matched and counts as changed, and
    // the message says why; tasks without redacted values are still compared as before.
    std::fs::remove_file(sb.path().join("traces/.dispatch-key")).unwrap();
    let fourth = rerun_with_file(&sb, &trace2, &path);
    assert_eq!(fourth.code, 2, "{}", fourth.stdout);
    let errors = fourth.error_messages();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].1.contains("task 'secretive'")
            && errors[0].1.contains(".dispatch-key")
            && errors[0].1.contains("missing or was replaced"),
        "{errors:?}"
    );
}
