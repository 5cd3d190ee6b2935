//! The model backends end to end through the real binary, against local stand-ins of the
//! Anthropic Messages API, an OpenAI-compatible chat-completions server, and a script playing the
//! `claude` CLI. No key or internet is needed: the keys are made up and the servers are on
//! 127.0.0.1.

#[path = "common/agents.rs"]
mod agents;
mod common;
#[path = "common/mockapi.rs"]
mod mockapi;
#[path = "common/modules.rs"]
mod modules;

use agents::run_with_env;
use common::*;
use mockapi::*;
use serde_json::{Value, json};

impl Provider {
    /// The user turns of a recorded request, in order.
    fn user_turns(self, req: &Recorded) -> Vec<String> {
        req.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    }

    fn assert_request(self, req: &Recorded) {
        assert_eq!(req.method, "POST");
        match self {
            Provider::Anthropic => {
                assert_eq!(req.path, "/v1/messages");
                assert_eq!(req.header("x-api-key"), Some(ANTHROPIC_KEY));
                assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(req.body["model"], "claude-sonnet-4-5");
                assert!(req.body["max_tokens"].as_u64().unwrap() > 0);
                assert!(req.body["system"].as_str().unwrap().contains("ONEX"));
                assert_eq!(req.body["messages"][0]["role"], "user");
            }
            Provider::Openai => {
                assert_eq!(req.path, "/v1/chat/completions");
                assert_eq!(
                    req.header("authorization"),
                    Some(format!("Bearer {OPENAI_KEY}").as_str())
                );
                assert_eq!(req.body["model"], "gpt-4o-mini");
                assert_eq!(req.body["messages"][0]["role"], "system");
                assert!(
                    req.body["messages"][0]["content"]
                        .as_str()
                        .unwrap()
                        .contains("ONEX")
                );
                assert_eq!(req.body["messages"][1]["role"], "user");
            }
        }
        assert!(
            req.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
    }
}

fn coder_task(id: &str, backend: &str) -> Value {
    json!({"task_id": id, "agent": "coder", "input_data": {
        "contract_description": "Fetch a user record from the directory service by id",
        "node_type": "Effect", "output_path": "gen/node_fetch_user_effect.py",
        "backend": backend}})
}

fn run_provider(sb: &Sandbox, p: Provider, api: &MockApi, batch: &Value) -> Run {
    let env = p.env(api);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = run_with_env(sb, batch, &env, &[]);
    // Keys never reach the output or the trace.
    for key in [ANTHROPIC_KEY, OPENAI_KEY] {
        assert!(!run.stdout.contains(key) && !run.stderr.contains(key));
        assert!(!run.trace().to_string().contains(key));
    }
    run
}

#[test]
fn success_sends_contract_context_and_upstream_output_and_counts_usage() {
    for p in BOTH {
        let api = MockApi::start(vec![p.ok(&fenced(modules::GOOD_EFFECT), 1200, 300)]);
        let sb = Sandbox::new();
        sb.write(
            "schema.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
        );
        let mut task = coder_task("gen", p.name());
        task["input_data"]["context_files"] = json!(["schema.sql"]);
        task["dependencies"] = json!(["spec"]);
        let batch = json!({"tasks": [
            sh_task("spec", "echo users are keyed by integer id", &[]), task]});
        let run = run_provider(&sb, p, &api, &batch);
        assert_eq!(run.code, 0, "{p:?}: {}", run.stdout);
        let out = &run.result("gen")["output"];
        assert_eq!(out["backend"], p.name());
        assert_eq!(out["scaffold"], false);
        assert_eq!(out["attempts"], 1);
        assert_eq!(out["validation"]["passed"], true);
        assert_eq!(out["usage"]["input_tokens"], 1200);
        assert_eq!(out["usage"]["output_tokens"], 300);
        assert_eq!(out["usage"]["model_calls"], 1);
        // Written exactly as the model wrote it (the fence removed).
        let written =
            std::fs::read_to_string(sb.path().join("gen/node_fetch_user_effect.py")).unwrap();
        assert_eq!(written, modules::GOOD_EFFECT);

        let reqs = api.requests();
        assert_eq!(reqs.len(), 1);
        p.assert_request(&reqs[0]);
        let prompt = &p.user_turns(&reqs[0])[0];
        assert!(
            prompt.contains("Fetch a user record from the directory service"),
            "{prompt}"
        );
        assert!(
            prompt.contains("CREATE TABLE users"),
            "context file missing: {prompt}"
        );
        assert!(
            prompt.contains("users are keyed by integer id"),
            "upstream output missing: {prompt}"
        );
        assert!(prompt.contains("NodeFetchUserEffect"));

        // Cost from the price table, summed in the run summary.
        let expected = match p {
            Provider::Anthropic => (1200.0 * 3.0 + 300.0 * 15.0) / 1e6,
            Provider::Openai => (1200.0 * 0.15 + 300.0 * 0.6) / 1e6,
        };
        let cost = out["usage"]["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - expected).abs() < 1e-12,
            "{p:?}: {cost} vs {expected}"
        );
        let summary = &run.json["summary"]["usage"];
        assert_eq!(summary["input_tokens"], 1200);
        assert_eq!(summary["model_calls"], 1);
        assert!((summary["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12);
    }
}

#[test]
fn invalid_code_is_sent_back_with_the_issues_and_repaired() {
    for p in BOTH {
        let api = MockApi::start(vec![
            p.ok(&fenced(&modules::not_async()), 100, 50),
            p.ok(&fenced(modules::GOOD_EFFECT), 200, 60),
        ]);
        let sb = Sandbox::new();
        let run = run_provider(
            &sb,
            p,
            &api,
            &json!({"tasks": [coder_task("gen", p.name())]}),
        );
        assert_eq!(run.code, 0, "{p:?}: {}", run.stdout);
        let out = &run.result("gen")["output"];
        assert_eq!(out["attempts"], 2);
        assert_eq!(out["usage"]["input_tokens"], 300);
        assert_eq!(out["usage"]["model_calls"], 2);
        assert_eq!(run.json["summary"]["usage"]["model_calls"], 2);
        let reqs = api.requests();
        assert_eq!(reqs.len(), 2);
        p.assert_request(&reqs[1]);
        // The repair request carries the first reply and the validator's issues.
        let msgs = reqs[1].body["messages"].as_array().unwrap();
        let assistant = msgs.iter().find(|m| m["role"] == "assistant").unwrap();
        assert!(
            assistant["content"]
                .as_str()
                .unwrap()
                .contains("def execute_effect")
        );
        let turns = p.user_turns(&reqs[1]);
        assert_eq!(turns.len(), 2);
        assert!(turns[1].contains("entry_async"), "{}", turns[1]);
        assert!(turns[1].contains("line 27"), "{}", turns[1]);
    }
}

#[test]
fn repairs_stop_at_the_limit_and_the_file_is_kept_for_inspection() {
    let p = Provider::Anthropic;
    let broken = fenced(&modules::syntax_broken());
    let api = MockApi::start(vec![
        p.ok(&broken, 1, 1),
        p.ok(&broken, 1, 1),
        p.ok(&broken, 1, 1),
    ]);
    let sb = Sandbox::new();
    let run = run_provider(
        &sb,
        p,
        &api,
        &json!({"tasks": [coder_task("gen", "anthropic")]}),
    );
    assert_eq!(run.code, 1);
    let r = run.result("gen");
    assert_eq!(r["error"]["kind"], "validation_failed");
    // One call plus the default two repairs.
    assert_eq!(r["output"]["attempts"], 3);
    assert_eq!(api.requests().len(), 3);
    assert_eq!(r["output"]["written"], true);
    assert!(sb.path().join("gen/node_fetch_user_effect.py").exists());
}

#[test]
fn rate_limit_is_transient_and_retry_after_is_honoured() {
    for p in BOTH {
        let api = MockApi::start(vec![
            error(429, &[("retry-after", "1")], "rate limited"),
            p.ok(&fenced(modules::GOOD_EFFECT), 10, 10),
        ]);
        let sb = Sandbox::new();
        let mut task = coder_task("gen", p.name());
        task["retries"] = json!(1);
        let batch = json!({"tasks": [task], "config": {"retry_backoff_ms": 10}});
        let run = run_provider(&sb, p, &api, &batch);
        assert_eq!(run.code, 0, "{p:?}: {}", run.stdout);
        assert_eq!(run.result("gen")["attempts"], 2);
        let trace = run.trace();
        let finished = events(&trace, "attempt_finished");
        assert_eq!(finished[0]["error"]["kind"], "model_rate_limited");
        let retry = events(&trace, "retry_scheduled");
        // The 10 ms backoff was raised to the server's one second.
        assert!(
            retry[0]["delay_ms"].as_u64().unwrap() >= 1000,
            "{:?}",
            retry[0]
        );
    }
}

#[test]
fn server_errors_are_transient_and_client_errors_permanent() {
    for p in BOTH {
        // 500 then 500: transient, retried once, then reported.
        let api = MockApi::start(vec![
            error(500, &[], "overloaded"),
            error(500, &[], "overloaded"),
        ]);
        let sb = Sandbox::new();
        let mut task = coder_task("gen", p.name());
        task["retries"] = json!(1);
        let batch = json!({"tasks": [task], "config": {"retry_backoff_ms": 10}});
        let run = run_provider(&sb, p, &api, &batch);
        assert_eq!(run.code, 1);
        let r = run.result("gen");
        assert_eq!(r["error"]["kind"], "model_unavailable", "{p:?}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("overloaded")
        );
        assert_eq!(r["attempts"], 2);
        assert!(
            !sb.path().join("gen").exists(),
            "nothing is written without code"
        );

        // 401: permanent, not retried even with retries left.
        let api = MockApi::start(vec![error(401, &[], "invalid x-api-key")]);
        let run = run_provider(&sb, p, &api, &json!({"tasks": [task]}));
        let r = run.result("gen");
        assert_eq!(r["error"]["kind"], "model_request_rejected", "{p:?}");
        assert_eq!(r["attempts"], 1);
        assert_eq!(api.requests().len(), 1);
    }
}

#[test]
fn malformed_bodies_are_reported_as_such() {
    for p in BOTH {
        let api = MockApi::start(vec![
            raw(200, "<html>gateway</html>"),
            raw(200, r#"{"id": "x"}"#),
        ]);
        let sb = Sandbox::new();
        let batch = json!({"tasks": [coder_task("a", p.name()), coder_task("b", p.name())],
                           "config": {"max_workers": 1}});
        // Both tasks write the same file; neither gets that far.
        let run = run_provider(&sb, p, &api, &batch);
        for id in ["a", "b"] {
            let r = run.result(id);
            assert_eq!(
                r["error"]["kind"], "model_malformed_response",
                "{p:?} {id}: {r}"
            );
        }
        let msgs: Vec<&str> = ["a", "b"]
            .iter()
            .map(|id| run.result(id)["error"]["message"].as_str().unwrap())
            .collect();
        assert!(msgs.iter().any(|m| m.contains("not JSON")), "{msgs:?}");
    }
}

#[test]
fn missing_key_is_a_clear_permanent_error() {
    let sb = Sandbox::new();
    let run = agents::run_offline(&sb, &json!({"tasks": [coder_task("gen", "anthropic")]}));
    let r = run.result("gen");
    assert_eq!(r["error"]["kind"], "model_not_configured");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ANTHROPIC_API_KEY")
    );
}

#[test]
fn configured_default_backend_applies_when_the_task_names_none() {
    let api = MockApi::start(vec![anthropic_ok(&fenced(modules::GOOD_EFFECT), 5, 5)]);
    let sb = Sandbox::new();
    let mut task = coder_task("gen", "anthropic");
    task["input_data"]
        .as_object_mut()
        .unwrap()
        .remove("backend");
    let env = Provider::Anthropic.env(&api);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("DISPATCH_CODER_BACKEND", "anthropic"));
    let run = run_with_env(&sb, &json!({"tasks": [task]}), &env, &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.result("gen")["output"]["backend"], "anthropic");
    assert_eq!(api.requests().len(), 1);
}

#[test]
fn debug_deep_asks_the_model_and_reports_usage() {
    let api = MockApi::start(vec![anthropic_ok(
        "The divisor `count` is zero when the list is empty; guard it.",
        400,
        40,
    )]);
    let sb = Sandbox::new();
    sb.write("stats.py", "def mean(xs):\n    return sum(xs) / len(xs)\n");
    let batch = json!({"tasks": [{"task_id": "dbg", "agent": "debug", "input_data": {
        "problem_description": "mean() crashes on empty input",
        "affected_files": ["stats.py"], "analysis_depth": "deep", "backend": "anthropic"}}]});
    let run = run_provider(&sb, Provider::Anthropic, &api, &batch);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let out = &run.result("dbg")["output"];
    assert!(out["model_analysis"].as_str().unwrap().contains("divisor"));
    assert_eq!(out["usage"]["input_tokens"], 400);
    assert_eq!(run.json["summary"]["usage"]["output_tokens"], 40);
    let req = &api.requests()[0];
    assert_eq!(req.header("x-api-key"), Some(ANTHROPIC_KEY));
    let prompt = req.body["messages"][0]["content"].as_str().unwrap();
    assert!(prompt.contains("return sum(xs) / len(xs)"), "{prompt}");
    assert!(prompt.contains("mean() crashes on empty input"));
}

/// A stand-in for `claude -p --output-format json`: checks its working folder, keeps what it
/// was given for the test to read, and answers in Claude Code's JSON result format.
const FAKE_CLAUDE: &str = r#"
import json, os, sys
prompt = sys.stdin.read()
assert os.path.isfile("prompt.txt") and open("prompt.txt").read() == prompt
context = json.load(open("context.json"))
with open(os.environ["FAKE_LOG"], "w") as log:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv[1:], "prompt": prompt, "context": context}, log)
module = open(os.environ["FAKE_MODULE"]).read()
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "result": "```python\n" + module + "```", "total_cost_usd": 0.0123,
                  "usage": {"input_tokens": 50, "cache_read_input_tokens": 10, "output_tokens": 70}}))
"#;

#[test]
fn command_backend_runs_the_cli_in_a_task_folder_and_parses_its_json() {
    let sb = Sandbox::new();
    let script = sb.write("fake_claude.py", FAKE_CLAUDE);
    let module = sb.write("module.txt", modules::GOOD_EFFECT);
    let log = sb.path().join("log.json");
    let argv = json!(["python3", script, "-p", "--output-format", "json"]).to_string();
    let batch = json!({"tasks": [coder_task("gen", "command")]});
    let run = run_with_env(
        &sb,
        &batch,
        &[
            ("DISPATCH_LLM_COMMAND", &argv),
            ("FAKE_LOG", log.to_str().unwrap()),
            ("FAKE_MODULE", module.to_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = &run.result("gen")["output"];
    assert_eq!(out["backend"], "command");
    assert_eq!(out["usage"]["cost_usd"], 0.0123);
    assert_eq!(out["usage"]["input_tokens"], 60);
    assert_eq!(run.json["summary"]["usage"]["cost_usd"], 0.0123);
    let seen = read_json(&log);
    assert_eq!(seen["argv"], json!(["-p", "--output-format", "json"]));
    assert!(
        seen["prompt"]
            .as_str()
            .unwrap()
            .contains("Fetch a user record")
    );
    assert_eq!(seen["context"]["node_type"], "Effect");
    assert_eq!(seen["context"]["class_name"], "NodeFetchUserEffect");
    // A per-task folder outside the workspace, gone afterwards.
    let cwd = seen["cwd"].as_str().unwrap();
    assert!(cwd.contains("dispatch-llm-gen-"), "{cwd}");
    assert!(!std::path::Path::new(cwd).exists());
    assert_eq!(
        std::fs::read_to_string(sb.path().join("gen/node_fetch_user_effect.py")).unwrap(),
        modules::GOOD_EFFECT
    );
}

#[test]
fn command_backend_plain_stdout_is_the_answer() {
    let sb = Sandbox::new();
    let module = sb.write("module.txt", modules::GOOD_EFFECT);
    let argv = json!(["cat", module]).to_string();
    let run = run_with_env(
        &sb,
        &json!({"tasks": [coder_task("gen", "command")]}),
        &[("DISPATCH_LLM_COMMAND", &argv)],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    let out = &run.result("gen")["output"];
    assert_eq!(out["usage"]["model_calls"], 1);
    assert_eq!(out["usage"]["cost_usd"], Value::Null);
}
