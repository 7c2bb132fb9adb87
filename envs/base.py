"""Env protocol: where prompts come from and what happens to a completion.

    class Env(Protocol):
        def reset(self, task: dict) -> list[dict]            # task row -> chat messages
        def prompt_ids(self, task: dict) -> list[int]        # the rendered prompt
        def rollout(self, engine, tasks, n, sampling) -> list[Rollout]
            # len(tasks) * n rollouts, the n of each task contiguous (a group)

A single-turn env samples once per prompt; multi-turn envs (envs/multi_turn.py, tool_env)
run episodes: the env responds to each model turn, tokens it adds are masked out of the loss.
Envs are found by `env.name`: the built-ins below or an entry point in the `toolcall_rl.envs`
group (a class with `from_config(cfg, tokenizer, tool_format)`, or a function (cfg, tokenizer)).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Protocol

from envs.types import Rollout, SamplingParams

ENTRY_POINT_GROUP = "toolcall_rl.envs"
BUILTIN = {"single_turn": "envs.single_turn:SingleTurnEnv", "tool_env": "envs.tool_env:ToolEnv"}


class Env(Protocol):
    def reset(self, task: dict) -> list[dict]: ...

    def prompt_ids(self, task: dict) -> list[int]: ...

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]: ...


def prompt_kwargs(cfg, tool_format: str = "tool_n1") -> dict:
    """How prompts are written and answers read: env.parser and env.use_template_tools, which
    default to what model.tool_format says (a native format is prompted by the template)."""
    parser = cfg.parser or tool_format
    template = cfg.use_template_tools if cfg.use_template_tools is not None else parser != "tool_n1"
    return {"system_prompt": cfg.system_prompt, "use_template_tools": template, "parser": parser}


def loop_kwargs(cfg, tool_format: str = "tool_n1") -> dict:
    """The episode-loop settings of env config (envs/multi_turn.MultiTurnEnv's arguments)."""
    return {**prompt_kwargs(cfg, tool_format), "max_turns": cfg.max_turns, "max_episode_tokens": cfg.max_episode_tokens,
            "max_context": cfg.max_context, "check_drift": cfg.check_drift}


def make_env(cfg, tokenizer, tool_format: str = "tool_n1") -> Env:
    if cfg.name in BUILTIN:
        module, _, name = BUILTIN[cfg.name].partition(":")
        found = getattr(importlib.import_module(module), name)
    else:
        plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if cfg.name not in plugins:
            raise ValueError(f"env.name={cfg.name!r} is not available: use one of {sorted(BUILTIN)} or an installed "
                             f"plugin ({ENTRY_POINT_GROUP}: {sorted(plugins)})")
        found = plugins[cfg.name].load()
    if hasattr(found, "from_config"):
        return found.from_config(cfg, tokenizer, tool_format)
    return found(cfg, tokenizer)
