"""ToolRL's fine-grained reward (Qian et al., 2025, "ToolRL: Reward is All Tool Learning
Needs", section 3.3):

    R = R_format + R_correct,     R_format in {0, 1},     R_correct in [-3, 3]

    S = Jaccard(predicted names, true names)                          (multisets)
      + sum over true calls g of the best unused predicted call p with p.name == g.name:
            Jaccard(keys of p.args, keys of g.args) + #{k : p.args[k] == g.args[k]}
    S_max = 1 + sum over true calls (1 + #args of g)
    R_correct = (3 - (-3)) * S / S_max + (-3)     (= 3 exactly when the calls match)

Calls are read with our parsers (the Tool-N1 JSON list by default) rather than ToolRL's
newline-separated objects. An unreadable answer gets R_correct = -3. With no true calls (irrelevance) S_max = 1 and S
is the name Jaccard, which is 0 for any call, so [] scores 3 and anything else -3.
"""

from __future__ import annotations

from collections import Counter

from rewards.base import Scores, reports_reasons
from rewards.parsing import parse, parse_ground_truth
from rewards.tool_n1 import canonical

MAX_CORRECT, MIN_CORRECT = 3.0, -3.0


def jaccard(a: list, b: list) -> float:
    """Multiset Jaccard |a & b| / |a | b|; two empty lists are identical (1)."""
    if Counter(a) == Counter(b):
        return 1.0
    if not a or not b:
        return 0.0
    inter = sum((Counter(a) & Counter(b)).values())
    return inter / (len(a) + len(b) - inter)


def correctness_score(calls: list[dict], truth: list[dict]) -> float:
    """R_correct in [-3, 3] for parsed calls against the ground truth."""
    if Counter(map(canonical, calls)) == Counter(map(canonical, truth)):
        return MAX_CORRECT
    score = jaccard([c["name"] for c in calls], [t["name"] for t in truth])
    best_possible = 1.0
    used: set[int] = set()
    for g in truth:
        best_possible += 1.0 + len(g["arguments"])
        best, best_i = 0.0, None
        for i, p in enumerate(calls):
            if i in used or p["name"] != g["name"]:
                continue
            s = jaccard(list(p["arguments"]), list(g["arguments"])) + sum(
                1.0 for k, v in g["arguments"].items() if k in p["arguments"] and _same(p["arguments"][k], v)
            )
            if s > best:
                best, best_i = s, i
        if best_i is not None:
            used.add(best_i)
            score += best
    return (MAX_CORRECT - MIN_CORRECT) * score / best_possible + MIN_CORRECT


def _same(a, b) -> bool:
    """Value equality with exact types (1 != 1.0 != True), as the exact-match reward has it."""
    return canonical({"name": "", "arguments": {"v": a}}) == canonical({"name": "", "arguments": {"v": b}})


@reports_reasons
def toolrl_format_reward(completions: list, parser: str = "tool_n1", lenient: bool = False, **kwargs) -> list[float]:
    """1 for a well-formed <think> + <tool_call>[...] answer, else 0."""
    parsed = [parse(c, parser, lenient) for c in completions]
    return Scores([p.calls is not None for p in parsed], [p.reason for p in parsed])


@reports_reasons
def toolrl_correctness_reward(completions: list, ground_truth: list, parser: str = "tool_n1", lenient: bool = False,
                              **kwargs) -> list[float]:
    """R_correct in [-3, 3]; reason set wherever it is below 3."""
    values, reasons = [], []
    for c, gt in zip(completions, ground_truth, strict=True):
        parsed = parse(c, parser, lenient)
        if parsed.calls is None:
            values.append(MIN_CORRECT)
            reasons.append(parsed.reason)
            continue
        v = correctness_score(parsed.calls, parse_ground_truth(gt))
        values.append(v)
        reasons.append(None if v == MAX_CORRECT else "partial_match" if v > MIN_CORRECT else "no_match")
    return Scores(values, reasons)


@reports_reasons
def toolrl_reward(completions: list, ground_truth: list, parser: str = "tool_n1", lenient: bool = False,
                  **kwargs) -> list[float]:
    """R_format + R_correct in [-3, 4]."""
    fmt = toolrl_format_reward(completions, parser, lenient)
    correct = toolrl_correctness_reward(completions, ground_truth, parser, lenient)
    return Scores([f + c for f, c in zip(fmt, correct)], correct.reasons)
