//! One pass of arbitrary bytes through everything that reads untrusted input: parsing, the
//! limits, schema validation, the graph checks, the scheduler over the plan, and `{{tasks...}}`
//! interpolation. The fuzz target (`fuzz/`) and the regression tests over its corpus
//! (`tests/fuzz_corpus.rs`) both call [`exercise`], so a crash the fuzzer found stays fixed
//! without the fuzzer installed.
//!
//! Besides "no panic", it asserts invariants an attacker-controlled batch must not break.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::batch::template::{self, Piece};
use crate::batch::{Limits, ValidationContext, validate_text_with, validate_value_with};
use crate::scheduler::Scheduler;

/// Runs `data` through every input path, as text and as the recipe for a batch (see
/// [`structured`]); panics if an invariant breaks.
pub fn exercise(data: &[u8]) {
    // Inputs starting with this byte also become one large dependency graph (see
    // [`large_graph`]), under the default limits.
    if let Some((&LARGE, rest)) = data.split_first() {
        check_text_with(&large_graph(rest), Limits::default());
    }
    check_text(&String::from_utf8_lossy(data));
    let text = structured(data).to_string();
    check_text(&text);
    // The same batch with `{{` written with an escape, which the text alone does not show.
    if text.contains("{{") {
        check_text(&text.replace("{{", "{\\u007b"));
    }
}

/// Builds a batch from bytes, so the fuzzer reaches valid batches, dependency graphs and
/// references far more often than with raw text: task ids from a small set made to collide with
/// reference syntax (`b.output`), dependencies (possibly unknown or cyclic), and strings pieced
/// together from reference fragments.
pub fn structured(data: &[u8]) -> Value {
    const IDS: &[&str] = &[
        "a", "b", "b.output", "a.output", "x.y", "t-1", "output", "c",
    ];
    const PIECES: &[&str] = &[
        "{{",
        "}}",
        "tasks.",
        "a",
        "b",
        "b.output",
        "a.output",
        ".output",
        ".stdout",
        ".exit_code",
        ".0",
        ".",
        " ",
        "x",
        "{{tasks.a.output.stdout}}",
        "{{ tasks.b.output.output.stderr }}",
        "{{.Name}}",
        "~/",
        "\u{0}",
        "é",
    ];
    /// Paths into [`special_files`]' workspace: a FIFO, a socket, a symlink to a device, a
    /// folder, a regular file, and ways around them.
    const PATHS: &[&str] = &[
        "fifo.py",
        "sock",
        "null.py",
        "dir",
        "ok.py",
        "./dir/../fifo.py",
        "missing.py",
        "../fifo.py",
        "/dev/zero",
        "dir/fifo.py",
    ];
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0) as usize;
    let n = next() % 9;
    let tasks: Vec<Value> = (0..n)
        .map(|_| {
            let id = IDS[next() % IDS.len()];
            let deps: Vec<&str> = (0..next() % 4).map(|_| IDS[next() % IDS.len()]).collect();
            let mut argv: Vec<String> = (0..1 + next() % 3)
                .map(|_| {
                    (0..next() % 6)
                        .map(|_| PIECES[next() % PIECES.len()])
                        .collect()
                })
                .collect();
            // A well-formed reference to one of its own dependencies, to reach substitution.
            if !deps.is_empty() && next() % 2 == 0 {
                const FIELDS: &[&str] = &["stdout", "exit_code", "truncated", "stderr.0", "nope"];
                let dep = deps[next() % deps.len()];
                let field = FIELDS[next() % FIELDS.len()];
                argv.push(format!("<{{{{tasks.{dep}.output.{field}}}}}>"));
            }
            let mut task = json!({"task_id": id, "agent": "command",
                                  "input_data": {"argv": argv}, "dependencies": deps});
            // Other agents and shapes where serde is laxer than the schema (a struct from an
            // array, an enum from a one-key object), to exercise the fast path's own checks.
            match next() % 24 {
                0 => task["input_data"]["stdin"] = json!(PIECES[next() % PIECES.len()]),
                1 => task["timeout_seconds"] = json!(next() as f64 / 10.0),
                2 => task["retries"] = json!(next()),
                3 => {
                    task["agent"] = json!("mcp");
                    let tool = PIECES[next() % PIECES.len()];
                    task["input_data"] = json!({"tool": tool, "arguments": {"a": argv}});
                }
                4 => {
                    task["agent"] = json!("coder");
                    let node_type = [json!("Effect"), json!({"Effect": null}), json!("nope")];
                    task["input_data"] = json!({"contract_description": PIECES[next() % PIECES.len()],
                        "node_type": node_type[next() % 3], "output_path": "o.py"});
                }
                5 => task["input_data"] = json!([argv]),
                6 => task["description"] = Value::Null,
                // File paths that reach the workspace's special files (see `special_files`).
                7 | 20 => {
                    task["agent"] = json!("debug");
                    let files: Vec<&str> =
                        (0..1 + next() % 3).map(|_| PATHS[next() % PATHS.len()]).collect();
                    task["input_data"] =
                        json!({"problem_description": "p", "affected_files": files});
                }
                8 | 21 => {
                    task["agent"] = json!("coder");
                    task["input_data"] = json!({"contract_description": "c", "node_type": "Compute",
                        "output_path": PATHS[next() % PATHS.len()],
                        "context_files": [PATHS[next() % PATHS.len()]]});
                }
                _ => {}
            }
            task
        })
        .collect();
    let config = match next() % 20 {
        0 => Value::Null,
        1 => json!([next()]),
        2 => json!({"circuit_breaker": [next()]}),
        3 => json!({"trace_dir": "", "retries": next()}),
        _ => json!({"max_workers": next()}),
    };
    json!({"tasks": tasks, "config": config})
}

/// The first byte that makes [`exercise`] also build a [`large_graph`].
pub const LARGE: u8 = 0xC7;

/// A batch of thousands of tasks in one long chain or cycle, listed last task first, with or
/// without unrelated problems: the shapes that once overflowed the stack of a recursive graph
/// walk. `data[0]` picks the shape, the next two bytes the size (2,000 to 67,535 tasks), the
/// rest where the problems go.
pub fn large_graph(data: &[u8]) -> String {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let shape = byte(0) % 7;
    let n = 2000 + (byte(1) << 8 | byte(2));
    let at = |i: usize| (byte(3 + i) * 7919) % n;
    let cyclic = matches!(shape, 0 | 3 | 5 | 6);
    let mut tasks = Vec::with_capacity(n);
    for i in (0..n).rev() {
        let dep = if i > 0 {
            format!(r#","dependencies":["t{}"]"#, i - 1)
        } else if cyclic {
            format!(r#","dependencies":["t{}"]"#, n - 1)
        } else {
            String::new()
        };
        tasks.push(format!(
            r#"{{"task_id":"t{i}","agent":"command","input_data":{{"argv":["true"]}}{dep}}}"#
        ));
    }
    match shape {
        // A valid chain plus a dependency on an unknown task.
        2 => tasks.push(r#"{"task_id":"x","agent":"command","input_data":{"argv":["true"]},"dependencies":["nope"]}"#.into()),
        // A cycle plus an unknown field.
        3 => tasks[at(0)] = tasks[at(0)].replacen('{', r#"{"extra":1,"#, 1),
        // A chain with a repeated key.
        4 => tasks[at(0)] = tasks[at(0)].replacen('{', r#"{"description":"a","description":"b","#, 1),
        // A cycle with an argument no program can take.
        5 => tasks[at(0)] = tasks[at(0)].replace(r#"["true"]"#, r#"["a\u0000b"]"#),
        // A cycle with a task that depends on itself and one a reference names without depending on it.
        6 => {
            let i = at(0);
            tasks[i] = format!(r#"{{"task_id":"self","agent":"command","input_data":{{"argv":["{{{{tasks.t{}.output.stdout}}}}"]}},"dependencies":["self"]}}"#, at(1));
        }
        _ => {}
    }
    format!(r#"{{"tasks":[{}]}}"#, tasks.join(","))
}

fn check_text(text: &str) {
    // Small limits, so the fuzzer also reaches the limit errors cheaply.
    check_text_with(
        text,
        Limits {
            max_input_bytes: 1 << 20,
            max_depth: 16,
            max_tasks: 500,
            max_string_bytes: 4096,
            ..Limits::default()
        },
    );
}

fn check_text_with(text: &str, limits: Limits) {
    let ctx = ValidationContext {
        limits,
        ..ValidationContext::default()
    };
    // Differential check: whatever the streaming path accepts, the full check accepts too, with
    // the same batch and plan; whatever it rejects for its graph, the full check rejects with the
    // same issues.
    match crate::batch::fast::check(text, &limits) {
        Some(Ok(fast)) => {
            let value = serde_json::from_str(text).expect("the streaming path accepted bad JSON");
            let full = validate_value_with(value, &ctx).unwrap_or_else(|issues| {
                panic!("the streaming path accepted a batch the full check rejects: {issues:?}")
            });
            assert_eq!(
                serde_json::to_value(&fast.batch).expect("serializes"),
                serde_json::to_value(&full.batch).expect("serializes"),
                "the two paths read the batch differently"
            );
            assert_eq!(
                serde_json::to_value(fast.plan.summary()).expect("serializes"),
                serde_json::to_value(full.plan.summary()).expect("serializes"),
            );
        }
        Some(Err(rejected)) => {
            let value = serde_json::from_str(text).expect("the streaming path read bad JSON");
            match validate_value_with(value, &ctx) {
                Ok(_) => panic!(
                    "the streaming path rejected a batch the full check accepts: {:?}",
                    rejected.issues
                ),
                Err(issues) => assert_eq!(
                    rejected.issues, issues,
                    "the two paths word the problems differently"
                ),
            }
        }
        None => {}
    }
    let by_text = validate_text_with(text, &ctx);
    // The text path, which types each task it can straight from its text, and the value path,
    // which checks every task as a `Value`, find the same problems wherever the text holds
    // nothing a `Value` loses (repeated keys) or the limits refuse.
    let plain = crate::batch::scan::scan(text, &limits)
        .is_ok_and(|f| f.over_limits.is_empty() && f.duplicates.is_empty());
    if plain
        && limits.check_text(text).is_ok()
        && let Ok(value) = serde_json::from_str::<Value>(text)
    {
        match (&by_text, validate_value_with(value, &ctx)) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => assert_eq!(a, &b, "the text and value paths disagree"),
            (a, b) => panic!("the text and value paths disagree: {a:?} / {b:?}"),
        }
    }
    match by_text {
        Ok(validated) => check_valid(&validated),
        Err(issues) => {
            assert!(!issues.is_empty(), "rejected without a reason");
            for issue in &issues {
                assert!(
                    issue.path.is_empty() || issue.path.starts_with('/'),
                    "not a JSON Pointer: {issue:?}"
                );
                assert!(!issue.message.is_empty(), "empty message at {}", issue.path);
            }
        }
    }
    // The raw text as a template, with every word-like id known and with none.
    let parse_all = |s: &str| {
        let _ = template::parse(s, &|_| true);
        let _ = template::parse(s, &|_| false);
        let _ = template::parse(s, &|id| id.len() % 2 == 0);
    };
    parse_all(text);
    let mut v = Value::String(text.to_string());
    let _ = template::substitute(&mut v, &|_| true, &|r| Ok(r.fields.join(".")));
    // The bounded expansion never builds more than its limit, and leaves reference-free text.
    let big = json!({"stdout": "x".repeat(300), "list": [1, 2, 3]});
    let mut v = Value::String(text.to_string());
    if template::substitute_bounded(&mut v, 1000, &|_| true, &|r| {
        template::lookup(&big, &r.fields).ok_or_else(|| "missing".to_string())
    })
    .is_ok()
    {
        let has_refs = template::parse(text, &|_| true)
            .is_ok_and(|p| p.iter().any(|p| matches!(p, Piece::Ref(_))));
        let out = v.as_str().unwrap_or_default();
        assert!(
            if has_refs {
                out.len() <= 1000
            } else {
                out == text
            },
            "bounded expansion passed its bound or changed plain text"
        );
    }
}

/// A workspace holding what an agent must never open: a FIFO (reading one blocks until a
/// writer comes), a socket, a symlink to a device, a folder, next to one regular file. Made
/// once per process; `None` where it cannot be made.
fn special_files() -> Option<&'static crate::workspace::Workspace> {
    use std::sync::OnceLock;
    static WS: OnceLock<Option<(tempfile::TempDir, crate::workspace::Workspace)>> = OnceLock::new();
    WS.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let root = dir.path();
        std::fs::create_dir(root.join("dir")).ok()?;
        std::fs::write(root.join("ok.py"), "x = 1\n").ok()?;
        for fifo in ["fifo.py", "dir/fifo.py"] {
            let c = std::ffi::CString::new(root.join(fifo).into_os_string().into_encoded_bytes())
                .ok()?;
            // SAFETY: a valid NUL-terminated path.
            (unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0).then_some(())?;
        }
        drop(std::os::unix::net::UnixListener::bind(root.join("sock")).ok()?);
        std::os::unix::fs::symlink("/dev/null", root.join("null.py")).ok()?;
        let ws = crate::workspace::Workspace::new(root).ok()?;
        Some((dir, ws))
    })
    .as_ref()
    .map(|(_, ws)| ws)
}

/// Reads and write checks of a task's file paths against [`special_files`]: each returns at
/// once (a hang here is the bug), and nothing but a regular file is ever read.
fn check_paths(input: &Value) {
    use crate::task_error::ErrorKind;
    let Some(ws) = special_files() else { return };
    let mut paths: Vec<&str> = Vec::new();
    for key in ["affected_files", "context_files"] {
        if let Some(a) = input.get(key).and_then(Value::as_array) {
            paths.extend(a.iter().filter_map(Value::as_str));
        }
    }
    let output = input.get("output_path").and_then(Value::as_str);
    for given in paths.iter().copied().chain(output) {
        let Ok(p) = ws.resolve(given) else { continue };
        let regular = std::fs::symlink_metadata(&p.real).is_ok_and(|m| m.is_file());
        match ws.read_text(&p, 64) {
            Ok(_) => assert!(regular, "read something not a regular file: {given}"),
            Err(e) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::NotARegularFile | ErrorKind::InvalidInput | ErrorKind::Io
                ),
                "{given}: {e}"
            ),
        }
        if let Err(e) = ws.check_writable(&p, true) {
            assert!(!regular, "{given}: {e}");
        }
    }
}

/// A valid batch: its plan runs to completion in dependency order, and every reference
/// substitutes against plausible outputs.
fn check_valid(validated: &crate::batch::ValidatedBatch) {
    let tasks = &validated.batch.tasks;
    let plan = &validated.plan;
    assert_eq!(plan.len(), tasks.len());
    let summary = plan.summary();
    assert_eq!(summary.task_count, tasks.len());
    assert_eq!(
        summary.levels.iter().map(Vec::len).sum::<usize>(),
        tasks.len()
    );

    let mut scheduler = Scheduler::new(plan.clone());
    let mut done = vec![false; tasks.len()];
    let mut order = 0;
    while let Some(i) = scheduler.pop_ready() {
        for &d in plan.deps(i) {
            assert!(done[d], "task {i} started before its dependency {d}");
        }
        done[i] = true;
        order += 1;
        scheduler.succeeded(i);
    }
    assert_eq!(order, tasks.len(), "a valid plan left tasks unstarted");

    let ids: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), i))
        .collect();
    for task in tasks {
        let mut input = task.agent.input_value();
        let deps: Vec<&str> = task.dependencies.iter().map(String::as_str).collect();
        let is_dep = |id: &str| deps.contains(&id);
        let result = template::substitute(&mut input, &is_dep, &|r| {
            assert!(ids.contains_key(r.task_id.as_str()), "unknown task passed");
            // An output that itself looks like a reference must be inserted as text only.
            let output = json!({"exit_code": 0, "stdout": "{{tasks.x.output.stdout}}",
                                "stderr": "", "truncated": false});
            Ok(template::lookup(&output, &r.fields)
                .map(template::render)
                .unwrap_or_default())
        });
        assert!(
            result.is_ok(),
            "validated references failed to parse: {result:?}"
        );
        check_paths(&input);
        let _ = task.agent.with_input(input);
    }

    for task in tasks {
        let mut p = String::new();
        template::visit_strings(&task.agent.input_value(), &mut p, &mut |_, s| {
            if let Ok(pieces) = template::parse(s, &|id| ids.contains_key(id)) {
                for piece in pieces {
                    if let Piece::Ref(r) = piece {
                        assert!(!r.task_id.is_empty());
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_graph_recipes_reach_each_shape() {
        let messages = |shape: u8| -> Vec<String> {
            match crate::batch::validate_text(&large_graph(&[shape, 0, 10, 3, 4])) {
                Ok(v) => {
                    assert_eq!(v.plan.len(), 2010);
                    Vec::new()
                }
                Err(issues) => issues.into_iter().map(|i| i.message).collect(),
            }
        };
        let has = |m: &[String], what: &str| m.iter().any(|s| s.contains(what));
        assert!(has(&messages(0), "(1991 more)"));
        assert!(messages(1).is_empty());
        assert!(has(&messages(2), "unknown task 'nope'"));
        let m = messages(3);
        assert!(
            has(&m, "dependency cycle") && has(&m, "unknown field 'extra'"),
            "{m:?}"
        );
        assert!(has(&messages(4), "duplicate key 'description'"));
        assert!(has(&messages(5), "NUL"));
        let m = messages(6);
        assert!(
            has(&m, "depends on itself") && has(&m, "does not list it"),
            "{m:?}"
        );
        exercise(&[LARGE, 6, 0, 10, 3, 4]);
    }

    #[test]
    fn recipes_reach_valid_batches_with_references_and_invalid_ones() {
        let mut rng = fastrand::Rng::with_seed(5);
        let (mut valid, mut with_refs, mut invalid) = (0, 0, 0);
        let mut special_paths = 0;
        for _ in 0..2000 {
            let data: Vec<u8> = (0..64).map(|_| rng.u8(..)).collect();
            let text = structured(&data).to_string();
            let ok = crate::batch::validate_text(&text).is_ok();
            if ok
                && ["fifo.py", "sock", "null.py"]
                    .iter()
                    .any(|p| text.contains(p))
            {
                special_paths += 1;
            }
            match crate::batch::validate_text(&text) {
                Ok(_) if text.contains("{{tasks.") => with_refs += 1,
                Ok(_) => valid += 1,
                Err(_) => invalid += 1,
            }
            exercise(&data);
        }
        assert!(valid > 100, "{valid} valid");
        assert!(
            with_refs > 0,
            "no valid batch used a reference ({valid} valid, {invalid} invalid)"
        );
        assert!(invalid > 100, "{invalid} invalid");
        assert!(
            special_paths > 5,
            "{special_paths} valid batches name special files"
        );
    }
}
