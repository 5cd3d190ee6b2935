//! The Anthropic Messages API (`POST {base_url}/v1/messages`): `x-api-key` and
//! `anthropic-version` headers, a system prompt and alternating user/assistant turns; the reply's
//! text blocks are joined, `usage.input_tokens`/`output_tokens` are counted.

use serde_json::{Value, json};

use super::{Conversation, LlmConfig, Reply, api_key, http, malformed, send_for_text};
use crate::task_error::{ErrorKind, TaskError};

const PROVIDER: &str = "anthropic";

pub async fn complete(config: &LlmConfig, conversation: &Conversation) -> Result<Reply, TaskError> {
    let key = api_key(&config.anthropic.api_key_env).ok_or_else(|| {
        TaskError::permanent(
            ErrorKind::ModelNotConfigured,
            format!(
                "backend 'anthropic' needs an API key in ${}",
                config.anthropic.api_key_env
            ),
        )
    })?;
    let model = config.anthropic_model();
    let url = format!(
        "{}/v1/messages",
        config.anthropic_base_url().trim_end_matches('/')
    );
    let body = json!({
        "model": model,
        "max_tokens": config.anthropic.max_tokens,
        "system": conversation.system,
        "messages": conversation.messages,
    });
    let request = http()?
        .post(&url)
        .header("x-api-key", key)
        .header("anthropic-version", &config.anthropic.anthropic_version)
        .json(&body);
    let text = send_for_text(PROVIDER, request).await?;
    parse(config, model, &text)
}

fn parse(config: &LlmConfig, model: &str, body: &str) -> Result<Reply, TaskError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| malformed(PROVIDER, format!("body is not JSON ({e})")))?;
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(PROVIDER, "no 'content' array"))?;
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    if text.trim().is_empty() {
        return Err(malformed(PROVIDER, "the reply has no text"));
    }
    Ok(Reply::from_body(
        config,
        &v,
        text,
        model,
        ("/usage/input_tokens", "/usage/output_tokens"),
    ))
}
