//! Limits on what a batch may hold, so hostile or runaway input ends in a clear error (exit 2 with a
//! JSON Pointer) instead of exhausting memory, the stack or the machine.
//!
//! They are set by the caller (command-line flags), never by the batch itself: a batch must not be
//! able to raise the limits it is checked against.

use serde_json::Value;

use crate::issue::{Issue, pointer_token};

/// Most `batch` nesting a batch may allow (`config.max_batch_depth`).
pub const MAX_BATCH_DEPTH: u32 = 16;
/// The default `config.max_batch_depth`.
pub const DEFAULT_MAX_BATCH_DEPTH: u32 = 3;
pub const DEFAULT_MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// The JSON parser refuses deeper nesting on its own (its recursion limit), so a higher
/// `max_depth` cannot take effect.
pub const PARSER_MAX_DEPTH: usize = 127;
pub const DEFAULT_MAX_TASKS: usize = 1_000_000;
pub const DEFAULT_MAX_STRING_BYTES: usize = 4 * 1024 * 1024;
/// The most `max_output_bytes` may ever be (the schema's maximum, and the ceiling of the
/// `--max-output-bytes` flags): each stream is held in memory, then in the result and the trace.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// The largest integer every JSON reader holds exactly (2^53 - 1; JavaScript's
/// `Number.MAX_SAFE_INTEGER`): the published schema's ceiling for integer fields that have no
/// tighter one, so that validators reading numbers as doubles agree with the runner on it.
pub const MAX_JSON_INTEGER: u64 = (1 << 53) - 1;
/// Most tasks running at once (`config.max_workers`).
pub const MAX_WORKERS: usize = 4096;
/// Most extra attempts a task may ask for (`retries`).
pub const MAX_RETRIES: u32 = 100;
/// Longest retry delay in milliseconds (`retry_backoff_ms`, `retry_backoff_max_ms`).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Shortest per-attempt timeout in seconds (`timeout_seconds`).
pub const MIN_TIMEOUT_SECONDS: f64 = 0.001;
/// Longest task id and dependency entry, in bytes (all ASCII).
pub const MAX_TASK_ID_LEN: usize = 128;
/// Longest breaker name.
pub const MAX_BREAKER_NAME_LEN: usize = 64;
/// What task ids, dependencies and breaker names are made of.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_.\-]+$";
/// What `serve` keeps of each output stream at most unless told otherwise (`--max-output-bytes`):
/// a server runs several batches at once for clients it does not control.
pub const DEFAULT_SERVER_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Sizes a batch may not exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of JSON text.
    pub max_input_bytes: usize,
    /// Nesting of arrays and objects; the document itself is depth 1.
    pub max_depth: usize,
    /// Entries of `tasks`.
    pub max_tasks: usize,
    /// Bytes of any one string, object keys included.
    pub max_string_bytes: usize,
    /// The most `config.max_output_bytes` may ask for. A server sets it to its own cap, so a
    /// batch cannot raise what the server keeps of each output stream.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_tasks: DEFAULT_MAX_TASKS,
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            max_output_bytes: MAX_OUTPUT_BYTES,
        }
    }
}

impl Limits {
    /// The error for input longer than `max_input_bytes` (`len` is what was read, which may stop
    /// just past the limit).
    pub fn input_too_large(&self, what: &str) -> Issue {
        Issue::new(
            "",
            format!(
                "{what} is larger than the input limit of {} bytes (raise it with --max-input-bytes)",
                self.max_input_bytes
            ),
        )
    }

    /// Checks text length before parsing.
    pub fn check_text(&self, text: &str) -> Result<(), Issue> {
        if text.len() > self.max_input_bytes {
            return Err(self.input_too_large("the input"));
        }
        Ok(())
    }

    /// Checks a parsed document: nesting, task count and string lengths. Reports at most one
    /// problem per limit (the first found), since one oversized input tends to repeat itself.
    pub fn check_value(&self, value: &Value) -> Vec<Issue> {
        self.check_value_at(value, 1)
    }

    /// As [`check_value`](Self::check_value) for a value found at nesting `depth` of its
    /// document (paths in the issues are then relative to that value).
    pub fn check_value_at(&self, value: &Value, depth: usize) -> Vec<Issue> {
        let mut issues = Vec::new();
        if let Some(tasks) = value.get("tasks").and_then(Value::as_array)
            && tasks.len() > self.max_tasks
        {
            issues.push(Issue::new(
                "/tasks",
                format!(
                    "{} tasks is more than the limit of {} (raise it with --max-tasks)",
                    tasks.len(),
                    self.max_tasks
                ),
            ));
        }
        let mut too_deep: Option<String> = None;
        let mut too_long: Option<(String, usize)> = None;
        // Iterative depth-first walk (the point is to not trust the input's depth). The path is
        // kept as segments and only turned into a pointer when a limit is hit, since this runs
        // over every value of every valid batch.
        enum Frame<'a> {
            Array(std::iter::Enumerate<std::slice::Iter<'a, Value>>),
            Object(serde_json::map::Iter<'a>),
        }
        enum Seg<'a> {
            Index(usize),
            Key(&'a str),
        }
        fn pointer(segs: &[Seg]) -> String {
            let mut p = String::new();
            for s in segs {
                p.push('/');
                match s {
                    Seg::Index(i) => p.push_str(&i.to_string()),
                    Seg::Key(k) => p.push_str(&pointer_token(k)),
                }
            }
            p
        }
        fn open(v: &Value) -> Option<Frame<'_>> {
            match v {
                Value::Array(a) => Some(Frame::Array(a.iter().enumerate())),
                Value::Object(m) => Some(Frame::Object(m.iter())),
                _ => None,
            }
        }
        let mut frames: Vec<Frame> = Vec::new();
        let mut segs: Vec<Seg> = Vec::new();
        if let Some(f) = open(value) {
            if depth > self.max_depth {
                too_deep = Some(String::new());
            } else {
                frames.push(f);
            }
        }
        while let Some(top) = frames.last_mut() {
            let next = match top {
                Frame::Array(it) => it.next().map(|(i, v)| (Seg::Index(i), v)),
                Frame::Object(it) => it.next().map(|(k, v)| (Seg::Key(k.as_str()), v)),
            };
            let Some((seg, child)) = next else {
                frames.pop();
                segs.pop();
                continue;
            };
            if let Seg::Key(k) = seg
                && k.len() > self.max_string_bytes
                && too_long.is_none()
            {
                segs.push(Seg::Key(k));
                too_long = Some((pointer(&segs), k.len()));
                segs.pop();
            }
            segs.push(seg);
            match child {
                Value::String(s) => {
                    if s.len() > self.max_string_bytes && too_long.is_none() {
                        too_long = Some((pointer(&segs), s.len()));
                    }
                    segs.pop();
                }
                Value::Array(_) | Value::Object(_) => {
                    // The value is at `depth`, so a container under `frames.len()` open ones is
                    // at depth frames.len() + depth.
                    if frames.len() + depth > self.max_depth {
                        too_deep.get_or_insert_with(|| pointer(&segs));
                        segs.pop();
                    } else {
                        frames.push(open(child).expect("a container"));
                    }
                }
                _ => {
                    segs.pop();
                }
            }
            if too_deep.is_some() && too_long.is_some() {
                break;
            }
        }
        if let Some(path) = too_deep {
            issues.push(Issue::new(
                path,
                format!(
                    "nested deeper than the limit of {} levels (raise it with --max-depth)",
                    self.max_depth
                ),
            ));
        }
        if let Some((path, len)) = too_long {
            issues.push(Issue::new(
                path,
                format!(
                    "string of {len} bytes is longer than the limit of {} bytes (raise it with --max-string-bytes)",
                    self.max_string_bytes
                ),
            ));
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Limits {
        Limits {
            max_input_bytes: 100,
            max_depth: 4,
            max_tasks: 2,
            max_string_bytes: 5,
            max_output_bytes: MAX_OUTPUT_BYTES,
        }
    }

    #[test]
    fn within_limits_is_quiet() {
        let v = json!({"tasks": [{"a": "12345"}, {"b": [1]}]});
        assert!(small().check_value(&v).is_empty());
        assert!(small().check_text("{}").is_ok());
    }

    #[test]
    fn each_limit_names_its_place() {
        let v = json!({"tasks": [{"a": "123456"}, {"b": [[1]]}, {}]});
        let issues = small().check_value(&v);
        let shown: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].starts_with("/tasks: 3 tasks is more than the limit of 2"));
        assert!(shown[1].starts_with("/tasks/1/b/0: nested deeper than the limit of 4"));
        assert!(shown[2].starts_with("/tasks/0/a: string of 6 bytes"));
        assert!(small().check_text(&"x".repeat(101)).is_err());
    }

    #[test]
    fn long_keys_count_as_strings() {
        let issues = small().check_value(&json!({"abcdef": 1}));
        assert_eq!(issues[0].path, "/abcdef");
    }
}
