//! `serve`'s `/metrics` as a Prometheus server sees it, over real HTTP on loopback: every
//! counter at zero before the first run, runs counted by status, a run-duration histogram, the
//! runs in flight; each exposition linted by promtool; and a real Prometheus (Debian
//! `prometheus`) scraping the server and answering queries about it.

mod common;
mod observe;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, client, promtool_check, sh_task};
use dispatch_runner::reporter::metrics::{Sample, parse_text, sample};
use serde_json::{Value, json};

struct Serve {
    child: Child,
    base: String,
    sb: Sandbox,
}

impl Serve {
    fn start() -> Serve {
        let sb = Sandbox::new();
        let mut child = sb
            .cmd(&["serve", "--listen", "127.0.0.1:0", "--trace-dir", "tr"])
            .env_remove("DISPATCH_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = common::listening_base(&mut child);
        Serve { child, base, sb }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/metrics`, checked by promtool (`when` names the moment in a failure message).
    async fn metrics(&self, when: &str) -> (String, Vec<Sample>) {
        let resp = client().get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.unwrap();
        promtool_check(&format!("serve /metrics {when}"), &text);
        let samples = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        (text, samples)
    }

    async fn dispatch(&self, batch: &Value, wait: bool) -> Value {
        let path = if wait {
            "/v1/dispatch"
        } else {
            "/v1/dispatch?wait=false"
        };
        let resp = client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(batch.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json().await.unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {s:?}"))
}

fn runs(s: &[Sample], status: &str) -> f64 {
    value(s, "dispatch_runs_total", &[("status", status)])
}

/// A task that waits until the file `gate` exists, so a run stays in flight as long as the test
/// wants (no timing guesses).
fn gated(sb: &Sandbox, gate: &str) -> Value {
    let path = sb.path().join(gate);
    json!({"tasks": [sh_task("wait", &format!("while [ ! -e '{}' ]; do sleep 0.05; done", path.display()), &[])],
           "config": {"timeout_seconds": 120}})
}

/// Polls `/metrics` until `cond` holds (each answer linted), at most 30 s.
async fn metrics_until(
    server: &Serve,
    when: &str,
    cond: impl Fn(&[Sample]) -> bool,
) -> (String, Vec<Sample>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, s) = server.metrics(when).await;
        if cond(&s) {
            return (text, s);
        }
        assert!(Instant::now() < deadline, "never true {when}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_metrics_pass_promtool_before_during_and_after_runs() {
    let server = Serve::start();

    // Before any run: every series with known labels is there, at zero.
    let (text, s) = server.metrics("before any run").await;
    for status in ["success", "partial", "failure"] {
        assert_eq!(runs(&s, status), 0.0, "{text}");
    }
    assert_eq!(value(&s, "dispatch_runs_in_flight", &[]), 0.0);
    assert_eq!(value(&s, "dispatch_run_duration_seconds_count", &[]), 0.0);
    for agent in ["command", "coder", "debug", "mcp"] {
        for status in ["success", "error", "timeout", "skipped", "cancelled"] {
            assert_eq!(
                value(
                    &s,
                    "dispatch_tasks_total",
                    &[("agent", agent), ("status", status)]
                ),
                0.0
            );
        }
        assert_eq!(
            value(&s, "dispatch_task_attempts_total", &[("agent", agent)]),
            0.0
        );
        assert_eq!(
            value(&s, "dispatch_task_retries_total", &[("agent", agent)]),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "dispatch_task_duration_seconds_count",
                &[("agent", agent)]
            ),
            0.0
        );
    }
    for (name, ty) in [
        ("dispatch_runs_total", "counter"),
        ("dispatch_run_duration_seconds", "histogram"),
        ("dispatch_runs_in_flight", "gauge"),
        ("dispatch_tasks_total", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {ty}\n")), "{text}");
    }

    // Runs with each status.
    let ok = json!({"tasks": [sh_task("a", "true", &[])]});
    let partial = json!({"tasks": [sh_task("a", "true", &[]), sh_task("b", "exit 1", &[])]});
    let failure = json!({"tasks": [sh_task("b", "exit 2", &[])]});
    for (batch, status) in [
        (&ok, "success"),
        (&ok, "success"),
        (&partial, "partial"),
        (&failure, "failure"),
    ] {
        let result = server.dispatch(batch, true).await;
        assert_eq!(result["status"], status, "{result}");
    }
    let (text, s) = server.metrics("after four runs").await;
    assert_eq!(runs(&s, "success"), 2.0, "{text}");
    assert_eq!(runs(&s, "partial"), 1.0, "{text}");
    assert_eq!(runs(&s, "failure"), 1.0, "{text}");
    assert_eq!(value(&s, "dispatch_run_duration_seconds_count", &[]), 4.0);
    assert_eq!(
        value(
            &s,
            "dispatch_run_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        4.0
    );
    assert_eq!(value(&s, "dispatch_runs_in_flight", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "dispatch_tasks_total",
            &[("agent", "command"), ("status", "error")]
        ),
        2.0
    );

    // Two overlapping runs in flight, then each one ending.
    let first = server.dispatch(&gated(&server.sb, "go1"), false).await;
    let second = server.dispatch(&gated(&server.sb, "go2"), false).await;
    assert_eq!(first["status"], "accepted");
    assert_eq!(second["status"], "accepted");
    let (text, s) = server.metrics("with two runs in flight").await;
    assert_eq!(value(&s, "dispatch_runs_in_flight", &[]), 2.0, "{text}");
    assert_eq!(
        value(&s, "dispatch_run_duration_seconds_count", &[]),
        4.0,
        "a run in flight is not observed yet"
    );
    std::fs::write(server.sb.path().join("go1"), "").unwrap();
    metrics_until(&server, "with one run left in flight", |s| {
        value(s, "dispatch_runs_in_flight", &[]) == 1.0
    })
    .await;
    std::fs::write(server.sb.path().join("go2"), "").unwrap();
    let (text, s) = metrics_until(&server, "after the runs in flight ended", |s| {
        value(s, "dispatch_runs_in_flight", &[]) == 0.0
    })
    .await;
    assert_eq!(runs(&s, "success"), 4.0, "{text}");
    assert_eq!(value(&s, "dispatch_run_duration_seconds_count", &[]), 6.0);
}

/// Runs Prometheus 2.x queries against the HTTP API; the result vector.
async fn query(base: &str, q: &str) -> Vec<Value> {
    let v: Value = client()
        .get(
            reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), [("query", q)])
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn scalar(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// The real Prometheus server, scraping `serve` every second.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_serve() {
    let server = Serve::start();
    let target = server.base.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: dispatch\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = observe::free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus (run scripts/install-test-deps)");
    let mut prometheus = observe::Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    observe::wait_http(
        &format!("{}/-/ready", prometheus.base),
        Duration::from_secs(60),
        &mut prometheus,
    )
    .await;
    let base = prometheus.base.clone();

    // Scraped before any run: the counters are already there, at zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    let q = r#"dispatch_runs_total{job="dispatch",status="success"}"#;
    while scalar(&query(&base, q).await).is_none() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped {target}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(scalar(&query(&base, q).await), Some(0.0));
    assert_eq!(
        scalar(&query(&base, r#"up{job="dispatch"}"#).await),
        Some(1.0),
        "the scrape succeeds"
    );

    let ok = json!({"tasks": [sh_task("a", "true", &[])]});
    let failure = json!({"tasks": [sh_task("b", "exit 2", &[])]});
    for batch in [&ok, &ok, &ok, &failure] {
        server.dispatch(batch, true).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let success = scalar(&query(&base, q).await);
        let failed = scalar(
            &query(
                &base,
                r#"dispatch_runs_total{job="dispatch",status="failure"}"#,
            )
            .await,
        );
        let observed = scalar(
            &query(
                &base,
                r#"dispatch_run_duration_seconds_count{job="dispatch"}"#,
            )
            .await,
        );
        if (success, failed, observed) == (Some(3.0), Some(1.0), Some(4.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has {success:?} successful, {failed:?} failed runs, {observed:?} durations"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A histogram Prometheus can take a quantile of.
    let p99 = scalar(
        &query(
            &base,
            r#"histogram_quantile(0.99, sum by (le) (dispatch_run_duration_seconds_bucket{job="dispatch"}))"#,
        )
        .await,
    );
    assert!(p99.is_some_and(|v| v > 0.0 && v < 10.0), "{p99:?}");
    assert_eq!(
        scalar(&query(&base, r#"dispatch_runs_in_flight{job="dispatch"}"#).await),
        Some(0.0)
    );
    // Prometheus is stopped (and its storage removed) when `prometheus` and `dir` drop.
}

/// Clients choose breaker names, and every run has its own metrics sink: the bound on distinct
/// label values must hold over all the runs the server served, or `/metrics` grows without end.
#[tokio::test(flavor = "multi_thread")]
async fn label_values_stay_bounded_across_runs() {
    let server = Serve::start();
    for run in ["a", "b"] {
        let tasks: Vec<Value> = (0..60)
            .map(|i| {
                let mut t = sh_task(&format!("t{i}"), "true", &[]);
                t["breaker"] = json!(format!("grp_{run}{i}"));
                t
            })
            .collect();
        let result = server
            .dispatch(&json!({"tasks": tasks, "config": {"max_workers": 8}}), true)
            .await;
        assert_eq!(result["status"], "success", "{result}");
    }
    let (text, s) = server.metrics("after 120 breaker names").await;
    let breakers: Vec<&str> = s
        .iter()
        .filter(|x| x.0 == "dispatch_circuit_breaker_state")
        .map(|x| x.1[0].1.as_str())
        .collect();
    assert_eq!(
        breakers.len(),
        dispatch_runner::reporter::metrics::MAX_LABEL_VALUES + 1,
        "{text}"
    );
    assert!(breakers.contains(&"other"), "{text}");
    assert!(breakers.contains(&"grp_a0") && !breakers.contains(&"grp_b59"));
}
