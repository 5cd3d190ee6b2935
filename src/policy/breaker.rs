//! A circuit breaker: after `threshold` consecutive counted failures it opens and rejects work at
//! once; after `recovery` it lets a single probe through (half-open); the probe's success closes
//! it, its failure reopens it.
//!
//! Every permit handed out must come back through exactly one of `on_success`, `on_failure` or
//! `on_release` (for attempts that say nothing about health: cancelled, or a permanent input
//! error). Releasing a probe that way returns the breaker to half-open with no probe in flight, so
//! it can never get stuck half-open.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Numeric encoding for gauges: 0 closed, 1 half-open, 2 open.
    pub fn as_number(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A state change, reported as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// Proof that an attempt was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// 0 disables the breaker.
    threshold: u32,
    recovery: Duration,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, recovery: Duration) -> Self {
        CircuitBreaker {
            threshold,
            recovery,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to start an attempt at `now`. `Err` means rejected: the breaker is open, or half-open
    /// with its probe already out. The transition, if any, is Open -> HalfOpen.
    pub fn try_acquire(&mut self, now: Instant) -> (Result<Permit, ()>, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Ok(Permit::Normal), None),
            BreakerState::Open => {
                let opened = self.opened_at.expect("open breaker has an opening time");
                if now.saturating_duration_since(opened) >= self.recovery {
                    self.probe_in_flight = true;
                    (Ok(Permit::Probe), self.set(BreakerState::HalfOpen))
                } else {
                    (Err(()), None)
                }
            }
            BreakerState::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                (Ok(Permit::Probe), None)
            }
            BreakerState::HalfOpen => (Err(()), None),
        }
    }

    pub fn on_success(&mut self, permit: Permit) -> Option<Transition> {
        self.consecutive_failures = 0;
        if permit == Permit::Probe {
            self.probe_in_flight = false;
        }
        // A normal attempt that started before the breaker opened and then succeeded is evidence
        // of health too.
        self.set(BreakerState::Closed)
    }

    pub fn on_failure(&mut self, permit: Permit, now: Instant) -> Option<Transition> {
        if permit == Permit::Probe {
            self.probe_in_flight = false;
            self.opened_at = Some(now);
            return self.set(BreakerState::Open);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.threshold > 0
            && self.consecutive_failures >= self.threshold
            && self.state == BreakerState::Closed
        {
            self.opened_at = Some(now);
            return self.set(BreakerState::Open);
        }
        None
    }

    /// Returns a permit without judging health.
    pub fn on_release(&mut self, permit: Permit) {
        if permit == Permit::Probe {
            self.probe_in_flight = false;
        }
    }

    fn set(&mut self, to: BreakerState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to })
    }
}

/// Which breaker an attempt counts against, and what counts as a failure there.
///
/// Breakers protect remote dependencies, not local programs: by default only an MCP server
/// (`mcp:<name>`, `mcp:url:<digest>`) and a model endpoint (`model:<provider>:<digest>`) get one,
/// and only infrastructure failures count (see [`is_infrastructure_failure`]). A user may group
/// tasks under a named breaker (task `breaker`, `agents.<name>.breaker`): those tasks share it and
/// every transient failure counts, non-zero exits included, because the user said they stand for
/// one thing. Labels never hold a raw URL: URLs become a short digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerKey {
    /// As shown in `breaker_changed` / `attempt_started` events and metrics.
    pub label: String,
    pub scope: BreakerScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerScope {
    /// Guards a remote dependency; only infrastructure failures count.
    Dependency,
    /// Named by the user; every transient failure counts.
    Named,
}

impl BreakerKey {
    pub fn dependency(label: String) -> Self {
        BreakerKey {
            label,
            scope: BreakerScope::Dependency,
        }
    }

    pub fn named(name: &str) -> Self {
        BreakerKey {
            label: name.to_string(),
            scope: BreakerScope::Named,
        }
    }

    /// Whether a failed attempt counts toward opening this breaker.
    pub fn counts(&self, error: &crate::task_error::TaskError) -> bool {
        match self.scope {
            BreakerScope::Dependency => is_infrastructure_failure(error.kind),
            // A lost attempt (its worker vanished) says nothing about what the tasks call.
            BreakerScope::Named => {
                error.transient
                    && !matches!(
                        error.kind,
                        crate::task_error::ErrorKind::AttemptLost
                            | crate::task_error::ErrorKind::WorkerLost
                    )
            }
        }
    }
}

/// Failures that say the dependency itself is unwell: it could not be reached or used
/// (connection refused or reset, transport or protocol breakage, HTTP 5xx), it is rate limiting
/// (HTTP 429), or a call to it ran out of time. A tool's own error result, a JSON-RPC error, a
/// model refusing a request, or a program exiting non-zero say nothing about the dependency.
pub fn is_infrastructure_failure(kind: crate::task_error::ErrorKind) -> bool {
    use crate::task_error::ErrorKind as K;
    matches!(
        kind,
        K::Unavailable | K::ProtocolError | K::ModelUnavailable | K::ModelRateLimited | K::Timeout
    )
}

/// A short, stable stand-in for text that must not appear in labels (a URL with credentials in
/// it): the first 12 hex digits of the SHA-256 of the text with its credentials redacted. A plain
/// hash of the credentials would let anyone who sees the label test guesses of a short password
/// or API key offline; endpoints that differ only in credentials share a label.
pub fn short_digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(crate::redact::redact_text(text).as_bytes());
    hash.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A user-given breaker name is 1 to 64 of `A-Za-z0-9_.-` (no `:`, so it never collides with
/// the `mcp:` and `model:` labels).
pub fn is_breaker_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_breakers_count_only_infrastructure_failures() {
        use crate::task_error::{ErrorKind, TaskError};
        let dep = BreakerKey::dependency("mcp:srv".into());
        let named = BreakerKey::named("db");
        let exit = TaskError::transient(ErrorKind::ExitStatus, "exit 1");
        let tool = TaskError::permanent(ErrorKind::ToolError, "tool said no");
        let down = TaskError::transient(ErrorKind::Unavailable, "refused");
        let rejected = TaskError::permanent(ErrorKind::ModelRequestRejected, "400");
        assert!(!dep.counts(&exit));
        assert!(!dep.counts(&tool));
        assert!(!dep.counts(&rejected));
        assert!(dep.counts(&down));
        assert!(dep.counts(&TaskError::transient(ErrorKind::ModelRateLimited, "429")));
        assert!(
            named.counts(&exit),
            "a named breaker counts what the user grouped"
        );
        assert!(!named.counts(&tool), "permanent errors never count");
    }

    #[test]
    fn digests_are_short_stable_and_hide_the_text() {
        let d = short_digest("http://user:pw@example.test/mcp");
        assert_eq!(d.len(), 12);
        assert_eq!(d, short_digest("http://user:pw@example.test/mcp"));
        assert_ne!(d, short_digest("http://example.test/mcp"));
        assert_ne!(d, short_digest("http://user:pw@other.test/mcp"));
        // The credentials do not enter the digest: a guess cannot be checked against it.
        assert_eq!(d, short_digest("http://other:guess@example.test/mcp"));
        assert!(is_breaker_name("db-1.main"));
        assert!(!is_breaker_name("mcp:x"));
        assert!(!is_breaker_name(""));
    }

    const RECOVERY: Duration = Duration::from_secs(60);

    fn t(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(3, RECOVERY);
        for _ in 0..2 {
            let (p, _) = b.try_acquire(now);
            assert_eq!(b.on_failure(p.unwrap(), now), None);
        }
        // A success in between resets the count.
        let (p, _) = b.try_acquire(now);
        b.on_success(p.unwrap());
        for i in 0..3 {
            let (p, _) = b.try_acquire(now);
            let tr = b.on_failure(p.unwrap(), now);
            if i == 2 {
                assert_eq!(
                    tr,
                    Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open
                    })
                );
            }
        }
        assert_eq!(b.try_acquire(t(now, 59)).0, Err(()));
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(1, RECOVERY);
        let (p, _) = b.try_acquire(now);
        b.on_failure(p.unwrap(), now);
        let (p, tr) = b.try_acquire(t(now, 60));
        assert_eq!(p, Ok(Permit::Probe));
        assert_eq!(tr.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t(now, 61)).0, Err(()), "only one probe");
        let tr = b.on_success(Permit::Probe);
        assert_eq!(tr.unwrap().to, BreakerState::Closed);
        assert_eq!(b.try_acquire(t(now, 62)).0, Ok(Permit::Normal));
    }

    #[test]
    fn failed_probe_reopens_for_another_recovery_period() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(1, RECOVERY);
        let (p, _) = b.try_acquire(now);
        b.on_failure(p.unwrap(), now);
        let (p, _) = b.try_acquire(t(now, 60));
        let tr = b.on_failure(p.unwrap(), t(now, 61));
        assert_eq!(tr.unwrap().to, BreakerState::Open);
        assert_eq!(b.try_acquire(t(now, 100)).0, Err(()));
        assert_eq!(b.try_acquire(t(now, 121)).0, Ok(Permit::Probe));
    }

    #[test]
    fn released_probe_does_not_leave_it_stuck_half_open() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(1, RECOVERY);
        let (p, _) = b.try_acquire(now);
        b.on_failure(p.unwrap(), now);
        let (p, _) = b.try_acquire(t(now, 60));
        b.on_release(p.unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t(now, 60)).0, Ok(Permit::Probe));
    }

    #[test]
    fn zero_threshold_never_opens() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(0, RECOVERY);
        for _ in 0..100 {
            let (p, _) = b.try_acquire(now);
            assert_eq!(b.on_failure(p.unwrap(), now), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
