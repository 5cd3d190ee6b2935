//! A runner killed with SIGKILL cannot clean up; its watchdog must: nothing the runner started
//! may outlive it. And a normal run leaves no watchdog behind.

mod common;
mod mcp_support;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// `(comm, ppid)` of a process, from /proc.
fn comm_and_ppid(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((stat[open + 1..close].to_string(), ppid))
}

/// Live children of `parent` named `dr-watchdog`.
fn watchdogs_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            comm_and_ppid(pid).is_some_and(|(c, p)| c == "dr-watchdog" && p == parent) && alive(pid)
        })
        .collect()
}

/// Ten tasks: some ignore SIGTERM, some start their own background children, one does both.
/// Each writes every pid it started to `pids{i}`.
fn ten_tasks() -> Vec<serde_json::Value> {
    (0..10)
        .map(|i| {
            let script = match i % 3 {
                0 => format!(
                    "trap '' TERM; sleep 300 & echo \"$$ $!\" > pids{i}.tmp; mv pids{i}.tmp pids{i}; wait"
                ),
                1 => format!(
                    "sleep 300 & a=$!; sleep 300 & b=$!; echo \"$$ $a $b\" > pids{i}.tmp; mv pids{i}.tmp pids{i}; wait"
                ),
                _ => format!(
                    "trap '' TERM; sh -c 'trap \"\" TERM; sleep 300' & a=$!; echo \"$$ $a\" > pids{i}.tmp; mv pids{i}.tmp pids{i}; wait"
                ),
            };
            sh_task(&format!("t{i}"), &script, &[])
        })
        .collect()
}

#[test]
fn nothing_outlives_a_sigkilled_runner() {
    for trial in 0..3 {
        let sb = Sandbox::new();
        let batch = json!({"tasks": ten_tasks(), "config": {"max_workers": 10}});
        let mut child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
        let files: Vec<_> = (0..10)
            .map(|i| sb.path().join(format!("pids{i}")))
            .collect();
        assert!(
            eventually(Duration::from_secs(30), || files.iter().all(|f| f.exists())),
            "trial {trial}: tasks never started"
        );
        let pids = read_pids(&files);
        assert_eq!(pids.len(), 4 * 2 + 3 * 3 + 3 * 2, "trial {trial}");
        // The grandchildren may still be between fork and exec of `sleep`: let them settle.
        std::thread::sleep(Duration::from_millis(200));
        let watchdogs = watchdogs_of(child.id() as i32);
        assert_eq!(watchdogs.len(), 1, "trial {trial}: one watchdog per runner");
        child.kill().unwrap();
        child.wait().unwrap();
        let killed_at = Instant::now();
        let gone = eventually(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p)));
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        // Clean up before failing, so a failure does not leave 300-second sleeps behind.
        for &p in &left {
            send_signal(p as u32, libc::SIGKILL);
        }
        assert!(
            gone,
            "trial {trial}: still alive 5 s after the runner was killed: {left:?}"
        );
        assert!(
            eventually(Duration::from_secs(5), || !alive(watchdogs[0])),
            "trial {trial}: the watchdog outlived its work"
        );
        eprintln!(
            "trial {trial}: all {} processes gone {:?} after SIGKILL",
            pids.len(),
            killed_at.elapsed()
        );
    }
}

#[test]
fn a_normal_run_leaves_no_watchdog_and_kills_nothing_else() {
    let sb = Sandbox::new();
    // A process group the runner did not start, still alive after the run.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let bystander_pid = bystander.id() as i32;
    let batch = json!({"tasks": [
        sh_task("a", "touch started; while [ ! -e go ]; do sleep 0.05; done; echo ok", &[]),
        sh_task("b", "echo $$ > b.pid", &[])
    ]});
    let child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
    let runner = child.id() as i32;
    assert!(eventually(Duration::from_secs(30), || sb
        .path()
        .join("started")
        .exists()));
    let watchdogs = watchdogs_of(runner);
    assert_eq!(watchdogs.len(), 1, "one watchdog per runner");
    sb.write("go", "");
    let run = sb.to_run(wait_with_deadline(child, Duration::from_secs(60)));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result("a")["output"]["stdout"], "ok\n");
    assert!(
        eventually(Duration::from_secs(2), || !alive(watchdogs[0])),
        "the watchdog outlived a normal run"
    );
    assert!(
        alive(bystander_pid),
        "a normal run killed a group it did not start"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn a_runner_killed_while_tasks_start_leaves_nothing_either() {
    // SIGKILL at arbitrary moments while the ten groups are being started: a group forked just
    // before the kill must be known to the watchdog too (each child registers itself before exec).
    let marker = "311.77";
    for trial in 0..12 {
        let sb = Sandbox::new();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                sh_task(
                    &format!("t{i}"),
                    &format!("trap '' TERM; sleep {marker} & sleep {marker}; wait"),
                    &[],
                )
            })
            .collect();
        let batch = json!({"tasks": tasks, "config": {"max_workers": 10}});
        let mut child = spawn_with_input(sb.cmd(&[]), &batch.to_string());
        std::thread::sleep(Duration::from_millis(10 + trial * 15));
        child.kill().unwrap();
        child.wait().unwrap();
        // A shell forked before the kill may still be on its way to starting its sleeps; once
        // its group is killed none of them runs, so two quiet looks a moment apart suffice.
        let gone = eventually(Duration::from_secs(5), || {
            processes_matching(&format!("sleep {marker}")).is_empty() && {
                std::thread::sleep(Duration::from_millis(100));
                processes_matching(&format!("sleep {marker}")).is_empty()
            }
        });
        let left = processes_matching(&format!("sleep {marker}"));
        for p in &left {
            if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<u32>().ok()) {
                send_signal(pid, libc::SIGKILL);
            }
        }
        assert!(gone, "trial {trial}: left behind: {left:?}");
    }
}

#[test]
fn a_stdio_mcp_server_and_its_children_do_not_outlive_a_sigkilled_runner() {
    let sb = Sandbox::new();
    let tag = format!("orphan-mcp-{}", std::process::id());
    // The server starts a child of its own first, which a SIGKILLed runner's closed pipe would
    // never reach.
    let yaml = format!(
        "mcp:\n  servers:\n    py:\n      command: sh\n      args: [\"-c\", \"sleep 313.{} & exec {} {} stdio {tag}\"]\n",
        std::process::id(),
        mcp_support::python(),
        mcp_support::python_server_script()
    );
    let cfg = sb.write("dispatch.yaml", &yaml).display().to_string();
    let batch = json!({"config": {"timeout_seconds": 600, "retries": 0}, "tasks": [
        mcp_support::mcp_task("slow", "py", "slow", json!({"seconds": 300, "tag": "x"}))
    ]});
    let mut child = spawn_with_input(sb.cmd(&["--config", &cfg]), &batch.to_string());
    let sleeper = format!("sleep 313.{}", std::process::id());
    assert!(
        eventually(Duration::from_secs(30), || {
            !processes_matching(&tag).is_empty() && !processes_matching(&sleeper).is_empty()
        }),
        "the server never started"
    );
    // Let the tool call begin.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        processes_matching(&tag).is_empty() && processes_matching(&sleeper).is_empty()
    });
    let mut left = processes_matching(&tag);
    left.extend(processes_matching(&sleeper));
    for p in &left {
        if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<u32>().ok()) {
            send_signal(pid, libc::SIGKILL);
        }
    }
    assert!(gone, "left behind: {left:?}");
}
