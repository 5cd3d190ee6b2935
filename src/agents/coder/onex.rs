//! The ONEX validator: checks a Python module against the conventions in docs/onex.md, on the
//! syntax tree from tree-sitter's Python grammar (never on the raw text).
//!
//! Levels build on each other:
//! - `lenient`: the module parses with no syntax error.
//! - `moderate`: plus the conventions: file `node_<name>_<type>.py`, exactly one class
//!   `Node<Name><Type>` deriving from `Node<Type>`, its entry method `async def`, with a typed input
//!   parameter and a return annotation naming models the module defines or imports.
//! - `strict`: plus annotations on every parameter and return, a docstring on every class and
//!   public function, no `TODO`, and no body that is only `pass` or `...`.

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tree_sitter::Node;

use super::NodeType;
use crate::syntax::{Lang, parse, syntax_errors};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValidationLevel {
    Strict,
    #[default]
    Moderate,
    Lenient,
}

impl ValidationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationLevel::Strict => "strict",
            ValidationLevel::Moderate => "moderate",
            ValidationLevel::Lenient => "lenient",
        }
    }
}

/// One problem found: 1-based line, the rule broken, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ValidationIssue {
    pub line: usize,
    pub rule: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Validation {
    pub level: ValidationLevel,
    pub passed: bool,
    pub issues: Vec<ValidationIssue>,
}

/// Validates `source`, the module to be written as `file_name`, as a `node_type` node.
pub fn validate(
    source: &str,
    file_name: &str,
    node_type: NodeType,
    level: ValidationLevel,
) -> Validation {
    let mut v = Checker {
        src: source.as_bytes(),
        issues: Vec::new(),
    };
    let tree = parse(Lang::Python, source);
    for e in syntax_errors(&tree, source, 20) {
        v.issue(e.line, "syntax_error", e.message);
    }
    // Conventions on a broken tree would only repeat the syntax errors in other words.
    if v.issues.is_empty() && level != ValidationLevel::Lenient {
        let root = tree.root_node();
        v.conventions(root, file_name, node_type);
        if level == ValidationLevel::Strict {
            v.strict(root);
        }
    }
    v.issues.sort_by_key(|i| i.line);
    Validation {
        level,
        passed: v.issues.is_empty(),
        issues: v.issues,
    }
}

struct Checker<'a> {
    src: &'a [u8],
    issues: Vec<ValidationIssue>,
}

fn line(n: Node) -> usize {
    n.start_position().row + 1
}

/// The definition inside a `decorated_definition`, or the node itself.
fn undecorate(n: Node) -> Node {
    if n.kind() == "decorated_definition" {
        n.child_by_field_name("definition").unwrap_or(n)
    } else {
        n
    }
}

fn named_children(n: Node) -> Vec<Node> {
    let mut c = n.walk();
    n.named_children(&mut c).collect()
}

/// `foo_bar` -> `FooBar`.
pub fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// `FooBar` -> `foo_bar`.
pub fn snake(pascal: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in pascal.chars() {
        if c.is_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

impl<'a> Checker<'a> {
    fn issue(&mut self, line: usize, rule: &str, message: impl Into<String>) {
        self.issues.push(ValidationIssue {
            line,
            rule: rule.to_string(),
            message: message.into(),
        });
    }

    fn text(&self, n: Node) -> &'a str {
        n.utf8_text(self.src).unwrap_or("")
    }

    /// Names bound at module level: classes, functions, imports, assignments.
    fn module_names(&self, root: Node) -> HashSet<String> {
        let mut names = HashSet::new();
        for n in named_children(root) {
            let n = undecorate(n);
            match n.kind() {
                "class_definition" | "function_definition" => {
                    if let Some(name) = n.child_by_field_name("name") {
                        names.insert(self.text(name).to_string());
                    }
                }
                "import_from_statement" | "import_statement" => {
                    let mut c = n.walk();
                    for name in n.children_by_field_name("name", &mut c) {
                        let bound = match name.kind() {
                            "aliased_import" => name.child_by_field_name("alias").unwrap_or(name),
                            _ => name,
                        };
                        let text = self.text(bound);
                        names.insert(text.split('.').next().unwrap_or(text).to_string());
                    }
                }
                "expression_statement" => {
                    if let Some(a) = n.named_child(0).filter(|a| a.kind() == "assignment")
                        && let Some(left) = a.child_by_field_name("left")
                    {
                        names.insert(self.text(left).to_string());
                    }
                }
                _ => {}
            }
        }
        names
    }

    fn conventions(&mut self, root: Node, file_name: &str, node_type: NodeType) {
        let base = node_type.base_class();
        let suffix = node_type.as_str();
        let classes: Vec<Node> = named_children(root)
            .into_iter()
            .map(undecorate)
            .filter(|n| n.kind() == "class_definition")
            .collect();
        let node_classes: Vec<Node> = classes
            .iter()
            .copied()
            .filter(|c| self.bases(*c).iter().any(|b| b == base))
            .collect();
        let Some(class) = node_classes.first().copied() else {
            self.issue(
                1,
                "node_class",
                format!(
                    "no class derives from {base}: expected one class Node<Name>{suffix}({base})"
                ),
            );
            return;
        };
        for extra in &node_classes[1..] {
            self.issue(
                line(*extra),
                "node_class",
                format!("more than one class derives from {base}: one node per module"),
            );
        }
        let class_name = class
            .child_by_field_name("name")
            .map(|n| self.text(n))
            .unwrap_or("");
        let name_part = class_name
            .strip_prefix("Node")
            .and_then(|r| r.strip_suffix(suffix))
            .filter(|n| !n.is_empty() && n.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
        match name_part {
            None => self.issue(
                line(class),
                "class_name",
                format!("class '{class_name}' must be named Node<Name>{suffix}, e.g. NodeFetchUser{suffix}"),
            ),
            Some(name) => {
                let expected = format!("node_{}_{}.py", snake(name), node_type.snake());
                let base_name = std::path::Path::new(file_name)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or(file_name);
                if base_name != expected {
                    self.issue(
                        1,
                        "file_name",
                        format!("module file is '{base_name}'; for class {class_name} it must be '{expected}'"),
                    );
                }
            }
        }
        self.entry_method(root, class, node_type);
    }

    /// Base class names of a class, the last part of dotted names.
    fn bases(&self, class: Node) -> Vec<String> {
        let Some(args) = class.child_by_field_name("superclasses") else {
            return Vec::new();
        };
        named_children(args)
            .into_iter()
            .filter(|a| matches!(a.kind(), "identifier" | "attribute"))
            .map(|a| {
                let t = self.text(a);
                t.rsplit('.').next().unwrap_or(t).to_string()
            })
            .collect()
    }

    fn entry_method(&mut self, root: Node, class: Node, node_type: NodeType) {
        let entry = node_type.entry_method();
        let Some(body) = class.child_by_field_name("body") else {
            return;
        };
        let method = named_children(body)
            .into_iter()
            .map(undecorate)
            .filter(|n| n.kind() == "function_definition")
            .find(|f| {
                f.child_by_field_name("name")
                    .is_some_and(|n| self.text(n) == entry)
            });
        let Some(method) = method else {
            self.issue(
                line(class),
                "entry_method",
                format!("the node class has no '{entry}' method"),
            );
            return;
        };
        let is_async = method.child(0).is_some_and(|c| c.kind() == "async");
        if !is_async {
            self.issue(
                line(method),
                "entry_async",
                format!("'{entry}' must be 'async def'"),
            );
        }
        let known = self.module_names(root);
        let params = method
            .child_by_field_name("parameters")
            .map(named_children)
            .unwrap_or_default();
        // The first parameter after `self` is the input model.
        let input = params
            .iter()
            .skip(1)
            .find(|p| !matches!(p.kind(), "keyword_separator" | "positional_separator"));
        match input.map(|p| (p, p.child_by_field_name("type"))) {
            None => self.issue(
                line(method),
                "typed_input",
                format!("'{entry}' takes no input: expected (self, input_data: Model<Name>Input)"),
            ),
            Some((p, None)) => self.issue(
                line(*p),
                "typed_input",
                format!(
                    "the input parameter '{}' of '{entry}' has no type annotation",
                    self.text(*p)
                ),
            ),
            Some((p, Some(t))) => {
                let ty = self.model_name(t);
                if !known.contains(&ty) {
                    self.issue(
                        line(*p),
                        "typed_input",
                        format!("input type '{ty}' of '{entry}' is neither defined nor imported in the module"),
                    );
                }
            }
        }
        match method.child_by_field_name("return_type") {
            None => self.issue(
                line(method),
                "typed_output",
                format!("'{entry}' has no return annotation: expected -> Model<Name>Output"),
            ),
            Some(t) => {
                let ty = self.model_name(t);
                if !known.contains(&ty) {
                    self.issue(
                        line(t),
                        "typed_output",
                        format!("return type '{ty}' of '{entry}' is neither defined nor imported in the module"),
                    );
                }
            }
        }
    }

    /// The first name of a type annotation (`models.Foo` -> `models`, `"Foo"` -> `Foo`).
    fn model_name(&self, ty: Node) -> String {
        let t = self.text(ty).trim().trim_matches(|c| c == '"' || c == '\'');
        t.split(['.', '[']).next().unwrap_or(t).trim().to_string()
    }

    fn strict(&mut self, root: Node) {
        self.walk_strict(root);
        self.todos(root);
    }

    fn walk_strict(&mut self, n: Node) {
        for child in named_children(n) {
            let def = undecorate(child);
            match def.kind() {
                "class_definition" => {
                    let name = def
                        .child_by_field_name("name")
                        .map(|x| self.text(x))
                        .unwrap_or("");
                    if !self.has_docstring(def) {
                        self.issue(
                            line(def),
                            "docstring",
                            format!("class '{name}' has no docstring"),
                        );
                    }
                    if let Some(body) = def.child_by_field_name("body") {
                        self.walk_strict(body);
                    }
                }
                "function_definition" => {
                    self.function(def);
                    if let Some(body) = def.child_by_field_name("body") {
                        self.walk_strict(body);
                    }
                }
                _ => {
                    if child.named_child_count() > 0 && child.kind() != "string" {
                        self.walk_strict(child);
                    }
                }
            }
        }
    }

    fn function(&mut self, f: Node) {
        let name = f
            .child_by_field_name("name")
            .map(|x| self.text(x))
            .unwrap_or("");
        let params = f
            .child_by_field_name("parameters")
            .map(named_children)
            .unwrap_or_default();
        for (i, p) in params.iter().enumerate() {
            match p.kind() {
                "identifier"
                | "default_parameter"
                | "list_splat_pattern"
                | "dictionary_splat_pattern" => {
                    let pname = self.text(*p);
                    let pname = pname.split('=').next().unwrap_or(pname).trim();
                    // `self` and `cls` are never annotated.
                    if i == 0 && matches!(pname, "self" | "cls") {
                        continue;
                    }
                    self.issue(
                        line(*p),
                        "annotation",
                        format!("parameter '{pname}' of '{name}' has no type annotation"),
                    );
                }
                _ => {}
            }
        }
        if f.child_by_field_name("return_type").is_none() {
            self.issue(
                line(f),
                "annotation",
                format!("function '{name}' has no return annotation"),
            );
        }
        if !name.starts_with('_') && !self.has_docstring(f) {
            self.issue(
                line(f),
                "docstring",
                format!("public function '{name}' has no docstring"),
            );
        }
        if let Some(body) = f.child_by_field_name("body") {
            let stmts = named_children(body);
            let trivial = |s: &Node| {
                s.kind() == "pass_statement"
                    || (s.kind() == "expression_statement"
                        && s.named_child_count() == 1
                        && s.named_child(0)
                            .is_some_and(|e| e.kind() == "ellipsis" || e.kind() == "string"))
            };
            let only_placeholder = !stmts.is_empty()
                && stmts.iter().filter(|s| s.kind() != "comment").all(trivial)
                && stmts.iter().any(|s| {
                    s.kind() == "pass_statement"
                        || s.named_child(0).is_some_and(|e| e.kind() == "ellipsis")
                });
            if only_placeholder {
                self.issue(
                    line(f),
                    "empty_body",
                    format!("function '{name}' has a placeholder body ('pass' or '...')"),
                );
            }
        }
    }

    fn has_docstring(&self, def: Node) -> bool {
        def.child_by_field_name("body")
            .and_then(|b| {
                named_children(b)
                    .into_iter()
                    .find(|s| s.kind() != "comment")
            })
            .is_some_and(|s| {
                s.kind() == "expression_statement"
                    && s.named_child(0).is_some_and(|e| e.kind() == "string")
            })
    }

    /// `TODO` in comments and string literals.
    fn todos(&mut self, n: Node) {
        if matches!(n.kind(), "comment" | "string") {
            if self.text(n).contains("TODO") {
                self.issue(line(n), "todo", "a TODO is left in the module");
            }
            return;
        }
        for c in named_children(n) {
            self.todos(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_conversions() {
        assert_eq!(pascal("fetch_user_data"), "FetchUserData");
        assert_eq!(snake("FetchUserData"), "fetch_user_data");
        assert_eq!(snake("Http2Client"), "http2_client");
    }
}
