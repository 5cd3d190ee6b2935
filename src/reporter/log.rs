//! Logs the event stream through `tracing` (stderr): debug for every event, info for failures, a
//! warning when a breaker opens. Quiet by default (`warn`); `DISPATCH_DEBUG=1` or
//! `RUST_LOG=debug` shows everything.

use crate::events::{Event, EventKind, EventSink, TaskStatus};
use crate::policy::breaker::BreakerState;
use crate::redact::redact_text;

#[derive(Debug, Default)]
pub struct LogSink;

impl EventSink for LogSink {
    fn on_event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::TaskFinished {
                task_id,
                status: status @ (TaskStatus::Error | TaskStatus::Timeout),
                error: Some(error),
                ..
            } => tracing::info!(
                task = %task_id,
                status = status.as_str(),
                kind = error.kind.as_str(),
                "task failed: {}",
                redact_text(&error.message)
            ),
            EventKind::BreakerChanged {
                breaker,
                to: BreakerState::Open,
                ..
            } => tracing::warn!(breaker = %breaker, "circuit breaker opened"),
            _ => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let json = serde_json::to_string(&crate::redact::redacted(&event.kind))
                        .unwrap_or_default();
                    tracing::debug!(seq = event.seq, "{json}");
                }
            }
        }
    }
}
