"""Find reward functions by name and sum them with weights.

A reward is named in conf/reward/*.yaml as
    - {name: tool_n1, weight: 1.0}                 built-in (REWARDS below)
    - {name: my_reward, weight: 0.5}               entry point in group `toolcall_rl.rewards`
    - {_target_: my_pkg.rewards.fn, weight: 0.5}   any importable function (Hydra style)
Every function has TRL's signature fn(completions, **columns) -> list[float].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from hydra.utils import get_method

from rewards.schema import schema_validity_reward
from rewards.tool_n1 import format_reward, length_penalty, tool_n1_partial_reward, tool_n1_reward
from rewards.toolrl import toolrl_correctness_reward, toolrl_format_reward, toolrl_reward

RewardFn = Callable[..., list]
REWARDS: dict[str, RewardFn] = {
    "tool_n1": tool_n1_reward,  # binary exact match, [0, 1]
    "tool_n1_partial": tool_n1_partial_reward,  # [0, 1]
    "format": format_reward,  # [0, 1]
    "toolrl": toolrl_reward,  # [-3, 4]
    "toolrl_format": toolrl_format_reward,  # [0, 1]
    "toolrl_correctness": toolrl_correctness_reward,  # [-3, 3]
    "schema_validity": schema_validity_reward,  # [0, 1]
    "length_penalty": length_penalty,  # [-1, 0]
}
ENTRY_POINT_GROUP = "toolcall_rl.rewards"


def resolve(spec: dict) -> tuple[str, RewardFn]:
    """(display name, function) for one reward entry of the config; `kwargs` are bound."""
    name, fn = _find(spec)
    kwargs = dict(spec.get("kwargs") or {})
    return name, functools.partial(fn, **kwargs) if kwargs else fn


def plugins() -> dict:
    """Installed reward plugins: entry points in the `toolcall_rl.rewards` group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _find(spec: dict) -> tuple[str, RewardFn]:
    if spec.get("_target_"):
        target = spec["_target_"]
        return spec.get("name") or target.rsplit(".", 1)[-1], get_method(target)
    name = spec.get("name")
    if name in REWARDS:
        return name, REWARDS[name]
    found = plugins()
    if name in found:
        return name, found[name].load()
    raise ValueError(
        f"reward {name!r} is unknown: built-in rewards are {sorted(REWARDS)}, installed plugins "
        f"({ENTRY_POINT_GROUP}) are {sorted(found)}; or give `_target_: package.module.function`"
    )


@dataclass
class RewardResult:
    total: list[float]  # [N] weighted sum
    per_function: dict[str, list[float]]  # name -> [N]
    reasons: dict[str, list[str | None]]  # name -> [N]; a reason wherever the value is not the maximum


class WeightedReward:
    """sum_i w_i * f_i(completions, **columns). A function that raises is a bug in that
    function and propagates; a bad completion is the function's business (a 0 and a reason)."""

    def __init__(self, functions: list[dict]):
        if not functions:
            raise ValueError("reward.functions is empty: name at least one reward, e.g. {name: tool_n1, weight: 1.0}")
        self.functions = [(*resolve(dict(spec)), float(spec.get("weight", 1.0))) for spec in functions]

    def __call__(self, completions: list[str], **columns) -> RewardResult:
        total = [0.0] * len(completions)
        per_function, reasons = {}, {}
        for name, fn, weight in self.functions:
            raw = fn(completions, **columns)
            if len(raw) != len(completions):
                raise ValueError(f"reward {name} returned {len(raw)} values for {len(completions)} completions")
            values = [float("nan") if v is None else float(v) for v in raw]
            bad = [i for i, v in enumerate(values) if math.isnan(v)]
            if bad:
                raise ValueError(f"reward {name} returned None/NaN for completions {bad[:5]}: a reward must return a number")
            per_function[name] = values
            # functions without reasons (e.g. written for TRL) still get a reason for a 0
            reasons[name] = getattr(raw, "reasons", None) or ["zero" if v == 0 else None for v in values]
            total = [t + weight * v for t, v in zip(total, values)]
        return RewardResult(total, per_function, reasons)

