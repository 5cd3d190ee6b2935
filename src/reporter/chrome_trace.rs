//! `--chrome-trace PATH`: the run in the Trace Event Format (JSON object form), which Perfetto
//! (ui.perfetto.dev) and chrome://tracing open. One thread per worker lane with one complete
//! event (`"ph": "X"`) per attempt; retries and breaker changes as instant events; run
//! cancellation as a global instant.

use serde_json::{Value, json};

use crate::events::EventKind;
use crate::reporter::recorder::RunRecord;

const PID: u64 = 1;
/// Lane for scheduler happenings that are not on a worker (retries waiting, breakers).
const SCHEDULER_TID: u64 = 0;

/// Renders the record (already redacted) as Trace Event Format JSON.
pub fn render(record: &RunRecord) -> Vec<u8> {
    serde_json::to_vec(&trace_events(record)).expect("serializable")
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
    let mut lanes: Vec<usize> = record
        .tasks
        .iter()
        .flat_map(|t| t.attempts.iter().map(|a| a.worker))
        .collect();
    lanes.sort_unstable();
    lanes.dedup();
    for lane in &lanes {
        let tid = *lane as u64 + 1;
        events.push(meta(
            "thread_name",
            tid,
            json!({"name": format!("worker {lane}")}),
        ));
        events.push(meta("thread_sort_index", tid, json!({"sort_index": *lane})));
    }
    for t in &record.tasks {
        for a in &t.attempts {
            let dur = a.duration_ms.unwrap_or((end_ms - a.start_ms).max(0.0));
            let outcome = a
                .outcome
                .map(|o| format!("{o:?}").to_lowercase())
                .unwrap_or_else(|| "unfinished".into());
            let mut args = json!({
                "task_id": t.task_id,
                "attempt": a.attempt,
                "outcome": outcome,
                "task_status": t.status.map(|s| s.as_str()),
            });
            if let Some(e) = &a.error {
                args["error"] = json!(e);
            }
            events.push(json!({
                "name": t.task_id,
                "cat": t.agent,
                "ph": "X",
                "ts": us(a.start_ms),
                "dur": us(dur),
                "pid": PID,
                "tid": a.worker as u64 + 1,
                "cname": colour(&outcome),
                "args": args,
            }));
        }
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

/// Microseconds, the unit of the format.
fn us(ms: f64) -> f64 {
    (ms * 1000.0).round()
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
