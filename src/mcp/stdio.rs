//! The stdio transport to an MCP server the runner starts. `rmcp`'s own child-process transport
//! silently skips stdout lines that are not JSON (its authors follow the other SDKs there), so a
//! server that prints a banner or debug output to stdout would look merely slow and the task
//! would end in `timeout`. Here every stdout line is checked before `rmcp` sees it: the first
//! line that is not JSON ends the connection, and the session reports `protocol_error` at once.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::{AsyncRwTransport, DEFAULT_MAX_LINE_LENGTH};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long a server may take to exit after its stdin closes, and again after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// What the server did wrong on stdout, set once by the reader and read by whoever turns the
/// resulting closed connection into an error.
pub type Violation = Arc<OnceLock<String>>;

/// A started stdio server: its process and the checked JSON-RPC stream over its stdin/stdout.
pub struct StdioServer {
    child: Option<Child>,
    transport: AsyncRwTransport<RoleClient, CheckedStdout<ChildStdout>, ChildStdin>,
}

impl StdioServer {
    /// Wraps a child spawned with piped stdin and stdout (and `kill_on_drop`, so a dropped
    /// session never leaves the server running).
    pub fn new(mut child: Child, violation: Violation) -> std::io::Result<Self> {
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the server's stdin is not piped"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the server's stdout is not piped"))?;
        Ok(StdioServer {
            child: Some(child),
            transport: AsyncRwTransport::new(CheckedStdout::new(stdout, violation), stdin),
        })
    }
}

impl Transport<RoleClient> for StdioServer {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.transport.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.transport.receive()
    }

    /// The MCP stdio shutdown: close its stdin, wait; SIGTERM, wait; kill.
    async fn close(&mut self) -> Result<(), Self::Error> {
        self.transport.close().await?;
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
            if let Some(pid) = child.id() {
                // SAFETY: plain syscall on our own child, which has not been reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
                child.kill().await?;
            }
        }
        self.child = None;
        Ok(())
    }
}

/// Passes stdout through line by line, each line only once it is known to be JSON.
pub struct CheckedStdout<R> {
    inner: R,
    buf: Vec<u8>,
    /// `buf[..ready]` are whole, checked lines not yet handed on.
    ready: usize,
    eof: bool,
    /// A bad line was seen: once the good lines before it are handed on, every read fails.
    failed: Option<String>,
    violation: Violation,
}

impl<R> CheckedStdout<R> {
    fn new(inner: R, violation: Violation) -> Self {
        CheckedStdout {
            inner,
            buf: Vec::new(),
            ready: 0,
            eof: false,
            failed: None,
            violation,
        }
    }

    fn fail(&mut self, message: String) {
        let _ = self.violation.set(message.clone());
        self.failed = Some(message);
    }
}

/// Why `line` is not a JSON-RPC line, if it is not. Blank lines are allowed (rmcp skips them).
pub fn check_line(line: &[u8]) -> Result<(), String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(line)
        .map(|_| ())
        .map_err(|e| {
            let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
            format!("the server wrote a line that is not JSON-RPC to stdout ({e}): {shown:?}")
        })
}

impl<R: AsyncRead + Unpin> AsyncRead for CheckedStdout<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if let Some(m) = &this.failed {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    m.clone(),
                )));
            }
            if this.eof {
                // An unterminated last line is no message: rmcp drops it as well.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                continue;
            }
            let start = this.buf.len();
            this.buf.extend_from_slice(rb.filled());
            // Only the new bytes can hold the end of the pending line.
            let mut from = start;
            while let Some(pos) = this.buf[from..].iter().position(|&b| b == b'\n') {
                let end = from + pos;
                if let Err(m) = check_line(&this.buf[this.ready..end]) {
                    this.fail(m);
                    break;
                }
                this.ready = end + 1;
                from = end + 1;
            }
            if this.failed.is_none() && this.buf.len() - this.ready > DEFAULT_MAX_LINE_LENGTH {
                this.fail(format!(
                    "the server wrote a stdout line longer than {DEFAULT_MAX_LINE_LENGTH} bytes"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn lines_are_checked() {
        assert!(check_line(b"{\"jsonrpc\":\"2.0\"}\r").is_ok());
        assert!(check_line(b"   ").is_ok());
        assert!(check_line(b"\xEF\xBB\xBF{}").is_ok());
        let e = check_line(b"hello").unwrap_err();
        assert!(e.contains("\"hello\""), "{e}");
        assert!(check_line(b"{\"a\": ").is_err());
    }

    #[tokio::test]
    async fn passes_json_lines_and_stops_at_the_first_other() {
        let input: &[u8] = b"{\"a\":1}\n\n[1,2]\nhello\n{\"b\":2}\n";
        let violation = Violation::default();
        let mut r = CheckedStdout::new(input, violation.clone());
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(got, b"{\"a\":1}\n\n[1,2]\n");
        assert!(violation.get().unwrap().contains("hello"));
        let mut ok = CheckedStdout::new(&b"{}\n{\"x\":"[..], Violation::default());
        let mut got = Vec::new();
        ok.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"{}\n");
    }
}
