//! `--pushgateway` against the real Prometheus Pushgateway (Debian `prometheus-pushgateway`),
//! started here on loopback; the pushed metrics are read back over HTTP and parsed, and linted
//! with promtool (as is the exact body pushed, recorded by a stand-in gateway).

mod common;
#[path = "common/mockapi.rs"]
mod mockapi;
mod observe;

use common::Sandbox;
use dispatch_runner::reporter::metrics::{parse_text, sample};
use observe::{free_port, mixed_batch, start_pushgateway};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_pushed_and_read_back() {
    let sb = Sandbox::new();
    let gateway = start_pushgateway(sb.path()).await;
    let url = gateway.base.clone();
    let batch = mixed_batch();
    let run = tokio::task::spawn_blocking(move || {
        let run = sb.run_json(
            &["run", "--pushgateway", &url, "--metrics-file", "m.prom"],
            &batch,
        );
        (sb, run)
    });
    let (sb, run) = run.await.unwrap();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);

    let text = dispatch_runner::http::client_builder()
        .build()
        .unwrap()
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let pushed = |name: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        // The Pushgateway adds the grouping labels: job, and an empty instance.
        labels.extend([("job", "dispatch_runner"), ("instance", "")]);
        sample(&s, name, &labels)
    };
    let status = |st| {
        pushed(
            "dispatch_tasks_total",
            &[("agent", "command"), ("status", st)],
        )
    };
    assert_eq!(status("success"), Some(3.0), "{text}");
    assert_eq!(status("error"), Some(1.0));
    assert_eq!(status("timeout"), Some(1.0));
    assert_eq!(status("skipped"), Some(1.0));
    assert_eq!(
        pushed("dispatch_task_retries_total", &[("agent", "command")]),
        Some(2.0)
    );
    assert_eq!(
        pushed("dispatch_task_attempts_total", &[("agent", "command")]),
        Some(observe::attempt_count(&run.trace()) as f64)
    );
    assert!(pushed("dispatch_run_duration_seconds_sum", &[]).unwrap() > 0.4);
    assert_eq!(
        pushed("dispatch_runs_total", &[("status", "partial")]),
        Some(1.0)
    );
    // What a Prometheus scraping the gateway reads: our metrics plus the gateway's own.
    common::promtool_check("the Pushgateway's /metrics", &text);
    // The gateway's own record of the push succeeding.
    let last_ok = s
        .iter()
        .find(|(n, l, _)| {
            n == "push_time_seconds" && l.iter().any(|(k, v)| k == "job" && v == "dispatch_runner")
        })
        .map(|x| x.2);
    assert!(last_ok.is_some_and(|t| t > 0.0), "{text}");
    // The same numbers went to the file.
    let file = parse_text(&std::fs::read_to_string(sb.path().join("m.prom")).unwrap()).unwrap();
    assert_eq!(
        sample(
            &file,
            "dispatch_tasks_total",
            &[("agent", "command"), ("status", "success")]
        ),
        Some(3.0)
    );
}

#[test]
fn the_pushed_body_passes_promtool() {
    let gateway = mockapi::MockApi::start(vec![mockapi::raw(200, "")]);
    let sb = Sandbox::new();
    let run = sb.run_json(
        &[
            "run",
            "--pushgateway",
            &gateway.base,
            "--metrics-file",
            "m.prom",
        ],
        &mixed_batch(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let requests = gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/metrics/job/dispatch_runner");
    let body = requests[0].body.as_str().expect("a text body");
    common::promtool_check("the pushed body", body);
    assert!(
        body.contains("dispatch_runs_total{status=\"partial\"} 1"),
        "{body}"
    );
    assert_eq!(
        body,
        std::fs::read_to_string(sb.path().join("m.prom")).unwrap(),
        "the file and the push hold the same metrics"
    );
}

#[test]
fn unreachable_pushgateway_is_a_warning_not_a_failed_run() {
    let sb = Sandbox::new();
    // A port nobody listens on.
    let url = format!("http://127.0.0.1:{}", free_port());
    let batch = serde_json::json!({"tasks": [{"task_id": "t", "agent": "command",
        "input_data": {"argv": ["true"]}}]});
    let run = sb.run_json(&["run", "--pushgateway", &url], &batch);
    assert_eq!(run.code, 0, "the run succeeded: {}", run.stderr);
    assert_eq!(run.json["status"], "success");
    assert!(
        run.stderr.contains("warning: cannot push metrics"),
        "{}",
        run.stderr
    );
}

#[test]
fn pushgateway_url_must_be_http() {
    let sb = Sandbox::new();
    let out = sb
        .cmd(&["run", "--pushgateway", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an http:// or https:// URL"));
}
