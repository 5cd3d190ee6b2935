//! Python modules for coder tests: one that passes every level, and hand-broken variants that
//! fail exactly one level each.
#![allow(dead_code)]

/// A complete Effect node `fetch_user` that passes `strict`.
pub const GOOD_EFFECT: &str = r#""""ONEX Effect node that fetches a user."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from omnibase_core.nodes import NodeEffect


class ModelFetchUserInput(BaseModel):
    """Input: the user id."""

    user_id: int


class ModelFetchUserOutput(BaseModel):
    """Output: the user record."""

    user: dict[str, Any]


class NodeFetchUserEffect(NodeEffect):
    """Fetch a user from the directory service."""

    async def execute_effect(self, input_data: ModelFetchUserInput) -> ModelFetchUserOutput:
        """Fetch the user with the client on the container."""
        client = self.container.directory_client
        user = await client.get_user(input_data.user_id)
        return ModelFetchUserOutput(user=dict(user))
"#;

/// Fails `lenient`: the `def` line lacks its colon (line 30).
pub fn syntax_broken() -> String {
    GOOD_EFFECT.replace("-> ModelFetchUserOutput:\n", "-> ModelFetchUserOutput\n")
}

/// Parses, but fails `moderate`: the entry method is not async.
pub fn not_async() -> String {
    GOOD_EFFECT.replace("async def execute_effect", "def execute_effect")
}

/// Passes `moderate`, fails `strict`: no docstring on the class, a TODO, an unannotated helper
/// whose body is only `pass`.
pub fn not_strict() -> String {
    GOOD_EFFECT
        .replace("    \"\"\"Fetch a user from the directory service.\"\"\"\n\n", "")
        .replace(
            "        return ModelFetchUserOutput(user=dict(user))\n",
            "        return ModelFetchUserOutput(user=dict(user))  # TODO: cache\n\n    def audit(self, event):\n        pass\n",
        )
}
