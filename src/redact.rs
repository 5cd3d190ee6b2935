//! Keeping secrets out of everything we write: results, traces, events, reports, JUnit, logs.
//!
//! Three rules. Values under keys that look like secrets (`api_key`, `token`, `secret`,
//! `password`, `authorization`, case-insensitive, anywhere in the key) become `[REDACTED]`.
//! Every value registered with [`register_secret`] (API keys read from the environment, header
//! and env values expanded from `${VAR}` in configuration, passwords found in URLs of the batch)
//! is replaced wherever it appears inside any string. And URLs inside any string lose their
//! credentials: the userinfo becomes `***` and the values of secret-looking query parameters
//! become `[REDACTED]` (`http://***@host/mcp?api_key=[REDACTED]&x=1`); host, path and the other
//! parameters stay, so the URL still says where it points.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{LazyLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

use regex::Regex;
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

/// The registered secrets, and one automaton that finds them all in a single pass over a text:
/// redaction runs over every string of every document we write, so its cost must not grow with
/// the number of secrets (a batch can register one per task).
struct Registry {
    values: BTreeSet<String>,
    /// Built on first use after a registration; `None` while stale.
    matcher: Option<AhoCorasick>,
}

static SECRETS: RwLock<Registry> = RwLock::new(Registry {
    values: BTreeSet::new(),
    matcher: None,
});

/// Registers a value that must never be written anywhere.
pub fn register_secret(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().expect("secrets lock");
    if !secrets.values.contains(value) {
        secrets.values.insert(value.to_string());
        secrets.matcher = None;
    }
}

/// Whether a key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    // Every phrase holds one of these letters in a row, and most keys (`task_id`, `stdout`)
    // hold none: answered without splitting the key into words, which every document written
    // does for every key. (ASCII only: some other letters lowercase to ASCII ones.)
    const HINTS: [&[u8]; 5] = [b"key", b"token", b"secret", b"passw", b"authorization"];
    if key.is_ascii()
        && !HINTS.iter().any(|h| {
            key.as_bytes()
                .windows(h.len())
                .any(|w| w.eq_ignore_ascii_case(h))
        })
    {
        return false;
    }
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

/// Replaces every registered secret inside `text`, and the credentials of every URL in it.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let registered = redact_registered(text);
    if let Cow::Owned(clean) = redact_urls(&registered) {
        return Cow::Owned(clean);
    }
    registered
}

fn redact_registered(text: &str) -> Cow<'_, str> {
    {
        let secrets = SECRETS.read().expect("secrets lock");
        if secrets.values.is_empty() {
            return Cow::Borrowed(text);
        }
        if let Some(m) = &secrets.matcher {
            return replace_all(m, text);
        }
    }
    let mut secrets = SECRETS.write().expect("secrets lock");
    if secrets.matcher.is_none() {
        // Leftmost-longest: a secret that contains another is replaced whole.
        let built = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&secrets.values);
        match built {
            Ok(m) => secrets.matcher = Some(m),
            Err(_) => return replace_one_by_one(&secrets.values, text),
        }
    }
    replace_all(secrets.matcher.as_ref().expect("just built"), text)
}

fn replace_all<'a>(matcher: &AhoCorasick, text: &'a str) -> Cow<'a, str> {
    if !matcher.is_match(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    matcher.replace_all_with(text, &mut out, |_, _, dst| {
        dst.push_str(REDACTED);
        true
    });
    Cow::Owned(out)
}

/// For a set of secrets too large for one automaton: longest first, one at a time.
fn replace_one_by_one<'a>(values: &BTreeSet<String>, text: &'a str) -> Cow<'a, str> {
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = Cow::Borrowed(text);
    for s in sorted {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), REDACTED));
        }
    }
    out
}

/// What a URL looks like in free text (log lines, error messages, JSON strings, metric labels):
/// a scheme, `://`, and everything up to whitespace, a quote, or a character that cannot be part
/// of a URL as written.
static URL_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b[a-z][a-z0-9+.\-]*://[^\s"'<>`\\{}|^]+"#).expect("valid regex")
});

/// Words that make a query parameter secret, beyond [`is_secret_key`]: `?key=`, `?sig=`,
/// `X-Amz-Signature`, `X-Amz-Credential`, `?auth=`, `?pwd=`.
const URL_SECRET_WORDS: &[&str] = &[
    "key",
    "sig",
    "signature",
    "auth",
    "credential",
    "credentials",
    "pass",
    "pwd",
];

/// Whether a URL query parameter carries a credential.
pub fn is_secret_param(name: &str) -> bool {
    is_secret_key(name)
        || key_words(name)
            .iter()
            .any(|w| URL_SECRET_WORDS.contains(&w.as_str()))
}

/// Removes credentials from every URL inside `text`: userinfo (`user:pass@`) becomes `***@`,
/// values of secret-looking query parameters become `[REDACTED]`. Idempotent.
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut changed = false;
    let out = URL_IN_TEXT.replace_all(text, |caps: &regex::Captures| {
        let found = &caps[0];
        // Punctuation that ends a sentence or a parenthesis around the URL is not part of it.
        let url = found.trim_end_matches([')', '.', ',', ';', ':', '!']);
        let clean = redact_url(url);
        if clean != url {
            changed = true;
        }
        format!("{clean}{}", &found[url.len()..])
    });
    if changed {
        Cow::Owned(out.into_owned())
    } else {
        Cow::Borrowed(text)
    }
}

/// [`redact_urls`] for one URL (`scheme://...`).
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let Some(q) = tail.find('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(&tail[..=q]);
    let query_and_fragment = &tail[q + 1..];
    let (query, fragment) = match query_and_fragment.find('#') {
        Some(h) => query_and_fragment.split_at(h),
        None => (query_and_fragment, ""),
    };
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value))
                if !value.is_empty() && value != REDACTED && is_secret_param(name) =>
            {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    out
}

/// Registers the credentials of every URL inside `text` (its password, the values of its
/// secret-looking query parameters; as written and percent-decoded), so that they are also
/// scrubbed where they appear outside a URL, e.g. in a client's debug dump of a parsed URL.
pub fn register_url_secrets(text: &str) {
    if !text.contains("://") {
        return;
    }
    for m in URL_IN_TEXT.find_iter(text) {
        let raw = m.as_str();
        let Ok(url) = url::Url::parse(raw) else {
            continue;
        };
        let mut found: Vec<String> = Vec::new();
        if let Some(p) = url.password() {
            found.push(p.to_string());
        }
        if let Some(query) = url.query() {
            for pair in query.split('&') {
                if let Some((name, value)) = pair.split_once('=')
                    && is_secret_param(name)
                {
                    found.push(value.to_string());
                }
            }
        }
        for value in found {
            let decoded = url::form_urlencoded::parse(format!("x={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
            register_secret(&value);
            if let Some(decoded) = decoded {
                register_secret(&decoded);
            }
        }
    }
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
/// `API_KEY` in a command task's `env`), and the credentials of URLs in any string, so that they
/// are also scrubbed where a program echoes them.
pub fn register_secrets_in(value: &Value) {
    match value {
        Value::String(s) => register_url_secrets(s),
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

/// Redacts `value` in place and returns the JSON Pointers (relative to `value`) of what the
/// redaction changed: the places a copy written out no longer holds the real value.
pub fn redact_json_reporting(value: &mut Value) -> Vec<String> {
    let original = value.clone();
    redact_json(value);
    let mut changed = Vec::new();
    diff_pointers(&original, value, &mut String::new(), &mut changed);
    changed
}

fn diff_pointers(before: &Value, after: &Value, path: &mut String, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                match b.get(k) {
                    Some(vb) => diff_pointers(va, vb, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                diff_pointers(va, vb, path, out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(path.clone()),
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

    #[test]
    fn every_secret_phrase_holds_a_hint() {
        // The shortcut in `is_secret_key` must never answer "not secret" for a secret key.
        for phrase in SECRET_WORDS {
            assert!(is_secret_key(&phrase.join("_")), "{phrase:?}");
            assert!(
                is_secret_key(&phrase.join("-").to_uppercase()),
                "{phrase:?}"
            );
        }
        assert!(is_secret_key("X-Api-Key") && is_secret_key("accessToken"));
        assert!(!is_secret_key("max_tokens") && !is_secret_key("task_id"));
    }
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
    fn urls_lose_their_credentials_everywhere_in_text() {
        let text = "GET http://user:p4ss@127.0.0.1:9/mcp?api_key=K3y&x=1 failed (see \
                    https://h/a?token=t&sig=s#frag).";
        assert_eq!(
            redact_text(text),
            "GET http://***@127.0.0.1:9/mcp?api_key=[REDACTED]&x=1 failed (see \
             https://h/a?token=[REDACTED]&sig=[REDACTED]#frag)."
        );
        // Idempotent, and harmless for URLs without credentials.
        let once = redact_text(text).into_owned();
        assert_eq!(redact_text(&once), once);
        assert!(matches!(
            redact_text("see http://127.0.0.1:9/mcp?x=1&max_tokens=5"),
            Cow::Borrowed(_)
        ));
        // Inside JSON-escaped log lines and quoted labels the quote ends the URL.
        assert_eq!(
            redact_text(r#"{"url":"postgres://a:b@db/x?password=pw"} breaker="mcp:http://u:v@h""#),
            r#"{"url":"postgres://***@db/x?password=[REDACTED]"} breaker="mcp:http://***@h""#
        );
    }

    #[test]
    fn url_credentials_are_registered_and_pointers_reported() {
        let mut v = json!({"tasks": [{"input_data": {
            "url": "http://user:url-pass-9182@h/mcp?api_key=url%2Dkey%2D5521&x=1",
            "env": {"MY_TOKEN": "tok-33442211"},
            "argv": ["a/b~c"]
        }}]});
        register_secrets_in(&v);
        assert_eq!(redact_text("dump url-pass-9182"), "dump [REDACTED]");
        assert_eq!(redact_text("dump url-key-5521"), "dump [REDACTED]");
        assert_eq!(redact_text("dump url%2Dkey%2D5521"), "dump [REDACTED]");
        let pointers = redact_json_reporting(&mut v);
        assert_eq!(
            pointers,
            [
                "/tasks/0/input_data/url",
                "/tasks/0/input_data/env/MY_TOKEN"
            ]
        );
        assert_eq!(
            v["tasks"][0]["input_data"]["url"],
            "http://***@h/mcp?api_key=[REDACTED]&x=1"
        );
    }

    #[test]
    fn the_longest_of_overlapping_secrets_is_replaced_whole() {
        register_secret("inner-secret");
        register_secret("outer-inner-secret-x");
        assert_eq!(
            redact_text("a outer-inner-secret-x b inner-secret c"),
            "a [REDACTED] b [REDACTED] c"
        );
    }

    #[test]
    fn short_values_are_not_registered() {
        register_secret("ab");
        assert_eq!(redact_text("abc"), "abc");
    }
}
