//! The live dashboard of `serve`: `GET /` (one page, its script and style embedded in the binary),
//! `GET /v1/runs` (the runs this instance served, newest first), `GET /v1/runs/{run_id}/events`
//! (a run's event stream as Server-Sent Events) and `GET /v1/workers` (the workers panel's data).
//!
//! Every run gets a [`FeedSink`] beside its other sinks: it redacts each event once, as the trace
//! and `--events` do, and keeps the JSON text in a bounded per-run buffer that any number of
//! streams read at their own pace. The SSE `id` of an event is its `seq` in the trace, so a client
//! that reconnects with `Last-Event-ID` gets exactly what it missed, and a finished run (whose
//! buffer is gone) is streamed from its trace file with the same ids.
//!
//! The buffer is bounded by bytes ([`BUFFER_BYTES`]): beyond it the oldest events are dropped,
//! except `run_started` (the task list and dependencies a viewer needs to draw anything). A client
//! that asks for dropped events gets a `dropped` event naming the range, then the rest.
//!
//! The page itself needs no token (it holds no data and a browser cannot add a header to a
//! navigation); everything it shows comes from the endpoints above, which do. It sends the token
//! in an `Authorization` header from `fetch()` and reads the event stream as a streamed response
//! body, so the token never appears in a URL (EventSource cannot send headers).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{AppState, error, json_response, lock, well_formed};
use crate::events::{Event, EventKind, EventSink, RunStatus, Summary, now_rfc3339};

/// Most bytes of event JSON a running run keeps for its streams (beyond: oldest dropped).
pub const BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// Most finished runs `GET /v1/runs` remembers (running ones are always listed).
pub const KEPT_RUNS: usize = 500;
/// Events a stream hands to the connection at once.
const BATCH: usize = 256;

/// A source of live workers for the page's workers panel. Nothing implements it yet: the
/// distributed executor (`serve --redis`) is meant to, and is wired with
/// [`Dashboard::with_workers`]. Without one the panel stays hidden.
pub trait WorkerSource: Send + Sync {
    /// The workers as JSON objects (at least `id` and `state`; the page shows every field).
    fn workers(&self) -> Vec<Value>;
}

/// What the dashboard endpoints read: every run this instance served, most recent last.
#[derive(Default)]
pub struct Dashboard {
    runs: Mutex<VecDeque<Arc<RunEntry>>>,
    workers: Option<Arc<dyn WorkerSource>>,
}

impl Dashboard {
    /// The workers panel shows `source` (`serve --redis`).
    pub fn with_workers(mut self, source: Arc<dyn WorkerSource>) -> Self {
        self.workers = Some(source);
        self
    }

    /// A run accepted under `run_id` with `tasks` tasks: listed from now on; its events go to
    /// the returned sink.
    pub(super) fn register(&self, run_id: &str, tasks: usize) -> FeedSink {
        let feed = Arc::new(Feed::new());
        let entry = Arc::new(RunEntry {
            run_id: run_id.to_string(),
            submitted_at: now_rfc3339(),
            submitted: Instant::now(),
            info: Mutex::new(RunInfo {
                summary: Summary {
                    total_tasks: tasks,
                    ..Summary::default()
                },
                ..RunInfo::default()
            }),
            feed: Mutex::new(Some(feed.clone())),
        });
        let mut runs = lock(&self.runs);
        runs.push_back(entry.clone());
        // Forget the oldest finished runs; running ones are bounded by the run slots.
        let mut finished = runs.iter().filter(|e| lock(&e.info).closed).count();
        while finished > KEPT_RUNS {
            let Some(i) = runs.iter().position(|e| lock(&e.info).closed) else {
                break;
            };
            runs.remove(i);
            finished -= 1;
        }
        FeedSink { entry, feed }
    }

    fn entry(&self, run_id: &str) -> Option<Arc<RunEntry>> {
        lock(&self.runs)
            .iter()
            .find(|e| e.run_id == run_id)
            .cloned()
    }
}

/// One run as the list shows it.
struct RunEntry {
    run_id: String,
    submitted_at: String,
    submitted: Instant,
    info: Mutex<RunInfo>,
    /// Until the run has ended (and its trace is written); then streams read the trace.
    feed: Mutex<Option<Arc<Feed>>>,
}

#[derive(Default)]
struct RunInfo {
    started_at: Option<String>,
    finished_at: Option<String>,
    status: Option<RunStatus>,
    cancelling: bool,
    closed: bool,
    summary: Summary,
    running: usize,
    duration: Option<Duration>,
}

impl RunEntry {
    fn view(&self) -> Value {
        let info = lock(&self.info);
        let state = if info.closed {
            "finished"
        } else if info.cancelling {
            "cancelling"
        } else {
            "running"
        };
        let duration_ms = match (info.closed, info.status) {
            (true, Some(_)) => info.summary.total_time_ms,
            (true, None) => info.duration.map_or(0, |d| d.as_millis() as u64),
            _ => self.submitted.elapsed().as_millis() as u64,
        };
        let mut summary = serde_json::to_value(&info.summary).unwrap_or(Value::Null);
        if let Some(s) = summary.as_object_mut() {
            s.insert("running".into(), json!(info.running));
        }
        json!({
            "run_id": self.run_id,
            "state": state,
            "status": info.status,
            "submitted_at": self.submitted_at,
            "started_at": info.started_at,
            "finished_at": info.finished_at,
            "duration_ms": duration_ms,
            "summary": summary,
        })
    }
}

/// A run's redacted events as JSON text, for its streams.
struct Feed {
    buffer: Mutex<Buffer>,
    /// Bumped on every new event and on close; streams wait on it.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Buffer {
    /// `run_started`, never dropped.
    first: Option<(u64, Arc<str>)>,
    /// Every later event still kept, `seq` ascending without holes.
    rest: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
    /// The highest `seq` dropped for room, if any.
    dropped_to: Option<u64>,
    last: Option<u64>,
    closed: bool,
}

/// What a stream sends next.
enum Item {
    Event(u64, Arc<str>),
    /// Events `from..=to` were dropped from the buffer before this client read them.
    Dropped {
        from: u64,
        to: u64,
    },
}

impl Feed {
    fn new() -> Self {
        Feed {
            buffer: Mutex::new(Buffer::default()),
            changed: watch::channel(0).0,
        }
    }

    fn push(&self, seq: u64, text: Arc<str>, pinned: bool) {
        {
            let mut b = lock(&self.buffer);
            b.last = Some(seq);
            if pinned && b.first.is_none() {
                b.first = Some((seq, text));
            } else {
                b.bytes += text.len();
                b.rest.push_back((seq, text));
                // The newest event is kept whatever its size.
                while b.bytes > BUFFER_BYTES && b.rest.len() > 1 {
                    if let Some((dropped, t)) = b.rest.pop_front() {
                        b.bytes -= t.len();
                        b.dropped_to = Some(dropped);
                    }
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn close(&self) {
        lock(&self.buffer).closed = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Up to [`BATCH`] items from `next` on, and whether the feed has ended.
    fn take(&self, next: u64) -> (Vec<Item>, bool) {
        let b = lock(&self.buffer);
        let mut out = Vec::new();
        let mut next = next;
        if let Some((seq, text)) = &b.first
            && *seq >= next
        {
            out.push(Item::Event(*seq, text.clone()));
            next = seq + 1;
        }
        if let Some(to) = b.dropped_to
            && next <= to
        {
            out.push(Item::Dropped { from: next, to });
            next = to + 1;
        }
        if let Some(&(front, _)) = b.rest.front() {
            let skip = next.saturating_sub(front) as usize;
            out.extend(
                b.rest
                    .iter()
                    .skip(skip)
                    .take(BATCH)
                    .map(|(seq, text)| Item::Event(*seq, text.clone())),
            );
        }
        (out, b.closed)
    }

    fn finished_at_or_after(&self, after: Option<u64>) -> bool {
        let b = lock(&self.buffer);
        b.closed && after.is_some() && b.last <= after
    }
}

/// The sink a run's events reach the dashboard through. Dropped when the run's report is, that
/// is after its trace is written: from then on streams read the trace.
pub(super) struct FeedSink {
    entry: Arc<RunEntry>,
    feed: Arc<Feed>,
}

impl EventSink for FeedSink {
    fn on_event(&mut self, event: &Event) {
        // As the journal writes it: redacted, and `run_started` of a million tasks without
        // building it as one JSON tree.
        let line = crate::journal::event_line(event);
        let text: Arc<str> = String::from_utf8_lossy(&line).into();
        let pinned = matches!(event.kind, EventKind::RunStarted { .. });
        self.feed.push(event.seq, text, pinned);
        let mut info = lock(&self.entry.info);
        match &event.kind {
            EventKind::RunStarted { tasks, .. } => {
                info.started_at = Some(event.at.clone());
                info.summary.total_tasks = tasks.len();
            }
            EventKind::AttemptStarted { .. } => info.running += 1,
            EventKind::AttemptFinished { .. } => info.running = info.running.saturating_sub(1),
            EventKind::TaskFinished { status, .. } => info.summary.count(*status),
            EventKind::RunCancelled { .. } => info.cancelling = true,
            EventKind::RunFinished { status, summary } => {
                info.status = Some(*status);
                info.summary = summary.clone();
                info.finished_at = Some(event.at.clone());
                info.running = 0;
            }
            _ => {}
        }
    }
}

impl Drop for FeedSink {
    fn drop(&mut self) {
        {
            let mut info = lock(&self.entry.info);
            info.closed = true;
            info.running = 0;
            info.duration = Some(self.entry.submitted.elapsed());
        }
        *lock(&self.entry.feed) = None;
        self.feed.close();
    }
}

/// The page, assembled once: the script and style inline, admitted by hash.
struct Page {
    /// For a server with a token (the page asks for it first) and without one.
    with_token: String,
    without_token: String,
    csp: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    const HTML: &str = include_str!("dashboard/index.html");
    const CSS: &str = include_str!("dashboard/dashboard.css");
    const JS: &str = include_str!("dashboard/dashboard.js");
    let hash = crate::reporter::html::csp_hash;
    // Placeholders are filled before the script and style go in, so neither can hold one.
    let html = |auth: &str| {
        HTML.replace("{AUTH}", auth)
            .replace("{VERSION}", env!("CARGO_PKG_VERSION"))
            .replace("/*CSS*/", CSS)
            .replace("/*JS*/", JS)
    };
    Page {
        with_token: html("required"),
        without_token: html("none"),
        // No source but this page's own script and style; data only from this origin; no
        // framing (clickjacking the cancel button), no forms, no base tag.
        csp: format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(JS),
            hash(CSS)
        ),
    }
});

/// `GET /`: the dashboard page.
pub(super) async fn page(State(state): State<Arc<AppState>>) -> Response {
    let page = &*PAGE;
    let html = if state.options.token.is_some() {
        &page.with_token
    } else {
        &page.without_token
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html.clone(),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&page.csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /v1/runs`: the runs this instance served, newest first.
pub(super) async fn list_runs(State(state): State<Arc<AppState>>) -> Response {
    let entries: Vec<Arc<RunEntry>> = lock(&state.dashboard.runs).iter().cloned().collect();
    let runs: Vec<Value> = entries.iter().rev().map(|e| e.view()).collect();
    json_response(StatusCode::OK, &json!({ "runs": runs }))
}

/// `GET /v1/workers`: the live workers, when the server has a source of them.
pub(super) async fn workers(State(state): State<Arc<AppState>>) -> Response {
    let body = match &state.dashboard.workers {
        Some(source) => json!({"available": true, "workers": source.workers()}),
        None => json!({"available": false, "workers": []}),
    };
    json_response(StatusCode::OK, &body)
}

/// `GET /v1/runs/{run_id}/events`: the run's events as Server-Sent Events, each with its `seq`
/// as `id`, from after `Last-Event-ID` (or the start). Ends when the run has ended; 204 when a
/// finished run has nothing after `Last-Event-ID` (so an EventSource stops reconnecting).
pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !well_formed(&run_id) {
        return error(StatusCode::NOT_FOUND, "no such run");
    }
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be the id of an event of this stream (a number)",
                );
            }
        },
    };
    let feed = state
        .dashboard
        .entry(&run_id)
        .and_then(|e| lock(&e.feed).clone());
    let (tx, rx) = mpsc::channel(BATCH);
    match feed {
        Some(feed) => {
            if feed.finished_at_or_after(after) {
                return StatusCode::NO_CONTENT.into_response();
            }
            tokio::spawn(follow(feed, after, tx));
        }
        None => {
            let path = crate::reporter::trace::trace_path(&state.options.trace_dir, &run_id);
            let read = tokio::task::spawn_blocking(move || trace_events(&path)).await;
            let events = match read {
                Ok(Ok(Some(events))) => events,
                Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, "no such run"),
                _ => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "trace file is unreadable",
                    );
                }
            };
            let start = after.map_or(0, |a| a + 1);
            let rest: Vec<(u64, Value)> = events.into_iter().filter(|(s, _)| *s >= start).collect();
            if rest.is_empty() && after.is_some() {
                return StatusCode::NO_CONTENT.into_response();
            }
            tokio::spawn(async move {
                for (seq, event) in rest {
                    let text = serde_json::to_string(&event).unwrap_or_default();
                    if tx.send(sse(Item::Event(seq, text.into()))).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let mut response = Sse::new(Receiver(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer (nginx) would hold events back until the run ends.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A finished run's events from its trace (written redacted), `None` if there is no trace.
fn trace_events(path: &std::path::Path) -> Result<Option<Vec<(u64, Value)>>, String> {
    #[derive(serde::Deserialize)]
    struct Events {
        events: Vec<Value>,
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let parsed: Events = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| format!("trace: {e}"))?;
    Ok(Some(
        parsed
            .events
            .into_iter()
            .filter_map(|e| {
                let seq = e.get("seq")?.as_u64()?;
                Some((seq, crate::redact::redacted(&e)))
            })
            .collect(),
    ))
}

/// Hands a live run's events to one stream, as fast as its connection takes them.
async fn follow(
    feed: Arc<Feed>,
    after: Option<u64>,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
) {
    let mut changed = feed.changed.subscribe();
    let mut next = after.map_or(0, |a| a + 1);
    loop {
        // Seen before reading, so an event pushed meanwhile wakes us again.
        changed.borrow_and_update();
        let (items, closed) = feed.take(next);
        if items.is_empty() {
            if closed {
                return;
            }
            tokio::select! {
                res = changed.changed() => if res.is_err() { return; },
                // The client went away while the run is quiet.
                () = tx.closed() => return,
            }
            continue;
        }
        for item in items {
            next = match &item {
                Item::Event(seq, _) => seq + 1,
                Item::Dropped { to, .. } => to + 1,
            };
            if tx.send(sse(item)).await.is_err() {
                return;
            }
        }
    }
}

fn sse(item: Item) -> Result<SseEvent, Infallible> {
    Ok(match item {
        Item::Event(seq, text) => SseEvent::default().id(seq.to_string()).data(&*text),
        Item::Dropped { from, to } => SseEvent::default()
            .event("dropped")
            .id(to.to_string())
            .data(json!({"from": from, "to": to}).to_string()),
    })
}

/// The receiving end of a stream's channel as the `Stream` axum's `Sse` takes.
struct Receiver(mpsc::Receiver<Result<SseEvent, Infallible>>);

impl futures_core::Stream for Receiver {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(seq, _) => seq.to_string(),
                Item::Dropped { from, to } => format!("dropped {from}-{to}"),
            })
            .collect()
    }

    #[test]
    fn feed_resumes_after_an_id_and_reports_what_it_dropped() {
        let feed = Feed::new();
        feed.push(0, "{\"event\":\"run_started\"}".into(), true);
        for seq in 1..=5 {
            feed.push(seq, "x".into(), false);
        }
        assert_eq!(texts(&feed.take(0).0), ["0", "1", "2", "3", "4", "5"]);
        assert_eq!(texts(&feed.take(4).0), ["4", "5"]);
        assert!(feed.take(6).0.is_empty());
        // Past the byte budget the oldest events go, but run_started stays.
        let big: Arc<str> = "y".repeat(BUFFER_BYTES / 2 + 1).into();
        feed.push(6, big.clone(), false);
        feed.push(7, big, false);
        assert_eq!(texts(&feed.take(0).0), ["0", "dropped 1-6", "7"]);
        assert_eq!(texts(&feed.take(3).0), ["dropped 3-6", "7"]);
        assert_eq!(texts(&feed.take(7).0), ["7"]);
        assert!(!feed.take(8).1);
        feed.close();
        assert!(feed.take(8).1);
        assert!(feed.finished_at_or_after(Some(7)));
        assert!(!feed.finished_at_or_after(Some(6)));
        assert!(!feed.finished_at_or_after(None));
    }

    #[test]
    fn the_page_admits_only_its_own_script_and_style() {
        let page = &*PAGE;
        for html in [&page.with_token, &page.without_token] {
            assert!(!html.contains("/*JS*/") && !html.contains("/*CSS*/"));
            assert!(!html.contains("{AUTH}") && !html.contains("{VERSION}"));
            assert_eq!(html.matches("<script>").count(), 1);
        }
        assert!(page.with_token.contains("data-auth=\"required\""));
        assert!(page.csp.contains("script-src 'sha256-"));
        assert!(!page.csp.contains("unsafe"));
    }
}
