"""The single-turn env renders the Tool-N1 system prompt, or hands tools to the chat template."""

import pytest
from transformers import AutoTokenizer

from envs.single_turn import SingleTurnEnv, gold_answer
from envs.synthetic import generate
from rl.models import smollm2_folder

TASK = generate(1, 0)[0]


def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_folder())


def test_tool_n1_prompt_lists_the_tools_as_json():
    env = SingleTurnEnv(tokenizer())
    messages = env.reset(TASK)
    assert messages[0]["role"] == "system" and "<tools>" in messages[0]["content"]
    assert all(f'"name": "{t["name"]}"' in messages[0]["content"] for t in TASK["tools"])
    text = env.tokenizer.decode(env.prompt_ids(TASK))
    assert text.endswith("<|im_start|>assistant\n")


def test_template_tools_go_to_the_chat_template():
    tok = tokenizer()
    tok.chat_template = (
        "{% for t in tools %}TOOL:{{ t['function']['name'] }}\n{% endfor %}"
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}assistant:"
    )
    env = SingleTurnEnv(tok, use_template_tools=True)
    text = tok.decode(env.prompt_ids(TASK))
    assert all(f"TOOL:{t['name']}" in text for t in TASK["tools"])
    assert "<tools>" not in text


def test_a_template_that_ignores_tools_is_refused():
    with pytest.raises(ValueError, match="env.use_template_tools=true, but the chat template of .* ignores `tools`"):
        SingleTurnEnv(tokenizer(), use_template_tools=True)  # SmolLM2's template has no tools


def test_custom_system_prompt_gets_the_tools():
    env = SingleTurnEnv(tokenizer(), system_prompt="Functions: {tools}. Answer in JSON.")
    assert env.reset(TASK)[0]["content"].startswith('Functions: {"name"')


def test_gold_answer_shape():
    answer = gold_answer(TASK)
    assert answer.startswith("<think>") and answer.endswith("</tool_call>")


@pytest.mark.parametrize("value", ["japanese", 2, True, None])
def test_a_call_in_a_parallel_gold_answer_ends_with_the_tokens_a_lone_call_ends_with(value):
    """calls_json's " , ": the first of two calls ends with the same tokens as a lone call
    (before `]`), so a parallel answer is a lone call's answer plus ` ,` and more calls; with
    json.dumps's ", " SmolLM2 tokenizes a string value's ending as `"}` + `},` instead."""
    import json

    tok = tokenizer()
    call = {"name": "f", "arguments": {"a": value}}
    lone = gold_answer({"ground_truth": [call]})
    two = gold_answer({"ground_truth": [call, {"name": "g", "arguments": {}}]})
    assert json.loads(two.split("<tool_call>")[1].removesuffix("</tool_call>")) == [call, {"name": "g", "arguments": {}}]
    lone_ids, two_ids = tok(lone.split("</think>")[1])["input_ids"], tok(two.split("</think>")[1])["input_ids"]
    end = lone_ids.index(tok.convert_tokens_to_ids("]"))  # the lone call's `]`
    assert two_ids[:end] == lone_ids[:end] and tok.decode(two_ids[end]) == " ,"
    if isinstance(value, str):  # what json.dumps gives instead: the brace joins the quote
        dumped = [tok.decode(i) for i in tok(json.dumps([call, call]))["input_ids"]]
        assert '"}' in dumped and "}}" not in dumped[:dumped.index('"}') + 2]
