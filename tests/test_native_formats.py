"""Model-native tool-call formats: the real chat templates (tests/fixtures/templates, each
with its source on the first line) render tools and tool-call turns, the native parsers read
what those templates and real models write, and gold answers round-trip."""

import json
import re
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from envs.single_turn import check_template_renders_tools, template_tools
from rewards.native import NATIVE, NO_CALL_TEXT, RENDER_FORMATS, parse_llama3_json, parse_mistral, render_native
from rewards.parsing import parse_hermes
from rl.models import smollm2_folder

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
# fixture -> the native format its model answers in
FORMAT_OF = {"hermes": "hermes", "qwen2_5": "hermes", "llama3_1": "llama3_json", "llama3.1_json": "llama3_json",
             "mistral": "mistral", "mistral_parallel": "mistral"}
PARSER = {"hermes": parse_hermes, **NATIVE}
SINGLE_CALL_ONLY = {"llama3_1", "llama3.1_json"}  # Llama-3.1's templates raise on more than one call in a turn

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                           "unit": {"type": "string", "description": "c or f"}},
                          "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "description": "IANA zone"}},
                       "required": ["tz"]}}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
CET = {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_folder())


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def render(tok, name: str, messages: list[dict], **kwargs) -> str:
    tok.chat_template = template(name)
    return tok.apply_chat_template(messages, tools=template_tools([WEATHER, TIME]), tokenize=False, **kwargs)


def openai_turn(calls: list[dict]) -> dict:
    """An assistant turn in OpenAI's shape; ids are 9+ alphanumerics, as Mistral's template requires."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call{i:05d}x", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for i, c in enumerate(calls)]}


def calls_for(name: str) -> list[dict]:
    return [PARIS] if name in SINGLE_CALL_ONLY else [PARIS, CET]


USER = {"role": "user", "content": "Weather and time in Paris?"}


def test_every_format_has_a_fixture_and_every_fixture_names_its_source():
    assert set(FORMAT_OF) == {p.stem for p in TEMPLATES.glob("*.jinja")}
    assert set(FORMAT_OF.values()) == set(RENDER_FORMATS)
    for name in FORMAT_OF:
        first = template(name).splitlines()[0]
        assert re.fullmatch(r"\{# source: [\w.-]+/[\w.-]+@[0-9a-f]{40} \S+\.jinja.* -#\}", first), (name, first)


@pytest.mark.parametrize("name", sorted(FORMAT_OF))
def test_the_source_comment_renders_nothing(tokenizer, name):
    messages = [USER, openai_turn(calls_for(name))]
    with_header = render(tokenizer, name, messages)
    tokenizer.chat_template = template(name).split("\n", 1)[1]
    assert tokenizer.apply_chat_template(messages, tools=template_tools([WEATHER, TIME]), tokenize=False) == with_header


@pytest.mark.parametrize("name", sorted(FORMAT_OF))
def test_template_renders_the_tools_so_use_template_tools_works(tokenizer, name):
    text = render(tokenizer, name, [USER], add_generation_prompt=True)
    for tool in (WEATHER, TIME):
        assert tool["name"] in text and tool["description"] in text
    check_template_renders_tools(tokenizer)  # what env.use_template_tools=true checks at start


@pytest.mark.parametrize("name", sorted(FORMAT_OF))
def test_template_renders_a_tool_call_turn_and_the_tool_results(tokenizer, name):
    calls = calls_for(name)
    results = [{"role": "tool", "tool_call_id": f"call{i:05d}x", "name": c["name"], "content": f"result {i}"}
               for i, c in enumerate(calls)]
    text = render(tokenizer, name, [USER, openai_turn(calls), *results], add_generation_prompt=True)
    assert all(c["name"] in text for c in calls) and "Paris" in text
    assert all(r["content"] in text for r in results)


# vLLM's hermes template writes a past call as `{"name": "get_weather"}, "arguments": {...}` (not
# JSON), so its history does not parse back; Qwen2.5's own template (same format) does.
HISTORY_PARSES = sorted(set(FORMAT_OF) - {"hermes"})
# where the assistant's answer starts (Mistral's templates have no generation prompt: after the user turn)
TURN_START = {"hermes": "<|im_start|>assistant\n", "llama3_json": "<|start_header_id|>assistant<|end_header_id|>\n\n",
              "mistral": "[/INST]"}


@pytest.mark.parametrize("name", HISTORY_PARSES)
def test_a_tool_call_turn_as_the_template_writes_it_parses_back(tokenizer, name):
    calls = calls_for(name)
    full = render(tokenizer, name, [USER, openai_turn(calls)])
    answer = full[full.rindex(TURN_START[FORMAT_OF[name]]) + len(TURN_START[FORMAT_OF[name]]):]
    parsed = PARSER[FORMAT_OF[name]](answer)
    assert (parsed.calls, parsed.reason) == (calls, None), answer
    if FORMAT_OF[name] != "mistral":  # the Mistral template adds call ids, which gold answers do not have
        end = {"hermes": "<|im_end|>\n", "llama3_json": "<|eot_id|>"}[FORMAT_OF[name]]
        assert answer == render_native(calls, FORMAT_OF[name]) + end  # the gold answer is what the template writes


CALL_SETS = [
    [PARIS],
    [PARIS, CET],
    [CET, CET, PARIS],
    [{"name": "calc.add", "arguments": {}}],
    [{"name": "search", "arguments": {"q": "café ; } { [TOOL_CALLS] </tool_call>", "n": [1, 2.5, None, True],
                                      "filter": {"nested": {"deep": ["x"]}}}}],
    [],
]


@pytest.mark.parametrize("fmt", RENDER_FORMATS)
@pytest.mark.parametrize("calls", CALL_SETS, ids=range(len(CALL_SETS)))
def test_gold_answers_round_trip(fmt, calls):
    answer = render_native(calls, fmt)
    for lenient in (False, True):
        parsed = PARSER[fmt](answer, lenient=lenient)
        assert (parsed.calls, parsed.reason) == (calls, None), (answer, lenient)
        thought = PARSER[fmt](f"<think>plan</think>\n{answer}", lenient=lenient)
        assert (thought.think, thought.calls) == ("plan", calls)


def test_render_native_refuses_unknown_formats_and_bad_calls():
    assert render_native([], "mistral") == NO_CALL_TEXT
    with pytest.raises(ValueError, match="no gold answers in format 'pythonic'"):
        render_native([PARIS], "pythonic")
    with pytest.raises(ValueError, match="ground_truth"):
        render_native([{"name": "f", "arguments": [1]}], "hermes")


P = json.dumps(PARIS["arguments"])
T = json.dumps(CET["arguments"])
MW = f'{{"name": "get_weather", "arguments": {P}}}'  # Mistral's pre-v11 call objects
MT = f'{{"name": "get_time", "arguments": {T}}}'
LW = f'{{"name": "get_weather", "parameters": {P}}}'  # Llama calls as the template asks for them
LT = f'{{"name": "get_time", "parameters": {T}}}'
# (text as a model writes it, strict result, lenient result); a result is the calls or a reason string
LLAMA_CASES = [
    (LW, [PARIS], [PARIS]),
    (f'<|python_tag|>{LW}<|eom_id|>', [PARIS], [PARIS]),
    (MW, [PARIS], [PARIS]),  # "arguments" as vLLM's parser also takes
    (f'{LW}; {LT}', [PARIS, CET], [PARIS, CET]),
    (f'{LW}\n{LT}\n', [PARIS, CET], [PARIS, CET]),
    (f'{{"name": "get_weather", "parameters": {json.dumps(P)}}}', [PARIS], [PARIS]),  # parameters as a JSON string
    ("It is sunny in Paris today.", [], []),
    ("Use a dict such as {city: Paris}.", [], "bad_json"),
    (f'Sure! {LW}', [], [PARIS]),
    (f'```json\n{LW}\n```', [], [PARIS]),
    (f'[{LW}, {LT}]', [], [PARIS, CET]),
    (f'{LW}, {LT}', "text_after_calls", [PARIS, CET]),
    (f'{LW} I called the tool.', "text_after_calls", [PARIS]),
    (f'{{"type": "function", "name": "get_weather", "parameters": {P}}}', "bad_call", [PARIS]),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}', "bad_json", "bad_json"),
    ('{"name": "get_weather", "parameters": "Paris"}', "bad_call", "bad_call"),
    ('{"function": "get_weather", "city": "Paris"}', "bad_call", "bad_call"),
    (f'{{"name": "get_weather", "parameters": {P}, "arguments": {P}}}', "bad_call", "bad_call"),
    (f'{LW};; {LT}', "text_after_calls", [PARIS, CET]),
    ('<|python_tag|>brave_search.call(query="Paris weather")', "bad_json", []),
    ('{"name": "f", "parameters": ' + "[" * 200 + "]" * 200 + "}", "arguments_too_deep", "arguments_too_deep"),
]
MISTRAL_CASES = [
    (f'[TOOL_CALLS] [{MW}]', [PARIS], [PARIS]),
    (f'[TOOL_CALLS][{MW}, {MT}]</s>', [PARIS, CET], [PARIS, CET]),
    (f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {P}, "id": "a1b2c3d4e"}}]', [PARIS], [PARIS]),
    (f'[TOOL_CALLS] {MW}', [PARIS], [PARIS]),
    (f"[TOOL_CALLS]get_weather[ARGS]{P}[TOOL_CALLS]get_time[ARGS]{T}", [PARIS, CET], [PARIS, CET]),
    (f"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{P}", [PARIS], [PARIS]),
    (f'Let me look that up.[TOOL_CALLS] [{MW}]', [PARIS], [PARIS]),
    (f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {json.dumps(P)}}}]', [PARIS], [PARIS]),
    ("It is sunny in Paris today.", [], []),
    (f'[{MW}]', [], [PARIS]),  # the marker lost to skip_special_tokens
    (f"[TOOL_CALLS]get_weather{P}", "bad_call", [PARIS]),
    (f'[TOOL_CALLS] [{MW}] Done!', "text_after_calls", [PARIS]),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}', "bad_json", "bad_json"),
    ("[TOOL_CALLS]", "empty_tool_calls", "empty_tool_calls"),
    ("[TOOL_CALLS][TOOL_CALLS]get_weather[ARGS]{}", "empty_tool_calls", "empty_tool_calls"),
    ("[TOOL_CALLS]get_weather[ARGS]", "bad_json", "bad_json"),
    ('[TOOL_CALLS] [{"name": 3, "arguments": {}}]', "bad_call", "bad_call"),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {}, "extra": 1}]', "bad_call", "bad_call"),
    ('[TOOL_CALLS] ["get_weather"]', "bad_call", "bad_call"),
    ("[TOOL_CALLS]get_weather[ARGS][1, 2]", "bad_call", "bad_call"),
    ("[TOOL_CALLS] get weather[ARGS]{}", "bad_call", "bad_call"),
]


def check(parsed, expected):
    if isinstance(expected, str):
        assert (parsed.calls, parsed.reason) == (None, expected)
    else:
        assert (parsed.calls, parsed.reason) == (expected, None)


@pytest.mark.parametrize(("parser", "case"), [(parse_llama3_json, c) for c in LLAMA_CASES]
                         + [(parse_mistral, c) for c in MISTRAL_CASES])
def test_answers_as_models_write_them(parser, case):
    text, strict, lenient = case
    check(parser(text), strict)
    check(parser(text, lenient=True), lenient)
    thought = parser(f"  <think>Paris, so get_weather.</think>\n\n{text}")
    assert thought.think == "Paris, so get_weather."
    check(thought, strict)


@pytest.mark.parametrize("parser", NATIVE.values())
def test_anything_but_text_is_unreadable_never_an_error(parser):
    for value in (None, 3, ["x"], b"{}"):
        assert parser(value) == parser(value, lenient=True)
        assert (parser(value).calls, parser(value).reason) == (None, "not_text")


MB = 1 << 20
ADVERSARIAL = {
    "open_braces": "{" * MB,
    "open_objects": '{"a": ' * (MB // 6),
    "open_lists": "[" * MB,
    "unclosed_string": '{"name": "' + "x" * MB,
    "markers": "[TOOL_CALLS]" * (MB // 12),
    "markers_and_brackets": "[TOOL_CALLS] [" * (MB // 14),
    "marker_then_a_long_name": "[TOOL_CALLS]" + "a" * MB,
    "names_without_args": "[TOOL_CALLS]get_weather" * (MB // 23),
    "many_mistral_calls": "[TOOL_CALLS]f[ARGS]{}" * (MB // 21),
    "many_llama_calls": '{"name": "f", "parameters": {}}; ' * (MB // 33),
    "many_llama_calls_then_junk": '{"name": "f", "parameters": {}}\n' * (MB // 32) + "{",
    "text_then_brace": "x" * MB + "{",
    "thinks": "<think>" * (MB // 7),
    "python_tags": "<|python_tag|>" * (MB // 14),
    "end_markers": "</s><|eot_id|>" * (MB // 14),
    "trailing_whitespace": '{"name": "f", "parameters": {}}' + " \n" * (MB // 2),
    "marker_then_whitespace": "[TOOL_CALLS]" + " " * MB,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("parser", NATIVE.values(), ids=NATIVE.keys())
def test_a_megabyte_of_adversarial_text_parses_in_well_under_a_second(parser, name):
    text = ADVERSARIAL[name]
    for lenient in (False, True):
        start = time.perf_counter()
        parsed = parser(text, lenient=lenient)
        elapsed = time.perf_counter() - start
        # ~0.15 s at worst (50k valid calls) on one core; a quadratic scan would take minutes
        assert elapsed < 1.0, (name, lenient, elapsed)
        assert parsed.calls is not None or parsed.reason
