"""Nemotron Tool-N1's binary reward and a format-only reward.

    R = 1  iff  <think>...</think> then <tool_call>[...]</tool_call> is well formed
            AND the multiset of (name, canonical-JSON arguments) equals the ground truth
    R = 0  otherwise, with the reason.

Order of parallel calls does not matter; argument types must match exactly (1 != 1.0 !=
"1" != true), which canonical JSON gives for free. `[]` is the right answer when no tool
applies.
"""

from __future__ import annotations

import json
from collections import Counter

from rewards.base import Scores, reports_reasons
from rewards.parsing import completion_text, parse, parse_ground_truth


def canonical(call: dict) -> tuple[str, str]:
    """(name, arguments as JSON with sorted keys): equal iff names and values are equal, types included."""
    return call["name"], json.dumps(call["arguments"], sort_keys=True, ensure_ascii=False)


def match_reason(calls: list[dict], truth: list[dict]) -> str | None:
    """None if calls equal truth as multisets; else what differs first."""
    got, want = Counter(map(canonical, calls)), Counter(map(canonical, truth))
    if got == want:
        return None
    if len(calls) != len(truth):
        return "wrong_count"
    if Counter(c["name"] for c in calls) != Counter(c["name"] for c in truth):
        return "wrong_name"
    return "wrong_args"


def score_tool_n1(completion, ground_truth: object, parser: str = "tool_n1", lenient: bool = False) -> tuple[float, str | None]:
    parsed = parse(completion, parser, lenient)
    if parsed.calls is None:
        return 0.0, parsed.reason
    reason = match_reason(parsed.calls, parse_ground_truth(ground_truth))
    return (1.0 if reason is None else 0.0), reason


@reports_reasons
def tool_n1_reward(completions: list[str], ground_truth: list, parser: str = "tool_n1", lenient: bool = False,
                   **kwargs) -> list[float]:
    """TRL reward signature. `ground_truth[i]`: list of {"name", "arguments"} or its JSON string.
    `parser` (tool_n1 | hermes | template) and `lenient` choose how answers are read."""
    scored = [score_tool_n1(c, gt, parser, lenient) for c, gt in zip(completions, ground_truth, strict=True)]
    return Scores([s for s, _ in scored], [r for _, r in scored])


@reports_reasons
def format_reward(completions: list[str], parser: str = "tool_n1", lenient: bool = False, **kwargs) -> list[float]:
    """1 if the completion is well formed (think + JSON list of calls for tool_n1), whatever the calls."""
    parsed = [parse(c, parser, lenient) for c in completions]
    return Scores([p.calls is not None for p in parsed], [p.reason for p in parsed])


@reports_reasons
def tool_n1_partial_reward(completions: list[str], ground_truth: list, name_credit: float = 0.2, parser: str = "tool_n1",
                           lenient: bool = False, **kwargs) -> list[float]:
    """The partial-credit variant of Tool-N1's reward ablation: 1 for an exact match,
    `name_credit` when the answer is well formed and calls the right functions (as a
    multiset) with wrong arguments, else 0."""
    values, reasons = [], []
    for c, gt in zip(completions, ground_truth, strict=True):
        value, reason = score_tool_n1(c, gt, parser, lenient)
        if reason == "wrong_args":
            value = name_credit
        values.append(value)
        reasons.append(reason)
    return Scores(values, reasons)


@reports_reasons
def length_penalty(completions: list[str], soft_chars: int = 400, hard_chars: int = 800, **kwargs) -> list[float]:
    """0 up to soft_chars characters, then linearly down to -1 at hard_chars (DAPO's overlong
    shaping, in characters so that it needs no tokenizer)."""
    values, reasons = [], []
    for c in completions:
        n = len(completion_text(c) or "")
        v = 0.0 if n <= soft_chars else -min(1.0, (n - soft_chars) / max(hard_chars - soft_chars, 1))
        values.append(v)
        reasons.append("too_long" if v < 0 else None)
    return Scores(values, reasons)
