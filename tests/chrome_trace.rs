//! The `--chrome-trace` file checked against the rules of Perfetto's JSON importer (no
//! trace_processor is installable offline, so the rules are checked here; see the module comment
//! of src/reporter/chrome_trace.rs for where each comes from): every track is named, no pid or
//! tid is 0 (Perfetto's idle task), no worker or scheduler track is a process's main thread
//! (tid == pid), metadata carries no timestamp, and complete events on a track never overlap.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};

/// Three workers, a task that fails once and passes on retry (a retry instant on the scheduler
/// track), a named breaker that opens (a process instant), many short tasks.
fn batch() -> Value {
    let mut tasks: Vec<Value> = (0..9)
        .map(|i| sh_task(&format!("quick{i}"), "sleep 0.05", &[]))
        .collect();
    let mut flaky = sh_task(
        "flaky",
        "if [ -e flaky.marker ]; then echo ok; else touch flaky.marker; exit 3; fi",
        &[],
    );
    flaky["retries"] = json!(2);
    tasks.push(flaky);
    for i in 0..2 {
        let mut t = sh_task(&format!("db{i}"), "exit 1", &["quick0"]);
        t["breaker"] = json!("staging-db");
        tasks.push(t);
    }
    tasks.push(sh_task("after", "echo done", &["flaky", "quick8"]));
    json!({"tasks": tasks, "config": {"max_workers": 3, "retry_backoff_ms": 50,
        "circuit_breaker": {"failure_threshold": 1, "recovery_timeout_seconds": 600}}})
}

fn ids(e: &Value) -> (u64, u64) {
    (
        e["pid"].as_u64().unwrap_or_else(|| panic!("pid: {e}")),
        e["tid"].as_u64().unwrap_or_else(|| panic!("tid: {e}")),
    )
}

#[test]
fn chrome_trace_follows_perfetto_import_rules() {
    let sb = Sandbox::new();
    let run = sb.run_json(
        &["run", "--quiet", "--chrome-trace", "chrome.json"],
        &batch(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let trace = run.trace();
    let chrome = read_json(&sb.path().join("chrome.json"));
    let events = chrome["traceEvents"].as_array().unwrap();

    let mut thread_names: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut sorted_threads = BTreeSet::new();
    let mut process_names = BTreeSet::new();
    for e in events.iter().filter(|e| e["ph"] == "M") {
        assert!(e.get("ts").is_none(), "metadata without a timestamp: {e}");
        let (pid, tid) = ids(e);
        match e["name"].as_str().unwrap() {
            "thread_name" => {
                let name = e["args"]["name"].as_str().unwrap().to_string();
                assert!(
                    thread_names.insert((pid, tid), name).is_none(),
                    "one name per track: {e}"
                );
            }
            "thread_sort_index" => {
                assert!(e["args"]["sort_index"].is_i64(), "{e}");
                sorted_threads.insert((pid, tid));
            }
            "process_name" => {
                process_names.insert(pid);
            }
            other => panic!("unexpected metadata {other}: {e}"),
        }
    }

    // No 0 ids, and no named track is a process's main thread.
    for e in events {
        if e["ph"] == "i" && e["s"] == "g" {
            continue;
        }
        let (pid, tid) = ids(e);
        assert!(pid != 0 && tid != 0, "0 is Perfetto's idle task: {e}");
        assert_ne!(tid, pid, "tid == pid is the main thread: {e}");
        assert!(process_names.contains(&pid), "process {pid} has a name");
    }

    // Every track that holds an event is named and ordered.
    let mut per_track: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap();
        let on_thread = matches!(ph, "X" | "B" | "E") || (ph == "i" && e["s"] == "t");
        if !on_thread {
            continue;
        }
        let track = ids(e);
        assert!(thread_names.contains_key(&track), "unnamed track: {e}");
        assert!(sorted_threads.contains(&track), "no sort index: {e}");
        let ts = e["ts"].as_u64().unwrap_or_else(|| panic!("whole µs: {e}"));
        let dur = if ph == "X" {
            e["dur"].as_u64().unwrap_or_else(|| panic!("dur >= 0: {e}"))
        } else {
            0
        };
        per_track.entry(track).or_default().push((ts, dur));
    }
    // Events on a track come in time order and complete events do not overlap (Perfetto
    // requires duration events on a track to nest).
    for (track, spans) in &per_track {
        for w in spans.windows(2) {
            assert!(
                w[0].0 <= w[1].0 && w[0].0 + w[0].1 <= w[1].0,
                "track {track:?} ({}): {w:?}",
                thread_names[track]
            );
        }
    }

    // One complete event per attempt, on the track named after the attempt's worker.
    let complete: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let mut attempts = 0;
    for t in trace["tasks"].as_array().unwrap() {
        for a in t["attempts"].as_array().unwrap() {
            attempts += 1;
            let e = complete
                .iter()
                .find(|e| {
                    e["args"]["task_id"] == t["task_id"] && e["args"]["attempt"] == a["attempt"]
                })
                .unwrap_or_else(|| {
                    panic!("no event for {} attempt {}", t["task_id"], a["attempt"])
                });
            assert_eq!(
                thread_names[&ids(e)],
                format!("worker {}", a["worker"]),
                "{e}"
            );
        }
    }
    assert_eq!(complete.len(), attempts);
    let workers: BTreeSet<&str> = thread_names
        .values()
        .map(String::as_str)
        .filter(|n| n.starts_with("worker "))
        .collect();
    assert!(workers.len() >= 2, "several lanes were used: {workers:?}");
    assert_eq!(
        thread_names.values().filter(|n| *n == "scheduler").count(),
        1
    );

    // The scheduler track carries the retry, the process track the breaker change.
    let retry = events
        .iter()
        .find(|e| e["ph"] == "i" && e["name"] == "retry flaky")
        .expect("retry instant");
    assert_eq!(thread_names[&ids(retry)], "scheduler");
    let breaker = events
        .iter()
        .find(|e| e["ph"] == "i" && e["name"].as_str().unwrap().starts_with("breaker "))
        .expect("breaker instant");
    assert_eq!(breaker["s"], "p");
}
