"""Extract <think> and tool calls from a completion. Never raises: a completion that
cannot be read gives `calls=None` and a short reason that the metrics count."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Parsed:
    think: str | None
    calls: list[dict] | None  # [{"name": str, "arguments": dict}], None when unreadable
    reason: str | None  # why it is unreadable; None when well formed


def _fail(reason: str, think: str | None = None) -> Parsed:
    return Parsed(think=think, calls=None, reason=reason)


MAX_DEPTH = 100  # deeper JSON is unreadable: no tool takes it, and json.dumps or a validator would recurse out


def too_deep(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/objects nest more than `limit` levels (without recursion, in linear time)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


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
    if not isinstance(args, dict) or too_deep(args):
        return None
    return {"name": item["name"], "arguments": args}


def parse_calls_json(text: str) -> tuple[list[dict] | None, str | None]:
    """A JSON list of calls -> (calls, None) or (None, reason)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "bad_json"
    if too_deep(value):
        return None, "arguments_too_deep"
    if not isinstance(value, list):
        return None, "not_a_list"
    calls = [normalize_call(item) for item in value]
    if any(c is None for c in calls):
        return None, "bad_call"
    return calls, None


def strip_fence(text: str) -> str:
    """```json [...] ``` -> [...] (a language tag of ASCII letters is dropped)."""
    t = text.strip()
    if len(t) < 6 or not (t.startswith("```") and t.endswith("```")):
        return text
    inner = t[3:-3]
    tag = len(inner) - len(inner.lstrip(string.ascii_letters))
    return inner[tag:].strip()


# Every scanner below moves forward with str.find, so parsing is linear in the text length:
# a lazy regex such as <tool_call>(.*?)</tool_call> rescans to the end from every unclosed opener.
def split_think(text: str) -> tuple[str, str] | None:
    """Leading `<think>...</think>` (after whitespace) -> (its content, the text after it with
    leading whitespace removed), or None when the text does not start with a closed think."""
    start = len(text) - len(text.lstrip())
    if not text.startswith(THINK_OPEN, start):
        return None
    close = text.find(THINK_CLOSE, start + len(THINK_OPEN))
    if close < 0:
        return None
    return text[start + len(THINK_OPEN):close], text[close + len(THINK_CLOSE):].lstrip()


def tool_call_blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of each `<tool_call>...</tool_call>`, the first closer after each opener,
    non-overlapping, in order; the body is text[start + len(CALL_OPEN):end - len(CALL_CLOSE)]."""
    blocks, pos = [], 0
    while (opener := text.find(CALL_OPEN, pos)) >= 0:
        closer = text.find(CALL_CLOSE, opener + len(CALL_OPEN))
        if closer < 0:  # no closer after this opener, so none after any later one either
            break
        pos = closer + len(CALL_CLOSE)
        blocks.append((opener, pos))
    return blocks


def _body(text: str, block: tuple[int, int], lenient: bool) -> str:
    body = text[block[0] + len(CALL_OPEN):block[1] - len(CALL_CLOSE)]
    return strip_fence(body) if lenient else body


def parse_tool_n1(completion: str, lenient: bool = False) -> Parsed:
    """Tool-N1 format: `<think>...</think>` first, then exactly one
    `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, nothing after it.
    lenient=True also takes a code fence around the JSON and text after the closing tag."""
    if not isinstance(completion, str):
        return _fail("not_text")
    split = split_think(completion)
    if split is None:
        return _fail("no_think")
    think, rest = split
    blocks = tool_call_blocks(rest)
    if not blocks:
        return _fail("no_tool_call", think)
    if len(blocks) > 1:
        return _fail("many_tool_call_tags", think)
    (start, end), = blocks
    if rest[:start].strip() or (not lenient and rest[end:].strip()):
        return _fail("text_outside_tags", think)
    calls, reason = parse_calls_json(_body(rest, blocks[0], lenient).strip())
    return Parsed(think=think, calls=calls, reason=reason)


def parse_hermes(completion: str, lenient: bool = False) -> Parsed:
    """Hermes / Qwen format: optional <think>...</think>, any text, and one
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call. No tag means the
    model called nothing ([]), which is a valid answer in this format."""
    if not isinstance(completion, str):
        return _fail("not_text")
    split = split_think(completion)
    think = split[0] if split else None
    if completion.count(CALL_OPEN) != completion.count(CALL_CLOSE):
        return _fail("unclosed_tool_call", think)
    calls = []
    for block in tool_call_blocks(completion):
        try:
            value = json.loads(_body(completion, block, lenient).strip())
        except (ValueError, RecursionError):
            return _fail("bad_json", think)
        if too_deep(value):
            return _fail("arguments_too_deep", think)
        call = normalize_call(value)
        if call is None:
            return _fail("bad_call", think)
        calls.append(call)
    return Parsed(think=think, calls=calls, reason=None)


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
    """A parser by name: ours (tool_n1), hermes, the native formats of rewards/native.py
    (llama3_json, mistral); `template` is registered by the trainer for tokenizers that have one."""
    if name not in PARSERS:
        from rewards.native import NATIVE

        PARSERS.update({k: v for k, v in NATIVE.items() if k not in PARSERS})
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
