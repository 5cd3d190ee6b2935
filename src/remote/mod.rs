//! Scale-out on Redis Streams: a second [`Executor`](crate::runner::executor::Executor) that runs
//! attempts on worker processes on other machines, and those worker processes.
//!
//! The coordinator (`dispatch_runner run --redis URL`) keeps everything it has locally:
//! validation, scheduling, the worker limit (now cluster-wide: at most `max_workers` attempts of
//! the run are queued or running anywhere), per-agent caps, retries, breakers, events, the result
//! and the trace. Only where an attempt runs changes: [`coordinator::RedisExecutor`] publishes
//! each [`AttemptRequest`](crate::runner::executor::AttemptRequest) to Redis and reads back what
//! workers report. A worker (`dispatch_runner worker --redis URL`) takes attempts and runs each
//! through its own [`LocalExecutor`](crate::runner::executor::LocalExecutor), with its own
//! configuration file's MCP servers and model keys: no credential travels in the queue.
//!
//! # Keys (all under `dispatch:`)
//!
//! | key | type | written by | read by |
//! | --- | --- | --- | --- |
//! | `dispatch:attempts:<agent>` | stream, consumer group `workers` | coordinators (`XADD`) | workers (`XREADGROUP`) |
//! | `dispatch:run:<run_id>` | string (the coordinator's session) with a TTL | the coordinator, refreshed while it lives | workers (is the run still alive, in this session?) |
//! | `dispatch:run:<run_id>:out` | stream | workers (`XADD NOMKSTREAM`) | the coordinator (`XREAD`) |
//! | `dispatch:run:<run_id>:cancel` | hash (`all`, `hurry`, `a:<attempt>`) | the coordinator | workers, polled |
//! | `dispatch:worker:<name>` | string (JSON) with a TTL | each worker's heartbeat | `dispatch_runner workers` |
//!
//! One stream per agent lets a worker restricted to some agents (`--agents command`) read only
//! the streams of those agents, so an attempt is never handed to a worker that would refuse it.
//! The attempt streams and the group are the pool's; everything under `dispatch:run:<run_id>` is
//! the run's and is deleted when the run ends. Outcomes are added with `NOMKSTREAM`, so a late
//! worker cannot bring the keys of a finished run back.
//!
//! Every attempt message carries the coordinator's random session, which workers echo in their
//! outcomes: a run resumed from its journal keeps its run id and numbers attempts anew, and the
//! outcomes (and queued attempts) of the coordinator that died are told apart by it and dropped.
//! The run's keys expire unless the coordinator refreshes them, so a killed coordinator leaves
//! nothing behind for long.
//!
//! # Leases and redelivery
//!
//! A message read with `XREADGROUP` stays in the group's pending list, owned by the worker, until
//! the worker acknowledges it after posting the outcome. While an attempt runs the worker renews
//! its lease every third of it (`XCLAIM ... JUSTID` on its own messages resets their idle time).
//! The coordinator looks at the pending list of its own messages (`XPENDING ... IDLE <lease>`):
//! one idle past the lease belongs to a worker that died or froze; the coordinator acknowledges
//! and deletes it and reports [`ExecutorEvent::Lost`](crate::runner::executor::ExecutorEvent),
//! recorded as `worker_lost`. The dispatcher then starts a new attempt (a new attempt id) right
//! away, at most `max_redeliveries` times per task, apart from its `retries` (past that, a loss
//! counts against the retries). A worker whose
//! renewal finds its message gone stops the attempt; one that finishes anyway posts an outcome
//! for an attempt id that is no longer current, which the dispatcher ignores. Delivery is
//! therefore at-least-once: a command may run twice (on a frozen and on a live worker), a task
//! has exactly one final result.
//!
//! # Cancellation
//!
//! Cancelling writes the run's cancel hash; workers poll it (every 250 ms) for the runs they
//! have attempts of, and also drop the attempts of runs whose `dispatch:run:<run_id>` key is gone
//! (a coordinator that was killed). Attempts still queued are deleted from their stream by the
//! coordinator and reported cancelled at once.
//!
//! # Redis going away
//!
//! Both sides reconnect with backoff for a bounded time (`reconnect_seconds`, default 30). Past
//! it the coordinator reports [`ExecutorEvent::Failed`](crate::runner::executor::ExecutorEvent):
//! the run stops, unfinished tasks are cancelled with the reason, and the trace is written;
//! a worker stops its attempts and exits 3.

pub mod coordinator;
pub mod worker;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::FilesTouched;
use crate::runner::executor::AttemptId;
use crate::task_error::TaskError;

/// The consumer group every worker reads attempts through.
pub const GROUP: &str = "workers";

pub const ATTEMPTS_PREFIX: &str = "dispatch:attempts:";

pub fn attempts_stream(agent: &str) -> String {
    format!("{ATTEMPTS_PREFIX}{agent}")
}
pub fn run_key(run_id: &str) -> String {
    format!("dispatch:run:{run_id}")
}
pub fn outcomes_stream(run_id: &str) -> String {
    format!("dispatch:run:{run_id}:out")
}
pub fn cancel_key(run_id: &str) -> String {
    format!("dispatch:run:{run_id}:cancel")
}
pub fn worker_key(name: &str) -> String {
    format!("dispatch:worker:{name}")
}
pub const WORKER_PATTERN: &str = "dispatch:worker:*";

/// How the coordinator uses Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    /// An attempt whose worker has not renewed it for this long is lost.
    pub lease: Duration,
    /// Most attempts of one task lost with their worker and started again.
    pub max_redeliveries: u32,
    /// How long to keep reconnecting before giving up.
    pub reconnect_for: Duration,
    /// Longest an attempt may wait in the queue before a worker takes it.
    pub queue_timeout: Option<Duration>,
}

pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(30);

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            lease: DEFAULT_LEASE,
            max_redeliveries: DEFAULT_MAX_REDELIVERIES,
            reconnect_for: DEFAULT_RECONNECT,
            queue_timeout: None,
        }
    }
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Not a URL: say nothing of what it holds past the scheme.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(not a URL)".into(),
        },
    }
}

/// A client for `url`; the password is registered as a secret so no log shows it.
pub fn client(url: &str) -> Result<redis::Client, String> {
    if let Ok(u) = url::Url::parse(url)
        && let Some(p) = u.password()
    {
        crate::redact::register_secret(p);
        // The URL holds it percent-encoded; the server sees it decoded.
        let decoded = url::form_urlencoded::parse(format!("p={p}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !decoded.is_empty() {
            crate::redact::register_secret(&decoded);
        }
    }
    // rustls is built without a default crypto provider (see http.rs): install ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    redis::Client::open(url).map_err(|e| format!("invalid Redis URL '{}': {e}", redact_url(url)))
}

/// A connection whose requests time out after `response_timeout` (None: blocking reads).
pub async fn connect(
    client: &redis::Client,
    response_timeout: Option<Duration>,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(response_timeout);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Connects, retrying with backoff until `deadline` passes.
pub async fn reconnect(
    client: &redis::Client,
    response_timeout: Option<Duration>,
    bound: Duration,
) -> Option<MultiplexedConnection> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(client, response_timeout).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::debug!("reconnecting to Redis: {e}");
                if tokio::time::Instant::now() + delay > deadline {
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Creates the group on an attempt stream (and the stream); one that exists is fine.
pub async fn ensure_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// What a worker tells the coordinator about one attempt (field `m` of an outcome entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeMessage {
    pub attempt: AttemptId,
    /// The `session` of the attempt's message: a resumed run reuses its run id and attempt
    /// ids, not its session.
    #[serde(default)]
    pub session: String,
    pub worker: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The files the attempt recorded (with its end). Read back bounded like every file list
    /// (at most [`crate::files::MAX_RECORDS`] a list, the rest counted), so a hostile or huge
    /// list from a worker cannot swell the coordinator.
    #[serde(default, skip_serializing_if = "FilesTouched::is_empty")]
    pub files: FilesTouched,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// A worker took the attempt and started it.
    Started,
    Progress {
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    Succeeded {
        output: Value,
    },
    Failed {
        error: TaskError,
        /// Not part of `TaskError`'s own serialization (results do not show it).
        transient: bool,
        retry_after_ms: Option<u64>,
        output: Option<Value>,
    },
    Cancelled,
    /// The worker could not finish the attempt (it was stopped).
    Lost {
        reason: String,
    },
}

/// One live worker, as its heartbeat says (`dispatch_runner workers`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub agents: Vec<String>,
    pub capacity: usize,
    pub running: usize,
    pub last_heartbeat: String,
    pub version: String,
}

/// The live workers (those whose heartbeat has not expired), by name.
pub async fn list_workers(url: &str) -> Result<Vec<WorkerInfo>, String> {
    let client = client(url)?;
    let mut conn = connect(&client, Some(Duration::from_secs(5)))
        .await
        .map_err(|e| unreachable_message(url, &e))?;
    live_workers(&mut conn)
        .await
        .map_err(|e| format!("Redis at {}: {e}", redact_url(url)))
}

/// The live workers on an open connection, from their heartbeat keys, by name.
pub async fn live_workers(conn: &mut MultiplexedConnection) -> redis::RedisResult<Vec<WorkerInfo>> {
    let mut cursor: u64 = 0;
    let mut keys: Vec<String> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(WORKER_PATTERN)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut out = Vec::new();
    if !keys.is_empty() {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
        out.extend(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str::<WorkerInfo>(&v).ok()),
        );
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn unreachable_message(url: &str, e: &redis::RedisError) -> String {
    format!("cannot reach Redis at {}: {e}", redact_url(url))
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_with_a_huge_file_list_is_read_bounded() {
        let record = crate::files::FileRecord::new("a.py", b"a");
        let many: Vec<&crate::files::FileRecord> = std::iter::repeat_n(&record, 50_000).collect();
        let text = serde_json::json!({
            "attempt": 3, "session": "s", "worker": "w", "kind": "succeeded", "output": 1,
            "files": {"read": many, "written": [record], "omitted": u64::MAX}
        })
        .to_string();
        let m: OutcomeMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(m.files.read.len(), crate::files::MAX_RECORDS);
        assert_eq!(m.files.written, vec![record]);
        assert_eq!(m.files.omitted, u64::MAX, "saturates");
        assert!(matches!(m.outcome, Outcome::Succeeded { .. }));
        // A worker of an older version sends none.
        let old: OutcomeMessage =
            serde_json::from_str(r#"{"attempt": 1, "worker": "w", "kind": "cancelled"}"#).unwrap();
        assert!(old.files.is_empty());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://host/1"), "rediss://host/1");
        assert!(!redact_url("redis//:pw@x").contains("pw"));
    }
}
