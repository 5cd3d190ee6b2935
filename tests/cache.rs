//! The result cache through the built binary: a task with a `cache` object runs once and is then
//! answered from `<trace_dir>/cache` until something it declared changes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Sandbox, events, read_json};
use serde_json::{Value, json};

/// A task that counts its runs in `counter` (one line per run) and prints `src.txt`.
fn counting_task(id: &str, cache: Value) -> Value {
    json!({
        "task_id": id,
        "agent": "command",
        "input_data": {"argv": ["sh", "-c", format!("echo {id} >> counter; cat src.txt")]},
        "cache": cache,
    })
}

fn runs(sb: &Sandbox) -> usize {
    std::fs::read_to_string(sb.path().join("counter"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn run_with_env(sb: &Sandbox, batch: &Value, env: &[(&str, &str)]) -> common::Run {
    let mut cmd = sb.cmd(&["run", "-q"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    sb.run_cmd(cmd, &batch.to_string())
}

#[test]
fn a_hit_does_not_run_the_task_and_changed_inputs_or_env_do() {
    let sb = Sandbox::new();
    sb.write("src.txt", "one\n");
    let batch = json!({"tasks": [counting_task("t", json!({"inputs": ["src.txt"], "env": ["CACHE_TEST_MODE"]}))]});

    let first = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(runs(&sb), 1);
    assert!(first.result("t").get("cached").is_none());
    let miss = events(&first.trace(), "cache_checked")[0].clone();
    assert_eq!(miss["hit"], false);
    assert_eq!(miss["key"].as_str().unwrap().len(), 64);

    let second = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(runs(&sb), 1, "a hit must not run the command");
    let r = second.result("t");
    assert_eq!(r["cached"], true);
    assert_eq!(r["status"], "success");
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["output"]["stdout"], "one\n");
    assert_eq!(second.json["summary"]["cached"], 1);
    assert_eq!(second.json["summary"]["successful"], 1);
    let trace = second.trace();
    let hit = events(&trace, "cache_checked")[0].clone();
    assert_eq!(hit["hit"], true);
    assert_eq!(hit["key"], miss["key"]);
    assert!(events(&trace, "attempt_started").is_empty());

    // The content of a declared input file is part of the key.
    sb.write("src.txt", "two\n");
    let third = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), 2);
    assert!(third.result("t").get("cached").is_none());
    assert_eq!(third.result("t")["output"]["stdout"], "two\n");
    assert_eq!(
        sb.run_json(&["run", "-q"], &batch).result("t")["cached"],
        true
    );
    assert_eq!(runs(&sb), 2);

    // So is the value of a declared environment variable.
    let a = run_with_env(&sb, &batch, &[("CACHE_TEST_MODE", "a")]);
    assert!(a.result("t").get("cached").is_none());
    assert_eq!(runs(&sb), 3);
    let again = run_with_env(&sb, &batch, &[("CACHE_TEST_MODE", "a")]);
    assert_eq!(again.result("t")["cached"], true);
    assert_eq!(runs(&sb), 3);
    let b = run_with_env(&sb, &batch, &[("CACHE_TEST_MODE", "b")]);
    assert!(b.result("t").get("cached").is_none());
    assert_eq!(runs(&sb), 4);
    // An undeclared variable is not.
    let other = run_with_env(
        &sb,
        &batch,
        &[("CACHE_TEST_MODE", "b"), ("CACHE_OTHER", "x")],
    );
    assert_eq!(other.result("t")["cached"], true);
    assert_eq!(runs(&sb), 4);
}

#[test]
fn a_changed_upstream_output_changes_the_key_of_a_dependent() {
    let sb = Sandbox::new();
    sb.write("src.txt", "one\n");
    let batch = json!({"tasks": [
        counting_task("up", json!({"inputs": ["src.txt"]})),
        {"task_id": "down", "agent": "command", "dependencies": ["up"], "cache": {},
         "input_data": {"argv": ["sh", "-c", "echo down >> counter; echo got {{tasks.up.output.stdout}}"]}}
    ]});
    sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), 2);
    let warm = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), 2);
    assert_eq!(warm.result("down")["output"]["stdout"], "got one\n");
    sb.write("src.txt", "two\n");
    let changed = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), 4, "both run: down's input holds up's new output");
    assert_eq!(changed.result("down")["output"]["stdout"], "got two\n");
}

#[test]
fn declared_output_files_are_restored_after_deletion() {
    let sb = Sandbox::new();
    sb.write("src.txt", "payload\n");
    let batch = json!({"tasks": [{
        "task_id": "gen", "agent": "command",
        "input_data": {"argv": ["sh", "-c",
            "echo gen >> counter; mkdir -p out/sub; cp src.txt out/sub/a.txt; printf '#!/bin/sh\\necho hi\\n' > out/tool; chmod 755 out/tool"]},
        "cache": {"inputs": ["src.txt"], "outputs": ["out/**/*.txt", "out/tool"]}
    }]});
    assert_eq!(sb.run_json(&["run", "-q"], &batch).code, 0);
    std::fs::remove_dir_all(sb.path().join("out")).unwrap();
    let warm = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(warm.code, 0, "{}", warm.stderr);
    assert_eq!(runs(&sb), 1);
    assert_eq!(warm.result("gen")["cached"], true);
    assert_eq!(
        std::fs::read_to_string(sb.path().join("out/sub/a.txt")).unwrap(),
        "payload\n"
    );
    let tool = Command::new(sb.path().join("out/tool")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&tool.stdout), "hi\n", "mode kept");
    assert_eq!(
        events(&warm.trace(), "cache_checked")[0]["files_restored"],
        2
    );
}

#[test]
fn failed_runs_are_not_stored() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [{
        "task_id": "bad", "agent": "command",
        "input_data": {"argv": ["sh", "-c", "echo bad >> counter; exit 3"]},
        "cache": {}
    }]});
    for n in 1..=2 {
        let run = sb.run_json(&["run", "-q"], &batch);
        assert_eq!(run.code, 1);
        assert_eq!(run.status("bad"), "error");
        assert!(run.result("bad").get("cached").is_none());
        assert_eq!(runs(&sb), n);
    }
    let stats = sb.run(&["cache", "stats"], "");
    assert_eq!(stats.json["entries"], 0);
}

#[test]
fn a_corrupt_index_or_a_missing_blob_is_a_miss_and_the_cache_recovers() {
    let sb = Sandbox::new();
    sb.write("src.txt", "x\n");
    let batch = json!({"tasks": [{
        "task_id": "t", "agent": "command",
        "input_data": {"argv": ["sh", "-c", "echo t >> counter; cp src.txt out.txt"]},
        "cache": {"inputs": ["src.txt"], "outputs": ["out.txt"]}
    }]});
    assert_eq!(sb.run_json(&["run", "-q"], &batch).code, 0);
    let cache = sb.path().join("traces/cache");
    for f in ["index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(cache.join(f));
    }
    std::fs::write(cache.join("index.sqlite"), vec![0x5au8; 8192]).unwrap();
    let after_damage = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(after_damage.code, 0, "{}", after_damage.stderr);
    assert_eq!(after_damage.status("t"), "success");
    assert_eq!(runs(&sb), 2, "a damaged index is a miss");
    // The run stored into a new index: the next one hits.
    let recovered = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(recovered.result("t")["cached"], true);
    assert_eq!(runs(&sb), 2);

    // A blob gone: a miss, the task runs, and its file is stored again.
    std::fs::remove_dir_all(cache.join("blobs")).unwrap();
    std::fs::remove_file(sb.path().join("out.txt")).unwrap();
    let no_blob = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(no_blob.code, 0, "{}", no_blob.stderr);
    assert!(no_blob.result("t").get("cached").is_none());
    assert_eq!(runs(&sb), 3);
    let miss = events(&no_blob.trace(), "cache_checked")[0].clone();
    assert_eq!(miss["hit"], false);
    assert!(
        miss["reason"].as_str().unwrap().contains("out.txt"),
        "{miss}"
    );
    assert!(sb.path().join("out.txt").is_file());
    // A blob whose content is not its name is no better than a missing one.
    let blob = walk(&cache.join("blobs"))[0].clone();
    std::fs::write(&blob, "tampered").unwrap();
    std::fs::remove_file(sb.path().join("out.txt")).unwrap();
    let tampered = sb.run_json(&["run", "-q"], &batch);
    assert!(tampered.result("t").get("cached").is_none());
    assert_eq!(runs(&sb), 4);
    assert_eq!(
        std::fs::read_to_string(sb.path().join("out.txt")).unwrap(),
        "x\n"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn two_runs_at_once_share_the_cache() {
    let sb = Sandbox::new();
    sb.write("src.txt", "shared\n");
    let tasks: Vec<Value> = (0..12)
        .map(|i| {
            json!({"task_id": format!("t{i}"), "agent": "command",
                   "input_data": {"argv": ["sh", "-c", format!("echo {i} >> counter; mkdir -p out; echo {i} > out/{i}.txt; cat src.txt")]},
                   "cache": {"inputs": ["src.txt"], "outputs": [format!("out/{i}.txt")]}})
        })
        .collect();
    let batch = json!({"tasks": tasks, "config": {"max_workers": 4}});
    let children: Vec<_> = (0..2)
        .map(|_| common::spawn_with_input(sb.cmd(&["run", "-q"]), &batch.to_string()))
        .collect();
    for child in children {
        let run = sb.to_run(common::wait_with_deadline(
            child,
            std::time::Duration::from_secs(120),
        ));
        assert_eq!(run.code, 0, "{}", run.stderr);
        for i in 0..12 {
            assert_eq!(run.status(&format!("t{i}")), "success");
        }
    }
    let ran = runs(&sb);
    assert!((12..=24).contains(&ran), "{ran}");
    let third = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), ran, "everything is stored once both are done");
    for i in 0..12 {
        assert_eq!(third.result(&format!("t{i}"))["cached"], true);
    }
    let stats = sb.run(&["cache", "stats"], "");
    assert_eq!(stats.json["entries"], 12);
    // Both runs write the same output files at once: a run may store a file while the other's
    // `echo` has just truncated it, leaving an extra blob that no entry names (pruned later).
    let blobs = stats.json["blobs"].as_u64().unwrap();
    assert!((12..=24).contains(&blobs), "{}", stats.json);
}

#[test]
fn rerun_failed_runs_again_a_kept_task_whose_inputs_changed() {
    let sb = Sandbox::new();
    sb.write("src.txt", "v1\n");
    let batch = json!({"tasks": [
        counting_task("build", json!({"inputs": ["src.txt"]})),
        {"task_id": "check", "agent": "command", "dependencies": ["build"],
         "input_data": {"argv": ["sh", "-c", "test -f fixed && echo {{tasks.build.output.stdout}}"]}}
    ]});
    let first = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(first.code, 1);
    assert_eq!(runs(&sb), 1);
    let trace1 = first.json["trace_file"].as_str().unwrap().to_string();

    // Nothing declared changed: `build` is reused, its key checked and recorded again.
    let second = sb.run(&["run", "-q", "--rerun-failed", &trace1], "");
    assert_eq!(second.code, 1);
    assert_eq!(runs(&sb), 1);
    assert_eq!(second.result("build")["reused"], true);
    let checked = events(&second.trace(), "cache_checked")[0].clone();
    assert_eq!(checked["hit"], true, "{checked}");
    let trace2 = second.json["trace_file"].as_str().unwrap().to_string();

    // The source was fixed: `build` runs again instead of being reused.
    sb.write("src.txt", "v2\n");
    sb.write("fixed", "");
    let third = sb.run(&["run", "-q", "--rerun-failed", &trace2], "");
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(runs(&sb), 2);
    assert!(third.result("build").get("reused").is_none());
    assert_eq!(third.result("check")["output"]["stdout"], "v2\n");
    let trace = third.trace();
    let changed = events(&trace, "cache_checked")[0].clone();
    assert_eq!(changed["hit"], false);
    assert!(
        changed["reason"].as_str().unwrap().contains("changed"),
        "{changed}"
    );
}

#[test]
fn cache_stats_and_prune() {
    let sb = Sandbox::new();
    let empty = sb.run(&["cache", "stats"], "");
    assert_eq!(empty.code, 0);
    assert_eq!(empty.json["exists"], false);
    assert!(
        !sb.path().join("traces/cache").exists(),
        "stats creates nothing"
    );

    sb.write("src.txt", "s\n");
    let batch = json!({"tasks": [
        {"task_id": "a", "agent": "command", "cache": {"outputs": ["a.out"]},
         "input_data": {"argv": ["sh", "-c", "echo a > a.out"]}},
        {"task_id": "b", "agent": "command", "cache": {"outputs": ["b.out"]},
         "input_data": {"argv": ["sh", "-c", "echo b > b.out"]}}
    ]});
    assert_eq!(sb.run_json(&["run", "-q"], &batch).code, 0);
    assert_eq!(
        sb.run_json(&["run", "-q"], &batch).result("a")["cached"],
        true
    );
    let stats = sb.run(&["cache", "stats"], "");
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert_eq!(stats.json["entries"], 2);
    assert_eq!(stats.json["hits"], 2);
    assert_eq!(stats.json["blobs"], 2);
    assert!(stats.json["bytes"].as_u64().unwrap() > 4);

    // Under the caps nothing goes.
    let kept = sb.run(&["cache", "prune"], "");
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    assert_eq!(kept.json["removed_entries"], 0);
    assert_eq!(kept.json["entries"], 2);
    // A size cap of one entry's worth keeps one.
    let one = stats.json["bytes"].as_u64().unwrap() / 2;
    let capped = sb.run(&["cache", "prune", "--max-bytes", &one.to_string()], "");
    assert_eq!(capped.json["removed_entries"], 1, "{}", capped.stdout);
    assert_eq!(capped.json["entries"], 1);
    assert_eq!(capped.json["removed_blobs"], 1);
    let all = sb.run(&["cache", "prune", "--all"], "");
    assert_eq!(all.code, 0);
    assert_eq!(all.json["entries"], 0);
    let stats = sb.run(&["cache", "stats"], "");
    assert_eq!(stats.json["entries"], 0);
    assert_eq!(stats.json["blobs"], 0);
    // Everything runs again.
    let cold = sb.run_json(&["run", "-q"], &batch);
    assert!(cold.result("a").get("cached").is_none());

    for args in [
        &["cache", "--help"][..],
        &["cache", "stats", "--help"],
        &["cache", "prune", "--help"],
    ] {
        let out = sb.cmd(args).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn an_age_cap_in_the_configuration_is_applied_when_a_run_stores() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [{"task_id": "a", "agent": "command", "cache": {},
        "input_data": {"argv": ["sh", "-c", "echo a >> counter"]}}]});
    sb.run_json(&["run", "-q"], &batch);
    assert_eq!(sb.run(&["cache", "stats"], "").json["entries"], 1);
    // An entry older than max_age is not used and is removed.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    sb.write("dispatch.yaml", "cache:\n  max_age_seconds: 1\n");
    let run = sb.run_json(&["run", "-q"], &batch);
    assert!(run.result("a").get("cached").is_none());
    assert_eq!(runs(&sb), 2);
    let reason = events(&run.trace(), "cache_checked")[0]["reason"].clone();
    assert!(reason.as_str().unwrap().contains("older"), "{reason}");
    sb.write("dispatch.yaml", "cache:\n  max_age_seconds: -1\n");
    let bad = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(bad.code, 3, "{}", bad.stdout);
    assert!(
        bad.stdout.contains("cache.max_age_seconds"),
        "{}",
        bad.stdout
    );
    sb.write("dispatch.yaml", "cache:\n  enabled: false\n");
    sb.run_json(&["run", "-q"], &batch);
    assert_eq!(runs(&sb), 3, "a disabled cache answers nothing");
}

#[test]
fn a_secret_in_a_declared_variable_never_reaches_the_cache_files() {
    let sb = Sandbox::new();
    let secret = "s3cr3t-cache-value-6061";
    let batch = json!({"tasks": [{
        "task_id": "t", "agent": "command",
        "input_data": {"argv": ["sh", "-c", "echo token=$CACHE_API_TOKEN; echo t >> counter"]},
        "cache": {"env": ["CACHE_API_TOKEN"]}
    }]});
    let first = run_with_env(&sb, &batch, &[("CACHE_API_TOKEN", secret)]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let warm = run_with_env(&sb, &batch, &[("CACHE_API_TOKEN", secret)]);
    assert_eq!(warm.result("t")["cached"], true);
    assert_eq!(warm.result("t")["output"]["stdout"], "token=[REDACTED]\n");
    let files = walk(&sb.path().join("traces/cache"));
    assert!(files.iter().any(|f| f.ends_with("index.sqlite")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
    // Another value of it is another key.
    let other = run_with_env(&sb, &batch, &[("CACHE_API_TOKEN", "another-secret-7070")]);
    assert!(other.result("t").get("cached").is_none());
}

#[test]
fn cache_objects_are_validated_with_pointers() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        {"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]},
         "cache": {"inputs": ["../outside", "ok/*.rs", "/etc/passwd"], "outputs": ["a/[b"], "env": ["A=B"]}},
        {"task_id": "b", "agent": "command", "input_data": {"argv": ["true"]},
         "cache": {"inputz": []}}
    ]});
    let run = sb.run_json(&["validate"], &batch);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let errors = run.error_messages();
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/tasks/0/cache/env/0",
            "/tasks/0/cache/inputs/0",
            "/tasks/0/cache/inputs/2",
            "/tasks/0/cache/outputs/0",
            "/tasks/1/cache/inputz"
        ],
        "{errors:?}"
    );
    assert!(errors[1].1.contains(".."), "{errors:?}");
    assert!(errors[2].1.contains("absolute"), "{errors:?}");
    assert!(errors[3].1.contains("not a valid glob"), "{errors:?}");
    // Nothing ran.
    assert!(!sb.path().join("traces").exists());
    let _ = read_json;
}

#[cfg(unix)]
#[test]
fn files_are_never_restored_through_a_link_out_of_the_workspace() {
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    let batch = json!({"tasks": [{
        "task_id": "t", "agent": "command",
        "input_data": {"argv": ["sh", "-c",
            "echo t >> counter; test -L out && exit 1; mkdir -p out/sub; echo data > out/sub/a.txt"]},
        "cache": {"outputs": ["out/sub/a.txt"]}
    }]});
    assert_eq!(sb.run_json(&["run", "-q"], &batch).code, 0);
    // `out` becomes a link to a folder outside the workspace: restoring there would write
    // outside it.
    std::fs::remove_dir_all(sb.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), sb.path().join("out")).unwrap();
    let run = sb.run_json(&["run", "-q"], &batch);
    // A miss: the task runs (and, seeing the link, fails without writing).
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.result("t").get("cached").is_none());
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing was created outside the workspace"
    );
    let miss = events(&run.trace(), "cache_checked")[0].clone();
    assert!(
        miss["reason"]
            .as_str()
            .unwrap()
            .contains("outside the workspace"),
        "{miss}"
    );
    assert_eq!(runs(&sb), 2);
}

#[test]
fn no_cache_flag_neither_uses_nor_stores_results() {
    let sb = Sandbox::new();
    sb.write("src.txt", "one\n");
    let batch = json!({"tasks": [counting_task("t", json!({"inputs": ["src.txt"]}))]});
    // Without the cache a run stores nothing...
    let off = sb.run_json(&["run", "-q", "--no-cache"], &batch);
    assert_eq!(off.code, 0, "{}", off.stderr);
    assert!(events(&off.trace(), "cache_checked").is_empty());
    let stored = sb.run_json(&["cache", "stats"], &json!({}));
    assert_eq!(stored.json["entries"], 0, "{}", stored.stdout);
    // ...and uses nothing that a cached run stored.
    let on = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(on.code, 0, "{}", on.stderr);
    let stored = sb.run_json(&["cache", "stats"], &json!({}));
    assert_eq!(stored.json["entries"], 1, "{}", stored.stdout);
    let off = sb.run_json(&["run", "-q", "--no-cache"], &batch);
    assert_eq!(off.code, 0, "{}", off.stderr);
    assert!(off.result("t").get("cached").is_none());
    assert_eq!(runs(&sb), 3);
    // The next run with the cache still hits.
    let hit = sb.run_json(&["run", "-q"], &batch);
    assert_eq!(hit.result("t")["cached"], true);
    assert_eq!(runs(&sb), 3);
}
