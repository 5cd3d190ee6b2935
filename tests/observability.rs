//! The outputs of a real run with successes, a retry that passes, failures, a skip and a
//! timeout: metrics parsed back (and linted by promtool), JUnit checked against the Jenkins
//! xunit plugin's junit-10.xsd, the NDJSON stream against the trace, the Chrome trace, the
//! `report` subcommand, and progress on a non-terminal stderr.

mod common;
mod observe;

use std::path::PathBuf;

use common::Sandbox;
use dispatch_runner::reporter::metrics::{parse_text, sample};
use observe::{OUTPUT_FLAGS, attempt_count, mixed_batch, read_ndjson, xmllint_validate};
use serde_json::Value;

fn xsd() -> PathBuf {
    observe::junit_xsd()
}

/// The `<testcase>` element of task `id`, start tag to end tag.
fn junit_case(xml: &str, id: &str) -> String {
    let start = xml
        .find(&format!("<testcase name=\"{id}\" classname=\"command\""))
        .unwrap_or_else(|| panic!("no testcase {id}:\n{xml}"));
    let end = start + xml[start..].find("</testcase>").unwrap();
    xml[start..end].to_string()
}

struct MixedRun {
    sb: Sandbox,
    run: common::Run,
    trace: Value,
}

fn mixed_run(extra: &[&str]) -> MixedRun {
    let sb = Sandbox::new();
    let mut args = vec!["run"];
    args.extend_from_slice(&OUTPUT_FLAGS);
    args.extend_from_slice(extra);
    let run = sb.run_json(&args, &mixed_batch());
    assert_eq!(run.code, 1, "tasks failed, so exit 1: {}", run.stderr);
    let trace = run.trace();
    MixedRun { sb, run, trace }
}

fn task_attempts(trace: &Value, id: &str) -> usize {
    trace["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap()["attempts"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn mixed_run_statuses_are_as_designed() {
    let m = mixed_run(&[]);
    for (id, status) in [
        ("build", "success"),
        ("flaky", "success"),
        ("broken", "error"),
        ("after_broken", "skipped"),
        ("slow", "timeout"),
        ("package", "success"),
    ] {
        assert_eq!(m.run.status(id), status, "{id}");
    }
    assert_eq!(task_attempts(&m.trace, "flaky"), 2);
    assert_eq!(task_attempts(&m.trace, "broken"), 2);
}

#[test]
fn metrics_file_matches_the_run() {
    let m = mixed_run(&[]);
    let text = std::fs::read_to_string(m.sb.path().join("metrics.prom")).unwrap();
    let s = parse_text(&text).unwrap();
    let tasks = |status: &str| {
        sample(
            &s,
            "dispatch_tasks_total",
            &[("agent", "command"), ("status", status)],
        )
        .unwrap_or_else(|| panic!("no dispatch_tasks_total for {status}:\n{text}"))
    };
    assert_eq!(tasks("success"), 3.0);
    assert_eq!(tasks("error"), 1.0);
    assert_eq!(tasks("timeout"), 1.0);
    assert_eq!(tasks("skipped"), 1.0);
    assert_eq!(tasks("cancelled"), 0.0);
    let attempts = attempt_count(&m.trace) as f64;
    assert_eq!(
        sample(&s, "dispatch_task_attempts_total", &[("agent", "command")]),
        Some(attempts)
    );
    let retries = m.trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "retry_scheduled")
        .count() as f64;
    assert_eq!(retries, 2.0);
    assert_eq!(
        sample(&s, "dispatch_task_retries_total", &[("agent", "command")]),
        Some(retries)
    );
    // Five tasks started (the skipped one never did), so five durations were observed.
    assert_eq!(
        sample(
            &s,
            "dispatch_task_duration_seconds_count",
            &[("agent", "command")]
        ),
        Some(5.0)
    );
    // The same metric types as `serve`: the run is one observation of the run histogram and
    // one count of its status; there is no in-flight gauge in a file written at the end.
    common::promtool_check("the --metrics-file file", &text);
    assert_eq!(
        sample(&s, "dispatch_run_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "dispatch_runs_total", &[("status", "partial")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "dispatch_runs_total", &[("status", "success")]),
        Some(0.0)
    );
    assert!(
        text.contains("# TYPE dispatch_run_duration_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains("dispatch_runs_in_flight"), "{text}");
    let run_secs = sample(&s, "dispatch_run_duration_seconds_sum", &[]).unwrap();
    let total_ms = m.run.json["summary"]["total_time_ms"].as_f64().unwrap();
    assert!(
        (run_secs - total_ms / 1000.0).abs() < 0.002,
        "{run_secs} vs {total_ms}"
    );
    // Local commands have no breaker (tests/breakers.rs checks the gauge of a named one).
    assert_eq!(
        sample(
            &s,
            "dispatch_circuit_breaker_state",
            &[("breaker", "command")]
        ),
        None
    );
    // Bounded labels: no task id appears anywhere in the metrics.
    for id in [
        "build",
        "flaky",
        "broken",
        "after_broken",
        "slow",
        "package",
    ] {
        assert!(
            !text.contains(&format!("\"{id}\"")),
            "task id {id} in metrics"
        );
    }
}

#[test]
fn junit_is_valid_and_maps_every_ending() {
    let m = mixed_run(&[]);
    let path = m.sb.path().join("junit.xml");
    xmllint_validate(&path, &xsd()).unwrap_or_else(|e| panic!("JUnit does not validate:\n{e}"));
    let xml = std::fs::read_to_string(&path).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 6);
    assert!(
        xml.contains("tests=\"6\" failures=\"2\" errors=\"0\" skipped=\"1\""),
        "{xml}"
    );
    // Flaky detail where junit-10.xsd allows it: suite properties and the retry elements' text.
    assert!(
        xml.contains("<property name=\"flaky_tasks\" value=\"1\"/>")
            && xml.contains("<property name=\"retries\" value=\"2\"/>"),
        "{xml}"
    );
    let case = |id: &str| junit_case(&xml, id);
    let flaky = case("flaky");
    assert!(
        flaky.contains(
            "<flakyFailure message=\"attempt 1: &apos;sh&apos; exited with code 3: first try fails"
        ) && flaky.contains("type=\"exit_status\">started 20")
            && flaky.contains(" s</flakyFailure>"),
        "{flaky}"
    );
    assert!(!flaky.contains("<failure"), "{flaky}");
    for line in xml.lines().filter(|l| l.contains("<testcase ")) {
        assert!(!line.contains("timestamp="), "{line}");
    }
    let broken = case("broken");
    assert!(broken.contains("<failure message=\"&apos;sh&apos; exited with code 1: assertion &lt;failed&gt; &amp; more\" type=\"exit_status\""), "{broken}");
    assert_eq!(broken.matches("<rerunFailure ").count(), 1, "{broken}");
    let slow = case("slow");
    assert!(
        slow.contains("<failure ") && slow.contains("type=\"timeout\""),
        "{slow}"
    );
    assert!(
        case("after_broken").contains("<skipped message=\"skipped: dependency &apos;broken&apos;")
    );
    assert!(case("build").contains("<system-out>built"));
}

#[test]
fn junit_surefire_format_keeps_nextest_timestamps() {
    let m = mixed_run(&["--junit-format", "surefire"]);
    let path = m.sb.path().join("junit.xml");
    let xml = std::fs::read_to_string(&path).unwrap();
    let wellformed = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg(&path)
        .output()
        .unwrap();
    assert!(wellformed.status.success(), "{wellformed:?}");
    let flaky = junit_case(&xml, "flaky");
    assert!(
        flaky.starts_with("<testcase name=\"flaky\" classname=\"command\" time=\"")
            && flaky.contains("\" timestamp=\"20"),
        "{flaky}"
    );
    let element = flaky
        .lines()
        .find(|l| l.contains("<flakyFailure "))
        .unwrap_or_else(|| panic!("{flaky}"));
    assert!(
        element.contains(" timestamp=\"20")
            && element.contains(" time=\"")
            && element.ends_with("/>"),
        "{element}"
    );
    let broken = junit_case(&xml, "broken");
    assert_eq!(broken.matches("<rerunFailure ").count(), 1, "{broken}");
    assert!(
        broken.contains("<rerunFailure message=\"attempt 1: "),
        "{broken}"
    );
    // Exactly what junit-10.xsd refuses: this is why it is not the default.
    let err =
        xmllint_validate(&path, &xsd()).expect_err("surefire attributes are outside junit-10.xsd");
    assert!(
        err.contains("attribute 'timestamp': The attribute 'timestamp' is not allowed")
            && err.contains("attribute 'time': The attribute 'time' is not allowed"),
        "{err}"
    );
    // The report subcommand writes the same dialect from the trace.
    let trace_file = m.run.json["trace_file"].as_str().unwrap().to_string();
    let out = m.sb.run(
        &[
            "report",
            &trace_file,
            "--junit",
            "again.xml",
            "--junit-format",
            "surefire",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(m.sb.path().join("again.xml")).unwrap(),
        xml
    );
}

#[test]
fn invalid_junit_is_rejected_by_the_schema() {
    // The schema check can fail: an unknown element, and a testcase without a name.
    let sb = Sandbox::new();
    let bad = sb.write(
        "bad.xml",
        "<testsuites><testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"0\">\
         <testcase name=\"t\" time=\"0\"><oops/></testcase></testsuite></testsuites>",
    );
    assert!(xmllint_validate(&bad, &xsd()).is_err());
    let nameless = sb.write(
        "nameless.xml",
        "<testsuites><testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"0\">\
         <testcase classname=\"c\" time=\"0\"/></testsuite></testsuites>",
    );
    assert!(xmllint_validate(&nameless, &xsd()).is_err());
}

#[test]
fn ndjson_stream_matches_the_trace() {
    let m = mixed_run(&[]);
    let lines = read_ndjson(&m.sb.path().join("events.ndjson"));
    let events = m.trace["events"].as_array().unwrap();
    assert!(events.len() > 20, "a real event list: {}", events.len());
    assert_eq!(&lines, events);
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
    }
    assert_eq!(lines.first().unwrap()["event"], "run_started");
    assert_eq!(lines.last().unwrap()["event"], "run_finished");
}

#[test]
fn chrome_trace_has_one_complete_event_per_attempt() {
    let m = mixed_run(&[]);
    let chrome: Value =
        serde_json::from_str(&std::fs::read_to_string(m.sb.path().join("chrome.json")).unwrap())
            .unwrap();
    let events = chrome["traceEvents"].as_array().unwrap();
    let complete: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(complete.len(), attempt_count(&m.trace));
    for e in &complete {
        assert!(
            e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() > 0.0,
            "{e}"
        );
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
    }
    let slow = complete.iter().find(|e| e["name"] == "slow").unwrap();
    assert_eq!(slow["args"]["outcome"], "timeout");
    assert!(slow["dur"].as_f64().unwrap() >= 450_000.0, "µs: {slow}");
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"worker 0") && names.contains(&"scheduler"),
        "{names:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["ph"] == "i" && e["name"].as_str().unwrap().starts_with("retry "))
            .count(),
        2
    );
}

#[test]
fn report_subcommand_rebuilds_the_same_files_from_the_trace() {
    let m = mixed_run(&[]);
    let trace_file = m.run.json["trace_file"].as_str().unwrap().to_string();
    let out = m.sb.run(
        &[
            "report",
            &trace_file,
            "--html",
            "again.html",
            "--chrome-trace",
            "again.json",
            "--junit",
            "again.xml",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json["status"], "written");
    assert_eq!(out.json["files"]["html"], "again.html");
    let read = |n: &str| std::fs::read_to_string(m.sb.path().join(n)).unwrap();
    // Rendered from the same events, so byte for byte the same as during the run.
    assert_eq!(read("again.html"), read("report.html"));
    assert_eq!(read("again.json"), read("chrome.json"));
    assert_eq!(read("again.xml"), read("junit.xml"));
}

#[test]
fn report_rejects_bad_input_with_exit_2() {
    let sb = Sandbox::new();
    let out = sb.run(&["report", "missing.json", "--html", "r.html"], "");
    assert_eq!(out.code, 2);
    assert!(
        out.error_messages()[0]
            .1
            .contains("cannot read trace 'missing.json'"),
        "{}",
        out.stdout
    );
    sb.write("not-a-trace.json", "{\"hello\": 1}");
    let out = sb.run(&["report", "not-a-trace.json", "--html", "r.html"], "");
    assert_eq!(out.code, 2);
    assert!(
        out.error_messages()[0].1.contains("is not a trace"),
        "{}",
        out.stdout
    );
    let out = sb.run(&["report", "not-a-trace.json"], "");
    assert_eq!(out.code, 2);
    assert!(out.error_messages()[0].1.contains("nothing to write"));
    assert!(!sb.path().join("r.html").exists());
}

#[test]
fn unwritable_output_fails_before_anything_runs() {
    let sb = Sandbox::new();
    let batch = serde_json::json!({"tasks": [{"task_id": "t", "agent": "command",
        "input_data": {"argv": ["touch", "ran"]}}]});
    let out = sb.run_json(&["run", "--junit", "no/such/dir/j.xml"], &batch);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.error_messages()[0]
            .1
            .contains("--junit 'no/such/dir/j.xml'"),
        "{}",
        out.stdout
    );
    assert!(!sb.path().join("ran").exists(), "nothing may run");
}

#[test]
fn output_that_cannot_be_written_at_the_end_is_exit_3_with_the_result() {
    // The folder exists at the check and is gone when the run ends.
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("out")).unwrap();
    let batch = serde_json::json!({"tasks": [{"task_id": "t", "agent": "command",
        "input_data": {"argv": ["rm", "-r", "out"]}}]});
    let out = sb.run_json(&["run", "--html", "out/r.html"], &batch);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.json["status"], "success", "the result is still printed");
    assert!(
        out.stderr.contains("cannot write --html 'out/r.html'"),
        "{}",
        out.stderr
    );
}

#[test]
fn plain_status_lines_when_stderr_is_not_a_terminal() {
    let sb = Sandbox::new();
    let batch = serde_json::json!({"tasks": [
        {"task_id": "a", "agent": "command", "input_data": {"argv": ["sleep", "2"]}},
        {"task_id": "b", "agent": "command", "input_data": {"argv": ["sleep", "2"]}}]});
    let started = std::time::Instant::now();
    let out = sb.run_json(&["run", "--status-interval", "0.5"], &batch);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.code, 0);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("tasks done"))
        .collect();
    assert!(!lines.is_empty(), "{}", out.stderr);
    // At most one line per interval (plus one for rounding at the edges).
    assert!(
        lines.len() as f64 <= secs / 0.5 + 1.0,
        "{} lines in {secs}s",
        lines.len()
    );
    assert!(
        lines[0].contains("0/2 tasks done") && lines[0].contains("2 running"),
        "{}",
        lines[0]
    );
    // No terminal control sequences in a log.
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);

    let quiet = sb.run_json(&["run", "--quiet", "--status-interval", "0.5"], &batch);
    assert_eq!(quiet.code, 0);
    assert_eq!(quiet.stderr, "", "--quiet prints nothing");
}

#[test]
fn default_interval_prints_nothing_for_a_short_run() {
    let sb = Sandbox::new();
    let batch = serde_json::json!({"tasks": [
        {"task_id": "a", "agent": "command", "input_data": {"argv": ["true"]}}]});
    let out = sb.run_json(&["run"], &batch);
    assert!(!out.stderr.contains("tasks done"), "{}", out.stderr);
}

/// The live display on a pseudo-terminal (`script` from bsdutils gives the child a pty).
#[test]
fn live_display_on_a_terminal() {
    let sb = Sandbox::new();
    sb.write(
        "b.json",
        &serde_json::json!({"tasks": [
            {"task_id": "long_task", "agent": "command", "input_data": {"argv": ["sleep", "1.5"]}},
            {"task_id": "doomed", "agent": "command", "input_data": {"argv": ["sh", "-c", "sleep 0.3; exit 4"]}}]})
        .to_string(),
    );
    let cmd = format!(
        "{} run -f b.json --trace-dir traces > result.json",
        common::bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "typescript.log"])
        .current_dir(sb.path())
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .output()
        .expect("run script(1) (run scripts/install-test-deps)");
    assert!(out.status.code().is_some(), "{out:?}");
    let screen = std::fs::read_to_string(sb.path().join("typescript.log")).unwrap();
    assert!(
        screen.contains("long_task (command)"),
        "running task line:\n{screen}"
    );
    assert!(screen.contains("/2 tasks"), "done/total:\n{screen}");
    assert!(
        screen.contains("✗ doomed error: exit_status"),
        "failure line:\n{screen}"
    );
    // NO_COLOR: cursor movement is fine, colour (SGR) sequences are not.
    assert!(
        !screen.contains("\u{1b}[3"),
        "colour with NO_COLOR:\n{screen:?}"
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["summary"]["failed"], 1);
}
