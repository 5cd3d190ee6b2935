//! Running one program to completion in its own process group, its output captured under a cap.
//! The `command` agent and the command-line model backend both run programs this way.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::process::{Capture, GroupGuard, Reaper, read_capped};
use crate::task_error::{ErrorKind, Failure, TaskError};

/// How long to keep reading output after the program exited, for pipes a leftover grandchild
/// still holds open; the group is being terminated meanwhile.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// A program to run: no shell unless `argv` asks for one.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Option<String>,
}

/// How the run is bounded and cleaned up.
#[derive(Clone)]
pub struct RunLimits {
    /// Cap for each captured output stream.
    pub max_output_bytes: usize,
    /// Time between TERM and KILL when the process group is stopped.
    pub kill_grace: Duration,
    pub reaper: Reaper,
}

/// What a finished program left (the field order is that of the `command` agent's output).
#[derive(Debug, Clone, Serialize)]
pub struct ProgramOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// Runs the program to completion. Dropping the returned future terminates its process group.
/// A non-zero exit is a transient failure carrying the output.
pub async fn run(input: Program, limits: &RunLimits) -> Result<ProgramOutput, Failure> {
    let (program, args) = input
        .argv
        .split_first()
        .ok_or_else(|| TaskError::permanent(ErrorKind::InvalidInput, "argv must not be empty"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&input.env)
        .stdin(if input.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, which the watchdog kills should the runner die without cleaning up.
    crate::process::watchdog::tie_to_runner(&mut cmd);
    if let Some(cwd) = &input.cwd {
        if !Path::new(cwd).is_dir() {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                format!("cwd '{cwd}' does not exist or is not a directory"),
            )
            .into());
        }
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    let pid = child.id().expect("a just-spawned child has a pid") as i32;
    crate::process::watchdog::register(pid as u32);
    let guard = GroupGuard::new(pid, limits.kill_grace, limits.reaper.clone());

    if let (Some(text), Some(mut stdin)) = (input.stdin, child.stdin.take()) {
        // A program that exits without reading its input is not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let out = Arc::new(Mutex::new(Capture::default()));
    let err = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        tokio::spawn(read_capped(
            child.stdout.take().expect("piped"),
            limits.max_output_bytes,
            out.clone(),
        )),
        tokio::spawn(read_capped(
            child.stderr.take().expect("piped"),
            limits.max_output_bytes,
            err.clone(),
        )),
    ];
    let status = child.wait().await.map_err(|e| {
        Failure::from(TaskError::transient(
            ErrorKind::Io,
            format!("waiting for '{program}' failed: {e}"),
        ))
    })?;
    drop(guard);
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    let (out, err) = (
        out.lock().expect("capture lock"),
        err.lock().expect("capture lock"),
    );
    let exit_code = exit_code(&status);
    let output = ProgramOutput {
        exit_code,
        stdout: out.text(),
        stderr: err.text(),
        truncated: out.truncated || err.truncated,
    };
    if status.success() {
        Ok(output)
    } else {
        let reason = match std::os::unix::process::ExitStatusExt::signal(&status) {
            Some(sig) => format!("'{program}' was killed by signal {sig}"),
            None => format!("'{program}' exited with code {exit_code}"),
        };
        let message = match output.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("{reason}: {}", last.trim()),
            None => reason,
        };
        Err(Failure {
            error: TaskError::transient(ErrorKind::ExitStatus, message),
            output: Some(serde_json::to_value(output).expect("serializable")),
        })
    }
}

/// Shell convention: a signal death reports 128 + the signal number.
fn exit_code(status: &std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(status).unwrap_or(0))
}

fn spawn_error(program: &str, e: std::io::Error) -> Failure {
    use std::io::ErrorKind as Io;
    let err = match e.kind() {
        // Retrying cannot make a missing or non-executable program appear.
        Io::NotFound => TaskError::permanent(
            ErrorKind::SpawnFailed,
            format!("program '{program}' not found"),
        ),
        Io::PermissionDenied => TaskError::permanent(
            ErrorKind::SpawnFailed,
            format!("program '{program}' is not executable: {e}"),
        ),
        _ => TaskError::transient(
            ErrorKind::SpawnFailed,
            format!("could not start '{program}': {e}"),
        ),
    };
    err.into()
}
