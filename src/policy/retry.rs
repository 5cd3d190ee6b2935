//! Whether and when to try again: transient errors only, up to a number of extra attempts, with
//! exponential backoff (doubling from a base, capped) and jitter so retries do not stampede.

use std::time::Duration;

use crate::task_error::TaskError;

/// The longest `retry-after` hint that is honoured.
pub const MAX_RETRY_AFTER_HINT: Duration = Duration::from_secs(120);

/// Exponential backoff with "equal jitter": each delay is between half and all of the capped
/// exponential value, so it never collapses to zero but still spreads out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `retry` (1 for the first retry). `unit` is a random number in
    /// [0, 1): injected so tests are exact.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let factor = 2u64.saturating_pow(retry.saturating_sub(1));
        let capped = self
            .base
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(self.max);
        capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// The retry decision for one task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts allowed after the first.
    pub retries: u32,
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// After attempt number `attempt` (1-based) failed with `error`: the delay before the next
    /// attempt, or `None` when the task has failed for good.
    pub fn next_delay(&self, attempt: u32, error: &TaskError, unit: f64) -> Option<Duration> {
        let delay = (error.transient && attempt <= self.retries)
            .then(|| self.backoff.delay(attempt, unit))?;
        // A server's `retry-after` is a floor, capped so a huge value cannot stall the run.
        Some(match error.retry_after {
            Some(hint) => delay.max(hint.min(MAX_RETRY_AFTER_HINT)),
            None => delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_error::ErrorKind;

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_millis(500),
            },
        }
    }

    #[test]
    fn doubles_then_caps() {
        let b = policy(0).backoff;
        let top: Vec<u128> = (1..=5).map(|r| b.delay(r, 1.0).as_millis()).collect();
        assert_eq!(top, vec![100, 200, 400, 500, 500]);
        let bottom: Vec<u128> = (1..=4).map(|r| b.delay(r, 0.0).as_millis()).collect();
        assert_eq!(bottom, vec![50, 100, 200, 250]);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        assert_eq!(
            policy(0).backoff.delay(200, 1.0),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn retry_after_hint_is_a_capped_floor() {
        let p = policy(3);
        let hinted = |secs| {
            TaskError::transient(ErrorKind::ModelRateLimited, "429")
                .with_retry_after(Some(Duration::from_secs(secs)))
        };
        assert_eq!(
            p.next_delay(1, &hinted(2), 0.0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.next_delay(1, &hinted(100_000), 0.0),
            Some(MAX_RETRY_AFTER_HINT)
        );
        // A hint shorter than the backoff does not shorten it.
        let small = TaskError::transient(ErrorKind::ModelRateLimited, "429")
            .with_retry_after(Some(Duration::from_millis(1)));
        assert_eq!(
            p.next_delay(1, &small, 0.0),
            Some(Duration::from_millis(50))
        );
        // Permanent errors are not retried whatever the hint.
        let perm = TaskError::permanent(ErrorKind::ModelRequestRejected, "400")
            .with_retry_after(Some(Duration::from_secs(1)));
        assert_eq!(p.next_delay(1, &perm, 0.0), None);
    }

    #[test]
    fn retries_transient_errors_only_up_to_the_limit() {
        let transient = TaskError::transient(ErrorKind::ExitStatus, "x");
        let permanent = TaskError::permanent(ErrorKind::InvalidInput, "x");
        let p = policy(2);
        assert!(p.next_delay(1, &transient, 0.5).is_some());
        assert!(p.next_delay(2, &transient, 0.5).is_some());
        assert!(p.next_delay(3, &transient, 0.5).is_none());
        assert!(p.next_delay(1, &permanent, 0.5).is_none());
        assert!(policy(0).next_delay(1, &transient, 0.5).is_none());
    }
}
