"""The reward library beyond Tool-N1: ToolRL, schema validity, partial credit, length
penalty, the Hermes and lenient parsers, the chat-template parser. Each case is worked out
by hand in its comment."""

import json

import pytest

from rewards import REWARDS, WeightedReward
from rewards.parsing import parse, template_parser
from rewards.schema import schema_validity_reward
from rewards.tool_n1 import length_penalty, tool_n1_partial_reward, tool_n1_reward
from rewards.consistency import named_functions, think_call_agreement
from rewards.toolrl import correctness_score, jaccard, toolrl_reward


def answer(calls):
    return f"<think>t</think><tool_call>{json.dumps(calls)}</tool_call>"


def f(**args):
    return {"name": "f", "arguments": args}


# --- ToolRL (Qian et al. 2025, sec. 3.3): R = format {0,1} + correct [-3,3] ----------------
TOOLRL_CASES = [
    # exact: format 1 + correct 3
    (answer([f(a=1, b=2)]), [f(a=1, b=2)], 4.0),
    # right name, keys right, one of two values: S = 1 + (1 + 1) = 3, S_max = 1 + (1 + 2) = 4
    # correct = 6 * 3/4 - 3 = 1.5 ; total 2.5
    (answer([f(a=1, b=3)]), [f(a=1, b=2)], 2.5),
    # wrong name: S = 0 -> correct -3 ; total -2
    (answer([{"name": "g", "arguments": {"a": 1, "b": 2}}]), [f(a=1, b=2)], -2.0),
    # one key missing: key Jaccard 1/2, one value: S = 1 + 0.5 + 1 = 2.5, S_max 4 -> 0.75 ; total 1.75
    (answer([f(a=1)]), [f(a=1, b=2)], 1.75),
    # parallel, one of two calls: name Jaccard [f] vs [f,f] = 1/2; the first true call takes the
    # only prediction (keys 1 + values 0 = 1), the second finds none: S = 1.5, S_max = 1 + 2 + 2 = 5
    # correct = 6 * 1.5/5 - 3 = -1.2 ; total -0.2
    (answer([f(a=2)]), [f(a=1), f(a=2)], -0.2),
    # irrelevance answered with []: exact -> 4 ; answered with a call: S = 0, S_max = 1 -> -3, total -2
    (answer([]), [], 4.0),
    (answer([f(a=1)]), [], -2.0),
    # unreadable: format 0, correct -3
    ("I would call f", [f(a=1)], -3.0),
    # types are exact: 1.0 is not 1 -> like a wrong value: S = 1 + 1 + 0 = 2, S_max 3 -> 1 ; total 2
    (answer([f(a=1.0)]), [f(a=1)], 2.0),
]


@pytest.mark.parametrize("completion,truth,expected", TOOLRL_CASES)
def test_toolrl_cases(completion, truth, expected):
    assert toolrl_reward([completion], [truth])[0] == pytest.approx(expected)


def test_jaccard_by_hand():
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard(["a", "a"], ["a"]) == pytest.approx(1 / 2)
    assert jaccard([], []) == 1.0 and jaccard(["a"], []) == 0.0


def test_correctness_is_three_only_for_exact_and_in_range():
    assert correctness_score([f(a=1)], [f(a=1)]) == 3.0
    assert -3.0 <= correctness_score([f(a=1), f(a=1), f(a=1)], [f(a=2)]) < 3.0


# --- schema validity ---------------------------------------------------------------------
TOOLS = [{"name": "f", "parameters": {"type": "object", "required": ["a"], "properties": {
    "a": {"type": "integer", "minimum": 0, "maximum": 10}, "u": {"type": "string", "enum": ["c", "f"]}}}}]


@pytest.mark.parametrize("calls,value,reason", [
    ([f(a=3)], 1.0, None),
    ([f(a=3, u="c")], 1.0, None),
    ([f(u="c")], 0.0, "schema_required"),
    ([f(a="3")], 0.0, "schema_type"),
    ([f(a=11)], 0.0, "schema_maximum"),
    ([f(a=1, u="k")], 0.0, "schema_enum"),
    ([{"name": "nope", "arguments": {}}], 0.0, "unknown_tool"),
    ([f(a=1), f(a=-1)], 0.5, "schema_minimum"),  # one of two calls valid
    ([], 1.0, None),
])
def test_schema_validity(calls, value, reason):
    out = schema_validity_reward([answer(calls)], [TOOLS])
    assert out == [value] and out.reasons == [reason]


def test_schema_validity_takes_openai_tool_shape_and_json_strings():
    openai = json.dumps([{"type": "function", "function": TOOLS[0]}])
    assert schema_validity_reward([answer([f(a=1)])], [openai]) == [1.0]


# --- partial credit and length -------------------------------------------------------------
def test_partial_credit_for_right_names_only():
    truth = [[f(a=1)]] * 3
    out = tool_n1_partial_reward([answer([f(a=1)]), answer([f(a=2)]), answer([{"name": "g", "arguments": {"a": 1}}])], truth,
                                 name_credit=0.3)
    assert out == [1.0, 0.3, 0.0]


def test_length_penalty_by_hand():
    # soft 10, hard 20: 15 chars is halfway -> -0.5 ; 30 chars -> -1 ; 5 chars -> 0
    assert length_penalty(["x" * 5, "x" * 15, "x" * 30], soft_chars=10, hard_chars=20) == [0.0, -0.5, -1.0]


# --- parsers ---------------------------------------------------------------------------------
def test_hermes_format():
    text = 'Sure. <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name": "f", "arguments": {"a": 2}}</tool_call>'
    assert tool_n1_reward([text], [[f(a=2), f(a=1)]], parser="hermes") == [1.0]
    assert tool_n1_reward(["No tool fits."], [[]], parser="hermes") == [1.0]  # no tag: called nothing
    bad = tool_n1_reward(['<tool_call>{"name": "f"'], [[f(a=1)]], parser="hermes")
    assert bad == [0.0] and bad.reasons == ["unclosed_tool_call"]


def test_lenient_takes_code_fences_and_trailing_text():
    text = '<think>t</think><tool_call>```json\n[{"name": "f", "arguments": {"a": 1}}]\n```</tool_call> Done.'
    assert tool_n1_reward([text], [[f(a=1)]]) == [0.0]
    assert tool_n1_reward([text], [[f(a=1)]], lenient=True) == [1.0]


def test_template_parser_maps_tool_calls():
    class Tok:
        def parse_response(self, text, prefix=None):
            assert prefix == ""
            if text == "boom":
                raise ValueError("unparseable")
            return {"role": "assistant", "thinking": "t",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}

    parse_ = template_parser(Tok())
    assert parse_("anything").calls == [f(a=1)]
    assert parse_("boom").reason == "template_parse_error"


def test_unknown_parser_is_named():
    with pytest.raises(ValueError, match="parser 'xml' is unknown"):
        parse("x", parser="xml")


def test_config_kwargs_are_bound():
    fn = WeightedReward([{"name": "tool_n1_partial", "kwargs": {"name_credit": 0.5}}])
    assert fn([answer([f(a=2)])], ground_truth=[[f(a=1)]]).total == [0.5]


def test_every_builtin_is_registered():
    assert {"tool_n1", "tool_n1_partial", "format", "toolrl", "toolrl_format", "toolrl_correctness",
            "schema_validity", "length_penalty", "think_call_agreement"} <= set(REWARDS)


def test_schema_validity_with_an_invalid_tool_schema_is_a_reason_not_a_crash():
    broken = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}]
    out = schema_validity_reward([answer([f(a=1)])], [broken])
    assert out == [0.0] and out.reasons == ["tool_schema_invalid"]


# --- think-call agreement: the think names exactly the called functions -------------------------
GET_WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
GET_WEATHER_FORECAST = {"name": "get_weather_forecast", "parameters": {"type": "object", "properties": {}}}
OFFERED = [GET_WEATHER, {"type": "function", "function": GET_WEATHER_FORECAST}]  # both tool shapes


def said(think, calls):
    return f"<think>{think}</think><tool_call>{json.dumps(calls)}</tool_call>"


AGREEMENT_CASES = [
    # the SFT gold answers agree: one name, two names, none
    (said("The request needs get_weather.", [{"name": "get_weather", "arguments": {}}]), 1.0, None),
    (said("The request needs 2 calls of get_weather, get_weather_forecast.",
          [{"name": "get_weather", "arguments": {}}, {"name": "get_weather_forecast", "arguments": {}}]), 1.0, None),
    (said("None of the functions can do this.", []), 1.0, None),
    # "none" then a call: the think names nothing, the answer calls get_weather
    (said("None of the functions can do this.", [{"name": "get_weather", "arguments": {}}]), 0.0, "think_call_mismatch"),
    # names a function, answers []
    (said("The request needs get_weather.", []), 0.0, "think_call_mismatch"),
    # names the other function: get_weather_forecast is a word, get_weather is not inside it
    (said("The request needs get_weather_forecast.", [{"name": "get_weather", "arguments": {}}]), 0.0,
     "think_call_mismatch"),
    # names one more offered function than it calls
    (said("get_weather or get_weather_forecast? get_weather.", [{"name": "get_weather", "arguments": {}}]), 0.0,
     "think_call_mismatch"),
    # a function that is not offered counts when called and named
    (said("Use lookup.", [{"name": "lookup", "arguments": {}}]), 1.0, None),
    # unreadable: the parser's reason
    ("no tags at all", 0.0, "no_think"),
    (said("x", "oops"), 0.0, "not_a_list"),
]


@pytest.mark.parametrize("completion,value,reason", AGREEMENT_CASES)
def test_think_call_agreement_cases(completion, value, reason):
    out = think_call_agreement([completion], [OFFERED])
    assert out == [value] and out.reasons == [reason]


def test_named_functions_are_whole_words():
    names = {"f", "math.factorial", "get-x", "get_weather"}
    assert named_functions("call f, then math.factorial. get-x-", names) == {"f", "math.factorial", "get-x"}
    assert named_functions("ff math.factorials get_weathers xget-x", names) == set()


def test_think_call_agreement_with_unreadable_tools_is_a_reason():
    out = think_call_agreement([said("f", [{"name": "f", "arguments": {}}])], ["{not json"])
    assert out == [0.0] and out.reasons == ["bad_tools"]


def preset(name: str) -> WeightedReward:
    """The reward of conf/reward/<name>.yaml, as `reward=<name>` builds it."""
    import yaml
    from pathlib import Path

    return WeightedReward(yaml.safe_load((Path(__file__).parent.parent / f"conf/reward/{name}.yaml").read_text())["functions"])


def test_toolrl_agree_preset_pays_agreement():
    """conf/reward/toolrl_agree.yaml: toolrl + agreement. A right call after a "none" think gets
    4, after a think that names it 5; [] on an irrelevance task 5."""
    fn = preset("toolrl_agree")
    call = [{"name": "get_weather", "arguments": {}}]
    out = fn([said("None of the functions can do this.", call), said("The request needs get_weather.", call),
              said("None of the functions can do this.", [])],
             ground_truth=[call, call, []], tools=[OFFERED] * 3)
    assert out.total == [4.0, 5.0, 5.0]


def test_toolrl_schema_preset_scores_by_hand():
    """conf/reward/toolrl_schema.yaml (the embedded default): toolrl + 1 x schema validity.
    Tool task (gold get_weather): right call 4 + 1 = 5; `[]` -2 + 1 = -1; a tool that is not
    offered -2 + 0 = -2; the right name with an argument its schema refuses: format 1 + correctness
    6 x (name 1 + key Jaccard 0 + values 0) / (1 + 1 + 0) - 3 = 0, so 1 + schema 0 = 1.
    Irrelevance task: `[]` 4 + 1 = 5; an offered tool -2 + 1 = -1; a tool not offered -2 + 0 = -2."""
    fn = preset("toolrl_schema")
    strict = [{"name": "get_weather", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}]
    gold = [{"name": "get_weather", "arguments": {}}]
    unoffered = [{"name": "book_flight", "arguments": {}}]
    out = fn([said("x", gold), said("x", []), said("x", unoffered), said("x", [{"name": "get_weather", "arguments": {"city": "Oslo"}}]),
              said("x", []), said("x", gold), said("x", unoffered)],
             ground_truth=[gold] * 4 + [[]] * 3, tools=[strict] * 7)
    assert out.total == [5.0, -1.0, -2.0, 1.0, 5.0, -1.0, -2.0]
