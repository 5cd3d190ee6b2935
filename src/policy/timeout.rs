//! Per-attempt deadline. Dropping the timed-out future is what stops the work: agents release
//! their resources (a command's process group) when dropped.

use std::future::Future;
use std::time::Duration;

use crate::task_error::{ErrorKind, Failure, TaskError};

/// Runs `attempt`, abandoning it with a transient `timeout` error once `limit` has passed.
pub async fn with_timeout<T>(
    limit: Duration,
    attempt: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(timeout_error(limit).into()),
    }
}

pub fn timeout_error(limit: Duration) -> TaskError {
    TaskError::transient(
        ErrorKind::Timeout,
        format!("attempt timed out after {}", format_duration(limit)),
    )
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s:.3}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn times_out_and_drops_the_attempt() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let r: Result<(), Failure> = with_timeout(Duration::from_millis(50), async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        })
        .await;
        let err = r.unwrap_err().error;
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.transient);
        assert_eq!(err.message, "attempt timed out after 0.050s");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_results_through() {
        let r = with_timeout(Duration::from_secs(1), async { Ok::<_, Failure>(7) }).await;
        assert_eq!(r.unwrap(), 7);
    }
}
