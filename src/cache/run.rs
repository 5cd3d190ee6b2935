//! The cache as one run uses it: lookups and stores on the blocking pool (they hash files and
//! talk to SQLite), their answers handed back to the dispatcher through a channel, and the
//! stores awaited before the run reports.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::{Cache, Lookup};
use crate::batch::Task;

#[derive(Debug, Clone, PartialEq)]
enum KeyState {
    Unchecked,
    Checking,
    /// Looked up; the key to store under after a success (none when uncacheable).
    Checked(Option<String>),
}

pub struct RunCache {
    cache: Arc<Cache>,
    state: Vec<KeyState>,
    tx: mpsc::UnboundedSender<(usize, Lookup)>,
    rx: mpsc::UnboundedReceiver<(usize, Lookup)>,
    pending: usize,
    stores: Vec<JoinHandle<()>>,
    /// Lookups on the blocking pool at once: a batch of thousands of cached tasks must not
    /// become thousands of threads queueing on one index.
    slots: Arc<Semaphore>,
}

/// Most lookups or stores running at once.
const PARALLEL: usize = 4;

impl RunCache {
    pub fn new(cache: Arc<Cache>, tasks: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        RunCache {
            cache,
            state: vec![KeyState::Unchecked; tasks],
            tx,
            rx,
            pending: 0,
            stores: Vec::new(),
            slots: Arc::new(Semaphore::new(PARALLEL)),
        }
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Whether task `i` must be looked up before it may start.
    /// Tasks added to the run after it started (a child batch's) get their own entries.
    pub fn grow(&mut self, n: usize) {
        if self.state.len() < n {
            self.state.resize_with(n, || KeyState::Unchecked);
        }
    }

    pub fn wants_lookup(&self, i: usize, task: &Task) -> bool {
        task.cache.is_some() && self.state[i] == KeyState::Unchecked
    }

    /// Lookups in flight.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Starts looking task `i` up with its resolved `input`; the answer comes from [`next`].
    ///
    /// [`next`]: RunCache::next
    pub fn spawn_lookup(&mut self, i: usize, task: &Task, input: Value) {
        let Some(spec) = task.cache.clone() else {
            return;
        };
        self.state[i] = KeyState::Checking;
        self.pending += 1;
        let (cache, tx, agent) = (self.cache.clone(), self.tx.clone(), task.agent.name());
        let slots = self.slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let answer = tokio::task::spawn_blocking(move || cache.lookup(agent, &input, &spec));
            // An answer always comes back, even from a panic: the dispatcher waits for it.
            let lookup = answer.await.unwrap_or_else(|_| Lookup::Uncacheable {
                reason: "the cache lookup failed".into(),
            });
            let _ = tx.send((i, lookup));
        });
    }

    /// The next lookup answer; pending forever when none is in flight.
    pub async fn next(&mut self) -> (usize, Lookup) {
        if self.pending == 0 {
            return std::future::pending().await;
        }
        let answer = self.rx.recv().await.expect("the run cache holds a sender");
        self.pending -= 1;
        let key = match &answer.1 {
            Lookup::Hit { key, .. } | Lookup::Miss { key, .. } => Some(key.clone()),
            Lookup::Uncacheable { .. } => None,
        };
        self.state[answer.0] = KeyState::Checked(key);
        answer
    }

    /// Task `i` succeeded with `output` (its attempt recorded `files`): stores it when it was
    /// looked up and missed.
    pub fn spawn_store(
        &mut self,
        i: usize,
        task: &Task,
        output: Value,
        files: crate::files::FilesTouched,
    ) {
        let (KeyState::Checked(Some(key)), Some(spec)) = (&self.state[i], &task.cache) else {
            return;
        };
        let (cache, key, spec) = (self.cache.clone(), key.clone(), spec.clone());
        let (task_id, agent) = (task.task_id.clone(), task.agent.name());
        let slots = self.slots.clone();
        self.stores.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let stored = tokio::task::spawn_blocking(move || {
                cache
                    .store(&key, &task_id, agent, output, &files, &spec)
                    .map_err(|e| (task_id, e))
            });
            if let Ok(Err((task_id, e))) = stored.await {
                tracing::warn!("cannot store the result of task '{task_id}' in the cache: {e}");
            }
        }));
    }

    /// The cache key of a task, computed on the blocking pool (`--rerun-failed` checks).
    pub async fn key_of(&self, task: &Task, input: Value) -> Result<String, String> {
        let Some(spec) = task.cache.clone() else {
            return Err("the task has no cache object".into());
        };
        let (cache, agent) = (self.cache.clone(), task.agent.name());
        tokio::task::spawn_blocking(move || cache.key(agent, &input, &spec))
            .await
            .unwrap_or_else(|e| Err(format!("the cache key could not be computed: {e}")))
    }

    /// Waits for the stores, records the hits, then applies the size and age caps if anything
    /// was stored.
    pub async fn finish(&mut self) {
        let stored = !self.stores.is_empty();
        for h in self.stores.drain(..) {
            let _ = h.await;
        }
        let cache = self.cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.record_hits()).await;
        if stored {
            let cache = self.cache.clone();
            match tokio::task::spawn_blocking(move || cache.enforce_caps()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("cannot apply the cache's size and age caps: {e}"),
                Err(e) => tracing::warn!("cannot apply the cache's size and age caps: {e}"),
            }
        }
    }
}
