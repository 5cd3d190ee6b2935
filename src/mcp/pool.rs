//! One MCP session per server per run, opened on first use and shared by every task on that
//! server (calls on one session run concurrently). A session whose connection broke is replaced
//! on the next use; an expired HTTP session (404) is re-initialized by the transport itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::mcp::client::{McpError, Session, SharedSession};
use crate::mcp::config::Transport;

type Slot = Arc<tokio::sync::Mutex<Option<SharedSession>>>;

#[derive(Default)]
pub struct McpPool {
    slots: Mutex<HashMap<String, Slot>>,
    /// Sessions opened so far, per server key (for reports and tests).
    opened: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for McpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpPool")
            .field("opened", &self.sessions_opened())
            .finish()
    }
}

impl McpPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live session for `key`, connecting with `transport` if there is none. Concurrent
    /// callers for the same server wait for one connection rather than each opening their own.
    pub async fn session(
        &self,
        key: &str,
        transport: impl FnOnce() -> Result<Transport, McpError>,
    ) -> Result<SharedSession, McpError> {
        let slot = self
            .slots
            .lock()
            .expect("pool lock")
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut current = slot.lock().await;
        if let Some(s) = current.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        if let Some(old) = current.take() {
            old.close().await;
        }
        let session = Arc::new(Session::connect(&transport()?).await?);
        *self
            .opened
            .lock()
            .expect("pool lock")
            .entry(key.to_string())
            .or_default() += 1;
        *current = Some(session.clone());
        Ok(session)
    }

    /// Forgets `session` (if it is still the current one for `key`) after it failed in a way that
    /// makes it unusable; the next caller connects anew.
    pub async fn discard(&self, key: &str, session: &SharedSession) {
        let slot = self.slots.lock().expect("pool lock").get(key).cloned();
        let Some(slot) = slot else { return };
        let mut current = slot.lock().await;
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            current.take();
            session.close().await;
        }
    }

    /// How many sessions were opened per server key.
    pub fn sessions_opened(&self) -> BTreeMap<String, u64> {
        self.opened.lock().expect("pool lock").clone()
    }

    /// Closes every session (end of run): HTTP sessions are ended, stdio servers shut down.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .expect("pool lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Some(s) = slot.lock().await.take() {
                s.close().await;
            }
        }
    }
}
