//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`), as served by OpenAI,
//! Ollama, vLLM and llama.cpp: an optional `Authorization: Bearer` key, the system prompt as the
//! first message; the first choice's message is the reply, `usage.prompt_tokens` and
//! `completion_tokens` are counted.

use serde_json::{Value, json};

use super::{Conversation, LlmConfig, Reply, Role, api_key, http, malformed, send_for_text};
use crate::task_error::TaskError;

const PROVIDER: &str = "openai";

pub async fn complete(config: &LlmConfig, conversation: &Conversation) -> Result<Reply, TaskError> {
    let model = config.openai_model();
    let url = format!(
        "{}/chat/completions",
        config.openai_base_url().trim_end_matches('/')
    );
    let mut messages = vec![json!({"role": "system", "content": conversation.system})];
    for m in &conversation.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": m.content}));
    }
    let mut body = json!({"model": model, "messages": messages});
    if let Some(max) = config.openai.max_tokens {
        body["max_tokens"] = json!(max);
    }
    let mut request = http()?.post(&url).json(&body);
    // Local servers (Ollama, llama.cpp) need no key.
    if let Some(key) = api_key(&config.openai.api_key_env) {
        request = request.bearer_auth(key);
    }
    let text = send_for_text(PROVIDER, request).await?;
    parse(config, model, &text)
}

fn parse(config: &LlmConfig, model: &str, body: &str) -> Result<Reply, TaskError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| malformed(PROVIDER, format!("body is not JSON ({e})")))?;
    let text = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(PROVIDER, "no 'choices[0].message.content'"))?
        .to_string();
    if text.trim().is_empty() {
        return Err(malformed(PROVIDER, "the reply has no text"));
    }
    Ok(Reply::from_body(
        config,
        &v,
        text,
        model,
        ("/usage/prompt_tokens", "/usage/completion_tokens"),
    ))
}
