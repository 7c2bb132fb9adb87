"""bench/grpo_vs_trl.py runs end to end: one step of a shrunken tiny preset through this project
and through TRL's GRPOTrainer, printing the documented JSON lines. No timing assertions."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "grpo_vs_trl.py"
KEYS = {"system", "median_step_s", "gen_tok_s", "train_tok_s", "peak_mem_gb", "steps", "preset", "engine",
        "median_gen_s", "gen_time"}
NUMBERS = ("median_step_s", "median_gen_s", "gen_tok_s", "train_tok_s", "peak_mem_gb")


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_grpo_vs_trl_one_step_of_both_systems():
    small = ("--prompt-len", "16", "--completion-len", "8", "--prompts", "2", "--group", "2")
    r = bench("--preset", "tiny", *small, "--steps", "1")
    assert r.returncode == 0, r.stderr[-4000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 3, r.stdout
    ours, trl, last = lines
    assert (ours["system"], trl["system"]) == ("toolcall-rl", "trl")
    for row in (ours, trl):
        assert KEYS <= row.keys(), KEYS - row.keys()
        assert (row["preset"], row["steps"]) == ("tiny", 1)
        assert (row["prompts"], row["group"], row["prompt_len"], row["completion_len"]) == (2, 2, 16, 8)
        for key in NUMBERS:
            assert math.isfinite(row[key]) and row[key] > 0, (row["system"], key, row[key])
    assert ours["engine"] == "hf"
    assert set(last) >= {"ratio", "preset", "engine"}
    assert math.isfinite(last["ratio"]) and last["ratio"] > 0
    assert last["ratio"] == pytest.approx(ours["median_step_s"] / trl["median_step_s"], rel=1e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU presets run here")
def test_gpu_preset_is_refused_without_cuda():
    r = bench("--preset", "qwen2.5-0.5b", "--steps", "1", timeout=120)
    assert r.returncode == 2
    assert "CUDA" in r.stderr and "--preset tiny" in r.stderr
    assert r.stdout == ""
