//! A real headless Chromium (Debian `chromium` + `chromium-driver`) driven over WebDriver, for
//! the tests of the HTML report and of the dashboard; screenshots go to target/test-artifacts/.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::observe::{Server, free_port, wait_http};

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Server,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Self::start_sized(1400, 1800).await
    }

    /// A browser whose window is `width` x `height` pixels (screenshots are that size).
    pub async fn start_sized(width: u32, height: u32) -> Browser {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (run scripts/install-test-deps)");
        let mut driver = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_http(
            &format!("{}/status", driver.base),
            Duration::from_secs(30),
            &mut driver,
        )
        .await;
        let profile = tempfile::tempdir().unwrap();
        let http = dispatch_runner::http::client_builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Without the background-networking flags Chromium keeps calling home, which on
                // a closed network only produces noise and delays.
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let resp: Value = http
            .post(format!("{}/session", driver.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_string();
        Browser {
            http,
            base: driver.base.clone(),
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        if resp["value"]["error"].is_string() {
            panic!("WebDriver {path}: {resp}");
        }
        resp["value"].clone()
    }

    pub async fn open(&self, file: &Path) {
        let url = format!("file://{}", file.canonicalize().unwrap().display());
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Loads an http(s) URL.
    pub async fn open_url(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Browser console entries since the last call.
    pub async fn logs(&self) -> Vec<Value> {
        self.call(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({"type": "browser"})),
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    pub async fn screenshot(&self, to: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap();
    }

    pub async fn close(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

impl Drop for Browser {
    /// A test that fails never reaches `close`: chromedriver dies with `_driver`, but the
    /// Chromium it started would live on, orphaned. Its processes name this browser's own
    /// profile folder on their command lines, which is how they are found.
    fn drop(&mut self) {
        let marker = format!("--user-data-dir={}", self._profile.path().display());
        for found in crate::common::processes_matching(&marker) {
            if let Some(pid) = found.split(':').next().and_then(|p| p.parse().ok()) {
                crate::common::send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    } as u32;
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | val(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn severe(logs: &[Value]) -> Vec<&Value> {
    logs.iter().filter(|l| l["level"] == "SEVERE").collect()
}
