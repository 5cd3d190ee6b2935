//! The fast path for valid batches. Each task is deserialized straight from its slice of the input
//! text into its typed form (no `serde_json::Value` tree, no `#[serde(flatten)]` buffering), and
//! the few rules of the JSON Schema that serde does not enforce (id pattern and length, ranges,
//! non-empty fields, objects where serde would also take an array) are checked by hand. The size
//! limits are checked in one pass over the text. This keeps checking 100,000 tasks fast and small
//! in memory.
//!
//! It answers "valid, here is the batch", "every task is fine but the graph or the references
//! between tasks are not, here are those problems" (found by the same functions the full check
//! uses), or "not sure": on any other problem, and wherever serde and the schema could disagree
//! (a repeated key, which serde would take silently), it returns `None` and the full check
//! (`validate::validate_text_with`) runs instead, which finds and words every problem. So the
//! error messages have exactly one source. Agents whose inputs hold enums (`coder`, `debug`:
//! serde also takes `{"Effect": null}` for `"Effect"`) are checked per task against the compiled
//! schema instead of by hand. The fuzz target checks that whatever this path accepts, the full
//! check accepts too, read the same way (`exercise::exercise`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::agents::{AgentInput, CommandInput, McpInput};
use crate::batch::issue::Issue;
use crate::batch::limits::{
    Limits, MAX_BACKOFF_MS, MAX_BATCH_DEPTH, MAX_JSON_INTEGER, MAX_OUTPUT_BYTES, MAX_RETRIES,
    MAX_TASK_ID_LEN, MAX_WORKERS, MIN_TIMEOUT_SECONDS,
};
use crate::batch::schema::batch_validator;
use crate::batch::validate::{RefSite, collect_sites, reference_issues_with, spawnable};
use crate::batch::{Batch, BatchConfig, Task, ValidatedBatch};
use crate::graph::{Plan, natural_path_cmp};

/// The checked batch, or `None` when anything at all is off (the caller then checks in full).
#[cfg(test)]
pub fn validate(text: &str, limits: &Limits) -> Option<ValidatedBatch> {
    check(text, limits)?.ok()
}

/// A batch whose every task passed its own checks but whose dependency graph or references did
/// not: the issues are those the full check finds, from the same functions, without building
/// the document's `Value` tree (a cycle through a million tasks is rejected at the cost of
/// reading it). `batch` is still to be checked against the run's context.
#[derive(Debug)]
pub struct GraphRejected {
    pub batch: Batch,
    pub issues: Vec<Issue>,
}

/// As [`validate`], but also answers for batches whose only problems are in the dependency graph
/// or the references between tasks.
pub fn check(text: &str, limits: &Limits) -> Option<Result<ValidatedBatch, GraphRejected>> {
    // One pass over the text: each task is typed and checked as soon as it is read.
    let mut cx = Cx {
        limits,
        sites: Vec::new(),
        scratch: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let (tasks, config) = Doc(&mut cx).deserialize(&mut de).ok()?;
    de.end().ok()?;
    let config = match config {
        Some(c) => self::config(c, limits)?,
        None => BatchConfig::default(),
    };

    let ids = tasks.iter().map(|t| t.task_id.clone()).collect();
    let plan = Plan::build_valid(ids, |i| &tasks[i].dependencies);
    let mut issues = Vec::new();
    // The tasks are seen in place: copying a million ids and dependency lists into
    // `GraphInput`s would cost more than the checks.
    let id_of = |i: usize| Some(tasks[i].task_id.as_str());
    if plan.is_none() {
        let deps_of = |i: usize| {
            let deps: &[String] = &tasks[i].dependencies;
            deps.iter().enumerate().map(|(j, d)| (j, d.as_str()))
        };
        issues = Plan::build_with(tasks.len(), id_of, deps_of).err()?;
    }
    if !cx.sites.is_empty() {
        let agents: Vec<Option<&str>> = tasks.iter().map(|t| Some(t.agent.name())).collect();
        let lists = |i: usize, up: &str| tasks[i].dependencies.iter().any(|d| d == up);
        issues.extend(reference_issues_with(
            &cx.sites,
            &agents,
            tasks.len(),
            id_of,
            lists,
        ));
    }
    let batch = Batch { tasks, config };
    match plan {
        Some(plan) if issues.is_empty() => Some(Ok(ValidatedBatch { batch, plan })),
        _ => {
            // As the full check orders them.
            issues.sort_by(|a, b| natural_path_cmp(&a.path, &b.path));
            issues.dedup();
            Some(Err(GraphRejected { batch, issues }))
        }
    }
}

/// Any reason to leave the batch to the full check; which one does not matter.
fn decline<E: de::Error>() -> E {
    E::custom("left to the full check")
}

/// What reading the document carries along.
struct Cx<'l> {
    limits: &'l Limits,
    /// Strings of the inputs that may hold `{{tasks...}}` references.
    sites: Vec<RefSite>,
    /// Reused for each task's dependency list, so the list is allocated once at its size.
    scratch: Vec<String>,
}

impl Cx<'_> {
    /// A string (or key) within the string limit.
    fn short<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.len() > self.limits.max_string_bytes {
            return Err(decline());
        }
        Ok(())
    }

    /// A container at nesting `depth` (the document being 1) within the depth limit.
    fn shallow<E: de::Error>(&self, depth: usize) -> Result<(), E> {
        if depth > self.limits.max_depth {
            return Err(decline());
        }
        Ok(())
    }
}

/// The batch document: `tasks` read task by task, `config` kept as text. `deserialize_map` and
/// `deserialize_seq` take only objects and arrays (serde's derived structs also take an array
/// for a struct, which the schema does not).
struct Doc<'c, 'l>(&'c mut Cx<'l>);

impl<'de> DeserializeSeed<'de> for Doc<'_, '_> {
    type Value = (Vec<Task>, Option<&'de RawValue>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Doc<'_, '_> {
    type Value = (Vec<Task>, Option<&'de RawValue>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        cx.shallow(1)?;
        let (mut tasks, mut config) = (None, None);
        // Keys are borrowed, so one written with escapes declines (the full check reads it).
        while let Some(key) = map.next_key::<&'de str>()? {
            cx.short(key)?;
            match key {
                "tasks" if tasks.is_none() => tasks = Some(map.next_value_seed(Tasks(cx))?),
                "config" if config.is_none() => config = Some(map.next_value()?),
                _ => return Err(decline()),
            }
        }
        Ok((tasks.ok_or_else(decline)?, config))
    }
}

struct Tasks<'c, 'l>(&'c mut Cx<'l>);

impl<'de> DeserializeSeed<'de> for Tasks<'_, '_> {
    type Value = Vec<Task>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Tasks<'_, '_> {
    type Value = Vec<Task>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of tasks")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        cx.shallow(2)?;
        let mut tasks = Vec::new();
        while let Some(raw) = seq.next_element_seed(RawTaskSeed(&mut *cx))? {
            if tasks.len() == cx.limits.max_tasks {
                return Err(decline());
            }
            tasks.push(task(tasks.len(), raw, cx).ok_or_else(decline)?);
        }
        tasks.shrink_to_fit();
        Ok(tasks)
    }
}

/// One task, flat: the agent's input stays a slice of the text until the agent is known.
struct RawTask<'a> {
    task_id: String,
    agent: &'a str,
    input_data: &'a RawValue,
    description: String,
    dependencies: Vec<String>,
    timeout_seconds: Option<f64>,
    retries: Option<u32>,
}

struct RawTaskSeed<'c, 'l>(&'c mut Cx<'l>);

impl<'de> DeserializeSeed<'de> for RawTaskSeed<'_, '_> {
    type Value = RawTask<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RawTaskSeed<'_, '_> {
    type Value = RawTask<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a task")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let cx = self.0;
        cx.shallow(3)?;
        let (mut task_id, mut agent, mut input_data) = (None, None, None);
        let (mut description, mut dependencies, mut timeout_seconds, mut retries) =
            (None, None, None, None);
        fn once<'de, A: MapAccess<'de>, T: de::Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(decline());
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        while let Some(key) = map.next_key::<&'de str>()? {
            cx.short(key)?;
            match key {
                "task_id" => once(&mut map, &mut task_id)?,
                "agent" => once(&mut map, &mut agent)?,
                "input_data" => once(&mut map, &mut input_data)?,
                "description" => once(&mut map, &mut description)?,
                "dependencies" if dependencies.is_none() => {
                    cx.shallow(4)?;
                    dependencies = Some(map.next_value_seed(Strings(&mut cx.scratch))?);
                }
                "timeout_seconds" => once(&mut map, &mut timeout_seconds)?,
                "retries" => once(&mut map, &mut retries)?,
                _ => return Err(decline()),
            }
        }
        let task = RawTask {
            task_id: task_id.ok_or_else(decline)?,
            agent: agent.ok_or_else(decline)?,
            input_data: input_data.ok_or_else(decline)?,
            description: description.unwrap_or_default(),
            dependencies: dependencies.unwrap_or_default(),
            timeout_seconds: timeout_seconds.flatten(),
            retries: retries.flatten(),
        };
        cx.short(&task.task_id)?;
        cx.short(task.agent)?;
        cx.short(&task.description)?;
        for d in &task.dependencies {
            cx.short(d)?;
        }
        // The input is read later, by its agent's type; its nesting and strings are judged
        // from its text, one level below the task.
        if !within_limits(task.input_data.get(), 3, cx.limits) {
            return Err(decline());
        }
        Ok(task)
    }
}

/// A list of strings, collected in a reused buffer and then allocated once at its length.
struct Strings<'s>(&'s mut Vec<String>);

impl<'de> DeserializeSeed<'de> for Strings<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Strings<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.0.clear();
        while let Some(s) = seq.next_element::<String>()? {
            self.0.push(s);
        }
        Ok(self.0.drain(..).collect())
    }
}

/// Task `i`, typed and checked; its strings holding `{{` are added to `sites`.
fn task(i: usize, t: RawTask, cx: &mut Cx) -> Option<Task> {
    let input = t.input_data.get();
    // serde reads a struct from a JSON array too; the schema wants an object.
    if !input.starts_with('{')
        || !is_task_id(&t.task_id)
        || !t.dependencies.iter().all(|d| is_task_id(d))
        || t.timeout_seconds.is_some_and(|s| s < MIN_TIMEOUT_SECONDS)
        || t.retries.is_some_and(|r| r > MAX_RETRIES)
    {
        return None;
    }
    let agent = match t.agent {
        "command" => {
            let mut input: CommandInput = serde_json::from_str(input).ok()?;
            input.argv.shrink_to_fit();
            (!input.argv.is_empty() && spawnable(&input)).then_some(AgentInput::Command(input))?
        }
        "mcp" => {
            let input: McpInput = serde_json::from_str(input).ok()?;
            let exclusive = input.server.is_none() || input.url.is_none();
            (!input.tool.is_empty() && exclusive).then_some(AgentInput::Mcp(input))?
        }
        // Any other agent: its input is checked against the schema, as the full check would.
        _ => return checked_by_schema(i, t, &mut cx.sites),
    };
    // A `{{` in a string shows in the text as `{{` or, escaped, with a `\u`; so does the key of
    // a typed reference (`$output`).
    if input.contains("{{")
        || input.contains("\\u")
        || input.contains(crate::batch::template::OUTPUT_KEY)
    {
        let value: Value = serde_json::from_str(input).ok()?;
        collect_sites(i, &value, &mut cx.sites);
    }
    Some(Task {
        task_id: t.task_id,
        agent,
        description: t.description,
        dependencies: t.dependencies,
        timeout_seconds: t.timeout_seconds.map(crate::batch::TaskTimeout::Seconds),
        retries: t.retries,
        // A task naming a breaker is declined above and checked in full.
        breaker: None,
        // So is a task with a `cache` object.
        cache: None,
    })
}

/// Task `i` (its task-level rules already checked) with its input checked against the compiled
/// batch schema, as the input of the only task of a batch.
fn checked_by_schema(i: usize, t: RawTask, sites: &mut Vec<RefSite>) -> Option<Task> {
    let input: Value = serde_json::from_str(t.input_data.get()).ok()?;
    let mut one =
        serde_json::json!({"tasks": [{"task_id": "a", "agent": t.agent, "input_data": input}]});
    if !batch_validator().is_valid(&one) {
        return None;
    }
    let input = one["tasks"][0]["input_data"].take();
    let scoped = crate::agents::parent_scope(t.agent, &input);
    collect_sites(i, scoped.as_ref().unwrap_or(&input), sites);
    let agent: AgentInput =
        serde_json::from_value(serde_json::json!({"agent": t.agent, "input_data": input})).ok()?;
    Some(Task {
        task_id: t.task_id,
        agent,
        description: t.description,
        dependencies: t.dependencies,
        timeout_seconds: t.timeout_seconds.map(crate::batch::TaskTimeout::Seconds),
        retries: t.retries,
        // A task naming a breaker is declined above and checked in full.
        breaker: None,
        // So is a task with a `cache` object.
        cache: None,
    })
}

/// Task `i` of a batch read from its own text as this path reads every task, for the full check
/// of a batch this path declined: a task this path accepts has no problem of its own there
/// (the schema would find none), so only the others need their `Value` tree and the schema.
/// Its strings holding `{{` are added to `sites`; `None` (and `sites` as it was) if this path
/// would not accept the task. The text is known to be JSON within `limits`.
pub(crate) fn typed_task(
    i: usize,
    text: &str,
    limits: &Limits,
    sites: &mut Vec<RefSite>,
) -> Option<Task> {
    let mut cx = Cx {
        limits,
        sites: std::mem::take(sites),
        scratch: Vec::new(),
    };
    let before = cx.sites.len();
    let mut de = serde_json::Deserializer::from_str(text);
    let task = RawTaskSeed(&mut cx)
        .deserialize(&mut de)
        .ok()
        .and_then(|raw| task(i, raw, &mut cx));
    *sites = cx.sites;
    if task.is_none() {
        sites.truncate(before);
    }
    task
}

/// The batch's `config`, checked by hand against the schema's rules.
fn config(raw: &RawValue, limits: &Limits) -> Option<BatchConfig> {
    if !within_limits(raw.get(), 1, limits) {
        return None;
    }
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    // serde reads a struct from a JSON array too; the schema wants objects.
    if !value.is_object() || value.get("circuit_breaker").is_some_and(|b| !b.is_object()) {
        return None;
    }
    let c: BatchConfig = serde_json::from_value(value).ok()?;
    let ok = c.max_workers.is_none_or(|w| (1..=MAX_WORKERS).contains(&w))
        && c.timeout_seconds.is_none_or(|s| s >= MIN_TIMEOUT_SECONDS)
        && c.trace_dir.as_ref().is_none_or(|d| !d.is_empty())
        && c.retries.is_none_or(|r| r <= MAX_RETRIES)
        && c.retry_backoff_ms.is_none_or(|ms| ms <= MAX_BACKOFF_MS)
        && c.retry_backoff_max_ms.is_none_or(|ms| ms <= MAX_BACKOFF_MS)
        && c.max_output_bytes
            .is_none_or(|b| (1..=limits.max_output_bytes.min(MAX_OUTPUT_BYTES)).contains(&b))
        && c.max_expanded_input_bytes
            .is_none_or(|b| (1..=MAX_JSON_INTEGER).contains(&(b as u64)))
        && c.max_batch_depth.is_none_or(|d| d <= MAX_BATCH_DEPTH)
        && c.circuit_breaker
            .failure_threshold
            .is_none_or(|n| u64::from(n) <= MAX_JSON_INTEGER)
        && c.circuit_breaker
            .recovery_timeout_seconds
            .is_none_or(|s| s >= 0.0);
    ok.then_some(c)
}

/// The schema's task id rule: 1 to 128 of `A-Za-z0-9_.-`.
fn is_task_id(s: &str) -> bool {
    (1..=MAX_TASK_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Most keys of one object this path compares; an object with more is left to the full check,
/// so a hostile object of many keys costs no quadratic time here.
const MAX_KEYS_COMPARED: usize = 64;

/// Whether a value's text stays within the nesting and string limits and repeats no key in any
/// object, judged from the text alone: nesting by counting brackets outside strings (`depth` is
/// the nesting the value sits in), strings by their escaped length (never shorter than the
/// string itself), keys by their text (a key written with an escape is left to the full check,
/// which compares keys decoded). The text is JSON already read by the parser.
fn within_limits(text: &str, mut depth: usize, limits: &Limits) -> bool {
    let b = text.as_bytes();
    // One entry per open container: for an object, where its keys start in `keys`.
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let (mut len, mut escaped) = (0usize, false);
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 2;
                        len += 2;
                    } else {
                        i += 1;
                        len += 1;
                    }
                }
                if len > limits.max_string_bytes {
                    return false;
                }
                if expect_key {
                    expect_key = false;
                    let Some(&Some(from)) = open.last() else {
                        return false;
                    };
                    let key = &b[start..i.min(b.len())];
                    if escaped
                        || keys.len() - from >= MAX_KEYS_COMPARED
                        || keys[from..].contains(&key)
                    {
                        return false;
                    }
                    keys.push(key);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limits.max_depth {
                    return false;
                }
                open.push((b[i] == b'{').then_some(keys.len()));
                expect_key = b[i] == b'{';
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if let Some(Some(from)) = open.pop() {
                    keys.truncate(from);
                }
                expect_key = false;
            }
            b',' => expect_key = matches!(open.last(), Some(Some(_))),
            _ => {}
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_value_with;

    /// The fast path and the full check agree on the batch they accept.
    fn same(text: &str) {
        let limits = Limits::default();
        let fast = validate(text, &limits).expect("fast path accepts");
        let ctx = crate::batch::ValidationContext::default();
        let full = validate_value_with(serde_json::from_str(text).unwrap(), &ctx).unwrap();
        assert_eq!(
            serde_json::to_value(&fast.batch).unwrap(),
            serde_json::to_value(&full.batch).unwrap()
        );
        assert_eq!(
            serde_json::to_value(fast.plan.summary()).unwrap(),
            serde_json::to_value(full.plan.summary()).unwrap()
        );
    }

    #[test]
    fn accepts_what_the_full_check_accepts() {
        same(r#"{"tasks": []}"#);
        same(
            r#"{"tasks": [
            {"task_id": "a", "agent": "command", "input_data": {"argv": ["echo", "x"]}},
            {"task_id": "b", "agent": "command", "dependencies": ["a"], "timeout_seconds": 2,
             "input_data": {"argv": ["echo", "{{tasks.a.output.stdout}}"], "env": {"K": "v"}}},
            {"task_id": "c", "agent": "command", "dependencies": ["b"], "retries": null,
             "input_data": {"argv": ["echo", "{\u007btasks.b.output.stdout}}"], "cwd": null}},
            {"task_id": "m", "agent": "mcp", "description": "call",
             "input_data": {"tool": "echo", "arguments": {"message": "hi", "n": [1, {"x": 2}]}}},
            {"task_id": "d", "agent": "coder", "input_data": {"contract_description": "x",
             "node_type": "Effect", "output_path": "out.py"}}],
            "config": {"max_workers": 2, "trace_dir": "t", "circuit_breaker": {"failure_threshold": 1}}}"#,
        );
    }

    #[test]
    fn declines_anything_off() {
        let limits = Limits::default();
        let cmd = r#""agent": "command", "input_data": {"argv": ["x"]}"#;
        for bad in [
            r#"{"tasks": [], "extra": 1}"#.to_string(),
            r#"{"tasks": {}}"#.into(),
            r#"{"config": {}}"#.into(),
            r#"[[]]"#.into(),
            r#"{"tasks": [], "config": null}"#.into(),
            r#"{"tasks": [], "config": [null, null]}"#.into(),
            r#"{"tasks": [], "config": {"circuit_breaker": [1, 2]}}"#.into(),
            r#"{"tasks": [], "config": {"max_workers": 0}}"#.into(),
            r#"{"tasks": [], "config": {"retry_backoff_ms": 3600001}}"#.into(),
            r#"{"tasks": [], "config": {"trace_dir": ""}}"#.into(),
            format!(r#"{{"tasks": [{{"task_id": "a b", {cmd}}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "{}", {cmd}}}]}}"#, "x".repeat(129)),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "timeout_seconds": 0}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "retries": 101}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "description": null}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": null}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": ["a"]}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "dependencies": [""]}}]}}"#),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}}}, {{"task_id": "a", {cmd}}}]}}"#),
            r#"{"tasks": [["a", "command", {"argv": ["x"]}]]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": [["x"]]}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": []}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["x"], "shell": 1}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "nope", "input_data": {"argv": ["x"]}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": ""}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": "t", "arguments": []}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "coder", "input_data": {"contract_description": "x",
                "node_type": {"Effect": null}, "output_path": "o.py"}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["{{tasks.a.output.x}}"]}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["{\u007btasks.zz.output.x}}"]}}]}"#.into(),
            r#"{"tasks": [] "#.into(),
        ] {
            assert!(validate(&bad, &limits).is_none(), "accepted {bad}");
            assert!(
                crate::batch::validate_text(&bad).is_err(),
                "the full check accepts {bad}"
            );
        }
        // Repeated keys, anywhere: this path leaves them to the full check, which reports them.
        for dup in [
            r#"{"tasks": [], "tasks": []}"#.to_string(),
            format!(r#"{{"tasks": [{{"task_id": "a", {cmd}, "task_id": "b"}}]}}"#),
            r#"{"tasks": [{"task_id": "a", "agent": "command", "input_data": {"argv": ["x"], "env": {"A": "1", "A": "2"}}}]}"#.into(),
            r#"{"tasks": [{"task_id": "a", "agent": "mcp", "input_data": {"tool": "t", "arguments": {"x": {"y": 1, "y": 1}}}}]}"#.into(),
            r#"{"tasks": [], "config": {"retries": 1, "retries": 2}}"#.into(),
        ] {
            assert!(validate(&dup, &limits).is_none(), "accepted {dup}");
            let issues = crate::batch::validate_text(&dup).unwrap_err();
            assert!(issues[0].message.starts_with("duplicate key"), "{issues:?}");
        }
        // Strings no program can be given: the full check names them.
        for unspawnable in [
            r#"{"argv": ["x\u0000y"]}"#,
            r#"{"argv": ["x"], "cwd": "\u0000"}"#,
            r#"{"argv": ["x"], "env": {"A=B": "c"}}"#,
            r#"{"argv": ["x"], "env": {"": "c"}}"#,
            r#"{"argv": ["x"], "env": {"A": "\u0000"}}"#,
        ] {
            let text = format!(
                r#"{{"tasks": [{{"task_id": "a", "agent": "command", "input_data": {unspawnable}}}]}}"#
            );
            assert!(validate(&text, &limits).is_none(), "accepted {text}");
            assert!(crate::batch::validate_text(&text).is_err(), "{text}");
        }
        let one = format!(r#"{{"tasks": [{{"task_id": "a", {cmd}}}]}}"#);
        for tight in [
            Limits {
                max_tasks: 0,
                ..Limits::default()
            },
            Limits {
                max_depth: 4,
                ..Limits::default()
            },
            Limits {
                max_string_bytes: 9,
                ..Limits::default()
            },
        ] {
            assert!(validate(&one, &tight).is_none(), "{tight:?}");
        }
        let roomy = Limits {
            max_depth: 5,
            max_string_bytes: 10,
            ..Limits::default()
        };
        assert!(validate(&one, &roomy).is_some());
    }

    /// Under every small limit, this path accepts a batch only if the full check does, and it
    /// accepts each batch once the limits are wide enough.
    #[test]
    fn agrees_with_the_full_check_at_every_limit() {
        let batches = [
            r#"{"tasks": []}"#,
            r#"{"tasks": [], "config": {"circuit_breaker": {"failure_threshold": 2}}}"#,
            r#"{"tasks": [{"task_id": "abcdefgh", "agent": "command", "input_data": {"argv": ["x"]}}]}"#,
            r#"{"tasks": [{"task_id": "a", "agent": "command", "description": "a long description",
                "input_data": {"argv": ["x"], "env": {"K": "v"}}},
               {"task_id": "b", "agent": "command", "dependencies": ["a"], "input_data": {"argv": ["y"]}}]}"#,
            r#"{"tasks": [{"task_id": "m", "agent": "mcp", "input_data": {"tool": "t", "arguments": {"a": [[["deep"]]]}}}]}"#,
            r#"{"tasks": [{"task_id": "c", "agent": "coder", "input_data": {"contract_description": "x",
                "node_type": "Compute", "output_path": "a/b.py", "context_files": ["c.py"]}}]}"#,
        ];
        for text in batches {
            let mut accepted = false;
            for max_depth in 0..9 {
                for max_string_bytes in 0..24 {
                    for max_tasks in 0..3 {
                        let limits = Limits {
                            max_depth,
                            max_string_bytes,
                            max_tasks,
                            ..Limits::default()
                        };
                        if validate(text, &limits).is_some() {
                            accepted = true;
                            let ctx = crate::batch::ValidationContext {
                                limits,
                                ..Default::default()
                            };
                            let value = serde_json::from_str(text).unwrap();
                            assert!(
                                validate_value_with(value, &ctx).is_ok(),
                                "{limits:?} {text}"
                            );
                        }
                    }
                }
            }
            assert!(accepted, "{text}");
        }
    }

    #[test]
    fn limits_scan_counts_nesting_and_escaped_strings() {
        let limits = Limits {
            max_depth: 2,
            max_string_bytes: 4,
            ..Limits::default()
        };
        assert!(within_limits(r#"{"a": [1, "]]]]"], "b": {}}"#, 0, &limits));
        assert!(!within_limits(r#"{"a": [1, "]]]]"], "b": {}}"#, 1, &limits));
        assert!(!within_limits(r#"{"a": [[1]]}"#, 0, &limits));
        assert!(within_limits(r#"[{}, {}, [], {"k": "\"\\"}]"#, 0, &limits));
        assert!(!within_limits(r#"{"abcde": 1}"#, 0, &limits));
        assert!(!within_limits(r#"["\"\"\""]"#, 0, &limits));
    }

    #[test]
    fn limits_scan_declines_repeated_and_escaped_keys() {
        let l = Limits::default();
        assert!(within_limits(
            r#"{"a": {"a": 1, "b": [{"a": 2}]}, "b": "a"}"#,
            0,
            &l
        ));
        assert!(within_limits(r#"{"a": "x,\"a\":1", "b": 2}"#, 0, &l));
        assert!(!within_limits(r#"{"a": 1, "b": {"c": 1}, "a": 2}"#, 0, &l));
        assert!(!within_limits(r#"[{"k": [1, {"z": 0, "z": 0}]}]"#, 0, &l));
        assert!(!within_limits(r#"{"\u0061": 1}"#, 0, &l));
        let many: Vec<String> = (0..MAX_KEYS_COMPARED + 1)
            .map(|i| format!("\"k{i}\": 1"))
            .collect();
        assert!(!within_limits(&format!("{{{}}}", many.join(",")), 0, &l));
    }
}
