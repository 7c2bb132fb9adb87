"""A small in-memory key-value store: one per episode, so its tools are stateful and run in
the trainer's process (isolated=False) with schema validation and error messages only."""

from __future__ import annotations

from tools.registry import Tool
from tools.sources import StatefulInstances


class KeyValueStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def kv_set(self, key: str, value: str) -> str:
        """Store a value under a key.

        Args:
            key: The key.
            value: The value to store.
        """
        self.data[key] = value
        return "ok"

    def kv_get(self, key: str) -> str:
        """Read the value stored under a key.

        Args:
            key: The key.
        """
        if key not in self.data:
            raise KeyError(f"no value stored under {key!r}")
        return self.data[key]

    def kv_delete(self, key: str) -> str:
        """Delete a key.

        Args:
            key: The key.
        """
        self.data.pop(key, None)
        return "ok"

    def load_state(self, state: dict) -> None:
        """Start an episode from a task's initial_state (tools/sources.StatefulTools)."""
        self.data = {str(k): str(v) for k, v in dict(state.get("data", state)).items()}

    def state(self) -> dict:
        return {"data": dict(self.data)}

    def tools(self) -> list[Tool]:
        """This store's tools, as env.tools makes them for a stateful class (tools/sources.py)."""
        return list(StatefulInstances([self], {}).tools.values())
