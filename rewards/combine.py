"""Find reward functions by name and sum them with weights.

A reward is named in conf/reward/*.yaml as
    - {name: tool_n1, weight: 1.0}                 built-in (REWARDS below)
    - {name: my_reward, weight: 0.5}               entry point in group `toolcall_rl.rewards`
    - {_target_: my_pkg.rewards.fn, weight: 0.5}   any importable function (Hydra style)
Every function has TRL's signature fn(completions, **columns) -> list[float].
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from hydra.utils import get_method

from rewards.tool_n1 import format_reward, tool_n1_reward

RewardFn = Callable[..., list]
REWARDS: dict[str, RewardFn] = {"tool_n1": tool_n1_reward, "format": format_reward}
ENTRY_POINT_GROUP = "toolcall_rl.rewards"


def resolve(spec: dict) -> tuple[str, RewardFn]:
    """(display name, function) for one reward entry of the config."""
    if spec.get("_target_"):
        target = spec["_target_"]
        return spec.get("name") or target.rsplit(".", 1)[-1], get_method(target)
    name = spec.get("name")
    if name in REWARDS:
        return name, REWARDS[name]
    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in plugins:
        return name, plugins[name].load()
    raise ValueError(
        f"reward {name!r} is unknown: built-in rewards are {sorted(REWARDS)}, installed plugins "
        f"({ENTRY_POINT_GROUP}) are {sorted(plugins)}; or give `_target_: package.module.function`"
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

