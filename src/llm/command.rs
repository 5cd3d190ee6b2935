//! A command-line agent as the model, by default Claude Code (`claude -p --output-format json`).
//! Each call runs in a fresh working folder holding `prompt.txt` (the whole prompt) and
//! `context.json` (the task's context), with the prompt also on stdin, so the agent works on a
//! copy and never edits the workspace behind the runner's back. A JSON result on stdout
//! (`result`, `usage`, `total_cost_usd`, `is_error`) is parsed; any other stdout is the answer.
//!
//! When the command has exited (however it exited), the files it created or changed in its
//! folder are recorded as written, as `task-folder:<path in the folder>` (see
//! [`crate::files::record_task_folder`]: links not followed, count and hashed bytes capped),
//! before the folder is deleted.

use serde_json::Value;

use super::{Conversation, LlmConfig, Reply, Usage, malformed};
use crate::context::AgentContext;
use crate::process::program::{self, Program};
use crate::task_error::{ErrorKind, TaskError};

const PROVIDER: &str = "command";

pub async fn complete(
    config: &LlmConfig,
    conversation: &Conversation,
    context: &Value,
    ctx: &AgentContext,
) -> Result<Reply, TaskError> {
    let io = |what: &str, e: std::io::Error| {
        TaskError::transient(
            ErrorKind::Io,
            format!("command backend: cannot {what}: {e}"),
        )
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("dispatch-llm-{}-", ctx.task_id))
        .tempdir()
        .map_err(|e| io("create its working folder", e))?;
    let prompt = conversation.as_prompt();
    std::fs::write(dir.path().join("prompt.txt"), &prompt)
        .map_err(|e| io("write prompt.txt", e))?;
    let context_text = serde_json::to_string_pretty(context).expect("serializable");
    std::fs::write(dir.path().join("context.json"), &context_text)
        .map_err(|e| io("write context.json", e))?;

    let input = Program {
        argv: config.command.argv.clone(),
        cwd: Some(dir.path().to_string_lossy().into_owned()),
        env: Default::default(),
        stdin: Some(prompt.clone()),
    };
    let ran = program::run(input, &ctx.run_limits()).await;
    // The scan owns the folder, so it is deleted only once the scan is done (also when this
    // attempt is abandoned meanwhile).
    let ledger = ctx.files.clone();
    crate::workspace::blocking(move || {
        let unchanged = [
            ("prompt.txt", prompt.as_bytes()),
            ("context.json", context_text.as_bytes()),
        ];
        crate::files::record_task_folder(dir.path(), &unchanged, &ledger);
        drop(dir);
    })
    .await?;
    let out = ran.map_err(|f| {
        let mut e = f.error;
        e.message = format!("command backend: {}", e.message);
        e
    })?;
    parse(&out.stdout)
}

fn parse(stdout: &str) -> Result<Reply, TaskError> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Err(malformed(PROVIDER, "the command printed nothing"));
    }
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(trimmed) else {
        return Ok(Reply {
            text: trimmed.to_string(),
            usage: Usage {
                model_calls: 1,
                ..Usage::default()
            },
        });
    };
    let text = v
        .get("result")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(PROVIDER, "JSON output without a 'result' string"))?
        .to_string();
    if v.get("is_error").and_then(Value::as_bool) == Some(true) {
        return Err(TaskError::transient(
            ErrorKind::ModelUnavailable,
            format!(
                "command backend reported an error: {}",
                text.chars().take(300).collect::<String>()
            ),
        ));
    }
    let u = |k: &str| {
        v.get("usage")
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cost = v
        .get("total_cost_usd")
        .or_else(|| v.get("cost_usd"))
        .and_then(Value::as_f64);
    let model = v
        .get("modelUsage")
        .and_then(Value::as_object)
        .and_then(|m| m.keys().next().cloned());
    Ok(Reply {
        text,
        usage: Usage {
            model,
            model_calls: 1,
            input_tokens: u("input_tokens")
                + u("cache_read_input_tokens")
                + u("cache_creation_input_tokens"),
            output_tokens: u("output_tokens"),
            cost_usd: cost,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_json_and_plain_output() {
        let r = parse(r#"{"type":"result","result":"hi","is_error":false,"total_cost_usd":0.012,"usage":{"input_tokens":5,"cache_read_input_tokens":2,"output_tokens":3}}"#).unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (7, 3));
        assert_eq!(r.usage.cost_usd, Some(0.012));
        let r = parse("just text\n").unwrap();
        assert_eq!(r.text, "just text");
        assert!(parse("").is_err());
        let e = parse(r#"{"result":"boom","is_error":true}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelUnavailable);
    }
}
