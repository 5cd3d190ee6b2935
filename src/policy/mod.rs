//! Policies around an attempt, each small and separately tested: per-attempt timeout, retry with
//! exponential backoff, a circuit breaker per remote dependency (or per named group), and the
//! worker limit.
//!
//! They decide; the dispatcher applies them: `breaker(retry(timeout(attempt)))` under the worker
//! limit, with retry outside timeout so every attempt gets its own deadline.

pub mod breaker;
pub mod concurrency;
pub mod retry;
pub mod timeout;
