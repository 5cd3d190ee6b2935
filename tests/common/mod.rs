//! Helpers for driving the real `dispatch_runner` binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dispatch_runner"))
}

/// A scratch folder that tests run the binary in; traces land in `<dir>/traces`.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    /// Where the binary ran; relative paths in its output are relative to this.
    pub cwd: PathBuf,
    pub code: i32,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn result(&self, task_id: &str) -> &Value {
        self.json["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["task_id"] == task_id)
            .unwrap_or_else(|| panic!("no result for {task_id}: {}", self.stdout))
    }

    pub fn status(&self, task_id: &str) -> &str {
        self.result(task_id)["status"].as_str().unwrap()
    }

    pub fn trace(&self) -> Value {
        let path = self.json["trace_file"].as_str().expect("trace_file");
        read_json(&self.cwd.join(path))
    }

    pub fn error_messages(&self) -> Vec<(String, String)> {
        self.json["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).current_dir(self.path()).env("NO_COLOR", "1");
        c
    }

    /// Runs the binary with `stdin` as input and waits (at most two minutes).
    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        self.run_cmd(self.cmd(args), stdin)
    }

    /// Runs a prepared command (extra environment, another program in front) with `stdin` as
    /// input and waits (at most two minutes).
    pub fn run_cmd(&self, cmd: Command, stdin: &str) -> Run {
        let child = spawn_with_input(cmd, stdin);
        self.to_run(wait_with_deadline(child, Duration::from_secs(120)))
    }

    pub fn run_json(&self, args: &[&str], batch: &Value) -> Run {
        self.run(args, &batch.to_string())
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Sandbox {
    pub fn to_run(&self, out: Output) -> Run {
        let mut run = to_run(out);
        run.cwd = self.path().to_path_buf();
        run
    }
}

pub fn to_run(out: Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    Run {
        cwd: PathBuf::from("."),
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
    }
}

/// Starts `cmd` with piped stdio and writes `input` to its stdin. The process may exit before
/// reading it (e.g. a configuration error), which is not an error here.
pub fn spawn_with_input(mut cmd: Command, input: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child
}

/// The kinds of a trace's events, in order.
pub fn event_names(trace: &Value) -> Vec<String> {
    trace["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// Outcomes of task `index`'s attempts, in order, from a trace.
pub fn attempt_outcomes(trace: &Value, index: usize) -> Vec<String> {
    trace["tasks"][index]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect()
}

pub fn wait_with_deadline(child: Child, deadline: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("dispatch_runner did not finish within {deadline:?}");
        }
    }
}

pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// Processes whose command line contains `pattern` (from /proc, so no pgrep needed).
pub fn processes_matching(pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // Zombies have an empty cmdline; they are not running.
        if cmdline.contains(pattern) {
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if !state.contains(") Z") {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    found
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Events of a trace with the given `event` name.
pub fn events<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// A command task.
pub fn cmd_task(id: &str, argv: &[&str], deps: &[&str]) -> Value {
    serde_json::json!({"task_id": id, "agent": "command", "input_data": {"argv": argv}, "dependencies": deps})
}

pub fn sh_task(id: &str, script: &str, deps: &[&str]) -> Value {
    cmd_task(id, &["sh", "-c", script], deps)
}

/// Tasks that each record how many of them run at the same moment (into `counts`), using the
/// folder `running/` (created here) as a register.
pub fn concurrency_probe_tasks(sb: &Sandbox, n: usize) -> Vec<Value> {
    std::fs::create_dir_all(sb.path().join("running")).unwrap();
    (0..n)
        .map(|i| {
            sh_task(
                &format!("t{i}"),
                &format!(
                    "touch running/t{i}; ls running | wc -l >> counts; sleep 0.05; rm running/t{i}"
                ),
                &[],
            )
        })
        .collect()
}

/// What the probe tasks counted.
pub fn probe_counts(sb: &Sandbox) -> Vec<usize> {
    std::fs::read_to_string(sb.path().join("counts"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Most attempts between their start and finish events at once, per the trace.
pub fn peak_concurrency(trace: &Value) -> i32 {
    let mut live = 0;
    let mut peak = 0;
    for e in trace["events"].as_array().unwrap() {
        match e["event"].as_str().unwrap() {
            "attempt_started" => {
                live += 1;
                peak = peak.max(live);
            }
            "attempt_finished" => live -= 1,
            _ => {}
        }
    }
    peak
}

/// Whether a process is still alive (a zombie waiting to be reaped is not).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z")
}

/// The pids written, whitespace-separated, into each of these files.
pub fn read_pids(files: &[PathBuf]) -> Vec<i32> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .split_whitespace()
                .map(|p| p.parse::<i32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Pipes Prometheus text-format `text` through `promtool check metrics` (Debian `prometheus`,
/// installed by scripts/install-test-deps) and fails the test unless it passes with no lint
/// problem at all (promtool prints nothing then). `what` names the output in the message.
pub fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (run scripts/install-test-deps)");
    let mut stdin = child.stdin.take().unwrap();
    let body = text.to_string();
    // Written from a thread so a promtool that answers early cannot block us on a full pipe.
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = wait_with_deadline(child, Duration::from_secs(60));
    // A write error (promtool exited first) shows in its exit status and output below.
    let _ = writer.join();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics refused {what} ({:?}): {said}\n--- {what} ---\n{text}",
        out.status.code()
    );
}

/// Waits for process `pid` and returns its exit code and peak resident set size in bytes.
pub fn wait_with_rusage(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value for `wait4` to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are to live locals.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(
        r,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    assert!(libc::WIFEXITED(status), "killed: status {status}");
    // Linux gives ru_maxrss in kilobytes.
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

/// Waits until a `serve` child (spawned with stderr piped) says where it listens, returns that
/// base URL, and keeps draining its stderr so the server never blocks on a full pipe.
pub fn listening_base(child: &mut Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("dispatch_runner: listening on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    base
}

/// An HTTP client for tests that talk to `serve` (generous timeout: a run may take a while).
pub fn client() -> reqwest::Client {
    dispatch_runner::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
