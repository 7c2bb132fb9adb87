"""Training on a tiny random model: parameters change and the loss is finite; the shared-
prompt update equals the plain one; a resumed run takes the same next step as an
uninterrupted one; nothing is overwritten by accident."""

import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl.batching import collate
from rl.logprobs import token_logprobs
from rl.setup import CONF_DIR
from rl.train import train
from envs.types import Rollout


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def length_reward(completions, **kwargs):
    """A dense reward a random model's samples differ in: characters per completion / 50."""
    return [len(c) / 50 for c in completions]


DENSE = ["reward.functions=[{_target_: tests.test_training.length_reward, weight: 1.0}]", "reward.exact_match=length_reward"]


def test_parameters_change_and_loss_is_finite(tiny, tmp_path, monkeypatch):
    seen = {}
    from rl import checkpoint

    real_save = checkpoint.save

    def spy(output_dir, step, policy, tokenizer, opt, state, keep_last):
        seen[step] = {k: v.clone() for k, v in policy.model.state_dict().items()}
        return real_save(output_dir, step, policy, tokenizer, opt, state, keep_last)

    monkeypatch.setattr(checkpoint, "save", spy)
    train(tiny(*DENSE, "trainer.lr=1e-3", "algo.group_size=4", "algo.sampling.temperature=1.5"))
    rows = metrics(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert any(r["grad_norm"] > 0 for r in steps)
    changed = [k for k in seen[0] if not torch.equal(seen[0][k], seen[2][k])]
    assert len(changed) >= len(seen[0]) // 2, changed
    split = ["generate", "reward", "forward_backward", "optimizer", "update", "sync", "step"]
    for r in steps:  # the profile split: every phase timed, the parts within the step
        assert all(r[f"time/{k}_s"] >= 0 for k in split), r
        parts = sum(r[f"time/{k}_s"] for k in ("generate", "reward", "update", "sync"))
        assert parts <= r["time/step_s"] * 1.01 + 1e-3
        assert r["time/forward_backward_s"] + r["time/optimizer_s"] <= r["time/update_s"] * 1.01 + 1e-3


def test_shared_prompt_update_equals_plain_update(tiny):
    from rl.setup import Setup

    s = Setup.build(tiny())
    torch.manual_seed(0)
    rollouts = []
    for g in range(2):
        prompt = torch.randint(10, 1000, (7 + 4 * g,)).tolist()
        for i in range(3):
            c = torch.randint(10, 1000, (3 + 2 * i,)).tolist()
            rollouts.append(Rollout({}, prompt, c, [1] * len(c), [0.0] * len(c), "", "stop"))
    b = collate(rollouts, torch.zeros(6), s.tokenizer.pad_token_id, "cpu")
    results = []
    for group_size in (1, 3):
        s.policy.module.zero_grad()
        lp, _ = token_logprobs(s.policy.model, b.input_ids, b.attention_mask, b.loss_mask.shape[1], 1.0, 16, group_size)
        (lp * b.loss_mask).sum().backward()
        results.append((lp * b.loss_mask, [p.grad.clone() for p in s.policy.parameters()]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    for plain, shared in zip(results[0][1], results[1][1]):
        assert torch.allclose(plain, shared, atol=1e-5)


@pytest.mark.parametrize("algo", [["algo=grpo"], ["algo=reinforce"], ["algo=grpo", "algo.kl_coef=0.1", "trainer.keep_last=1"],
                                  ["algo=grpo", "data.adaptive_floor=0.5"]])
def test_resume_takes_the_same_next_step(tiny, tmp_path, algo):
    common = [*DENSE, *algo, "trainer.lr=1e-3", "algo.sampling.temperature=1.5", "trainer.save_every=1"]
    whole = tmp_path / "whole"
    train(tiny(*common, "trainer.steps=3", f"trainer.output_dir={whole}"))
    broken = tmp_path / "broken"
    train(tiny(*common, "trainer.steps=2", f"trainer.output_dir={broken}"))  # the run "dies" after step 2
    train(tiny(*common, "trainer.steps=3", f"trainer.output_dir={broken}", "trainer.resume=true"))
    a, b = metrics(whole), metrics(broken)
    assert [r["step"] for r in b] == [r["step"] for r in a]  # no duplicated history
    last_a, last_b = a[-1], b[-1]
    shares = tuple(k for k in last_a if k.startswith("data/share/"))  # adaptive shares: restored with the checkpoint
    assert bool(shares) == ("data.adaptive_floor=0.5" in algo)
    assert not shares or any(abs(last_a[k] - 0.25) > 1e-3 for k in shares)  # 4 equal categories, moved by the rewards
    for key in ("reward/total", "loss", "grad_norm", "completion_len", "entropy") + (("kl",) if "kl" in last_a else ()) + shares:
        assert last_b[key] == pytest.approx(last_a[key], rel=1e-5, abs=1e-7), key


def test_fresh_run_refuses_to_overwrite_checkpoints(tiny, tmp_path):
    train(tiny())
    with pytest.raises(FileExistsError, match="trainer.resume=true"):
        train(tiny())


def test_kl_and_several_updates_per_batch_run(tiny, tmp_path):
    train(tiny(*DENSE, "algo.kl_coef=0.1", "algo.ppo_epochs=2", "trainer.lr=1e-3", "algo.sampling.temperature=1.5"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert all("kl" in r and r["kl"] >= 0 for r in steps)
    assert steps[-1]["kl"] > 0  # the policy moved away from the reference


def test_gradient_checkpointing_and_plain_prompt_path_train(tiny, tmp_path):
    train(tiny(*DENSE, "model.gradient_checkpointing=true", "trainer.lr=1e-3", "algo.sampling.temperature=1.5",
               "trainer.token_budget=64"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert all(r["micro_batches"] >= 2 for r in steps)  # the small budget split the batch
    assert any(r["grad_norm"] > 0 for r in steps)


RECIPES = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_the_tiny_model(tiny, tmp_path, recipe):
    """Each conf/algo recipe runs end to end: finite loss, a gradient, parameters that move."""
    from safetensors.torch import load_file

    extra = ["algo.overlong_buffer=4"] if recipe == "dapo" else []  # smoke samples 8 tokens
    train(tiny(*DENSE, f"algo={recipe}", *extra, "trainer.lr=1e-3", "algo.sampling.temperature=1.5",
               "algo.sampling.max_new_tokens=8", "trainer.keep_last=3"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    assert any(r["grad_norm"] > 0 for r in steps)
    assert all("mismatch/max_ratio" in r for r in steps)
    before, after = ({k: v for f in sorted((tmp_path / f"checkpoint-{i}").glob("*.safetensors")) for k, v in load_file(f).items()}
                     for i in (0, 2))
    assert before
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2


def constant_reward(completions, **kwargs):
    """Every completion scores the same: every advantage is 0, so no policy gradient."""
    return [1.0] * len(completions)


def test_sft_coef_trains_on_the_batch_gold_answers_where_rl_has_no_gradient(tiny, tmp_path):
    """algo.sft_coef (PPO-ptx): with all advantages 0 the only gradient is the gold answers'
    NLL, which falls over the steps; without it the same run has a zero gradient."""
    const = ["reward.functions=[{_target_: tests.test_training.constant_reward, weight: 1.0}]",
             "reward.exact_match=constant_reward", "trainer.lr=3e-3", "trainer.steps=4", "trainer.save_every=0",
             "algo.sampling.temperature=1.5"]
    train(tiny(*const, "algo.sft_coef=1.0"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert all(r["grad_norm"] > 0 and math.isfinite(r["sft_nll"]) for r in steps)
    assert steps[-1]["sft_nll"] < steps[0]["sft_nll"] - 0.5, [r["sft_nll"] for r in steps]
    train(tiny(*const, "algo.sft_coef=0.0", f"trainer.output_dir={tmp_path / 'off'}"))
    off = [r for r in metrics(tmp_path / "off") if "loss" in r]
    assert all(r["grad_norm"] == 0 and "sft_nll" not in r for r in off)


def test_gold_nll_backward_is_coef_times_the_mean_gold_token_nll(tiny, tmp_path):
    """The returned NLL is the mean over gold tokens of -log p, summed by hand from the model's
    logits one task at a time, and the gradient scales with coef."""
    from rl.setup import Setup
    from rl.sft import gold_nll_backward, gold_rollouts

    s = Setup.build(tiny("trainer.bf16=false"))
    tasks = s.train_tasks[:3]
    policy, model = s.policy, s.policy.model
    total, count = 0.0, 0
    with torch.no_grad():
        for r in gold_rollouts(s.env, s.tokenizer, tasks):
            ids = torch.tensor([r.prompt + r.completion])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # [T, V]
            for j, tok in enumerate(r.completion):
                total -= logp[len(r.prompt) + j - 1, tok].item()
                count += 1
    gold = gold_rollouts(s.env, s.tokenizer, tasks)
    per_answer = gold_nll_backward(policy, s.tokenizer, gold, 1.0, 64, 16, False, agg="seq-mean-token-sum")
    assert per_answer == pytest.approx(total / len(tasks), rel=1e-4)  # algo.sft_agg: the NLL per gold answer
    grads = {}
    for coef in (1.0, 2.5):
        model.zero_grad(set_to_none=True)
        nll = gold_nll_backward(policy, s.tokenizer, gold, coef, token_budget=64, chunk=16, bf16=False)
        assert nll == pytest.approx(total / count, rel=1e-4)
        grads[coef] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(grads[2.5], 2.5 * grads[1.0], rtol=1e-4, atol=1e-7)
    from rl.algo import check

    with pytest.raises(ValueError, match="algo.sft_coef=-1"):
        check(tiny("algo.sft_coef=-1").algo, 2, 1)
    with pytest.raises(ValueError, match="algo.sft_agg='seq-mean-token-sum-norm' is unknown"):
        check(tiny("algo.sft_agg=seq-mean-token-sum-norm").algo, 2, 1)


def test_memory_saving_optimizers_take_adamws_step():
    from rl import optim

    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    grads = [torch.randn_like(p) for p in start]
    after = {}
    for name in ("adamw", "adamw_fused", "adamw_loop"):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = optim.make(name, params, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        after[name] = [p.detach() for p in params]
    for name in ("adamw_fused", "adamw_loop"):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after[name], after["adamw"])), name
    assert not torch.equal(after["adamw"][0], start[0])
    with pytest.raises(ValueError, match="trainer.optimizer='sgdd'"):
        optim.make("sgdd", start, lr=1e-2)


def test_bitsandbytes_adamw_without_bitsandbytes_says_how_to_install(monkeypatch):
    import sys

    from rl import optim

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        optim.make("adamw_8bit_bnb", [torch.zeros(2, requires_grad=True)], lr=1e-3)


RSS_PROBE = """
import sys, torch
from rl.metrics import return_freed_memory
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
if sys.argv[1] == 'on':
    assert return_freed_memory()
big = torch.ones(16 * 2**18); del big  # a freed 16 MB block: glibc's threshold grows past 1 MB tensors
base = rss()
blocks = [torch.ones(2**18) for _ in range(300)]  # 300 x 1 MB
del blocks[::2]  # every other one freed: holes between live blocks
print(round(rss() - base))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc", reason="glibc on Linux")
def test_return_freed_memory_leaves_only_what_is_alive_resident():
    """trainer.return_freed_memory (a process-wide malloc setting, so in subprocesses): with it,
    freeing half of 300 1-MB tensors takes their 150 MB out of RSS; without it glibc keeps them."""
    grown = {mode: int(subprocess.run([sys.executable, "-c", RSS_PROBE, mode], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for mode in ("off", "on")}
    assert grown["on"] <= 170 and grown["off"] >= 280, grown
