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


# ---- scale: FSDP2 over nccl with bf16 mixed precision, LoRA with vLLM -----------------------

def _torchrun(args, nproc):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(port), *args], cwd=Path(__file__).parent.parent.parent,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


@pytest.mark.parametrize("extra", [[], ["model.lora.r=8"], ["trainer.fsdp.cpu_offload=true"]], ids=["full", "lora", "offload"])
def test_fsdp_nccl_bf16_step_matches_one_process(tmp_path, extra):
    """nccl + MixedPrecisionPolicy(bf16 params, fp32 reduction) on 2 GPUs vs one process under bf16
    autocast: equal up to bf16 rounding (the CPU suite checks 1e-5 in fp32)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    import subprocess
    import sys
    from pathlib import Path

    common = ["model=qwen2.5-0.5b-random", "trainer.device=cuda", "trainer.bf16=true", "trainer.lr=1e-4", *extra]
    root = Path(__file__).parent.parent.parent
    one = subprocess.run([sys.executable, "tests/dist_step.py", str(tmp_path / "one.pt"), *common], cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-4000:]
    _torchrun(["tests/dist_step.py", str(tmp_path / "two.pt"), *common], 2)
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert b["world"] == 2
    assert b["stats"]["grad_norm"] == pytest.approx(a["stats"]["grad_norm"], rel=0.05)
    diff = max((a["params"][k].float() - b["params"][k].float()).abs().max().item() for k in a["params"])
    assert diff < 5e-3, diff


def test_torchrun_training_with_nccl_writes_one_log(tmp_path):
    """FSDP2 over nccl with LoRA and gradient checkpointing end to end (1 rank on a 1-GPU machine)."""
    _torchrun(["-m", "rl.train", "experiment=smoke", "model=qwen2.5-0.5b-random", "trainer.device=cuda",
               "trainer.bf16=true", "model.lora.r=8", "model.gradient_checkpointing=true", "trainer.steps=2",
               f"trainer.output_dir={tmp_path}"], min(2, torch.cuda.device_count()))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["mem/cuda_max_allocated_gb"] > 0 for r in rows[1:])


def test_lora_policy_with_vllm_sync(tiny, tmp_path):
    pytest.importorskip("vllm")
    cfg = tiny(
        "model=qwen2.5-0.5b-random", "model.lora.r=16", "engine=vllm", "engine.gpu_memory_utilization=0.3",
        "trainer.device=cuda", "trainer.bf16=true", "trainer.steps=3", "trainer.batch_size=4", "algo.group_size=4",
        "algo.sampling.max_new_tokens=32", "algo.sampling.temperature=1.5", "trainer.lr=1e-3",
        "reward.functions=[{_target_: tests.test_training.length_reward, weight: 1.0}]", "reward.exact_match=length_reward",
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/sync_s" in r]
    assert len(steps) == 3 and all(r["sync/probe_diff"] < 0.1 for r in steps)
    assert (tmp_path / "checkpoint-3" / "adapter_model.safetensors").exists()
