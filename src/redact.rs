//! Keeping secrets out of everything we write: results, traces, events, reports, JUnit, logs.
//!
//! Two rules. Values under keys that look like secrets (`api_key`, `token`, `secret`,
//! `password`, `authorization`, case-insensitive, anywhere in the key) become `[REDACTED]`. And
//! every value registered with [`register_secret`] (API keys read from the environment, header
//! and env values expanded from `${VAR}` in configuration) is replaced wherever it appears inside
//! any string.

use std::borrow::Cow;
use std::sync::RwLock;

use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";

/// Words that make a key secret. Keys are split into words at `_`, `-`, `.` and lower-to-upper
/// case changes, so `X-Api-Key`, `accessToken` and `MY_TOKEN` match but `max_tokens` does not.
const SECRET_WORDS: &[&[&str]] = &[
    &["api", "key"],
    &["apikey"],
    &["token"],
    &["secret"],
    &["password"],
    &["passwd"],
    &["authorization"],
];

/// Secrets shorter than this are not scrubbed from free text: replacing every "1" or "ab" in a
/// document would destroy it and protect nothing.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a value that must never be written anywhere.
pub fn register_secret(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().expect("secrets lock");
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Whether a key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let words = key_words(key);
    SECRET_WORDS
        .iter()
        .any(|phrase| words.windows(phrase.len()).any(|w| w == *phrase))
}

fn key_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if matches!(c, '_' | '-' | '.' | ' ') {
            words.push(std::mem::take(&mut cur));
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    words.push(cur);
    words.retain(|w| !w.is_empty());
    words
}

/// Replaces every registered secret inside `text`.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().expect("secrets lock");
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in secrets.iter() {
        out = out.replace(s.as_str(), REDACTED);
    }
    Cow::Owned(out)
}

/// Redacts a JSON value in place: strings under secret-looking keys, and registered values
/// anywhere. Numbers and structures under such keys are kept (a `token` count is not a secret).
pub fn redact_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = redact_text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k)
                    && !v.is_null()
                    && !matches!(v, Value::Object(_) | Value::Array(_))
                {
                    *v = Value::String(REDACTED.to_string());
                } else {
                    redact_json(v);
                }
            }
        }
        _ => {}
    }
}

/// Registers every string found under a secret-looking key anywhere in `value` (for example an
/// `API_KEY` in a command task's `env`), so that it is also scrubbed where a program echoes it.
pub fn register_secrets_in(value: &Value) {
    match value {
        Value::Array(items) => items.iter().for_each(register_secrets_in),
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if is_secret_key(k) => register_secret(s),
                    _ => register_secrets_in(v),
                }
            }
        }
        _ => {}
    }
}

/// Registers the values of this process's environment variables whose names look secret
/// (`GITHUB_TOKEN`, `OPENAI_API_KEY`, ...): a task that expands one (`sh -c 'echo $GITHUB_TOKEN'`)
/// must not carry it into what we write.
pub fn register_env_secrets() {
    for (k, v) in std::env::vars_os() {
        if let (Some(k), Some(v)) = (k.to_str(), v.to_str())
            && is_secret_key(k)
        {
            register_secret(v);
        }
    }
}

/// A writer that scrubs registered secrets from what passes through it, line by line; for logs
/// and messages on stderr.
pub struct RedactingWriter<W: std::io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: std::io::Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_lines(&mut self, all: bool) -> std::io::Result<()> {
        let end = if all {
            self.pending.len()
        } else {
            match self.pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => return Ok(()),
            }
        };
        let chunk: Vec<u8> = self.pending.drain(..end).collect();
        let text = String::from_utf8_lossy(&chunk);
        self.inner.write_all(redact_text(&text).as_bytes())
    }
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.write_lines(false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_lines(true)?;
        self.inner.flush()
    }
}

impl<W: std::io::Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

/// A redacted copy of any serializable value, ready to write.
pub fn redacted<T: serde::Serialize>(value: &T) -> Value {
    let mut v = serde_json::to_value(value).expect("serializable");
    redact_json(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_and_registered_values() {
        register_secret("sk-test-0123456789");
        let mut v = json!({
            "headers": {"Authorization": "Bearer x", "X-Trace": "ok"},
            "api_key": "abc",
            "MY_TOKEN": "t0k",
            "accessToken": "t",
            "X-Api-Key": "k",
            "usage": {"input_tokens": 12, "max_tokens": 100},
            "nested": [{"password": "p"}],
            "stdout": "key is sk-test-0123456789!",
            "token_count": {"input": 3}
        });
        redact_json(&mut v);
        assert_eq!(v["headers"]["Authorization"], REDACTED);
        assert_eq!(v["headers"]["X-Trace"], "ok");
        assert_eq!(v["api_key"], REDACTED);
        assert_eq!(v["MY_TOKEN"], REDACTED);
        assert_eq!(v["accessToken"], REDACTED);
        assert_eq!(v["X-Api-Key"], REDACTED);
        assert_eq!(v["usage"], json!({"input_tokens": 12, "max_tokens": 100}));
        assert_eq!(v["nested"][0]["password"], REDACTED);
        assert_eq!(v["stdout"], "key is [REDACTED]!");
        // Structured values under secret-looking keys are walked, not erased.
        assert_eq!(v["token_count"]["input"], 3);
    }

    #[test]
    fn secrets_under_secret_keys_are_registered() {
        register_secrets_in(
            &json!({"tasks": [{"input_data": {"env": {"MY_API_KEY": "val-under-key-77"}}}]}),
        );
        assert_eq!(redact_text("echo val-under-key-77"), "echo [REDACTED]");
    }

    #[test]
    fn redacting_writer_scrubs_lines() {
        register_secret("writer-secret-42");
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out);
            std::io::Write::write_all(&mut w, b"a writer-").unwrap();
            std::io::Write::write_all(&mut w, b"secret-42 b\nc").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a [REDACTED] b\nc");
    }

    #[test]
    fn short_values_are_not_registered() {
        register_secret("ab");
        assert_eq!(redact_text("abc"), "abc");
    }
}
