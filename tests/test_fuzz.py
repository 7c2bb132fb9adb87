"""Property-based fuzzing (hypothesis) of everything a run reads from outside:

1. model completions through every parser and every reward;
2. tool schemas and call arguments through the schema reward, the tool sandbox's
   validator and Tool-N1's data filter;
3. dataset rows of every format through the real JSONL load (read_jsonl + clean);
4. whatever a reward plugin returns through the weighted sum the trainer uses.

Nothing may raise (beyond what is documented), every value must be finite and in range, and
every call must return within a time budget that is asserted here (hypothesis' deadline is
off: it is flaky on a loaded machine). Completions and rows are also blown up by repetition
past BIG_BYTES and must still be handled within BIG_BUDGET_S: a quadratic scan takes minutes
there, a linear one milliseconds.

The CI variant runs some dozens of examples per property; `pytest -m slow -k fuzz` runs
SLOW_FACTOR times as many. The cases tried and the worst time per call are printed when the
module ends (pytest -s) and written as JSON to $TOOLCALL_RL_FUZZ_REPORT when that is set.
The regression tests at the end pin the bugs this fuzzing found."""

from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import os
import re
import reprlib
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.datasets import Filtered, Lines, check_row, clean, read_jsonl, tool_n1_filter
from envs.formats import FORMATS
from envs.single_turn import gold_answer
from envs.synthetic import generate
from rewards import REWARDS, WeightedReward
from rewards.base import Scores
from rewards.combine import RewardError, checked_values
from rewards.parsing import PARSERS, Parsed, too_deep
from rewards.schema import schema_validity_reward
from tests.test_reward_fuzz import RANGES
from tools.registry import Tool
from tools.sandbox import validate

SLOW_FACTOR = 20
VARIANTS = [pytest.param(1, id="ci"), pytest.param(SLOW_FACTOR, id="slow", marks=pytest.mark.slow)]
BIG_BYTES = 200_000  # what a blown-up completion or row reaches
BUDGET_S = 1.0  # per call on generated input
BIG_BUDGET_S = 2.0  # per call on input blown up past BIG_BYTES
WATCHDOG_S = 20.0  # a call still running then is stopped, so that the test fails instead of hanging
FIXTURES = Path(__file__).parent / "fixtures" / "formats"


# --- timing and the report ------------------------------------------------------------------
STATS: dict[str, dict] = {}


def stat(prop: str) -> dict:
    return STATS.setdefault(prop, {"cases": 0, "calls": 0, "worst_s": 0.0, "worst_call": None, "worst_bytes": 0,
                                   "max_bytes": 0})


@pytest.fixture(scope="module", autouse=True)
def fuzz_report():
    yield
    if not STATS:
        return
    print("\nfuzz summary: property, cases, calls, worst per-call time (call, bytes), largest input")
    for prop, s in sorted(STATS.items()):
        print(f"  {prop:32} {s['cases']:6} cases {s['calls']:8} calls  worst {s['worst_s'] * 1000:8.1f} ms "
              f"({s['worst_call']}, {s['worst_bytes']} B)  max {s['max_bytes']} B")
    if os.environ.get("TOOLCALL_RL_FUZZ_REPORT"):
        Path(os.environ["TOOLCALL_RL_FUZZ_REPORT"]).write_text(json.dumps(STATS, indent=2))


class Runaway(BaseException):
    """Raised by the watchdog inside a call that ran far past its budget. A BaseException, so
    that neither the code under test (`except Exception`) nor hypothesis (no shrinking of an
    example that takes WATCHDOG_S per run) catches it."""


@contextmanager
def watchdog(seconds: float, what: str):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Runaway(f"{what}: still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(prop: str, what: str, fn, *args, budget: float = BUDGET_S, size: int = 0, show=None, **kwargs):
    """("ok", fn(*args, **kwargs)) or ("raised", the exception), asserting that the call took
    under `budget` seconds. A call over budget is repeated, best of three with the garbage
    collector off: a busy machine is not the code's cost, and a quadratic scan is slow every time."""
    best = math.inf
    for _ in range(3):
        collecting = gc.isenabled()
        gc.disable()
        try:
            with watchdog(WATCHDOG_S, what):
                start = time.perf_counter()
                try:
                    outcome = ("ok", fn(*args, **kwargs))
                except Exception as e:  # noqa: BLE001 - the caller checks what may be raised
                    outcome = ("raised", e)
                elapsed = time.perf_counter() - start
        except Runaway as e:
            raise Runaway(f"{prop}: {e} on {size} bytes of input {brief(show if show is not None else args)}") from None
        finally:
            if collecting:
                gc.enable()
        best = min(best, elapsed)
        if best < budget:
            break
    s = stat(prop)
    s["calls"] += 1
    s["max_bytes"] = max(s["max_bytes"], size)
    if best > s["worst_s"]:
        s.update(worst_s=best, worst_call=what, worst_bytes=size)
    assert best < budget, f"{prop}: {what} took {best:.2f} s (budget {budget:g} s) on {size} bytes"
    return outcome


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxdict, _BRIEF.maxlist = 8, 300, 300, 12, 12


def brief(value) -> str:
    """A repr that is short, and safe on values nested deeper than the stack."""
    return _BRIEF.repr(value)


def nbytes(value) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return nbytes(value[-1].get("content"))
    return 0


def run(prop: str, strategy, examples: int, check) -> None:
    """check(case) on `examples` cases drawn from strategy, counted under prop."""

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(strategy)
    def prop_test(case):
        stat(prop)["cases"] += 1
        check(prop, case)

    prop_test()


def variant(scale: int) -> str:
    return "ci" if scale == 1 else "slow"


def blow_up(text: str, pad: str | None) -> str:
    """text past BIG_BYTES: repeated (pad None), or followed by pad repeated (an unclosed tag
    repeated is what makes a lazy regex quadratic)."""
    if pad is None:
        unit = text or " "
        return unit * -(-BIG_BYTES // len(unit))
    return text + pad * -(-BIG_BYTES // len(pad))


# --- shared strategies ------------------------------------------------------------------------
ODD_TEXT = ["\u2028", "\u2029", "\x85", "\ud800", "a\udfffb", "\x00", "\ufeff", "é", "日本", "\U0001f600", "\r", "\t", ""]
ODD_STRINGS = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT + ["a" * 30 + "!", "x" * 30, "0" * 5000]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ODD_STRINGS)
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(ODD_STRINGS, c, max_size=4),
                    max_leaves=12)


def deep(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


class Deep(NamedTuple):
    """Stands for `depth` levels of nesting in a drawn case, expanded where it is used:
    hypothesis' printer of a failing example recurses out on the real thing."""
    depth: int
    kind: str  # object | array | schema


def expand(value):
    if isinstance(value, Deep):
        return deep_schema(value.depth) if value.kind == "schema" else deep(value.depth, value.kind)
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return [expand(v) for v in value] if isinstance(value, list) else value


# --- 1. completions through every parser and every reward -------------------------------------
ROWS = generate(40, 7)
TOOL_NAMES = sorted({t["name"] for row in ROWS for t in row["tools"]})
PIECES = ["<think>", "</think>", "<tool_call>", "</tool_call>", "[", "]", "{", "}", '"name"', '"arguments"', ":", ",",
          '"', "\\", "1e999999", "-1e999999", "9" * 5000, "-0", "NaN", "Infinity", "true", "null", "```json", "```",
          "[" * 3000, "]" * 10, '{"a":' * 990, '{"name": "f", "arguments": {}}', "\n", " ", *ODD_TEXT]


def hermes_answer(row: dict) -> str:
    return "".join(f"<tool_call>{json.dumps(c)}</tool_call>\n" for c in row["ground_truth"])


GOLD = st.sampled_from(ROWS).flatmap(lambda r: st.sampled_from([gold_answer(r), hermes_answer(r)]))
ARGUMENTS = st.dictionaries(ODD_STRINGS, JSON, max_size=4)
CALL = st.fixed_dictionaries({"name": st.sampled_from(TOOL_NAMES) | st.text(max_size=6),
                              "arguments": ARGUMENTS | ARGUMENTS.map(json.dumps) | JSON})
CALLS_JSON = st.lists(CALL, max_size=3).map(json.dumps)


def deep_call(depth: int, kind: str) -> str:
    """A call whose arguments nest `depth` levels, written by hand (json.dumps recurses too)."""
    inner = '{"a":' * depth + "1" + "}" * depth if kind == "object" else "[" * depth + "]" * depth
    return f'[{{"name": "{TOOL_NAMES[0]}", "arguments": {{"x": {inner}}}}}]'


DEEP_JSON = st.builds(deep_call, st.integers(0, 1100) | st.integers(900, 1000), st.sampled_from(["object", "array"]))
FRAGMENT = st.one_of(st.sampled_from(PIECES), st.text(max_size=12), JSON.map(json.dumps), CALLS_JSON,
                     JSON.map(json.dumps).map(lambda s: s[: len(s) // 2]), GOLD, DEEP_JSON)


def splice(text: str, edits: list) -> str:
    for position, fragment, cut in edits:
        i = position % (len(text) + 1)
        text = text[:i] + fragment + text[i + cut:]
    return text


TEXT = st.one_of(
    st.lists(FRAGMENT, max_size=25).map("".join),
    GOLD,
    st.builds(splice, GOLD, st.lists(st.tuples(st.integers(0, 10**6), FRAGMENT, st.integers(0, 8)), min_size=1, max_size=6)),
    st.builds(lambda think, body, tail: f"<think>{think}</think><tool_call>{body}</tool_call>{tail}",
              st.text(max_size=12) | FRAGMENT, CALLS_JSON | FRAGMENT, st.sampled_from(["", "\n", " x", "</tool_call>", "```"])),
    st.builds(lambda think, body: f"<think>{think}</think>\n<tool_call>\n```json\n{body}\n```\n</tool_call>",
              st.text(max_size=12), CALLS_JSON),
    st.lists(CALL.map(json.dumps).map(lambda c: f"<tool_call>{c}</tool_call>"), max_size=3).map("\n".join),
)
COMPLETION = st.one_of(TEXT, TEXT, TEXT, TEXT.map(lambda t: [{"role": "assistant", "content": t}]),
                       st.sampled_from([None, 42, [], {"x": 1}, [{"role": "assistant", "content": None}]]))
PADS = st.none() | st.text(min_size=1, max_size=4) | st.sampled_from(
    ["<think>", "</think>", "<tool_call>", "</tool_call>", "[", "{", '{"a":', "```", " ", "\n", '"', "\\", "\u2028", "\ud800"])
COMPLETION_CASES = st.tuples(st.lists(st.tuples(COMPLETION, st.sampled_from(ROWS), st.booleans(), st.booleans()),
                                     min_size=1, max_size=3), PADS)


def takes_lenient(parser) -> bool:
    return "lenient" in inspect.signature(parser).parameters


def check_parsed(parsed) -> None:
    assert isinstance(parsed, Parsed)
    assert (parsed.calls is None) == (parsed.reason is not None), parsed
    assert parsed.think is None or isinstance(parsed.think, str)
    for call in parsed.calls or []:
        assert set(call) == {"name", "arguments"} and isinstance(call["name"], str), call
        assert isinstance(call["arguments"], dict) and not too_deep(call["arguments"])
    json.dumps(parsed.calls)  # what a reward compares and a log writes


def check_scores(name: str, values, n: int, where) -> None:
    lo, hi = RANGES[name]
    assert len(values) == n, (name, where)
    reasons = getattr(values, "reasons", [None] * n)
    for v, reason in zip(values, reasons):
        assert isinstance(v, float) and math.isfinite(v) and lo <= v <= hi, (name, v, where)
        if hasattr(values, "reasons"):  # a reason exactly where the value is below the best
            assert (v < hi) == (reason is not None), (name, v, reason, where)
            assert reason is None or isinstance(reason, str)


def check_completions(prop: str, drawn: tuple) -> None:
    case, pad = drawn
    completions = [c for c, _, _, _ in case]
    truths = [json.dumps(r["ground_truth"]) if as_text else r["ground_truth"] for _, r, as_text, _ in case]
    tools = [json.dumps(r["tools"]) if as_text else r["tools"] for _, r, _, as_text in case]
    big = [[{**c[-1], "content": blow_up(c[-1]["content"], pad)}] if isinstance(c, list) and c and isinstance(
        c[-1].get("content"), str) else blow_up(c, pad) if isinstance(c, str) else c for c in completions]
    stages = [("", completions, list(range(len(case))), BUDGET_S)]  # the batch as drawn, then one big text a call
    stages += [(" big", [b], [i], BIG_BUDGET_S) for i, b in enumerate(big)]
    for label, batch, rows, budget in stages:
        size = sum(map(nbytes, batch))
        for parser_name, parser in PARSERS.items():
            for lenient in (False, True) if takes_lenient(parser) else (None,):
                flags = {} if lenient is None else {"lenient": lenient}
                for c in batch:
                    status, parsed = timed(prop, f"parse {parser_name} lenient={lenient}{label}", parser, c,
                                           budget=budget, size=nbytes(c), **flags)
                    assert status == "ok", (parser_name, parsed)
                    check_parsed(parsed)
                for name, fn in REWARDS.items():
                    status, values = timed(prop, f"reward {name} {parser_name} lenient={lenient}{label}", fn, batch,
                                           ground_truth=[truths[i] for i in rows], tools=[tools[i] for i in rows],
                                           parser=parser_name, budget=budget, size=size, **flags)
                    assert status == "ok", (name, parser_name, lenient, repr(values))
                    check_scores(name, values, len(batch), (parser_name, lenient, label))


def test_every_reward_has_a_documented_range():
    assert set(REWARDS) <= set(RANGES)


@pytest.mark.parametrize("scale", VARIANTS)
def test_fuzz_completions(scale):
    run(f"completions[{variant(scale)}]", COMPLETION_CASES, 30 * scale, check_completions)


# --- 2. tool schemas and arguments through every validator ------------------------------------
PATTERNS = st.one_of(st.sampled_from([
    "^(a+)+$", "(x+x+)+y", "^(a|a)*$", "^([a-z]|[a-z])*$", "(.*a){12}", "^(\\w+\\s?)*$", "^[a-z]+$", "a", "^$",
    "(", "[", "\\", "(?P<n>a)(?P=n)", "\\p{L}+", "(?i)abc", "[[:alpha:]]", "a{1,99999}"]), st.text(max_size=6))
NAMES = st.sampled_from(["a", "b", "x", "aaaa", "a" * 30 + "!", "\ud800", ""]) | st.text(max_size=4)
REFS = st.sampled_from(["#/$defs/a", "#/$defs/b", "#/$defs/missing", "#", "#/properties/a", "http://example.com/s.json",
                        "other.json#/x", "#/$defs/a/properties/x", "urn:nothing", "#/$defs/%"])
TYPES = st.sampled_from(["string", "integer", "number", "boolean", "null", "array", "object", "dict", "float", 5,
                         ["string", "null"], []])
NUMBERS = st.one_of(st.integers(-10, 10), st.floats(), st.integers(), st.just(10**400))
LEAF_SCHEMA = st.one_of(
    st.just({}), st.booleans(), st.builds(lambda t: {"type": t}, TYPES),
    st.builds(lambda p: {"type": "string", "pattern": p}, PATTERNS),
    st.builds(lambda vs: {"enum": vs}, st.lists(JSON, max_size=4)),
    st.builds(lambda c: {"const": c}, JSON),
    st.builds(lambda lo, hi: {"type": "number", "minimum": lo, "maximum": hi}, NUMBERS, NUMBERS),
    st.builds(lambda n: {"type": "string", "minLength": n, "maxLength": n}, st.integers(-1, 10**6)),
    st.builds(lambda r: {"$ref": r}, REFS),
    st.just({"format": "email"}),
)


def object_schema(properties, required, additional, pattern_properties):
    schema = {"type": "object", "properties": properties, "required": required}
    if additional is not None:
        schema["additionalProperties"] = additional
    if pattern_properties:
        schema["patternProperties"] = pattern_properties
    return schema


def extend_schema(children):
    return st.one_of(
        st.builds(object_schema, st.dictionaries(NAMES, children, max_size=4), st.lists(NAMES, max_size=3),
                  st.none() | st.booleans() | children, st.dictionaries(PATTERNS, children, max_size=2)),
        st.builds(lambda items, unique: {"type": "array", "items": items, "uniqueItems": unique}, children, st.booleans()),
        st.builds(lambda xs: {"anyOf": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"oneOf": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"allOf": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda s: {"not": s}, children),
    )


SCHEMA = st.recursive(LEAF_SCHEMA, extend_schema, max_leaves=15)


def deep_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


TOP_SCHEMA = st.one_of(
    SCHEMA,
    st.builds(lambda s, defs: {"type": "object", **(s if isinstance(s, dict) else {}), "$defs": defs}, SCHEMA,
              st.dictionaries(st.sampled_from(["a", "b"]), SCHEMA, max_size=2)),
    st.builds(Deep, st.integers(20, 1500), st.just("schema")),
)
ARG_VALUES = st.one_of(JSON, st.sampled_from(["a" * 30 + "!", "x" * 40 + "y", "a" * 5000, "\ud800", [1, 1.0], [True, 1],
                                              [{"k": 1}] * 3, 10**400]),
                       st.builds(Deep, st.integers(1, 1500), st.sampled_from(["object", "array"])),
                       st.lists(st.integers(0, 3), max_size=2000))
SCHEMA_CASES = st.tuples(
    TOP_SCHEMA, st.dictionaries(NAMES, ARG_VALUES, max_size=4),
    st.lists(st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]),
                                    "arguments": st.dictionaries(NAMES, ARG_VALUES, max_size=2)}), max_size=2),
    st.one_of(JSON, st.sampled_from(["not json {", "42", "[1, 2]", '[{"name": 5}]', "null", '{"name": "f"}', "[" * 5000,
                                     7])),
)


def _noop(**kwargs):
    return None


def dumps_or_none(value) -> str | None:
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):  # an int over 4300 digits, a schema deeper than the stack
        return None


def check_schema_case(prop: str, case) -> None:
    schema, arguments, more_calls, garbage = expand(list(case))
    tool = {"name": "f", "description": "", "parameters": schema}
    size = len(dumps_or_none(tool) or "") + len(dumps_or_none(arguments) or "")
    calls_text = dumps_or_none([{"name": "f", "arguments": arguments}, *more_calls])
    completion = f"<think>t</think><tool_call>{calls_text}</tool_call>"
    shapes = {"list": [tool], "openai": [{"type": "function", "function": tool}], "json": dumps_or_none([tool]),
              "garbage": garbage}
    for shape, tools in shapes.items():
        if tools is None or calls_text is None:
            continue
        status, out = timed(prop, f"schema_validity_reward tools={shape}", schema_validity_reward, [completion], [tools],
                            size=size, show=(schema, arguments))
        assert status == "ok", (shape, repr(out))
        check_scores("schema_validity", out, 1, shape)
    sandboxed = Tool(fn=_noop, schema={"type": "function", "function": tool})
    status, message = timed(prop, "tools.sandbox.validate", validate, sandboxed, arguments, size=size, show=(schema, arguments))
    assert status == "ok", f"validate raised {message!r} on schema {brief(schema)} arguments {brief(arguments)}"
    assert message is None or isinstance(message, str)
    task = {"tools": [tool], "ground_truth": [{"name": "f", "arguments": arguments}]}
    status, error = timed(prop, "envs.datasets.tool_n1_filter", tool_n1_filter, task, size=size, show=(schema, arguments))
    assert status == "ok" or isinstance(error, Filtered), f"tool_n1_filter raised {error!r} on {brief(task)}"


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # re, compiling "[[:alpha:]]"
@pytest.mark.parametrize("scale", VARIANTS)
def test_fuzz_tool_schemas(scale):
    run(f"tool_schemas[{variant(scale)}]", SCHEMA_CASES, 150 * scale, check_schema_case)


# --- 3. dataset rows of every format through the real load ------------------------------------
VALID = {fmt: [json.loads(line) for line in (FIXTURES / f"{fmt}.jsonl").read_text().splitlines() if line.strip()]
         for fmt in FORMATS}
ANCHOR = {fmt: rows[0] for fmt, rows in VALID.items()}  # kept by every fixture test, filter or not
HUGE_INT, HUGE_FLOAT = "\x00huge-int\x00", "\x00huge-float\x00"  # written into the file as 9...9 and 1e999999
KEYS = st.sampled_from(["messages", "tools", "ground_truth", "conversations", "from", "value", "system", "query", "answers",
                        "id", "question", "function", "role", "content", "name", "arguments", "parameters", "type",
                        "properties", "required", "category", "pattern", "$ref", "enum", "uniqueItems", "possible_answer"])
DATA_PIECES = ["<tool_call>", "</tool_call>", "<tools>", "</tools>", "[", "]", "{", "}", "(", ")", "=", '"', "'", "\\",
               "[f(a=1)]", "f(", "JSON format that you can invoke:", '{"name": "f"}', "9" * 5000, "List[" * 50,
               "user", "assistant", "gpt", "human", "tool", *ODD_TEXT]
ROW_STRINGS = st.one_of(ODD_STRINGS, st.sampled_from(DATA_PIECES + [HUGE_INT, HUGE_FLOAT]))


def row_containers(children):
    return st.lists(children, max_size=4) | st.dictionaries(KEYS | ROW_STRINGS, children, max_size=5)


ROW_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ROW_STRINGS), row_containers,
                        max_leaves=15)


def mutate(draw, value, rate: int):
    """A random edit of a JSON value: each node, with probability rate %, is replaced, loses
    or gains a key or an item, is repeated, gets pieces spliced in (strings), or has the JSON
    inside it edited as JSON; rate 0 keeps the row valid."""
    if draw(st.integers(0, 99)) >= rate:  # this node is kept, its children may change
        if isinstance(value, dict):
            return {k: mutate(draw, v, rate) for k, v in value.items()}
        return [mutate(draw, v, rate) for v in value] if isinstance(value, list) else value
    op = draw(st.integers(0, 3))
    if op == 0:
        return draw(ROW_JSON)
    if isinstance(value, dict):
        out = {k: mutate(draw, v, rate) for k, v in value.items()}
        if op == 1 and out:
            del out[draw(st.sampled_from(list(out)))]
        else:
            out[draw(KEYS | ROW_STRINGS)] = draw(ROW_JSON)
        return out
    if isinstance(value, list):
        out = [mutate(draw, v, rate) for v in value]
        if op == 1 and out:
            del out[draw(st.integers(0, len(out) - 1))]
        elif op == 2 or not out:
            out.insert(draw(st.integers(0, len(out))), draw(ROW_JSON))
        else:
            out = out * draw(st.integers(2, 4))
        return out
    if isinstance(value, str):
        if op == 1 and value[:1] in "[{":
            try:
                return json.dumps(mutate(draw, json.loads(value), max(rate, 10)))
            except ValueError:
                pass
        return splice(value, draw(st.lists(st.tuples(st.integers(0, 10**6), ROW_STRINGS, st.integers(0, 6)), min_size=1,
                                           max_size=4)))
    return draw(ROW_JSON)


@st.composite
def file_lines(draw, fmt: str) -> list:
    """("json", row) and ("raw", text) lines for a file in `fmt`, the anchor row among them."""
    entries = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            source = draw(st.sampled_from(VALID[fmt] if kind < 5 else [r for rows in VALID.values() for r in rows]))
            entries.append(("json", mutate(draw, source, draw(st.sampled_from([0, 3, 10, 30])))))
        elif kind < 8:
            entries.append(("json", draw(ROW_JSON)))
        else:
            entries.append(("raw", draw(st.one_of(
                st.text(max_size=30).map(lambda t: t.replace("\n", " ")),
                st.sampled_from(["", "   ", "9" * 5000, "-" + "9" * 4301, "1e999999", '{"a": 1', "[" * 100_000 + "]" * 100_000,
                                 '{"a":' * 5000 + "1" + "}" * 5000, "\ufeff{}", "NaN", "[]", "{}", "null"])))))
    entries.insert(draw(st.integers(0, len(entries))), ("json", ANCHOR[fmt]))
    return entries


def render(entry, pad: str | None = None, big: bool = False) -> str:
    """The entry as a line of the file. big: its text blown up past BIG_BYTES, by repetition
    (pad None) or by BIG_BYTES of pad after each string; strings of up to SHORT characters are
    kept, as they are roles and names ("from": "gpt") that the row needs to reach the code
    that scans the long ones."""
    kind, value = entry
    if big and kind == "raw":
        value = blow_up(value, pad)
    elif big:
        reps = -(-BIG_BYTES // max(1, len(render(entry))))
        value = map_strings(value, lambda s: s if len(s) <= SHORT else s * reps if pad is None else blow_up(s, pad))
    if kind == "raw":
        return value
    try:
        line = json.dumps(value, ensure_ascii=False)
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: written escaped, as JSON can carry it
        line = json.dumps(value)
    return line.replace(json.dumps(HUGE_INT), "9" * 5000).replace(json.dumps(HUGE_FLOAT), "1e999999")


def map_strings(value, fn):
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    return value


SHORT = 16
DATA_PADS = st.sampled_from([None, "<tool_call>", "<tools>", "</tool_call>", "[", "{", "(", "List[", "\\", "\u2028"])
DATA_DIR = Path(tempfile.mkdtemp(prefix="toolcall-rl-fuzz-"))
DATA_CASES = st.sampled_from(sorted(FORMATS)).flatmap(
    lambda fmt: st.tuples(st.just(fmt), file_lines(fmt), st.booleans(), st.sampled_from(["\n", "\r\n", "\n\n"]), DATA_PADS))


def load(path: str, strict: bool, fmt: str, filter_: bool) -> list[dict]:
    return clean(read_jsonl(path), path, strict, fmt, filter_)


def check_task(task: dict) -> None:
    assert check_row(task)["ground_truth"] == task["ground_truth"]
    assert isinstance(task["id"], str) and isinstance(task["category"], str) and task["category"]
    json.dumps(task, ensure_ascii=False).encode("utf-8")  # no lone surrogates: tokenisation and logs take it


def check_data_case(prop: str, case) -> None:
    fmt, entries, filter_, newline, pad = case
    path = str(DATA_DIR / f"{fmt}.jsonl")
    text = newline.join(render(e) for e in entries) + "\n"
    Path(path).write_text(text, encoding="utf-8")
    size, what = len(text.encode()), f"{fmt} filter={filter_}"
    status, kept = timed(prop, f"load {what}", load, path, False, fmt, filter_, size=size, show=text[:2000])
    assert status == "ok", f"non-strict load raised {kept!r}"
    assert kept, "the anchor row was not kept"
    for task in kept:
        check_task(task)
    status, strict = timed(prop, f"load strict {what}", load, path, True, fmt, filter_, size=size, show=text[:2000])
    rows = read_jsonl(path)
    if status == "ok":
        assert json.dumps(strict) == json.dumps(kept)  # (NaN != NaN)
    else:
        message = str(strict)
        assert isinstance(strict, ValueError), repr(strict)
        message.encode("utf-8")
        found = re.match(rf"{re.escape(path)}:(\d+): ", message)
        assert found, message[:300]
        first_bad = rows.where.index(f"{path}:{found.group(1)}")  # the first bad row is the one named

        def alone(i: int):
            return clean(Lines([rows[i]], [rows.where[i]]), path, True, fmt, filter_)

        for i in range(first_bad):
            alone(i)
        with pytest.raises(ValueError):
            alone(first_bad)
    big = newline.join(render(e) if e[1] is ANCHOR[fmt] else render(e, pad, big=True) for e in entries) + "\n"
    Path(path).write_text(big, encoding="utf-8")
    status, kept = timed(prop, f"load big {what}", load, path, False, fmt, filter_, budget=BIG_BUDGET_S,
                         size=len(big.encode()), show=text[:2000])
    assert status == "ok", f"non-strict load of the blown-up file raised {kept!r}"
    for task in kept:
        check_task(task)


@pytest.mark.parametrize("scale", VARIANTS)
def test_fuzz_dataset_rows(scale):
    logging.getLogger("envs.datasets").setLevel(logging.ERROR)  # thousands of "skipped rows" warnings
    try:
        run(f"dataset_rows[{variant(scale)}]", DATA_CASES, 60 * scale, check_data_case)
    finally:
        logging.getLogger("envs.datasets").setLevel(logging.NOTSET)


# --- 4. what a reward plugin returns, through the weighted sum ---------------------------------
PLUGIN_RETURNS: list = [None]  # what plugin_reward returns (or raises) in the current example


def plugin_reward(completions, **kwargs):
    value = PLUGIN_RETURNS[0]
    if isinstance(value, BaseException):
        raise value
    return value


class WithReasons(list):
    """A list whose .reasons (what Scores carries) may be anything."""

    def __init__(self, values, reasons):
        super().__init__(values)
        self.reasons = reasons


NASTY_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 2**1024, -(2**1100), Fraction(10**400, 3),
                 Decimal("sNaN"), Decimal("Infinity"), Decimal("1e400"), np.float64("nan"), np.float32("inf"),
                 np.int64(2**62), np.array(0.5), np.array([0.5]), torch.tensor(math.nan), torch.tensor(0.5),
                 torch.tensor([1.0, 2.0]), None, "1.0", b"1", True, [1.0], 1 + 0j, object()]
RETURN_SCALARS = st.one_of(
    st.sampled_from(NASTY_NUMBERS), st.floats(), st.integers(), st.booleans(), st.text(max_size=4),
    st.floats().map(np.float64), st.floats(width=32).map(np.float32), st.integers(-2**63, 2**63 - 1).map(np.int64),
    st.floats().map(torch.tensor), st.integers(-2**63, 2**63 - 1).map(torch.tensor), st.decimals(), st.fractions(),
    st.complex_numbers(max_magnitude=10), st.lists(st.floats(), max_size=2),
)


def returns(n: int):
    floats = st.lists(st.floats(), min_size=n, max_size=n)
    return st.one_of(
        st.lists(RETURN_SCALARS, min_size=n, max_size=n), st.lists(RETURN_SCALARS, min_size=n, max_size=n),
        st.lists(RETURN_SCALARS, max_size=5), st.lists(st.lists(RETURN_SCALARS, max_size=2), min_size=n, max_size=n),
        floats.map(tuple), floats.map(np.array), floats.map(lambda xs: np.array(xs).reshape(-1, 1)),
        floats.map(lambda xs: torch.tensor(xs, dtype=torch.float64)), floats.map(lambda xs: torch.tensor(xs).reshape(-1, 1)),
        st.floats().map(np.array), st.floats().map(torch.tensor), st.floats(), st.none(), st.text(max_size=3),
        st.builds(lambda xs, rs: Scores(xs, rs), floats, st.lists(st.none() | st.text(max_size=3), min_size=n, max_size=n)),
        st.builds(WithReasons, floats, JSON), floats.map(lambda xs: {i: x for i, x in enumerate(xs)}), floats.map(set),
        floats.map(iter), st.sampled_from([KeyError("ground_truth"), ZeroDivisionError("x"), RecursionError(), TypeError("t")]),
    )


WEIGHTS = st.one_of(st.floats(), st.integers(), st.sampled_from([1.0, 0.5, 2.0, 1e308, "0.5", "abc", None, True]))
COMBINE_CASES = st.integers(0, 4).flatmap(lambda n: st.tuples(st.just(n), returns(n), WEIGHTS, st.booleans(), WEIGHTS))
PLUGIN = "tests.test_fuzz.plugin_reward"


def check_combine_case(prop: str, case) -> None:
    n, value, weight, with_builtin, builtin_weight = case
    PLUGIN_RETURNS[0] = value
    specs = [{"_target_": PLUGIN, "weight": weight}]
    specs += [{"name": "format", "weight": builtin_weight}] if with_builtin else []
    try:
        reward = WeightedReward(specs)
    except ValueError as e:  # only a weight that is not a finite number is refused at start-up
        assert re.search(r"reward (plugin_reward|format): weight .* is not a finite number", str(e)), str(e)
        return
    completions = [gold_answer(ROWS[i]) for i in range(n)]
    status, result = timed(prop, "WeightedReward", reward, completions, size=sum(map(len, completions)), show=value)
    if status == "raised":
        assert isinstance(result, RewardError), f"{type(result).__name__}: {result}"
        assert re.match(r"reward (plugin_reward|format) ", str(result)), str(result)
    else:
        assert len(result.total) == n and all(isinstance(v, float) and math.isfinite(v) for v in result.total), result
        for name, values in result.per_function.items():  # NaN only where the function returned None (skipped)
            assert len(values) == n and all(isinstance(v, float) and not math.isinf(v) for v in values)
            assert len(result.reasons[name]) == n
    status, checked = timed(prop, "checked_values", checked_values, "plugin", value, n, show=value)
    assert status == "ok" or isinstance(checked, RewardError), f"{type(checked).__name__}: {checked}"
    if status == "ok":  # finite, or NaN where the function returned None (it does not apply)
        raws = list(value) if isinstance(value, (list, tuple)) and len(value) == n else [0.0] * n
        assert all(isinstance(v, float) and (math.isfinite(v) or (math.isnan(v) and raw is None))
                   for v, raw in zip(checked, raws)), (checked, value)


@pytest.mark.parametrize("scale", VARIANTS)
def test_fuzz_reward_return_values(scale):
    run(f"reward_returns[{variant(scale)}]", COMBINE_CASES, 300 * scale, check_combine_case)


# --- regressions: the bugs this fuzzing found ---------------------------------------------------
def test_arguments_nested_near_the_stack_limit_are_a_reason_not_a_crash():
    # json.loads took them, then tool_n1's canonical json.dumps, a few frames deeper, raised
    # RecursionError. Where exactly depends on the caller's stack, hence the scan over depths.
    row = ROWS[0]
    for depth in range(850, 1001):
        args = '{"x": ' + '{"a":' * depth + "1" + "}" * depth + "}"
        texts = {"tool_n1": f'<think>t</think><tool_call>[{{"name": "f", "arguments": {args}}}]</tool_call>',
                 "hermes": f'<tool_call>{{"name": "f", "arguments": {args}}}</tool_call>'}
        for parser, text in texts.items():
            for fn in REWARDS.values():
                out = fn([text], ground_truth=[row["ground_truth"]], tools=[row["tools"]], parser=parser)
                assert all(map(math.isfinite, out))
    args = '{"a":' * 100 + "1" + "}" * 100
    assert PARSERS["hermes"](f'<tool_call>{{"name": "f", "arguments": {args}}}</tool_call>').reason == "arguments_too_deep"
    assert PARSERS["tool_n1"](f'<think></think><tool_call>[{{"name": "f", "arguments": {args}}}]</tool_call>').reason \
        == "arguments_too_deep"


@pytest.mark.parametrize("row", [
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<tool_call>" * 20_000}], "tools": "[]"},
    {"conversations": [{"from": "system", "value": "<tools>" * 30_000}, {"from": "human", "value": "hi"}]},
])
def test_hermes_rows_with_many_unclosed_tags_load_in_linear_time(row):
    start = time.perf_counter()  # the lazy regexes <tool_call>(.*?)</tool_call> and <tools>(.*?)</tools> took ~30 s
    with pytest.raises(ValueError, match="hermes.jsonl"):
        clean(Lines([row], ["hermes.jsonl:1"]), "hermes.jsonl", True, "hermes")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("line,reason", [("9" * 5000, "ValueError"), ("[" * 100_000 + "]" * 100_000, "RecursionError"),
                                         ('{"a": ' + "-" + "9" * 4400 + "}", "ValueError")])
def test_unreadable_json_lines_are_bad_rows_not_a_crash(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ANCHOR["ours"]) + "\n" + line + "\n")
    assert len(load(str(path), False, "ours", False)) == 1  # read_jsonl raised past clean before
    with pytest.raises(ValueError, match=rf"rows.jsonl:2: not readable JSON \({reason}"):
        load(str(path), True, "ours", False)


@pytest.mark.parametrize("extra,match", [({"category": "\ud800"}, "'category' holds a lone surrogate"),
                                         ({"note": ["\udfff"]}, "'note' holds a lone surrogate"),
                                         ({"\ud800": 1}, "holds a lone surrogate"),
                                         ({"category": ["a"]}, "'category' must be a non-empty string"),
                                         ({"category": ""}, "'category' must be a non-empty string")])
def test_every_key_of_a_row_is_checked(extra, match):
    # only messages/tools/ground_truth were: a surrogate in another key, or a list as the
    # category (eval groups and sorts by it), reached the trainer
    with pytest.raises(ValueError, match=match):
        check_row({**ANCHOR["ours"], **extra})


@pytest.mark.parametrize("value", [np.array(0.5), torch.tensor(0.5), [10**400], [Fraction(10**400, 3)], {0.5},
                                   WithReasons([0.5], ["a", "b"])])
def test_odd_plugin_returns_are_a_reward_error(value):
    # a 0-d array or tensor raised TypeError from len(), a huge int OverflowError from float(),
    # a set was taken in arbitrary order, and reasons of the wrong length were passed on
    PLUGIN_RETURNS[0] = value
    with pytest.raises(RewardError, match="reward plugin_reward "):
        WeightedReward([{"_target_": PLUGIN}])(["a"])


def test_a_total_that_overflows_is_a_reward_error():
    PLUGIN_RETURNS[0] = [1e308]
    with pytest.raises(RewardError, match="reward plugin_reward .*overflow"):
        WeightedReward([{"_target_": PLUGIN, "weight": 10}])(["a"])


@pytest.mark.parametrize("weight", [math.inf, math.nan, "abc", None])
def test_a_weight_that_is_not_a_finite_number_is_refused_at_start_up(weight):
    with pytest.raises(ValueError, match="reward format: weight .* is not a finite number"):
        WeightedReward([{"name": "format", "weight": weight}])
