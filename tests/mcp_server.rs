//! `dispatch_runner mcp-server` driven by MCP clients nobody here wrote: the official MCP Python
//! SDK (tests/mcp_server_client/client.py) over stdio and over Streamable HTTP, and our own
//! `doctor` (an rmcp client) against both transports.

mod common;
mod mcp_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Sandbox, bin, eventually, listening_base, processes_matching, read_json};
use serde_json::{Value, json};

const SECRET: &str = "sk-mcp-test-4f9a1c7e2b";

fn client_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp_server_client/client.py")
        .display()
        .to_string()
}

/// A `sleep` duration no other process uses, to find the long task in /proc.
fn marker() -> String {
    format!("3600.{}", fastrand::u32(100_000..999_999))
}

/// Runs the Python client to the end; its scenarios by name.
fn run_client(args: &[&str]) -> std::collections::HashMap<String, Value> {
    let mut cmd = Command::new(mcp_support::python());
    cmd.arg(client_script())
        .args(args)
        .env("DEMO_API_KEY", SECRET)
        .stdin(Stdio::null());
    let out = common::wait_with_deadline(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            (v["scenario"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// What every transport must show; `sb` is where the server writes its traces (`traces/`).
fn check_scenarios(sb: &Sandbox, s: &std::collections::HashMap<String, Value>, marker: &str) {
    assert_eq!(s["initialize"]["server"], "dispatch_runner");
    let instructions = s["initialize"]["instructions"].as_str().unwrap();
    assert!(instructions.contains("validate"), "{instructions}");

    // Tools, each with an input schema; `batch` is the batch schema, its references resolvable
    // at the input schema's root.
    let tools = s["list_tools"]["tools"].as_array().unwrap();
    let names: BTreeSet<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["dispatch", "validate", "schema", "rerun_failed", "get_run"])
    );
    let dispatch = tools.iter().find(|t| t["name"] == "dispatch").unwrap();
    let input = &dispatch["input_schema"];
    assert_eq!(
        input["properties"]["batch"]["properties"]["tasks"]["items"]["$ref"],
        "#/$defs/Task"
    );
    assert!(input["$defs"]["Task"].is_object(), "{input}");
    assert_eq!(input["required"], json!(["batch"]));
    assert!(
        dispatch["description"]
            .as_str()
            .unwrap()
            .contains("Cancelling the call cancels the run")
    );

    // validate: the same errors with the same JSON Pointers as the command line's `validate`.
    let bad = &s["validate_bad"];
    assert_eq!(bad["is_error"], true);
    assert_eq!(bad["structured"]["status"], "invalid");
    let cli = sb.run_json(&["validate"], &bad["batch"]);
    assert_eq!(cli.code, 2);
    assert_eq!(bad["structured"], cli.json, "tool and CLI disagree");
    let paths: Vec<&str> = bad["structured"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/tasks/0/input_data/argv", "/tasks/1/dependencies/0"]
    );
    assert_eq!(s["validate_text"]["structured"], cli.json);
    let good = &s["validate_good"];
    assert_eq!(good["is_error"], false);
    assert_eq!(good["structured"]["status"], "valid");
    assert_eq!(
        good["structured"]["critical_path"],
        json!(["make", "left", "join"])
    );

    // A batch cannot raise the server's output cap (started with --max-output-bytes 65536).
    let over = &s["over_limit"];
    assert_eq!(over["is_error"], true);
    assert_eq!(over["structured"]["status"], "invalid");
    assert_eq!(
        over["structured"]["errors"][0]["path"],
        "/config/max_output_bytes"
    );

    // dispatch: one progress notification per finished task, then the compact result.
    let ran = &s["dispatch"];
    assert_eq!(ran["is_error"], false, "{ran}");
    let result = &ran["structured"];
    assert_eq!(result["result_form"], "compact");
    assert_eq!(result["status"], "partial");
    assert_eq!(result["summary"]["successful"], 3);
    assert_eq!(result["not_succeeded"][0]["task_id"], "right");
    assert_eq!(result["not_succeeded"][0]["stderr"]["text"], "right\n");
    let progress = ran["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 4, "{progress:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["progress"], (i + 1) as f64);
        assert_eq!(p["total"], 4.0);
    }
    assert!(
        progress[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("make: success")
    );
    // The server's trace folder, and its worker cap (--max-workers 2) over the batch's 8.
    let trace_file = sb.path().join(result["trace_file"].as_str().unwrap());
    assert!(
        trace_file.starts_with(sb.path().join("traces")),
        "{trace_file:?}"
    );
    let trace = read_json(&trace_file);
    let started = common::events(&trace, "run_started");
    assert_eq!(started[0]["config"]["max_workers"], 2);

    // get_run: the finished run's full result from its trace.
    let got = &s["get_run"]["structured"];
    assert_eq!(got["run_id"], result["run_id"]);
    let left = got["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task_id"] == "left")
        .unwrap();
    assert_eq!(left["output"]["stdout"], "left-made\n");

    // rerun_failed: only `right` runs again.
    let rerun = &s["rerun_failed"]["structured"];
    assert_eq!(rerun["previous_run_id"], result["run_id"]);
    let rerun_trace = read_json(&sb.path().join(rerun["trace_file"].as_str().unwrap()));
    let attempted: BTreeSet<&str> = common::events(&rerun_trace, "attempt_started")
        .iter()
        .map(|e| e["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(attempted, BTreeSet::from(["right"]));

    // A secret of the server's environment does not cross the protocol.
    let secret = s["secret"].to_string();
    assert!(!secret.contains(SECRET), "{secret}");
    assert!(secret.contains("key="), "{secret}");

    // A cancelled dispatch: no result came back, the process is gone, the trace was written.
    let cancel = &s["cancel"];
    assert!(cancel.get("result").is_none(), "{cancel}");
    assert_eq!(cancel["progress"][0], "quick: success (1/2)");
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(marker)
            .is_empty()),
        "still running: {:?}",
        processes_matching(marker)
    );
    let cancelled = traces(sb)
        .into_iter()
        .find(|t| {
            t["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["task_id"] == "long")
        })
        .expect("the cancelled run's trace");
    assert_eq!(
        cancelled["tasks"][1]["status"], "cancelled",
        "{}",
        cancelled["tasks"]
    );
    assert_eq!(common::events(&cancelled, "run_cancelled").len(), 1);

    // The session outlives the cancelled call; schema is the command line's.
    let schema = sb.run(&["schema"], "");
    assert_eq!(s["schema"]["structured"], schema.json);
}

/// Every trace file the server wrote.
fn traces(sb: &Sandbox) -> Vec<Value> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(sb.path().join("traces"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            found.push(read_json(&path));
        }
    }
    found
}

const LIMITS: [&str; 4] = ["--max-output-bytes", "65536", "--max-workers", "2"];

#[test]
fn python_sdk_client_over_stdio() {
    let sb = Sandbox::new();
    let marker = marker();
    let bin = bin().display().to_string();
    let traces = sb.path().join("traces").display().to_string();
    let mut args = vec![
        "stdio",
        &marker,
        "--",
        &bin,
        "mcp-server",
        "--trace-dir",
        &traces,
    ];
    args.extend(LIMITS);
    let scenarios = run_client(&args);
    check_scenarios(&sb, &scenarios, &marker);
}

struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server(sb: &Sandbox, token: Option<&str>) -> HttpServer {
    let mut cmd = sb.cmd(&[
        "mcp-server",
        "--listen",
        "127.0.0.1:0",
        "--trace-dir",
        "traces",
    ]);
    cmd.args(LIMITS)
        .env("DEMO_API_KEY", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match token {
        Some(t) => cmd.env("DISPATCH_API_TOKEN", t),
        None => cmd.env_remove("DISPATCH_API_TOKEN"),
    };
    let mut child = cmd.spawn().unwrap();
    let url = listening_base(&mut child);
    HttpServer { child, url }
}

#[test]
fn python_sdk_client_over_streamable_http() {
    let sb = Sandbox::new();
    let token = "tok-7d1e0c55a9";
    let server = http_server(&sb, Some(token));
    assert!(server.url.ends_with("/mcp"), "{}", server.url);
    let marker = marker();
    let scenarios = run_client(&["http", &marker, &server.url, token]);
    check_scenarios(&sb, &scenarios, &marker);
}

#[tokio::test]
async fn http_endpoint_keeps_serves_token_and_cross_site_rules() {
    let sb = Sandbox::new();
    let server = http_server(&sb, Some("tok-1b2c3d"));
    let client = common::client();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let post = |auth: Option<&str>, extra: Option<(&str, &str)>| {
        let mut req = client
            .post(&server.url)
            .header("Accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(a) = auth {
            req = req.header("Authorization", format!("Bearer {a}"));
        }
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.send()
    };
    let answer = post(None, None).await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "error");
    assert_eq!(post(Some("wrong"), None).await.unwrap().status(), 401);
    let foreign = Some(("Origin", "http://evil.example"));
    assert_eq!(
        post(Some("tok-1b2c3d"), foreign).await.unwrap().status(),
        403
    );
    let rebound = Some(("Host", "evil.example"));
    assert_eq!(
        post(Some("tok-1b2c3d"), rebound).await.unwrap().status(),
        403
    );
    let ok = post(Some("tok-1b2c3d"), None).await.unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);

    // Without a token it refuses to listen beyond loopback, as `serve` does.
    let out = sb
        .cmd(&["mcp-server", "--listen", "0.0.0.0:0"])
        .env_remove("DISPATCH_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen"));
}

/// Our own client's `doctor` against the server, over stdio and over HTTP.
#[test]
fn doctor_reports_the_server_healthy_on_both_transports() {
    let sb = Sandbox::new();
    let server = http_server(&sb, None);
    let config = format!(
        "mcp:\n  servers:\n    over_stdio:\n      command: {:?}\n      args: [\"mcp-server\", \"--trace-dir\", \"traces\"]\n    over_http:\n      url: {:?}\n",
        bin().display().to_string(),
        server.url
    );
    let path = sb.write("dispatch.yaml", &config);
    let out = sb
        .cmd(&["doctor", "--config", path.to_str().unwrap()])
        .env_remove("ARCHON_MCP_URL")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["healthy"], true);
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{report}");
    for s in servers {
        assert_eq!(s["reachable"], true, "{s}");
        assert_eq!(s["server_name"], "dispatch_runner", "{s}");
        assert_eq!(s["tools"], 5, "{s}");
    }
}

/// The official conformance suite's server scenarios that apply to a tools-only server, run
/// against `mcp-server --listen`; every one must pass (warnings allowed, no failure).
const CONFORMANCE_APPLIES: [&str; 6] = [
    "server-initialize",
    "ping",
    "tools-list",
    "server-sse-polling",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
];

/// The rest, and why they do not apply: they call the suite's own test tools
/// (`test_simple_text`, ...), or need capabilities this server does not offer (logging,
/// completion, resources, prompts; sampling and elicitation are requests to the client).
const CONFORMANCE_DOES_NOT_APPLY: [&str; 26] = [
    "logging-set-level",
    "completion-complete",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "json-schema-2020-12",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
];

fn conformance_bin() -> String {
    let p = mcp_support::deps().join("conformance/node_modules/.bin/conformance");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn official_conformance_suite_server_scenarios_pass() {
    // Every server scenario of the pinned suite is accounted for: a new one is looked at.
    let listed = Command::new(conformance_bin())
        .args(["list", "--server"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let scenarios: BTreeSet<&str> = listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    let known: BTreeSet<&str> = CONFORMANCE_APPLIES
        .iter()
        .chain(&CONFORMANCE_DOES_NOT_APPLY)
        .copied()
        .collect();
    assert_eq!(scenarios, known, "the suite's server scenarios changed");

    let sb = Sandbox::new();
    let server = http_server(&sb, None);
    for scenario in CONFORMANCE_APPLIES {
        let out_dir = sb.path().join(format!("conformance-{scenario}"));
        let out = common::wait_with_deadline(
            Command::new(conformance_bin())
                .args(["server", "--url", &server.url, "--scenario", scenario, "-o"])
                .arg(&out_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            Duration::from_secs(120),
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{scenario} failed:\n{report}");
        let checks_file = std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("checks.json"))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{scenario}: no checks.json"));
        let checks = read_json(&checks_file);
        let checks = checks.as_array().unwrap();
        let passed = checks.iter().filter(|c| c["status"] == "SUCCESS").count();
        assert!(passed > 0, "{scenario}: nothing passed: {checks:?}");
        for c in checks {
            assert_ne!(c["status"], "FAILURE", "{scenario}: {c}");
        }
    }
}

/// A stdio client that goes away mid-run (stdin closed) cancels the run: the process group is
/// killed, the trace is written, and the server exits 0.
#[test]
fn the_end_of_a_stdio_session_cancels_its_runs() {
    stdio_run_stopped_by(false);
}

/// So does SIGTERM to the server.
#[test]
fn sigterm_cancels_the_runs_of_a_stdio_server() {
    stdio_run_stopped_by(true);
}

fn stdio_run_stopped_by(sigterm: bool) {
    use std::io::{BufRead, BufReader, Write};
    let sb = Sandbox::new();
    let marker = marker();
    let mut child = sb
        .cmd(&["mcp-server", "--trace-dir", "traces"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut send = |v: Value| writeln!(&mut stdin, "{v}").unwrap();
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}),
    );
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("\"id\":1"), "{line}");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "dispatch", "arguments": {"batch": {"tasks": [
            {"task_id": "long", "agent": "command", "input_data": {"argv": ["sleep", marker]}}
        ]}}}}),
    );
    assert!(
        eventually(Duration::from_secs(20), || !processes_matching(&marker)
            .is_empty()),
        "the task never started"
    );
    if sigterm {
        common::send_signal(child.id(), libc::SIGTERM);
    } else {
        drop(stdin);
    }
    let status = common::wait_with_deadline(child, Duration::from_secs(30)).status;
    assert_eq!(status.code(), Some(0));
    assert!(processes_matching(&marker).is_empty());
    let trace = traces(&sb).pop().expect("the run's trace");
    assert_eq!(trace["tasks"][0]["status"], "cancelled");
}
