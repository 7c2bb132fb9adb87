"""Extract <think> and tool calls from a completion. Never raises: a completion that
cannot be read gives `calls=None` and a short reason that the metrics count."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    think: str | None
    calls: list[dict] | None  # [{"name": str, "arguments": dict}], None when unreadable
    reason: str | None  # why it is unreadable; None when well formed


def _fail(reason: str, think: str | None = None) -> Parsed:
    return Parsed(think=think, calls=None, reason=reason)


def normalize_call(item: object) -> dict | None:
    """{"name": str, "arguments": dict}; arguments given as a JSON string are decoded."""
    if not isinstance(item, dict) or set(item) - {"name", "arguments"} or not isinstance(item.get("name"), str):
        return None
    args = item.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return {"name": item["name"], "arguments": args}


def parse_calls_json(text: str) -> tuple[list[dict] | None, str | None]:
    """A JSON list of calls -> (calls, None) or (None, reason)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "bad_json"
    if not isinstance(value, list):
        return None, "not_a_list"
    calls = [normalize_call(item) for item in value]
    if any(c is None for c in calls):
        return None, "bad_call"
    return calls, None


def parse_tool_n1(completion: str) -> Parsed:
    """Tool-N1 format: `<think>...</think>` first, then exactly one
    `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, nothing after it."""
    if not isinstance(completion, str):
        return _fail("not_text")
    think = THINK.match(completion)
    if think is None:
        return _fail("no_think")
    rest = completion[think.end():]
    blocks = TOOL_CALL.findall(rest)
    if not blocks:
        return _fail("no_tool_call", think.group(1))
    if len(blocks) > 1:
        return _fail("many_tool_call_tags", think.group(1))
    if not re.fullmatch(r"\s*<tool_call>.*?</tool_call>\s*", rest, re.DOTALL):
        return _fail("text_outside_tags", think.group(1))
    calls, reason = parse_calls_json(blocks[0].strip())
    return Parsed(think=think.group(1), calls=calls, reason=reason)


def parse_ground_truth(value: object) -> list[dict]:
    """Ground truth as a list of {"name", "arguments"} dicts or that list as a JSON string.
    Unlike completions, bad ground truth is a data error and raises with what is wrong."""
    if isinstance(value, str):
        calls, reason = parse_calls_json(value)
    elif isinstance(value, (list, tuple)):
        normalized = [normalize_call(v) for v in value]
        calls, reason = (None, "bad_call") if any(c is None for c in normalized) else (normalized, None)
    else:
        calls, reason = None, "not_a_list"
    if calls is None:
        raise ValueError(
            f"ground_truth {value!r:.200} is not a list of {{'name', 'arguments'}} calls ({reason}); "
            "fix the dataset row"
        )
    return calls


PARSERS = {"tool_n1": parse_tool_n1}
