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

from rewards.base import Scores
from rewards.parsing import parse_ground_truth, parse_tool_n1


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


def score_tool_n1(completion: str, ground_truth: object) -> tuple[float, str | None]:
    parsed = parse_tool_n1(completion)
    if parsed.calls is None:
        return 0.0, parsed.reason
    reason = match_reason(parsed.calls, parse_ground_truth(ground_truth))
    return (1.0 if reason is None else 0.0), reason


def tool_n1_reward(completions: list[str], ground_truth: list, **kwargs) -> list[float]:
    """TRL reward signature. `ground_truth[i]`: list of {"name", "arguments"} or its JSON string."""
    scored = [score_tool_n1(_text(c), gt) for c, gt in zip(completions, ground_truth, strict=True)]
    return Scores([s for s, _ in scored], [r for _, r in scored])


def format_reward(completions: list[str], **kwargs) -> list[float]:
    """1 if the completion is a well-formed think + JSON list of calls, whatever the calls."""
    parsed = [parse_tool_n1(_text(c)) for c in completions]
    return Scores([p.calls is not None for p in parsed], [p.reason for p in parsed])


def _text(completion) -> str:
    """TRL passes plain strings, or for conversational data [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return completion if isinstance(completion, str) else ""
