//! `--check-tools`: before running, connect to every server the batch uses, list its tools, and
//! reject tasks whose tool does not exist or whose arguments do not match the tool's input schema.
//! Places filled from other tasks' outputs at run time are checked by type: a `{{tasks...}}`
//! string is a string, a typed reference (`{"$output": ...}`) has the type the producing agent's
//! output schema gives it (unknown for an MCP tool's own output, which is then not checked).
//! The sessions opened here stay in the pool for the run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::agents::AgentInput;
use crate::agents::mcp::{McpInput, transport_for};
use crate::batch::template::{self, Piece, Site};
use crate::batch::typing::{self, Shape};
use crate::batch::validate::typed_ref_types;
use crate::batch::{Batch, Issue};
use crate::mcp::ToolInfo;
use crate::services::Services;

/// Problems found, as issues with JSON Pointers into the batch (`/tasks/3/input_data/tool`).
pub async fn check_tools(batch: &Batch, services: &Services) -> Vec<Issue> {
    let mut by_server: BTreeMap<String, Vec<(usize, &McpInput)>> = BTreeMap::new();
    for (i, task) in batch.tasks.iter().enumerate() {
        if let AgentInput::Mcp(input) = &task.agent {
            by_server
                .entry(input.server_key())
                .or_default()
                .push((i, input));
        }
    }
    let mut issues = Vec::new();
    for (key, tasks) in by_server {
        let first = tasks[0].1;
        let tools = match services
            .mcp_pool
            .session(&key, || transport_for(first, services))
            .await
        {
            Ok(session) => session.list_tools().await,
            Err(e) => Err(e),
        };
        let tools = match tools {
            Ok(t) => t,
            Err(e) => {
                for (i, input) in &tasks {
                    let field = if input.url.is_some() { "url" } else { "server" };
                    issues.push(Issue::new(
                        format!("/tasks/{i}/input_data/{field}"),
                        format!("cannot list the tools of MCP server '{key}': {e}"),
                    ));
                }
                continue;
            }
        };
        for (i, input) in tasks {
            issues.extend(check_task(i, input, &key, &tools, batch));
        }
    }
    issues
}

fn check_task(
    i: usize,
    input: &McpInput,
    server: &str,
    tools: &[ToolInfo],
    batch: &Batch,
) -> Vec<Issue> {
    let Some(tool) = tools.iter().find(|t| t.name == input.tool) else {
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        return vec![Issue::new(
            format!("/tasks/{i}/input_data/tool"),
            format!(
                "MCP server '{server}' has no tool '{}'; its tools: {}",
                input.tool,
                names.join(", ")
            ),
        )];
    };
    let arguments = Value::Object(input.arguments.clone());
    let validator = match jsonschema::validator_for(&tool.input_schema) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(server, tool = %tool.name, "tool input schema is unusable: {e}");
            return Vec::new();
        }
    };
    let mut sites = Vec::new();
    template::visit_sites(&arguments, &mut String::new(), &mut |p, site| {
        // A string with `{{` but no reference is plain text, checked like any other.
        if let Site::Template(s) = site
            && !template::parse(s, &|_| true)
                .is_ok_and(|pieces| pieces.iter().any(|p| matches!(p, Piece::Ref(_))))
        {
            return;
        }
        sites.push((p.to_string(), filled_with(site, batch)));
    });
    let at = |p: &str| format!("/tasks/{i}/input_data/arguments{p}");
    // What stands at a site now is not what the tool will get: the site is judged below.
    let filled_in = |p: &str| {
        sites.iter().any(|(s, _)| {
            p == s
                || p.strip_prefix(s.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    };
    let mut issues: Vec<Issue> = validator
        .iter_errors(&arguments)
        .filter(|e| !filled_in(e.instance_path().as_str()))
        .map(|e| {
            Issue::new(
                at(e.instance_path().as_str()),
                format!(
                    "does not match the input schema of tool '{}': {e}",
                    tool.name
                ),
            )
        })
        .collect();
    for (p, filled) in sites {
        let Some((from, what, hint)) = filled else {
            continue;
        };
        let tokens = template::pointer_tokens(&p).unwrap_or_default();
        let Ok(place) = typing::walk(Shape::new(&tool.input_schema), &tokens) else {
            continue;
        };
        if let Some(to) = typing::types_at(&place)
            && !typing::may_fit(&from, &to)
        {
            issues.push(Issue::new(
                at(&p),
                format!(
                    "tool '{}' takes {} here, but {what} is of type {}{hint}",
                    tool.name,
                    typing::describe(&to),
                    typing::describe(&from)
                ),
            ));
        }
    }
    issues
}

/// The types a site will hold once filled, what fills it (for the message) and a hint; `None`
/// when that is not known.
fn filled_with(site: Site<'_>, batch: &Batch) -> Option<(BTreeSet<&'static str>, String, String)> {
    let agent_of = |id: &str| {
        batch
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .map(|t| t.agent.name())
    };
    match site {
        Site::Template(s) => {
            let pieces = template::parse(s, &|id| agent_of(id).is_some()).ok()?;
            let refs: Vec<_> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Ref(r) => Some(r),
                    Piece::Text(_) => None,
                })
                .collect();
            let hint = match (refs.as_slice(), pieces.len()) {
                ([r], 1) => format!(
                    "; to pass the value with its type, write {{\"$output\": \"{}{}\"}}",
                    r.task_id,
                    template::encode_pointer(&r.fields)
                ),
                ([], _) => return None,
                _ => String::new(),
            };
            Some((
                ["string"].into(),
                "a string with {{tasks...}} references (they are always replaced by text)".into(),
                hint,
            ))
        }
        Site::Typed(v) => {
            let r = template::typed_ref(v)?.ok()?;
            let types = typed_ref_types(&r, agent_of(&r.task_id)?).ok()??;
            Some((types, r.shown(), String::new()))
        }
    }
}
