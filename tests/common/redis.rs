//! A real `redis-server` on a free loopback port, and worker processes of the built binary, for
//! the scale-out tests. Everything is stopped when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{bin, eventually, send_signal};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With more `redis-server` arguments (ACL users, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/install-test-deps)");
        let server = RedisServer {
            port,
            child: Some(child),
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(10), || server
                .cli(&["PING"])
                .is_some_and(|s| s.trim() == "PONG")),
            "redis-server did not start on port {port}"
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs redis-cli; its stdout when it succeeded.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", pattern])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        keys.sort();
        keys
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `dispatch_runner worker` process; its stderr goes to `<dir>/<name>.log`.
pub struct Worker {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(dir: &Path, url: &str, name: &str, extra: &[&str]) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin())
            .args(["worker", "--redis", url, "--name", name])
            .args(extra)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn worker");
        let w = Worker {
            name: name.to_string(),
            child: Some(child),
            log,
        };
        let key = format!("dispatch:worker:{name}");
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap()
            .to_string();
        assert!(
            eventually(Duration::from_secs(20), || {
                Command::new("redis-cli")
                    .args(["-p", &port, "EXISTS", &key])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
            }),
            "worker {name} did not register: {}",
            w.log_text()
        );
        w
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit; its exit code (None: killed by a signal or still running
    /// after `limit`).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let mut status = None;
        eventually(limit, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status?;
        self.child = None;
        status.code()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The workers each task's last attempt ran on (`executed_by` in the result).
pub fn executed_by(result: &Value) -> Vec<String> {
    result["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["executed_by"].as_str().unwrap_or("").to_string())
        .collect()
}
