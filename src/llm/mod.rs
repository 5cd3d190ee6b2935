//! Language-model backends shared by the `coder`, `debug` and `prompt` agents: the Anthropic Messages API,
//! any OpenAI-compatible chat-completions server, and a command-line agent (Claude Code by
//! default). One call takes a conversation and returns the reply text plus token usage and cost.
//!
//! Error policy, the same for every backend: 429 is `model_rate_limited` and 5xx or an
//! unreachable server is `model_unavailable` (both transient; a `retry-after` header becomes the
//! retry hint); any other 4xx is `model_request_rejected` (permanent: the same request would be
//! refused again). A 2xx body that is not the API's shape is `model_malformed_response`,
//! transient, because proxies and overloaded servers produce such bodies now and then and a
//! second call usually works. A missing API key is `model_not_configured` (permanent).

pub mod anthropic;
pub mod command;
pub mod config;
pub mod openai;

use std::sync::OnceLock;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::AgentContext;
use crate::task_error::{ErrorKind, TaskError};

pub use config::LlmConfig;

/// A backend that calls a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelBackend {
    Anthropic,
    Openai,
    Command,
}

impl ModelBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelBackend::Anthropic => "anthropic",
            ModelBackend::Openai => "openai",
            ModelBackend::Command => "command",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "anthropic" => Some(ModelBackend::Anthropic),
            "openai" => Some(ModelBackend::Openai),
            "command" => Some(ModelBackend::Command),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A system prompt and the turns so far (the last one is the user's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    pub system: String,
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> Self {
        Conversation {
            system: system.into(),
            messages: vec![Message {
                role: Role::User,
                content: user.into(),
            }],
        }
    }

    pub fn push(&mut self, role: Role, content: impl Into<String>) {
        self.messages.push(Message {
            role,
            content: content.into(),
        });
    }

    /// The whole conversation as one text, for backends that take a single prompt.
    pub fn as_prompt(&self) -> String {
        let mut out = self.system.clone();
        for m in &self.messages {
            let who = match m.role {
                Role::User => "USER",
                Role::Assistant => "ASSISTANT (your earlier reply)",
            };
            out.push_str(&format!("\n\n## {who}\n\n{}", m.content));
        }
        out
    }
}

/// Tokens and cost of one or more model calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub model: Option<String>,
    pub model_calls: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars: reported by the backend, or from the price table; null when unknown.
    pub cost_usd: Option<f64>,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        if self.model.is_none() {
            self.model.clone_from(&other.model);
        }
        self.model_calls += other.model_calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub usage: Usage,
}

/// Sends a provider request and returns the body of a successful answer; transport failures and
/// error statuses become the task errors every HTTP provider uses.
pub(crate) async fn send_for_text(
    provider: &str,
    request: reqwest::RequestBuilder,
) -> Result<String, TaskError> {
    let response = request.send().await.map_err(|e| send_error(provider, e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| send_error(provider, e))?;
    if !status.is_success() {
        return Err(status_error(provider, status, &headers, &text));
    }
    Ok(text)
}

impl Reply {
    /// A reply from an HTTP provider's JSON body: the token counts at the given JSON Pointers,
    /// the model the provider says it used (else the one asked for), priced from the table.
    pub fn from_body(
        config: &LlmConfig,
        body: &serde_json::Value,
        text: String,
        asked_model: &str,
        (input_pointer, output_pointer): (&str, &str),
    ) -> Reply {
        let tokens = |p: &str| {
            body.pointer(p)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let (input, output) = (tokens(input_pointer), tokens(output_pointer));
        let model = body["model"].as_str().unwrap_or(asked_model).to_string();
        Reply {
            text,
            usage: Usage {
                cost_usd: config.cost(&model, input, output),
                model: Some(model),
                model_calls: 1,
                input_tokens: input,
                output_tokens: output,
            },
        }
    }
}

/// Sends the conversation to the backend and returns its reply.
pub async fn complete(
    backend: ModelBackend,
    conversation: &Conversation,
    context: &serde_json::Value,
    ctx: &AgentContext,
) -> Result<Reply, TaskError> {
    complete_with(&ctx.services.llm, backend, conversation, context, ctx).await
}

/// [`complete`] with settings other than the run's (a task that names its own model).
pub async fn complete_with(
    config: &LlmConfig,
    backend: ModelBackend,
    conversation: &Conversation,
    context: &serde_json::Value,
    ctx: &AgentContext,
) -> Result<Reply, TaskError> {
    match backend {
        ModelBackend::Anthropic => anthropic::complete(config, conversation).await,
        ModelBackend::Openai => openai::complete(config, conversation).await,
        ModelBackend::Command => command::complete(config, conversation, context, ctx).await,
    }
}

/// What an agent's check made of a reply (see [`complete_with_repairs`]).
pub enum Verdict<T> {
    /// The reply is good; this is what the agent keeps.
    Accept(T),
    /// The reply fails: what the agent keeps should no repair be left, and what to tell the
    /// model (the next user turn).
    Repair(T, String),
}

/// The end of a [`complete_with_repairs`] exchange.
#[derive(Debug)]
pub struct Repaired<T> {
    /// What the check made of the last reply.
    pub value: T,
    /// Whether the check accepted it (false: the repairs ran out).
    pub accepted: bool,
    /// The last reply as the model wrote it.
    pub reply: String,
    /// Model calls made, repairs included.
    pub calls: u32,
    pub usage: Usage,
}

/// Asks the model, checks the reply with `check`, and while it fails sends the reply back with
/// what is wrong, up to `config.max_repairs` times. The repair loop of every agent that wants a
/// reply of a given shape (the `coder`'s valid module, the `prompt`'s JSON under a schema).
pub async fn complete_with_repairs<T, F, Fut>(
    config: &LlmConfig,
    backend: ModelBackend,
    mut conversation: Conversation,
    context: &serde_json::Value,
    ctx: &AgentContext,
    mut check: F,
) -> Result<Repaired<T>, TaskError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Verdict<T>, TaskError>>,
{
    let max_calls = config.max_repairs + 1;
    let mut usage = Usage::default();
    let mut calls = 0;
    loop {
        let reply = complete_with(config, backend, &conversation, context, ctx).await?;
        calls += 1;
        usage.add(&reply.usage);
        let (value, repair) = match check(reply.text.clone()).await? {
            Verdict::Accept(v) => (v, None),
            Verdict::Repair(v, why) => (v, Some(why)),
        };
        match repair {
            Some(why) if calls < max_calls => {
                conversation.push(Role::Assistant, reply.text);
                conversation.push(Role::User, why);
            }
            _ => {
                return Ok(Repaired {
                    value,
                    accepted: repair.is_none(),
                    reply: reply.text,
                    calls,
                    usage,
                });
            }
        }
    }
}

/// One HTTP client for all model calls of the process (connection reuse).
pub(crate) fn http() -> Result<&'static reqwest::Client, TaskError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let client = crate::http::client_builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| {
            TaskError::permanent(
                ErrorKind::Internal,
                format!("cannot build HTTP client: {e}"),
            )
        })?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Reads an API key from the environment variable `var` and registers it as a secret.
pub(crate) fn api_key(var: &str) -> Option<String> {
    let key = std::env::var(var).ok().filter(|k| !k.is_empty())?;
    crate::redact::register_secret(&key);
    Some(key)
}

/// Maps a failed request (no response at all) to an error.
pub(crate) fn send_error(provider: &str, e: reqwest::Error) -> TaskError {
    TaskError::transient(
        ErrorKind::ModelUnavailable,
        format!(
            "{provider}: request failed: {}",
            crate::redact::redact_text(&error_chain(&e))
        ),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Maps a non-2xx response to an error, following the policy in the module comment.
pub(crate) fn status_error(
    provider: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> TaskError {
    let detail = error_detail(body);
    let message = format!("{provider}: HTTP {status}: {detail}");
    let message = crate::redact::redact_text(&message).into_owned();
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    if status.as_u16() == 429 {
        TaskError::transient(ErrorKind::ModelRateLimited, message).with_retry_after(retry_after)
    } else if status.is_server_error() {
        TaskError::transient(ErrorKind::ModelUnavailable, message).with_retry_after(retry_after)
    } else {
        TaskError::permanent(ErrorKind::ModelRequestRejected, message)
    }
}

/// The provider's own error message when the body has one (both APIs use `error.message`).
fn error_detail(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if let Some(msg) = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| m.as_str())
    {
        return msg.to_string();
    }
    let mut s: String = body.chars().take(300).collect();
    if s.is_empty() {
        s = "(empty body)".into();
    }
    s
}

pub(crate) fn malformed(provider: &str, what: impl std::fmt::Display) -> TaskError {
    TaskError::transient(
        ErrorKind::ModelMalformedResponse,
        format!("{provider}: unexpected response: {what}"),
    )
}

/// The code in a reply: the first fenced block tagged with one of `langs` (or untagged), else
/// the whole reply.
pub fn extract_code(reply: &str, langs: &[&str]) -> String {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in reply.lines() {
        let trimmed = line.trim_start();
        match current.as_mut() {
            None => {
                if let Some(tag) = trimmed.strip_prefix("```") {
                    current = Some((tag.trim().to_lowercase(), String::new()));
                }
            }
            Some((_, body)) => {
                if trimmed.starts_with("```") {
                    blocks.push(current.take().expect("in a block"));
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    // An unclosed fence at the end still holds the code.
    if let Some(open) = current {
        blocks.push(open);
    }
    blocks
        .iter()
        .find(|(tag, _)| langs.contains(&tag.as_str()))
        .or_else(|| blocks.iter().find(|(tag, _)| tag.is_empty()))
        .map(|(_, body)| body.clone())
        .unwrap_or_else(|| {
            let mut s = reply.trim().to_string();
            s.push('\n');
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_taken_from_the_right_fence() {
        let reply = "Here:\n```text\nnot this\n```\n```python\nx = 1\n```\nbye";
        assert_eq!(extract_code(reply, &["python", "py"]), "x = 1\n");
        assert_eq!(extract_code("```\ny = 2\n```", &["python"]), "y = 2\n");
        assert_eq!(extract_code("z = 3", &["python"]), "z = 3\n");
        assert_eq!(extract_code("```py\nw = 4\n", &["python", "py"]), "w = 4\n");
    }

    #[test]
    fn statuses_map_to_kinds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let e = status_error("x", reqwest::StatusCode::TOO_MANY_REQUESTS, &h, "");
        assert_eq!(e.kind, ErrorKind::ModelRateLimited);
        assert!(e.transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let e = status_error("x", reqwest::StatusCode::BAD_GATEWAY, &h, "");
        assert_eq!(e.kind, ErrorKind::ModelUnavailable);
        assert!(e.transient);
        let e = status_error(
            "x",
            reqwest::StatusCode::UNAUTHORIZED,
            &reqwest::header::HeaderMap::new(),
            r#"{"error": {"message": "invalid x-api-key"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::ModelRequestRejected);
        assert!(!e.transient);
        assert!(e.message.contains("invalid x-api-key"));
    }

    #[test]
    fn usage_adds_up() {
        let mut a = Usage {
            model: Some("m".into()),
            model_calls: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: Some(0.5),
        };
        a.add(&Usage {
            model: None,
            model_calls: 2,
            input_tokens: 1,
            output_tokens: 1,
            cost_usd: Some(0.25),
        });
        assert_eq!(
            (a.model_calls, a.input_tokens, a.output_tokens, a.cost_usd),
            (3, 11, 6, Some(0.75))
        );
    }
}
