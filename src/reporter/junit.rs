//! `--junit PATH`: JUnit XML for CI, one `<testcase>` per task (classname = agent).
//!
//! Mapping, following cargo-nextest's JUnit output:
//! - success: a plain test case; when earlier attempts failed (retried, then passed) each of them
//!   is a `<flakyFailure>` / `<flakyError>` inside the passing case, which is how CI consumers that
//!   understand flakiness (Surefire's schema, nextest, GitLab, Jenkins) show it.
//! - error / timeout: `<failure>` (the task ran and did not pass: non-zero exit, timeout, a tool
//!   or validation error) or `<error>` (it could not be run properly: spawn failure, I/O, circuit
//!   open, unresolved reference, internal), with the message and the kind as `type`; earlier
//!   attempts follow as `<rerunFailure>` / `<rerunError>`.
//! - skipped and cancelled: `<skipped>` with the reason.
//!
//! Two dialects ([`JunitFormat`]). The default, `jenkins`, validates against the Jenkins xunit
//! plugin's `junit-10.xsd` (the schema Jenkins checks JUnit input with; the tests take it from
//! pytest's source distribution): that schema declares the four retry elements but with only
//! `message` and `type`, and no `timestamp` on a test case, so each earlier attempt's start time
//! and duration go into the element's text instead. `surefire` writes those as attributes
//! (`timestamp`, `time`), as nextest and Maven Surefire do, for consumers that read them there.
//! Both carry `flaky_tasks` and `retries` as suite properties.

use std::fmt::Write;

use serde_json::Value;

use crate::events::{AttemptOutcome, TaskStatus};
use crate::reporter::recorder::{AttemptRecord, RunRecord, TaskRecord};
use crate::task_error::TaskError;

/// At most this many bytes of a task's stdout / stderr go into the report.
const MAX_OUTPUT: usize = 64 * 1024;

/// Kinds meaning "the task ran and did not pass" (a JUnit failure); every other kind means it
/// could not run properly (a JUnit error).
const FAILURE_KINDS: &[&str] = &["exit_status", "timeout", "validation_failed", "tool_error"];

/// Which JUnit dialect `--junit` writes (`--junit-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JunitFormat {
    /// Valid against the Jenkins xunit plugin's junit-10.xsd: retry elements carry only
    /// `message` and `type` (time and duration in their text); no `timestamp` on test cases.
    #[default]
    Jenkins,
    /// Surefire / cargo-nextest style: `timestamp` on test cases, `timestamp` and `time` on
    /// `flakyFailure` / `rerunFailure` and friends. Not valid against junit-10.xsd.
    Surefire,
}

/// Renders the record (already redacted) as a JUnit XML document in the default dialect.
pub fn render(record: &RunRecord) -> Vec<u8> {
    render_as(record, JunitFormat::Jenkins)
}

/// [`render`] in the Surefire / nextest dialect.
pub fn render_surefire(record: &RunRecord) -> Vec<u8> {
    render_as(record, JunitFormat::Surefire)
}

/// Renders the record (already redacted) as a JUnit XML document in `format`.
pub fn render_as(record: &RunRecord, format: JunitFormat) -> Vec<u8> {
    let mut x = String::new();
    let (mut failures, mut errors, mut skipped) = (0, 0, 0);
    let (mut flaky, mut retries) = (0, 0);
    for t in &record.tasks {
        retries += t.attempts.len().saturating_sub(1);
        match t.status {
            Some(TaskStatus::Success) => {
                if t.attempts.len() > 1 {
                    flaky += 1
                }
            }
            Some(TaskStatus::Skipped | TaskStatus::Cancelled) | None => skipped += 1,
            Some(TaskStatus::Error | TaskStatus::Timeout) => {
                if is_failure(t.error.as_ref()) {
                    failures += 1
                } else {
                    errors += 1
                }
            }
        }
    }
    let tests = record.tasks.len();
    let time = secs(record.summary.total_time_ms as f64);
    let stamp = timestamp(&record.started_at);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"dispatch_runner\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time}\">"
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time}\" timestamp=\"{}\">",
        esc(&format!("dispatch_runner run {}", record.run_id)),
        esc(&stamp),
    );
    let _ = writeln!(
        x,
        "    <properties>\n      <property name=\"run_id\" value=\"{}\"/>\n      <property name=\"status\" value=\"{}\"/>\n      <property name=\"flaky_tasks\" value=\"{flaky}\"/>\n      <property name=\"retries\" value=\"{retries}\"/>\n    </properties>",
        esc(&record.run_id),
        record
            .status
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_default()
    );
    for t in &record.tasks {
        testcase(&mut x, t, format);
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x.into_bytes()
}

fn testcase(x: &mut String, t: &TaskRecord, format: JunitFormat) {
    let _ = write!(
        x,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
        esc(&t.task_id),
        esc(&t.agent),
        secs(t.execution_time_ms as f64)
    );
    if let (JunitFormat::Surefire, Some(at)) = (format, &t.started_at) {
        let _ = write!(x, " timestamp=\"{}\"", esc(&timestamp(at)));
    }
    x.push_str(">\n");
    let failed: Vec<&AttemptRecord> = t
        .attempts
        .iter()
        .filter(|a| a.error.is_some() || a.outcome != Some(AttemptOutcome::Success))
        .collect();
    match t.status {
        Some(TaskStatus::Success) => {
            for a in &failed {
                attempt_element(x, "flaky", a, format);
            }
        }
        Some(TaskStatus::Error | TaskStatus::Timeout) => {
            let tag = if is_failure(t.error.as_ref()) {
                "failure"
            } else {
                "error"
            };
            let (kind, message) = kind_message(t.error.as_ref());
            let _ = writeln!(
                x,
                "      <{tag} message=\"{}\" type=\"{}\">{}</{tag}>",
                esc(&message),
                esc(&kind),
                esc(&describe(t))
            );
            // The last attempt is the main failure; the earlier ones are reruns.
            let earlier = failed.len().saturating_sub(1);
            for a in &failed[..earlier] {
                attempt_element(x, "rerun", a, format);
            }
        }
        Some(TaskStatus::Skipped | TaskStatus::Cancelled) | None => {
            let (_, message) = kind_message(t.error.as_ref());
            let status = t.status.map_or("unfinished", TaskStatus::as_str);
            let _ = writeln!(
                x,
                "      <skipped message=\"{}\"/>",
                esc(&format!("{status}: {message}"))
            );
        }
    }
    let (out, err) = streams(t.output.as_ref());
    if let Some(out) = out {
        let _ = writeln!(x, "      <system-out>{}</system-out>", esc(&cap(&out)));
    }
    if let Some(err) = err {
        let _ = writeln!(x, "      <system-err>{}</system-err>", esc(&cap(&err)));
    }
    x.push_str("    </testcase>\n");
}

/// `<flakyFailure>` / `<rerunError>` etc. for one earlier attempt.
fn attempt_element(x: &mut String, prefix: &str, a: &AttemptRecord, format: JunitFormat) {
    let kind = if is_failure(a.error.as_ref()) {
        "Failure"
    } else {
        "Error"
    };
    let (ty, message) = kind_message(a.error.as_ref());
    let message = esc(&format!("attempt {}: {message}", a.attempt));
    let (stamp, time) = (
        esc(&timestamp(&a.started_at)),
        secs(a.duration_ms.unwrap_or(0.0)),
    );
    let tag = format!("{prefix}{kind}");
    let _ = match format {
        JunitFormat::Surefire => writeln!(
            x,
            "      <{tag} message=\"{message}\" type=\"{}\" timestamp=\"{stamp}\" time=\"{time}\"/>",
            esc(&ty),
        ),
        // junit-10.xsd's rerunType has mixed content but no time attributes.
        JunitFormat::Jenkins => writeln!(
            x,
            "      <{tag} message=\"{message}\" type=\"{}\">started {stamp}, took {time} s</{tag}>",
            esc(&ty),
        ),
    };
}

fn is_failure(e: Option<&TaskError>) -> bool {
    e.is_some_and(|e| FAILURE_KINDS.contains(&kind_str(e).as_str()))
}

fn kind_str(e: &TaskError) -> String {
    serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn kind_message(e: Option<&TaskError>) -> (String, String) {
    match e {
        Some(e) => (kind_str(e), e.message.clone()),
        None => ("unknown".into(), "no error recorded".into()),
    }
}

/// The body of a `<failure>`: every attempt, one line each.
fn describe(t: &TaskRecord) -> String {
    let mut s = String::new();
    for a in &t.attempts {
        let outcome = a
            .outcome
            .map(|o| format!("{o:?}").to_lowercase())
            .unwrap_or_else(|| "unfinished".into());
        let _ = write!(s, "attempt {} ({outcome}", a.attempt);
        if let Some(d) = a.duration_ms {
            let _ = write!(s, ", {:.0} ms", d);
        }
        s.push(')');
        if let Some(e) = &a.error {
            let _ = write!(s, ": {}: {}", kind_str(e), e.message);
        }
        s.push('\n');
    }
    s
}

/// stdout and stderr of a command-like output; otherwise the output as JSON on stdout.
fn streams(output: Option<&Value>) -> (Option<String>, Option<String>) {
    let Some(o) = output else {
        return (None, None);
    };
    let field = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    match (field("stdout"), field("stderr")) {
        (None, None) => (
            Some(serde_json::to_string_pretty(o).unwrap_or_default()),
            None,
        ),
        (out, err) => (out.filter(|s| !s.is_empty()), err.filter(|s| !s.is_empty())),
    }
}

fn cap(s: &str) -> String {
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes]", &s[..end], s.len() - end)
}

fn secs(ms: f64) -> String {
    format!("{:.3}", ms.max(0.0) / 1000.0)
}

/// JUnit timestamps are ISO 8601 without a zone; ours are UTC.
fn timestamp(rfc3339: &str) -> String {
    rfc3339.trim_end_matches('Z').to_string()
}

/// Escapes text for XML attributes and content, dropping characters XML 1.0 cannot carry.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            esc("a<b>&\"c'\u{1b}[0m\n"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}[0m&#10;"
        );
    }

    #[test]
    fn caps_long_output_on_a_char_boundary() {
        let s = "é".repeat(MAX_OUTPUT);
        let c = cap(&s);
        assert!(c.len() < s.len() && c.contains("more bytes]"));
    }
}
