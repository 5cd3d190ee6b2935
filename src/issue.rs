//! A problem found in a batch, located by a JSON Pointer into the input document.

use serde::{Deserialize, Serialize};

/// One validation problem. `path` is a JSON Pointer (`/tasks/1/input_data/argv`), empty for the
/// whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

/// Longest message kept: an issue is printed on stdout and stderr, and must not cost more than
/// the input (a message quoting a 5 MB value would print it twice).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest reference token kept in a path; a longer one (a huge object key) is cut and marked.
pub const MAX_TOKEN_BYTES: usize = 100;
/// Longest prefix of a value that [`quote`] shows.
pub const MAX_QUOTED_BYTES: usize = 100;

impl Issue {
    /// An issue at `path`, with every reference token of the path and the message cut to a
    /// bounded length (marked with `...`), whatever the input held.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut path = path.into();
        if path.len() > MAX_TOKEN_BYTES {
            path = path
                .split('/')
                .map(|t| cut(t, MAX_TOKEN_BYTES))
                .collect::<Vec<_>>()
                .join("/");
        }
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            message = cut(&message, MAX_MESSAGE_BYTES).into_owned();
        }
        Issue { path, message }
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with `...` appended when cut.
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end]).into()
}

/// A value from the input for a message: in single quotes, at most [`MAX_QUOTED_BYTES`] of it,
/// with the length said when it was cut.
pub fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTED_BYTES {
        format!("'{s}'")
    } else {
        format!("'{}' ({} bytes)", cut(s, MAX_QUOTED_BYTES), s.len())
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Escapes one reference token of a JSON Pointer (RFC 6901).
pub fn pointer_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains(['~', '/']) {
        token.replace('~', "~0").replace('/', "~1").into()
    } else {
        token.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_paths_and_messages_are_cut() {
        let key = "k".repeat(5_000_000);
        let issue = Issue::new(format!("/tasks/0/{key}"), format!("unknown field {key}"));
        assert!(issue.path.starts_with("/tasks/0/kkk"));
        assert!(issue.path.ends_with("..."));
        assert!(issue.path.len() <= 9 + MAX_TOKEN_BYTES + 3);
        assert!(issue.message.len() <= MAX_MESSAGE_BYTES + 3);
        assert_eq!(Issue::new("/a/b", "m").path, "/a/b");
        assert_eq!(quote("abc"), "'abc'");
        let q = quote(&"é".repeat(100));
        assert!(q.ends_with("...' (200 bytes)"), "{q}");
    }
}
