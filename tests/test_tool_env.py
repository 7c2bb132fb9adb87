"""The multi-turn tool env: calls are validated and run, results come back as tool messages
through the chat template, tool tokens are masked out of the loss, the episode ends with an
answer, max_turns, the token budget or the context window, and drift is detected. A scripted
engine plays the model (the env's logic, not the engine, is under test here); the last test
trains a tiny model through it."""

import json
import random
import time

import pytest

from envs import synthetic
from envs.multi_turn import MultiTurnEnv
from envs.tool_env import ToolEnv
from envs.types import Sample, SamplingParams
from rewards import tool_n1_reward
from rl.config import EnvConfig
from rl.models import load_tokenizer
from rl.train import train
from tools.registry import Tool


@pytest.fixture(scope="module")
def tok():
    from omegaconf import OmegaConf

    return load_tokenizer(OmegaConf.create({"name_or_path": "smollm2-135m", "tokenizer": None, "trust_remote_code": False}))


class ScriptedEngine:
    """Answers turn k of every episode with script[k] (then EOS); a callable script entry
    gets the context and returns the text."""

    def __init__(self, tokenizer, script, eos=True):
        self.tokenizer, self.script, self.turn, self.contexts, self.eos = tokenizer, script, 0, [], eos
        self.budgets = []

    def generate(self, prompts, n, sampling):
        self.contexts.append(prompts)
        self.budgets.append(sampling.max_new_tokens)
        out = []
        for p in prompts:
            text = self.script[self.turn]
            text = text(self.tokenizer.decode(p)) if callable(text) else text
            tokens = self.tokenizer.encode(text, add_special_tokens=False)[: sampling.max_new_tokens]
            eos = self.eos and len(tokens) < sampling.max_new_tokens
            out += [Sample(tokens + [self.tokenizer.eos_token_id] * eos, [-0.5] * (len(tokens) + eos),
                           "stop" if eos else "length")] * n
        self.turn += 1
        return out


def answer(calls, think="chain"):
    return f"<think>{think}</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


def dates_task():
    rng = random.Random(0)
    while (t := synthetic.make_task("multi_turn", rng))["family"] != "dates":
        pass
    return t


def kv_task():
    rng = random.Random(0)
    while (t := synthetic.make_task("multi_turn", rng))["family"] != "copy_key":
        pass
    return t


def test_a_two_step_task_is_solved_and_scored_as_one_answer(tok):
    t = dates_task()
    first, second = t["ground_truth"]
    engine = ScriptedEngine(tok, [answer([first]), answer([second]), f"It is {t['answer']} days."])
    (r,) = ToolEnv(tok).rollout(engine, [t], 1, SamplingParams())
    assert len(engine.contexts) == 3  # three model turns
    assert tool_n1_reward([r.text], ground_truth=[t["ground_truth"]]) == [1.0]
    ep = r.episode
    assert ep["stop"] == "answer" and ep["num_turns"] == 3 and ep["num_calls"] == 2 and ep["tool_errors"] == 0
    assert ep["final_answer"] == f"It is {t['answer']} days." and ep["drift"] is False
    assert ep["turns"][0]["results"][0]["content"] == second["arguments"]["start"]  # add_days's date came back
    # the add_days result came back as a tool message, masked out of the loss
    masked = [tok_ for tok_, m in zip(r.completion, r.loss_mask) if m == 0]
    tool_text = tok.decode(masked)
    assert first["arguments"]["start"] not in tool_text and second["arguments"]["start"] in tool_text
    assert "<|im_start|>tool" in tool_text and tool_text.rstrip().endswith("<|im_start|>assistant")
    assert all(lp == 0.0 for lp, m in zip(r.rollout_logprobs, r.loss_mask) if m == 0)
    # each model turn's context is the episode so far: prompt + completion up to that turn
    assert engine.contexts[1][0] == r.prompt + r.completion[: len(engine.contexts[1][0]) - len(r.prompt)]


def test_loss_mask_covers_exactly_the_model_tokens(tok):
    t = dates_task()
    first, second = t["ground_truth"]
    script = [answer([first]), answer([second]), "Done."]
    (r,) = ToolEnv(tok).rollout(ScriptedEngine(tok, script), [t], 1, SamplingParams())
    model_tokens = [x for text in script for x in tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]]
    assert [x for x, m in zip(r.completion, r.loss_mask) if m == 1] == model_tokens
    assert [lp for lp, m in zip(r.rollout_logprobs, r.loss_mask) if m == 1] == [-0.5] * len(model_tokens)
    # and the tokens between model turns are the template's: the whole sequence is the chat rendered
    assert tok.decode(r.prompt + r.completion).count("<|im_start|>assistant") == 3


def test_a_tool_error_is_fed_back_and_the_model_recovers(tok):
    t = dates_task()
    first, second = t["ground_truth"]
    bad = {"name": "add_days", "arguments": {"start": first["arguments"]["start"], "days": "ten"}}  # wrong type
    engine = ScriptedEngine(tok, [answer([bad]), answer([first]), answer([second]), "ok"])
    (r,) = ToolEnv(tok, max_turns=4).rollout(engine, [t], 1, SamplingParams())
    ep = r.episode
    assert not ep["turns"][0]["results"][0]["ok"] and "invalid arguments" in ep["turns"][0]["results"][0]["content"]
    assert "invalid arguments" in tok.decode(engine.contexts[1][0])  # the model read the error
    assert ep["turns"][1]["results"][0]["ok"] and ep["tool_errors"] == 1 and ep["stop"] == "answer"
    assert [c["name"] for c in ep["calls"]] == ["add_days", "add_days", "days_between"]


def test_max_turns_ends_an_episode(tok):
    t = dates_task()
    engine = ScriptedEngine(tok, [answer([t["ground_truth"][0]])] * 5)
    (r,) = ToolEnv(tok, max_turns=2).rollout(engine, [t], 1, SamplingParams())
    assert engine.turn == 2 and r.episode["stop"] == "max_turns" and r.episode["num_calls"] == 2


def test_unknown_tools_and_unoffered_tools_are_messages(tok):
    t = dates_task()  # offers add_days and days_between, not calculate
    engine = ScriptedEngine(tok, [answer([{"name": "calculate", "arguments": {"expression": "1+1"}},
                                          {"name": "nope", "arguments": {}}]), "sorry"])
    (r,) = ToolEnv(tok).rollout(engine, [t], 1, SamplingParams())
    results = r.episode["turns"][0]["results"]
    assert [x["error"] for x in results] == ["unknown_tool", "unknown_tool"] and "available" in results[0]["content"]


def slow_echo(text: str) -> str:
    """Wait half a second, then echo.

    Args:
        text: What to echo.
    """
    time.sleep(0.5)
    return text


def test_parallel_calls_run_concurrently(tok):
    task = {"id": "p", "messages": [{"role": "user", "content": "echo a, b, c, d"}], "tools": [],
            "ground_truth": []}
    env = ToolEnv(tok, tools=[{"_target_": "tests.test_tool_env.slow_echo"}], timeout_s=5)
    calls = [{"name": "slow_echo", "arguments": {"text": x}} for x in "abcd"]
    engine = ScriptedEngine(tok, [answer(calls), "done"])
    start = time.perf_counter()
    rollouts = env.rollout(engine, [task, task], 1, SamplingParams())  # 8 calls of 0.5 s
    assert time.perf_counter() - start < 2.0  # sequential would take 4 s
    assert [x["content"] for x in rollouts[1].episode["turns"][0]["results"]] == list("abcd")


def test_stateful_tools_get_an_instance_per_episode_and_report_their_state(tok):
    t = kv_task()
    get, put = t["ground_truth"]
    engine = ScriptedEngine(tok, [answer([get]), answer([put]), f"Stored {t['answer']}."])
    env = ToolEnv(tok, tools=[{"_target_": "tools.builtin.KeyValueStore"}])
    a, b = env.rollout(engine, [t, {**t, "initial_state": {"KeyValueStore": {"data": {}}}}], 1, SamplingParams())
    assert a.episode["final_state"] == t["expected_state"]
    assert a.episode["turns"][0]["results"][0]["content"] == t["answer"]  # kv_get read the task's initial state
    assert not b.episode["turns"][0]["results"][0]["ok"]  # the other episode's store was empty: its own instance


def test_a_huge_tool_result_is_cut_with_a_note(tok):
    task = {"id": "f", "messages": [{"role": "user", "content": "flood"}], "tools": [], "ground_truth": []}
    for side, kept in (("right", "first"), ("left", "last")):
        env = ToolEnv(tok, tools=[{"_target_": "tests.test_tool_env.flood_tool"}], max_tool_tokens=50, truncate_side=side)
        engine = ScriptedEngine(tok, [answer([{"name": "flood_tool", "arguments": {"n": 100_000}}]), "ok"])
        (r,) = env.rollout(engine, [task], 1, SamplingParams())
        content = r.episode["turns"][0]["results"][0]["content"]
        assert f"tool output cut: showing the {kept} 50 of" in content and len(tok.encode(content)) < 90
        assert sum(1 for m in r.loss_mask if m == 0) < 120


def flood_tool(n: int) -> str:
    """Return n words.

    Args:
        n: How many.
    """
    return "word " * n


def test_an_episode_that_would_overflow_the_context_ends_with_a_reason(tok):
    task = {"id": "f", "messages": [{"role": "user", "content": "flood"}], "tools": [], "ground_truth": []}
    env = ToolEnv(tok, tools=[{"_target_": "tests.test_tool_env.flood_tool"}], max_tool_tokens=None, max_context=600)
    engine = ScriptedEngine(tok, [answer([{"name": "flood_tool", "arguments": {"n": 5000}}]), "ok"])
    (r,) = env.rollout(engine, [task], 1, SamplingParams())
    assert r.episode["stop"] == "context" and len(r.prompt + r.completion) <= 600 and engine.turn == 1
    # a prompt that fills the window: the episode ends before the model's first turn
    (r,) = ToolEnv(tok, max_context=50).rollout(ScriptedEngine(tok, ["x"]), [dates_task()], 1, SamplingParams())
    assert r.episode["stop"] == "context" and r.completion == [] and r.text == ""
    # the token budget of an episode: turns are cut to what is left, then the episode ends
    env = ToolEnv(tok, max_episode_tokens=40)
    t = dates_task()
    engine = ScriptedEngine(tok, [answer([t["ground_truth"][0]])] * 3)
    (r,) = env.rollout(engine, [t], 1, SamplingParams(max_new_tokens=64))
    assert len(r.completion) <= 40 and r.episode["stop"] in ("max_tokens", "length")


def test_the_next_user_message_comes_after_an_answer(tok):
    t = {**dates_task(), "user_turns": [[{"role": "user", "content": "Now add 3 days to 2026-01-01."}]]}
    follow = {"name": "add_days", "arguments": {"start": "2026-01-01", "days": 3}}
    engine = ScriptedEngine(tok, [answer(t["ground_truth"][:1]), "First done.", answer([follow]), "2026-01-04"])
    (r,) = ToolEnv(tok).rollout(engine, [t], 1, SamplingParams())
    ep = r.episode
    assert [turn["user_turn"] for turn in ep["turns"]] == [0, 0, 1, 1] and ep["stop"] == "answer"
    assert "Now add 3 days" in tok.decode(engine.contexts[2][0]) and ep["final_answer"] == "2026-01-04"


TRIMMING_TEMPLATE = (  # renders assistant content trimmed (Llama-3 style): a model turn with spaces re-renders differently
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'] | trim }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_drift_is_detected_on_a_template_that_re_renders_differently(tok):
    t = dates_task()
    first, second = t["ground_truth"]
    engine = ScriptedEngine(tok, ["   " + answer([first]) + "  ", answer([second]), "done"])
    original = tok.chat_template
    try:
        tok.chat_template = TRIMMING_TEMPLATE
        env = ToolEnv(tok)
        (r,) = env.rollout(engine, [t], 1, SamplingParams())  # the old rindex(turn_text) raised here
        assert r.episode["drift"] is True and env.drift_count == 1 and r.episode["stop"] == "answer"
        (r,) = env.rollout(ScriptedEngine(tok, [answer([first]), answer([second]), "done"]), [t], 1, SamplingParams())
        assert r.episode["drift"] is False and env.drift_count == 1
    finally:
        tok.chat_template = original


def test_the_base_loop_takes_hooks(tok):
    class Echo(MultiTurnEnv):
        """Answers every model turn with a user message until the model says stop."""

        def is_done(self, e, turn):
            return "stopped" if "stop" in turn["text"] else None

        def env_response(self, e, turn):
            return [{"role": "user", "content": f"you said {turn['text']}"}]

    engine = ScriptedEngine(tok, ["hello", "again", "stop now"])
    task = {"id": "e", "messages": [{"role": "user", "content": "hi"}], "tools": []}
    (r,) = Echo(tok, max_turns=5).rollout(engine, [task], 1, SamplingParams())
    assert r.episode["stop"] == "stopped" and r.episode["num_turns"] == 3 and r.episode["drift"] is False


def test_env_config_builds_the_env(tok):
    from envs.base import make_env
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(EnvConfig(name="tool_env", tools=["calculate", {"_target_": "tools.builtin.KeyValueStore"}]))
    env = make_env(cfg, tok)
    assert sorted(s["name"] for s in env.toolbox.specs()) == ["calculate", "kv_delete", "kv_get", "kv_set"]
    with pytest.raises(ValueError, match="unknown keys"):
        make_env(OmegaConf.structured(EnvConfig(name="tool_env", tools=[{"_target_": "tools.builtin.KeyValueStore",
                                                                         "inti": {}}])), tok)
    with pytest.raises(ValueError, match="env.name='nope' is not available"):
        make_env(OmegaConf.structured(EnvConfig(name="nope")), tok)


def test_training_through_the_multi_turn_env(tiny, tmp_path):
    summary = train(tiny("env=tool_env", "data=synthetic_multi_turn", "reward=multi_turn", "trainer.sft.steps=1",
                         "data.n_train=16", "data.n_eval=8", "env.max_episode_tokens=64"))
    assert "after_rl" in summary and summary["sft"]["sft/loss_first"] > 0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in logged if "reward/call_sequence" in m]
    assert train_rows and all(0 <= m["episode/drift"] <= 1 and m["episode/turns"] >= 1 for m in train_rows)
    assert any("eval/episode/turns" in m for m in logged)


def test_mcp_servers_are_tools_of_an_episode_and_a_crash_is_a_message(tok):
    """Real MCP servers over stdio from env.tools: mcp-server-time (from PyPI) and a server that
    crashes on request. Their tools reach the prompt, their results reach the episode; a crash
    is an error message for the model and the server is up again for the next call."""
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    flaky = str(Path(__file__).parent / "fixtures" / "mcp_flaky_server.py")
    cfg = OmegaConf.structured(EnvConfig(name="tool_env", tools=[
        {"mcp": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}},
        {"mcp": {"command": sys.executable, "args": [flaky], "prefix": "flaky_", "timeout_s": 10}}]))
    from envs.base import make_env

    env = make_env(cfg, tok)
    try:
        names = {s["name"] for s in env.toolbox.specs()}
        assert {"get_current_time", "convert_time", "flaky_echo", "flaky_crash"} <= names
        task = {"id": "m", "messages": [{"role": "user", "content": "What time is it in Tokyo?"}], "tools": [],
                "ground_truth": []}
        engine = ScriptedEngine(tok, [answer([{"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}},
                                              {"name": "flaky_crash", "arguments": {}}]),
                                      answer([{"name": "flaky_echo", "arguments": {"text": "still here"}}]), "done"])
        (r,) = env.rollout(engine, [task], 1, SamplingParams())
        assert "get_current_time" in tok.decode(r.prompt)  # listed in the prompt
        first, crashed = r.episode["turns"][0]["results"]
        assert first["ok"] and "Asia/Tokyo" in first["content"] and "Asia/Tokyo" in tok.decode(r.completion)
        assert not crashed["ok"] and "crashed" in crashed["content"]
        assert r.episode["turns"][1]["results"][0] == {"name": "flaky_echo", "content": "still here", "ok": True,
                                                       "error": None}
    finally:
        for source in env.toolbox.sources:
            source.close()
