//! The `prompt` agent through the real binary, against loopback stand-ins speaking the Anthropic
//! Messages and OpenAI chat-completions wire formats and a script playing the `claude` CLI: a
//! role's reply as text, JSON under a schema with a repair round, downstream references into
//! that JSON, workspace files in the prompt, and refusal at validation (exit 2, nothing run) of
//! escaping paths and of backends that cannot be called. The keys are made up; no key may show
//! in a result, a trace or stderr.

#[path = "common/agents.rs"]
mod agents;
mod common;
#[path = "common/mockapi.rs"]
mod mockapi;

use std::path::Path;

use common::*;
use mockapi::*;
use serde_json::{Value, json};

impl Provider {
    /// The system prompt of a recorded request.
    fn system(self, req: &Recorded) -> String {
        match self {
            Provider::Anthropic => req.body["system"].as_str().unwrap().to_string(),
            Provider::Openai => {
                assert_eq!(req.body["messages"][0]["role"], "system");
                req.body["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        }
    }

    /// The (role, content) turns after the system prompt.
    fn turns(self, req: &Recorded) -> Vec<(String, String)> {
        req.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The request went where it should, with the key in the provider's header.
    fn assert_wire(self, req: &Recorded) {
        assert_eq!(req.method, "POST");
        match self {
            Provider::Anthropic => {
                assert_eq!(req.path, "/v1/messages");
                assert_eq!(req.header("x-api-key"), Some(ANTHROPIC_KEY));
                assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
                assert!(req.body["max_tokens"].as_u64().unwrap() > 0);
            }
            Provider::Openai => {
                assert_eq!(req.path, "/v1/chat/completions");
                assert_eq!(
                    req.header("authorization"),
                    Some(format!("Bearer {OPENAI_KEY}").as_str())
                );
            }
        }
    }
}

/// Runs `dispatch_runner <sub> -f batch.json` in the sandbox with exactly the model variables
/// in `env`, and checks that no key leaked into stdout, stderr or the trace.
fn dr(sb: &Sandbox, sub: &[&str], batch: &Value, env: &[(&str, String)]) -> Run {
    let file = sb.write("batch.json", &batch.to_string());
    let mut args = sub.to_vec();
    args.extend(["-f", file.to_str().unwrap()]);
    let mut cmd = sb.cmd(&args);
    for v in agents::LLM_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dispatch_runner");
    let run = sb.to_run(wait_with_deadline(
        child,
        std::time::Duration::from_secs(120),
    ));
    for key in [ANTHROPIC_KEY, OPENAI_KEY] {
        assert!(!run.stdout.contains(key), "key in stdout");
        assert!(!run.stderr.contains(key), "key in stderr");
        if run.json.get("trace_file").is_some() {
            assert!(!run.trace().to_string().contains(key), "key in the trace");
        }
    }
    run
}

fn run(sb: &Sandbox, batch: &Value, env: &[(&str, String)]) -> Run {
    dr(sb, &["run", "-q"], batch, env)
}

fn prompt_task(id: &str, input: Value) -> Value {
    json!({"task_id": id, "agent": "prompt", "input_data": input})
}

fn verdict_schema() -> Value {
    json!({"type": "object", "required": ["verdict"], "additionalProperties": false,
           "properties": {"verdict": {"enum": ["approve", "request_changes"]},
                          "comments": {"type": "array", "items": {"type": "string"}}}})
}

#[test]
fn a_role_with_instructions_context_and_upstream_output_gets_a_text_reply() {
    for p in BOTH {
        let reply = "The change is small and correct. One nit: name the flag --dry-run.";
        let api = MockApi::start(vec![p.ok(reply, 900, 40)]);
        let sb = Sandbox::new();
        let mut input = json!({
            "role": "reviewer",
            "instructions": "Review the diff of the deploy script.",
            "context": {"ticket": "OPS-4711", "risk": "low"},
        });
        // The Anthropic run names no backend (its key picks it); the OpenAI run names its
        // backend and another model than the configured one.
        if let Provider::Openai = p {
            input["backend"] = json!("openai");
            input["model"] = json!("gpt-4o");
        }
        let mut task = prompt_task("review", input);
        task["dependencies"] = json!(["diff"]);
        let batch = json!({"tasks": [
            sh_task("diff", "echo '+ --dry-run skips the upload'", &[]), task]});
        let r = run(&sb, &batch, &p.env(&api));
        assert_eq!(r.code, 0, "{p:?}: {}", r.stdout);
        let out = &r.result("review")["output"];
        assert_eq!(out["text"], reply);
        assert_eq!(out["json"], Value::Null);
        assert_eq!(out["role"], "reviewer");
        assert_eq!(out["backend"], p.name());
        assert_eq!(out["attempts"], 1);
        assert_eq!(out["usage"]["model_calls"], 1);
        assert_eq!(out["usage"]["input_tokens"], 900);
        assert_eq!(out["usage"]["output_tokens"], 40);
        let expected = match p {
            Provider::Anthropic => (900.0 * 3.0 + 40.0 * 15.0) / 1e6,
            // Priced as the model the server says it used (the stand-in says gpt-4o-mini).
            Provider::Openai => (900.0 * 0.15 + 40.0 * 0.6) / 1e6,
        };
        let cost = out["usage"]["cost_usd"].as_f64().unwrap();
        assert!((cost - expected).abs() < 1e-12, "{p:?}: {cost}");
        let summary = &r.json["summary"]["usage"];
        assert_eq!(summary["model_calls"], 1, "{p:?}: {summary}");
        assert_eq!(summary["input_tokens"], 900);
        assert!((summary["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12);

        let reqs = api.requests();
        assert_eq!(reqs.len(), 1);
        p.assert_wire(&reqs[0]);
        let model = match p {
            Provider::Anthropic => "claude-sonnet-4-5",
            Provider::Openai => "gpt-4o",
        };
        assert_eq!(reqs[0].body["model"], model);
        let system = p.system(&reqs[0]);
        assert!(system.starts_with("You are the reviewer."), "{system}");
        let turns = p.turns(&reqs[0]);
        assert_eq!(turns.len(), 1);
        let (role, user) = &turns[0];
        assert_eq!(role, "user");
        assert!(
            user.contains("Review the diff of the deploy script."),
            "{user}"
        );
        assert!(user.contains("OPS-4711"), "context missing: {user}");
        assert!(
            user.contains("--dry-run skips the upload"),
            "upstream output missing: {user}"
        );
    }
}

#[test]
fn a_reply_off_the_schema_is_repaired_and_its_json_feeds_the_next_task() {
    for p in BOTH {
        let api = MockApi::start(vec![
            p.ok("{\"verdict\": \"looks good\"}", 300, 20),
            p.ok(
                "Here it is:\n```json\n{\"verdict\": \"approve\", \"comments\": [\"ship it\"]}\n```",
                400,
                30,
            ),
        ]);
        let sb = Sandbox::new();
        let batch = json!({"tasks": [
            prompt_task("review", json!({"role": "reviewer", "backend": p.name(),
                "instructions": "Give a verdict on the release notes.",
                "output_schema": verdict_schema()})),
            {"task_id": "gate", "agent": "command", "dependencies": ["review"],
             "input_data": {"argv": ["echo", "verdict={{tasks.review.output.json.verdict}}"]}},
        ]});
        let r = run(&sb, &batch, &p.env(&api));
        assert_eq!(r.code, 0, "{p:?}: {}", r.stdout);
        let out = &r.result("review")["output"];
        assert_eq!(
            out["json"],
            json!({"verdict": "approve", "comments": ["ship it"]})
        );
        assert!(out["text"].as_str().unwrap().contains("```json"));
        assert_eq!(out["attempts"], 2);
        assert_eq!(out["usage"]["model_calls"], 2);
        assert_eq!(out["usage"]["input_tokens"], 700);
        assert_eq!(r.json["summary"]["usage"]["model_calls"], 2);
        assert_eq!(
            r.result("gate")["output"]["stdout"],
            "verdict=approve\n",
            "{p:?}"
        );

        let reqs = api.requests();
        assert_eq!(reqs.len(), 2, "{p:?}: one call and one repair");
        for req in &reqs {
            p.assert_wire(req);
            // The schema is in the system prompt.
            assert!(p.system(req).contains("request_changes"), "{p:?}");
        }
        let turns = p.turns(&reqs[1]);
        assert_eq!(turns.len(), 3, "{turns:?}");
        assert_eq!(
            turns[1],
            ("assistant".into(), "{\"verdict\": \"looks good\"}".into())
        );
        let (role, repair) = &turns[2];
        assert_eq!(role, "user");
        assert!(repair.contains("not one JSON value valid"), "{repair}");
        assert!(repair.contains("at '/verdict'"), "{repair}");
        assert!(repair.contains("looks good"), "{repair}");
    }
}

#[test]
fn repairs_run_out_and_the_task_fails_with_its_usage_counted() {
    let p = Provider::Anthropic;
    let api = MockApi::start(vec![
        p.ok("I approve.", 10, 1),
        p.ok("Approved!", 10, 1),
        p.ok("{\"verdict\": 1}", 10, 1),
    ]);
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        prompt_task("review", json!({"role": "reviewer", "backend": "anthropic",
            "instructions": "Give a verdict.", "output_schema": verdict_schema()})),
        {"task_id": "gate", "agent": "command", "dependencies": ["review"],
         "input_data": {"argv": ["echo", "{{tasks.review.output.json.verdict}}"]}},
    ]});
    let r = run(&sb, &batch, &p.env(&api));
    assert_eq!(r.code, 1, "{}", r.stdout);
    let review = r.result("review");
    assert_eq!(review["error"]["kind"], "validation_failed", "{review}");
    let message = review["error"]["message"].as_str().unwrap();
    assert!(message.contains("after 3 model call(s)"), "{message}");
    assert!(message.contains("at '/verdict'"), "{message}");
    assert_eq!(review["output"]["usage"]["model_calls"], 3);
    assert_eq!(review["output"]["json"], Value::Null);
    assert_eq!(r.json["summary"]["usage"]["model_calls"], 3);
    assert_eq!(r.status("gate"), "skipped");
    // One call plus the default two repairs, no more.
    assert_eq!(api.requests().len(), 3);
}

#[test]
fn workspace_files_go_into_the_prompt_cut_to_the_cap() {
    let p = Provider::Anthropic;
    let api = MockApi::start(vec![p.ok("Tests: ...", 5, 5)]);
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("src")).unwrap();
    sb.write("src/lib.rs", "pub fn answer() -> u32 { 42 }\n");
    let big = format!("{}BIG_FILE_TAIL_MARKER", "x".repeat(40 * 1024));
    sb.write("big.log", &big);
    let batch = json!({"tasks": [prompt_task("tests", json!({
        "role": "tester", "instructions": "Write tests for answer().",
        "files": ["src/lib.rs", "./big.log"]}))]});
    let r = run(&sb, &batch, &p.env(&api));
    assert_eq!(r.code, 0, "{}", r.stdout);
    let out = &r.result("tests")["output"];
    assert_eq!(
        out["included_files"],
        json!([{"path": "src/lib.rs", "bytes": 30, "truncated": false},
               {"path": "big.log", "bytes": 32 * 1024, "truncated": true}])
    );
    let reqs = api.requests();
    let user = &p.turns(&reqs[0])[0].1;
    assert!(user.contains("File src/lib.rs:"), "{user}");
    assert!(user.contains("pub fn answer() -> u32 { 42 }"), "{user}");
    assert!(user.contains("File big.log (the first 32768 bytes):"));
    assert!(!user.contains("BIG_FILE_TAIL_MARKER"));
    assert!(p.system(&reqs[0]).starts_with("You are the tester."));
}

#[test]
fn paths_out_of_the_workspace_are_refused_before_anything_runs() {
    let p = Provider::Anthropic;
    let api = MockApi::start(vec![p.ok("never", 1, 1)]);
    let sb = Sandbox::new();
    sb.write("notes.md", "notes\n");
    let marker = sb.path().join("ran");
    let batch = json!({"tasks": [
        sh_task("first", &format!("touch {}", marker.display()), &[]),
        prompt_task("leak", json!({"role": "analyst", "instructions": "Summarise.",
            "files": ["notes.md", "../secret.txt", "/etc/passwd", "a/../../b"]})),
    ]});
    for sub in [&["validate"][..], &["run", "-q"]] {
        let r = dr(&sb, sub, &batch, &p.env(&api));
        assert_eq!(r.code, 2, "{sub:?}: {}", r.stdout);
        assert_eq!(r.json["status"], "invalid");
        let errors = r.error_messages();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/tasks/1/input_data/files/1",
                "/tasks/1/input_data/files/2",
                "/tasks/1/input_data/files/3"
            ],
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .all(|(_, m)| m.starts_with("path_outside_workspace")),
            "{errors:?}"
        );
        assert!(errors[0].1.contains("'..' leads out of the workspace"));
        assert!(errors[1].1.contains("absolute"));
    }
    assert!(!marker.exists(), "nothing may run");
    assert!(api.requests().is_empty());

    // A symlink out of the workspace is only known on the disk: the task fails when it runs,
    // naming the entry, before any model call.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        sb.path().join("link.txt"),
    )
    .unwrap();
    let batch = json!({"tasks": [prompt_task("leak", json!({"role": "analyst",
        "instructions": "Summarise.", "files": ["notes.md", "link.txt"]}))]});
    let r = run(&sb, &batch, &p.env(&api));
    assert_eq!(r.code, 1, "{}", r.stdout);
    let e = &r.result("leak")["error"];
    assert_eq!(e["kind"], "path_outside_workspace", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("input_data/files/1: "),
        "{e}"
    );
    assert!(!r.stdout.contains("TOP SECRET"));
    assert!(api.requests().is_empty());
}

/// A model backend that cannot be called is an invalid batch (exit 2, nothing run) from
/// `validate`, `run` and `serve` alike, with a pointer to the task.
#[test]
fn a_backend_that_cannot_be_called_is_model_not_configured_at_validation() {
    let sb = Sandbox::new();
    let marker = sb.path().join("ran");
    let touch = sh_task("first", &format!("touch {}", marker.display()), &[]);
    // (input, model variables, where the problem is reported, what the message names)
    type Case = (
        Value,
        Vec<(&'static str, String)>,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            json!({"role": "planner", "instructions": "Plan.", "backend": "anthropic"}),
            vec![],
            "/tasks/1/input_data/backend",
            "$ANTHROPIC_API_KEY",
        ),
        (
            json!({"role": "planner", "instructions": "Plan."}),
            vec![],
            "/tasks/1/input_data",
            "no model backend is configured",
        ),
        (
            json!({"role": "planner", "instructions": "Plan.", "backend": "openai"}),
            vec![],
            "/tasks/1/input_data/backend",
            "OPENAI_BASE_URL",
        ),
        (
            json!({"role": "planner", "instructions": "Plan.", "backend": "command"}),
            vec![(
                "DISPATCH_LLM_COMMAND",
                r#"["/nonexistent/bin/claude", "-p"]"#.to_string(),
            )],
            "/tasks/1/input_data/backend",
            "/nonexistent/bin/claude",
        ),
        (
            // The default backend from the environment, its program not on PATH.
            json!({"role": "planner", "instructions": "Plan."}),
            vec![
                ("DISPATCH_PROMPT_BACKEND", "command".to_string()),
                (
                    "DISPATCH_LLM_COMMAND",
                    r#"["no-such-claude-cli-here"]"#.to_string(),
                ),
            ],
            "/tasks/1/input_data",
            "not an executable file on PATH",
        ),
    ];
    for (input, env, pointer, detail) in &cases {
        let batch = json!({"tasks": [touch, prompt_task("plan", input.clone())]});
        for sub in [&["validate"][..], &["run", "-q"]] {
            let r = dr(&sb, sub, &batch, env);
            assert_eq!(r.code, 2, "{input} {sub:?}: {}", r.stdout);
            assert_eq!(r.json["status"], "invalid");
            let errors = r.error_messages();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].0, *pointer, "{input}");
            assert!(
                errors[0].1.starts_with("model_not_configured: "),
                "{errors:?}"
            );
            assert!(errors[0].1.contains(detail), "{input}: {errors:?}");
        }
    }
    assert!(!marker.exists(), "nothing may run");

    // `model` belongs to the HTTP backends.
    let batch = json!({"tasks": [prompt_task("plan", json!({"role": "planner",
        "instructions": "Plan.", "backend": "command", "model": "opus"}))]});
    let r = dr(&sb, &["validate"], &batch, &[]);
    assert_eq!(r.code, 2);
    let errors = r.error_messages();
    assert!(
        errors
            .iter()
            .any(|(p, m)| p == "/tasks/0/input_data/model" && m.contains("'model' applies")),
        "{errors:?}"
    );

    // With the key, the same batch validates.
    let (input, _, _, _) = &cases[0];
    let batch = json!({"tasks": [touch, prompt_task("plan", input.clone())]});
    let r = dr(
        &sb,
        &["validate"],
        &batch,
        &[("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string())],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_the_batch_as_validate_does() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env_remove("DISPATCH_API_TOKEN");
    for v in agents::LLM_VARS {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = listening_base(&mut child);
    let batch = json!({"tasks": [prompt_task("plan",
        json!({"role": "planner", "instructions": "Plan.", "backend": "anthropic"}))]});
    let resp = client()
        .post(format!("{base}/v1/dispatch"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 400, "{body}");
    let cli = dr(&sb, &["validate"], &batch, &[]);
    assert_eq!(cli.code, 2);
    assert_eq!(body["errors"], cli.json["errors"]);
    assert_eq!(body["errors"][0]["path"], "/tasks/0/input_data/backend");
}

/// The MCP server's `validate` tool gives the same verdict, pointers included.
#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_validate_tool_refuses_the_batch_as_validate_does() {
    use dispatch_runner::mcp::client::Session;
    use dispatch_runner::mcp::config::Transport;
    let sb = Sandbox::new();
    // Empty counts as unset: whatever this process has, the server sees no model settings.
    let env = agents::LLM_VARS
        .iter()
        .map(|v| (v.to_string(), String::new()))
        .collect();
    let transport = Transport::Stdio {
        command: bin().display().to_string(),
        args: vec!["mcp-server".into()],
        env,
        cwd: Some(sb.path().display().to_string()),
    };
    let session = Session::connect(&transport)
        .await
        .expect("mcp-server starts");
    let batch = json!({"tasks": [prompt_task("plan",
        json!({"role": "planner", "instructions": "Plan.", "backend": "anthropic",
               "files": ["../x"]}))]});
    let mut args = serde_json::Map::new();
    args.insert("batch".into(), batch.clone());
    let answer = session
        .call_tool("validate", args, |_| {})
        .await
        .expect("the tool answers");
    session.close().await;
    assert!(answer.is_error);
    let cli = dr(&sb, &["validate"], &batch, &[]);
    assert_eq!(cli.code, 2);
    let structured = answer.structured_content.expect("structured content");
    assert_eq!(structured["errors"], cli.json["errors"], "{structured}");
    let paths: Vec<&str> = cli.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/tasks/0/input_data/backend", "/tasks/0/input_data/files/0"]
    );
}

/// A planner's child batch is checked against the same model settings when it starts.
#[test]
fn a_child_batch_with_an_uncallable_prompt_task_is_refused_whole() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [{"task_id": "run-plan", "agent": "batch", "input_data": {
        "batch": {"tasks": [
            {"task_id": "touch", "agent": "command", "input_data": {"argv": ["touch", "child-ran"]}},
            {"task_id": "ask", "agent": "prompt", "input_data": {
                "role": "builder", "instructions": "Build.", "backend": "anthropic"}}]}}}]});
    let r = dr(&sb, &["run", "-q"], &batch, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let e = &r.result("run-plan")["error"];
    assert_eq!(e["kind"], "invalid_batch", "{e}");
    let errors = &r.result("run-plan")["output"]["errors"];
    assert_eq!(errors[0]["path"], "/tasks/1/input_data/backend", "{errors}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("model_not_configured")
    );
    assert!(!sb.path().join("child-ran").exists());
}

/// A stand-in for `claude -p --output-format json`: it must run in a folder holding
/// `prompt.txt` (the prompt it also gets on stdin) and `context.json`; it keeps what it saw for
/// the test and answers in Claude Code's JSON result format.
const FAKE_CLAUDE: &str = r#"
import json, os, sys
prompt = sys.stdin.read()
if not (os.path.isfile("prompt.txt") and os.path.isfile("context.json")):
    print("prompt.txt or context.json missing in " + os.getcwd(), file=sys.stderr)
    sys.exit(3)
if open("prompt.txt").read() != prompt:
    print("prompt.txt differs from stdin", file=sys.stderr)
    sys.exit(4)
context = json.load(open("context.json"))
with open(os.environ["FAKE_LOG"], "w") as log:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv[1:], "prompt": prompt, "context": context}, log)
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "result": "{\"verdict\": \"request_changes\", \"comments\": [\"add a test\"]}",
                  "total_cost_usd": 0.0421, "modelUsage": {"claude-opus-4-1": {}},
                  "usage": {"input_tokens": 120, "cache_read_input_tokens": 30, "output_tokens": 45}}))
"#;

#[test]
fn claude_code_runs_in_a_task_folder_with_prompt_and_context_and_reports_cost() {
    let sb = Sandbox::new();
    let script = sb.write("fake_claude.py", FAKE_CLAUDE);
    sb.write("CHANGELOG.md", "## 1.2.0\n- --dry-run for deploy\n");
    let log = sb.path().join("log.json");
    let argv = json!(["python3", script, "-p", "--output-format", "json"]).to_string();
    let batch = json!({"tasks": [
        prompt_task("review", json!({"role": "reviewer",
            "instructions": "Review the changelog entry.", "files": ["CHANGELOG.md"],
            "context": {"release": "1.2.0"}, "output_schema": verdict_schema()})),
        {"task_id": "gate", "agent": "command", "dependencies": ["review"],
         "input_data": {"argv": ["echo", "{{tasks.review.output.json.verdict}}"]}},
    ]});
    let env = vec![
        // The default backend of the agent, from the environment.
        ("DISPATCH_PROMPT_BACKEND", "command".to_string()),
        ("DISPATCH_LLM_COMMAND", argv),
        ("FAKE_LOG", log.to_str().unwrap().to_string()),
        // Present but unused: it must not leak either.
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string()),
    ];
    let r = run(&sb, &batch, &env);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let out = &r.result("review")["output"];
    assert_eq!(out["backend"], "command");
    assert_eq!(out["json"]["verdict"], "request_changes");
    assert_eq!(out["usage"]["cost_usd"], 0.0421);
    assert_eq!(out["usage"]["input_tokens"], 150);
    assert_eq!(out["usage"]["output_tokens"], 45);
    assert_eq!(out["usage"]["model"], "claude-opus-4-1");
    assert_eq!(r.json["summary"]["usage"]["cost_usd"], 0.0421);
    assert_eq!(r.json["summary"]["usage"]["model_calls"], 1);
    assert_eq!(r.result("gate")["output"]["stdout"], "request_changes\n");

    let seen = read_json(&log);
    assert_eq!(seen["argv"], json!(["-p", "--output-format", "json"]));
    let prompt = seen["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("You are the reviewer."), "{prompt}");
    assert!(prompt.contains("Review the changelog entry."));
    assert!(
        prompt.contains("--dry-run for deploy"),
        "file missing: {prompt}"
    );
    let context = &seen["context"];
    assert_eq!(context["agent"], "prompt");
    assert_eq!(context["role"], "reviewer");
    assert_eq!(context["context"], json!({"release": "1.2.0"}));
    assert_eq!(context["files"][0]["path"], "CHANGELOG.md");
    assert_eq!(context["output_schema"], verdict_schema());
    // Its own folder outside the workspace, gone afterwards.
    let cwd = seen["cwd"].as_str().unwrap();
    assert!(cwd.contains("dispatch-llm-review-"), "{cwd}");
    assert!(!Path::new(cwd).starts_with(sb.path()));
    assert!(!Path::new(cwd).exists());
}

/// `examples/plan_build_review.json` runs as the docs describe: the planner's steps fan out to
/// builders, the reviewer's verdict reaches the gate.
#[test]
fn the_plan_build_review_example_runs_end_to_end() {
    let p = Provider::Anthropic;
    let api = MockApi::start(vec![
        p.ok(
            "{\"steps\": [\"Add the --dry-run flag to scripts/deploy.sh\", \"Document --dry-run in README.md\"]}",
            100,
            20,
        ),
        p.ok("Done: the change for this step.", 50, 10),
        p.ok("Done: the change for this step.", 50, 10),
        p.ok("{\"verdict\": \"approve\", \"comments\": []}", 200, 5),
    ]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plan_build_review.json");
    let batch: Value = read_json(&example);
    let sb = Sandbox::new();
    let r = run(&sb, &batch, &p.env(&api));
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        r.result("build")["output"]["summary"]["successful"],
        2,
        "{}",
        r.stdout
    );
    assert_eq!(r.result("gate")["output"]["stdout"], "verdict: approve\n");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 4);
    // Each builder got its own step as instructions.
    let builder_prompts: Vec<String> = reqs[1..3].iter().map(|r| p.turns(r)[0].1.clone()).collect();
    assert!(
        builder_prompts
            .iter()
            .any(|u| u.contains("Add the --dry-run flag to scripts/deploy.sh")),
        "{builder_prompts:?}"
    );
    assert!(
        builder_prompts
            .iter()
            .any(|u| u.contains("Document --dry-run in README.md"))
    );
    assert!(p.system(&reqs[3]).starts_with("You are the reviewer."));
    // The builders, tasks of the child batch, count in the run's usage too.
    assert_eq!(
        r.json["summary"]["usage"]["input_tokens"],
        100 + 2 * 50 + 200
    );
}

/// The agent's default backend from the configuration file; an OpenAI-compatible server of one's
/// own needs no key (none is sent).
#[test]
fn a_configured_default_backend_and_a_keyless_local_server_work() {
    let p = Provider::Openai;
    let api = MockApi::start(vec![p.ok("All three steps are independent.", 7, 3)]);
    let sb = Sandbox::new();
    let config = sb.write(
        "dispatch.yaml",
        &format!(
            "agents:\n  prompt:\n    backend: openai\nllm:\n  openai:\n    base_url: {}/v1\n    model: llama3\n",
            api.base
        ),
    );
    let batch = json!({"tasks": [prompt_task("think", json!({
        "role": "You are a terse analyst who answers in one sentence.",
        "instructions": "Are the steps independent?"}))]});
    let r = dr(
        &sb,
        &["--config", config.to_str().unwrap(), "run", "-q"],
        &batch,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    let out = &r.result("think")["output"];
    assert_eq!(out["backend"], "openai");
    assert_eq!(out["role"], "custom");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(reqs[0].body["model"], "llama3");
    assert!(
        p.system(&reqs[0])
            .starts_with("You are a terse analyst who answers in one sentence.")
    );
}

/// An output schema is never a way to make the runner fetch or read something: remote and file
/// references are refused when the batch is checked.
#[test]
fn schemas_with_remote_or_file_references_are_refused_at_validation() {
    let sb = Sandbox::new();
    let batch = json!({"tasks": [
        prompt_task("a", json!({"role": "analyst", "instructions": "x",
            "output_schema": {"$ref": "file:///etc/passwd"}})),
        prompt_task("b", json!({"role": "analyst", "instructions": "x",
            "output_schema": {"properties": {"v": {"$ref": "http://127.0.0.1:9/s.json"}}}})),
        prompt_task("c", json!({"role": "analyst", "instructions": "x",
            "output_schema": {"type": "nonsense"}})),
    ]});
    let r = dr(
        &sb,
        &["validate"],
        &batch,
        &[("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string())],
    );
    assert_eq!(r.code, 2, "{}", r.stdout);
    let errors = r.error_messages();
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/tasks/0/input_data/output_schema",
            "/tasks/1/input_data/output_schema",
            "/tasks/2/input_data/output_schema"
        ],
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|(_, m)| m.starts_with("is not a usable JSON Schema")),
        "{errors:?}"
    );
    assert!(!r.stdout.contains("root:"), "no file was read");
}
