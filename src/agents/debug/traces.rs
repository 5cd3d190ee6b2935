//! Reading stack traces: Python tracebacks, Rust panics (with or without a backtrace) and
//! JavaScript (Node.js / V8) stack traces. Frames come out innermost first, whatever order the
//! runtime printed them in. These are runtime messages, not source code, so line-oriented
//! patterns are the right tool here.

use std::sync::LazyLock;

use regex::Regex;

use super::syntax::Lang;

/// One frame as printed in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub file: String,
    pub line: usize,
    pub column: Option<usize>,
    pub function: Option<String>,
}

/// One trace: the error it reports and its frames, innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTrace {
    pub language: Lang,
    /// `ZeroDivisionError`, `TypeError`, `panic`.
    pub error_type: String,
    pub message: String,
    pub frames: Vec<RawFrame>,
}

static PY_FRAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^\s*File "([^"]+)", line (\d+)(?:, in (.+))?\s*$"#).unwrap());
static PY_ERROR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$").unwrap());
static RS_PANIC_NEW: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"panicked at (.+?):(\d+):(\d+):?\s*$").unwrap());
static RS_PANIC_OLD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"panicked at '(.*)', (.+?):(\d+):(\d+)\s*$").unwrap());
static RS_FN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\s*\d+:\s+(.+?)\s*$").unwrap());
static RS_AT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*at (.+?):(\d+):(\d+)\s*$").unwrap());
static JS_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*at (?:(?:async )?(.+?) \()?(.+?):(\d+):(\d+)\)?\s*$").unwrap()
});
static JS_ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:Uncaught )?([A-Za-z_$][\w$]*(?:Error|Exception)|Error)(?::\s?(.*))?$").unwrap()
});

/// Parses one trace text; `None` when it is none of the known formats.
pub fn parse(text: &str) -> Option<ParsedTrace> {
    if text.contains("Traceback (most recent call last)")
        || text.lines().any(|l| PY_FRAME.is_match(l))
    {
        return parse_python(text);
    }
    if text.contains("panicked at") {
        return parse_rust(text);
    }
    if text.lines().any(|l| JS_FRAME.is_match(l)) {
        return parse_js(text);
    }
    None
}

fn parse_python(text: &str) -> Option<ParsedTrace> {
    let lines: Vec<&str> = text.lines().collect();
    // With chained exceptions ("During handling ..."), the last traceback is the one raised.
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last)"))
        .unwrap_or(0);
    let mut frames = Vec::new();
    let mut error = None;
    for l in &lines[start..] {
        if let Some(c) = PY_FRAME.captures(l) {
            frames.push(RawFrame {
                file: c[1].to_string(),
                line: c[2].parse().ok()?,
                column: None,
                function: c.get(3).map(|m| m.as_str().trim().to_string()),
            });
        } else if !l.starts_with(' ')
            && !l.starts_with("Traceback")
            && !l.trim().is_empty()
            && let Some(c) = PY_ERROR.captures(l.trim_end())
        {
            error = Some((
                c[1].to_string(),
                c.get(2).map_or(String::new(), |m| m.as_str().to_string()),
            ));
        }
    }
    if frames.is_empty() {
        return None;
    }
    frames.reverse();
    let (error_type, message) = error.unwrap_or_else(|| ("Exception".into(), String::new()));
    Some(ParsedTrace {
        language: Lang::Python,
        error_type,
        message,
        frames,
    })
}

fn parse_rust(text: &str) -> Option<ParsedTrace> {
    let lines: Vec<&str> = text.lines().collect();
    let mut frames = Vec::new();
    let mut message = String::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(c) = RS_PANIC_OLD.captures(l) {
            message = c[1].to_string();
            frames.push(frame(&c[2], &c[3], Some(&c[4]), None)?);
            break;
        }
        if let Some(c) = RS_PANIC_NEW.captures(l) {
            // Since Rust 1.73 the message follows on the next lines.
            message = lines[i + 1..]
                .iter()
                .take_while(|m| !m.starts_with("note:") && !m.starts_with("stack backtrace:"))
                .map(|m| m.trim())
                .collect::<Vec<_>>()
                .join("\n");
            frames.push(frame(&c[1], &c[2], Some(&c[3]), None)?);
            break;
        }
    }
    if frames.is_empty() {
        return None;
    }
    // A backtrace, innermost first: "N: function" then "at file:line:col".
    let mut function: Option<String> = None;
    let mut backtrace = Vec::new();
    for l in &lines {
        if let Some(c) = RS_AT.captures(l) {
            backtrace.push(frame(&c[1], &c[2], Some(&c[3]), function.take())?);
        } else if let Some(c) = RS_FN.captures(l) {
            function = Some(c[1].to_string());
        }
    }
    if !backtrace.is_empty() {
        // The panic location names no function; the backtrace's matching frame does.
        let panic_at = frames.remove(0);
        let same = backtrace.iter().any(|f| {
            f.line == panic_at.line && f.file.ends_with(panic_at.file.trim_start_matches("./"))
        });
        if !same {
            frames.push(panic_at);
        }
        frames.extend(backtrace);
    }
    Some(ParsedTrace {
        language: Lang::Rust,
        error_type: "panic".into(),
        message,
        frames,
    })
}

fn parse_js(text: &str) -> Option<ParsedTrace> {
    let mut frames = Vec::new();
    let mut error = None;
    for l in text.lines() {
        if let Some(c) = JS_FRAME.captures(l) {
            let file = c[2].strip_prefix("file://").unwrap_or(&c[2]);
            frames.push(frame(
                file,
                &c[3],
                Some(&c[4]),
                c.get(1).map(|m| m.as_str().to_string()),
            )?);
        } else if error.is_none()
            && let Some(c) = JS_ERROR.captures(l.trim())
        {
            error = Some((
                c[1].to_string(),
                c.get(2).map_or(String::new(), |m| m.as_str().to_string()),
            ));
        }
    }
    if frames.is_empty() {
        return None;
    }
    let (error_type, message) = error.unwrap_or_else(|| ("Error".into(), String::new()));
    Some(ParsedTrace {
        language: Lang::JavaScript,
        error_type,
        message,
        frames,
    })
}

fn frame(
    file: &str,
    line: &str,
    column: Option<&str>,
    function: Option<String>,
) -> Option<RawFrame> {
    Some(RawFrame {
        file: file.trim().to_string(),
        line: line.parse().ok()?,
        column: column.and_then(|c| c.parse().ok()),
        function,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_traceback_innermost_first() {
        let t = parse(
            "Traceback (most recent call last):\n  File \"/w/app.py\", line 9, in <module>\n    main()\n  File \"/w/app.py\", line 5, in main\n    return 1 / 0\nZeroDivisionError: division by zero\n",
        )
        .unwrap();
        assert_eq!(t.language, Lang::Python);
        assert_eq!(t.error_type, "ZeroDivisionError");
        assert_eq!(t.message, "division by zero");
        assert_eq!(t.frames[0].line, 5);
        assert_eq!(t.frames[0].function.as_deref(), Some("main"));
        assert_eq!(t.frames[1].line, 9);
    }

    #[test]
    fn rust_panics_old_and_new() {
        let t = parse("thread 'main' panicked at src/main.rs:4:13:\nindex out of bounds: the len is 3 but the index is 10\nnote: run with `RUST_BACKTRACE=1`").unwrap();
        assert_eq!(t.frames[0].file, "src/main.rs");
        assert_eq!((t.frames[0].line, t.frames[0].column), (4, Some(13)));
        assert_eq!(
            t.message,
            "index out of bounds: the len is 3 but the index is 10"
        );
        let t = parse("thread 'main' panicked at 'boom', src/lib.rs:7:5").unwrap();
        assert_eq!(t.message, "boom");
        assert_eq!(t.frames[0].line, 7);
    }

    #[test]
    fn node_stack() {
        let t = parse("/w/app.js:3\n  x.y\n\nTypeError: Cannot read properties of undefined (reading 'y')\n    at greet (/w/app.js:3:19)\n    at Object.<anonymous> (file:///w/app.js:6:1)\n    at node:internal/main:1:1").unwrap();
        assert_eq!(t.error_type, "TypeError");
        assert_eq!(t.frames[0].function.as_deref(), Some("greet"));
        assert_eq!((t.frames[0].line, t.frames[0].column), (3, Some(19)));
        assert_eq!(t.frames[1].file, "/w/app.js");
        assert_eq!(t.frames.len(), 3);
    }

    #[test]
    fn other_text_is_no_trace() {
        assert!(parse("something went wrong").is_none());
    }
}
