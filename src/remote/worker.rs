//! The worker's side: `dispatch_runner worker --redis URL`. A long-lived process that takes
//! attempts from the streams of the agents it serves, runs each through its own
//! [`LocalExecutor`] (the same agents, timeouts and process-group handling as a local run, with
//! this machine's MCP servers and model keys), posts each outcome to the run's outcome stream,
//! and only then acknowledges the message. See the module doc of `remote` for the protocol.
//!
//! Capacity is a semaphore: the reader asks Redis for at most as many messages as there are
//! free slots, so a worker never holds attempts it cannot start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::{
    GROUP, Outcome, OutcomeMessage, WorkerInfo, attempts_stream, cancel_key, outcomes_stream,
    redact_url, worker_key,
};
use crate::files::FilesTouched;
use crate::runner::Interrupt;
use crate::runner::executor::LocalExecutor;
use crate::runner::executor::{AttemptEnd, AttemptId, AttemptRequest, Executor, ExecutorEvent};
use crate::services::Services;

pub struct WorkerOptions {
    pub url: String,
    pub name: String,
    pub capacity: usize,
    pub agents: Vec<String>,
    /// How long running attempts may go on after SIGTERM before they are killed (and lost).
    pub drain: Duration,
    pub reconnect_for: Duration,
}

/// One attempt this worker runs.
struct Job {
    /// `dispatch:run:<run_id>` of its run.
    run: String,
    session: String,
    remote: AttemptId,
    stream: String,
    entry: String,
    /// Its run is gone or it was reclaimed: its end is not posted.
    silent: bool,
    /// Killed by the drain bound: its end is posted as lost.
    lost: bool,
}

struct Message {
    stream: String,
    entry: String,
    run: Option<String>,
    session: Option<String>,
    request: Option<String>,
}

/// The run's `all` flag and the attempt's own `a:<id>` flag.
type CancelFlags = (Option<String>, Option<String>);

pub const EXIT_OK: u8 = 0;
pub const EXIT_RUNNER: u8 = 3;

/// Runs the worker until SIGTERM/SIGINT (exit 0 after draining) or Redis stays away (exit 3).
pub async fn run_worker(
    options: WorkerOptions,
    services: Arc<Services>,
    mut signals: mpsc::Receiver<Interrupt>,
) -> u8 {
    let client = match super::client(&options.url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatch_runner: error: {e}");
            return EXIT_RUNNER;
        }
    };
    let url = redact_url(&options.url);
    let (mut conn, reader_conn) = match (
        super::connect(&client, Some(Duration::from_secs(5))).await,
        super::connect(&client, None).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("dispatch_runner: error: cannot reach Redis at {url}: {e}");
            return EXIT_RUNNER;
        }
    };
    let streams: Vec<String> = options.agents.iter().map(|a| attempts_stream(a)).collect();
    for s in &streams {
        if let Err(e) = super::ensure_group(&mut conn, s).await {
            eprintln!("dispatch_runner: error: cannot create the consumer group on '{s}': {e}");
            return EXIT_RUNNER;
        }
    }
    let slots = Arc::new(Semaphore::new(options.capacity));
    let (msg_tx, mut messages) = mpsc::channel::<Result<Vec<Message>, String>>(16);
    let reader = tokio::spawn(read_attempts(
        client.clone(),
        reader_conn,
        streams.clone(),
        options.name.clone(),
        slots.clone(),
        options.reconnect_for,
        msg_tx,
    ));
    eprintln!(
        "dispatch_runner: worker '{}' serving {} with {} slots on {url}",
        options.name,
        options.agents.join(", "),
        options.capacity
    );
    let mut w = Worker {
        client,
        conn,
        options,
        executor: LocalExecutor::new(services),
        jobs: HashMap::new(),
        next_id: 0,
        slots,
        broken: false,
    };
    w.heartbeat().await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = Instant::now();
    let mut beat_running = 0;
    let mut draining: Option<Instant> = None;
    let mut killed = false;
    let mut signals_open = true;
    let mut reader = Some(reader);
    loop {
        if draining.is_some() && w.executor.in_flight() == 0 {
            break;
        }
        if w.broken && w.executor.in_flight() == 0 {
            break;
        }
        let busy = w.executor.in_flight() > 0;
        tokio::select! {
            signal = signals.recv(), if signals_open && (draining.is_none() || !killed) => {
                if signal.is_none() {
                    // No more signals can come (the handler is gone): nothing to do.
                    signals_open = false;
                } else if draining.is_none() {
                    eprintln!(
                        "dispatch_runner: worker '{}' draining: {} attempts running, {} s to finish",
                        w.options.name, w.jobs.len(), w.options.drain.as_secs_f64()
                    );
                    if let Some(r) = reader.take() {
                        r.abort();
                    }
                    draining = Some(Instant::now() + w.options.drain);
                    // Attempts read but not started go back at once, as lost with this worker.
                    messages.close();
                    while let Ok(batch) = messages.try_recv() {
                        for m in batch.unwrap_or_default() {
                            w.give_back(m).await;
                        }
                    }
                } else {
                    // A second signal: no more waiting.
                    draining = Some(Instant::now());
                }
            }
            Some(batch) = messages.recv(), if draining.is_none() => match batch {
                Ok(batch) => {
                    for m in batch {
                        w.take(m).await;
                    }
                }
                Err(reason) => {
                    eprintln!("dispatch_runner: error: {reason}");
                    w.broken = true;
                    w.executor.cancel_all();
                    w.executor.hurry();
                }
            },
            Some(event) = w.executor.next_event(), if busy => w.ended(event).await,
            _ = tick.tick() => {
                // Also when the number of running attempts changed: `workers` shows it.
                if last_beat.elapsed() >= Duration::from_secs(2) || w.jobs.len() != beat_running {
                    w.heartbeat().await;
                    last_beat = Instant::now();
                    beat_running = w.jobs.len();
                }
                w.renew().await;
                w.poll_cancels().await;
                if let Some(due) = draining && !killed && Instant::now() >= due {
                    killed = true;
                    for job in w.jobs.values_mut() {
                        job.lost = true;
                    }
                    w.executor.cancel_all();
                    w.executor.hurry();
                }
            }
        }
    }
    if let Some(r) = reader.take() {
        r.abort();
    }
    w.executor.hurry();
    w.executor.drain().await;
    w.executor.close().await;
    let key = worker_key(&w.options.name);
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&key).query_async(&mut w.conn).await;
    if w.broken {
        return EXIT_RUNNER;
    }
    eprintln!("dispatch_runner: worker '{}' stopped", w.options.name);
    EXIT_OK
}

struct Worker {
    client: redis::Client,
    conn: MultiplexedConnection,
    options: WorkerOptions,
    executor: LocalExecutor,
    jobs: HashMap<AttemptId, Job>,
    next_id: u64,
    slots: Arc<Semaphore>,
    broken: bool,
}

impl Worker {
    /// Runs a request on this worker's connection, reconnecting once within the bound.
    async fn query<T: redis::FromRedisValue + Send>(&mut self, cmd: &redis::Cmd) -> Option<T> {
        if self.broken {
            return None;
        }
        match cmd.query_async::<T>(&mut self.conn).await {
            Ok(v) => Some(v),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                tracing::warn!("lost the connection to Redis ({e}); reconnecting");
                match super::reconnect(
                    &self.client,
                    Some(Duration::from_secs(5)),
                    self.options.reconnect_for,
                )
                .await
                {
                    Some(c) => {
                        self.conn = c;
                        cmd.query_async::<T>(&mut self.conn).await.ok()
                    }
                    None => {
                        eprintln!(
                            "dispatch_runner: error: lost the connection to Redis at {} and could not reconnect within {} s; stopping",
                            redact_url(&self.options.url),
                            self.options.reconnect_for.as_secs_f64()
                        );
                        self.broken = true;
                        self.executor.cancel_all();
                        self.executor.hurry();
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!("Redis request failed: {e}");
                None
            }
        }
    }

    async fn heartbeat(&mut self) {
        let info = WorkerInfo {
            name: self.options.name.clone(),
            host: super::hostname(),
            pid: std::process::id(),
            agents: self.options.agents.clone(),
            capacity: self.options.capacity,
            running: self.jobs.len(),
            last_heartbeat: crate::events::now_rfc3339(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let body = serde_json::to_string(&info).expect("serializable");
        let cmd = redis::cmd("SET")
            .arg(worker_key(&self.options.name))
            .arg(body)
            .arg("EX")
            .arg(10)
            .clone();
        let _: Option<()> = self.query(&cmd).await;
    }

    /// Acknowledges and deletes a message: its attempt is over (or was never ours to run).
    async fn done_with(&mut self, stream: &str, entry: &str) {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(entry)
            .ignore();
        if self.broken {
            return;
        }
        if let Err(e) = pipe.query_async::<()>(&mut self.conn).await {
            tracing::warn!("cannot acknowledge {entry}: {e}");
        }
    }

    async fn post(&mut self, run: &str, session: &str, attempt: AttemptId, outcome: Outcome) {
        self.post_with_files(run, session, attempt, outcome, FilesTouched::default())
            .await;
    }

    async fn post_with_files(
        &mut self,
        run: &str,
        session: &str,
        attempt: AttemptId,
        outcome: Outcome,
        files: FilesTouched,
    ) {
        let message = OutcomeMessage {
            attempt,
            session: session.to_string(),
            worker: self.options.name.clone(),
            outcome,
            files,
        };
        let body = serde_json::to_string(&message).expect("serializable");
        let run_id = run.strip_prefix("dispatch:run:").unwrap_or(run);
        // NOMKSTREAM: the outcome stream of a run that ended is not brought back.
        let cmd = redis::cmd("XADD")
            .arg(outcomes_stream(run_id))
            .arg("NOMKSTREAM")
            .arg("*")
            .arg("m")
            .arg(body)
            .clone();
        let _: Option<Option<String>> = self.query(&cmd).await;
    }

    async fn take(&mut self, m: Message) {
        let session = m.session.clone().unwrap_or_default();
        let (Some(run), Some(text)) = (m.run, m.request) else {
            tracing::warn!("dropping a malformed attempt message {}", m.entry);
            self.done_with(&m.stream, &m.entry).await;
            self.slots.add_permits(1);
            return;
        };
        let request: AttemptRequest = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropping an unreadable attempt message {}: {e}", m.entry);
                self.done_with(&m.stream, &m.entry).await;
                self.slots.add_permits(1);
                return;
            }
        };
        let remote = request.attempt_id;
        let run_id = run
            .strip_prefix("dispatch:run:")
            .unwrap_or(&run)
            .to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&run)
            .cmd("HMGET")
            .arg(cancel_key(&run_id))
            .arg("all")
            .arg(format!("a:{}", remote.0));
        let state: Option<(Option<String>, CancelFlags)> = match self.broken {
            true => None,
            false => pipe.query_async(&mut self.conn).await.ok(),
        };
        let alive = |s: &Option<String>| s.as_deref() == Some(session.as_str());
        match state {
            Some((current, (None, None))) if alive(&current) => {}
            Some((current, _)) if alive(&current) => {
                self.post(&run, &session, remote, Outcome::Cancelled).await;
                self.done_with(&m.stream, &m.entry).await;
                self.slots.add_permits(1);
                return;
            }
            _ => {
                // Its coordinator is gone (or Redis is): nobody waits for this attempt.
                self.done_with(&m.stream, &m.entry).await;
                self.slots.add_permits(1);
                return;
            }
        }
        if attempts_stream(request.input.name()) != m.stream {
            // Each agent has its own stream: a request in the wrong one was not written by a
            // coordinator, and a worker restricted to some agents runs no other.
            tracing::warn!(
                "dropping {}: a '{}' attempt in {}",
                m.entry,
                request.input.name(),
                m.stream
            );
            self.done_with(&m.stream, &m.entry).await;
            self.slots.add_permits(1);
            return;
        }
        // Values under secret-looking keys never reach this worker's logs.
        crate::redact::register_secrets_in(&request.input.input_value());
        self.next_id += 1;
        let local = AttemptId(self.next_id);
        let mut request = request;
        request.attempt_id = local;
        self.jobs.insert(
            local,
            Job {
                run: run.clone(),
                session: session.clone(),
                remote,
                stream: m.stream,
                entry: m.entry,
                silent: false,
                lost: false,
            },
        );
        self.post(&run, &session, remote, Outcome::Started).await;
        self.executor.start(request);
    }

    /// An attempt read but not started: its coordinator starts it again elsewhere.
    async fn give_back(&mut self, m: Message) {
        let request = m
            .request
            .as_deref()
            .and_then(|t| serde_json::from_str::<AttemptRequest>(t).ok());
        if let (Some(run), Some(request)) = (&m.run, request) {
            let reason = format!(
                "worker '{}' stopped before starting the attempt",
                self.options.name
            );
            let session = m.session.clone().unwrap_or_default();
            self.post(run, &session, request.attempt_id, Outcome::Lost { reason })
                .await;
        }
        self.done_with(&m.stream, &m.entry).await;
    }

    async fn ended(&mut self, event: ExecutorEvent) {
        let (local, outcome, files) = match event {
            ExecutorEvent::Progress {
                attempt_id,
                progress,
                total,
                message,
            } => {
                if let Some(job) = self.jobs.get(&attempt_id)
                    && !job.silent
                {
                    let (run, session, remote) = (job.run.clone(), job.session.clone(), job.remote);
                    let outcome = Outcome::Progress {
                        progress,
                        total,
                        message,
                    };
                    self.post(&run, &session, remote, outcome).await;
                }
                return;
            }
            ExecutorEvent::Finished {
                attempt_id,
                end,
                files,
            } => {
                let outcome = match end {
                    AttemptEnd::Finished(Ok(output)) => Outcome::Succeeded { output },
                    AttemptEnd::Finished(Err(f)) => Outcome::Failed {
                        transient: f.error.transient,
                        retry_after_ms: f.error.retry_after.map(|d| d.as_millis() as u64),
                        error: f.error,
                        output: f.output,
                    },
                    AttemptEnd::Cancelled => Outcome::Cancelled,
                };
                (attempt_id, outcome, files)
            }
            ExecutorEvent::Lost { attempt_id, reason } => (
                attempt_id,
                Outcome::Lost { reason },
                FilesTouched::default(),
            ),
            ExecutorEvent::Failed { .. } | ExecutorEvent::Waiting { .. } => return,
        };
        let Some(job) = self.jobs.remove(&local) else {
            return;
        };
        self.slots.add_permits(1);
        if !job.silent {
            let outcome = if job.lost {
                Outcome::Lost {
                    reason: format!(
                        "worker '{}' was stopped before the attempt finished",
                        self.options.name
                    ),
                }
            } else {
                outcome
            };
            self.post_with_files(&job.run, &job.session, job.remote, outcome, files)
                .await;
        }
        self.done_with(&job.stream, &job.entry).await;
    }

    /// Renews the lease of every running attempt; one whose message is gone was reclaimed by
    /// its coordinator: it stops here.
    async fn renew(&mut self) {
        let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for job in self.jobs.values().filter(|j| !j.silent) {
            by_stream
                .entry(job.stream.clone())
                .or_default()
                .push(job.entry.clone());
        }
        for (stream, entries) in by_stream {
            let cmd = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.options.name)
                .arg(0)
                .arg(&entries)
                .arg("JUSTID")
                .clone();
            let Some(kept) = self.query::<Vec<String>>(&cmd).await else {
                continue;
            };
            let kept: HashSet<String> = kept.into_iter().collect();
            let gone: Vec<AttemptId> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.stream == stream && !kept.contains(&j.entry) && !j.silent)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                tracing::warn!("an attempt was reclaimed by its coordinator; stopping it");
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.silent = true;
                }
                self.executor.cancel(id);
            }
        }
    }

    /// Applies the cancel flags of the runs this worker has attempts of.
    async fn poll_cancels(&mut self) {
        let runs: HashSet<String> = self
            .jobs
            .values()
            .filter(|j| !j.silent)
            .map(|j| j.run.clone())
            .collect();
        let mut hurry = false;
        for run in runs {
            let run_id = run
                .strip_prefix("dispatch:run:")
                .unwrap_or(&run)
                .to_string();
            let mut pipe = redis::pipe();
            pipe.cmd("GET")
                .arg(&run)
                .cmd("HGETALL")
                .arg(cancel_key(&run_id));
            let state: Option<(Option<String>, HashMap<String, String>)> = match self.broken {
                true => None,
                false => pipe.query_async(&mut self.conn).await.ok(),
            };
            let Some((session, flags)) = state else {
                continue;
            };
            let all = flags.contains_key("all");
            hurry |= flags.contains_key("hurry");
            // Attempts of a coordinator that is gone (its key expired, or a resumed run has a
            // new session) are stopped without a word: nobody waits for them.
            let mut orphans = false;
            let doomed: Vec<(AttemptId, bool)> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.run == run && !j.silent)
                .filter_map(|(id, j)| {
                    let alive = session.as_deref() == Some(j.session.as_str());
                    let flagged = all || flags.contains_key(&format!("a:{}", j.remote.0));
                    (!alive || flagged).then_some((*id, alive))
                })
                .collect();
            for (id, alive) in doomed {
                if !alive && let Some(job) = self.jobs.get_mut(&id) {
                    job.silent = true;
                    orphans = true;
                }
                self.executor.cancel(id);
            }
            if orphans {
                tracing::warn!(
                    "stopping attempts of run {run_id}: their coordinator is gone (or the run was resumed elsewhere)"
                );
            }
            // No coordinator to wait for: no grace either.
            hurry |= orphans;
        }
        if hurry {
            self.executor.hurry();
        }
    }
}

/// Reads attempts for as many free slots as there are, and hands them to the worker.
async fn read_attempts(
    client: redis::Client,
    mut conn: MultiplexedConnection,
    streams: Vec<String>,
    name: String,
    slots: Arc<Semaphore>,
    reconnect_for: Duration,
    tx: mpsc::Sender<Result<Vec<Message>, String>>,
) {
    loop {
        let Ok(first) = slots.acquire().await else {
            return;
        };
        first.forget();
        let mut n = 1;
        while let Ok(p) = slots.try_acquire() {
            p.forget();
            n += 1;
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&name)
            .arg("COUNT")
            .arg(n)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let read: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(&mut conn).await;
        match read {
            Ok(reply) => {
                let mut batch = Vec::new();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        batch.push(Message {
                            stream: key.key.clone(),
                            run: entry.get("run"),
                            session: entry.get("session"),
                            request: entry.get("request"),
                            entry: entry.id,
                        });
                    }
                }
                slots.add_permits(n - batch.len());
                if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                slots.add_permits(n);
                if e.code() == Some("NOGROUP") {
                    // Someone deleted a stream: make it again.
                    for s in &streams {
                        let _ = super::ensure_group(&mut conn, s).await;
                    }
                    continue;
                }
                tracing::warn!("lost the connection to Redis ({e}); reconnecting");
                match super::reconnect(&client, None, reconnect_for).await {
                    Some(c) => conn = c,
                    None => {
                        let _ = tx
                            .send(Err(format!(
                                "lost the connection to Redis and could not reconnect within {} s; stopping",
                                reconnect_for.as_secs_f64()
                            )))
                            .await;
                        return;
                    }
                }
            }
        }
    }
}
