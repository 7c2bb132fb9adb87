"""TRL's calling convention both ways: TRL's reward functions (its documentation's examples and
trl.rewards, factories included) run unchanged in WeightedReward and in a training run; our
rewards run as reward_funcs of TRL's GRPOTrainer and report their reasons to its logs; a
function that cannot be called is refused at start-up, naming it and the signature."""

import json
import re

import pytest

from rewards.base import log_reasons
from rewards.combine import SIGNATURE, TrainerState, WeightedReward
from rewards.tool_n1 import format_reward, tool_n1_reward

THINK = "<think>t</think><answer>a</answer>"
GOLD = [{"name": "f", "arguments": {"x": 1}}]
RIGHT = '<think>t</think><tool_call>[{"name": "f", "arguments": {"x": 1}}]</tool_call>'
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "call f"}]


# --- TRL's documented reward functions (docs/source/grpo_trainer.md), verbatim in spirit -----------
def reward_len(completions, **kwargs):  # standard format: completions are strings
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):  # standard format
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    return [1.0 if re.match(pattern, content) else 0.0 for content in completions]


def conversational_format_reward_func(completions, **kwargs):  # conversational format
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    return [1.0 if re.match(pattern, content) else 0.0 for content in completion_contents]


def reward_num_unique_letters(completions, **kwargs):  # the quickstart's, conversational
    completion_contents = [completion[0]["content"] for completion in completions]
    return [float(len(set(content))) for content in completion_contents]


def boxed_reward(completions, ground_truth, **kwargs):  # a dataset column by name
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def token_count_reward(completion_ids, **kwargs):  # token ids only
    return [float(len(ids)) for ids in completion_ids]


SEEN: list[dict] = []


def canonical_reward(prompts, completions, completion_ids, trainer_state, **kwargs):
    """TRL's full signature; records what it was given."""
    SEEN.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                 "trainer_state": trainer_state, "columns": sorted(kwargs)})
    return [0.0 for _ in completions]


def no_kwargs(prompts, completions):  # only what it names is passed
    return [float(len(p) > 0) for p in prompts]


def scaled_length(completions, scale=1.0, **kwargs):  # for _partial_
    return [scale * len(c) for c in completions]


def needs_response(response, **kwargs):  # not TRL's convention: `response` is never passed
    return [0.0 for _ in response]


def positional_only(completions, /):
    return [0.0 for _ in completions]


def call(reward: WeightedReward, completions: list[str], **extra):
    n = len(completions)
    inputs = {"prompts": ["<|im_start|>user\ncall f<|im_end|>\n"] * n, "completion_ids": [[1] * (5 * i + 1) for i in range(n)],
              "trainer_state": TrainerState(3, 10), "messages": [MESSAGES] * n, "ground_truth": [GOLD] * n}
    return reward(completions, **{**inputs, **extra})


# --- 1. TRL's functions run unchanged in WeightedReward -------------------------------------------
def test_the_documented_examples_run_unchanged():
    reward = WeightedReward([
        {"_target_": "tests.test_trl_rewards.reward_len"},
        {"_target_": "tests.test_trl_rewards.format_reward_func"},
        {"_target_": "tests.test_trl_rewards.conversational_format_reward_func", "completions": "messages"},
        {"_target_": "tests.test_trl_rewards.reward_num_unique_letters", "completions": "messages"},
        {"_target_": "tests.test_trl_rewards.boxed_reward"},
        {"_target_": "tests.test_trl_rewards.token_count_reward"},
        {"_target_": "tests.test_trl_rewards.no_kwargs"},
    ], columns=["messages", "ground_truth"])
    out = call(reward, [THINK, "no", r"\boxed{7}"], ground_truth=["x", "y", "7"])
    f = out.per_function
    assert f["reward_len"] == [-abs(20 - len(THINK)), -18, -11]
    assert f["format_reward_func"] == f["conversational_format_reward_func"] == [1.0, 0.0, 0.0]
    assert f["reward_num_unique_letters"] == [float(len(set(THINK))), 2.0, float(len(set(r"\boxed{7}")))]
    assert f["boxed_reward"] == [0.0, 0.0, 1.0]
    assert f["token_count_reward"] == [1.0, 6.0, 11.0]
    assert f["no_kwargs"] == [1.0, 1.0, 1.0]


def test_the_keywords_in_each_shape():
    SEEN.clear()
    reward = WeightedReward([{"_target_": "tests.test_trl_rewards.canonical_reward", "name": "as_text"},
                             {"_target_": "tests.test_trl_rewards.canonical_reward", "name": "as_messages",
                              "completions": "messages"}])
    call(reward, ["a", "b"])
    text, messages = SEEN
    assert text["completions"] == ["a", "b"] and text["prompts"][0].startswith("<|im_start|>")
    assert messages["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    assert messages["prompts"] == [MESSAGES, MESSAGES]
    assert text["completion_ids"] == [[1], [1] * 6] and text["trainer_state"].global_step == 3
    assert text["columns"] == ["ground_truth", "messages"]
    SEEN.clear()
    reward(["a"], messages=[MESSAGES])  # a direct call: no rendered prompt, a default state
    assert SEEN[0]["prompts"] == ["call f"] and SEEN[0]["trainer_state"].global_step == 0


def test_trl_rewards_module():
    reward = WeightedReward([
        {"_target_": "trl.rewards.think_format_reward", "completions": "messages"},
        {"_target_": "trl.rewards.get_soft_overlong_punishment", "max_completion_len": 10, "soft_punish_cache": 5},
        {"_target_": "trl.rewards.get_repetition_penalty_reward", "ngram_size": 2, "name": "repetition"},
    ])
    out = call(reward, ["<think>\nr\n</think>\nanswer", "<think>\nno end", "x"])
    assert out.per_function["think_format_reward"] == [1.0, 0.0, 0.0]
    assert out.per_function["get_soft_overlong_punishment"] == [0.0, -0.2, -1.0]  # 1, 6, 11 tokens
    assert out.per_function["repetition"] == [0.0, -0.8, -0.9]  # all-ones ids: one distinct bigram of 5, of 10


def test_trl_accuracy_reward():
    pytest.importorskip("math_verify")
    reward = WeightedReward([{"_target_": "trl.rewards.accuracy_reward", "completions": "messages"}])
    out = call(reward, [r"My answer is \boxed{\frac{1}{3}}", r"My answer is \boxed{\frac{1}{2}}"],
               solution=[r"\frac{1}{3}", r"\frac{1}{3}"])
    assert out.per_function["accuracy_reward"] == [1.0, 0.0]


def test_partial_binds_its_arguments():
    reward = WeightedReward([{"_target_": "tests.test_trl_rewards.scaled_length", "_partial_": True, "scale": 2}])
    assert reward(["abc"]).total == [6.0]


def test_a_conversational_reward_on_text_says_which_setting_it_needs():
    with pytest.raises(ValueError, match=r"reward think_format_reward raised TypeError.*completions: messages"):
        call(WeightedReward([{"_target_": "trl.rewards.think_format_reward"}]), ["<think>a</think>"])


@pytest.mark.parametrize("spec,match", [
    ({"_target_": "trl.rewards.get_soft_overlong_punishment", "max_completion_length": 10, "soft_punish_cache": 5},
     r"get_soft_overlong_punishment: unknown argument 'max_completion_length'.*did you mean 'max_completion_len'"),
    ({"_target_": "tests.test_trl_rewards.scaled_length", "scale": 2},
     r"scaled_length: .*is a reward function, not a factory.*_partial_: true"),
    ({"_target_": "tests.test_trl_rewards.scaled_length", "_partial_": True, "scael": 2},
     r"scaled_length: unknown kwarg 'scael'.*did you mean 'scale'"),
    ({"name": "tool_n1", "wieght": 2}, r"tool_n1: unknown key 'wieght'.*did you mean 'weight'"),
    ({"name": "tool_n1_partial", "name_credit": 0.5}, r"'name_credit' is an argument of the function: put it under kwargs"),
    ({"name": "tool_n1", "completions": "message"}, r"completions='message'.*did you mean 'messages'"),
])
def test_a_bad_entry_is_refused_with_a_suggestion(spec, match):
    with pytest.raises(ValueError, match=match):
        WeightedReward([spec])


# --- 2. a function that cannot be called is refused at start-up -----------------------------------
@pytest.mark.parametrize("spec,match", [
    ({"_target_": "tests.test_trl_rewards.needs_response"}, r"requires 'response'"),
    ({"_target_": "tests.test_trl_rewards.positional_only"}, r"'completions' is positional-only"),
    ({"_target_": "trl.rewards.get_soft_overlong_punishment"},
     r"if it is a factory, give its arguments \(max_completion_len, soft_punish_cache\) as keys"),
])
def test_a_function_that_cannot_be_called_is_refused(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        WeightedReward([spec], columns=["messages", "ground_truth"])
    name = spec["_target_"].rsplit(".", 1)[-1]
    assert str(info.value).startswith(f"reward {name}: ") and SIGNATURE in str(info.value)


def test_a_run_refuses_an_uncallable_reward_before_its_first_step(tiny):
    from rl.train import train

    with pytest.raises(ValueError, match=r"reward needs_response: .*requires 'response'.*" + re.escape(SIGNATURE)):
        train(tiny("reward.functions=[{_target_: tests.test_trl_rewards.needs_response}]",
                   "reward.exact_match=needs_response"))
    with pytest.raises(ValueError, match=r"reward get_soft_overlong_punishment: .*a factory"):  # before a model loads
        train(tiny("reward.functions=[{_target_: trl.rewards.get_soft_overlong_punishment}]"))


# --- 3. a training run with TRL's rewards, factories and partials from the config -----------------
def test_a_run_with_trl_rewards(tiny, tmp_path):
    from rl.train import train

    SEEN.clear()
    train(tiny("reward.functions=["
               "{name: tool_n1, weight: 1.0},"
               "{_target_: trl.rewards.think_format_reward, completions: messages, weight: 0.1},"
               "{_target_: trl.rewards.get_soft_overlong_punishment, max_completion_len: 8, soft_punish_cache: 4, weight: 0.1},"
               "{_target_: tests.test_trl_rewards.scaled_length, _partial_: true, scale: 0.01, weight: 0.1},"
               "{_target_: tests.test_trl_rewards.canonical_reward, weight: 0.0}]",
               "trainer.eval_size=2"))
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 2
    for key in ("reward/think_format_reward", "reward/get_soft_overlong_punishment", "reward/scaled_length"):
        assert all(key in r for r in steps), key
    # the base eval, one call per RL step (the steps done before it), the final eval (after step 2)
    assert [(s["trainer_state"].global_step, s["trainer_state"].max_steps) for s in SEEN] == [(0, 2), (0, 2), (1, 2), (2, 2)]
    for s in SEEN:
        assert all(p.startswith("<|im_start|>") and "<|im_start|>assistant" in p for p in s["prompts"])
        assert all(isinstance(ids, list) and len(ids) <= 8 for ids in s["completion_ids"])
        assert {"ground_truth", "messages", "tools"} <= set(s["columns"])


# --- 4. our rewards under TRL's GRPOTrainer report their reasons ---------------------------------
def test_reasons_reach_trls_callables():
    metrics, extra = [], {}
    log_metric = lambda name, value: metrics.append((name, value))  # noqa: E731
    log_extra = lambda column, values: extra.__setitem__(column, values)  # noqa: E731
    out = tool_n1_reward([RIGHT, "no think", RIGHT.replace('"x": 1', '"x": 2')], ground_truth=[GOLD] * 3,
                         log_metric=log_metric, log_extra=log_extra)
    assert out == [1.0, 0.0, 0.0]
    assert extra == {"reason/tool_n1_reward": [None, "no_think", "wrong_args"]}
    assert dict(metrics) == {"reason/tool_n1_reward/no_think": 1 / 3, "reason/tool_n1_reward/wrong_args": 1 / 3}
    metrics.clear()  # a later batch without those reasons logs them as 0 (a share of every batch)
    tool_n1_reward([RIGHT], ground_truth=[GOLD], log_metric=log_metric)
    assert dict(metrics) == {"reason/tool_n1_reward/no_think": 0.0, "reason/tool_n1_reward/wrong_args": 0.0}
    assert tool_n1_reward([RIGHT], ground_truth=[GOLD]).reasons == [None]  # without TRL: nothing to log to
    seen = set()
    log_reasons("x", ["a", None], log_metric, seen=seen)
    assert seen == {"a"}


def test_our_rewards_in_trls_grpo_trainer(tmp_path):
    torch = pytest.importorskip("torch")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from envs.synthetic import generate
    from rewards.schema import schema_validity_reward
    from rl.models import load_model, load_tokenizer
    from tests.conftest import tiny_cfg

    cfg = tiny_cfg(tmp_path)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer, torch.device("cpu"))  # the 2-layer random model of model=tiny-random
    tasks = generate(2, 0)
    data = Dataset.from_dict({"prompt": [t["messages"] for t in tasks],  # conversational, as TRL's docs have it
                              "ground_truth": [json.dumps(t["ground_truth"]) for t in tasks],
                              "tools": [json.dumps(t["tools"]) for t in tasks]})
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", logging_steps=1, save_strategy="no",
                      disable_tqdm=True, use_cpu=True, max_steps=1, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, beta=0.0, dataloader_num_workers=0, log_completions=False, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[tool_n1_reward, format_reward, schema_validity_reward], args=args,
                          processing_class=tokenizer, train_dataset=data)
    trainer.train()
    logged = trainer.state.log_history[0]
    for fn in ("tool_n1_reward", "format_reward", "schema_validity_reward"):
        assert logged[f"rewards/{fn}/mean"] == 0.0  # 4 random tokens are no tool call
        reasons = list(trainer._logs["extra"][f"reason/{fn}"])
        assert len(reasons) == 4 and all(isinstance(r, str) for r in reasons), reasons
        shares = {k.removeprefix(f"reason/{fn}/"): v for k, v in logged.items() if k.startswith(f"reason/{fn}/")}
        assert shares == {r: pytest.approx(reasons.count(r) / 4) for r in shares} and set(reasons) <= set(shares)


# --- 5. None: a reward that does not apply to a completion (TRL's convention) --------------------
def only_long(completions, **kwargs):
    """1 for long answers, None (does not apply) for short ones, as TRL's multi-task rewards do."""
    return [1.0 if len(c) > 5 else None for c in completions]


def test_none_means_the_reward_does_not_apply():
    fn = WeightedReward([{"_target_": "tests.test_trl_rewards.only_long", "weight": 2.0},
                         {"name": "format", "weight": 0.5}])
    good = "<think>a</think>\n<tool_call>[]</tool_call>"
    scored = fn([good, "abc", "abcdefgh"], ground_truth=[[]] * 3)
    # TRL's nansum: a None adds nothing; NaN in per_function, reason "skipped"
    assert scored.total == [2.0 + 0.5, 0.0, 2.0]
    assert scored.per_function["only_long"][0] == 1.0 and scored.per_function["only_long"][1] != scored.per_function["only_long"][1]
    assert scored.reasons["only_long"] == [None, "skipped", None]
    with pytest.raises(ValueError, match="finite number .or None"):
        WeightedReward([{"_target_": "tests.test_trl_rewards.inf_reward"}])(["a"], ground_truth=[[]])


def inf_reward(completions, **kwargs):
    return [float("inf")] * len(completions)


def test_a_run_with_a_reward_that_returns_none(tiny, tmp_path):
    from rl.train import train

    summary = train(tiny("reward.functions=[{name: tool_n1}, {_target_: tests.test_trl_rewards.only_long, weight: 0.5}]",
                         "algo.reward_norm=per_function", "trainer.eval_size=2"))
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in steps if "loss" in r)  # finite: the skipped values did not spread NaN
    assert "after_rl" in summary
