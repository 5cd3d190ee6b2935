//! Memory and scale: the runner's memory does not grow with every task's events and outputs
//! (they are on disk, in the journal, and read back one task at a time for the trace and the
//! result), outputs still reach the dependents that reference them, and the trace and result
//! written piece by piece are the documents the in-memory record would give, byte for byte.

mod common;

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::Sandbox;
use dispatch_runner::events::{Event, EventSink};
use dispatch_runner::reporter::trace::{TRACE_FORMAT, Trace, read_trace, write_json_atomic};
use dispatch_runner::reporter::{Recorder, RunResult};
use dispatch_runner::{RunOptions, RunSettings, validate_value};
use serde_json::{Value, json};

/// Runs the binary on `batch_file` with stdout to `out`, and returns its exit code and peak
/// resident memory in bytes (from `wait4`, the kernel's own count for that one child).
// The child is reaped by `wait4` below, which std's `Child` cannot know.
#[allow(clippy::zombie_processes)]
fn run_measured(sandbox: &Sandbox, args: &[&str], out: File) -> (i32, u64) {
    let child = sandbox
        .cmd(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn");
    let measured = common::wait_with_rusage(child.id());
    // The child is reaped by `wait4`; `Child` is only dropped (it never waits on its own).
    drop(child);
    measured
}

#[test]
fn fifty_thousand_tasks_run_in_bounded_memory() {
    const N: usize = 50_000;
    let sandbox = Sandbox::new();
    let tasks: Vec<Value> = (0..N)
        .map(|i| json!({"task_id": format!("t{i}"), "agent": "command", "input_data": {"argv": ["true"]}}))
        .collect();
    let batch = sandbox.path().join("batch.json");
    std::fs::write(
        &batch,
        serde_json::to_vec(&json!({"tasks": tasks})).unwrap(),
    )
    .unwrap();
    let out_path = sandbox.path().join("out.json");
    let started = Instant::now();
    let (code, peak) = run_measured(
        &sandbox,
        &[
            "run",
            "-q",
            "-f",
            batch.to_str().unwrap(),
            "--max-workers",
            "64",
            "--trace-dir",
            "traces",
        ],
        File::create(&out_path).unwrap(),
    );
    let took = started.elapsed();
    assert_eq!(code, 0, "exit code");
    // Before the record moved to disk this run peaked at about 1 GB (21 KB a task); it now
    // stays near 40 MB. 200 MB leaves room for a debug build and a different allocator.
    eprintln!(
        "{N} tasks: peak {} MB in {:.1}s",
        peak / 1_000_000,
        took.as_secs_f64()
    );
    assert!(
        peak < 200_000_000,
        "peak resident memory {peak} bytes for {N} tasks"
    );

    // Everything is still there: every result, in order, and the trace with every event.
    let doc: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(doc["status"], "success");
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), N);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["task_id"], format!("t{i}"));
        assert_eq!(r["status"], "success");
        assert_eq!(r["output"]["exit_code"], 0);
        assert_eq!(r["attempts"], 1);
    }
    let trace = read_trace(&sandbox.path().join(doc["trace_file"].as_str().unwrap())).unwrap();
    assert_eq!(trace.run.tasks.len(), N);
    assert_eq!(trace.batch.tasks.len(), N);
    // run_started, then ready, attempt started, attempt finished, finished for each task, then
    // run_finished.
    assert_eq!(trace.run.events.len(), 4 * N + 2);
    assert!(
        trace
            .run
            .tasks
            .iter()
            .all(|t| t.attempts.len() == 1 && t.output.is_some())
    );
}

#[test]
fn outputs_reach_every_dependent_after_others_have_finished() {
    let sandbox = Sandbox::new();
    let flag = sandbox.path().join("failed-once");
    // `a`'s output is read by `b` at once, by `late` after many unrelated tasks and after `b`
    // finished, and by `flaky` on its second attempt. `z` has no dependents: its output leaves
    // memory at once and must still be in the result.
    let mut tasks = vec![
        json!({"task_id": "a", "agent": "command", "input_data": {"argv": ["echo", "from-a"]}}),
        json!({"task_id": "z", "agent": "command", "input_data": {"argv": ["echo", "from-z"]}}),
        json!({"task_id": "b", "agent": "command", "dependencies": ["a"],
               "input_data": {"argv": ["echo", "b got {{tasks.a.output.stdout}}"]}}),
        json!({"task_id": "flaky", "agent": "command", "dependencies": ["a", "b"], "retries": 2,
               "input_data": {"argv": ["sh", "-c",
                   "if [ -e \"$1\" ]; then echo \"flaky got $2\"; else touch \"$1\"; exit 1; fi",
                   "sh", flag.to_str().unwrap(), "{{tasks.a.output.stdout}}"]}}),
    ];
    let fillers: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    for f in &fillers {
        tasks.push(
            json!({"task_id": f, "agent": "command", "dependencies": ["b"],
                          "input_data": {"argv": ["true"]}}),
        );
    }
    let mut late_deps = vec![json!("a")];
    late_deps.extend(fillers.iter().map(|f| json!(f)));
    tasks.push(
        json!({"task_id": "late", "agent": "command", "dependencies": late_deps,
                      "input_data": {"argv": ["echo", "late got {{tasks.a.output.stdout}}"]}}),
    );
    let batch = json!({"tasks": tasks, "config": {"max_workers": 4, "retry_backoff_ms": 10}});
    let run = sandbox.run(&["run"], &batch.to_string());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result("b")["output"]["stdout"], "b got from-a\n\n");
    assert_eq!(
        run.result("late")["output"]["stdout"],
        "late got from-a\n\n"
    );
    assert_eq!(
        run.result("flaky")["output"]["stdout"],
        "flaky got from-a\n\n"
    );
    assert_eq!(run.result("flaky")["attempts"], 2);
    assert_eq!(run.result("z")["output"]["stdout"], "from-z\n");
    assert_eq!(run.result("a")["output"]["stdout"], "from-a\n");
    // The trace has the outputs too.
    let trace = run.trace();
    let a = trace["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "a")
        .unwrap();
    assert_eq!(a["output"]["stdout"], "from-a\n");
}

/// A sink that folds the events into the in-memory record, as the runner did before.
struct Shared(Arc<Mutex<Recorder>>);

impl EventSink for Shared {
    fn on_event(&mut self, event: &Event) {
        self.0.lock().unwrap().on_event(event);
    }
}

#[test]
fn trace_and_result_read_back_from_the_journal_equal_the_in_memory_record() {
    let dir = tempfile::tempdir().unwrap();
    let batch = json!({"tasks": [
        {"task_id": "a", "agent": "command", "description": "makes a value",
         "input_data": {"argv": ["sh", "-c", "echo '{\"n\": 1.5}'; echo warn >&2"],
                        "env": {"SERVICE_TOKEN": "s3cret-value-1"}}},
        {"task_id": "b", "agent": "command", "dependencies": ["a"],
         "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}", "s3cret-value-1",
                                 "http://user:pw@example.com/x?api_key=k1"]}},
        {"task_id": "c", "agent": "command", "retries": 1, "timeout_seconds": 5.5,
         "input_data": {"argv": ["false"]}},
        {"task_id": "d", "agent": "command", "dependencies": ["c"], "input_data": {"argv": ["true"]}},
        {"task_id": "e", "agent": "command", "dependencies": ["d", "a"], "input_data": {"argv": ["true"]}},
        {"task_id": "f", "agent": "command", "input_data": {"argv": ["sleep", "5"]}, "timeout_seconds": 0.3}
    ], "config": {"max_workers": 3, "retry_backoff_ms": 5, "trace_dir": dir.path().to_str().unwrap()}});
    let validated = validate_value(batch).expect("valid");
    let settings = RunSettings::resolve(&[&validated.batch.config]);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let mut options = RunOptions::new(settings);
    options.sinks = vec![Box::new(Shared(recorder.clone()))];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(dispatch_runner::run(validated, options))
        .unwrap();
    let mut report = report;
    drop(std::mem::take(&mut report.sinks));
    let record = Arc::try_unwrap(recorder)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
        .into_record()
        .unwrap();

    // The trace as the runner wrote it before: the whole record, redacted as one tree.
    let written = std::fs::read_to_string(&report.trace_file).unwrap();
    let stored = read_trace(&report.trace_file).unwrap();
    let before = Trace {
        format: TRACE_FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        batch: stored.batch.clone(),
        digests: stored.digests.clone(),
        run: record.clone(),
    };
    let expected_trace = dir.path().join("expected.json");
    write_json_atomic(&expected_trace, &dispatch_runner::redact::redacted(&before)).unwrap();
    assert_eq!(written, std::fs::read_to_string(&expected_trace).unwrap());
    assert!(!written.contains("s3cret-value-1"));
    assert!(written.contains("\"task_id\": \"f\""));

    // The result document likewise.
    let old = RunResult::from_record(&record, &report.trace_file);
    let expected = serde_json::to_string_pretty(&dispatch_runner::redact::redacted(&old)).unwrap();
    let streamed = serde_json::to_string_pretty(&report.result.redacted()).unwrap();
    assert_eq!(streamed, expected);
    // And the record read back whole.
    let back = report.record().unwrap();
    assert_eq!(
        dispatch_runner::redact::redacted(&back),
        dispatch_runner::redact::redacted(&record)
    );
}
