"""Crash injection: a smoke run is SIGKILLed at a random moment of a chosen phase (rollout,
update, checkpoint write, checkpoint file, metrics line; see tests/crash_run.py) or at a random
wall-clock time, resumed with trainer.resume=true, and must end with the same final weights,
the same metrics.jsonl and the same held-out scores as a run never stopped. Several seeds;
the long variant (more seeds, every point) is marked slow."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
RUN = ["experiment=smoke", f"trainer.steps={STEPS}", "trainer.keep_last=2"]
# how often one run reaches each point (smoke: no warm-up, one micro-batch per step, a checkpoint every step)
REACHED = {"rollout": STEPS, "update": STEPS, "checkpoint": STEPS + 1, "checkpoint_file": STEPS + 1, "metrics": STEPS + 1}
VARYING = ("time/", "tokens_per_s", "mem/")  # wall-clock and memory: not part of the run's result


def launch(out: Path, *extra: str, crash: tuple[str, int] | None = None) -> subprocess.Popen:
    entry = ["-m", "tests.crash_run", crash[0], str(crash[1])] if crash else ["-m", "rl.train"]
    return subprocess.Popen([sys.executable, *entry, *RUN, f"trainer.output_dir={out}", *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=600)
    proc.stderr_tail = err[-3000:]
    return proc.returncode


def result(out: Path) -> dict:
    """What a finished run leaves: final weights, metrics without timings, the held-out scores."""
    final = out / f"checkpoint-{STEPS}"
    weights = {}
    for file in sorted(final.glob("*.safetensors")):
        weights.update(load_file(file))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith(VARYING)} for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    return {"weights": weights, "metrics": rows, "scores": {k: summary.get(k) for k in ("base", "after_rl")}}


def same(got: dict, want: dict) -> None:
    assert got["weights"].keys() == want["weights"].keys() and got["weights"]
    for name, w in want["weights"].items():
        assert got["weights"][name].equal(w), f"{name} differs after the crash and resume"
    assert got["metrics"] == want["metrics"]
    assert got["scores"] == want["scores"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    started = time.monotonic()
    proc = launch(out)
    assert finish(proc) == 0, proc.stderr_tail
    return result(out), time.monotonic() - started


def crash_and_resume(out: Path, crash: tuple[str, int]) -> dict:
    proc = launch(out, crash=crash)
    assert finish(proc) == -signal.SIGKILL, f"{crash} never reached: {proc.stderr_tail}"
    resumed = launch(out, "trainer.resume=true")
    assert finish(resumed) == 0, resumed.stderr_tail
    return result(out)


def cases(seeds: range) -> list[tuple[str, int]]:
    """(point, n) for every point and seed: the kill lands on a random occurrence of the point."""
    return [(point, random.Random(f"{seed}-{point}").randint(1, reached)) for seed in seeds
            for point, reached in REACHED.items()]


@pytest.mark.parametrize("crash", cases(range(1)), ids=str)
def test_killed_at_a_point_resumes_to_the_same_run(uninterrupted, tmp_path, crash):
    same(crash_and_resume(tmp_path, crash), uninterrupted[0])


@pytest.mark.slow
@pytest.mark.parametrize("crash", cases(range(1, 5)), ids=str)
def test_killed_at_a_point_resumes_to_the_same_run_more_seeds(uninterrupted, tmp_path, crash):
    same(crash_and_resume(tmp_path, crash), uninterrupted[0])


def kill_at_a_random_time(out: Path, seed: int, span_s: float) -> dict:
    """kill -9 from outside at a uniformly random moment of the run (startup excluded), then resume."""
    proc = launch(out)
    time.sleep(random.Random(seed).uniform(0.3, 1.0) * span_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    resumed = launch(out, "trainer.resume=true")
    assert finish(resumed) == 0, resumed.stderr_tail
    return result(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_at_a_random_time_resumes_to_the_same_run(uninterrupted, tmp_path, seed):
    want, span_s = uninterrupted
    same(kill_at_a_random_time(tmp_path, seed, span_s), want)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 10))
def test_killed_at_a_random_time_resumes_to_the_same_run_more_seeds(uninterrupted, tmp_path, seed):
    want, span_s = uninterrupted
    same(kill_at_a_random_time(tmp_path, seed, span_s), want)
