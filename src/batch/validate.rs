//! Checking a whole batch before anything runs: JSON syntax, the JSON Schema, the dependency graph
//! and output references. Every problem is reported, not just the first.

use std::collections::BTreeSet;

use jsonschema::error::ValidationErrorKind;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::agents;
use crate::batch::Batch;
use crate::batch::issue::{Issue, pointer_token, quote};
use crate::batch::limits::Limits;
use crate::batch::scan;
use crate::batch::schema::{available_agents, batch_schema, batch_validator};
use crate::batch::template::{self, Piece, Site};
use crate::batch::typing::{self, Shape};
use crate::graph::{GraphInput, Plan, natural_path_cmp};

/// A batch that passed every check, with its dependency plan.
#[derive(Debug, Clone)]
pub struct ValidatedBatch {
    pub batch: Batch,
    pub plan: Plan,
}

/// Longest message kept from the schema validator: it quotes the offending value, which can be huge.
const MAX_MESSAGE: usize = 400;

pub use crate::validation::ValidationContext;

/// Parses and checks a batch given as JSON text, under the default [`Limits`].
pub fn validate_text(text: &str) -> Result<ValidatedBatch, Vec<Issue>> {
    validate_text_with(text, &ValidationContext::default())
}

/// Parses and checks a batch given as JSON text, under `ctx`'s limits and against what it knows.
pub fn validate_text_with(
    text: &str,
    ctx: &ValidationContext,
) -> Result<ValidatedBatch, Vec<Issue>> {
    ctx.limits.check_text(text).map_err(|e| vec![e])?;
    // Valid batches take the streaming path (one task's JSON tree at a time); anything it does
    // not accept is checked again below in full, which finds and words every problem.
    // It also answers for batches whose only problems are in the graph (a cycle through a
    // million tasks), which would otherwise cost the whole document's `Value` tree.
    match crate::batch::fast::check(text, &ctx.limits) {
        Some(Ok(validated)) if typed_agent_issues_absent(&validated.batch.tasks, ctx) => {
            return Ok(validated);
        }
        Some(Err(rejected)) if typed_agent_issues_absent(&rejected.batch.tasks, ctx) => {
            return Err(rejected.issues);
        }
        _ => {}
    }
    // Limits and repeated keys first, in a pass that builds nothing: the `Value` tree below
    // costs many times the text, and would keep only the last of repeated keys.
    let found = scan::scan(text, &ctx.limits).map_err(|e| vec![json_syntax_issue(&e)])?;
    if !found.over_limits.is_empty() {
        let mut issues = found.over_limits;
        issues.extend(found.duplicates);
        issues.sort_by(|a, b| natural_path_cmp(&a.path, &b.path));
        return Err(issues);
    }
    let mut check = FullCheck::new(ctx, found.duplicates);
    let top = stream_tasks(text, &mut check).map_err(|e| vec![json_syntax_issue(&e)])?;
    let plan = check.finish(&top)?;
    // Only a batch without any problem is read into its types, straight from the text.
    let batch = serde_json::from_str::<Batch>(text).map_err(type_mismatch)?;
    Ok(ValidatedBatch { batch, plan })
}

/// A batch that passed every check but does not fit the types: the schema is derived from the
/// same types, so this means a schema/type mismatch.
fn type_mismatch(e: serde_json::Error) -> Vec<Issue> {
    vec![Issue::new("", format!("invalid batch: {e}"))]
}

/// Reads the document with its `tasks` array (if it is one) fed to `check` task by task; returns
/// the document with `tasks` left empty. The text is known to be JSON within the limits.
fn stream_tasks(text: &str, check: &mut FullCheck) -> Result<Value, serde_json::Error> {
    if !text.trim_start().starts_with('{') {
        return serde_json::from_str(text);
    }
    // The top level as (key, text of value) pairs, then as a map the way `Value` builds one: a
    // repeated key keeps its first place and its last value.
    let entries: Vec<(String, &RawValue)> = serde_json::from_str::<Entries>(text)?.0;
    let mut top = Map::new();
    let mut tasks = None;
    for (key, raw) in entries {
        if key == "tasks" {
            tasks = Some(raw);
            top.insert(key, Value::Null);
        } else {
            top.insert(key, serde_json::from_str(raw.get())?);
        }
    }
    if let Some(raw) = tasks {
        top["tasks"] = if raw.get().starts_with('[') {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            de.deserialize_seq(TaskStream(check))?;
            Value::Array(Vec::new())
        } else {
            serde_json::from_str(raw.get())?
        };
    }
    Ok(Value::Object(top))
}

/// The top-level entries of a JSON object, values left as text.
struct Entries<'de>(Vec<(String, &'de RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Feeds the elements of `tasks`, one at a time, to the check: typed straight from their text
/// where the fast path takes them, else as a `Value`.
struct TaskStream<'a, 'c>(&'a mut FullCheck<'c>);

impl<'de> Visitor<'de> for TaskStream<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if !self.0.typed_task(raw.get()) {
                let task: Value = serde_json::from_str(raw.get()).map_err(A::Error::custom)?;
                self.0.task(task);
            }
        }
        Ok(())
    }
}

/// The error for text that is not JSON, naming line and column.
pub fn json_syntax_issue(e: &serde_json::Error) -> Issue {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        _ => "invalid JSON",
    };
    let msg = e.to_string();
    // serde_json appends " at line L column C"; we say it first, in our own words.
    let detail = msg.split(" at line ").next().unwrap_or(&msg);
    Issue::new(
        "",
        format!(
            "{what} at line {}, column {}: {detail}",
            e.line(),
            e.column()
        ),
    )
}

/// Checks a batch already parsed into JSON, under the default [`Limits`].
pub fn validate_value(value: Value) -> Result<ValidatedBatch, Vec<Issue>> {
    validate_value_with(value, &ValidationContext::default())
}

/// Checks a batch already parsed into JSON, under `ctx`'s limits and against what it knows.
/// Input over a limit is not checked further: the other checks are what the limits protect.
pub fn validate_value_with(
    value: Value,
    ctx: &ValidationContext,
) -> Result<ValidatedBatch, Vec<Issue>> {
    let over = ctx.limits.check_value(&value);
    if !over.is_empty() {
        return Err(over);
    }
    check_value(value, ctx, Vec::new())
}

/// The full check of a document within the limits; `duplicates` holds the repeated keys found
/// in its text.
fn check_value(
    value: Value,
    ctx: &ValidationContext,
    duplicates: Vec<Issue>,
) -> Result<ValidatedBatch, Vec<Issue>> {
    let mut check = FullCheck::new(ctx, duplicates);
    let mut top = value;
    let mut tasks = None;
    if let Some(t) = top.get_mut("tasks").filter(|t| t.is_array()) {
        let Value::Array(all) = std::mem::replace(t, Value::Array(Vec::new())) else {
            unreachable!("an array")
        };
        tasks = Some(all.into_iter().map(|t| check.task(t)).collect());
    }
    let plan = check.finish(&top)?;
    if let (Some(tasks), Some(t)) = (tasks, top.get_mut("tasks")) {
        *t = Value::Array(tasks);
    }
    let batch = serde_json::from_value::<Batch>(top).map_err(type_mismatch)?;
    Ok(ValidatedBatch { batch, plan })
}

/// Every check of a batch, fed one task at a time (so a batch of a million tasks is never one
/// `Value` tree), then the rest of the document. Problems are kept by kind and put together in
/// one order at the end, so the result does not depend on how the tasks were fed.
struct FullCheck<'c> {
    ctx: &'c ValidationContext,
    duplicates: Vec<Issue>,
    task_schema: Vec<Issue>,
    agent: Vec<Issue>,
    spawn: Vec<Issue>,
    inputs: Vec<GraphInput>,
    agents: Vec<Option<&'static str>>,
    sites: Vec<RefSite>,
}

impl<'c> FullCheck<'c> {
    fn new(ctx: &'c ValidationContext, duplicates: Vec<Issue>) -> Self {
        FullCheck {
            ctx,
            duplicates,
            task_schema: Vec::new(),
            agent: Vec::new(),
            spawn: Vec::new(),
            inputs: Vec::new(),
            agents: Vec::new(),
            sites: Vec::new(),
        }
    }

    /// The next task of `tasks` if the fast path takes it alone (it then has no problem of its
    /// own: no schema, agent or spawn issue), fed from its text; `false` if it is left to
    /// [`FullCheck::task`]. Tasks whose agent checks its input against the context (`mcp`) are
    /// left there too, so those issues come from the one place.
    fn typed_task(&mut self, text: &str) -> bool {
        let i = self.inputs.len();
        let before = self.sites.len();
        let task = crate::batch::fast::typed_task(i, text, &self.ctx.limits, &mut self.sites);
        let Some(task) = task else {
            return false;
        };
        let agent = task.agent.name();
        if agents::has_input_checks(agent) {
            self.sites.truncate(before);
            return false;
        }
        self.inputs.push(GraphInput {
            id: Some(task.task_id),
            deps: task.dependencies.into_iter().enumerate().collect(),
        });
        self.agents
            .push(agents::ALL_AGENTS.iter().copied().find(|a| *a == agent));
        true
    }

    /// The next task of `tasks`, handed back.
    fn task(&mut self, task: Value) -> Value {
        let i = self.inputs.len();
        // The task checked against the schema as the only task of a batch (tasks are checked
        // independently by `items`), its paths then moved to its own place.
        // Built by hand: `json!` would copy the task through its serializer.
        let mut one = Value::Object(Map::from_iter([(
            "tasks".to_string(),
            Value::Array(vec![task]),
        )]));
        // `is_valid` stops at the first problem and builds no errors: most tasks have none.
        if !batch_validator().is_valid(&one) {
            let mut found = schema_issues(&one);
            for issue in &mut found {
                if let Some(rest) = issue.path.strip_prefix("/tasks/0") {
                    issue.path = format!("/tasks/{i}{rest}");
                }
            }
            self.task_schema.append(&mut found);
        }
        let task = one["tasks"][0].take();

        self.inputs.push(graph_input(&task));
        let agent = task.get("agent").and_then(Value::as_str);
        self.agents.push(
            agents::ALL_AGENTS
                .iter()
                .copied()
                .find(|a| Some(*a) == agent),
        );
        if let Some(cache) = task.get("cache").filter(|c| c.is_object()) {
            self.spawn.extend(crate::cache::spec::spec_issues(i, cache));
        }
        if let (Some(agent), Some(input)) = (agent, task.get("input_data")) {
            let scoped = agents::parent_scope(agent, input);
            collect_sites(i, scoped.as_ref().unwrap_or(input), &mut self.sites);
            for (pointer, message) in agents::check_input(agent, input, self.ctx) {
                self.agent.push(Issue::new(
                    format!("/tasks/{i}/input_data{pointer}"),
                    message,
                ));
            }
            if agent == "command" {
                spawn_issues(i, input, &mut self.spawn);
            }
        }
        task
    }

    /// The rest of the document (`tasks` emptied, or whatever stood there if not an array);
    /// the plan if the batch has no problem at all.
    fn finish(self, top: &Value) -> Result<Plan, Vec<Issue>> {
        let mut issues = self.duplicates;
        issues.extend(schema_issues(top));
        issues.extend(self.task_schema);
        issues.extend(config_issues(top, &self.ctx.limits));
        let plan = match Plan::build(&self.inputs) {
            Ok(plan) => Some(plan),
            Err(mut e) => {
                issues.append(&mut e);
                None
            }
        };
        issues.extend(reference_issues(&self.sites, &self.agents, &self.inputs));
        issues.extend(self.agent);
        issues.extend(self.spawn);
        match plan {
            Some(plan) if issues.is_empty() => Ok(plan),
            _ => {
                issues.sort_by(|a, b| natural_path_cmp(&a.path, &b.path));
                issues.dedup();
                Err(issues)
            }
        }
    }
}

fn schema_issues(value: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    for err in batch_validator().iter_errors(value) {
        schema_issue(&err, &mut issues);
    }
    issues
}

/// The issues one error of the schema validator stands for.
fn schema_issue(err: &jsonschema::ValidationError<'_>, issues: &mut Vec<Issue>) {
    let path = err.instance_path().as_str().to_string();
    match err.kind() {
        // A field that takes its value or a typed reference (`anyOf: [T, OutputRef]`): the
        // value is judged by the branch it was meant for, whose messages say more.
        ValidationErrorKind::AnyOf { context }
            if context.len() == 2 && takes_output_ref(err.schema_path().as_str()) =>
        {
            let meant = usize::from(err.instance().get(template::OUTPUT_KEY).is_some());
            for e in &context[meant] {
                schema_issue(e, issues);
            }
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let expected = expected_fields(err.schema_path().as_str());
            for field in unexpected {
                let mut message = format!("unknown field {}", quote(field));
                if !expected.is_empty() {
                    message.push_str(&format!("; expected one of: {}", expected.join(", ")));
                }
                issues.push(Issue::new(
                    format!("{path}/{}", crate::batch::issue::pointer_token(field)),
                    message,
                ));
            }
        }
        ValidationErrorKind::Enum { .. } if path.ends_with("/agent") => {
            let valid = available_agents().join(", ");
            let message = format!("unknown agent {}; valid agents: {valid}", err.instance());
            issues.push(Issue::new(path, message));
        }
        ValidationErrorKind::Pattern { .. }
            if path.ends_with("/task_id") || path.contains("/dependencies/") =>
        {
            issues.push(Issue::new(
                path,
                format!(
                    "task id {} may contain only letters, digits, '_', '-' and '.'",
                    short(&err.instance().to_string())
                ),
            ));
        }
        // `dependentSchemas: {A: {properties: {B: false}}}`: fields that exclude each other.
        ValidationErrorKind::FalseSchema => {
            let schema_path = err.schema_path().as_str();
            let message = match schema_path
                .split_once("/dependentSchemas/")
                .and_then(|(_, rest)| rest.split_once("/properties/"))
            {
                Some((a, b)) => {
                    let b = b.split('/').next().unwrap_or(b);
                    format!("set either `{a}` or `{b}`, not both")
                }
                None => "this field is not allowed here".to_string(),
            };
            issues.push(Issue::new(path, message));
        }
        _ => issues.push(Issue::new(path, short(&err.to_string()))),
    }
}

/// Whether the `anyOf` at `schema_path` (ending in `/anyOf`) is a field's own schema or a typed
/// reference (see [`crate::batch::passed::Passed`]).
fn takes_output_ref(schema_path: &str) -> bool {
    let Some(at) = schema_path.strip_suffix("/anyOf") else {
        return false;
    };
    batch_schema()
        .pointer(&format!("{at}/anyOf/1/$ref"))
        .and_then(Value::as_str)
        .is_some_and(|r| r == format!("#/$defs/{}", typing::OUTPUT_REF_DEF))
}

/// The property names allowed where an `additionalProperties: false` failed, read from our schema
/// at the failing keyword's location.
fn expected_fields(schema_path: &str) -> Vec<String> {
    let Some(pointer) = schema_path.strip_suffix("/additionalProperties") else {
        return Vec::new();
    };
    batch_schema()
        .pointer(&format!("{pointer}/properties"))
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn short(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// One task's id and dependencies, as far as they are well-formed.
pub(crate) fn graph_input(t: &Value) -> GraphInput {
    GraphInput {
        id: t.get("task_id").and_then(Value::as_str).map(str::to_string),
        deps: t
            .get("dependencies")
            .and_then(Value::as_array)
            .map(|ds| {
                ds.iter()
                    .enumerate()
                    .filter_map(|(j, d)| d.as_str().map(|s| (j, s.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A place inside a task's `input_data` that may refer to another task's output: a string that
/// may hold `{{tasks...}}` references, or a typed reference (`{"$output": ...}`).
#[derive(Debug, Clone)]
pub(crate) struct RefSite {
    pub task: usize,
    pub path: String,
    pub kind: SiteKind,
}

#[derive(Debug, Clone)]
pub(crate) enum SiteKind {
    Template(String),
    Typed(Value),
}

/// Appends the places of `input_data` (of task `task`) that may refer to outputs.
pub(crate) fn collect_sites(task: usize, input: &Value, sites: &mut Vec<RefSite>) {
    let mut pointer = format!("/tasks/{task}/input_data");
    template::visit_sites(input, &mut pointer, &mut |path, site| {
        sites.push(RefSite {
            task,
            path: path.to_string(),
            kind: match site {
                Site::Template(s) => SiteKind::Template(s.to_string()),
                Site::Typed(v) => SiteKind::Typed(v.clone()),
            },
        });
    });
}

/// Checks every reference: it names a known task, listed in the dependencies, and a field that
/// task's agent produces; a typed reference must also name a place the producing agent's output
/// has, and a value of a type the consuming field takes. `agents[i]` is task `i`'s agent name,
/// if it has one.
pub(crate) fn reference_issues(
    sites: &[RefSite],
    agents: &[Option<&str>],
    inputs: &[GraphInput],
) -> Vec<Issue> {
    reference_issues_with(
        sites,
        agents,
        inputs.len(),
        |i| inputs[i].id.as_deref(),
        |i, up| inputs[i].deps.iter().any(|(_, d)| d == up),
    )
}

/// As [`reference_issues`], for `n` tasks seen through `id_of(i)` (task `i`'s id, if usable) and
/// `lists(i, id)` (whether task `i` lists `id` among its dependencies), so the fast path checks
/// its typed tasks without copying them into [`GraphInput`]s.
pub(crate) fn reference_issues_with<'a>(
    sites: &[RefSite],
    agents: &[Option<&str>],
    n: usize,
    id_of: impl Fn(usize) -> Option<&'a str>,
    lists: impl Fn(usize, &str) -> bool,
) -> Vec<Issue> {
    if sites.is_empty() {
        return Vec::new();
    }
    // Later ids win, as when the map was collected (a repeated id is reported elsewhere).
    let mut index = crate::graph::id_index(n);
    index.extend((0..n).filter_map(|i| id_of(i).map(|id| (id, i))));
    let is_task = |id: &str| index.contains_key(id);
    let mut issues = Vec::new();
    for site in sites {
        let (i, path) = (site.task, site.path.as_str());
        let name = id_of(i).unwrap_or("?");
        // The upstream task of a reference, if it is known and a dependency (else an issue).
        let upstream = |task_id: &str, issues: &mut Vec<Issue>| {
            let Some(&up) = index.get(task_id) else {
                issues.push(Issue::new(
                    path,
                    format!("reference to unknown task '{task_id}'"),
                ));
                return None;
            };
            if !lists(i, task_id) {
                issues.push(Issue::new(
                    path,
                    format!(
                        "task '{name}' uses the output of '{task_id}' but does not list it in its dependencies"
                    ),
                ));
            }
            Some(up)
        };
        let s = match &site.kind {
            SiteKind::Template(s) => s.as_str(),
            SiteKind::Typed(v) => {
                let r = match template::typed_ref(v) {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        issues.push(Issue::new(path, e));
                        continue;
                    }
                    None => continue,
                };
                let Some(up) = upstream(&r.task_id, &mut issues) else {
                    continue;
                };
                if let Some(agent) = agents[up] {
                    let consumer = agents[i].and_then(|a| {
                        let prefix = format!("/tasks/{i}/input_data");
                        let rest = path.strip_prefix(&prefix)?;
                        Some((a, rest))
                    });
                    if let Err(e) = typed_ref_fits(&r, agent, consumer) {
                        issues.push(Issue::new(path, e));
                    }
                }
                continue;
            }
        };
        {
            let pieces = match template::parse(s, &is_task) {
                Ok(p) => p,
                Err(e) => {
                    issues.push(Issue::new(path, e));
                    continue;
                }
            };
            for piece in pieces {
                let Piece::Ref(r) = piece else { continue };
                let Some(up) = upstream(&r.task_id, &mut issues) else {
                    continue;
                };
                let upstream_agent = agents[up];
                if let (Some(agent), Some(field)) = (upstream_agent, r.fields.first())
                    && let Some(fields) = agents::output_fields(agent)
                    && !fields.contains(field)
                {
                    issues.push(Issue::new(
                        path,
                        format!(
                            "task '{}' ({agent} agent) has no output field '{field}'; its fields are: {}",
                            r.task_id,
                            fields.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    issues
}

/// What a typed reference yields, by the producing agent's output schema: `Err` when that
/// output cannot have the place named, `Ok(None)` when its type is not known.
pub fn typed_ref_types(
    r: &template::TypedRef,
    agent: &str,
) -> Result<Option<BTreeSet<&'static str>>, String> {
    let Some(schema) = agents::output_schema(agent) else {
        return Ok(None);
    };
    let whose = format!("the output of task '{}' ({agent} agent)", r.task_id);
    // Output types are open objects in their schemas; their fields are all there is.
    let tokens = r.tokens();
    if let (Some(first), Some(fields)) = (tokens.first(), agents::output_fields(agent))
        && !fields.contains(first)
    {
        return Err(format!(
            "{whose} has no field '{first}'; its fields are: {}",
            fields.join(", ")
        ));
    }
    let found = typing::walk(Shape::new(schema), &r.tokens()).map_err(|e| {
        let fields = agents::output_fields(agent).unwrap_or_default().join(", ");
        format!(
            "{whose} has nothing at '{}': {e} (its fields are: {fields})",
            r.pointer
        )
    })?;
    let Some(each) = r.each_tokens() else {
        return Ok(typing::types_at(&found));
    };
    if let Some(types) = typing::types_at(&found)
        && !types.contains("array")
    {
        return Err(format!(
            "\"$each\" needs an array, but '{}' of {whose} is of type {}",
            r.pointer,
            typing::describe(&types)
        ));
    }
    let mut item = r.tokens();
    item.push("0".into());
    item.extend(each);
    typing::walk(Shape::new(schema), &item).map_err(|e| {
        format!(
            "the elements of '{}' of {whose} have nothing at '{}': {e}",
            r.pointer,
            r.each.as_deref().unwrap_or("")
        )
    })?;
    Ok(Some(["array"].into()))
}

/// Why an input no longer fits its agent once its typed references were replaced by values:
/// the first reference whose value has a type the field does not take, as
/// `input_data<pointer>: ...`. `None` when no reference is to blame (or it cannot be told).
pub fn substituted_value_problem(
    agent: &str,
    original: &Value,
    substituted: &Value,
) -> Option<String> {
    let schema = crate::batch::schema::agent_input_schema(agent)?;
    let mut typed = Vec::new();
    template::visit_sites(original, &mut String::new(), &mut |p, site| {
        if let Site::Typed(v) = site
            && let Some(Ok(r)) = template::typed_ref(v)
        {
            typed.push((p.to_string(), r));
        }
    });
    typed.into_iter().find_map(|(p, r)| {
        let value = substituted.pointer(&p)?;
        let tokens = template::pointer_tokens(&p).ok()?;
        let start = Shape {
            root: batch_schema(),
            schema,
        };
        let typing::At::Known(shapes) = typing::walk(start, &tokens).ok()? else {
            return None;
        };
        let mut first = None;
        for s in shapes {
            match typing::value_mismatch(s, value) {
                None => return None,
                Some(m) => {
                    first.get_or_insert(m);
                }
            }
        }
        let (inner, why) = first?;
        Some(format!(
            "input_data{p}{inner}: the value from {} {why}",
            r.shown()
        ))
    })
}

/// Checks a typed reference against the producing agent's output schema and, where the
/// consuming agent's input schema says what its field takes (`consumer`: agent name and JSON
/// Pointer inside `input_data`), against that.
fn typed_ref_fits(
    r: &template::TypedRef,
    agent: &str,
    consumer: Option<(&str, &str)>,
) -> Result<(), String> {
    let Some(from) = typed_ref_types(r, agent)? else {
        return Ok(());
    };
    let Some((consumer, at)) = consumer else {
        return Ok(());
    };
    let Some(input_schema) = crate::batch::schema::agent_input_schema(consumer) else {
        return Ok(());
    };
    let tokens = template::pointer_tokens(at).unwrap_or_default();
    let start = Shape {
        root: batch_schema(),
        schema: input_schema,
    };
    let Ok(place) = typing::walk(start, &tokens) else {
        return Ok(());
    };
    match typing::types_at(&place) {
        Some(to) if !typing::may_fit(&from, &to) => {
            return Err(format!(
                "{} is of type {} in the output of task '{}' ({agent} agent), but this field takes {}",
                r.shown(),
                typing::describe(&from),
                r.task_id,
                typing::describe(&to)
            ));
        }
        Some(to) if to.contains("array") && from.contains("array") => {}
        _ => return Ok(()),
    }
    // A list into a list: its elements, one level down, where both sides say.
    let Some(output) = agents::output_schema(agent) else {
        return Ok(());
    };
    let mut item = r.tokens();
    item.push("0".into());
    if let Some(each) = r.each_tokens() {
        item.extend(each);
    }
    let mut place_item = tokens;
    place_item.push("0".into());
    let (Ok(from_item), Ok(to_item)) = (
        typing::walk(Shape::new(output), &item),
        typing::walk(start, &place_item),
    ) else {
        return Ok(());
    };
    match (typing::types_at(&from_item), typing::types_at(&to_item)) {
        (Some(from), Some(to)) if !typing::may_fit(&from, &to) => Err(format!(
            "the elements of {} are of type {} in the output of task '{}' ({agent} agent), but this field takes a list of {}",
            r.shown(),
            typing::describe(&from),
            r.task_id,
            typing::describe(&to)
        )),
        _ => Ok(()),
    }
}

/// Agent-specific checks that need the run's context (see [`agents::check_input`]).
/// Whether the agents' own checks (e.g. known MCP servers) pass on a batch the streaming path
/// accepted; if not, the full check runs and reports them with everything else.
fn typed_agent_issues_absent(tasks: &[crate::batch::Task], ctx: &ValidationContext) -> bool {
    tasks.iter().all(|task| {
        let agent = task.agent.name();
        !agents::has_input_checks(agent)
            || agents::check_input(agent, &task.agent.input_value(), ctx).is_empty()
    })
}

/// `config` against the caller's limits (the schema holds the fixed ranges).
fn config_issues(value: &Value, limits: &Limits) -> Vec<Issue> {
    let mut issues = Vec::new();
    if let Some(n) = value
        .pointer("/config/max_output_bytes")
        .and_then(Value::as_u64)
        && n > limits.max_output_bytes as u64
        // Past the schema's maximum, the schema says so.
        && n <= crate::batch::limits::MAX_OUTPUT_BYTES as u64
    {
        issues.push(Issue::new(
            "/config/max_output_bytes",
            format!(
                "{n} is more than the limit of {} bytes this runner allows",
                limits.max_output_bytes
            ),
        ));
    }
    issues
}

/// Why a `command` string can never reach the program, if it cannot: the operating system takes
/// arguments, variables and paths as C strings, which end at the first NUL.
fn nul(s: &str) -> Option<&'static str> {
    s.contains('\0').then_some(
        "contains a NUL character, which a program's arguments, environment and paths cannot hold",
    )
}

/// Problems of task `i`'s `command` input that pass the schema but can never be spawned: a NUL
/// in `argv`, `cwd` or `env`, and `env` names that are empty or hold `=` (`"A=B": "c"` would set
/// `A` to `B=c`).
fn spawn_issues(i: usize, input: &Value, issues: &mut Vec<Issue>) {
    let at = |rest: String| format!("/tasks/{i}/input_data/{rest}");
    if let Some(argv) = input.get("argv").and_then(Value::as_array) {
        for (j, arg) in argv.iter().enumerate() {
            if let Some(why) = arg.as_str().and_then(nul) {
                issues.push(Issue::new(at(format!("argv/{j}")), why));
            }
        }
    }
    if let Some(why) = input.get("cwd").and_then(Value::as_str).and_then(nul) {
        issues.push(Issue::new(at("cwd".into()), why));
    }
    if let Some(env) = input.get("env").and_then(Value::as_object) {
        for (name, v) in env {
            let path = at(format!("env/{}", pointer_token(name)));
            if let Some(why) = env_name_problem(name) {
                issues.push(Issue::new(
                    path.clone(),
                    format!("environment variable name {} {why}", quote(name)),
                ));
            }
            if let Some(why) = v.as_str().and_then(nul) {
                issues.push(Issue::new(path, why));
            }
        }
    }
}

/// What is wrong with an environment variable name, if anything.
pub(crate) fn env_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') {
        Some("contains '=', which would end the name there")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    }
}

/// Whether the `command` input can be spawned as far as its strings go (see [`spawn_issues`]).
pub(crate) fn spawnable(input: &crate::agents::CommandInput) -> bool {
    !input.argv.iter().any(|a| a.contains('\0'))
        && !input.cwd.as_ref().is_some_and(|c| c.contains('\0'))
        && input
            .env
            .iter()
            .all(|(k, v)| env_name_problem(k).is_none() && !v.contains('\0'))
}
