"""Schema validity: do the calls name offered tools, with arguments that validate against
those tools' JSON schemas (required keys, types, enums, ranges)? jsonschema does the
checking; the reason names the first failing call and what failed.

Validation is time-bounded (tools/validation.py), since the model writes the arguments and the
data set the schemas: regex checks share a budget per completion (past it a call is invalid with
reason `pattern_timeout`), and `$ref` never leaves the schema (no download)."""

from __future__ import annotations

import json

from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from rewards.base import Scores, reports_reasons
from rewards.parsing import parse
from tools.validation import PatternTimeout, first_error, pattern_budget, schema_validator


# --- the reward ---------------------------------------------------------------------------------
def tool_schemas(tools) -> dict[str, dict]:
    """name -> parameters schema, from a list of tools in either the plain
    {"name", "parameters"} shape or the OpenAI {"type": "function", "function": {...}} shape.
    Raises ValueError when `tools` is not a list (or its JSON string)."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    if tools is not None and not isinstance(tools, (list, tuple)):
        raise ValueError(f"tools is a {type(tools).__name__}, not a list")
    out = {}
    for t in tools or []:
        t = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(t.get("name"), str):
            out[t["name"]] = t.get("parameters") or {"type": "object"}
    return out


def tool_validators(schemas: dict[str, dict]) -> dict[str, object]:
    """name -> validator, or a reason string where the tool's schema is unusable."""
    out = {}
    for name, schema in schemas.items():
        try:
            out[name] = schema_validator(schema)
        except (SchemaError, TypeError, ValueError):
            out[name] = "tool_schema_invalid"
        except RecursionError:
            out[name] = "tool_schema_too_deep"
    return out


def call_error(call: dict, validators_: dict[str, object]) -> str | None:
    """None if the call is valid, else a short reason."""
    validator = validators_.get(call["name"])
    if validator is None:
        return "unknown_tool"
    if isinstance(validator, str):
        return validator
    try:
        error = first_error(validator, call["arguments"])
    except PatternTimeout:
        return "pattern_timeout"
    except Unresolvable:
        return "tool_schema_bad_ref"
    except SchemaError:
        return "tool_schema_invalid"
    except RecursionError:
        return "arguments_too_deep"
    return None if error is None else f"schema_{error.validator}"  # e.g. schema_required, schema_type


def score_calls(calls: list[dict], offered) -> tuple[float, str | None]:
    """(share of valid calls, first reason) for parsed, non-empty calls against the offered tools."""
    try:
        validators_ = tool_validators(tool_schemas(offered))
    except (ValueError, TypeError, RecursionError):
        return 0.0, "bad_tools"
    with pattern_budget():
        errors = [call_error(call, validators_) for call in calls]
    bad = [e for e in errors if e is not None]
    return 1.0 - len(bad) / len(errors), (bad[0] if bad else None)


@reports_reasons
def schema_validity_reward(completions: list, tools: list, parser: str = "tool_n1", lenient: bool = False,
                           **kwargs) -> list[float]:
    """Share of the answer's calls that are valid against the offered tools' schemas, in
    [0, 1]. An unreadable answer or unreadable tools are 0; an empty call list has nothing
    invalid and is 1 (combine with an exact-match reward: validity alone does not say the
    answer is right)."""
    values, reasons = [], []
    for c, offered in zip(completions, tools, strict=True):
        parsed = parse(c, parser, lenient)
        if parsed.calls is None:
            value, reason = 0.0, parsed.reason
        elif not parsed.calls:
            value, reason = 1.0, None
        else:
            value, reason = score_calls(parsed.calls, offered)
        values.append(value)
        reasons.append(reason)
    return Scores(values, reasons)
