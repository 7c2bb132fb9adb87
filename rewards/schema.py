"""Schema validity: do the calls name offered tools, with arguments that validate against
those tools' JSON schemas (required keys, types, enums, ranges)? jsonschema does the
checking; the reason names the first failing call and what failed."""

from __future__ import annotations

import json

from jsonschema.exceptions import SchemaError

from rewards.base import Scores
from rewards.parsing import parse
from tools.sandbox import first_error


def tool_schemas(tools) -> dict[str, dict]:
    """name -> parameters schema, from a list of tools in either the plain
    {"name", "parameters"} shape or the OpenAI {"type": "function", "function": {...}} shape."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    out = {}
    for t in tools or []:
        t = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(t.get("name"), str):
            out[t["name"]] = t.get("parameters") or {"type": "object"}
    return out


def call_error(call: dict, schemas: dict[str, dict]) -> str | None:
    """None if the call is valid, else a short reason."""
    schema = schemas.get(call["name"])
    if schema is None:
        return "unknown_tool"
    try:
        error = first_error(schema, call["arguments"])
    except SchemaError:
        return "tool_schema_invalid"
    if error is None:
        return None
    return f"schema_{error.validator}"  # e.g. schema_required, schema_type, schema_enum, schema_maximum


def schema_validity_reward(completions: list, tools: list, parser: str = "tool_n1", lenient: bool = False,
                           **kwargs) -> list[float]:
    """Share of the answer's calls that are valid against the offered tools' schemas, in
    [0, 1]. An unreadable answer is 0; an empty call list has nothing invalid and is 1
    (combine with an exact-match reward: validity alone does not say the answer is right)."""
    values, reasons = [], []
    for c, offered in zip(completions, tools, strict=True):
        parsed = parse(c, parser, lenient)
        if parsed.calls is None:
            values.append(0.0)
            reasons.append(parsed.reason)
            continue
        if not parsed.calls:
            values.append(1.0)
            reasons.append(None)
            continue
        schemas = tool_schemas(offered)
        errors = [call_error(call, schemas) for call in parsed.calls]
        bad = [e for e in errors if e is not None]
        values.append(1.0 - len(bad) / len(errors))
        reasons.append(bad[0] if bad else None)
    return Scores(values, reasons)
