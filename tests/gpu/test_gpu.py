"""GPU: a few GRPO steps on a Qwen2.5-0.5B-shaped random-init model with bf16 autocast."""

import json

import pytest
import torch

from rl.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_qwen_shaped_model_trains_in_bf16(tiny, tmp_path):
    cfg = tiny(
        "model=qwen2.5-0.5b-random", "engine=hf", "trainer.device=cuda", "trainer.bf16=true", "trainer.steps=3",
        "trainer.batch_size=4", "algo.group_size=4", "algo.sampling.max_new_tokens=32", "algo.sampling.temperature=1.5",
        "reward.functions=[{_target_: tests.test_training.length_reward, weight: 1.0}]", "reward.exact_match=length_reward",
        "trainer.lr=1e-4",
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in steps)


def test_vllm_colocated_with_sleep_mode_trains(tiny, tmp_path):
    pytest.importorskip("vllm")
    cfg = tiny(
        "model=qwen2.5-0.5b-random", "engine=vllm", "engine.sleep=true", "engine.gpu_memory_utilization=0.3",
        "trainer.device=cuda", "trainer.bf16=true", "trainer.steps=3", "trainer.batch_size=4", "algo.group_size=4",
        "algo.sampling.max_new_tokens=32",
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/sync_s" in r]
    assert len(steps) == 3 and all(r["sync/probe_diff"] < 0.1 for r in steps)
