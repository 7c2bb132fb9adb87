"""The optimizer, by name (trainer.optimizer), for RL and the SFT warm-up alike. The AdamW
variants differ in memory, not in the update:

    adamw        torch's AdamW, multi-tensor (foreach): fast; its temporaries are as large as
                 the trainable parameters for the duration of a step
    adamw_fused  torch's fused AdamW kernel (CPU and CUDA): no such temporaries
    adamw_loop   one parameter at a time (foreach=False): the smallest peak, the slowest step
    adamw_8bit   bitsandbytes' 8-bit AdamW: 2 bytes of state per parameter instead of 8
                 (pip install bitsandbytes; updates differ from AdamW by the quantisation)"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw_fused", "adamw_loop", "adamw_8bit")


def make(name: str, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    params, betas = list(params), tuple(betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    if name == "adamw_loop":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, foreach=False)
    if name == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("trainer.optimizer=adamw_8bit needs bitsandbytes: pip install bitsandbytes "
                              "(or pick adamw_fused / adamw_loop)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"trainer.optimizer={name!r}: use one of {', '.join(OPTIMIZERS)}")
