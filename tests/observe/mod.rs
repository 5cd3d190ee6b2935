//! Helpers for the observability tests: a mixed batch, free ports, waiting for a real server
//! (Pushgateway, chromedriver) to answer, and stopping it afterwards.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A batch with every kind of ending: successes, a task that fails once then passes (flaky),
/// one that fails on every attempt, a task skipped because of it, a timeout, and output passing.
/// `marker` is a file name (in the run's folder) the flaky task uses to remember its first try.
/// The run flags that write every observability output into the working folder.
pub const OUTPUT_FLAGS: [&str; 10] = [
    "--events",
    "events.ndjson",
    "--junit",
    "junit.xml",
    "--html",
    "report.html",
    "--chrome-trace",
    "chrome.json",
    "--metrics-file",
    "metrics.prom",
];

pub fn mixed_batch() -> Value {
    json!({
        "tasks": [
            {"task_id": "build", "agent": "command", "description": "compile",
             "input_data": {"argv": ["sh", "-c", "echo built; sleep 0.3"]}},
            {"task_id": "flaky", "agent": "command", "retries": 2,
             "input_data": {"argv": ["sh", "-c",
                "if [ -e flaky.marker ]; then echo second time lucky; else touch flaky.marker; echo first try fails >&2; exit 3; fi"]}},
            {"task_id": "broken", "agent": "command", "retries": 1,
             "input_data": {"argv": ["sh", "-c", "echo 'assertion <failed> & more' >&2; exit 1"]}},
            {"task_id": "after_broken", "agent": "command", "dependencies": ["broken"],
             "input_data": {"argv": ["true"]}},
            {"task_id": "slow", "agent": "command", "timeout_seconds": 0.5,
             "input_data": {"argv": ["sleep", "10"]}},
            {"task_id": "package", "agent": "command", "dependencies": ["build", "flaky"],
             "input_data": {"argv": ["echo", "{{tasks.build.output.stdout}}"]}}
        ],
        "config": {"max_workers": 3, "retry_backoff_ms": 100, "retry_backoff_max_ms": 200}
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped, so a failing test does not leave servers behind.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `url` answers any HTTP response (the server is up), at most `within`.
pub async fn wait_http(url: &str, within: Duration, server: &mut Server) {
    let client = dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if client.get(url).send().await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server exited before answering at {url}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered at {url} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the real Prometheus Pushgateway (Debian package `prometheus-pushgateway`, installed
/// by scripts/install-test-deps) on loopback, with its data kept in `dir`.
pub async fn start_pushgateway(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--persistence.file={}",
            dir.join("pushgateway.db").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-pushgateway (run scripts/install-test-deps)");
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let url = format!("{}/-/ready", server.base);
    wait_http(&url, Duration::from_secs(30), &mut server).await;
    server
}

/// Every non-empty line of a text file, parsed as JSON.
pub fn read_ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l}: {e}")))
        .collect()
}

/// The Jenkins xunit plugin's JUnit schema, as shipped in pytest's source distribution
/// (testing/example_scripts/junit-10.xsd); scripts/install-test-deps fetches the pinned sdist
/// into .deps/junit/ and checks the file's hash.
pub fn junit_xsd() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/junit/junit-10.xsd");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-test-deps",
        path.display()
    );
    path
}

/// Validates an XML file against an XSD with xmllint (Debian `libxml2-utils`).
pub fn xmllint_validate(xml: &Path, xsd: &Path) -> Result<(), String> {
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd)
        .arg(xml)
        .output()
        .expect("run xmllint (run scripts/install-test-deps)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Number of attempts recorded in a trace.
pub fn attempt_count(trace: &Value) -> usize {
    trace["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attempts"].as_array().unwrap().len())
        .sum()
}
