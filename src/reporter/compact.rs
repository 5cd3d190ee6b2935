//! The compact result (`--result compact`, `?result=compact`): what an AI agent needs to act on
//! a run, sized for its context window. The full result of hundreds of tasks carries every
//! task's whole output and floods the context of the agent that called us; this form keeps the
//! run's status, id, summary and trace path, and for each task that did not succeed its error and
//! the last lines of its stdout and stderr, plus the command that reruns what failed. Tasks that
//! succeeded are only counted (and named when there are few). The full document still goes to
//! `-o` and the trace, and the compact one says where.
//!
//! It is built from the same parts as the full result, the run's head and one [`TaskResult`] per
//! task in input order ([`CompactBuilder`]), so it does not depend on how the full result is held
//! or written.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{RunStatus, Summary, TaskStatus};
use crate::reporter::result::{RunResult, TaskResult};

/// Which result document goes to stdout (or the HTTP answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultForm {
    /// Every task with its whole output.
    #[default]
    Full,
    /// Status, summary, and the failures with the tails of their output.
    Compact,
}

/// Lines kept of the end of each output stream of a task that did not succeed.
pub const DEFAULT_TAIL_LINES: usize = 20;
/// Bytes kept at most of each of those tails, whatever the lines.
pub const DEFAULT_TAIL_BYTES: usize = 2048;
/// Succeeded tasks are named only up to this many; beyond it they are only counted.
pub const MAX_NAMED_SUCCESSES: usize = 20;
/// Output tails are given for at most this many failed tasks (in input order), so a run where
/// everything failed still fits an agent's context; the others keep their error.
pub const MAX_TASKS_WITH_TAILS: usize = 20;
/// An error message longer than this is cut (its start says what happened).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// How much of each output stream a compact result keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailLimits {
    pub lines: usize,
    pub bytes: usize,
}

impl Default for TailLimits {
    fn default() -> Self {
        TailLimits {
            lines: DEFAULT_TAIL_LINES,
            bytes: DEFAULT_TAIL_BYTES,
        }
    }
}

/// What the compact document says beyond the run itself: where the full result is and how the
/// batch was given (for the rerun command).
#[derive(Debug, Clone, Default)]
pub struct CompactContext {
    pub tails: TailLimits,
    /// The `-o` file holding the full result, when one was written.
    pub output_file: Option<String>,
    /// The batch file (`-f`), named in the rerun command so a batch with secrets (which the
    /// trace holds redacted) reruns with its real values.
    pub input_file: Option<String>,
    /// Whether to suggest a `--rerun-failed` command (not in serve mode, which has none).
    pub rerun_command: bool,
}

/// The compact result document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactResult {
    /// Always `compact`, so a reader can tell this form from the full one.
    pub result_form: ResultForm,
    pub status: RunStatus,
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run_id: Option<String>,
    /// Every attempt and event, and every task's whole output.
    pub trace_file: String,
    /// The full result document, when `-o` wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    pub summary: Summary,
    /// Ids of the tasks that succeeded, when there are at most [`MAX_NAMED_SUCCESSES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<Vec<String>>,
    /// Every task that did not succeed, in input order.
    pub not_succeeded: Vec<CompactTask>,
    /// A command that runs again only what did not succeed (and its dependents), reusing the
    /// outputs of what did. Absent when everything succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_command: Option<String>,
}

/// A task that did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactTask {
    pub task_id: String,
    pub agent: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CompactError>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Tail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Tail>,
    /// The runner kept only part of the output when capturing it (`max_output_bytes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
    /// The task had output, left out because [`MAX_TASKS_WITH_TAILS`] tasks already show theirs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_omitted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactError {
    pub kind: String,
    pub message: String,
}

/// The end of an output stream, and how much was cut before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tail {
    pub text: String,
    /// Whole lines cut before `text`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_lines: usize,
    /// Bytes cut before `text`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_bytes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Builds a compact result task by task, in input order.
pub struct CompactBuilder {
    doc: CompactResult,
    context: CompactContext,
    successes: usize,
    with_tails: usize,
}

impl CompactBuilder {
    /// Starts from the run's head: the same fields as the full result's.
    pub fn new(
        status: RunStatus,
        run_id: &str,
        previous_run_id: Option<&str>,
        trace_file: &str,
        summary: &Summary,
        context: CompactContext,
    ) -> Self {
        CompactBuilder {
            doc: CompactResult {
                result_form: ResultForm::Compact,
                status,
                run_id: run_id.to_string(),
                previous_run_id: previous_run_id.map(str::to_string),
                trace_file: trace_file.to_string(),
                output_file: context.output_file.clone(),
                summary: summary.clone(),
                succeeded: Some(Vec::new()),
                not_succeeded: Vec::new(),
                rerun_command: None,
            },
            context,
            successes: 0,
            with_tails: 0,
        }
    }

    pub fn push(&mut self, task: &TaskResult) {
        if task.status == TaskStatus::Success {
            self.successes += 1;
            if self.successes > MAX_NAMED_SUCCESSES {
                self.doc.succeeded = None;
            } else if let Some(ids) = &mut self.doc.succeeded {
                ids.push(task.task_id.clone());
            }
            return;
        }
        let output = task.output.as_ref();
        let stream = |name: &str| {
            output
                .and_then(|o| o.get(name))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let (out, err) = (stream("stdout"), stream("stderr"));
        let has_output = out.is_some() || err.is_some();
        let show = has_output && self.with_tails < MAX_TASKS_WITH_TAILS;
        if show {
            self.with_tails += 1;
        }
        let tails = self.context.tails;
        self.doc.not_succeeded.push(CompactTask {
            task_id: task.task_id.clone(),
            agent: task.agent.clone(),
            status: task.status,
            error: task.error.as_ref().map(|e| CompactError {
                kind: e.kind.as_str().to_string(),
                message: cut_message(&crate::redact::redact_text(&e.message)),
            }),
            attempts: task.attempts,
            exit_code: output
                .and_then(|o| o.get("exit_code"))
                .and_then(Value::as_i64),
            stdout: out.filter(|_| show).map(|s| tail(s, tails)),
            stderr: err.filter(|_| show).map(|s| tail(s, tails)),
            output_truncated: output
                .and_then(|o| o.get("truncated"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            output_omitted: has_output && !show,
        });
    }

    pub fn finish(mut self) -> CompactResult {
        if self.context.rerun_command && !self.doc.not_succeeded.is_empty() {
            let mut cmd = format!(
                "dispatch_runner run --rerun-failed {}",
                shell_quote(&self.doc.trace_file)
            );
            if let Some(f) = &self.context.input_file {
                cmd.push_str(" -f ");
                cmd.push_str(&shell_quote(f));
            }
            self.doc.rerun_command = Some(cmd);
        }
        self.doc
    }
}

/// The compact form of a full result; an error when the results cannot be read back from the
/// run's journal.
pub fn compact(result: &RunResult, context: CompactContext) -> Result<CompactResult, String> {
    let mut builder = CompactBuilder::new(
        result.status,
        &result.run_id,
        result.previous_run_id.as_deref(),
        &result.trace_file,
        &result.summary,
        context,
    );
    for task in result.results.iter() {
        builder.push(&task?);
    }
    Ok(builder.finish())
}

/// The last `limits.lines` lines of `text`, at most `limits.bytes` bytes of them. Secrets are
/// redacted in the whole text first: cutting first could leave part of a secret that no longer
/// matches.
pub fn tail(text: &str, limits: TailLimits) -> Tail {
    let text = crate::redact::redact_text(text);
    let text = text.as_ref();
    // A final newline ends the last line; it does not start another.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut start = if limits.lines == 0 {
        text.len()
    } else {
        body.match_indices('\n')
            .rev()
            .nth(limits.lines - 1)
            .map_or(0, |(i, _)| i + 1)
    };
    if text.len() - start > limits.bytes {
        start = text.len() - limits.bytes;
        while !text.is_char_boundary(start) {
            start += 1;
        }
    }
    let cut = &text[..start];
    Tail {
        text: text[start..].to_string(),
        cut_lines: cut.matches('\n').count(),
        cut_bytes: cut.len(),
    }
}

fn cut_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [... {} bytes cut]",
        &message[..end],
        message.len() - end
    )
}

/// Quotes a path for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: usize, bytes: usize) -> TailLimits {
        TailLimits { lines, bytes }
    }

    #[test]
    fn tail_keeps_the_last_lines_and_counts_the_rest() {
        let t = tail("a\nb\nc\nd\n", limits(2, 100));
        assert_eq!(t.text, "c\nd\n");
        assert_eq!((t.cut_lines, t.cut_bytes), (2, 4));
        let t = tail("a\nb\nc", limits(2, 100));
        assert_eq!(t.text, "b\nc");
        assert_eq!((t.cut_lines, t.cut_bytes), (1, 2));
        let t = tail("one line\n", limits(5, 100));
        assert_eq!(t.text, "one line\n");
        assert_eq!((t.cut_lines, t.cut_bytes), (0, 0));
        let t = tail("a\nb\n", limits(0, 100));
        assert_eq!(t.text, "");
        assert_eq!((t.cut_lines, t.cut_bytes), (2, 4));
    }

    #[test]
    fn tail_bytes_cut_on_a_character_boundary() {
        let t = tail("ééééé\n", limits(20, 4));
        // 11 bytes; the last 4 start in the middle of an é, so 3 are kept.
        assert_eq!(t.text, "é\n");
        assert_eq!(t.text.len() + t.cut_bytes, "ééééé\n".len());
        let long = "x".repeat(10_000);
        let t = tail(&long, limits(20, 2048));
        assert_eq!(t.text.len(), 2048);
        assert_eq!(t.cut_bytes, 10_000 - 2048);
        assert_eq!(t.cut_lines, 0);
    }

    #[test]
    fn long_messages_are_cut_with_a_marker() {
        let m = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = cut_message(&m);
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("[... {} bytes cut]", m.len() - MAX_MESSAGE_BYTES)));
        assert_eq!(cut_message("short"), "short");
    }

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("traces/dispatch-1.json"),
            "traces/dispatch-1.json"
        );
        assert_eq!(shell_quote("my traces/x.json"), "'my traces/x.json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
