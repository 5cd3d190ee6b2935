//! The command-line front end: every output path is checked before anything runs.

mod common;

use common::*;
use serde_json::json;

#[test]
fn every_output_path_is_checked_before_anything_runs() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("a_folder")).unwrap();
    let batch = json!({"tasks": [sh_task("t", "touch ran", &[])]});
    for flag in [
        "-o",
        "--output-file",
        "--junit",
        "--html",
        "--chrome-trace",
        "--metrics-file",
        "--events",
    ] {
        for path in ["a_folder", "no/such/folder/out.json"] {
            let run = sb.run_json(&["run", "-q", flag, path], &batch);
            assert_eq!(run.code, 3, "{flag} {path}: {}", run.stdout);
            let (_, message) = &run.error_messages()[0];
            assert!(message.contains(path), "{flag} {path}: {message}");
            assert!(
                !sb.path().join("ran").exists(),
                "{flag} {path}: the task ran before the output path was checked"
            );
        }
    }
    // A writable path still works.
    let run = sb.run_json(&["run", "-q", "-o", "result.json"], &batch);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        read_json(&sb.path().join("result.json"))["status"],
        "success"
    );
}
