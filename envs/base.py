"""Env protocol: where prompts come from and what happens to a completion.

    class Env(Protocol):
        def reset(self, task: dict) -> list[dict]            # task row -> chat messages
        def rollout(self, engine, tasks, n, sampling) -> list[Rollout]
            # len(tasks) * n rollouts, the n of each task contiguous (a group)

A single-turn env samples once per prompt; a multi-turn env would execute the calls,
append the tool messages and sample again, masking tool tokens out of the loss.
"""

from __future__ import annotations

from typing import Protocol

from rl.types import Rollout, SamplingParams


class Env(Protocol):
    def reset(self, task: dict) -> list[dict]: ...

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]: ...


def make_env(cfg, tokenizer) -> Env:
    if cfg.name == "single_turn":
        from envs.single_turn import SingleTurnEnv

        return SingleTurnEnv(tokenizer, system_prompt=cfg.system_prompt, use_template_tools=cfg.use_template_tools)
    raise ValueError(f"env.name={cfg.name!r} is not available: use env=single_turn")
