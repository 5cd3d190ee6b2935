//! A planted secret appears in none of the outputs: result, trace, NDJSON events, JUnit, HTML,
//! Chrome trace, metrics, stderr (progress, logs, messages), nor what `report` writes.
//!
//! Two secrets: a value under an `api_key`-like key in a command task's `env`, and a value from
//! the runner's environment under a secret-looking name, which a task expands with the shell.
//! Both are echoed by the tasks to stdout and stderr, and end up in error messages.

mod common;
mod observe;

use common::Sandbox;
use observe::OUTPUT_FLAGS;
use serde_json::json;

const KEY_SECRET: &str = "sk-planted-under-a-key-7f3a9c";
const ENV_SECRET: &str = "ghp-planted-in-the-env-51be02";
const URL_SECRET: &str = "pw-planted-in-a-url-0c4d1e";

#[test]
fn planted_secrets_appear_in_no_output() {
    let sb = Sandbox::new();
    // Nobody listens there: the failed push is a warning naming the URL, and with RUST_LOG the
    // HTTP client logs the connection attempt.
    let push_url = format!(
        "http://metrics:{URL_SECRET}@127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let batch = json!({
        "tasks": [
            {"task_id": "echo_both", "agent": "command",
             "input_data": {"argv": ["sh", "-c", "echo \"key=$SERVICE_API_KEY env=$DISPATCH_TEST_TOKEN\"; echo \"err $SERVICE_API_KEY\" >&2"],
                            "env": {"SERVICE_API_KEY": KEY_SECRET}}},
            {"task_id": "fails_loudly", "agent": "command", "retries": 1,
             "input_data": {"argv": ["sh", "-c", "echo \"auth failed for $DISPATCH_TEST_TOKEN\" >&2; exit 2"]}},
            {"task_id": "uses_output", "agent": "command", "dependencies": ["echo_both"],
             "input_data": {"argv": ["echo", "{{tasks.echo_both.output.stdout}}"]}}
        ],
        "config": {"retry_backoff_ms": 50}
    });
    let mut args = vec!["run"];
    args.extend_from_slice(&OUTPUT_FLAGS);
    args.extend_from_slice(&[
        "--status-interval",
        "0.1",
        "-o",
        "result.json",
        "--pushgateway",
        &push_url,
    ]);
    let out = sb
        .cmd(&args)
        .env("DISPATCH_TEST_TOKEN", ENV_SECRET)
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(batch.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let run = sb.to_run(out);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // The tasks really did print and fail with the secrets: they were replaced, not absent.
    assert_eq!(
        run.result("echo_both")["output"]["stdout"],
        "key=[REDACTED] env=[REDACTED]\n"
    );
    assert!(
        run.result("fails_loudly")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth failed for [REDACTED]")
    );
    let report = sb.run(
        &[
            "report",
            run.json["trace_file"].as_str().unwrap(),
            "--html",
            "again.html",
            "--junit",
            "again.xml",
            "--chrome-trace",
            "again.json",
        ],
        "",
    );
    assert_eq!(report.code, 0, "{}", report.stderr);

    let mut outputs = vec![
        ("stdout".to_string(), run.stdout.clone()),
        ("stderr".to_string(), run.stderr.clone()),
        ("report stdout".to_string(), report.stdout.clone()),
        ("report stderr".to_string(), report.stderr.clone()),
        ("trace".to_string(), run.trace().to_string()),
    ];
    for f in [
        "result.json",
        "events.ndjson",
        "junit.xml",
        "report.html",
        "chrome.json",
        "metrics.prom",
        "again.html",
        "again.xml",
        "again.json",
    ] {
        let text =
            std::fs::read_to_string(sb.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.is_empty(), "{f} is empty");
        outputs.push((f.to_string(), text));
    }
    for (name, text) in &outputs {
        for secret in [KEY_SECRET, ENV_SECRET, URL_SECRET] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {name}:\n{text}"
            );
        }
    }
    // The redaction marker is where the secrets were (escaped as the format needs).
    for f in [
        "events.ndjson",
        "junit.xml",
        "report.html",
        "chrome.json",
        "result.json",
    ] {
        let text = &outputs.iter().find(|(n, _)| n == f).unwrap().1;
        assert!(text.contains("[REDACTED]"), "{f} shows no redaction");
    }
    // stderr was exercised: the push warning (with the URL redacted) and progress lines.
    assert!(
        run.stderr.contains("warning: cannot push metrics"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("[REDACTED]"), "{}", run.stderr);
}
