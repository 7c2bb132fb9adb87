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


FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)


def strip_fence(text: str) -> str:
    """```json [...] ``` -> [...]"""
    m = FENCE.match(text.strip())
    return m.group(1) if m else text


def parse_tool_n1(completion: str, lenient: bool = False) -> Parsed:
    """Tool-N1 format: `<think>...</think>` first, then exactly one
    `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, nothing after it.
    lenient=True also takes a code fence around the JSON and text after the closing tag."""
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
    if not re.fullmatch(r"\s*<tool_call>.*?</tool_call>" + (".*" if lenient else r"\s*"), rest, re.DOTALL):
        return _fail("text_outside_tags", think.group(1))
    body = strip_fence(blocks[0]) if lenient else blocks[0]
    calls, reason = parse_calls_json(body.strip())
    return Parsed(think=think.group(1), calls=calls, reason=reason)


def parse_hermes(completion: str, lenient: bool = False) -> Parsed:
    """Hermes / Qwen format: optional <think>...</think>, any text, and one
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call. No tag means the
    model called nothing ([]), which is a valid answer in this format."""
    if not isinstance(completion, str):
        return _fail("not_text")
    think = THINK.match(completion)
    if completion.count("<tool_call>") != completion.count("</tool_call>"):
        return _fail("unclosed_tool_call", think.group(1) if think else None)
    calls = []
    for block in TOOL_CALL.findall(completion):
        body = strip_fence(block) if lenient else block
        try:
            call = normalize_call(json.loads(body.strip()))
        except (ValueError, RecursionError):
            return _fail("bad_json", think.group(1) if think else None)
        if call is None:
            return _fail("bad_call", think.group(1) if think else None)
        calls.append(call)
    return Parsed(think=think.group(1) if think else None, calls=calls, reason=None)


def template_parser(tokenizer):
    """A parser from the model's own chat template (transformers' `parse_response`, for
    tokenizers that define a response template); its `tool_calls` become our calls. The
    completion is parsed on its own (prefix ""): templates that pre-write part of the answer
    in the prompt are not covered."""

    def parse(completion: str, lenient: bool = False) -> Parsed:
        try:
            message = tokenizer.parse_response(completion, prefix="")
        except Exception:  # noqa: BLE001 - a parser error is a malformed completion, never a crash
            return _fail("template_parse_error")
        calls = []
        for item in (message or {}).get("tool_calls") or []:
            call = normalize_call(item.get("function", item) if isinstance(item, dict) else None)
            if call is None:
                return _fail("bad_call", message.get("thinking"))
            calls.append(call)
        return Parsed(think=(message or {}).get("thinking"), calls=calls, reason=None)

    return parse


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


PARSERS = {"tool_n1": parse_tool_n1, "hermes": parse_hermes}


def get_parser(name: str):
    """A parser by name; `template` is registered by the trainer for tokenizers that have one."""
    if name not in PARSERS:
        raise ValueError(f"parser {name!r} is unknown; choose from {sorted(PARSERS)}")
    return PARSERS[name]


def parse(completion, parser: str = "tool_n1", lenient: bool = False) -> Parsed:
    """Parse a completion (a string, or TRL's conversational [{"role", "content"}]) with the named parser."""
    return get_parser(parser)(completion_text(completion), lenient=lenient)


def completion_text(completion) -> str | None:
    """TRL passes plain strings, or for conversational data [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else None
    return completion if isinstance(completion, str) else None
