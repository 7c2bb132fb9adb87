"""Metric sinks: a rich console line per step, metrics.jsonl, TensorBoard, optionally W&B;
plus samples.jsonl with a few rollouts per step (prompt, completion, reward, reason)."""

from __future__ import annotations

import functools
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

# what the console line shows, in order, when present
HEADLINE = ("base/exact_match", "sft/loss_last", "reward/total", "reward/tool_n1", "eval/exact_match", "zero_variance_groups", "loss", "kl", "entropy",
            "grad_norm", "tokens_per_s", "time/step_s")


def memory_metrics(dist=None) -> dict[str, float]:
    """Peak resident memory of this process (and CUDA's peak allocation), the max over ranks."""
    import resource

    import torch

    m = {"mem/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # Linux: KiB
    if torch.cuda.is_available():
        m["mem/cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return dist.max(m) if dist is not None else m


def release_memory(device) -> None:
    """On CPU, hand the heap pages freed since the last call back to the OS. torch allocates
    CPU tensors with malloc, and glibc keeps freed pages resident, scattered between live blocks:
    over an RL run the embedded default's RSS crept from 2.8 to 3.9 GB while what was alive
    stayed ~2.8 GB. Called after each micro-batch's backward (its activations just died); a few
    ms. Not glibc (musl, macOS): nothing to do."""
    libc = _glibc()
    if device.type == "cpu" and libc is not None:
        libc.malloc_trim(0)


MMAP_THRESHOLD = 288 * 1024  # bytes, under trainer.return_freed_memory: 8-bit AdamW's 256 KiB chunks stay on the heap


def return_freed_memory() -> bool:
    """trainer.return_freed_memory: from now on glibc hands freed blocks of MMAP_THRESHOLD
    (288 KiB) and more straight back to the OS (a fixed mmap threshold instead of one that grows
    to 32 MiB, and no trim slack), and smaller ones go back at each `release_memory`: RSS stays
    close to what is alive. Costs page faults on every new large tensor, so the threshold trades
    memory for time. On the 2-core Xeon, the embedded default (seed 1) peaked at 2.91 GiB at 288
    KiB and 3.02 GiB at 512 KiB; with 32 held-out tasks (seed 0) at 2.98 GiB and 3.11 GiB at 512
    KiB and 1 MiB, training in 5.9 and 5.3 min. One group's forward+backward took 2.8 s at 128
    KiB (the earlier setting), 2.7 s at 256 KiB, 2.5 s at 512 KiB and 2.2 s at 1 MiB. False
    where malloc is not glibc's."""
    libc = _glibc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 0))


@functools.cache
def _glibc():
    """glibc, loaded once (release_memory runs after every micro-batch), or None elsewhere."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  both exist: it is glibc
        return libc
    except (OSError, AttributeError):
        return None


class Timings:
    """Wall time per phase, summed over a step: `with timings("reward"): ...`; `pop()` gives
    {"time/<phase>_s": seconds} and starts the next step from zero. Phases that run on the
    device synchronise it first, so its queued work is counted where it was queued."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}_s": v for k, v in self.seconds.items()}, {}
        return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class MetricsLogger:
    """enabled=False (every rank but 0 under torchrun): every method does nothing."""

    def __init__(self, cfg, output_dir: Path, resume_step: int | None, enabled: bool = True, run_config: dict | None = None):
        self.enabled = enabled
        self.dir = output_dir
        self.console = Console(stderr=True) if cfg.console and enabled else None
        self.samples_per_step = cfg.samples_per_step
        self.jsonl, self.tb, self.wandb = cfg.jsonl and enabled, None, None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths = {"metrics": self.dir / "metrics.jsonl", "samples": self.dir / "samples.jsonl"}
        for path in self.paths.values():
            # a resumed run rewrites history after its checkpoint instead of duplicating it
            _truncate_after(path, resume_step if resume_step is not None else -1, keep_file=resume_step is not None)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ModuleNotFoundError:
                raise ModuleNotFoundError("logger.wandb=true needs wandb: pip install 'toolcall-rl[wandb]' "
                                          "(or pip install wandb), or drop logger.wandb") from None
            # the resolved run config, so W&B can filter and compare runs by any setting
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(self.dir), resume="allow", config=run_config)

    def log(self, step: int, metrics: dict) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.jsonl:
            with self.paths["metrics"].open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb:
            for k, v in metrics.items():
                if math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(metrics, step=step)
        if self.console:
            shown = [f"{k.split('/')[-1] if k.startswith('time') else k}={metrics[k]:.3g}" for k in HEADLINE if k in metrics]
            self.console.log(f"step {step}: " + "  ".join(shown))

    def say(self, message: str) -> None:
        if self.console:
            self.console.log(message)

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with self.paths["samples"].open("a") as f:
            for row in rows[: self.samples_per_step]:
                f.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")

    def table(self, title: str, results: dict[str, dict[str, float]]) -> None:
        """results: split name -> {metric: value}."""
        if not self.console:
            return
        table = Table(title=title)
        columns = sorted({k for r in results.values() for k in r})
        table.add_column("set")
        for c in columns:
            table.add_column(c, justify="right")
        for name, r in results.items():
            table.add_row(name, *(f"{r[c]:.3f}" if c in r else "" for c in columns))
        self.console.print(table)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _truncate_after(path: Path, step: int, keep_file: bool) -> None:
    if not path.exists():
        return
    if not keep_file:
        path.unlink()
        return
    kept = [line for line in path.read_text().splitlines() if line and _step(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _step(line: str) -> float:
    """A line's step; a torn line (the process was killed mid-write) counts as after any step."""
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:
        return float("inf")
