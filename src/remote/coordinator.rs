//! The coordinator's side: [`RedisExecutor`], an [`Executor`] over Redis Streams (see the
//! module doc of `remote` for the keys and the protocol).
//!
//! The trait's methods never block, so every Redis call happens in a background task (the
//! "link") that owns the connections; the executor talks to it over channels. The link keeps
//! the run's attempts that are queued or running and turns what workers post into
//! [`ExecutorEvent`]s; the executor keeps the set of attempts in flight so that an outcome
//! posted twice, or late, is dropped before the dispatcher sees it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    ATTEMPTS_PREFIX, GROUP, Outcome, OutcomeMessage, RedisOptions, attempts_stream, cancel_key,
    outcomes_stream, redact_url, run_key,
};
use crate::runner::executor::{AttemptEnd, AttemptId, AttemptRequest, Executor, ExecutorEvent};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// Outcomes read are trimmed from the run's stream once this many more have been read.
const KEEP_READ_OUTCOMES: usize = 5_000;

/// How long an attempt may sit in the queue, untaken, before the link looks whether any live
/// worker serves its agent; and how often it looks again while attempts wait.
const WAITING_CHECK: Duration = Duration::from_secs(3);

/// Runs a run's attempts on the workers of a Redis pool.
pub struct RedisExecutor {
    commands: mpsc::UnboundedSender<Command>,
    notes: mpsc::UnboundedReceiver<Note>,
    in_flight: HashSet<AttemptId>,
    workers: HashMap<AttemptId, String>,
    link: Option<tokio::task::JoinHandle<()>>,
}

enum Command {
    Start(Box<AttemptRequest>),
    Cancel(AttemptId),
    CancelAll,
    Hurry,
    Close(oneshot::Sender<()>),
}

enum Note {
    Event(ExecutorEvent),
    /// The worker that took an attempt.
    Worker(AttemptId, String),
    Failed(String),
}

impl RedisExecutor {
    /// Connects (failing at once when Redis cannot be reached) and starts the link for `run_id`.
    pub async fn connect(options: RedisOptions, run_id: &str) -> Result<Self, String> {
        let client = super::client(&options.url)?;
        let url = redact_url(&options.url);
        let unreachable = |e: redis::RedisError| format!("cannot reach Redis at {url}: {e}");
        let mut conn = super::connect(&client, Some(Duration::from_secs(5)))
            .await
            .map_err(unreachable)?;
        let reader = super::connect(&client, None).await.map_err(unreachable)?;
        let keys = RunKeys::new(run_id, &options);
        // The outcome stream exists from the start: workers add to it with NOMKSTREAM.
        // A resumed run has the same id: its outcomes are told apart by the session, and read
        // only from this point on.
        let session = format!("{:016x}", fastrand::u64(..));
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&keys.run)
            .arg(&session)
            .arg("PX")
            .arg(keys.alive_ttl_ms)
            .ignore()
            .cmd("XADD")
            .arg(&keys.out)
            .arg("*")
            .arg("hello")
            .arg(&session);
        let (hello,): (String,) = pipe.query_async(&mut conn).await.map_err(unreachable)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (note_tx, notes) = mpsc::unbounded_channel();
        let link = Link {
            client,
            conn,
            options,
            keys,
            placed: HashMap::new(),
            by_entry: HashMap::new(),
            groups: HashSet::new(),
            notes: note_tx,
            session,
            dead: false,
            last_error: None,
            last_waiting_check: Instant::now(),
            unserved: Vec::new(),
        };
        let handle = tokio::spawn(link.run(command_rx, reader, hello));
        Ok(RedisExecutor {
            commands,
            notes,
            in_flight: HashSet::new(),
            workers: HashMap::new(),
            link: Some(handle),
        })
    }

    fn send(&self, command: Command) {
        // The link only goes away after `close`.
        let _ = self.commands.send(command);
    }
}

impl Executor for RedisExecutor {
    fn start(&mut self, request: AttemptRequest) {
        self.in_flight.insert(request.attempt_id);
        self.send(Command::Start(Box::new(request)));
    }

    fn cancel(&mut self, attempt_id: AttemptId) {
        self.send(Command::Cancel(attempt_id));
    }

    fn cancel_all(&mut self) {
        self.send(Command::CancelAll);
    }

    fn hurry(&mut self) {
        self.send(Command::Hurry);
    }

    fn in_flight(&self) -> usize {
        // A failure noted while nothing is in flight waits in the channel: the next attempt
        // started brings it out before its own end.
        self.in_flight.len()
    }

    async fn next_event(&mut self) -> Option<ExecutorEvent> {
        while !self.in_flight.is_empty() {
            let note = match self.notes.recv().await {
                Some(note) => note,
                None => {
                    // The link is gone without saying why: nothing in flight can end any more.
                    let id = *self.in_flight.iter().next().expect("not empty");
                    self.in_flight.remove(&id);
                    return Some(ExecutorEvent::Lost {
                        attempt_id: id,
                        reason: "the connection to Redis ended".into(),
                    });
                }
            };
            match note {
                Note::Worker(id, name) => {
                    self.workers.insert(id, name);
                }
                Note::Failed(reason) => return Some(ExecutorEvent::Failed { reason }),
                Note::Event(event) => {
                    let ends = match &event {
                        ExecutorEvent::Progress { attempt_id, .. } => {
                            if self.in_flight.contains(attempt_id) {
                                return Some(event);
                            }
                            continue;
                        }
                        ExecutorEvent::Finished { attempt_id, .. }
                        | ExecutorEvent::Lost { attempt_id, .. } => *attempt_id,
                        ExecutorEvent::Failed { .. } | ExecutorEvent::Waiting { .. } => {
                            return Some(event);
                        }
                    };
                    // An end for an attempt not in flight is a duplicate or late: dropped.
                    if self.in_flight.remove(&ends) {
                        return Some(event);
                    }
                }
            }
        }
        None
    }

    fn worker_of(&mut self, attempt_id: AttemptId) -> Option<String> {
        self.workers.remove(&attempt_id)
    }

    async fn drain(&mut self) {
        // Workers kill what cancelled attempts left behind; nothing runs here.
    }

    async fn close(&mut self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Close(tx));
        // Cleaning up is worth a few seconds, not a hang when Redis is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        if let Some(link) = self.link.take() {
            link.abort();
        }
    }
}

struct RunKeys {
    run: String,
    out: String,
    cancel: String,
    alive_ttl_ms: u64,
}

impl RunKeys {
    fn new(run_id: &str, options: &RedisOptions) -> Self {
        RunKeys {
            run: run_key(run_id),
            out: outcomes_stream(run_id),
            cancel: cancel_key(run_id),
            // Workers drop a run's attempts once this is gone: long enough to outlive a slow
            // tick, short enough that a killed coordinator's attempts stop soon.
            alive_ttl_ms: (options.lease.as_millis() as u64).clamp(5_000, 30_000),
        }
    }
}

/// An attempt of this run that is queued or running.
struct Placed {
    stream: String,
    entry: String,
    queued_at: Instant,
    worker: Option<String>,
}

struct Link {
    client: redis::Client,
    conn: MultiplexedConnection,
    options: RedisOptions,
    keys: RunKeys,
    placed: HashMap<AttemptId, Placed>,
    by_entry: HashMap<String, AttemptId>,
    /// Attempt streams whose group this link has made sure of.
    groups: HashSet<String>,
    notes: mpsc::UnboundedSender<Note>,
    /// Names this executor's attempts in their messages; workers echo it in outcomes.
    session: String,
    /// Redis stayed away past the reconnect bound: everything ends as cancelled.
    dead: bool,
    last_error: Option<String>,
    /// When the link last looked for live workers of the queued attempts' agents, and the
    /// agents it found none for (what the run is told it waits for).
    last_waiting_check: Instant,
    unserved: Vec<String>,
}

enum Inbound {
    Outcomes(Vec<OutcomeMessage>),
    Failed(String),
}

impl Link {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        reader: MultiplexedConnection,
        hello: String,
    ) {
        let (in_tx, mut inbound) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_outcomes(
            self.client.clone(),
            reader,
            self.keys.out.clone(),
            hello,
            self.options.reconnect_for,
            in_tx,
        ));
        let period =
            (self.options.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Close(done)) => {
                        self.close().await;
                        reader.abort();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command).await,
                    None => {
                        self.close().await;
                        reader.abort();
                        return;
                    }
                },
                Some(inbound) = inbound.recv() => match inbound {
                    Inbound::Outcomes(messages) => {
                        for m in messages {
                            self.outcome(m).await;
                        }
                    }
                    Inbound::Failed(reason) => self.fail(reason),
                },
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    fn note(&self, note: Note) {
        let _ = self.notes.send(note);
    }

    fn event(&self, event: ExecutorEvent) {
        self.note(Note::Event(event));
    }

    /// Redis is gone for good: the run stops; what was in flight ends as cancelled.
    fn fail(&mut self, reason: String) {
        if self.dead {
            return;
        }
        tracing::error!("{reason}");
        self.dead = true;
        self.note(Note::Failed(reason));
        for (id, _) in self.placed.drain() {
            let _ = self.notes.send(Note::Event(ExecutorEvent::Finished {
                attempt_id: id,
                end: AttemptEnd::Cancelled,
                files: Default::default(),
            }));
        }
        self.by_entry.clear();
    }

    /// Runs one Redis request, reconnecting (within the bound) and retrying once when the
    /// connection broke. `None` when Redis is gone for good (the link is then dead).
    async fn query<T: redis::FromRedisValue + Send>(
        &mut self,
        build: impl Fn() -> redis::Cmd,
    ) -> Option<T> {
        if self.dead {
            return None;
        }
        let mut reconnected = false;
        loop {
            match build().query_async::<T>(&mut self.conn).await {
                Ok(v) => return Some(v),
                Err(e)
                    if !reconnected
                        && (e.is_io_error()
                            || e.is_timeout()
                            || e.is_connection_dropped()
                            || e.is_unrecoverable_error()) =>
                {
                    tracing::warn!("lost the connection to Redis ({e}); reconnecting");
                    match super::reconnect(
                        &self.client,
                        Some(Duration::from_secs(5)),
                        self.options.reconnect_for,
                    )
                    .await
                    {
                        Some(conn) => {
                            self.conn = conn;
                            reconnected = true;
                        }
                        None => {
                            self.fail(format!(
                                "lost the connection to Redis at {} and could not reconnect within {} s",
                                redact_url(&self.options.url),
                                self.options.reconnect_for.as_secs_f64()
                            ));
                            return None;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("Redis request failed: {e}");
                    self.last_error = Some(e.to_string());
                    return None;
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Start(request) => self.start(*request).await,
            Command::Cancel(id) => {
                let cancel = self.keys.cancel.clone();
                let field = format!("a:{}", id.0);
                let _: Option<()> = self
                    .query(|| redis::cmd("HSET").arg(&cancel).arg(&field).arg(1).clone())
                    .await;
                self.unqueue(&[id]).await;
            }
            Command::CancelAll => {
                let cancel = self.keys.cancel.clone();
                let _: Option<()> = self
                    .query(|| redis::cmd("HSET").arg(&cancel).arg("all").arg(1).clone())
                    .await;
                let queued: Vec<AttemptId> = self
                    .placed
                    .iter()
                    .filter(|(_, p)| p.worker.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                self.unqueue(&queued).await;
            }
            Command::Hurry => {
                let cancel = self.keys.cancel.clone();
                let _: Option<()> = self
                    .query(|| redis::cmd("HSET").arg(&cancel).arg("hurry").arg(1).clone())
                    .await;
            }
            Command::Close(_) => unreachable!("handled by the loop"),
        }
    }

    async fn start(&mut self, request: AttemptRequest) {
        let id = request.attempt_id;
        if self.dead {
            self.event(ExecutorEvent::Finished {
                attempt_id: id,
                end: AttemptEnd::Cancelled,
                files: Default::default(),
            });
            return;
        }
        let stream = attempts_stream(request.input.name());
        if !self.groups.contains(&stream) {
            let ok = super::ensure_group(&mut self.conn, &stream).await.is_ok();
            if ok {
                self.groups.insert(stream.clone());
            }
        }
        let body = serde_json::to_string(&request).expect("requests serialize");
        let run = self.keys.run.clone();
        let lease = self.options.lease.as_millis() as u64;
        let session = self.session.clone();
        let entry: Option<String> = self
            .query(|| {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("run")
                    .arg(&run)
                    .arg("lease_ms")
                    .arg(lease)
                    .arg("session")
                    .arg(&session)
                    .arg("request")
                    .arg(&body)
                    .clone()
            })
            .await;
        match entry {
            Some(entry) => {
                self.by_entry.insert(entry.clone(), id);
                self.placed.insert(
                    id,
                    Placed {
                        stream,
                        entry,
                        queued_at: Instant::now(),
                        worker: None,
                    },
                );
            }
            // Dead now (reported with everything else), or Redis refused the request.
            None if self.dead => self.event(ExecutorEvent::Finished {
                attempt_id: id,
                end: AttemptEnd::Cancelled,
                files: Default::default(),
            }),
            None => {
                let error = TaskError::permanent(
                    ErrorKind::Unavailable,
                    format!(
                        "Redis did not accept the attempt: {}",
                        self.last_error.take().unwrap_or_default()
                    ),
                );
                self.event(ExecutorEvent::Finished {
                    attempt_id: id,
                    end: AttemptEnd::Finished(Err(error.into())),
                    files: Default::default(),
                });
            }
        }
    }

    /// Takes attempts that no worker has started out of their stream and reports them cancelled.
    async fn unqueue(&mut self, ids: &[AttemptId]) {
        for id in ids {
            let Some(p) = self.placed.get(id) else {
                continue;
            };
            if p.worker.is_some() {
                continue;
            }
            let (stream, entry) = (p.stream.clone(), p.entry.clone());
            let deleted: Option<u64> = self
                .query(|| redis::cmd("XDEL").arg(&stream).arg(&entry).clone())
                .await;
            if deleted.is_some() {
                // A worker that read it meanwhile finds the cancel flag before it starts.
                self.forget(*id);
                self.event(ExecutorEvent::Finished {
                    attempt_id: *id,
                    end: AttemptEnd::Cancelled,
                    files: Default::default(),
                });
            }
        }
    }

    fn forget(&mut self, id: AttemptId) -> Option<Placed> {
        let p = self.placed.remove(&id)?;
        self.by_entry.remove(&p.entry);
        Some(p)
    }

    async fn outcome(&mut self, m: OutcomeMessage) {
        let id = m.attempt;
        if m.session != self.session {
            tracing::debug!("ignoring an outcome of another session of this run");
            return;
        }
        let Some(placed) = self.placed.get_mut(&id) else {
            tracing::debug!(
                "ignoring a late outcome for {id} from worker '{}'",
                m.worker
            );
            return;
        };
        if placed.worker.as_deref() != Some(m.worker.as_str()) {
            placed.worker = Some(m.worker.clone());
            let agent = agent_of(&placed.stream).to_string();
            self.note(Note::Worker(id, m.worker.clone()));
            self.agent_served(&agent);
        }
        let end = match m.outcome {
            Outcome::Started => return,
            Outcome::Progress {
                progress,
                total,
                message,
            } => {
                self.event(ExecutorEvent::Progress {
                    attempt_id: id,
                    progress,
                    total,
                    message,
                });
                return;
            }
            Outcome::Succeeded { output } => AttemptEnd::Finished(Ok(output)),
            Outcome::Failed {
                mut error,
                transient,
                retry_after_ms,
                output,
            } => {
                error.transient = transient;
                error.retry_after = retry_after_ms.map(Duration::from_millis);
                AttemptEnd::Finished(Err(Failure { error, output }))
            }
            Outcome::Cancelled => AttemptEnd::Cancelled,
            Outcome::Lost { reason } => {
                self.forget(id);
                self.event(ExecutorEvent::Lost {
                    attempt_id: id,
                    reason,
                });
                return;
            }
        };
        self.forget(id);
        self.event(ExecutorEvent::Finished {
            attempt_id: id,
            end,
            files: m.files,
        });
    }

    async fn tick(&mut self) {
        if self.dead {
            return;
        }
        // Every key of the run expires unless this coordinator lives: a killed one leaves
        // nothing behind for long.
        let ttl = self.keys.alive_ttl_ms;
        for key in [
            self.keys.run.clone(),
            self.keys.out.clone(),
            self.keys.cancel.clone(),
        ] {
            let renewed: Option<u64> = self
                .query(|| redis::cmd("PEXPIRE").arg(&key).arg(ttl).clone())
                .await;
            if key == self.keys.run && renewed == Some(0) {
                // Redis restarted without its data, or someone deleted the keys: the queued
                // and running attempts are gone with them, and nobody would ever report them.
                self.fail(format!(
                    "Redis at {} lost the run's keys (restarted without persistence, or flushed)",
                    redact_url(&self.options.url)
                ));
                return;
            }
        }
        self.reclaim().await;
        self.check_waiting().await;
        if let Some(limit) = self.options.queue_timeout {
            let now = Instant::now();
            let stale: Vec<AttemptId> = self
                .placed
                .iter()
                .filter(|(_, p)| p.worker.is_none() && now - p.queued_at >= limit)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                let Some(p) = self.placed.get(&id) else {
                    continue;
                };
                let (stream, entry) = (p.stream.clone(), p.entry.clone());
                let deleted: Option<u64> = self
                    .query(|| redis::cmd("XDEL").arg(&stream).arg(&entry).clone())
                    .await;
                if deleted.is_some() {
                    self.forget(id);
                    let error = TaskError::permanent(
                        ErrorKind::QueueTimeout,
                        format!(
                            "no worker took the attempt within the queue timeout ({} s); are workers running for this agent?",
                            limit.as_secs_f64()
                        ),
                    );
                    self.event(ExecutorEvent::Finished {
                        attempt_id: id,
                        end: AttemptEnd::Finished(Err(error.into())),
                        files: Default::default(),
                    });
                }
            }
        }
    }

    /// Tells the run when attempts wait in the queue for an agent no live worker serves, and
    /// when that is over. Attempts queued behind busy workers are not "waiting for workers".
    async fn check_waiting(&mut self) {
        let now = Instant::now();
        let mut queued: HashMap<String, usize> = HashMap::new();
        let mut oldest = now;
        for p in self.placed.values().filter(|p| p.worker.is_none()) {
            *queued.entry(agent_of(&p.stream).to_string()).or_default() += 1;
            oldest = oldest.min(p.queued_at);
        }
        if queued.is_empty() {
            if !self.unserved.is_empty() {
                self.unserved.clear();
                self.event(ExecutorEvent::Waiting {
                    queued: 0,
                    agents: Vec::new(),
                });
            }
            return;
        }
        if now - oldest < WAITING_CHECK || now - self.last_waiting_check < WAITING_CHECK {
            return;
        }
        self.last_waiting_check = now;
        let Some(served) = self.served_agents().await else {
            return;
        };
        let mut unserved: Vec<String> = queued
            .keys()
            .filter(|a| !served.contains(*a))
            .cloned()
            .collect();
        unserved.sort();
        let waiting: usize = unserved.iter().map(|a| queued[a.as_str()]).sum();
        if unserved != self.unserved {
            if !unserved.is_empty() {
                tracing::warn!(
                    "waiting for workers: {waiting} attempts queued in Redis for {} and no live worker serves {} (`dispatch_runner workers --redis URL` lists the live ones)",
                    unserved.join(", "),
                    if unserved.len() == 1 { "it" } else { "them" },
                );
            }
            self.unserved = unserved.clone();
            self.event(ExecutorEvent::Waiting {
                queued: waiting,
                agents: unserved,
            });
        }
    }

    /// A worker took an attempt of `agent`: the run no longer waits for workers of it.
    fn agent_served(&mut self, agent: &str) {
        if !self.unserved.iter().any(|a| a == agent) {
            return;
        }
        self.unserved.retain(|a| a != agent);
        let queued = self
            .placed
            .values()
            .filter(|p| {
                p.worker.is_none() && self.unserved.iter().any(|a| a == agent_of(&p.stream))
            })
            .count();
        self.event(ExecutorEvent::Waiting {
            queued,
            agents: self.unserved.clone(),
        });
    }

    /// The agents some live worker serves, from the workers' heartbeat keys. `None` when
    /// Redis did not answer (the check is skipped; the next tick's requests reconnect).
    async fn served_agents(&mut self) -> Option<HashSet<String>> {
        if self.dead {
            return None;
        }
        match super::live_workers(&mut self.conn).await {
            Ok(workers) => Some(workers.into_iter().flat_map(|w| w.agents).collect()),
            Err(e) => {
                tracing::debug!("cannot list the live workers: {e}");
                None
            }
        }
    }

    /// Attempts whose worker stopped renewing the lease: taken back and reported lost.
    async fn reclaim(&mut self) {
        // Per stream, the range of this run's entries: other runs' entries (a dead worker's
        // of a dead coordinator may stay pending for ever) are mostly outside it.
        let mut ranges: HashMap<String, (EntryOrder, EntryOrder)> = HashMap::new();
        for p in self.placed.values() {
            if p.worker.is_none() && p.queued_at.elapsed() < self.options.lease {
                continue;
            }
            let k = entry_order(&p.entry);
            let r = ranges.entry(p.stream.clone()).or_insert((k, k));
            r.0 = r.0.min(k);
            r.1 = r.1.max(k);
        }
        let lease = self.options.lease.as_millis() as u64;
        for (stream, (low, high)) in ranges {
            let (low, high) = (
                format!("{}-{}", low.0, low.1),
                format!("{}-{}", high.0, high.1),
            );
            let idle: Option<Vec<(String, String, u64, u64)>> = self
                .query(|| {
                    redis::cmd("XPENDING")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg("IDLE")
                        .arg(lease)
                        .arg(&low)
                        .arg(&high)
                        .arg(10_000)
                        .clone()
                })
                .await;
            for (entry, consumer, idle_ms, _) in idle.unwrap_or_default() {
                let Some(&id) = self.by_entry.get(&entry) else {
                    continue;
                };
                let _: Option<()> = self
                    .query(|| {
                        redis::cmd("XACK")
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(&entry)
                            .clone()
                    })
                    .await;
                let _: Option<()> = self
                    .query(|| redis::cmd("XDEL").arg(&stream).arg(&entry).clone())
                    .await;
                self.forget(id);
                self.note(Note::Worker(id, consumer.clone()));
                self.event(ExecutorEvent::Lost {
                    attempt_id: id,
                    reason: format!(
                        "worker '{consumer}' did not renew its lease for {idle_ms} ms (lease {lease} ms)"
                    ),
                });
            }
        }
    }

    /// The run's keys go; attempts still queued (none, normally) leave their streams.
    async fn close(&mut self) {
        if self.dead {
            return;
        }
        let left: Vec<(String, String)> = self
            .placed
            .values()
            .map(|p| (p.stream.clone(), p.entry.clone()))
            .collect();
        for (stream, entry) in left {
            let _: Option<()> = self
                .query(|| redis::cmd("XDEL").arg(&stream).arg(&entry).clone())
                .await;
        }
        let keys = [
            self.keys.run.clone(),
            self.keys.out.clone(),
            self.keys.cancel.clone(),
        ];
        let _: Option<()> = self.query(|| redis::cmd("DEL").arg(&keys).clone()).await;
    }
}

/// A stream entry id (`<ms>-<seq>`) as a pair that sorts as Redis sorts them.
type EntryOrder = (u64, u64);

/// The agent whose attempts a stream carries.
fn agent_of(stream: &str) -> &str {
    stream.strip_prefix(ATTEMPTS_PREFIX).unwrap_or(stream)
}

fn entry_order(id: &str) -> EntryOrder {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Reads the run's outcome stream and hands batches of messages to the link.
async fn read_outcomes(
    client: redis::Client,
    mut conn: MultiplexedConnection,
    stream: String,
    mut last: String,
    reconnect_for: Duration,
    tx: mpsc::UnboundedSender<Inbound>,
) {
    let mut mark = last.clone();
    let mut read_since_mark = 0;
    loop {
        let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(&mut conn)
            .await;
        match read {
            Ok(reply) => {
                let mut batch = Vec::new();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        last = entry.id.clone();
                        let Some(text) = entry.get::<String>("m") else {
                            continue;
                        };
                        match serde_json::from_str::<OutcomeMessage>(&text) {
                            Ok(m) => batch.push(m),
                            Err(e) => tracing::warn!("ignoring an unreadable outcome: {e}"),
                        }
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let n = batch.len();
                if tx.send(Inbound::Outcomes(batch)).is_err() {
                    return;
                }
                // What has been read is not needed again: in long runs the stream is trimmed to
                // the last few thousand entries read (they stay a while for whoever debugs).
                read_since_mark += n;
                if read_since_mark >= KEEP_READ_OUTCOMES {
                    let _: redis::RedisResult<()> = redis::cmd("XTRIM")
                        .arg(&stream)
                        .arg("MINID")
                        .arg(&mark)
                        .query_async(&mut conn)
                        .await;
                    mark = last.clone();
                    read_since_mark = 0;
                }
            }
            Err(e) => {
                tracing::warn!("lost the connection to Redis ({e}); reconnecting");
                match super::reconnect(&client, None, reconnect_for).await {
                    Some(c) => conn = c,
                    None => {
                        let _ = tx.send(Inbound::Failed(format!(
                            "lost the connection to Redis and could not reconnect within {} s",
                            reconnect_for.as_secs_f64()
                        )));
                        return;
                    }
                }
            }
        }
    }
}
