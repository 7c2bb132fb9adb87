"""Find reward functions by name and sum them with weights.

A reward is named in conf/reward/*.yaml as
    - {name: tool_n1, weight: 1.0}                 built-in (REWARDS below)
    - {name: my_reward, weight: 0.5}               entry point in group `toolcall_rl.rewards`
    - {_target_: my_pkg.rewards.fn, weight: 0.5}   any importable function (Hydra style)
Every function has TRL's signature fn(completions, **columns) -> list[float].
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
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
    check_kwargs(name, fn, kwargs)
    return name, functools.partial(fn, **kwargs) if kwargs else fn


def check_kwargs(name: str, fn: RewardFn, kwargs: dict) -> None:
    """Configured kwargs must be parameters that `fn` names: `**kwargs` takes the dataset
    columns, so a typo there would be silently ignored. Raises ValueError at start-up."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to check (some builtins and C functions)
        return
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [n for n in named[1:] if n != "completions"] if named and named[0] == "completions" else named
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"reward {name}: unknown kwarg {key!r}; accepted keys are {accepted}{hint}")


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


class RewardError(RuntimeError, ValueError):
    """A reward function raised (the original exception is the __cause__) or returned
    something that is not one finite number per completion; the message names the reward."""


def _number(value) -> float | None:
    """value as a finite float, or None when it is not a finite number (text is not a number)."""
    if isinstance(value, (str, bytes)) or getattr(value, "ndim", 0):  # text, or an array: not one number
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, ArithmeticError):  # ArithmeticError: an int or Fraction too big for a float
        return None
    return number if math.isfinite(number) else None


def _items(raw) -> list | None:
    """The values of a sequence (list, tuple, array, tensor); None for text, a mapping, a set,
    a scalar, or a 0-d array or tensor."""
    if isinstance(raw, (str, bytes, Mapping, AbstractSet)) or not hasattr(raw, "__len__"):
        return None
    try:
        return list(raw)
    except TypeError:  # numpy's and torch's 0-d values have a __len__ that raises
        return None


def checked_values(name: str, raw, n: int) -> list[float]:
    """A reward's output as n finite floats; else a RewardError naming the reward and the first bad values."""
    items = _items(raw)
    if items is None:
        raise RewardError(f"reward {name} returned {type(raw).__name__}, not a list of {n} numbers")
    if len(items) != n:
        raise RewardError(f"reward {name} returned {len(items)} values for {n} completions")
    values = [_number(v) for v in items]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        raise RewardError(f"reward {name} returned values that are not finite numbers for completions {bad[:5]}: "
                          f"{[items[i] for i in bad[:5]]!r:.300}; a reward must return a finite number for each completion")
    return values


def checked_reasons(name: str, raw, values: list[float]) -> list[str | None]:
    """The reasons a reward gave (Scores), or "zero" for each 0 where it gave none (plain TRL functions)."""
    given = getattr(raw, "reasons", None)
    if given is None:
        return ["zero" if v == 0 else None for v in values]
    if not isinstance(given, (list, tuple)) or len(given) != len(values):
        raise RewardError(f"reward {name} returned {len(values)} values but reasons {given!r:.200}")
    return list(given)


class WeightedReward:
    """sum_i w_i * f_i(completions, **columns). A function that raises is a bug in that
    function and propagates as a RewardError naming it; so does a value that is not a finite
    number. A bad completion is the function's business (a 0 and a reason)."""

    def __init__(self, functions: list[dict]):
        if not functions:
            raise ValueError("reward.functions is empty: name at least one reward, e.g. {name: tool_n1, weight: 1.0}")
        self.functions = []
        for spec in functions:
            name, fn = resolve(dict(spec))
            self.functions.append((name, fn, _weight(name, spec.get("weight", 1.0))))

    def __call__(self, completions: list[str], **columns) -> RewardResult:
        total = [0.0] * len(completions)
        per_function, reasons = {}, {}
        for name, fn, weight in self.functions:
            try:
                raw = fn(completions, **columns)
            except Exception as e:
                raise RewardError(f"reward {name} raised {type(e).__name__}: {e}") from e
            values = checked_values(name, raw, len(completions))
            per_function[name] = values
            reasons[name] = checked_reasons(name, raw, values)
            total = [t + weight * v for t, v in zip(total, values)]
            if not all(map(math.isfinite, total)):
                raise RewardError(f"reward {name} (weight {weight:g}) makes the total reward overflow to "
                                  f"{total!r:.200}; scale its values or its weight down")
        return RewardResult(total, per_function, reasons)


def _weight(name: str, value) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError, ArithmeticError):
        weight = math.nan
    if not math.isfinite(weight):
        raise ValueError(f"reward {name}: weight {value!r} is not a finite number")
    return weight

