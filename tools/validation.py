"""JSON-schema validation with a time bound, for every place that checks arguments a model or a
data set wrote (rewards, the tool sandbox, the data filter).

Regex keywords (`pattern`, `patternProperties`, and `additionalProperties` next to them) run on
the `regex` module with a timeout shared by every check inside one `pattern_budget()` block
(PATTERN_BUDGET_S by default; past it the check raises PatternTimeout). `uniqueItems` is linear
instead of pairwise, at most MAX_ERRORS errors are collected per call, and `$ref` never leaves
the schema: a remote or missing reference raises referencing's Unresolvable, with no download."""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import time
from contextlib import contextmanager

import regex  # unlike `re`, it takes a timeout
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry

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
def _cached(schema_json: str):
    schema = json.loads(schema_json)
    BoundedValidator.check_schema(schema)  # an invalid schema fails here, not halfway through validation
    return BoundedValidator(schema, registry=Registry())  # empty registry: a remote $ref is unresolvable


def schema_validator(schema: dict):
    """A bounded validator for `schema` (cached by content). Raises SchemaError for an invalid
    schema, TypeError/ValueError for one that is not JSON, RecursionError for one too deep."""
    return _cached(json.dumps(schema, sort_keys=True))


def first_error(validator_, arguments) -> ValidationError | None:
    """The shallowest of the arguments' first MAX_ERRORS violations, or None. Raises
    PatternTimeout, referencing's Unresolvable or RecursionError where the check cannot finish."""
    try:
        errors = itertools.islice(validator_.iter_errors(arguments), MAX_ERRORS)
        return min(errors, key=lambda e: list(map(str, e.path)), default=None)
    except BaseException as e:  # noqa: B036
        # A RecursionError that lands inside referencing's Rust maps (rpds) comes out as pyo3's
        # PanicException, a BaseException that `except Exception` misses: it is the same error.
        if type(e).__name__ == "PanicException":
            raise RecursionError(f"the schema recurses too deep to check ({e})") from e
        raise
