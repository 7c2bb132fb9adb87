"""model.tool_format is one switch: the prompt (the chat template's own tools prompt), the
parser of every reward, the SFT gold answers, BFCL decoding and multi-turn episodes all follow
it. Real chat templates (tests/fixtures/templates, copied from vLLM's and TRL's repositories)
stand in for the models' own, set with model.chat_template."""

from pathlib import Path

import pytest

from envs import synthetic
from envs.single_turn import gold_answer
from rewards.native import render_native
from rl.setup import Setup, check_config
from rl.sft import gold_rollouts

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
FORMATS = [("hermes", "qwen2_5.jinja"), ("llama3_json", "llama3_1.jinja"), ("mistral", "mistral_parallel.jinja")]


@pytest.mark.parametrize("fmt,template", FORMATS)
def test_a_correct_native_answer_scores_1_with_only_tool_format_set(tiny, fmt, template):
    s = Setup.build(tiny(f"model.tool_format={fmt}", f"model.chat_template={TEMPLATES / template}",
                         "reward=tool_n1_schema"))
    task = synthetic.make_task("parallel", __import__("random").Random(3), synthetic.catalog())
    prompt = s.tokenizer.decode(s.env.prompt_ids(task))
    assert task["tools"][0]["name"] in prompt and "You may call these functions" not in prompt  # the template's prompt
    right, wrong = render_native(task["ground_truth"], fmt), render_native(task["ground_truth"][:1], fmt)
    scored = s.reward_fn([right, wrong, f"<think>x</think>\n<tool_call>{task['ground_truth']}</tool_call>"],
                         ground_truth=[task["ground_truth"]] * 3, tools=[task["tools"]] * 3)
    assert scored.per_function["tool_n1"] == [1.0, 0.0, 0.0]  # read as `fmt`, not as Tool-N1
    assert scored.per_function["schema_validity"][0] == 1.0
    # the SFT gold answer is in the same format, and trains on the env's prompt
    (gold,) = gold_rollouts(s.env, s.tokenizer, [task])
    assert gold.text == gold_answer(task, fmt) == right


@pytest.mark.parametrize("fmt,template", FORMATS)
def test_bfcl_decodes_the_native_format(fmt, template):
    pytest.importorskip("bfcl_eval")
    from rl import bfcl

    entry = bfcl.load_category("simple_python")[0]
    task = bfcl.to_task(entry)
    answer = render_native(task["ground_truth"], fmt)
    assert bfcl.score_entry(entry, answer, fmt)["valid"]
    assert bfcl.score_entry(entry, answer, "auto")["valid"]


def test_multi_turn_episodes_follow_the_tool_format(tiny):
    s = Setup.build(tiny("model.tool_format=hermes", f"model.chat_template={TEMPLATES / 'qwen2_5.jinja'}",
                         "env=tool_env", "data=synthetic_multi_turn", "reward=multi_turn"))
    task = next(t for t in s.train_tasks if t["family"] == "dates")
    (r,) = s.env.gold_rollouts([task])
    ep = r.episode
    assert ep["stop"] == "answer" and ep["calls"] == task["ground_truth"] and ep["tool_errors"] == 0
    assert "<tool_call>" in ep["turns"][0]["text"] and "<think>" not in ep["turns"][0]["text"]
    assert s.reward_fn([r.text], episodes=[ep], ground_truth=[task["ground_truth"]], answer=[task["answer"]],
                       expected_state=[None]).per_function["call_sequence"] == [1.0]


def test_a_bad_tool_format_or_template_is_refused(tiny):
    with pytest.raises(ValueError, match="model.tool_format=json: use tool_n1 | hermes"):
        check_config(tiny("model.tool_format=json"), 1)
    with pytest.raises(ValueError, match="ignores `tools`"):  # SmolLM2's own template drops the tools
        Setup.build(tiny("model.tool_format=hermes"))
    with pytest.raises(ValueError, match="neither a Jinja template nor a file"):
        Setup.build(tiny("model.tool_format=hermes", "model.chat_template=no/such/file.jinja"))
