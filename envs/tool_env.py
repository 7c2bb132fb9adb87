"""The tool env: the model calls tools, the calls are validated against their schemas and run
(in the sandbox, in-process for stateful instances, or on an MCP server), their results come
back as tool messages through the chat template, and the model goes on (envs/multi_turn.py).

    python -m rl.train env=tool_env data=synthetic_multi_turn

The tools come from `env.tools` (tools/sources.py: registered functions, `_target_` paths,
stateful classes with an instance per episode, MCP servers). A task offers the tools its row
lists (`tools`), or all of them when the row has none; a call to a tool the task does not
offer gets an error message. A turn's calls, across every episode of the batch, run
concurrently. A result longer than `max_tool_tokens` is cut, with a note the model can read.
Rows with `user_turns` (BFCL multi-turn) get their next user message when the model answers
without calling.

One episode is one Rollout: prompt | turn 1 | tool results | turn 2 | ... | turn K, with
loss_mask 1 on the model's tokens only. Rollout.text is the episode as one Tool-N1 answer (so
every single-answer reward scores it unchanged), and Rollout.episode holds the turns, the
results, the final answer and the final state of the stateful tools for episode rewards
(rewards/episode.py)."""

from __future__ import annotations

import json

from envs.multi_turn import Episode, MultiTurnEnv
from tools.sandbox import run_calls, unknown_tool
from tools.sources import ToolBox, toolbox

DEFAULT_TOOLS = ("calculate", "convert_units", "add_days", "days_between", {"_target_": "tools.builtin.KeyValueStore"})


class ToolEnv(MultiTurnEnv):
    def __init__(self, tokenizer, tools: ToolBox | list | None = None, timeout_s: float = 5.0,
                 max_tool_tokens: int | None = 1024, truncate_side: str = "right", **loop):
        super().__init__(tokenizer, **loop)
        self.toolbox = tools if isinstance(tools, ToolBox) else toolbox(list(DEFAULT_TOOLS) if tools is None else tools)
        if truncate_side not in ("left", "right"):
            raise ValueError(f"env.truncate_side={truncate_side!r}: give right (keep the start) or left (keep the end)")
        self.timeout_s, self.max_tool_tokens, self.truncate_side = timeout_s, max_tool_tokens, truncate_side

    @classmethod
    def from_config(cls, cfg, tokenizer, tool_format: str = "tool_n1") -> "ToolEnv":
        from envs.base import loop_kwargs

        from omegaconf import OmegaConf

        tools = OmegaConf.to_container(cfg.tools) if OmegaConf.is_config(cfg.tools) else list(cfg.tools or [])
        return cls(tokenizer, tools=tools or None, timeout_s=cfg.tool_timeout_s,
                   max_tool_tokens=cfg.max_tool_tokens, truncate_side=cfg.truncate_side, **loop_kwargs(cfg, tool_format))

    def offered(self, task: dict) -> dict:
        """The task with its tools: its own list, or every tool of the env."""
        return task if task.get("tools") else {**task, "tools": self.toolbox.specs(task)}

    def reset(self, task: dict) -> list[dict]:
        return super().reset(self.offered(task))

    def prompt_ids(self, task: dict) -> list[int]:
        return super().prompt_ids(self.offered(task))

    def setup(self, e: Episode) -> None:
        e.task = self.offered(e.task)
        e.tools = self.toolbox.episode(e.task)

    def is_done(self, e: Episode, turn: dict) -> str | None:
        if turn["calls"] is None:
            return "unparsed"
        if not turn["calls"]:
            return None if e.user_turn < len(e.task.get("user_turns") or []) else "answer"
        return None

    def env_responses(self, items: list[tuple[Episode, dict]]) -> list[list[dict]]:
        """Every call of every episode in one concurrent batch; then one tool message per call
        (or, after an answer, the task's next user message)."""
        pairs, where = [], []  # (tool, call) of every call, and the index of its episode
        for i, (e, turn) in enumerate(items):
            offered = {t["name"] for t in e.task["tools"]}
            for call in turn["calls"]:
                tool = e.tools.tools.get(call["name"]) if call["name"] in offered else None
                pairs.append((tool, call))
                where.append(i)
        results = run_calls(pairs, timeout_s=self.timeout_s) if pairs else []
        replies: list[list[dict]] = [[] for _ in items]
        for i, (tool, call), result in zip(where, pairs, results):
            e, turn = items[i]
            if tool is None:  # the sandbox's message, with this episode's tools
                result = unknown_tool(call["name"], [t["name"] for t in e.task["tools"]])
            content = self.cut(result.content)
            turn["results"].append({"name": call["name"], "content": content, "ok": result.ok, "error": result.error})
            replies[i].append({"role": "tool", "name": call["name"], "content": content})
        for i, (e, turn) in enumerate(items):
            if not turn["calls"]:
                replies[i] = self.next_user_turn(e)
        return replies

    def next_user_turn(self, e: Episode) -> list[dict]:
        """The task's next user message; functions a task adds at that turn (BFCL's miss_func)
        become callable from then on and are listed in the message."""
        messages = [dict(m) for m in e.task["user_turns"][e.user_turn]]
        added = (e.task.get("added_tools") or {}).get(str(e.user_turn + 1))
        if added:
            e.task = {**e.task, "tools": list(e.task["tools"]) + list(added)}
            listing = "\n".join(json.dumps(spec, ensure_ascii=False) for spec in added)
            messages[-1]["content"] = f"{messages[-1].get('content') or ''}\nNew functions you may call:\n<tools>\n{listing}\n</tools>"
        return messages

    def cut(self, content: str) -> str:
        """A tool result within max_tool_tokens: longer ones keep their start (right) or end
        (left), with a note saying so."""
        if self.max_tool_tokens is None or len(content) <= self.max_tool_tokens:  # a token is at least a character
            return content
        ids = self.tokenizer.encode(content, add_special_tokens=False)
        if len(ids) <= self.max_tool_tokens:
            return content
        keep = self.max_tool_tokens
        if self.truncate_side == "right":
            return (self.tokenizer.decode(ids[:keep]) +
                    f"\n[tool output cut: showing the first {keep} of {len(ids)} tokens]")
        return f"[tool output cut: showing the last {keep} of {len(ids)} tokens]\n" + self.tokenizer.decode(ids[-keep:])

    def finish(self, e: Episode) -> dict:
        try:
            return e.tools.state()
        finally:
            e.tools.close()
