"""Env protocol: where prompts come from and what happens to a completion.

    class Env(Protocol):
        def reset(self, task: dict) -> list[dict]            # task row -> chat messages
        def rollout(self, engine, tasks, n, sampling) -> list[Rollout]
            # len(tasks) * n rollouts, the n of each task contiguous (a group)

A single-turn env samples once per prompt; the multi-turn env (tool_env) executes the
calls, appends the tool messages and samples again, masking tool tokens out of the loss.
"""

from __future__ import annotations

from typing import Protocol

from envs.types import Rollout, SamplingParams


class Env(Protocol):
    def reset(self, task: dict) -> list[dict]: ...

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]: ...


def make_env(cfg, tokenizer) -> Env:
    if cfg.name == "single_turn":
        from envs.single_turn import SingleTurnEnv

        return SingleTurnEnv(tokenizer, system_prompt=cfg.system_prompt, use_template_tools=cfg.use_template_tools)
    if cfg.name == "tool_env":
        from envs.tool_env import ToolEnv

        return ToolEnv(tokenizer, system_prompt=cfg.system_prompt, max_turns=cfg.max_turns, timeout_s=cfg.tool_timeout_s)
    raise ValueError(f"env.name={cfg.name!r} is not available: use env=single_turn or env=tool_env")
