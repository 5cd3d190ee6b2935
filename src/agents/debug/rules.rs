//! Well-known bug patterns per language, found on the tree-sitter syntax tree:
//! - Python: `mutable_default_argument`, `bare_except`, `none_equality`, `is_literal`.
//! - Rust: `unwrap_call` (`.unwrap()`/`.expect()`), `panic_macro` (`panic!`, `todo!`,
//!   `unimplemented!`, `unreachable!`).
//! - JavaScript: `loose_equality` (`==`/`!=` except against `null`), `var_declaration`,
//!   `empty_catch`.

use tree_sitter::{Node, Tree};

use super::syntax::Lang;

/// A pattern hit: 1-based position, rule, severity (`error`, `warning`, `info`), message and the
/// fix to suggest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub line: usize,
    pub column: usize,
    pub rule: &'static str,
    pub severity: &'static str,
    pub message: String,
    pub fix: &'static str,
}

pub fn check(lang: Lang, tree: &Tree, source: &str) -> Vec<Hit> {
    let mut hits = Vec::new();
    walk(tree.root_node(), &mut |n| {
        let text = |n: Node| n.utf8_text(source.as_bytes()).unwrap_or("").to_string();
        let at = |n: Node| (n.start_position().row + 1, n.start_position().column + 1);
        let mut hit = |n: Node, rule, severity, message: String, fix| {
            let (line, column) = at(n);
            hits.push(Hit {
                line,
                column,
                rule,
                severity,
                message,
                fix,
            });
        };
        match (lang, n.kind()) {
            (Lang::Python, "default_parameter" | "typed_default_parameter") => {
                if let Some(v) = n.child_by_field_name("value")
                    && matches!(
                        v.kind(),
                        "list"
                            | "dictionary"
                            | "set"
                            | "list_comprehension"
                            | "dictionary_comprehension"
                    )
                {
                    let name = n.child_by_field_name("name").map(text).unwrap_or_default();
                    hit(
                        n,
                        "mutable_default_argument",
                        "warning",
                        format!(
                            "parameter '{name}' has a mutable default ({}), shared by every call",
                            text(v)
                        ),
                        "use None as the default and create the value inside the function",
                    );
                }
            }
            (Lang::Python, "except_clause") => {
                let mut c = n.walk();
                let bare = n
                    .named_children(&mut c)
                    .all(|ch| matches!(ch.kind(), "block" | "comment"));
                if bare {
                    hit(
                        n,
                        "bare_except",
                        "warning",
                        "bare 'except:' also catches KeyboardInterrupt and SystemExit and hides the real error".into(),
                        "catch the specific exception types you expect ('except ValueError:')",
                    );
                }
            }
            (Lang::Python, "comparison_operator") => {
                let mut c = n.walk();
                let ops: Vec<String> = n
                    .children_by_field_name("operators", &mut c)
                    .map(text)
                    .collect();
                let mut c = n.walk();
                let operands: Vec<Node> = n.named_children(&mut c).collect();
                let has = |kinds: &[&str]| operands.iter().any(|o| kinds.contains(&o.kind()));
                if ops.iter().any(|o| o == "==" || o == "!=") && has(&["none"]) {
                    hit(
                        n,
                        "none_equality",
                        "warning",
                        format!("'{}' compares with None by equality", text(n)),
                        "compare with None using 'is' / 'is not'",
                    );
                } else if ops.iter().any(|o| o.starts_with("is"))
                    && has(&["string", "integer", "float"])
                {
                    hit(
                        n,
                        "is_literal",
                        "warning",
                        format!("'{}' compares identity with a literal", text(n)),
                        "compare values with '==' / '!='",
                    );
                }
            }
            (Lang::Rust, "call_expression") => {
                if let Some(f) = n.child_by_field_name("function")
                    && f.kind() == "field_expression"
                    && let Some(field) = f.child_by_field_name("field")
                    && matches!(text(field).as_str(), "unwrap" | "expect")
                {
                    hit(
                        n,
                        "unwrap_call",
                        "warning",
                        format!("'.{}()' panics on None/Err", text(field)),
                        "handle the None/Err case (match, if let, '?', or unwrap_or)",
                    );
                }
            }
            (Lang::Rust, "macro_invocation") => {
                if let Some(m) = n.child_by_field_name("macro") {
                    let name = text(m);
                    if matches!(
                        name.as_str(),
                        "panic" | "todo" | "unimplemented" | "unreachable"
                    ) {
                        hit(
                            n,
                            "panic_macro",
                            "warning",
                            format!("'{name}!' aborts the thread when reached"),
                            "return an error instead of panicking, or implement the missing branch",
                        );
                    }
                }
            }
            (js, "binary_expression") if js.is_javascript_family() => {
                if let Some(op) = n.child_by_field_name("operator")
                    && matches!(text(op).as_str(), "==" | "!=")
                {
                    let null_side = ["left", "right"]
                        .iter()
                        .any(|f| n.child_by_field_name(f).is_some_and(|s| s.kind() == "null"));
                    if !null_side {
                        hit(
                            n,
                            "loose_equality",
                            "warning",
                            format!("'{}' uses loose equality (type coercion)", text(n)),
                            "use '===' / '!=='",
                        );
                    }
                }
            }
            (js, "variable_declaration") if js.is_javascript_family() => hit(
                n,
                "var_declaration",
                "info",
                "'var' is function-scoped and hoisted".into(),
                "use 'let' or 'const'",
            ),
            (js, "catch_clause") if js.is_javascript_family() => {
                if let Some(body) = n.child_by_field_name("body") {
                    let mut c = body.walk();
                    if body.named_children(&mut c).all(|s| s.kind() == "comment") {
                        hit(
                            n,
                            "empty_catch",
                            "warning",
                            "an empty catch block swallows the error".into(),
                            "log or rethrow the error, or handle it",
                        );
                    }
                }
            }
            _ => {}
        }
    });
    hits
}

fn walk(n: Node, f: &mut impl FnMut(Node)) {
    f(n);
    let mut c = n.walk();
    for child in n.named_children(&mut c) {
        walk(child, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    fn rules(lang: Lang, src: &str) -> Vec<(&'static str, usize)> {
        check(lang, &parse(lang, src), src)
            .into_iter()
            .map(|h| (h.rule, h.line))
            .collect()
    }

    #[test]
    fn python_patterns() {
        let src = "def add(item, bucket=[]):\n    bucket.append(item)\n    return bucket\n\ndef f(x: dict = {}):\n    try:\n        return x['a'] == None\n    except:\n        return x is 'a'\n";
        assert_eq!(
            rules(Lang::Python, src),
            [
                ("mutable_default_argument", 1),
                ("mutable_default_argument", 5),
                ("none_equality", 7),
                ("bare_except", 8),
                ("is_literal", 9)
            ]
        );
        // Clean code raises nothing.
        let ok = "def add(item, bucket=None):\n    if bucket is None:\n        bucket = []\n    try:\n        return item == 1\n    except ValueError:\n        return False\n";
        assert!(rules(Lang::Python, ok).is_empty());
    }

    #[test]
    fn rust_patterns() {
        let src = "fn main() {\n    let v: Option<i32> = None;\n    let x = v.unwrap();\n    if x > 1 { todo!() }\n    let y = v.unwrap_or(0);\n}\n";
        assert_eq!(
            rules(Lang::Rust, src),
            [("unwrap_call", 3), ("panic_macro", 4)]
        );
    }

    #[test]
    fn javascript_patterns() {
        let src = "var a = 1;\nif (a == '1') {}\nif (a == null) {}\ntry { f(); } catch (e) { }\ntry { f(); } catch (e) { console.log(e); }\nconst b = a === 1;\n";
        assert_eq!(
            rules(Lang::JavaScript, src),
            [
                ("var_declaration", 1),
                ("loose_equality", 2),
                ("empty_catch", 4)
            ]
        );
    }
}
