"""Schema validity: do the calls name offered tools, with arguments that validate against
those tools' JSON schemas (required keys, types, enums, ranges)? jsonschema does the
checking; the reason names the first failing call and what failed.

Validation is time-bounded, since the model writes the arguments and the data set the schemas:
regex keywords (`pattern`, `patternProperties`, `additionalProperties` next to them) run on the
`regex` module with a timeout shared by all calls of one completion (PATTERN_BUDGET_S; past it a
call is invalid with reason `pattern_timeout`), `uniqueItems` is linear instead of pairwise, at
most MAX_ERRORS errors are collected per call, and `$ref` never leaves the schema (no download)."""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import time
from contextlib import contextmanager

import regex  # a dependency of transformers; unlike `re`, it takes a timeout
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from rewards.base import Scores
from rewards.parsing import parse

PATTERN_BUDGET_S = 0.1  # regex time for all calls of one completion
MAX_ERRORS = 64  # the reason is the shallowest of the first MAX_ERRORS errors


class PatternTimeout(Exception):
    """A regex check of the schema ran past the completion's budget."""


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("pattern_deadline", default=None)


@contextmanager
def pattern_budget(seconds: float = PATTERN_BUDGET_S):
    """Regex checks inside this block share `seconds` of time."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _search(pattern: str, text: str) -> bool:
    deadline = _deadline.get()
    remaining = (time.monotonic() + PATTERN_BUDGET_S if deadline is None else deadline) - time.monotonic()
    if remaining <= 0:
        raise PatternTimeout(pattern)
    try:
        return regex.search(pattern, text, timeout=remaining) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None
    except regex.error as e:  # `re` compiled it (check_schema), `regex` does not
        raise SchemaError(f"pattern {pattern!r}: {e}") from None


# --- keywords replaced in jsonschema's Draft 2020-12 validator --------------------------------
def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r:.80} does not match {pattern!r}")


def _pattern_properties(validator, patterns, instance, schema):
    if validator.is_type(instance, "object"):
        for pattern, subschema in patterns.items():
            for key, value in instance.items():
                if _search(pattern, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    known, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in known and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)))[:200]})")


def _json_key(value) -> tuple:
    """Hashable, and equal exactly when JSON Schema calls two values equal: 1 == 1.0,
    true != 1, objects compare without order."""
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(map(_json_key, value)))
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    return ("number", value) if isinstance(value, (int, float)) else ("other", repr(value))


def _unique_items(validator, unique, instance, schema):
    if unique and validator.is_type(instance, "array"):
        keys = [_json_key(item) for item in instance]
        if len(set(keys)) != len(keys):
            yield ValidationError(f"{instance!r:.80} has non-unique elements")


BoundedValidator = validators.extend(Draft202012Validator, {
    "pattern": _pattern, "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties, "uniqueItems": _unique_items,
})


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str):
    schema = json.loads(schema_json)
    BoundedValidator.check_schema(schema)  # an invalid schema fails here, not halfway through validation
    return BoundedValidator(schema, registry=Registry())  # empty registry: a remote $ref is unresolvable


def first_error(validator, arguments) -> ValidationError | None:
    """The shallowest of the arguments' first MAX_ERRORS violations, or None."""
    errors = itertools.islice(validator.iter_errors(arguments), MAX_ERRORS)
    return min(errors, key=lambda e: list(map(str, e.path)), default=None)


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
            out[name] = _validator(json.dumps(schema, sort_keys=True))
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
