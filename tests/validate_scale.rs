//! Checking a batch of a million tasks through the built binary: `validate` accepts it (and
//! rejects a bad one with every problem in the JSON document) within a bounded peak memory, and
//! the human listing on stderr stays short however many problems there are. Speed is measured
//! by the benchmarks, not asserted here (debug builds are several times slower).

mod common;

use std::fs::File;
use std::process::Stdio;

use common::{Sandbox, wait_with_rusage};
use serde_json::Value;

/// Tasks in the big batches: a million in release builds; debug builds, several times slower,
/// check a fifth of it.
const N: usize = if cfg!(debug_assertions) {
    200_000
} else {
    1_000_000
};

/// Peak resident memory allowed for checking [`N`] tasks (the batch text is up to 130 MB; a
/// release build peaks at about 1 GB for a million tasks passing outputs, far less in a debug
/// build's fifth). Building the batch as one JSON tree would take several times this.
const MAX_RSS_BYTES: u64 = 3 << 29;

/// A batch of `n` command tasks written as `task(i)` makes each.
fn batch(n: usize, task: impl Fn(usize) -> String) -> String {
    let mut text = String::with_capacity(n * 140);
    text.push_str("{\"tasks\": [\n");
    for i in 0..n {
        if i > 0 {
            text.push_str(",\n");
        }
        text.push_str(&task(i));
    }
    text.push_str("\n]}\n");
    text
}

/// What one `validate` run left: exit code, the JSON document, stderr, and the peak resident
/// memory of that process alone (from `wait4`, not of other tests' children).
struct Checked {
    code: i32,
    json: Value,
    stderr: String,
    max_rss_bytes: u64,
}

fn validate(sb: &Sandbox, name: &str, text: &str) -> Checked {
    let file = sb.write(name, text);
    let out_path = sb.path().join(format!("{name}.out"));
    let err_path = sb.path().join(format!("{name}.err"));
    let child = sb
        .cmd(&[
            "validate",
            "--max-input-bytes",
            "400000000",
            "-f",
            file.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let (code, max_rss_bytes) = wait_with_rusage(child.id());
    // The child is reaped by `wait4`; `Child` is only dropped (it never waits on its own).
    drop(child);
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\n{stderr}",
            &stdout[..stdout.len().min(500)]
        )
    });
    std::fs::remove_file(file).unwrap();
    Checked {
        code,
        json,
        stderr,
        max_rss_bytes,
    }
}

fn assert_small(what: &str, c: &Checked) {
    assert!(
        c.max_rss_bytes < MAX_RSS_BYTES,
        "{what}: checking {N} tasks took {} MB at peak",
        c.max_rss_bytes >> 20
    );
}

/// Command task `t{i}` running `argv` (JSON text), depending on `deps` (none: no field).
fn command(i: usize, deps: &[usize], argv: &str) -> String {
    let mut task =
        format!(r#"{{"task_id":"t{i}","agent":"command","input_data":{{"argv":{argv}}}"#);
    if !deps.is_empty() {
        let deps: Vec<String> = deps.iter().map(|d| format!("\"t{d}\"")).collect();
        task.push_str(&format!(r#","dependencies":[{}]"#, deps.join(",")));
    }
    task.push('}');
    task
}

#[test]
fn a_million_independent_tasks_are_valid_within_the_memory_bound() {
    let sb = Sandbox::new();
    let c = validate(
        &sb,
        "flat.json",
        &batch(N, |i| command(i, &[], r#"["true"]"#)),
    );
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(c.json["status"], "valid");
    assert_eq!(c.json["task_count"], N);
    assert_eq!(c.json["dependency_count"], 0);
    assert_eq!(c.json["levels"][0].as_array().unwrap().len(), N);
    assert_eq!(c.json["levels"][0][N - 1], format!("t{}", N - 1));
    assert_small("independent", &c);
}

#[test]
fn a_million_chained_tasks_passing_outputs_are_valid_within_the_memory_bound() {
    // Each task depends on the one before and uses its output; every third also on two more.
    let task = |i: usize| {
        let mut deps = Vec::new();
        if i > 0 {
            deps.push(i - 1);
        }
        if i >= 10 && i.is_multiple_of(3) {
            deps.extend([i - 5, i - 10]);
        }
        let argv = match i {
            0 => r#"["echo"]"#.to_string(),
            _ => format!(r#"["echo","{{{{tasks.t{}.output.stdout}}}}"]"#, i - 1),
        };
        command(i, &deps, &argv)
    };
    let sb = Sandbox::new();
    let c = validate(&sb, "chain.json", &batch(N, task));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(c.json["task_count"], N);
    let extra = (10..N).filter(|i| i.is_multiple_of(3)).count();
    assert_eq!(c.json["dependency_count"], N - 1 + 2 * extra);
    assert_eq!(c.json["levels"].as_array().unwrap().len(), N);
    let path = c.json["critical_path"].as_array().unwrap();
    assert_eq!(
        (path.len(), &path[0], &path[N - 1]),
        (N, &"t0".into(), &format!("t{}", N - 1).into())
    );
    assert_small("chain with references", &c);
}

#[test]
fn a_million_task_cycle_through_references_is_one_error_within_the_memory_bound() {
    let task = |i: usize| match i {
        0 => command(0, &[N - 1], r#"["echo"]"#),
        _ => command(
            i,
            &[i - 1],
            &format!(r#"["echo","{{{{tasks.t{}.output.stdout}}}}"]"#, i - 1),
        ),
    };
    let sb = Sandbox::new();
    let c = validate(&sb, "cycle.json", &batch(N, task));
    assert_eq!(c.code, 2, "{}", c.stderr);
    let errors = c.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["path"], "/tasks/0/dependencies/0");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("dependency cycle: t0 -> t{} -> ", N - 1)),
        "{message}"
    );
    assert_small("cycle", &c);
}

#[test]
fn many_bad_tasks_are_all_in_the_document_and_a_few_on_stderr() {
    // Every 50th task has an unknown field and an empty argv: two errors each.
    let task = |i: usize| match i % 50 {
        0 => format!(
            r#"{{"task_id":"t{i}","agent":"command","input_data":{{"argv":[]}},"bogus":1}}"#
        ),
        _ => command(i, &[], r#"["true"]"#),
    };
    let sb = Sandbox::new();
    let c = validate(&sb, "bad.json", &batch(N, task));
    assert_eq!(c.code, 2, "{}", &c.stderr[..c.stderr.len().min(2000)]);
    let bad = N / 50;
    let errors = c.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2 * bad);
    assert_eq!(errors[0]["path"], "/tasks/0/bogus");
    assert_eq!(errors[1]["path"], "/tasks/0/input_data/argv");
    assert_eq!(
        errors[2 * bad - 1]["path"],
        format!("/tasks/{}/input_data/argv", N - 50)
    );
    // The person reading stderr gets the first problems and a count of the rest.
    let lines: Vec<&str> = c.stderr.lines().collect();
    assert!(lines.len() < 60, "{} lines on stderr", lines.len());
    assert_eq!(
        lines[0],
        "dispatch_runner: the batch is invalid; nothing ran:"
    );
    assert!(
        lines[1].starts_with("  /tasks/0/bogus: unknown field 'bogus'"),
        "{}",
        lines[1]
    );
    let shown = lines.iter().filter(|l| l.starts_with("  /tasks/")).count();
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "  ... and {} more (all {} are in the JSON document on stdout)",
            2 * bad - shown,
            2 * bad
        )
    );
    assert_small("many bad tasks", &c);
}

#[test]
fn a_few_problems_are_all_listed_on_stderr() {
    let sb = Sandbox::new();
    let c = validate(
        &sb,
        "few.json",
        &batch(3, |i| {
            format!(r#"{{"task_id":"t{i}","agent":"command","input_data":{{"argv":[]}}}}"#)
        }),
    );
    assert_eq!(c.code, 2);
    let listed: Vec<&str> = c.stderr.lines().skip(1).collect();
    assert_eq!(
        listed,
        (0..3)
            .map(|i| format!("  /tasks/{i}/input_data/argv: [] has less than 1 item"))
            .collect::<Vec<_>>()
    );
}
