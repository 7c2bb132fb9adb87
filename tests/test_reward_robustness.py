"""Rewards against hostile input: adversarial completions run in linear time, evil regex
patterns in tool schemas are time-bounded, broken tool schemas are a reason and not a crash,
WeightedReward names the reward that misbehaves, and config kwargs are checked at start-up."""

import gc
import json
import math
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rewards import REWARDS, WeightedReward
from rewards.schema import schema_validity_reward

ROOT = Path(__file__).parent.parent
TRUTH = [{"name": "f", "arguments": {"s": "abc", "n": 1}}]
TOOLS = [{"name": "f", "parameters": {"type": "object", "required": ["s"], "properties": {
    "s": {"type": "string", "pattern": "^([a-z]|[a-z])*$"}, "n": {"type": "integer"}, "xs": {"type": "array", "uniqueItems": True}}}}]
CALL = json.dumps(TRUTH[0])


def answer(calls) -> str:
    return f"<think>t</think><tool_call>{json.dumps(calls)}</tool_call>"


# --- 1. linear time ------------------------------------------------------------------------
def _repeat(unit: str, size: int) -> str:
    return unit * (size // len(unit))


SHAPES = {  # name -> completion of about `size` characters
    "many_openers": lambda n: "<think>a</think>" + _repeat("<tool_call>", n),
    "closers_then_openers": lambda n: "<think>a</think>" + _repeat("</tool_call>", n // 2) + _repeat("<tool_call>", n // 2),
    "many_closers": lambda n: "<think>a</think><tool_call>[]" + _repeat("</tool_call>", n),
    "unclosed_think": lambda n: "<think>" + _repeat("<tool_call>[] ", n),
    "many_thinks": lambda n: _repeat("<think>", n // 2) + _repeat("</think>", n // 2),
    "nested_brackets": lambda n: "<think>a</think><tool_call>" + "[" * (n // 2) + "]" * (n // 2) + "</tool_call>",
    "nested_objects": lambda n: "<think>a</think><tool_call>" + _repeat('{"a":', n // 2) + "}" * (n // 10) + "</tool_call>",
    "fence_whitespace": lambda n: "<think>a</think><tool_call>```json" + " " * n + "x</tool_call>",
    "fence_backticks": lambda n: "<think>a</think><tool_call>" + _repeat("```", n) + "x</tool_call>",
    "whitespace": lambda n: " " * n + "x",
    "huge_number": lambda n: "<think>a</think><tool_call>[1." + "1" * n + "]</tool_call>",
    "many_calls": lambda n: "<think>a</think><tool_call>[" + ",".join([CALL] * (n // len(CALL))) + "]</tool_call>",
    "many_hermes_calls": lambda n: _repeat(f"<tool_call>{CALL}</tool_call>\n", n),
    "many_bad_hermes_calls": lambda n: _repeat("<tool_call>{</tool_call>", n),
    "many_evil_pattern_calls": lambda n: "<think>a</think><tool_call>[" + ",".join(
        [json.dumps({"name": "f", "arguments": {"s": "a" * 27 + "!"}})] * (n // 60)) + "]</tool_call>",
    "big_unique_array": lambda n: "<think>a</think><tool_call>" + json.dumps(
        [{"name": "f", "arguments": {"s": "a", "xs": [{"k": i} for i in range(n // 10)]}}]) + "</tool_call>",
}
BUDGET_S = 1.0


def _best_time(fn, text, parser, lenient) -> float:
    """Best of three, without the garbage collector: the machine may be busy, and a full
    collection of everything the test allocated is not the reward's cost."""
    best = math.inf
    gc.disable()
    try:
        for _ in range(3):
            start = time.perf_counter()
            out = fn([text], ground_truth=[TRUTH], tools=[TOOLS], parser=parser, lenient=lenient)
            best = min(best, time.perf_counter() - start)
            assert len(out) == 1 and math.isfinite(out[0])
    finally:
        gc.enable()
    return best


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_adversarial_completions_take_linear_time(shape):
    small_text, big_text = SHAPES[shape](200_000), SHAPES[shape](400_000)
    for name, fn in REWARDS.items():
        for parser in ("tool_n1", "hermes"):
            for lenient in (False, True):
                where = (shape, name, parser, lenient)
                small = _best_time(fn, small_text, parser, lenient)
                assert small < BUDGET_S, (where, small)
                big = _best_time(fn, big_text, parser, lenient)
                assert big < BUDGET_S, (where, big)
                assert big < 3 * small + 0.1, (where, small, big)  # twice the text, not four times the time


def test_text_then_a_stray_closer_after_the_call_is_text_outside_tags():
    # the old regex let `</tool_call>` at the very end excuse any text between it and the call
    text = answer(TRUTH) + " and some prose </tool_call>"
    out = REWARDS["tool_n1"]([text], ground_truth=[TRUTH])
    assert out == [0.0] and out.reasons == ["text_outside_tags"]
    assert REWARDS["tool_n1"]([text], ground_truth=[TRUTH], lenient=True) == [1.0]


# --- 2. evil patterns in tool schemas -----------------------------------------------------
def _tools_with_pattern(pattern):
    return [{"name": "f", "parameters": {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}}]


EVIL = _tools_with_pattern("^(a|a)*$")  # exponential backtracking in `re` and in `regex`


def test_classic_evil_pattern_is_invalid_within_budget():
    start = time.perf_counter()  # `re` backtracks for seconds here; `regex` sees through it
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"s": "a" * 27 + "!"}}])], [_tools_with_pattern("^(a+)+$")])
    assert time.perf_counter() - start < 0.5
    assert out == [0.0] and out.reasons[0] in ("schema_pattern", "pattern_timeout")


def test_evil_pattern_is_a_timeout_reason_within_budget():
    start = time.perf_counter()
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"s": "a" * 27 + "!"}}])], [EVIL])
    assert time.perf_counter() - start < 0.5
    assert out == [0.0] and out.reasons == ["pattern_timeout"]


def test_many_evil_calls_share_one_budget():
    calls = [{"name": "f", "arguments": {"s": "a" * 27 + "!"}}] * 50
    start = time.perf_counter()
    out = schema_validity_reward([answer(calls)] * 3, [EVIL] * 3)
    assert time.perf_counter() - start < 1.0
    assert out == [0.0] * 3 and out.reasons == ["pattern_timeout"] * 3


def test_evil_pattern_properties_and_additional_properties_are_bounded():
    schema = {"type": "object", "patternProperties": {"^(a|a)*$": {"type": "integer"}}, "additionalProperties": False}
    start = time.perf_counter()
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"a" * 27 + "!": 1}}])], [[{"name": "f", "parameters": schema}]])
    assert time.perf_counter() - start < 0.5
    assert out == [0.0] and out.reasons == ["pattern_timeout"]


@pytest.mark.parametrize("args,value,reason", [
    ({"s": "abc"}, 1.0, None),
    ({"s": "ab1"}, 0.0, "schema_pattern"),
    ({"s": "aaaa"}, 1.0, None),  # the evil pattern on a short string still matches normally
])
def test_patterns_still_validate(args, value, reason):
    tools = EVIL if args == {"s": "aaaa"} else TOOLS
    out = schema_validity_reward([answer([{"name": "f", "arguments": args}])], [tools])
    assert out == [value] and out.reasons == [reason]


@pytest.mark.parametrize("items,value,reason", [
    ([{"k": 1}, {"k": 2}], 1.0, None),
    ([{"k": 1}, {"k": 1}], 0.0, "schema_uniqueItems"),
    ([1, 1.0], 0.0, "schema_uniqueItems"),  # JSON Schema equality: 1 == 1.0
    ([1, True], 1.0, None),  # but true is not 1
    ([[1, {"a": 2}], [1, {"a": 2.0}]], 0.0, "schema_uniqueItems"),
])
def test_unique_items_keeps_json_schema_equality(items, value, reason):
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"s": "a", "xs": items}}])], [TOOLS])
    assert out == [value] and out.reasons == [reason]


# --- 3. broken tools are a reason -----------------------------------------------------------
def test_unresolvable_ref_is_a_reason():
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}]
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"a": 1}}])], [tools])
    assert out == [0.0] and out.reasons == ["tool_schema_bad_ref"]


def test_remote_ref_is_a_reason_and_not_a_download():
    tools = [{"name": "f", "parameters": {"$ref": "https://example.invalid/schema.json"}}]
    out = schema_validity_reward([answer([{"name": "f", "arguments": {"a": 1}}])], [tools])
    assert out == [0.0] and out.reasons == ["tool_schema_bad_ref"]


@pytest.mark.parametrize("tools", ["not json {", "42", json.dumps({"name": "f"}), 7])
def test_unreadable_tools_are_a_reason(tools):
    out = schema_validity_reward([answer([{"name": "f", "arguments": {}}])], [tools])
    assert out == [0.0] and out.reasons == ["bad_tools"]


def test_deep_arguments_against_a_recursive_schema_are_a_reason():
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#"}}}}]
    deep = '{"a":' * 600 + "{}" + "}" * 600
    text = '<think>t</think><tool_call>[{"name": "f", "arguments": ' + deep + "}]</tool_call>"
    out = schema_validity_reward([text], [tools])
    assert out == [0.0] and out.reasons == ["arguments_too_deep"]


def test_a_self_negating_schema_is_a_reason_at_every_stack_depth():
    """{"not": {"$ref": "#"}} recurses without end; where the recursion limit lands inside
    referencing's Rust maps it surfaced as pyo3's PanicException (a BaseException), found by the fuzz suite."""
    tools = [{"name": "f", "parameters": {"type": "object", "not": {"$ref": "#"}}}]
    text = '<think>t</think><tool_call>[{"name": "f", "arguments": {"a": 1}}]</tool_call>'

    def at_depth(n):
        return at_depth(n - 1) if n else schema_validity_reward([text], [tools])

    for depth in range(12):  # the panic showed at every 5th depth
        out = at_depth(depth)
        assert out == [0.0] and out.reasons[0] is not None, depth


# --- 4. WeightedReward names the culprit ----------------------------------------------------
def returns_inf(completions, **kwargs):
    return [1.0, math.inf, -math.inf][: len(completions)]


def returns_strings(completions, **kwargs):
    return ["1.0"] * len(completions)


def returns_lists(completions, **kwargs):
    return [[1.0]] * len(completions)


def returns_a_number(completions, **kwargs):
    return 1.0


def raises(completions, **kwargs):
    raise KeyError("ground_truth")


def returns_numpy_like(completions, **kwargs):
    class Num:  # anything float() takes, except text, is a number
        def __float__(self):
            return 0.5
    return [Num() for _ in completions]


def _target(fn):
    return WeightedReward([{"_target_": f"tests.test_reward_robustness.{fn.__name__}"}])


@pytest.mark.parametrize("fn,match", [
    (returns_inf, r"reward returns_inf .*completions \[1, 2\].*\[inf, -inf\]"),
    (returns_strings, r"reward returns_strings .*completions \[0, 1, 2\].*'1.0'"),
    (returns_lists, r"reward returns_lists .*completions \[0, 1, 2\].*\[1.0\]"),
    (returns_a_number, r"reward returns_a_number returned float"),
])
def test_bad_values_name_the_reward(fn, match):
    with pytest.raises(ValueError, match=match):
        _target(fn)(["a", "b", "c"])


def test_a_raising_reward_is_named_and_chained():
    with pytest.raises(RuntimeError, match=r"reward raises raised KeyError") as info:
        _target(raises)(["a"])
    assert isinstance(info.value.__cause__, KeyError)


def test_number_like_values_are_accepted():
    assert _target(returns_numpy_like)(["a", "b"]).total == [0.5, 0.5]


# --- 5. config kwargs are checked at start-up -----------------------------------------------
def test_a_kwarg_typo_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match=r"tool_n1_partial.*'name_credt'.*name_credit.*did you mean 'name_credit'"):
        WeightedReward([{"name": "tool_n1_partial", "kwargs": {"name_credt": 0.9}}])


def test_a_kwarg_the_function_only_takes_as_kwargs_is_an_error():
    with pytest.raises(ValueError, match=r"plain_trl_reward.*'scale'"):
        WeightedReward([{"_target_": "tests.test_rewards.plain_trl_reward", "kwargs": {"scale": 2}}])


def test_named_kwargs_still_bind():
    fn = WeightedReward([{"name": "length_penalty", "kwargs": {"soft_chars": 1, "hard_chars": 3}}])
    assert fn(["abc"]).total == [-1.0]


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "reward").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_reward_config_loads(path):
    functions = OmegaConf.load(path).functions
    reward = WeightedReward(list(functions))
    assert len(reward.functions) == len(functions)
