"""Tool-N1 reward cases. Each case: completion, ground truth, expected (value, reason)."""

import json

import pytest

from rewards import REWARDS, WeightedReward, format_reward, tool_n1_reward
from rewards.parsing import parse_ground_truth, parse_tool_n1

W = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
W2 = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}
T = {"name": "set_timer", "arguments": {"minutes": 5}}


def answer(calls, think="ok"):
    return f"<think>{think}</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


CASES = [
    # exact single call
    (answer([W]), [W], 1.0, None),
    # parallel calls in another order: order-free
    (answer([W2, W]), [W, W2], 1.0, None),
    # the multiset matters: one call twice is not two different calls
    (answer([W, W]), [W, W2], 0.0, "wrong_args"),
    # argument order inside the object does not matter
    ('<think>x</think><tool_call>[{"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}}]</tool_call>', [W], 1.0, None),
    # exact types: 5.0 is not 5, "5" is not 5
    (answer([{"name": "set_timer", "arguments": {"minutes": 5.0}}]), [T], 0.0, "wrong_args"),
    (answer([{"name": "set_timer", "arguments": {"minutes": "5"}}]), [T], 0.0, "wrong_args"),
    # true is not 1
    (answer([{"name": "f", "arguments": {"x": True}}]), [{"name": "f", "arguments": {"x": 1}}], 0.0, "wrong_args"),
    # irrelevance: [] is right when no tool applies, and wrong when one does
    (answer([]), [], 1.0, None),
    (answer([W]), [], 0.0, "wrong_count"),
    (answer([]), [W], 0.0, "wrong_count"),
    # wrong function name
    (answer([{"name": "get_forecast", "arguments": W["arguments"]}]), [W], 0.0, "wrong_name"),
    # missing or extra argument
    (answer([{"name": "get_weather", "arguments": {"city": "Paris"}}]), [W], 0.0, "wrong_args"),
    # missing tags
    (json.dumps([W]), [W], 0.0, "no_think"),
    ("<think>ok</think> I would call get_weather.", [W], 0.0, "no_tool_call"),
    ("<tool_call>" + json.dumps([W]) + "</tool_call><think>late</think>", [W], 0.0, "no_think"),
    # unclosed think
    ("<think>ok <tool_call>" + json.dumps([W]) + "</tool_call>", [W], 0.0, "no_think"),
    # broken JSON, not a list, a call without a name
    ('<think>ok</think><tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"</tool_call>', [W], 0.0, "bad_json"),
    (answer(W), [W], 0.0, "not_a_list"),
    (answer([{"arguments": {}}]), [W], 0.0, "bad_call"),
    # text after the tool call, two tool_call blocks
    (answer([W]) + " Done!", [W], 0.0, "text_outside_tags"),
    (answer([W]) + answer([W])[len("<think>ok</think>\n"):], [W], 0.0, "many_tool_call_tags"),
    # arguments given as a JSON string are decoded (xLAM style)
    ('<think>a</think><tool_call>[{"name": "set_timer", "arguments": "{\\"minutes\\": 5}"}]</tool_call>', [T], 1.0, None),
    # surrounding whitespace is fine
    ("\n " + answer([T]) + "\n", [T], 1.0, None),
]


@pytest.mark.parametrize("completion,truth,value,reason", CASES)
def test_tool_n1_cases(completion, truth, value, reason):
    scores = tool_n1_reward([completion], [truth])
    assert scores == [value]
    assert scores.reasons == [reason]


def test_ground_truth_as_json_string_and_conversational_completion():
    truth = json.dumps([W])
    assert tool_n1_reward([answer([W])], [truth]) == [1.0]
    assert tool_n1_reward([[{"role": "assistant", "content": answer([W])}]], [truth]) == [1.0]


def test_malformed_completions_never_raise():
    weird = [None, 3, "", "<think>", "<think></think><tool_call></tool_call>", "<think></think><tool_call>" + "[" * 5000 + "</tool_call>",
             "<think>é</think><tool_call>[1e999999]</tool_call>", "<think></think><tool_call>[{\"name\": 1}]</tool_call>"]
    scores = tool_n1_reward(weird, [[W]] * len(weird))
    assert scores == [0.0] * len(weird)
    assert all(r for r in scores.reasons)


def test_bad_ground_truth_is_a_data_error():
    with pytest.raises(ValueError, match="fix the dataset row"):
        parse_ground_truth("not json")


def test_format_reward():
    assert format_reward([answer([W]), "prose"]) == [1.0, 0.0]


def test_parse_returns_think_and_calls():
    p = parse_tool_n1(answer([W], think="weather"))
    assert p.think == "weather" and p.calls == [W] and p.reason is None


def test_weighted_sum_and_reasons():
    fn = WeightedReward([{"name": "tool_n1", "weight": 1.0}, {"name": "format", "weight": 0.2}])
    out = fn([answer([W]), answer([W2]), "prose"], ground_truth=[[W], [W], [W]])
    assert out.total == pytest.approx([1.2, 0.2, 0.0])
    assert out.reasons["tool_n1"] == [None, "wrong_args", "no_think"]


def plain_trl_reward(completions, **kwargs):
    """A reward written for TRL: no reasons."""
    return [float(len(c) > 10) for c in completions]


def test_target_reward_without_reasons_gets_zero_reason():
    fn = WeightedReward([{"_target_": "tests.test_rewards.plain_trl_reward", "weight": 2.0}])
    out = fn(["short", "a long completion"])
    assert out.total == [0.0, 2.0]
    assert out.reasons["plain_trl_reward"] == ["zero", None]


def test_unknown_reward_names_the_options():
    with pytest.raises(ValueError, match="built-in rewards are .*tool_n1"):
        WeightedReward([{"name": "nope"}])


def test_registry_holds_the_builtins():
    assert {"tool_n1", "format"} <= set(REWARDS)
