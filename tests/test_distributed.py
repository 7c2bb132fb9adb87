"""Data parallelism for real: torchrun with 2 CPU processes, gloo, FSDP2.

- One optimizer step on one fixed batch gives the same parameters with 2 ranks as with one
  process (max abs diff <= 1e-5, fp32), for full fine-tuning and for LoRA.
- A 2-rank run of experiment=smoke killed with SIGKILL mid-step and resumed takes the step
  the uninterrupted 2-rank run took; a run with another process count refuses to resume.
- LoRA + SFT warm-up + KL under 2 ranks: the checkpoint is one whole adapter (not rank 0's
  slice) and the KL reference is checkpoint-0.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.procs import descendants, running

ROOT = Path(__file__).parent.parent
DENSE = ["reward.functions=[{_target_: tests.test_distributed.length_reward, weight: 1.0}]",
         "reward.exact_match=length_reward", "trainer.lr=1e-3", "algo.sampling.temperature=1.5"]
PAUSE = "TOOLCALL_RL_TEST_PAUSE_WHEN"  # a path: once it exists, the reward marks itself paused and sleeps


def length_reward(completions, **kwargs):
    """Characters / 50 (a dense reward a random model's samples differ in); pauses where asked."""
    when = os.environ.get(PAUSE)
    if when and Path(when).exists():
        Path(when + f".paused-{os.environ.get('RANK', '0')}").touch()
        time.sleep(600)
    return [len(c) / 50 for c in completions]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """A 2-rank torchrun job; its output goes to a file (a pipe nobody reads could stall it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, output(proc)[-4000:]
    return output(proc)


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [
    ["algo.kl_coef=0.1", "trainer.token_budget=100"],  # full fine-tuning, KL, shared prompts, 1 vs 2 micro-batches
    ["model.lora.r=4", "algo.kl_coef=0.1", "model.gradient_checkpointing=true"],  # LoRA, adapters-off reference
    ["algo.advantage=reinforce_pp", "algo.policy_loss=gspo", "algo.mini_batches=2", "algo.ppo_epochs=2",
     "algo.kl_coef=0.1", "algo.kl_in_reward=true", "algo.entropy_coef=0.01", "algo.tis_cap=2.0"],  # batch whitening
    ["algo.sft_coef=0.5", "algo.mini_batches=2"],  # + the gold answers' NLL of each mini-batch's prompts
], ids=["full", "lora", "recipe", "sft_coef"])
def test_two_ranks_take_the_one_process_step(tmp_path, extra):
    common = ["trainer.lr=1e-3", *extra]
    one = subprocess.run([sys.executable, "tests/dist_step.py", str(tmp_path / "one.pt"), *common], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    finish(torchrun(["tests/dist_step.py", str(tmp_path / "two.pt"), *common]))
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["world"], b["world"]) == (1, 2)
    if "trainer.token_budget=100" in extra:  # ranks with unequal micro-batch counts: the short one pads
        assert b["micro_batches"] == [1, 2]
    assert a["params"].keys() == b["params"].keys()
    diff = max((a["params"][k] - b["params"][k]).abs().max().item() for k in a["params"])
    assert diff <= 1e-5, diff
    assert a["stats"]["grad_norm"] > 0
    # the gold-answer NLL's gradient norm agreed to 5e-5 (the NLL itself to every digit)
    rel = 1e-4 if "algo.sft_coef=0.5" in extra else 1e-5
    keys = ["grad_norm", "entropy", "mismatch/logprob_diff"] + [k for k, on in
                                                                 (("kl", "algo.kl_coef=0.1"), ("sft_nll", "algo.sft_coef=0.5"))
                                                                 if on in extra]
    for key in keys:
        assert b["stats"][key] == pytest.approx(a["stats"][key], rel=rel, abs=1e-6), key


def test_two_rank_run_killed_mid_step_resumes_exactly(tmp_path):
    common = ["-m", "rl.train", "experiment=smoke", *DENSE, "algo.kl_coef=0.1", "trainer.save_every=1", "trainer.steps=3",
              "data.adaptive_floor=0.5"]  # the category shares follow both ranks' rewards, and resume with the checkpoint
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    finish(torchrun([*common, f"trainer.output_dir={whole}"]))

    proc = torchrun([*common, f"trainer.output_dir={broken}"], env={PAUSE: str(broken / "checkpoint-2")})
    deadline = time.monotonic() + 300
    while not list(broken.glob("checkpoint-2.paused-*")):  # step 3 is under way: checkpoint-2 is complete
        assert proc.poll() is None and time.monotonic() < deadline, output(proc)[-3000:]
        time.sleep(0.2)
    job = descendants(proc.pid) | {proc.pid}  # torchrun starts each rank in a session of its own
    for pid in job:  # the whole job, mid-step: as if the machine died
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in job) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in job if running(pid)]
    assert not (broken / "checkpoint-3").exists()

    finish(torchrun([*common, f"trainer.output_dir={broken}", "trainer.resume=true"]))
    a, b = metrics(whole), metrics(broken)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 1, 2, 3]  # rank 0 alone logs, no duplicates
    shares = [k for k in a[-1] if k.startswith("data/share/")]
    assert len(shares) == 4 and any(abs(a[-1][k] - 0.25) > 1e-3 for k in shares)
    for key in ("reward/total", "loss", "grad_norm", "kl", "entropy", "completion_len", "eval/length_reward", *shares):
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-5, abs=1e-7), key
    assert a[-1]["kl"] > 0 and a[-1]["grad_norm"] > 0
    assert (broken / "checkpoint-3" / "dcp").is_dir() and (broken / "checkpoint-3" / "config.json").exists()

    from rl.train import train
    from tests.conftest import tiny_cfg

    with pytest.raises(RuntimeError, match="written by 2 process"):  # one process cannot take over 2 ranks' shards
        train(tiny_cfg(broken, *DENSE, "algo.kl_coef=0.1", "trainer.steps=4", "trainer.resume=true"))


def test_lora_with_warm_up_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    common = ["-m", "rl.train", "experiment=smoke", *DENSE, "model.lora.r=4", "algo.kl_coef=0.1", "trainer.sft.steps=2",
              "trainer.sft.batch_size=2", "trainer.sft.lr=1e-2", "trainer.sft.eval=false", "trainer.lr=1e-2",
              f"trainer.output_dir={out}"]
    finish(torchrun(common))
    steps = [r for r in metrics(out) if "kl" in r]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-7) and steps[-1]["kl"] > 0  # reference = checkpoint-0
    finish(torchrun([*common, "trainer.steps=3", "trainer.resume=true"]))  # adapters + AdamW state from dcp/
    assert [r["step"] for r in metrics(out)] == [0, 1, 2, 3] and metrics(out)[-1]["kl"] > 0

    from peft import PeftModel

    from rl.setup import Setup
    from tests.conftest import tiny_cfg

    s = Setup.build(tiny_cfg(tmp_path / "check"))
    adapted = PeftModel.from_pretrained(s.policy.model, str(out / "checkpoint-2"))  # PEFT's loader: all of it
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # every adapter trained, none a zero-filled slice
