//! Settings of the language-model backends: one section per backend, a price table, the number
//! of repair rounds, and which backend each agent uses by default. Every field has a default;
//! [`LlmConfig::fill_from_env`] fills what configuration left unset from the usual environment
//! variables of each ecosystem.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";

/// All model settings (the `llm:` section of the configuration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    pub anthropic: AnthropicConfig,
    pub openai: OpenAiConfig,
    pub command: CommandBackendConfig,
    /// Prices per million tokens, by model name. A model matches the longest key that is a
    /// prefix of its name (`claude-sonnet-4` prices `claude-sonnet-4-5-20250929`).
    pub prices: BTreeMap<String, Price>,
    /// Repair rounds after the first reply fails validation (coder).
    pub max_repairs: u32,
    /// Bytes of each context file (and of each source file shown to a model) that go into a
    /// prompt.
    pub context_max_bytes: usize,
    /// Default backend of each agent when a task names none: `template`/`static` (offline),
    /// `anthropic`, `openai` or `command`.
    pub agents: AgentBackends,
}

/// Default backend per agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentBackends {
    pub coder: Option<String>,
    pub debug: Option<String>,
    /// `anthropic`, `openai` or `command` (the `prompt` agent has no offline backend).
    pub prompt: Option<String>,
}

/// The Anthropic Messages API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicConfig {
    /// Default: `ANTHROPIC_MODEL`, else `claude-sonnet-4-5`.
    pub model: Option<String>,
    /// Default: `ANTHROPIC_BASE_URL`, else the public endpoint.
    pub base_url: Option<String>,
    /// The environment variable holding the key.
    pub api_key_env: String,
    pub max_tokens: u32,
    #[serde(rename = "anthropic-version")]
    pub anthropic_version: String,
}

/// An OpenAI-compatible chat-completions server (OpenAI, Ollama, vLLM, llama.cpp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// Default: `OPENAI_MODEL`, else `gpt-4o-mini`.
    pub model: Option<String>,
    /// Default: `OPENAI_BASE_URL`, else the public endpoint. Include the `/v1`.
    pub base_url: Option<String>,
    /// The environment variable holding the key; a server without keys needs none.
    pub api_key_env: String,
    pub max_tokens: Option<u32>,
}

/// A command-line agent that takes the prompt on stdin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CommandBackendConfig {
    /// Program and arguments. Default: `DISPATCH_LLM_COMMAND` (a JSON array of strings), else
    /// `["claude", "-p", "--output-format", "json"]`.
    pub argv: Vec<String>,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            model: None,
            base_url: None,
            api_key_env: "ANTHROPIC_API_KEY".into(),
            max_tokens: 4096,
            anthropic_version: DEFAULT_ANTHROPIC_VERSION.into(),
        }
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            model: None,
            base_url: None,
            api_key_env: "OPENAI_API_KEY".into(),
            max_tokens: None,
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            anthropic: AnthropicConfig::default(),
            openai: OpenAiConfig::default(),
            command: CommandBackendConfig::default(),
            prices: default_prices(),
            max_repairs: 2,
            context_max_bytes: 32 * 1024,
            agents: AgentBackends::default(),
        }
    }
}

/// List prices at the time of writing; override them in configuration.
fn default_prices() -> BTreeMap<String, Price> {
    let p = |i, o| Price {
        input_per_mtok: i,
        output_per_mtok: o,
    };
    BTreeMap::from([
        ("claude-opus-4".to_string(), p(15.0, 75.0)),
        ("claude-sonnet-4".to_string(), p(3.0, 15.0)),
        ("claude-haiku-4".to_string(), p(1.0, 5.0)),
        ("claude-3-5-haiku".to_string(), p(0.8, 4.0)),
        ("gpt-4o-mini".to_string(), p(0.15, 0.6)),
        ("gpt-4o".to_string(), p(2.5, 10.0)),
    ])
}

impl LlmConfig {
    /// The defaults, filled from the process environment.
    pub fn from_env() -> Self {
        let mut c = LlmConfig::default();
        c.fill_from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        c
    }

    /// Fills unset fields from the environment: `ANTHROPIC_MODEL`, `ANTHROPIC_BASE_URL`,
    /// `OPENAI_MODEL`, `OPENAI_BASE_URL`, `DISPATCH_LLM_COMMAND`, `DISPATCH_CODER_BACKEND`,
    /// `DISPATCH_DEBUG_BACKEND`, `DISPATCH_PROMPT_BACKEND`. Keys are read only when a request is made (and registered as
    /// secrets then), but already-present keys are registered here too.
    pub fn fill_from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let fill = |slot: &mut Option<String>, var: &str| {
            if slot.is_none() {
                *slot = env(var);
            }
        };
        fill(&mut self.anthropic.model, "ANTHROPIC_MODEL");
        fill(&mut self.anthropic.base_url, "ANTHROPIC_BASE_URL");
        fill(&mut self.openai.model, "OPENAI_MODEL");
        fill(&mut self.openai.base_url, "OPENAI_BASE_URL");
        fill(&mut self.agents.coder, "DISPATCH_CODER_BACKEND");
        fill(&mut self.agents.debug, "DISPATCH_DEBUG_BACKEND");
        fill(&mut self.agents.prompt, "DISPATCH_PROMPT_BACKEND");
        if self.command.argv.is_empty() {
            self.command.argv = env("DISPATCH_LLM_COMMAND")
                .and_then(|v| serde_json::from_str::<Vec<String>>(&v).ok())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| {
                    ["claude", "-p", "--output-format", "json"]
                        .map(String::from)
                        .to_vec()
                });
        }
        for var in [&self.anthropic.api_key_env, &self.openai.api_key_env] {
            if let Some(key) = env(var) {
                crate::redact::register_secret(&key);
            }
        }
    }

    pub fn anthropic_model(&self) -> &str {
        self.anthropic
            .model
            .as_deref()
            .unwrap_or(DEFAULT_ANTHROPIC_MODEL)
    }

    pub fn anthropic_base_url(&self) -> &str {
        self.anthropic
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_ANTHROPIC_BASE_URL)
    }

    pub fn openai_model(&self) -> &str {
        self.openai.model.as_deref().unwrap_or(DEFAULT_OPENAI_MODEL)
    }

    pub fn openai_base_url(&self) -> &str {
        self.openai
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_OPENAI_BASE_URL)
    }

    /// Why `backend` cannot be called as configured, or `None` when it can: the Anthropic API
    /// needs its key; the OpenAI-compatible one a key (the public endpoint) or a base URL of
    /// one's own (local servers take no key); the command backend its program, found. Read from
    /// the environment now, so a batch is refused before it runs rather than failing mid-run.
    pub fn not_configured(&self, backend: super::ModelBackend) -> Option<String> {
        let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        match backend {
            super::ModelBackend::Anthropic => (!set(&self.anthropic.api_key_env)).then(|| {
                format!(
                    "backend 'anthropic' needs an API key in ${}",
                    self.anthropic.api_key_env
                )
            }),
            super::ModelBackend::Openai => {
                (!set(&self.openai.api_key_env) && self.openai.base_url.is_none()).then(|| {
                    format!(
                        "backend 'openai' needs an API key in ${} (for the public endpoint) or a server of its own in $OPENAI_BASE_URL / llm.openai.base_url",
                        self.openai.api_key_env
                    )
                })
            }
            super::ModelBackend::Command => {
                let Some(program) = self.command.argv.first() else {
                    return Some(
                        "backend 'command' has no program: set $DISPATCH_LLM_COMMAND or llm.command.argv".into(),
                    );
                };
                (!program_exists(program)).then(|| {
                    format!(
                        "backend 'command' runs '{program}', which is not an executable file{}; set $DISPATCH_LLM_COMMAND (a JSON array) or llm.command.argv",
                        if program.contains('/') { "" } else { " on PATH" }
                    )
                })
            }
        }
    }

    /// Cost in US dollars of a call, when the model is in the price table.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
        let (_, price) = self
            .prices
            .iter()
            .filter(|(k, _)| model.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())?;
        Some(
            (input_tokens as f64 * price.input_per_mtok
                + output_tokens as f64 * price.output_per_mtok)
                / 1_000_000.0,
        )
    }
}

/// Whether a program name would start: a path to an executable file, or a name found on `PATH`.
/// A relative path with a `/` is taken as it stands (the backend runs in a folder of its own, so
/// only an absolute one can be checked from here); it is left to the run.
fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::Path::new(program);
        return !path.is_absolute() || executable(path);
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_fills_only_unset_fields() {
        let mut c = LlmConfig::default();
        c.openai.model = Some("llama3".into());
        c.fill_from_env(|k| match k {
            "OPENAI_MODEL" => Some("ignored".into()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:11434/v1".into()),
            "DISPATCH_LLM_COMMAND" => Some(r#"["python3", "fake.py"]"#.into()),
            "DISPATCH_CODER_BACKEND" => Some("openai".into()),
            _ => None,
        });
        assert_eq!(c.openai_model(), "llama3");
        assert_eq!(c.openai_base_url(), "http://127.0.0.1:11434/v1");
        assert_eq!(c.command.argv, ["python3", "fake.py"]);
        assert_eq!(c.agents.coder.as_deref(), Some("openai"));
        assert_eq!(c.anthropic_model(), DEFAULT_ANTHROPIC_MODEL);
    }

    #[test]
    fn longest_price_prefix_wins() {
        let c = LlmConfig::default();
        let cost = c.cost("claude-sonnet-4-5-20250929", 1_000_000, 1_000_000);
        assert_eq!(cost, Some(18.0));
        assert_eq!(c.cost("gpt-4o-mini-2024", 1_000_000, 0), Some(0.15));
        assert_eq!(c.cost("my-local-llama", 10, 10), None);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e =
            serde_json::from_value::<LlmConfig>(serde_json::json!({"anthropic": {"modle": "x"}}))
                .unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        let ok: LlmConfig = serde_json::from_value(
            serde_json::json!({"anthropic": {"anthropic-version": "2024-01-01"}, "max_repairs": 0}),
        )
        .unwrap();
        assert_eq!(ok.anthropic.anthropic_version, "2024-01-01");
        assert_eq!(ok.max_repairs, 0);
    }
}
