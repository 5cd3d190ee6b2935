//! What a task declares to opt into the result cache (`"cache": {...}`), the configuration
//! file's `cache:` section, and the checks of both that need more than the JSON Schema.

use std::path::{Component, Path};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::Issue;
use crate::batch::issue::quote;

/// Longest glob or variable name accepted in a `cache` object.
pub const MAX_CACHE_ITEM_LEN: usize = 1024;
/// Most globs or names in one list of a `cache` object.
pub const MAX_CACHE_ITEMS: usize = 256;

/// A task's opt-in to the result cache. The cache key is a digest of the agent, the task's
/// input after `{{tasks...}}` references are replaced, the content of the `inputs` files, the
/// values of the `env` variables (hashed with the trace folder's key, never stored) and the
/// runner version. On a hit the task does not run: its stored output comes back with
/// `"cached": true` and the `outputs` files are restored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Globs of files, relative to the workspace (`src/**/*.rs`), whose content is part of the
    /// key. No absolute paths, no `..`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CACHE_ITEMS), inner(length(min = 1, max = MAX_CACHE_ITEM_LEN)))]
    pub inputs: Vec<String>,
    /// Names of the runner's environment variables whose values are part of the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CACHE_ITEMS), inner(length(min = 1, max = MAX_CACHE_ITEM_LEN)))]
    pub env: Vec<String>,
    /// Globs of files, relative to the workspace, the task writes: stored when it succeeds,
    /// restored on a hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CACHE_ITEMS), inner(length(min = 1, max = MAX_CACHE_ITEM_LEN)))]
    pub outputs: Vec<String>,
    /// Seconds a stored result stays usable (default: the configuration's
    /// `cache.max_age_seconds`, else 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_age_seconds: Option<f64>,
}

/// The configuration file's `cache:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `false` turns the result cache off: tasks with `cache` always run (default true).
    pub enabled: Option<bool>,
    /// Most bytes the stored results may take (outputs and files); the least recently used
    /// entries go first when a run stores past it (default 1 GiB).
    pub max_bytes: Option<u64>,
    /// Entries older than this many seconds are not used and are removed when a run stores
    /// (default 604800: 7 days).
    pub max_age_seconds: Option<f64>,
}

pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_MAX_AGE_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

impl CacheConfig {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }
    pub fn max_age_seconds(&self) -> f64 {
        self.max_age_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(DEFAULT_MAX_AGE_SECONDS)
    }
}

/// Why a glob of a `cache` object cannot be used, if it cannot: it must name files inside the
/// workspace, so no absolute path and no `..` (a glob escaping the workspace would let a batch
/// read or overwrite any file the runner can).
pub fn glob_problem(glob: &str) -> Option<String> {
    if glob.is_empty() {
        return Some("is empty".into());
    }
    if glob.contains('\0') {
        return Some("contains a NUL character".into());
    }
    if glob.starts_with('/') || glob.starts_with('\\') || Path::new(glob).is_absolute() {
        return Some("is an absolute path; globs are relative to the workspace".into());
    }
    if glob.contains('\\') {
        return Some("contains '\\'; separate folders with '/'".into());
    }
    if Path::new(glob)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Some("contains '..'; globs must stay inside the workspace".into());
    }
    if let Err(e) = glob::Pattern::new(glob) {
        return Some(format!("is not a valid glob: {e}"));
    }
    None
}

/// The problems of task `i`'s `cache` object that the schema does not see: bad or escaping
/// globs and unusable variable names, each at its JSON Pointer.
pub fn spec_issues(i: usize, cache: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    for list in ["inputs", "outputs"] {
        let Some(items) = cache.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (j, item) in items.iter().enumerate() {
            if let Some(glob) = item.as_str()
                && let Some(why) = glob_problem(glob)
            {
                issues.push(Issue::new(
                    format!("/tasks/{i}/cache/{list}/{j}"),
                    format!("glob {} {why}", quote(glob)),
                ));
            }
        }
    }
    if let Some(items) = cache.get("env").and_then(Value::as_array) {
        for (j, item) in items.iter().enumerate() {
            if let Some(name) = item.as_str()
                && let Some(why) = crate::batch::validate::env_name_problem(name)
            {
                issues.push(Issue::new(
                    format!("/tasks/{i}/cache/env/{j}"),
                    format!("environment variable name {} {why}", quote(name)),
                ));
            }
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_must_stay_in_the_workspace() {
        assert_eq!(glob_problem("src/**/*.rs"), None);
        assert_eq!(glob_problem("out/a.txt"), None);
        assert_eq!(glob_problem("./a"), None);
        assert!(glob_problem("/etc/passwd").unwrap().contains("absolute"));
        assert!(glob_problem("../x").unwrap().contains(".."));
        assert!(glob_problem("a/../../x").unwrap().contains(".."));
        assert!(glob_problem("a\\b").is_some());
        assert!(glob_problem("[").unwrap().contains("not a valid glob"));
        assert!(glob_problem("").is_some());
    }

    #[test]
    fn issues_name_their_place() {
        let v = serde_json::json!({"inputs": ["ok", "/abs"], "outputs": ["../o"], "env": ["A=B"]});
        let paths: Vec<String> = spec_issues(3, &v).into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "/tasks/3/cache/inputs/1",
                "/tasks/3/cache/outputs/0",
                "/tasks/3/cache/env/0"
            ]
        );
    }
}
