"""Rewards over a whole multi-turn episode (envs/multi_turn.py), each a plain reward function
with TRL's signature that reads the keyword `episodes`: one episode dict per completion
(turns, calls, final_answer, final_state, stop, num_turns, num_calls, tool_errors), None for
a single-turn rollout.

    final_answer    1 iff the episode ended with an answer that matches the task's `answer`
    call_sequence   1 iff the calls of all turns equal the task's `ground_truth` (in order by
                    default); partial=True: the F1 of matched calls
    final_state     1 iff the task's `expected_state` is a subset of the episode's final state
    turn_cost       -(per_turn * turns beyond free_turns + per_call * calls), <= 0
    tool_errors     -per_error * tool calls that failed, <= 0

Where a reward does not apply it gives 0.0 with a reason rather than raising: a None episode
(`no_episode`) and a task without the column the reward checks (`not_applicable`: no answer,
no ground_truth, no expected_state). 0.0 rather than a neutral 1.0, so that a mean over a
batch reads as "share of tasks solved"; under GRPO a task's completions share the task, so a
constant 0 for the whole group moves no advantage, and the weights decide the rest. The costs
(turn_cost, tool_errors) are 0 for a None episode, with no reason: there is nothing to charge.
Reasons are fixed codes (metrics count them); `state_mismatch(expected, actual)` gives the
path of a state difference for debugging. A bad config value (match: fuzzy, per_turn: -1)
raises ValueError on the first call, naming the reward and the key.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Mapping

from rewards.base import Scores, reports_reasons
from rewards.parsing import normalize_call, parse_ground_truth
from rewards.tool_n1 import canonical

MATCHES = ("contains", "exact", "number")  # final_answer's `match`
NUMBER_REL_TOL = 1e-6  # match=number
STATE_TOL = 1e-9  # final_state: numbers equal within this (relative or absolute)
_TRIM = string.punctuation + string.whitespace + "“”‘’«»…。，、！？：；"
# a number not glued to a word or a decimal point before it: 42, -3.5, 1,234.5, 6.02e23, .5
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


# ---- final_answer --------------------------------------------------------------------------
def normalize_answer(text: object) -> str:
    """Casefolded, whitespace runs made one space, punctuation and spaces trimmed at both ends."""
    return " ".join(str(text).casefold().split()).strip(_TRIM)


def contains_words(text: str, part: str) -> bool:
    """Whether `part` occurs in `text` as whole words (not "4" inside "14")."""
    start = text.find(part)
    while start >= 0:
        end = start + len(part)
        if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        start = text.find(part, start + 1)
    return False


def first_number(text: object) -> float | None:
    """The first number written in `text` (thousands commas allowed), or None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    found = _NUMBER.search(str(text))
    return float(found.group().replace(",", "")) if found else None


def answer_matches(given: str, expected: object, match: str = "contains") -> bool:
    """contains: the normalised expected answer occurs as whole words in the normalised given
    one; exact: the two are equal once normalised; number: the first number in each is equal
    within a relative tolerance of 1e-6."""
    if match == "number":
        got, want = first_number(given), first_number(expected)
        return got is not None and want is not None and math.isclose(got, want, rel_tol=NUMBER_REL_TOL)
    got, want = normalize_answer(given), normalize_answer(expected)
    return got == want if match == "exact" else contains_words(got, want)


def score_final_answer(episode, expected, match: str = "contains") -> tuple[float, str | None]:
    """(value, reason) of final_answer for one episode; `expected` may be a list of accepted answers."""
    if not isinstance(episode, Mapping):
        return 0.0, "no_episode"
    accepted = [a for a in (expected if isinstance(expected, (list, tuple)) else [expected])
                if a is not None and normalize_answer(a)]  # not "", "..."
    if not accepted:
        return 0.0, "not_applicable"
    if match == "number":
        accepted = [a for a in accepted if first_number(a) is not None]
        if not accepted:
            return 0.0, "expected_not_a_number"  # a data problem, counted rather than raised
    given = episode.get("final_answer")
    if not isinstance(given, str) or not given.strip():
        return 0.0, "no_final_answer"  # the episode stopped otherwise: episode["stop"] says how
    return (1.0, None) if any(answer_matches(given, a, match) for a in accepted) else (0.0, "wrong_answer")


@reports_reasons
def final_answer(completions: list, episodes: list | None = None, answer: list | None = None, match: str = "contains",
                 **_) -> list[float]:
    """1 where the episode's final answer matches the task's `answer` (see answer_matches), or
    one of them where `answer` is a list of accepted answers. Reasons: no_episode,
    not_applicable (the task has no answer), expected_not_a_number (match=number and the
    answer has no number), no_final_answer, wrong_answer."""
    if match not in MATCHES:
        raise ValueError(f"reward final_answer: match={match!r}; use one of {list(MATCHES)}")
    n = len(completions)
    rows = zip(_column(episodes, n, "episodes"), _column(answer, n, "answer"))
    scored = [score_final_answer(e, a, match) for e, a in rows]
    return Scores([v for v, _ in scored], [r for _, r in scored])


# ---- call_sequence -------------------------------------------------------------------------
def episode_calls(episode: Mapping) -> list[tuple[str, str]] | None:
    """The canonical (name, arguments JSON) of every call of the episode in order; None when a
    turn did not parse or a call is not a well-formed call."""
    turns = episode.get("turns") or []
    if episode.get("stop") == "unparsed" or any(not isinstance(t, Mapping) or t.get("calls") is None for t in turns):
        return None
    calls = episode.get("calls")
    if calls is None:
        calls = [c for t in turns for c in t["calls"]]
    normalized = [normalize_call(c) for c in calls]
    if any(c is None for c in normalized):
        return None
    try:
        return [canonical(c) for c in normalized]
    except (TypeError, ValueError):  # arguments JSON cannot hold
        return None


def matched_in_order(got: list, want: list) -> int:
    """How many calls match keeping their order: the longest common subsequence."""
    previous = [0] * (len(want) + 1)
    for g in got:
        row = [0]
        for j, w in enumerate(want):
            row.append(previous[j] + 1 if g == w else max(previous[j + 1], row[j]))
        previous = row
    return previous[-1]


def sequence_reason(got: list[tuple[str, str]], want: list[tuple[str, str]]) -> str:
    """What differs first between two call lists that are not equal in order."""
    if Counter(got) == Counter(want):
        return "wrong_order"
    if len(got) != len(want):
        return "missing_calls" if len(got) < len(want) else "extra_calls"
    if Counter(name for name, _ in got) != Counter(name for name, _ in want):
        return "wrong_name"
    return "wrong_args"


def score_calls(episode, ground_truth, ordered: bool = True, partial: bool = False) -> tuple[float, str | None]:
    """(value, reason) of call_sequence for one episode. partial: F1 = 2 * matched / (made +
    gold), matched counted as a multiset (order-free) or as the longest common subsequence
    (ordered), so F1 is 1 exactly where the binary value is."""
    if not isinstance(episode, Mapping):
        return 0.0, "no_episode"
    if ground_truth is None:
        return 0.0, "not_applicable"
    want = [canonical(c) for c in parse_ground_truth(ground_truth)]  # bad ground truth is a data error: raises
    got = episode_calls(episode)
    if got is None:
        return 0.0, "unparsed"
    if (got == want) if ordered else (Counter(got) == Counter(want)):
        return 1.0, None
    reason = sequence_reason(got, want)
    if not partial:
        return 0.0, reason
    matched = matched_in_order(got, want) if ordered else sum((Counter(got) & Counter(want)).values())
    return 2 * matched / (len(got) + len(want)), reason


@reports_reasons
def call_sequence(completions: list, episodes: list | None = None, ground_truth: list | None = None,
                  order_free=None, partial: bool = False, order_free_default: bool = False, **_) -> list[float]:
    """1 where the calls of all turns equal the task's `ground_truth`; partial=True: their F1
    (score_calls). Order counts unless the task's `order_free` column is true; rows without it
    take `order_free_default`. `order_free` set as a kwarg (one bool) applies to every task,
    as combine then passes it instead of the column. Reasons: no_episode, not_applicable (no
    ground_truth), unparsed (a turn did not parse), wrong_order, missing_calls, extra_calls,
    wrong_name, wrong_args."""
    for key, value in (("partial", partial), ("order_free_default", order_free_default)):
        if not isinstance(value, bool):
            raise ValueError(f"reward call_sequence: {key}={value!r}; use true or false")
    n = len(completions)
    if isinstance(order_free, (list, tuple)):  # the column
        free = [order_free_default if f is None else bool(f) for f in _column(order_free, n, "order_free")]
    else:  # a kwarg, or no column
        free = [order_free_default if order_free is None else bool(order_free)] * n
    rows = zip(_column(episodes, n, "episodes"), _column(ground_truth, n, "ground_truth"), free)
    scored = [score_calls(e, gt, ordered=not f, partial=partial) for e, gt, f in rows]
    return Scores([v for v, _ in scored], [r for _, r in scored])


# ---- final_state ---------------------------------------------------------------------------
def state_mismatch(expected, actual, path: tuple = ()) -> str | None:
    """None when every key of `expected` (recursively, for mappings) is in `actual` with an
    equal value; else the dotted path of the first difference ("" for the root). Lists and
    other values compare whole; numbers within 1e-9; a key matches its string form (JSON
    keys are strings, a tool's state may key by int)."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return _path(path)
        for key, want in expected.items():
            found, got = _lookup(actual, key)
            if not found:
                return _path((*path, key))
            diff = state_mismatch(want, got, (*path, key))
            if diff is not None:
                return diff
        return None
    return None if same_value(expected, actual) else _path(path)


def same_value(want, got) -> bool:
    """Whole-value equality: mappings with the same keys and values, sequences of the same
    length, numbers within STATE_TOL (bool only equals bool), anything else by ==."""
    if isinstance(want, Mapping):
        return (isinstance(got, Mapping) and len(want) == len(got)
                and all((found := _lookup(got, k))[0] and same_value(v, found[1]) for k, v in want.items()))
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(want) == len(got) and all(map(same_value, want, got))
    if isinstance(want, bool) or isinstance(got, bool):
        return type(want) is type(got) and want == got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(want, got, rel_tol=STATE_TOL, abs_tol=STATE_TOL)
    try:
        return bool(want == got)
    except Exception:  # noqa: BLE001 - an object whose == does not give a truth value (an array) differs
        return False


def _lookup(mapping: Mapping, key) -> tuple[bool, object]:
    if key in mapping:
        return True, mapping[key]
    for k, v in mapping.items():
        if str(k) == str(key):
            return True, v
    return False, None


def _path(path: tuple) -> str:
    return ".".join(map(str, path))


def expected_state_dict(value) -> dict:
    """expected_state as a mapping (a JSON string is decoded); else a data error."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, Mapping):
        raise ValueError(f"expected_state {value!r:.200} is not a mapping of state keys to values; fix the dataset row")
    return value


def score_state(episode, expected) -> tuple[float, str | None]:
    if not isinstance(episode, Mapping):
        return 0.0, "no_episode"
    if expected is None:
        return 0.0, "not_applicable"
    try:
        diff = state_mismatch(expected_state_dict(expected), episode.get("final_state"))
    except RecursionError:  # a state nested deeper than Python recurses is not the expected one
        diff = ""
    return (1.0, None) if diff is None else (0.0, "state_mismatch")


@reports_reasons
def final_state(completions: list, episodes: list | None = None, expected_state: list | None = None,
                **_) -> list[float]:
    """1 where the task's `expected_state` is a subset of the episode's final_state
    (state_mismatch); an empty expected_state holds for any state. Reasons: no_episode,
    not_applicable (no expected_state), state_mismatch."""
    n = len(completions)
    rows = zip(_column(episodes, n, "episodes"), _column(expected_state, n, "expected_state"))
    scored = [score_state(e, s) for e, s in rows]
    return Scores([v for v, _ in scored], [r for _, r in scored])


# ---- costs ---------------------------------------------------------------------------------
@reports_reasons
def turn_cost(completions: list, episodes: list | None = None, per_turn: float = 0.1, per_call: float = 0.0,
              free_turns: int = 1, **_) -> list[float]:
    """-(per_turn * max(0, num_turns - free_turns) + per_call * num_calls); 0 for a single-turn
    rollout. Reasons: extra_turns (turns beyond free_turns cost), calls (only calls cost)."""
    _non_negative("turn_cost", per_turn=per_turn, per_call=per_call, free_turns=free_turns)
    values, reasons = [], []
    for e in _column(episodes, len(completions), "episodes"):
        turns = per_turn * max(0, _count(e, "num_turns", "turns") - free_turns)
        calls = per_call * _count(e, "num_calls", "calls")
        values.append(0.0 - (turns + calls))
        reasons.append("extra_turns" if turns > 0 else "calls" if calls > 0 else None)
    return Scores(values, reasons)


@reports_reasons
def tool_errors(completions: list, episodes: list | None = None, per_error: float = 0.1, **_) -> list[float]:
    """-per_error * the episode's failed tool calls; 0 for a single-turn rollout. Reason:
    tool_errors."""
    _non_negative("tool_errors", per_error=per_error)
    costs = [per_error * _count(e, "tool_errors") for e in _column(episodes, len(completions), "episodes")]
    return Scores([0.0 - c for c in costs], ["tool_errors" if c > 0 else None for c in costs])


def _count(episode, key: str, fallback: str | None = None) -> int:
    """A non-negative count from the episode; the length of `fallback` where `key` is absent; 0 for no episode."""
    if not isinstance(episode, Mapping):
        return 0
    value = episode.get(key)
    if value is None and fallback is not None:
        value = len(episode.get(fallback) or [])
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _non_negative(name: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
            raise ValueError(f"reward {name}: {key}={value!r}; use a finite number >= 0")


def _column(values, n: int, name: str) -> list:
    """A keyword's per-completion values; n Nones where the caller has none (no such column)."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} completions; pass one per completion")
    return values
