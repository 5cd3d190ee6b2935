//! A planted secret appears in none of the outputs: result, trace, NDJSON events, JUnit, HTML,
//! Chrome trace, metrics, stderr (progress, logs, messages), nor what `report` writes.
//!
//! Two secrets: a value under an `api_key`-like key in a command task's `env`, and a value from
//! the runner's environment under a secret-looking name, which a task expands with the shell.
//! Both are echoed by the tasks to stdout and stderr, and end up in error messages.

mod common;
mod mcp_support;
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
    let mut cmd = sb.cmd(&args);
    cmd.env("DISPATCH_TEST_TOKEN", ENV_SECRET)
        .env("RUST_LOG", "trace");
    let run = sb.run_cmd(cmd, &batch.to_string());
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
        // Redaction must not break the formats.
        if f.ends_with(".prom") {
            common::promtool_check(f, &text);
        }
        if f.ends_with(".xml") {
            observe::xmllint_validate(&sb.path().join(f), &observe::junit_xsd())
                .unwrap_or_else(|e| panic!("{f} does not validate:\n{e}"));
        }
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

const URL_USER: &str = "alice-in-url";
const URL_PASSWORD: &str = "pa55-in-url-3e9d";
const URL_KEY: &str = "k3y-in-query-8b1f";

/// An MCP URL with credentials in the userinfo and in a query parameter, and what it must look
/// like wherever it is shown.
fn url_with_credentials(port: u16) -> (String, String) {
    (
        format!("http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/mcp?api_key={URL_KEY}&x=1"),
        format!("http://***@127.0.0.1:{port}/mcp?api_key=[REDACTED]&x=1"),
    )
}

fn url_batch(live_port: u16, refused_port: u16) -> serde_json::Value {
    json!({"tasks": [
        {"task_id": "live", "agent": "mcp",
         "input_data": {"url": url_with_credentials(live_port).0, "tool": "echo",
                        "arguments": {"message": "hello"}}},
        {"task_id": "refused", "agent": "mcp",
         "input_data": {"url": url_with_credentials(refused_port).0, "tool": "echo",
                        "arguments": {"message": "hello"}}}
    ]})
}

fn assert_no_url_credentials(name: &str, text: &str) {
    for secret in [URL_USER, URL_PASSWORD, URL_KEY] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into {name}:\n{text}"
        );
    }
    // Nor a plain hash of a URL with its credentials (in a breaker label, say), against which a
    // guessed password could be checked.
    for port in text_ports(text) {
        let hash = sha256_hex(&url_with_credentials(port).0);
        assert!(
            !text.contains(&hash[..12]),
            "hash of a secret URL in {name}:\n{text}"
        );
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The ports of the redacted URLs shown in `text`.
fn text_ports(text: &str) -> Vec<u16> {
    text.split("http://***@127.0.0.1:")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn credentials_in_mcp_urls_appear_in_no_output() {
    let server = mcp_support::start_everything_http();
    let refused = mcp_support::free_port();
    let sb = Sandbox::new();
    let mut cmd = sb.cmd(&[
        "run",
        "--events",
        "events.ndjson",
        "--metrics-file",
        "metrics.prom",
        "-o",
        "result.json",
    ]);
    cmd.env("RUST_LOG", "debug");
    let run = sb.run_cmd(cmd, &url_batch(server.port, refused).to_string());
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("live"), "success", "{}", run.stderr);
    assert_eq!(run.status("refused"), "error");
    // The URL is still shown, without its credentials.
    assert_eq!(
        run.result("live")["output"]["server"],
        url_with_credentials(server.port).1
    );
    assert!(
        run.result("refused")["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&url_with_credentials(refused).1),
        "{}",
        run.stdout
    );
    let trace = run.trace();
    assert_eq!(
        trace["batch"]["tasks"][0]["input_data"]["url"],
        url_with_credentials(server.port).1
    );
    assert_eq!(
        trace["digests"]["tasks"][0]["redacted"],
        json!(["/input_data/url"])
    );
    assert!(run.stderr.contains("DEBUG"), "debug logging was on");
    let mut outputs = vec![
        ("stdout".to_string(), run.stdout.clone()),
        ("stderr".to_string(), run.stderr.clone()),
        ("trace".to_string(), trace.to_string()),
    ];
    for f in ["result.json", "events.ndjson", "metrics.prom"] {
        let text =
            std::fs::read_to_string(sb.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.is_empty(), "{f} is empty");
        if f.ends_with(".prom") {
            common::promtool_check(f, &text);
        }
        outputs.push((f.to_string(), text));
    }
    for (name, text) in &outputs {
        assert_no_url_credentials(name, text);
    }

    // A rerun from the trace would call the redacted URL: refused, naming the task.
    let rerun = sb.run(
        &[
            "run",
            "--rerun-failed",
            run.json["trace_file"].as_str().unwrap(),
        ],
        "",
    );
    assert_eq!(rerun.code, 2, "{}", rerun.stdout);
    let message = rerun.json["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("task 'refused'") && message.contains("/input_data/url"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_mcp_urls_stay_out_of_the_server_and_its_log() {
    let mcp = mcp_support::start_everything_http();
    let refused = mcp_support::free_port();
    let sb = Sandbox::new();
    let log = std::fs::File::create(sb.path().join("server.log")).unwrap();
    let mut child = KillOnDrop(
        sb.cmd(&["serve", "--listen", "127.0.0.1:0"])
            .env_remove("DISPATCH_API_TOKEN")
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let base = loop {
        let text = std::fs::read_to_string(sb.path().join("server.log")).unwrap();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("dispatch_runner: listening on "))
        {
            break addr.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not start:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let client = dispatch_runner::http::client_builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let result: serde_json::Value = client
        .post(format!("{base}/v1/dispatch"))
        .header("content-type", "application/json")
        .body(url_batch(mcp.port, refused).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ok = |id: &str| {
        result["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(ok("live")["status"], "success", "{result}");
    assert_eq!(
        ok("live")["output"]["server"],
        url_with_credentials(mcp.port).1
    );
    let run_id = result["run_id"].as_str().unwrap();
    let trace = client
        .get(format!("{base}/v1/runs/{run_id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(trace.contains(&url_with_credentials(mcp.port).1), "{trace}");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dispatch_"), "{metrics}");
    child.stop();
    let log = std::fs::read_to_string(sb.path().join("server.log")).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    for (name, text) in [
        ("response", result.to_string()),
        ("trace", trace),
        ("metrics", metrics),
        ("server log", log),
    ] {
        assert_no_url_credentials(name, &text);
    }
}

/// The server process, stopped even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
