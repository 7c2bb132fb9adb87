"""Find reward functions by name and sum them with weights.

A reward is one entry of `reward.functions` (conf/reward/*.yaml):
    - {name: tool_n1, weight: 1.0}                 built-in (REWARDS below)
    - {name: my_reward, weight: 0.5}               entry point in group `toolcall_rl.rewards`
    - {_target_: my_pkg.rewards.fn, weight: 0.5}   any importable function (Hydra style)
    - {_target_: trl.rewards.get_soft_overlong_punishment, max_completion_len: 160, soft_punish_cache: 32}
                                                   a factory: the other keys are its arguments and
                                                   the function it returns is the reward
    - {_target_: my_pkg.rewards.fn, _partial_: true, scale: 2}
                                                   Hydra's partial: fn with scale=2 bound
Keys of every entry (SPEC_KEYS): name (with _target_ it defaults to the path's last part),
weight (1.0), kwargs (bound to the reward function; each must be a parameter it names),
completions (text | messages, below). Other keys are only allowed with _target_ (they are
the arguments of the factory, or of the partial); each is checked against the target's
signature, with a suggestion for a typo. Everything is checked when WeightedReward is built,
at start-up.

The calling convention is TRL's: every function is called with keywords only,

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns) -> list[float]

A function with **kwargs gets all of them; one without gets only those it names. One that
cannot be called this way (a required parameter that is none of these nor a dataset column,
positional-only parameters, or no prompts/completions/completion_ids and no **kwargs, as a
factory named without its arguments has) is refused at start-up with its name and this
signature. What the keywords hold, per entry's `completions`:

    completions: text (default)  completions: strings, the decoded completion text.
                                 prompts: strings, the rendered prompt exactly as the model
                                 read it (the env's chat: its system prompt with the tools,
                                 the chat template applied, special tokens kept). A caller
                                 without a tokenizer (a direct call of WeightedReward) gets
                                 the last user message's text instead.
    completions: messages        TRL's conversational shape: each completion is
                                 [{"role": "assistant", "content": text}] and each prompt
                                 is the task's `messages` as the data set has them (without
                                 the env's system prompt). trl.rewards.think_format_reward
                                 and accuracy_reward read completion[0]["content"]: they
                                 need this.
    completion_ids               the completion's token ids (multi-turn: tool output tokens too)
    episodes                     multi-turn envs: each completion's episode (turns, calls,
                                 results, final answer, final state; envs/multi_turn.py),
                                 None for single-turn rollouts (rewards/episode.py reads it)
    trainer_state                an object with .global_step (RL steps done) and .max_steps,
                                 the fields of TRL's TrainerState that reward schedules read
    **columns                    the task's fields (ground_truth, tools, messages, ...), one
                                 list entry per completion, None where a row lacks the field

TRL also passes log_metric and log_extra; WeightedReward does not (our trainer logs each
reward's values and reasons itself). Our built-in rewards, run under TRL's GRPOTrainer, log
their reasons through them (rewards.base.reports_reasons).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from hydra.utils import get_method, instantiate

from rewards.consistency import think_call_agreement
from rewards.episode import call_sequence, final_answer, final_state, tool_errors, turn_cost
from rewards.schema import schema_validity_reward
from rewards.tool_n1 import format_reward, length_penalty, tool_n1_partial_reward, tool_n1_reward
from rewards.toolrl import toolrl_correctness_reward, toolrl_format_reward, toolrl_reward

log = logging.getLogger(__name__)
RewardFn = Callable[..., list]
REWARDS: dict[str, RewardFn] = {
    "tool_n1": tool_n1_reward,  # binary exact match, [0, 1]
    "tool_n1_partial": tool_n1_partial_reward,  # [0, 1]
    "format": format_reward,  # [0, 1]
    "toolrl": toolrl_reward,  # [-3, 4]
    "toolrl_format": toolrl_format_reward,  # [0, 1]
    "toolrl_correctness": toolrl_correctness_reward,  # [-3, 3]
    "schema_validity": schema_validity_reward,  # [0, 1]
    "think_call_agreement": think_call_agreement,  # [0, 1] the think names exactly the called functions
    "length_penalty": length_penalty,  # [-1, 0]
    "final_answer": final_answer,  # [0, 1] multi-turn: the episode's final answer
    "call_sequence": call_sequence,  # [0, 1] multi-turn: the calls of all turns vs ground_truth
    "final_state": final_state,  # [0, 1] multi-turn: expected_state is a subset of the final state
    "turn_cost": turn_cost,  # <= 0 multi-turn: per turn / per call
    "tool_errors": tool_errors,  # <= 0 multi-turn: per failed call
}
ENTRY_POINT_GROUP = "toolcall_rl.rewards"
SPEC_KEYS = ("name", "_target_", "_partial_", "weight", "kwargs", "completions")
SHAPES = ("text", "messages")  # values of `completions`
PASSED = ("prompts", "completions", "completion_ids", "trainer_state", "episodes")  # keywords every call has, besides columns
SIGNATURE = "fn(prompts, completions, completion_ids, **columns) -> list[float]"
CALL_KEYWORDS = frozenset({"prompts", "completions", "completion_ids"})  # a reward function names one of them


@dataclass
class TrainerState:
    """What reward functions get as `trainer_state`: the fields of transformers' TrainerState
    that reward schedules read."""

    global_step: int = 0  # RL steps completed before this batch was sampled
    max_steps: int = 0  # trainer.steps; 0 where unknown (a direct call, evaluation outside training)


def resolve(spec: Mapping, columns: Iterable[str] | None = None) -> tuple[str, RewardFn]:
    """(display name, function) for one reward entry of the config; `kwargs` are bound.
    Raises ValueError, naming the reward, for anything that would fail on the first call:
    unknown keys, kwargs the function does not name, a function that cannot be called with
    TRL's keywords (`columns`: the dataset's column names, when known, so that a required
    parameter that is none of them is refused too)."""
    name, fn = _find(spec)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"reward {name}: kwargs must be a mapping of argument names to values, not {kwargs!r:.100}")
    kwargs = dict(kwargs)
    check_kwargs(name, fn, kwargs)
    fn = functools.partial(fn, **kwargs) if kwargs else fn
    check_signature(name, fn, columns)
    return name, fn


def completion_shape(name: str, spec: Mapping) -> str:
    """The entry's `completions`: text (default) or messages."""
    shape = spec.get("completions") or "text"
    if shape not in SHAPES:
        close = difflib.get_close_matches(str(shape), SHAPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"reward {name}: completions={shape!r}; use one of {list(SHAPES)}{hint}")
    return shape


def check_kwargs(name: str, fn: RewardFn, kwargs: dict, what: str = "kwarg") -> None:
    """Configured kwargs must be parameters that `fn` names: `**kwargs` takes the dataset
    columns, so a typo there would be silently ignored. Raises ValueError at start-up."""
    params = _parameters(fn)
    if params is None:  # no signature to check (some builtins and C functions)
        return
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [n for n in named[1:] if n != "completions"] if named and named[0] == "completions" else named
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"reward {name}: unknown {what} {key!r}; accepted keys are {accepted}{hint}")


def check_signature(name: str, fn: RewardFn, columns: Iterable[str] | None = None) -> None:
    """Refuse, at start-up, a function that TRL's keyword call cannot call (see the module
    docstring); `columns` None: the dataset's columns are unknown, any name may be one."""
    params = _parameters(fn)
    if params is None:  # no signature to check: the first call will tell
        return
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not _has_var_keyword(fn) and not _takes_completions(fn):
        args = f" ({', '.join(p.name for p in required)})" if required else ""
        problems = [f"it takes none of prompts, completions, completion_ids and has no **kwargs; if it is a factory, give "
                    f"its arguments{args} as keys of the entry, beside _target_"]
    else:
        known = set(PASSED) | set(columns or ())
        problems = []
        for p in required:
            if p.kind is p.POSITIONAL_ONLY:
                problems.append(f"its parameter {p.name!r} is positional-only, and every argument is passed by keyword")
            elif columns is not None and p.name not in known:
                close = difflib.get_close_matches(p.name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"it requires {p.name!r}{hint}, which is neither one of {list(PASSED)} nor a dataset "
                                f"column (the columns are {sorted(set(columns))})")
    if problems:
        raise ValueError(f"reward {name}: {_label(fn)}{inspect.signature(fn)} cannot be called as a reward: "
                         f"{'; '.join(problems)}. A reward function has TRL's signature {SIGNATURE}, e.g. "
                         f"def my_reward(completions, **kwargs)")


def _parameters(fn) -> list[inspect.Parameter] | None:
    """fn's parameters, or None where it has no signature to read."""
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def _label(fn) -> str:
    fn = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _keywords(fn: RewardFn) -> tuple[frozenset[str] | None, frozenset[str]]:
    """(the keywords a call passes to fn: None for all, as it has **kwargs or no signature to
    read, else the parameters it names; the keywords never passed: those a partial binds, so
    that config wins over a dataset column of the same name)."""
    bound = frozenset(fn.keywords) if isinstance(fn, functools.partial) else frozenset()
    params = _parameters(fn)
    if params is None or _has_var_keyword(fn):
        return None, bound
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) - bound, bound


def plugins() -> dict:
    """Installed reward plugins: entry points in the `toolcall_rl.rewards` group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _find(spec: Mapping) -> tuple[str, RewardFn]:
    extra = [k for k in spec if k not in SPEC_KEYS]
    if spec.get("_target_"):
        target = str(spec["_target_"])
        name = spec.get("name") or target.rsplit(".", 1)[-1]
        try:
            fn = get_method(target)
        except Exception as e:  # hydra: ImportError / ValueError with the path it could not load
            raise ValueError(f"reward {name}: cannot import _target_ {target!r}: {e}") from e
        if not extra and not spec.get("_partial_"):
            return name, fn
        return name, _instantiate(name, target, fn, {k: spec[k] for k in extra}, bool(spec.get("_partial_")))
    name = spec.get("name")
    if name is None:
        raise ValueError(f"reward entry {dict(spec)!r:.200} names no function: give `name: <built-in or plugin>` or "
                         f"`_target_: package.module.function`")
    if spec.get("_partial_"):
        raise ValueError(f"reward {name}: _partial_ needs a _target_ (bind a built-in's arguments with kwargs: {{...}})")
    if extra:  # a typo of a key, or a function's argument outside kwargs
        raise ValueError(f"reward {name}: unknown key {extra[0]!r}; the keys are {list(SPEC_KEYS)}"
                         f"{_key_hint(extra[0], name)} (extra keys are only for a _target_ factory or _partial_)")
    if name in REWARDS:
        return name, REWARDS[name]
    found = plugins()
    if name in found:
        return name, found[name].load()
    raise ValueError(
        f"reward {name!r} is unknown: built-in rewards are {sorted(REWARDS)}, installed plugins "
        f"({ENTRY_POINT_GROUP}) are {sorted(found)}; or give `_target_: package.module.function`"
    )


def _key_hint(key: str, name) -> str:
    close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    fn = REWARDS.get(name)
    if fn is not None and key in inspect.signature(fn).parameters:
        return f"; {key!r} is an argument of the function: put it under kwargs: {{{key}: ...}}"
    return ""


def _instantiate(name: str, target: str, fn: Callable, arguments: dict, partial: bool) -> RewardFn:
    """The reward a factory returns when called with `arguments` (or, with _partial_, fn with
    them bound), by Hydra's instantiate, after checking them against fn's signature."""
    takes_completions = _takes_completions(fn)
    if not partial and takes_completions:
        raise ValueError(f"reward {name}: {target} is a reward function, not a factory, and {sorted(arguments)} would be "
                         f"passed to it now: bind them with `kwargs: {{...}}` or `_partial_: true`")
    if partial or not _has_var_keyword(fn):  # a factory's own **kwargs takes anything
        check_kwargs(name, fn, arguments, what="kwarg" if partial else "argument")
    try:
        built = instantiate({"_target_": target, "_partial_": partial, **arguments}, _convert_="all")
    except Exception as e:
        cause = e.__cause__ or e  # hydra wraps what the factory raised
        raise ValueError(f"reward {name}: {target}(**{arguments!r:.200}) raised {type(cause).__name__}: {cause}") from e
    if not callable(built):
        raise ValueError(f"reward {name}: {target}(...) returned {type(built).__name__}, not a reward function")
    return built


def _takes_unbound(fn, name: str) -> bool:
    """Whether fn names parameter `name` and no config binds it."""
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    return name not in bound and any(p.name == name for p in (_parameters(fn) or ()))


def _has_var_keyword(fn) -> bool:
    """True where fn takes **kwargs, or has no signature to read."""
    params = _parameters(fn)
    return params is None or any(p.kind is p.VAR_KEYWORD for p in params)


def _takes_completions(fn) -> bool:
    params = _parameters(fn)
    return params is not None and bool(CALL_KEYWORDS & {p.name for p in params})


@dataclass
class RewardResult:
    total: list[float]  # [N] weighted sum
    per_function: dict[str, list[float]]  # name -> [N]; NaN where the function returned None (skipped)
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
    """A reward's output as n floats: finite numbers, and NaN where it returned None (TRL's "does
    not apply to this completion"); else a RewardError naming the reward and the first bad values."""
    items = _items(raw)
    if items is None:
        raise RewardError(f"reward {name} returned {type(raw).__name__}, not a list of {n} numbers")
    if len(items) != n:
        raise RewardError(f"reward {name} returned {len(items)} values for {n} completions")
    values = [math.nan if v is None else _number(v) for v in items]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        raise RewardError(f"reward {name} returned values that are not finite numbers for completions {bad[:5]}: "
                          f"{[items[i] for i in bad[:5]]!r:.300}; a reward must return a finite number (or None: it does "
                          "not apply) for each completion")
    return values


def checked_reasons(name: str, raw, values: list[float]) -> list[str | None]:
    """The reasons a reward gave (Scores), or "zero" for each 0 and "skipped" for each None where
    it gave none (plain TRL functions)."""
    given = getattr(raw, "reasons", None)
    if given is None:
        return ["zero" if v == 0 else "skipped" if math.isnan(v) else None for v in values]
    if not isinstance(given, (list, tuple)) or len(given) != len(values):
        raise RewardError(f"reward {name} returned {len(values)} values but reasons {given!r:.200}")
    return list(given)


class WeightedReward:
    """sum_i w_i * f_i(prompts=..., completions=..., completion_ids=..., trainer_state=...,
    **columns): TRL's keywords (module docstring). A function that raises is a bug in that
    function and propagates as a RewardError naming it; so does a value that is not a finite
    number. A bad completion is the function's business (a 0 and a reason). `columns`: the
    dataset's column names, when known, for the start-up check of required parameters.
    `parser` (model.tool_format): bound to every function that takes a `parser` its entry's
    kwargs do not set, so that one switch decides how every reward reads answers."""

    def __init__(self, functions: list[Mapping], columns: Iterable[str] | None = None, parser: str | None = None):
        if not functions:
            raise ValueError("reward.functions is empty: name at least one reward, e.g. {name: tool_n1, weight: 1.0}")
        columns = None if columns is None else frozenset(columns)
        self.functions = []  # (name, function, weight)
        self.shapes: dict[str, str] = {}  # name -> text | messages
        self._keywords: dict[str, tuple[frozenset[str] | None, frozenset[str]]] = {}
        for spec in functions:
            if not isinstance(spec, Mapping):
                raise ValueError(f"reward entry {spec!r:.100} is not a mapping: write {{name: tool_n1, weight: 1.0}}")
            name, fn = resolve(spec, columns)
            if parser is not None and _takes_unbound(fn, "parser"):  # model.tool_format reads the answers
                fn = functools.partial(fn, parser=parser)
            if name in self.shapes:
                raise ValueError(f"reward {name} is configured twice: give one of them another `name:`")
            self.functions.append((name, fn, _weight(name, spec.get("weight", 1.0))))
            self.shapes[name] = completion_shape(name, spec)
            self._keywords[name] = _keywords(fn)

    def __call__(self, completions: list[str], *, prompts: list[str] | None = None, completion_ids: list | None = None,
                 trainer_state=None, **columns) -> RewardResult:
        """completions: the texts; prompts: the rendered prompt texts (None: the last user
        message's text); completion_ids: token ids; columns: the dataset's, one entry per
        completion. Each function gets them in the shape its entry's `completions` names."""
        n = len(completions)
        shared = {**columns, "completion_ids": completion_ids,
                  "trainer_state": trainer_state if trainer_state is not None else TrainerState()}
        shaped = {}  # text | messages -> {"prompts": ..., "completions": ...}, built when first needed
        total = [0.0] * n
        per_function, reasons = {}, {}
        for name, fn, weight in self.functions:
            shape = self.shapes[name]
            if shape not in shaped:
                shaped[shape] = _shaped(shape, completions, prompts, columns.get("messages"))
            takes, skip = self._keywords[name]
            keywords = {k: v for k, v in {**shared, **shaped[shape]}.items()
                        if (takes is None or k in takes) and k not in skip}
            try:
                raw = fn(**keywords)
            except Exception as e:
                hint = ""
                if shape == "text" and isinstance(e, TypeError) and "string indices" in str(e):
                    hint = (" (it reads each completion as messages, completion[0]['content']: set `completions: "
                            "messages` in its entry)")
                raise RewardError(f"reward {name} raised {type(e).__name__}: {e}{hint}") from e
            values = checked_values(name, raw, n)
            per_function[name] = values
            reasons[name] = checked_reasons(name, raw, values)
            total = [t if math.isnan(v) else t + weight * v for t, v in zip(total, values)]  # TRL's nansum
            if not all(map(math.isfinite, total)):
                raise RewardError(f"reward {name} (weight {weight:g}) makes the total reward overflow to "
                                  f"{total!r:.200}; scale its values or its weight down")
        skipped = sum(all(math.isnan(v[i]) for v in per_function.values()) for i in range(n))
        if skipped:
            log.warning("%d of %d completions got None from every reward function: their reward is 0", skipped, n)
        return RewardResult(total, per_function, reasons)


def _shaped(shape: str, completions: list[str], prompts: list[str] | None, messages: list | None) -> dict:
    """The prompts and completions keywords in one shape (see the module docstring)."""
    n = len(completions)
    if shape == "messages":
        chats = [list(m) if isinstance(m, (list, tuple)) else None for m in (messages or [None] * n)]
        if prompts is not None:  # rows without messages: the rendered prompt as one user turn
            chats = [c if c is not None else [{"role": "user", "content": p}] for c, p in zip(chats, prompts)]
        return {"prompts": chats, "completions": [[{"role": "assistant", "content": c}] for c in completions]}
    if prompts is None:
        prompts = [_last_user_text(m) for m in (messages or [None] * n)]
    return {"prompts": list(prompts), "completions": list(completions)}


def _last_user_text(messages) -> str | None:
    for m in reversed(messages if isinstance(messages, (list, tuple)) else []):
        if isinstance(m, Mapping) and m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) else None
    return None


def _weight(name: str, value) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError, ArithmeticError):
        weight = math.nan
    if not math.isfinite(weight):
        raise ValueError(f"reward {name}: weight {value!r} is not a finite number")
    return weight

