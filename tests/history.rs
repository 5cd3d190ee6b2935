//! The run history (`<trace_dir>/history.sqlite`) through the binary: it reorders the critical
//! path by measured durations, a cold run (or `--no-history`) schedules as before, concurrent
//! runs share the store, `"auto"` timeouts stay within their bounds, a damaged store is replaced,
//! `validate` estimates the makespan; and trace retention (`prune`, `trace_retention`) removes
//! only what it should.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Twelve chains of six short tasks, then one chain of three long tasks listed last: by task
/// count the short chains look longer, by time the long one is.
fn heavy_short_chain() -> Value {
    let mut tasks = Vec::new();
    for c in 0..12 {
        for k in 0..6 {
            let deps: Vec<String> = if k == 0 {
                vec![]
            } else {
                vec![format!("s{c}_{}", k - 1)]
            };
            tasks.push(json!({"task_id": format!("s{c}_{k}"), "agent": "command",
                "input_data": {"argv": ["sleep", "0.05"]}, "dependencies": deps}));
        }
    }
    for k in 0..3 {
        let deps: Vec<String> = if k == 0 {
            vec![]
        } else {
            vec![format!("L{}", k - 1)]
        };
        tasks.push(json!({"task_id": format!("L{k}"), "agent": "command",
            "input_data": {"argv": ["sleep", "0.3"]}, "dependencies": deps}));
    }
    json!({"tasks": tasks, "config": {"max_workers": 4}})
}

/// Task ids in the order their first attempt started.
fn start_order(trace: &Value) -> Vec<String> {
    events(trace, "attempt_started")
        .iter()
        .map(|e| e["task_id"].as_str().unwrap().to_string())
        .collect()
}

fn start_ms(trace: &Value, id: &str) -> f64 {
    events(trace, "attempt_started")
        .iter()
        .find(|e| e["task_id"] == id)
        .unwrap_or_else(|| panic!("{id} never started"))["elapsed_ms"]
        .as_f64()
        .unwrap()
}

fn history_file(sb: &Sandbox) -> std::path::PathBuf {
    sb.path().join("traces").join("history.sqlite")
}

/// Recorded attempts per task id.
fn recorded(path: &Path) -> std::collections::BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT task_id, count(*) FROM attempts GROUP BY task_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn history_puts_the_long_chain_first_and_a_cold_run_schedules_as_before() {
    let sb = Sandbox::new();
    let batch = heavy_short_chain();

    // Cold: no store yet. By task count, the first tasks of the short chains (six to go) start
    // first, in input order; the long chain (three to go) waits.
    let cold = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    assert_eq!(cold.code, 0, "{}", cold.stderr);
    assert!(history_file(&sb).is_file(), "created on first use");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(history_file(&sb)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "owner only, like the traces");
    let trace = cold.trace();
    let order = start_order(&trace);
    assert_eq!(order[..4], ["s0_0", "s1_0", "s2_0", "s3_0"], "{order:?}");
    let first_l = order.iter().position(|t| t == "L0").unwrap();
    assert!(first_l >= 12, "L0 started {first_l}th on a cold run");
    let cold_ms = cold.json["summary"]["total_time_ms"].as_f64().unwrap();

    // Every attempt was recorded.
    let rows = recorded(&history_file(&sb));
    assert_eq!(rows.len(), 75);
    assert!(rows.values().all(|&n| n == 1), "{rows:?}");

    // Warm: the long chain is the critical path in time and starts first.
    let warm = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    assert_eq!(warm.code, 0, "{}", warm.stderr);
    let trace = warm.trace();
    let order = start_order(&trace);
    assert_eq!(order[0], "L0", "{order:?}");
    let l0 = start_ms(&trace, "L0");
    for c in 0..12 {
        assert!(l0 <= start_ms(&trace, &format!("s{c}_0")), "L0 at {l0} ms");
    }
    // L1 follows L0 at once rather than queueing behind short tasks.
    assert!(start_ms(&trace, "L1") - start_ms(&trace, "L0") < 1000.0);
    let warm_ms = warm.json["summary"]["total_time_ms"].as_f64().unwrap();
    eprintln!("heavy short chain: cold {cold_ms} ms, with history {warm_ms} ms");

    // --no-history: exactly the cold order again, and nothing recorded.
    let off = sb.run_json(
        &["run", "-q", "--no-history", "--trace-dir", "traces"],
        &batch,
    );
    assert_eq!(off.code, 0);
    let order = start_order(&off.trace());
    assert_eq!(order[..4], ["s0_0", "s1_0", "s2_0", "s3_0"], "{order:?}");
    assert!(order.iter().position(|t| t == "L0").unwrap() >= 12);
    assert!(recorded(&history_file(&sb)).values().all(|&n| n == 2));

    // validate estimates the makespan and names the critical path in time.
    let v = sb.run_json(&["validate"], &batch);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let est = &v.json["estimate"];
    assert_eq!(est["critical_path"], json!(["L0", "L1", "L2"]));
    assert_eq!(est["tasks_with_history"], 75);
    assert_eq!(est["workers"], 4);
    let (cp, makespan) = (
        est["critical_path_seconds"].as_f64().unwrap(),
        est["makespan_seconds"].as_f64().unwrap(),
    );
    // 3 x 0.3 s on the path; 4.5 s of work on 4 workers.
    assert!((0.85..3.0).contains(&cp), "{cp}");
    assert!(
        makespan >= cp && (1.1..6.0).contains(&makespan),
        "{makespan}"
    );
    assert!(
        v.stderr.contains("estimated makespan") && v.stderr.contains("L0 -> L1 -> L2"),
        "{}",
        v.stderr
    );
}

#[test]
fn no_history_flag_and_config_switch_create_nothing() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [cmd_task("a", &["true"], &[])]});
    let run = sb.run_json(
        &["run", "-q", "--no-history", "--trace-dir", "traces"],
        &batch,
    );
    assert_eq!(run.code, 0);
    assert!(!history_file(&sb).exists());
    sb.write("dispatch.yaml", "history:\n  enabled: false\n");
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!history_file(&sb).exists());
    // validate without a store prints no estimate.
    let v = sb.run_json(&["validate"], &batch);
    assert!(v.json.get("estimate").is_none());
    assert!(!v.stderr.contains("estimated"));
}

#[test]
fn concurrent_runs_share_the_store() {
    let sb = Sandbox::new();
    let mut children = Vec::new();
    for r in 0..3 {
        let tasks: Vec<Value> = (0..60)
            .map(|i| cmd_task(&format!("r{r}_{i}"), &["true"], &[]))
            .collect();
        let batch = json!({"tasks": tasks, "config": {"max_workers": 16}});
        let cmd = sb.cmd(&["run", "-q", "--trace-dir", "traces"]);
        children.push(spawn_with_input(cmd, &batch.to_string()));
    }
    // And one more run of the same tasks as the first, at the same time.
    let tasks: Vec<Value> = (0..60)
        .map(|i| cmd_task(&format!("r0_{i}"), &["true"], &[]))
        .collect();
    let cmd = sb.cmd(&["run", "-q", "--trace-dir", "traces"]);
    children.push(spawn_with_input(
        cmd,
        &json!({"tasks": tasks, "config": {"max_workers": 16}}).to_string(),
    ));
    for child in children {
        let run = sb.to_run(wait_with_deadline(
            child,
            std::time::Duration::from_secs(120),
        ));
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(!run.stderr.contains("history"), "{}", run.stderr);
    }
    let rows = recorded(&history_file(&sb));
    assert_eq!(rows.len(), 180, "every task of every run");
    for (id, n) in rows {
        let want = if id.starts_with("r0_") { 2 } else { 1 };
        assert_eq!(n, want, "{id}");
    }
}

fn timeout_of(trace: &Value, id: &str) -> Value {
    events(trace, "attempt_started")
        .iter()
        .find(|e| e["task_id"] == id)
        .unwrap()
        .get("timeout")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn auto_timeouts_learn_from_history_within_bounds() {
    let sb = Sandbox::new();
    sb.write(
        "dispatch.yaml",
        "history:\n  adaptive_timeouts:\n    min_samples: 5\n    multiple: 3\n    min_seconds: 0.5\n    max_seconds: 2\n    fallback_seconds: 30\n",
    );
    // `quick` usually takes 0.05 s, and hangs once `slow` exists; `steady` takes 0.3 s
    // (3 x 0.3 = 0.9: inside the bounds); `explicit` has a number, which wins.
    let batch = json!({"tasks": [
        {"task_id": "quick", "agent": "command", "timeout_seconds": "auto",
         "input_data": {"argv": ["sh", "-c", "if [ -e slow ]; then sleep 10; else sleep 0.05; fi"]}},
        {"task_id": "steady", "agent": "command", "timeout_seconds": "auto",
         "input_data": {"argv": ["sleep", "0.3"]}},
        {"task_id": "explicit", "agent": "command", "timeout_seconds": 20,
         "input_data": {"argv": ["true"]}}
    ]});
    for n in 0..5 {
        let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let trace = run.trace();
        let t = timeout_of(&trace, "quick");
        assert_eq!(t["source"], "fallback", "run {n}: {t}");
        assert_eq!(t["seconds"], 30.0);
        assert_eq!(t["samples"], n);
        assert!(timeout_of(&trace, "explicit").is_null());
    }
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    let trace = run.trace();
    let quick = timeout_of(&trace, "quick");
    assert_eq!(quick["source"], "history", "{quick}");
    assert_eq!(quick["samples"], 5);
    // 3 x ~0.05 s is below the lower bound.
    assert_eq!(quick["seconds"], 0.5);
    let steady = timeout_of(&trace, "steady");
    let s = steady["seconds"].as_f64().unwrap();
    assert_eq!(steady["source"], "history");
    assert!((0.9..2.0).contains(&s), "{steady}");

    // The learned timeout is the one applied: the hang ends after 0.5 s, not 30.
    std::fs::write(sb.path().join("slow"), "").unwrap();
    let started = std::time::Instant::now();
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("quick"), "timeout");
    assert!(started.elapsed().as_secs_f64() < 9.0);

    // With a high multiple the upper bound holds.
    sb.write(
        "dispatch.yaml",
        "history:\n  adaptive_timeouts:\n    multiple: 100\n    max_seconds: 2\n",
    );
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    let steady = timeout_of(&run.trace(), "steady");
    assert_eq!(steady["seconds"], 2.0, "{steady}");

    // A configured default makes tasks without their own number "auto"; numbers still win.
    sb.write(
        "dispatch.yaml",
        "history:\n  adaptive_timeouts:\n    default: true\n",
    );
    let plain = json!({"tasks": [cmd_task("plain", &["true"], &[]),
        {"task_id": "explicit", "agent": "command", "timeout_seconds": 20,
         "input_data": {"argv": ["true"]}}]});
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &plain);
    let trace = run.trace();
    let t = timeout_of(&trace, "plain");
    assert_eq!(t["source"], "fallback");
    // The fallback is the ordinary timeout when none is configured.
    assert_eq!(t["seconds"], 300.0);
    assert!(timeout_of(&trace, "explicit").is_null());

    // A bad rule is a configuration error naming the key.
    sb.write(
        "dispatch.yaml",
        "history:\n  adaptive_timeouts:\n    min_seconds: 5\n    max_seconds: 1\n",
    );
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &plain);
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains("history.adaptive_timeouts.min_seconds"),
        "{}",
        run.stderr
    );
}

#[test]
fn auto_is_the_only_word_a_timeout_takes() {
    let sb = Sandbox::new();
    let run = sb.run_json(
        &["validate"],
        &json!({"tasks": [{"task_id": "a", "agent": "command", "timeout_seconds": "fast",
            "input_data": {"argv": ["true"]}}]}),
    );
    assert_eq!(run.code, 2);
    let errors = run.error_messages();
    assert!(
        errors.iter().any(|(p, _)| p == "/tasks/0/timeout_seconds"),
        "{errors:?}"
    );
}

#[test]
fn a_damaged_store_is_moved_aside_and_replaced() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path().join("traces")).unwrap();
    std::fs::write(history_file(&sb), vec![0x5a_u8; 8192]).unwrap();
    let batch = json!({"tasks": [cmd_task("a", &["true"], &[])]});
    let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status("a"), "success");
    assert!(run.stderr.contains("damaged"), "{}", run.stderr);
    let aside: Vec<_> = std::fs::read_dir(sb.path().join("traces"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0x5a_u8; 8192]);
    assert_eq!(recorded(&history_file(&sb)).get("a"), Some(&1));
}

/// Sets a file's modification time `days` ago.
fn age(path: &Path, days: u32) {
    let ok = Command::new("touch")
        .arg("-d")
        .arg(format!("{days} days ago"))
        .arg("-h")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prune_removes_only_old_finished_runs() {
    let sb = Sandbox::new();
    let dir = sb.path().join("traces");
    std::fs::create_dir_all(dir.join("dispatch-sub.json")).unwrap();
    let outside = sb.path().join("outside.json");
    std::fs::write(&outside, "keep me").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("dispatch-link.json")).unwrap();
    for (name, days) in [
        ("dispatch-old.json", 40),
        ("dispatch-old.journal", 40),
        ("dispatch-mid.json", 10),
        ("dispatch-mid.journal", 10),
        ("dispatch-new.json", 1),
        ("dispatch-new.journal", 1),
        // A run that never finished: journal, no trace.
        ("dispatch-unfinished.journal", 60),
        ("dispatch-x.json.tmp", 60),
        ("history.sqlite", 60),
        ("notes.txt", 60),
    ] {
        std::fs::write(dir.join(name), "x".repeat(100)).unwrap();
        age(&dir.join(name), days);
    }
    age(&dir.join("dispatch-link.json"), 90);
    age(&dir.join("dispatch-sub.json"), 90);
    let before = names(&dir);

    let help = sb.cmd(&["prune", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--dry-run"));

    let none = sb.run(&["prune", "--trace-dir", "traces"], "");
    assert_eq!(none.code, 2, "no limit given");

    let dry = sb.run(
        &[
            "prune",
            "--trace-dir",
            "traces",
            "--max-age-days",
            "30",
            "--dry-run",
        ],
        "",
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.json["status"], "dry_run");
    let removed: Vec<&str> = dry.json["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["old"]);
    assert_eq!(dry.json["kept_unfinished"], json!(["unfinished"]));
    assert_eq!(names(&dir), before, "a dry run removes nothing");

    let run = sb.run(
        &["prune", "--trace-dir", "traces", "--max-age-days", "30"],
        "",
    );
    assert_eq!(run.code, 0);
    assert_eq!(run.json["removed_bytes"], 200);
    let mut want = before.clone();
    want.retain(|n| !n.starts_with("dispatch-old."));
    assert_eq!(names(&dir), want);

    // By count: the newest finished run stays; the unfinished one is never counted out.
    let run = sb.run(&["prune", "--trace-dir", "traces", "--max-count", "1"], "");
    assert_eq!(run.code, 0);
    want.retain(|n| !n.starts_with("dispatch-mid."));
    assert_eq!(names(&dir), want);

    // By size: even a tiny limit keeps the newest run.
    let run = sb.run(&["prune", "--trace-dir", "traces", "--max-bytes", "1"], "");
    assert_eq!(run.code, 0);
    assert_eq!(names(&dir), want);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    assert!(dir.join("dispatch-sub.json").is_dir());
}

#[test]
fn trace_retention_applies_at_the_end_of_a_run() {
    let sb = Sandbox::new();
    sb.write("dispatch.yaml", "trace_retention:\n  max_count: 2\n");
    let dir = sb.path().join("traces");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dispatch-unfinished.journal"), "{}").unwrap();
    age(&dir.join("dispatch-unfinished.journal"), 100);
    let batch = json!({"tasks": [cmd_task("a", &["true"], &[])]});
    let mut traces = Vec::new();
    for _ in 0..4 {
        let run = sb.run_json(&["run", "-q", "--trace-dir", "traces"], &batch);
        assert_eq!(run.code, 0, "{}", run.stderr);
        traces.push(sb.path().join(run.json["trace_file"].as_str().unwrap()));
        // Distinct modification times order the runs.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!traces[0].exists() && !traces[1].exists());
    assert!(traces[2].exists() && traces[3].exists());
    assert!(!traces[1].with_extension("journal").exists());
    assert!(traces[3].with_extension("journal").exists());
    assert!(dir.join("dispatch-unfinished.journal").exists());
    assert!(history_file(&sb).exists());
}
