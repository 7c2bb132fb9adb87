"""A training run that is SIGKILLed the N-th time it reaches POINT (crash injection):

    python -m tests.crash_run POINT N [hydra overrides...]

POINT is where the kill lands:
    rollout          a batch has been sampled and scored, before the update uses it
    update           a micro-batch's loss is computed, mid-update (gradients half accumulated)
    checkpoint       a checkpoint's files are in its temporary folder, before its manifest
    checkpoint_file  halfway through writing a checkpoint file (a torn trainer_state.pt)
    metrics          halfway through a metrics.jsonl line (a torn line)

The kill is a real SIGKILL of this process: no handler, flush or finally block runs."""

import io
import json
import os
import signal
import sys
from pathlib import Path

import torch

from rl import checkpoint, metrics, train

POINTS = ("rollout", "update", "checkpoint", "checkpoint_file", "metrics")
_reached = 0


def due(n: int) -> bool:
    global _reached
    _reached += 1
    return _reached == n


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after(module, name: str, n: int) -> None:
    fn = getattr(module, name)

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if due(n):
            die()
        return out

    setattr(module, name, wrapped)


def kill_before(module, name: str, n: int) -> None:
    fn = getattr(module, name)

    def wrapped(*args, **kwargs):
        if due(n):
            die()
        return fn(*args, **kwargs)

    setattr(module, name, wrapped)


def tear_torch_save(n: int) -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and due(n):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            die()
        return real(obj, f, *args, **kwargs)

    torch.save = save


def tear_metrics_line(n: int) -> None:
    real = metrics.MetricsLogger.log

    def log(self, step, values):
        if self.jsonl and due(n):
            line = json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n"
            with self.paths["metrics"].open("a") as f:
                f.write(line[: len(line) // 2])
            die()
        return real(self, step, values)

    metrics.MetricsLogger.log = log


def arm(point: str, n: int) -> None:
    if point == "rollout":
        kill_after(train, "sample_and_score", n)
    elif point == "update":
        kill_after(train, "policy_loss", n)
    elif point == "checkpoint":
        kill_before(checkpoint, "write_manifest", n)
    elif point == "checkpoint_file":
        tear_torch_save(n)
    elif point == "metrics":
        tear_metrics_line(n)
    else:
        raise SystemExit(f"unknown point {point!r}: use one of {', '.join(POINTS)}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    train.main()
