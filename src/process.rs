//! Child processes in their own process group, so a timeout or an interrupt can take down the
//! whole tree (TERM, a grace period, then KILL) and no grandchild is left behind.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

pub mod program;
pub mod watchdog;

/// Tracks group terminations still in their grace period, so the run can wait for them before it
/// exits instead of leaving processes behind.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<ReaperState>>,
}

#[derive(Default)]
struct ReaperState {
    /// Watchers that send KILL when a grace period ends; each ends once its group is gone.
    watchers: Vec<JoinHandle<()>>,
    /// Groups whose grace period is running (a watcher removes its group when it ends).
    in_grace: Vec<i32>,
    /// Set by [`Reaper::hurry`]: every group terminated from now on is killed at once.
    hurried: bool,
}

impl Reaper {
    /// Sends TERM to the group now and KILL after `grace` if anything in it is still alive; once
    /// [`hurry`](Self::hurry) was called, sends KILL at once instead.
    pub fn terminate_group(&self, pgid: i32, grace: Duration) {
        let mut state = self.inner.lock().expect("reaper lock");
        if state.hurried {
            signal_group(pgid, libc::SIGKILL);
            return;
        }
        if !signal_group(pgid, libc::SIGTERM) {
            watchdog::forget(pgid);
            return;
        }
        let inner = self.inner.clone();
        let watcher = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            let mut polls = 0u32;
            while tokio::time::Instant::now() < deadline && group_alive(pgid, polls) {
                tokio::time::sleep(POLL).await;
                polls += 1;
            }
            // Under the lock, so a concurrent `hurry` either sees this group or sees it gone.
            {
                let mut state = inner.lock().expect("reaper lock");
                if let Some(at) = state.in_grace.iter().position(|&g| g == pgid) {
                    state.in_grace.swap_remove(at);
                }
                signal_group(pgid, libc::SIGKILL);
            }
            // KILL cannot be ignored, but it lands when the kernel next runs each process: wait
            // (briefly) until they are really gone, so nothing outlives the run.
            let settle = tokio::time::Instant::now() + KILL_SETTLE;
            while tokio::time::Instant::now() < settle && has_live_member(pgid) {
                tokio::time::sleep(POLL).await;
            }
            if !has_live_member(pgid) {
                watchdog::forget(pgid);
            }
        });
        state.in_grace.push(pgid);
        state.watchers.push(watcher);
    }

    /// Kills every group still in its grace period at once, and every group terminated later
    /// (a second interrupt). Watchers are not aborted: each sees its group gone and ends, so
    /// [`wait`](Self::wait) still returns only when the kills have landed.
    pub fn hurry(&self) {
        let mut state = self.inner.lock().expect("reaper lock");
        state.hurried = true;
        for &pgid in &state.in_grace {
            signal_group(pgid, libc::SIGKILL);
        }
    }

    /// Waits until every terminated group is gone. Cancel-safe: the watchers stay tracked until
    /// they end, so a caller that abandons this wait (to [`hurry`](Self::hurry) on a second
    /// signal) and waits again still waits for the killed groups to be gone, not just signalled.
    pub async fn wait(&self) {
        loop {
            {
                let mut state = self.inner.lock().expect("reaper lock");
                state.watchers.retain(|h| !h.is_finished());
                if state.watchers.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Signals every process in a group; false when the group no longer exists.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// How often a watcher looks at its group.
const POLL: Duration = Duration::from_millis(20);
/// How long a watcher waits for a killed group to be gone.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// Whether anything in the group still runs. `killpg(0)` alone also counts zombies: a
/// grandchild orphaned to an init that is slow to reap (common in containers) would hold every
/// grace period to its end. So every fifth poll asks /proc whether a live member is left.
fn group_alive(pgid: i32, polls: u32) -> bool {
    if !signal_group(pgid, 0) {
        return false;
    }
    polls % 5 != 4 || has_live_member(pgid)
}

/// Whether the group has a member that is not a zombie. Where /proc cannot be read, any member
/// counts as live.
fn has_live_member(pgid: i32) -> bool {
    if !signal_group(pgid, 0) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// Owns a running process group: dropping it (the attempt was cancelled or timed out) terminates
/// the group through the reaper.
pub struct GroupGuard {
    pgid: i32,
    grace: Duration,
    reaper: Reaper,
}

impl GroupGuard {
    pub fn new(pgid: i32, grace: Duration, reaper: Reaper) -> Self {
        GroupGuard {
            pgid,
            grace,
            reaper,
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Also runs after a normal exit: background children the command left in its group are
        // terminated rather than orphaned.
        self.reaper.terminate_group(self.pgid, self.grace);
    }
}

/// Bytes read from a stream, up to a cap; the rest is read and dropped so the writer never blocks.
#[derive(Debug, Default)]
pub struct Capture {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads `reader` to its end into `sink`, keeping at most `cap` bytes. The sink is shared so a
/// caller that gives up waiting (a grandchild holding the pipe open) still has what was read.
pub async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    sink: Arc<Mutex<Capture>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut c = sink.lock().expect("capture lock");
        let room = cap.saturating_sub(c.bytes.len());
        if n > room {
            c.truncated = true;
        }
        let keep = n.min(room);
        c.bytes.extend_from_slice(&buf[..keep]);
    }
}
