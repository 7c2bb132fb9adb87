"""The multi-turn env: calls run in the sandbox, results come back as tool messages, tool
tokens are masked out of the loss, and the whole episode is scored as one Tool-N1 answer.
A scripted engine plays the model (the env's logic, not the engine, is under test here);
the last test trains a tiny model through it."""

import json
import random

from envs import synthetic
from envs.tool_env import ToolEnv
from rewards import tool_n1_reward
from rl.setup import Setup
from rl.train import train
from envs.types import Sample, SamplingParams


class ScriptedEngine:
    """Answers turn k of every episode with script[k] (then EOS)."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.turn, self.contexts = tokenizer, script, 0, []

    def generate(self, prompts, n, sampling):
        self.contexts.append(prompts)
        tokens = self.tokenizer.encode(self.script[self.turn], add_special_tokens=False) + [self.tokenizer.eos_token_id]
        self.turn += 1
        return [Sample(tokens, [-0.5] * len(tokens), "stop") for _ in prompts for _ in range(n)]


def answer(calls):
    return f"<think>chain</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


def task():
    return synthetic.make_task("multi_turn", random.Random(1))  # add_days then days_between


def test_an_episode_runs_the_tools_and_scores_as_one_answer(tiny):
    s = Setup.build(tiny())
    t = task()
    first, second = t["ground_truth"]
    env = ToolEnv(s.tokenizer)
    engine = ScriptedEngine(s.tokenizer, [answer([first]), answer([second]), "The answer is in the tool message."])
    (r,) = env.rollout(engine, [t], 1, SamplingParams())
    assert len(engine.contexts) == 3  # three model turns
    assert tool_n1_reward([r.text], ground_truth=[t["ground_truth"]]) == [1.0]
    # the add_days result came back as a tool message, masked out of the loss
    masked = [tok for tok, m in zip(r.completion, r.loss_mask) if m == 0]
    tool_text = s.tokenizer.decode(masked)
    assert first["arguments"]["start"] not in tool_text and second["arguments"]["start"] in tool_text
    assert "<|im_start|>tool" in tool_text and tool_text.rstrip().endswith("<|im_start|>assistant")
    assert all(lp == 0.0 for lp, m in zip(r.rollout_logprobs, r.loss_mask) if m == 0)
    # prompt + completion is exactly the chat template of the whole conversation
    full = s.tokenizer.decode(r.prompt + r.completion)
    assert full.count("<|im_start|>assistant") == 3 and full.count("<|im_start|>tool") == 2
    assert engine.contexts[1][0] == r.prompt + r.completion[: len(engine.contexts[1][0]) - len(r.prompt)]


def test_wrong_second_call_and_malformed_first_turn(tiny):
    s = Setup.build(tiny())
    t = task()
    first, second = t["ground_truth"]
    wrong = {**second, "arguments": {**second["arguments"], "start": first["arguments"]["start"]}}  # ignored the result
    (r,) = ToolEnv(s.tokenizer).rollout(ScriptedEngine(s.tokenizer, [answer([first]), answer([wrong]), "done"]),
                                        [t], 1, SamplingParams())
    assert tool_n1_reward([r.text], ground_truth=[t["ground_truth"]]) == [0.0]
    (r,) = ToolEnv(s.tokenizer).rollout(ScriptedEngine(s.tokenizer, ["no tags at all"]), [t], 1, SamplingParams())
    scores = tool_n1_reward([r.text], ground_truth=[t["ground_truth"]])
    assert scores == [0.0] and scores.reasons == ["no_think"] and sum(r.loss_mask) == len(r.completion)


def test_max_turns_bounds_an_episode(tiny):
    s = Setup.build(tiny())
    t = task()
    loop = answer([t["ground_truth"][0]])
    engine = ScriptedEngine(s.tokenizer, [loop] * 5)
    (r,) = ToolEnv(s.tokenizer, max_turns=2).rollout(engine, [t], 1, SamplingParams())
    assert engine.turn == 2 and json.loads(r.text.split("<tool_call>")[1].split("</tool_call>")[0]) == [t["ground_truth"][0]] * 2


def test_training_through_the_multi_turn_env(tiny):
    summary = train(tiny("env=tool_env", "data.builtin_tools=true", "data.categories=[multi_turn,simple]"))
    assert "after_rl" in summary
