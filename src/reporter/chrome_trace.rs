//! `--chrome-trace PATH`: the run in the Trace Event Format (JSON object form), which Perfetto
//! (ui.perfetto.dev) and chrome://tracing open. One named thread track per worker lane with one
//! complete event (`"ph": "X"`) per attempt; retries on a named `scheduler` track, breaker
//! changes as process-wide instants, run cancellation as a global instant.
//!
//! Ids are chosen for Perfetto's JSON importer, not only for chrome://tracing:
//! - pid 0 and tid 0 are the kernel's idle task there: trace_processor reserves utid/upid 0 and
//!   the UI filters them out (`ProcessTracker` constructor in
//!   src/trace_processor/importers/common/process_tracker.cc; google/perfetto#394 "avoid pid 0
//!   ... start from pid = 1"; thoren-d/tracing-chrome#32, tid 0 merged into another thread). So
//!   no event uses pid 0 or tid 0.
//! - A thread whose tid equals its pid is the process's main thread (`AssociateThreadToProcess`
//!   sets `is_main_thread` when tid == pid) and the UI labels it so. No track here is a main
//!   thread, so no tid equals [`PID`].
//! - The importer (`json_trace_parser_impl.cc`, phase `M`) takes `thread_name` and
//!   `process_name`; newer versions also `thread_sort_index` (google/perfetto#3273). Metadata
//!   events carry no `ts` (a timestamp on them is at best ignored; google/perfetto#2048).
//! - Duration events on one track must nest (Perfetto docs, "Visualizing external trace
//!   formats", Chrome JSON notes); attempts on a lane are sequential, so each attempt's end is
//!   clamped to the next attempt's start on that lane (whole microseconds, so rounding cannot
//!   make them overlap). `args.duration_ms` keeps the measured duration.

use serde_json::{Value, json};

use crate::events::EventKind;
use crate::reporter::recorder::RunRecord;

/// The one process; not 0 (the idle process in Perfetto).
const PID: u64 = 1;
/// Track for scheduler happenings that are not on a worker (retries waiting).
const SCHEDULER_TID: u64 = 2;
/// Worker lane `n` is thread `FIRST_WORKER_TID + n`: never 0, never [`PID`].
const FIRST_WORKER_TID: u64 = 3;

/// Renders the record (already redacted) as Trace Event Format JSON.
pub fn render(record: &RunRecord) -> Vec<u8> {
    serde_json::to_vec(&trace_events(record)).expect("serializable")
}

fn worker_tid(lane: usize) -> u64 {
    FIRST_WORKER_TID + lane as u64
}

pub fn trace_events(record: &RunRecord) -> Value {
    let mut events = vec![
        meta(
            "process_name",
            SCHEDULER_TID,
            json!({"name": format!("dispatch_runner {}", record.run_id)}),
        ),
        meta("thread_name", SCHEDULER_TID, json!({"name": "scheduler"})),
        meta(
            "thread_sort_index",
            SCHEDULER_TID,
            json!({"sort_index": -1}),
        ),
    ];
    let end_ms = record
        .events
        .last()
        .map_or(record.summary.total_time_ms as f64, |e| e.elapsed_ms);
    // (lane, start µs, task index, attempt index), sorted so each lane's attempts are in order.
    let mut attempts: Vec<(usize, u64, usize, usize)> = record
        .tasks
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.attempts
                .iter()
                .enumerate()
                .map(move |(ai, a)| (a.worker, us(a.start_ms), ti, ai))
        })
        .collect();
    attempts.sort_unstable();
    let mut lanes: Vec<usize> = attempts.iter().map(|a| a.0).collect();
    lanes.dedup();
    for lane in &lanes {
        let tid = worker_tid(*lane);
        events.push(meta(
            "thread_name",
            tid,
            json!({"name": format!("worker {lane}")}),
        ));
        events.push(meta("thread_sort_index", tid, json!({"sort_index": *lane})));
    }
    for (k, &(lane, start, ti, ai)) in attempts.iter().enumerate() {
        let t = &record.tasks[ti];
        let a = &t.attempts[ai];
        let dur_ms = a.duration_ms.unwrap_or((end_ms - a.start_ms).max(0.0));
        let mut end = us(a.start_ms + dur_ms).max(start);
        if let Some(&(next_lane, next_start, ..)) = attempts.get(k + 1)
            && next_lane == lane
        {
            end = end.min(next_start);
        }
        let outcome = a
            .outcome
            .map(|o| format!("{o:?}").to_lowercase())
            .unwrap_or_else(|| "unfinished".into());
        let mut args = json!({
            "task_id": t.task_id,
            "attempt": a.attempt,
            "outcome": outcome,
            "task_status": t.status.map(|s| s.as_str()),
            "duration_ms": dur_ms,
        });
        if let Some(e) = &a.error {
            args["error"] = json!(e);
        }
        events.push(json!({
            "name": t.task_id,
            "cat": t.agent,
            "ph": "X",
            "ts": start,
            "dur": end - start,
            "pid": PID,
            "tid": worker_tid(lane),
            "cname": colour(&outcome),
            "args": args,
        }));
    }
    for e in &record.events {
        let instant = |name: String, scope: &str, args: Value| {
            json!({"name": name, "ph": "i", "s": scope, "ts": us(e.elapsed_ms),
                   "pid": PID, "tid": SCHEDULER_TID, "args": args})
        };
        match &e.kind {
            EventKind::RetryScheduled {
                task_id,
                attempt,
                delay_ms,
            } => events.push(instant(
                format!("retry {task_id}"),
                "t",
                json!({"task_id": task_id, "attempt": attempt, "delay_ms": delay_ms}),
            )),
            EventKind::BreakerChanged { breaker, from, to } => events.push(instant(
                format!("breaker {breaker}: {to:?}"),
                "p",
                json!({"breaker": breaker, "from": from, "to": to}),
            )),
            EventKind::RunCancelled { reason } => events.push(instant(
                "run cancelled".into(),
                "g",
                json!({"reason": reason}),
            )),
            _ => {}
        }
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "run_id": record.run_id,
            "status": record.status,
            "summary": record.summary,
        },
    })
}

fn meta(name: &str, tid: u64, args: Value) -> Value {
    json!({"name": name, "ph": "M", "pid": PID, "tid": tid, "args": args})
}

/// Whole microseconds, the unit of the format; run-relative times are never negative.
fn us(ms: f64) -> u64 {
    (ms * 1000.0).round().max(0.0) as u64
}

/// Reserved colour names that chrome://tracing understands.
fn colour(outcome: &str) -> &'static str {
    match outcome {
        "success" => "good",
        "error" => "terrible",
        "timeout" => "bad",
        _ => "grey",
    }
}
