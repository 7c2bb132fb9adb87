"""Parsers for model-native tool-call formats (what a model's own chat template teaches it),
and gold answers in those formats. Never raises on a completion: an unreadable one gives
`calls=None` and a reason, like the parsers in rewards/parsing.py.

- llama3_json (Llama-3.1/3.2/3.3 templates, vLLM's `llama3_json` parser): the answer is
  `{"name": ..., "parameters": {...}}` (or `"arguments"`), optionally after `<|python_tag|>`;
  several calls are separated by `;` or newlines. An answer that does not start with `{` is a
  natural-language reply: no call.
- mistral (vLLM's `mistral` parser): `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`
  (tokenizers before v11; items may carry the `"id"` the template writes) or, per call,
  `[TOOL_CALLS]name[ARGS]{...}` (v13) / `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` (v11).
  No `[TOOL_CALLS]` means no call. The marker is a special token: decode completions with
  special tokens kept, or parse with lenient=True (a marker-less JSON answer is then read).

Every scanner moves forward through the text (str.find, anchored regex matches of one
character class, json's raw_decode at an index), so parsing is linear in the text length.
"""

from __future__ import annotations

import json
import re

from rewards.parsing import (CALL_CLOSE, CALL_OPEN, Parsed, normalize_call, parse_ground_truth, split_think,
                             strip_fence, too_deep)

PYTHON_TAG = "<|python_tag|>"
TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
# End-of-turn tokens that decoding with special tokens leaves after an answer; they end it.
END_MARKERS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")
NO_CALL_TEXT = "None of the functions can do this."  # render_native's answer when there is no call

_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")
_NAME = re.compile(r'[^\s\[\]{}"]+')  # a Mistral tool name runs up to whitespace, a bracket, a brace or a quote
_CALL_ID_VALUE = re.compile(r"[A-Za-z0-9]*")
_SEPARATOR = re.compile(r"\s*(?:;\s*)?")  # between Llama calls: whitespace and at most one `;`
_LENIENT_SEPARATORS = re.compile(r"[\s;,]*")


def _fail(reason: str, think: str | None = None) -> Parsed:
    return Parsed(think=think, calls=None, reason=reason)


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _strip_end_markers(text: str) -> str:
    """`...<|eot_id|>` -> `...`: trailing end-of-turn tokens and whitespace are not part of the answer."""
    end = len(text)  # moved back over markers and whitespace, then cut once: no copy per marker
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        marker = next((m for m in END_MARKERS if text.endswith(m, 0, end)), None)
        if marker is None:
            return text[:end]
        end -= len(marker)


def _answer(completion: str) -> tuple[str | None, str]:
    """(think, the answer after it) with leading whitespace and trailing end-of-turn tokens removed."""
    split = split_think(completion)
    think, rest = split if split else (None, completion.lstrip())
    return think, _strip_end_markers(rest)


def _decode(text: str, pos: int) -> tuple[object, int, str | None]:
    """The JSON value that starts at `pos` -> (value, end, None), or (None, pos, reason)."""
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        return None, pos, "bad_json"
    if too_deep(value):
        return None, pos, "arguments_too_deep"
    return value, end, None


def _llama_call(item: object, lenient: bool) -> dict | None:
    """{"name", "parameters" | "arguments"} -> {"name", "arguments"}; lenient also drops `"type": "function"`."""
    if not isinstance(item, dict):
        return None
    item = dict(item)
    if lenient and item.get("type") == "function":
        del item["type"]
    if "parameters" in item:
        if "arguments" in item:
            return None
        item["arguments"] = item.pop("parameters")
    return normalize_call(item)


def parse_llama3_json(completion: str, lenient: bool = False) -> Parsed:
    """Llama-3.1 JSON tool calling: optional <think>...</think>, optional `<|python_tag|>`,
    then one or more `{"name": ..., "parameters": {...}}` objects separated by whitespace
    and at most one `;`, and nothing after them. Text that does not start with `{` is a
    reply in natural language ([]). lenient=True, like vLLM's parser, also takes text before
    the first `{` and after the last object (the calls end at the first text that is not a
    separator), a code fence, any run of `;`/`,` separators, a JSON list of calls and
    `"type": "function"` in a call."""
    if not isinstance(completion, str):
        return _fail("not_text")
    think, text = _answer(completion)
    tagged = text.startswith(PYTHON_TAG)
    if tagged:
        text = text[len(PYTHON_TAG):].lstrip()
    if lenient:
        text = strip_fence(text)
        start = text.find("{")
        if start < 0:
            return Parsed(think=think, calls=[], reason=None)
        bracket = text.rfind("[", 0, start)
        if bracket >= 0 and not text[bracket + 1:start].strip():  # `[{...}, {...}]`: read the objects in it
            start = bracket + 1
    elif text.startswith("{"):
        start = 0
    elif tagged:
        return _fail("bad_json", think)  # <|python_tag|> announces a call; builtin `tool.call(...)` is not one of ours
    else:
        return Parsed(think=think, calls=[], reason=None)
    separators = _LENIENT_SEPARATORS if lenient else _SEPARATOR
    calls, pos = [], _skip_ws(text, start)
    while True:
        value, pos, reason = _decode(text, pos)
        if reason:
            return _fail(reason, think)
        call = _llama_call(value, lenient)
        if call is None:
            return _fail("bad_call", think)
        calls.append(call)
        pos = separators.match(text, pos).end()
        if pos < len(text) and text[pos] == "{":
            continue
        if pos == len(text) or lenient:
            return Parsed(think=think, calls=calls, reason=None)
        return _fail("text_after_calls", think)


def _mistral_call(item: object) -> dict | None:
    """A pre-v11 list item: {"name", "arguments"} plus the optional "id" the template writes."""
    if not isinstance(item, dict):
        return None
    item = dict(item)
    if isinstance(item.get("id"), str):
        del item["id"]
    return normalize_call(item)


def _mistral_segment(text: str, pos: int, lenient: bool) -> tuple[list[dict] | None, int, str | None]:
    """The calls of one `[TOOL_CALLS]` segment starting at `pos` (just after the marker):
    a JSON list/object of calls, or `name[ARGS]{...}` / `name[CALL_ID]id[ARGS]{...}`
    (lenient: also `name{...}`). -> (calls, end, None) or (None, pos, reason)."""
    if pos == len(text) or text.startswith(TOOL_CALLS, pos):
        return None, pos, "empty_tool_calls"
    if text[pos] in "[{":
        value, end, reason = _decode(text, pos)
        if reason:
            return None, pos, reason
        calls = [_mistral_call(item) for item in (value if isinstance(value, list) else [value])]
        return (None, pos, "bad_call") if any(c is None for c in calls) else (calls, end, None)
    name = _NAME.match(text, pos)
    if name is None:
        return None, pos, "bad_call"
    pos = name.end()
    if text.startswith(CALL_ID, pos):
        pos = _CALL_ID_VALUE.match(text, pos + len(CALL_ID)).end()
    if text.startswith(ARGS, pos):
        pos += len(ARGS)
    elif not (lenient and text.startswith("{", pos)):
        return None, pos, "bad_call"
    value, end, reason = _decode(text, _skip_ws(text, pos))
    if reason:
        return None, pos, reason
    call = normalize_call({"name": name.group(), "arguments": value})
    return (None, pos, "bad_call") if call is None else ([call], end, None)


def parse_mistral(completion: str, lenient: bool = False) -> Parsed:
    """Mistral tool calling: optional <think>...</think>, any text, then `[TOOL_CALLS]`
    followed by the calls (module docstring); several `[TOOL_CALLS]` segments add up. No
    marker means no call ([]). Strict: nothing but whitespace after the calls. lenient=True
    ignores text after them, takes `[TOOL_CALLS]name{...}`, and reads an answer with no
    marker that starts with `[` or `{` as the calls (the marker lost to skip_special_tokens)."""
    if not isinstance(completion, str):
        return _fail("not_text")
    think, text = _answer(completion)
    pos = text.find(TOOL_CALLS)
    if pos >= 0:
        pos += len(TOOL_CALLS)
    elif lenient and text[:1] in ("[", "{"):
        pos = 0
    else:
        return Parsed(think=think, calls=[], reason=None)
    calls = []
    while True:
        segment, pos, reason = _mistral_segment(text, _skip_ws(text, pos), lenient)
        if reason:
            return _fail(reason, think)
        calls.extend(segment)
        pos = _skip_ws(text, pos)
        if text.startswith(TOOL_CALLS, pos):
            pos += len(TOOL_CALLS)
            continue
        if pos == len(text) or lenient:
            return Parsed(think=think, calls=calls, reason=None)
        return _fail("text_after_calls", think)


def _hermes_json(text: str) -> str:
    """A tag inside an argument string would end the block early: write its `<` as the JSON
    escape \\u003c (`<` only occurs inside JSON strings, so the value is unchanged)."""
    return text.replace("<", "\\u003c") if CALL_OPEN in text or CALL_CLOSE in text else text


NATIVE = {"llama3_json": parse_llama3_json, "mistral": parse_mistral}
KEEP_SPECIAL_TOKENS = frozenset({"llama3_json", "mistral"})  # formats whose markers are special tokens
RENDER_FORMATS = ("hermes", "llama3_json", "mistral")


def render_native(calls: list[dict], fmt: str) -> str:
    """A gold answer in a native format, as the format's chat template writes an assistant
    tool-call turn: hermes `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` per
    call, one per line; llama3_json `{"name": ..., "parameters": ...}` per call joined by
    "; "; mistral `[TOOL_CALLS] [{"name": ..., "arguments": ...}, ...]`. No calls give
    NO_CALL_TEXT, which every parser reads as []. Bad calls or an unknown format raise."""
    calls = parse_ground_truth(calls)
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"no gold answers in format {fmt!r} (SFT warm-up, gold episodes): set model.tool_format to "
                         f"one of tool_n1, {', '.join(RENDER_FORMATS)}, or trainer.sft.steps=0")
    if not calls:
        return NO_CALL_TEXT
    dump = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731 - the templates' tojson
    if fmt == "hermes":
        return "\n".join(f"{CALL_OPEN}\n{_hermes_json(dump(c))}\n{CALL_CLOSE}" for c in calls)
    if fmt == "llama3_json":
        return "; ".join(dump({"name": c["name"], "parameters": c["arguments"]}) for c in calls)
    return f"{TOOL_CALLS} {dump(calls)}"
