//! Parsing source with tree-sitter: which grammar a file gets, and where its syntax errors are.
//! Shared by `debug` (locating syntax errors) and `coder` (the `lenient` validation level).

use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

/// Languages with a grammar in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    Python,
    Rust,
    JavaScript,
    TypeScript,
    /// TypeScript with JSX.
    Tsx,
}

impl Lang {
    /// TypeScript's grammar extends JavaScript's: the JavaScript bug patterns apply to it too.
    pub fn is_javascript_family(self) -> bool {
        matches!(self, Lang::JavaScript | Lang::TypeScript | Lang::Tsx)
    }

    /// The language of a file, from its extension.
    pub fn of_path(path: &str) -> Option<Lang> {
        let ext = std::path::Path::new(path).extension()?.to_str()?;
        match ext.to_ascii_lowercase().as_str() {
            "py" | "pyi" => Some(Lang::Python),
            "rs" => Some(Lang::Rust),
            "js" | "mjs" | "cjs" | "jsx" => Some(Lang::JavaScript),
            "ts" | "mts" | "cts" => Some(Lang::TypeScript),
            "tsx" => Some(Lang::Tsx),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Rust => "rust",
            Lang::JavaScript => "javascript",
            Lang::TypeScript => "typescript",
            Lang::Tsx => "tsx",
        }
    }

    fn grammar(self) -> tree_sitter::Language {
        match self {
            Lang::Python => tree_sitter_python::LANGUAGE.into(),
            Lang::Rust => tree_sitter_rust::LANGUAGE.into(),
            Lang::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Lang::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Lang::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
        }
    }
}

/// Parses `source`. Tree-sitter always produces a tree; errors are nodes inside it.
pub fn parse(lang: Lang, source: &str) -> Tree {
    let mut parser = Parser::new();
    parser
        .set_language(&lang.grammar())
        .expect("grammar built against a compatible tree-sitter");
    parser
        .parse(source, None)
        .expect("parsing without a timeout or cancellation always yields a tree")
}

/// One syntax error: 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every syntax error in the tree (at most `limit`), in source order.
pub fn syntax_errors(tree: &Tree, source: &str, limit: usize) -> Vec<SyntaxError> {
    let mut out = Vec::new();
    if tree.root_node().has_error() {
        collect(tree.root_node(), source, limit, &mut out);
    }
    out
}

fn collect(node: Node, source: &str, limit: usize, out: &mut Vec<SyntaxError>) {
    if out.len() >= limit {
        return;
    }
    let pos = node.start_position();
    if node.is_missing() {
        out.push(SyntaxError {
            line: pos.row + 1,
            column: pos.column + 1,
            message: format!("missing '{}'", node.kind()),
        });
        return;
    }
    if node.is_error() {
        let children: Vec<Node> = {
            let mut c = node.walk();
            node.children(&mut c).collect()
        };
        // Complete statements inside an ERROR parsed fine. Whichever comes first decides: a
        // bare token (a keyword or punctuation the parser could not fit into a structure) is
        // where it got stuck; a child holding an error is closer to the mistake than this
        // node (large ERROR nodes often wrap well-formed code around a smaller one).
        let first = children
            .iter()
            .find(|c| !c.is_named() || c.is_error() || c.is_missing() || c.has_error());
        let at = match first {
            Some(c) if c.is_named() || c.is_missing() => {
                collect(*c, source, limit, out);
                return;
            }
            Some(c) => *c,
            None => node,
        };
        let pos = at.start_position();
        let line_text = source.lines().nth(pos.row).unwrap_or("").trim();
        let shown: String = line_text.chars().take(60).collect();
        out.push(SyntaxError {
            line: pos.row + 1,
            column: pos.column + 1,
            message: if shown.is_empty() {
                "syntax error".to_string()
            } else {
                format!("syntax error in '{shown}'")
            },
        });
        return;
    }
    if !node.has_error() {
        return;
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        collect(child, source, limit, out);
    }
}

/// Lines `line - before ..= line + after` (1-based) of `source`, each prefixed with its number.
pub fn snippet(source: &str, line: usize, before: usize, after: usize) -> String {
    let start = line.saturating_sub(before).max(1);
    source
        .lines()
        .enumerate()
        .skip(start - 1)
        .take(line + after + 1 - start)
        .map(|(i, l)| format!("{:>4} | {l}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_code_has_no_errors() {
        for (lang, src) in [
            (Lang::Python, "def f(x):\n    return x\n"),
            (Lang::Rust, "fn main() { let x = 1; println!(\"{x}\"); }\n"),
            (Lang::JavaScript, "function f(x) { return x + 1; }\n"),
        ] {
            assert!(
                syntax_errors(&parse(lang, src), src, 10).is_empty(),
                "{src}"
            );
        }
    }

    #[test]
    fn snippet_numbers_lines() {
        assert_eq!(
            snippet("a\nb\nc\nd", 2, 1, 1),
            "   1 | a\n   2 | b\n   3 | c"
        );
        assert_eq!(snippet("a\nb", 1, 3, 0), "   1 | a");
    }
}
