//! The offline `template` backend: scaffolds a complete ONEX node module from the contract, with
//! no model. The module follows every convention of docs/onex.md (and passes `strict`): typed
//! input and output models, the node class, and an async entry method with the contract in its
//! docstring. The entry method does real, simple work for its node type and delegates the
//! contract-specific part to a handler registered on the ONEX container, which is the ONEX
//! pattern of thin nodes.

use super::NodeType;
use super::onex::pascal;

/// The module text for a node named `name` (snake case).
pub fn render(name: &str, node_type: NodeType, contract: &str) -> String {
    let pascal_name = pascal(name);
    let class = format!("Node{pascal_name}{}", node_type.as_str());
    let input = format!("Model{pascal_name}Input");
    let output = format!("Model{pascal_name}Output");
    let base = node_type.base_class();
    let entry = node_type.entry_method();
    let contract_doc = docstring_text(contract);
    let handler = format!("{}_handler", node_type.snake());
    let (input_fields, output_fields, body) = match node_type {
        NodeType::Effect => (
            "    payload: dict[str, Any] = Field(default_factory=dict)\n",
            "    result: dict[str, Any] = Field(default_factory=dict)\n    success: bool = True\n",
            format!(
                "        handler = self._handler()\n        result = await handler(input_data.payload)\n        return {output}(result=dict(result), success=True)\n"
            ),
        ),
        NodeType::Compute => (
            "    payload: dict[str, Any] = Field(default_factory=dict)\n",
            "    result: dict[str, Any] = Field(default_factory=dict)\n",
            format!(
                "        handler = getattr(self.container, \"{handler}\", None)\n        if handler is None:\n            return {output}(result=dict(sorted(input_data.payload.items())))\n        return {output}(result=dict(handler(input_data.payload)))\n"
            ),
        ),
        NodeType::Reducer => (
            "    items: list[dict[str, Any]] = Field(default_factory=list)\n    state: dict[str, Any] = Field(default_factory=dict)\n",
            "    state: dict[str, Any] = Field(default_factory=dict)\n    reduced_count: int = 0\n",
            format!(
                "        handler = getattr(self.container, \"{handler}\", None)\n        state = dict(input_data.state)\n        for item in input_data.items:\n            state = dict(handler(state, item)) if handler is not None else {{**state, **item}}\n        return {output}(state=state, reduced_count=len(input_data.items))\n"
            ),
        ),
        NodeType::Orchestrator => (
            "    steps: list[str] = Field(default_factory=list)\n    payload: dict[str, Any] = Field(default_factory=dict)\n",
            "    completed: list[str] = Field(default_factory=list)\n    results: dict[str, Any] = Field(default_factory=dict)\n",
            format!(
                "        handler = self._handler()\n        completed: list[str] = []\n        results: dict[str, Any] = {{}}\n        for step in input_data.steps:\n            results[step] = await handler(step, input_data.payload)\n            completed.append(step)\n        return {output}(completed=completed, results=results)\n"
            ),
        ),
    };
    let needs_handler_method = matches!(node_type, NodeType::Effect | NodeType::Orchestrator);
    let handler_method = if needs_handler_method {
        format!(
            r#"
    def _handler(self) -> Any:
        handler = getattr(self.container, "{handler}", None)
        if handler is None:
            raise RuntimeError(
                "{class} needs a '{handler}' registered on its container"
            )
        return handler
"#
        )
    } else {
        String::new()
    };
    format!(
        r#""""ONEX {ty} node '{name}'.

Contract: {contract_doc}

Scaffolded by dispatch_runner (template backend, no model): the structure follows the ONEX
conventions; the contract-specific work is delegated to the '{handler}' on the container.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from omnibase_core.nodes import {base}


class {input}(BaseModel):
    """Input of {class}."""

{input_fields}

class {output}(BaseModel):
    """Output of {class}."""

{output_fields}

class {class}({base}):
    """{ty} node: {contract_doc}"""

    async def {entry}(self, input_data: {input}) -> {output}:
        """Run the contract: {contract_doc}"""
{body}{handler_method}"#,
        ty = node_type.as_str(),
    )
}

/// The contract as safe docstring text: one line, no closing quotes or backslashes.
fn docstring_text(contract: &str) -> String {
    let one_line = contract.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line
        .replace('\\', "/")
        .replace("\"\"\"", "'''")
        .trim_end_matches('"')
        .to_string()
}

/// A snake-case node name from the contract: its first three meaningful words.
pub fn derive_name(contract: &str) -> String {
    const STOP: &[&str] = &[
        "a",
        "an",
        "the",
        "that",
        "which",
        "and",
        "or",
        "of",
        "to",
        "for",
        "from",
        "in",
        "on",
        "with",
        "by",
        "into",
        "node",
        "effect",
        "compute",
        "reducer",
        "orchestrator",
        "it",
        "its",
        "is",
        "are",
        "be",
        "each",
        "all",
        "given",
        "then",
        "this",
        "as",
        "onex",
        "should",
        "must",
        "will",
        "when",
    ];
    let words: Vec<String> = contract
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|w| w.to_ascii_lowercase())
        .filter(|w| !w.is_empty() && !STOP.contains(&w.as_str()))
        .take(3)
        .collect();
    let name = words.join("_");
    match name.chars().next() {
        None => "generated".into(),
        Some(c) if c.is_ascii_digit() => format!("n_{name}"),
        Some(_) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_contract() {
        assert_eq!(
            derive_name("Fetch user profiles from the REST API and cache them"),
            "fetch_user_profiles"
        );
        assert_eq!(derive_name("  !!! "), "generated");
        assert_eq!(derive_name("2 phase commit"), "n_2_phase_commit");
    }

    #[test]
    fn contract_cannot_break_the_docstring() {
        let src = render("x", NodeType::Compute, "ends with \"\"\" and \\ and \"");
        assert!(!src.contains("\\"));
        assert_eq!(src.matches("\"\"\"").count() % 2, 0);
    }
}
