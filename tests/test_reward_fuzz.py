"""10,000 random and mutated completions through every parser and every reward: nothing
raises and every value stays in its documented range."""

import json
import math
import random

from rewards import REWARDS
from rewards.parsing import PARSERS
from envs.synthetic import generate
from envs.single_turn import gold_answer

RANGES = {"tool_n1": (0, 1), "tool_n1_partial": (0, 1), "format": (0, 1), "toolrl": (-3, 4), "toolrl_format": (0, 1),
          "toolrl_correctness": (-3, 3), "schema_validity": (0, 1), "length_penalty": (-1, 0),
          "think_call_agreement": (0, 1),
          # multi-turn: they read the `episodes` keyword (0 and a reason without one); the costs grow with the episode
          "final_answer": (0, 1), "call_sequence": (0, 1), "final_state": (0, 1), "turn_cost": (-math.inf, 0),
          "tool_errors": (-math.inf, 0)}
PIECES = ["<think>", "</think>", "<tool_call>", "</tool_call>", "[", "]", "{", "}", '"name"', '"arguments"', ":", ",",
          "1e999999", "9" * 5000, "-0", "NaN", "true", "null", "é", "日本", "\u0000", "\ud800", "```json", "```",
          "[" * 3000, "]" * 10, '{"name": "f", "arguments": {}}', "\n", " ", "\\"]


def mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randint(0, len(chars))
        if op < 0.4 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op < 0.8:
            chars[i:i] = list(rng.choice(PIECES))
        else:
            chars = chars[:i]
    return "".join(chars)


def completions(n: int, rng: random.Random) -> tuple[list, list, list]:
    rows = generate(200, 7)
    out, truths, tools = [], [], []
    for _ in range(n):
        row = rng.choice(rows)
        kind = rng.random()
        if kind < 0.6:
            text = mutate(gold_answer(row), rng)
        elif kind < 0.9:
            text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        else:
            text = rng.choice([None, 42, [], [{"role": "assistant", "content": gold_answer(row)}], {"x": 1}])
        out.append(text)
        truths.append(row["ground_truth"] if rng.random() < 0.5 else json.dumps(row["ground_truth"]))
        tools.append(row["tools"])
    return out, truths, tools


def test_ten_thousand_completions_never_raise_and_stay_in_range():
    rng = random.Random(0)
    texts, truths, tools = completions(10_000, rng)
    for parser in PARSERS:
        for lenient in (False, True):
            for name, fn in REWARDS.items():
                values = fn(texts, ground_truth=truths, tools=tools, parser=parser, lenient=lenient)
                lo, hi = RANGES[name]
                assert len(values) == len(texts)
                bad = [(t, v) for t, v in zip(texts, values) if not lo <= v <= hi]
                assert not bad, (name, parser, bad[:3])
                zero_without_reason = [t for t, v, r in zip(texts, values, values.reasons) if v == lo and lo != hi and r is None
                                       and name not in ("length_penalty",)]
                assert not zero_without_reason, (name, parser, zero_without_reason[:3])
