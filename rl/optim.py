"""The optimizer and the LR schedule. The optimizer is chosen by name (trainer.optimizer), for
RL and the SFT warm-up alike; the AdamW variants differ in memory, not in the update:

    adamw        torch's AdamW, multi-tensor (foreach): fast; its temporaries are as large as
                 the trainable parameters for the duration of a step
    adamw_fused  torch's fused AdamW kernel (CPU and CUDA): no such temporaries
    adamw_loop   one parameter at a time (foreach=False): the smallest peak, the slowest step
    adamw_8bit   AdamW with 8-bit block-quantised moments (rl/adamw8bit.py, plain torch): 2
                 bytes of state per parameter instead of 8; updates differ from AdamW's by the
                 quantisation. Single process (plain or LoRA)
    adamw_8bit_bnb  bitsandbytes' AdamW8bit, the same idea with fused CUDA kernels
                 (pip install bitsandbytes)"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adamw", "adamw_fused", "adamw_loop", "adamw_8bit", "adamw_8bit_bnb")


def make(name: str, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    params, betas = list(params), tuple(betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    if name == "adamw_loop":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, foreach=False)
    if name == "adamw_8bit":
        from torch.distributed.tensor import DTensor

        from rl.adamw8bit import AdamW8bit

        if any(isinstance(p, DTensor) for p in params):
            raise ValueError("trainer.optimizer=adamw_8bit keeps its quantised state per process and cannot shard it "
                             "under torchrun (FSDP2): use adamw, adamw_fused or adamw_loop there")
        return AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adamw_8bit_bnb":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("trainer.optimizer=adamw_8bit_bnb needs bitsandbytes: pip install bitsandbytes "
                              "(or pick adamw_8bit, the plain-torch 8-bit AdamW)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"trainer.optimizer={name!r}: use one of {', '.join(OPTIMIZERS)}")


def make_optimizer(cfg, policy, per_step: int = 1):
    """AdamW and the LR schedule, in RL steps (per_step optimizer steps each)."""
    opt = make(cfg.optimizer, policy.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    total = max(cfg.steps, 1)

    def factor(i: int) -> float:
        step = i / per_step
        if step < cfg.lr_warmup_steps:
            return (step + 1) / cfg.lr_warmup_steps
        progress_ = (step - cfg.lr_warmup_steps) / max(total - cfg.lr_warmup_steps, 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress_)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress_, 1.0)))
        raise ValueError(f"trainer.lr_schedule={cfg.lr_schedule!r}: use constant, linear or cosine")

    factor(0)  # fail on a bad schedule name now, not at the first step
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def set_base_lr(opt, sched, lr: float) -> bool:
    """Make `lr` the schedule's base LR at its current position; True if it changed. A resume
    loads the saved optimizer and schedule, which carry the first launch's LR: this lets a
    resumed run take a new trainer.lr (as the NaN-checkpoint message advises)."""
    if all(base == lr for base in sched.base_lrs):
        return False
    sched.base_lrs = [lr for _ in opt.param_groups]
    for group, lmbda in zip(opt.param_groups, sched.lr_lambdas):
        group["initial_lr"], group["lr"] = lr, lr * lmbda(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in opt.param_groups]
    return True
