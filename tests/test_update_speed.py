"""The update's shortcuts change nothing they should not: the first mini-batch's pi_old comes
from its own first forward (one no-grad pass fewer) with the same resulting weights, and
trainer.cpu_bf16 picks bf16 autocast on CPU (null: where the CPU has AMX)."""

import math

import pytest
import torch

from rl import setup as setup_
from rl.optim import make_optimizer
from rl.policy import Policy
from rl.setup import Setup, train_bf16
from rl.train import train, update_policy
from envs.types import Rollout
from tests.test_training import DENSE, metrics


def rollouts_of(groups: int, G: int) -> list[Rollout]:
    torch.manual_seed(0)
    out = []
    for g in range(groups):
        prompt = torch.randint(10, 1000, (6 + 3 * g,)).tolist()
        for i in range(G):
            c = torch.randint(10, 1000, (2 + i,)).tolist()
            out.append(Rollout({}, prompt, c, [1] * len(c), [-1.0] * len(c), "", "stop"))
    return out


@pytest.mark.parametrize("recipe", ["gspo_pp", "grpo"])
def test_first_mini_batch_takes_pi_old_from_its_own_forward(tiny, monkeypatch, recipe):
    """Two mini-batches: the no-grad pi_old pass covers only the second one's rows, and the
    weights after the update equal those of the full pass (the old path) to rounding."""
    cfg = tiny(f"algo={recipe}", "algo.mini_batches=2", "algo.group_size=3", "trainer.lr=1e-2",
               "algo.clip_low=0.2", "algo.clip_high=0.2")
    rollouts, rewards = rollouts_of(4, 3), torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 1.0, 0.0])
    results = {}
    for deterministic in (False, True):
        s = Setup.build(cfg)  # the same seeded init each time
        monkeypatch.setattr(Policy, "deterministic", property(lambda self: deterministic))
        rows = []
        real = Policy.logprobs

        def spy(self, input_ids, *args, **kwargs):
            if not torch.is_grad_enabled():
                rows.append(input_ids.shape[0])
            return real(self, input_ids, *args, **kwargs)

        monkeypatch.setattr(Policy, "logprobs", spy)
        opt, sched = make_optimizer(cfg.trainer, s.policy, 2)
        stats = update_policy(cfg, s.policy, opt, sched, rollouts, rewards, s)
        monkeypatch.setattr(Policy, "logprobs", real)
        results[deterministic] = ([p.detach().clone() for p in s.policy.parameters()], sum(rows), stats)
    (full, full_rows, full_stats), (short, short_rows, short_stats) = results[False], results[True]
    assert full_rows == len(rollouts)  # every row before the first optimizer step
    assert short_rows == len(rollouts) // 2  # the second mini-batch's rows only
    for a, b in zip(full, short):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert short_stats["loss"] == pytest.approx(full_stats["loss"], rel=1e-5, abs=1e-7)


def test_dropout_makes_the_policy_non_deterministic(tiny):
    s = Setup.build(tiny())
    assert s.policy.deterministic  # the tiny model has no dropout
    s.policy.config.attention_dropout = 0.1
    assert not s.policy.deterministic


def test_train_bf16_follows_the_device_and_cpu_bf16(tiny, monkeypatch):
    t = tiny().trainer
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train_bf16(t, cuda) is True and train_bf16(t, cpu) is False  # trainer.bf16 is CUDA's
    t.cpu_bf16 = True
    assert train_bf16(t, cpu) is True
    t.bf16 = False
    assert train_bf16(t, cuda) is False
    t.cpu_bf16 = None  # where the CPU has AMX
    for amx in (False, True):
        monkeypatch.setattr(setup_, "cpu_has_amx", lambda amx=amx: amx)
        assert train_bf16(t, cpu) is amx


def test_cpu_bf16_trains_the_tiny_model(tiny, tmp_path):
    """trainer.cpu_bf16=true: the warm-up and the RL update run under bf16 autocast on CPU,
    with a finite loss and parameters that move."""
    train(tiny(*DENSE, "trainer.cpu_bf16=true", "trainer.sft.steps=1", "trainer.sft.batch_size=2",
               "algo=grpo", "algo.mini_batches=2", "trainer.lr=1e-3", "algo.sampling.temperature=1.5"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    assert all(math.isfinite(r["mismatch/logprob_diff"]) for r in steps)
