//! Running batches for the coder and debug agents with a controlled model environment.
#![allow(dead_code)]

use serde_json::Value;

use crate::common::{Run, Sandbox};

/// Every variable the model backends read; cleared for each run so a developer's own keys never
/// leak into a test.
pub const LLM_VARS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "DISPATCH_LLM_COMMAND",
    "DISPATCH_CODER_BACKEND",
    "DISPATCH_DEBUG_BACKEND",
    "DISPATCH_PROMPT_BACKEND",
];

/// Runs `batch` in the sandbox with exactly the model variables in `env`.
pub fn run_with_env(sb: &Sandbox, batch: &Value, env: &[(&str, &str)], extra: &[&str]) -> Run {
    let file = sb.write("batch.json", &batch.to_string());
    let mut args = vec!["run", "-q", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = sb.cmd(&args);
    for v in LLM_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dispatch_runner");
    let out = crate::common::wait_with_deadline(child, std::time::Duration::from_secs(120));
    sb.to_run(out)
}

/// Runs offline (no model variables at all).
pub fn run_offline(sb: &Sandbox, batch: &Value) -> Run {
    run_with_env(sb, batch, &[], &[])
}
