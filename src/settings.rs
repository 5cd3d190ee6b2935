//! Effective run settings: the batch's `config` laid over the built-in defaults, with command-line
//! overrides on top. Every later layer (environment, configuration file) slots in here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::batch::{BatchConfig, BreakerConfig};
use crate::config::AgentSection;
use crate::policy::retry::{Backoff, RetryPolicy};

pub const DEFAULT_MAX_WORKERS: usize = 5;
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 300.0;
pub const DEFAULT_TRACE_DIR: &str = "./traces";
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1000;
pub const DEFAULT_RETRY_BACKOFF_MAX_MS: u64 = 30_000;
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The default bound of an expanded input, in multiples of `max_output_bytes`: room for a few
/// whole upstream outputs, far below what would exhaust memory.
pub const EXPANDED_INPUT_FACTOR: usize = 4;
pub const MIN_DEFAULT_EXPANDED_INPUT_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
pub const DEFAULT_BREAKER_RECOVERY_SECONDS: f64 = 60.0;
/// Time between TERM and KILL when a process group is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The settings a run actually uses, recorded in its trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSettings {
    pub max_workers: usize,
    pub timeout_seconds: f64,
    pub trace_dir: PathBuf,
    pub retries: u32,
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub fail_fast: bool,
    pub max_output_bytes: usize,
    pub breaker_enabled: bool,
    pub max_expanded_input_bytes: usize,
    pub breaker_failure_threshold: u32,
    pub breaker_recovery_timeout_seconds: f64,
    /// Most levels of `batch` tasks inside `batch` tasks.
    pub max_batch_depth: u32,
    /// Per-agent overrides from the configuration file.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentSection>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings::resolve(&[])
    }
}

impl RunSettings {
    /// Resolves settings from layers given lowest precedence first; a field set in a later layer
    /// wins over earlier ones and over the defaults.
    pub fn resolve(layers: &[&BatchConfig]) -> Self {
        let mut merged = BatchConfig::defaults();
        for layer in layers {
            merged = merged.overlay(layer);
        }
        let breaker = &merged.circuit_breaker;
        let max_output_bytes = merged.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        // Every field is set: `defaults()` is the lowest layer.
        RunSettings {
            max_workers: merged.max_workers.unwrap_or(DEFAULT_MAX_WORKERS).max(1),
            timeout_seconds: merged.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
            trace_dir: PathBuf::from(merged.trace_dir.unwrap_or_default()),
            retries: merged.retries.unwrap_or_default(),
            retry_backoff_ms: merged.retry_backoff_ms.unwrap_or_default(),
            retry_backoff_max_ms: merged.retry_backoff_max_ms.unwrap_or_default(),
            fail_fast: merged.fail_fast.unwrap_or_default(),
            max_output_bytes,
            max_expanded_input_bytes: merged
                .max_expanded_input_bytes
                .unwrap_or(default_expanded_input_bytes(max_output_bytes)),
            breaker_enabled: breaker.enabled.unwrap_or(true),
            breaker_failure_threshold: breaker.failure_threshold.unwrap_or_default(),
            breaker_recovery_timeout_seconds: breaker.recovery_timeout_seconds.unwrap_or_default(),
            max_batch_depth: merged.max_batch_depth.unwrap_or_default(),
            agents: BTreeMap::new(),
        }
    }

    /// Per-attempt timeout of a task: the task's own, else its agent's, else the run's.
    pub fn timeout(&self, agent: &str, task_override: Option<f64>) -> Duration {
        let agent_value = self.agents.get(agent).and_then(|a| a.timeout_seconds);
        secs(
            task_override
                .or(agent_value)
                .unwrap_or(self.timeout_seconds),
        )
    }

    /// Most tasks of `agent` running at once, if capped.
    pub fn agent_concurrency(&self, agent: &str) -> Option<usize> {
        self.agents.get(agent).and_then(|a| a.max_concurrency)
    }

    /// Retry policy of a task: the task's retries, else its agent's, else the run's.
    pub fn retry_policy(&self, agent: &str, task_override: Option<u32>) -> RetryPolicy {
        let agent_value = self.agents.get(agent).and_then(|a| a.retries);
        RetryPolicy {
            retries: task_override.or(agent_value).unwrap_or(self.retries),
            backoff: Backoff {
                base: Duration::from_millis(self.retry_backoff_ms),
                max: Duration::from_millis(self.retry_backoff_max_ms.max(self.retry_backoff_ms)),
            },
        }
    }

    /// The named breaker of a task, if it opted in: the task's own, else its agent's.
    pub fn named_breaker<'a>(
        &'a self,
        agent: &str,
        task_override: Option<&'a str>,
    ) -> Option<&'a str> {
        task_override.or_else(|| self.agents.get(agent).and_then(|a| a.breaker.as_deref()))
    }

    pub fn breaker_recovery(&self) -> Duration {
        secs(self.breaker_recovery_timeout_seconds)
    }
}

/// The bound of an expanded input when none is set: a few whole upstream outputs, never less
/// than [`MIN_DEFAULT_EXPANDED_INPUT_BYTES`] so a small `max_output_bytes` does not starve it.
pub fn default_expanded_input_bytes(max_output_bytes: usize) -> usize {
    max_output_bytes
        .saturating_mul(EXPANDED_INPUT_FACTOR)
        .max(MIN_DEFAULT_EXPANDED_INPUT_BYTES)
}

/// Seconds from configuration as a duration; out-of-range values saturate instead of panicking.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

impl BatchConfig {
    /// The built-in defaults as a fully set configuration layer.
    pub fn defaults() -> BatchConfig {
        BatchConfig {
            max_workers: Some(DEFAULT_MAX_WORKERS),
            timeout_seconds: Some(DEFAULT_TIMEOUT_SECONDS),
            trace_dir: Some(DEFAULT_TRACE_DIR.to_string()),
            retries: Some(0),
            retry_backoff_ms: Some(DEFAULT_RETRY_BACKOFF_MS),
            retry_backoff_max_ms: Some(DEFAULT_RETRY_BACKOFF_MAX_MS),
            fail_fast: Some(false),
            max_output_bytes: Some(DEFAULT_MAX_OUTPUT_BYTES),
            // Follows max_output_bytes unless set (see `RunSettings::resolve`).
            max_expanded_input_bytes: None,
            max_batch_depth: Some(crate::limits::DEFAULT_MAX_BATCH_DEPTH),
            circuit_breaker: BreakerConfig {
                enabled: Some(true),
                failure_threshold: Some(DEFAULT_BREAKER_THRESHOLD),
                recovery_timeout_seconds: Some(DEFAULT_BREAKER_RECOVERY_SECONDS),
            },
        }
    }

    /// This configuration with every field that `higher` sets replaced by `higher`'s value.
    pub fn overlay(&self, higher: &BatchConfig) -> BatchConfig {
        BatchConfig {
            max_workers: higher.max_workers.or(self.max_workers),
            timeout_seconds: higher.timeout_seconds.or(self.timeout_seconds),
            trace_dir: higher.trace_dir.clone().or_else(|| self.trace_dir.clone()),
            retries: higher.retries.or(self.retries),
            retry_backoff_ms: higher.retry_backoff_ms.or(self.retry_backoff_ms),
            retry_backoff_max_ms: higher.retry_backoff_max_ms.or(self.retry_backoff_max_ms),
            fail_fast: higher.fail_fast.or(self.fail_fast),
            max_output_bytes: higher.max_output_bytes.or(self.max_output_bytes),
            max_expanded_input_bytes: higher
                .max_expanded_input_bytes
                .or(self.max_expanded_input_bytes),
            max_batch_depth: higher.max_batch_depth.or(self.max_batch_depth),
            circuit_breaker: BreakerConfig {
                enabled: higher
                    .circuit_breaker
                    .enabled
                    .or(self.circuit_breaker.enabled),
                failure_threshold: higher
                    .circuit_breaker
                    .failure_threshold
                    .or(self.circuit_breaker.failure_threshold),
                recovery_timeout_seconds: higher
                    .circuit_breaker
                    .recovery_timeout_seconds
                    .or(self.circuit_breaker.recovery_timeout_seconds),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = RunSettings::default();
        assert_eq!(s.max_workers, 5);
        assert_eq!(s.timeout_seconds, 300.0);
        assert_eq!(s.trace_dir, PathBuf::from("./traces"));
        assert_eq!(s.retries, 0);
        assert_eq!(s.retry_backoff_ms, 1000);
        assert!(!s.fail_fast);
        assert_eq!(s.breaker_failure_threshold, 5);
        assert_eq!(s.breaker_recovery(), Duration::from_secs(60));
    }

    #[test]
    fn later_layers_win_field_by_field() {
        let batch = BatchConfig {
            max_workers: Some(2),
            retries: Some(3),
            circuit_breaker: BreakerConfig {
                enabled: None,
                failure_threshold: Some(9),
                recovery_timeout_seconds: Some(5.0),
            },
            ..Default::default()
        };
        let cli = BatchConfig {
            max_workers: Some(8),
            circuit_breaker: BreakerConfig {
                enabled: None,
                failure_threshold: Some(1),
                recovery_timeout_seconds: None,
            },
            ..Default::default()
        };
        let s = RunSettings::resolve(&[&batch, &cli]);
        assert_eq!(s.max_workers, 8);
        assert_eq!(s.retries, 3);
        assert_eq!(s.breaker_failure_threshold, 1);
        assert_eq!(s.breaker_recovery_timeout_seconds, 5.0);
    }

    #[test]
    fn task_beats_agent_beats_run() {
        let mut s = RunSettings::default();
        s.agents.insert(
            "command".into(),
            AgentSection {
                timeout_seconds: Some(7.0),
                retries: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(s.timeout("command", Some(1.5)), Duration::from_millis(1500));
        assert_eq!(s.timeout("command", None), Duration::from_secs(7));
        assert_eq!(s.timeout("mcp", None), Duration::from_secs(300));
        assert_eq!(s.retry_policy("command", Some(4)).retries, 4);
        assert_eq!(s.retry_policy("command", None).retries, 2);
        assert_eq!(s.retry_policy("mcp", None).retries, 0);
        assert_eq!(s.timeout("command", Some(1e300)), Duration::MAX);
    }
}
