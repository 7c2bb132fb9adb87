"""Advantage estimators: pure functions of the flat reward vector.

    rewards: [N] with N = prompts x G, each group of G contiguous  ->  advantages: [N]

    grpo       (r - mean_g) / (std_g + eps)      std as torch.std (unbiased), DeepSeekMath
    reinforce  r - mean_g                        REINFORCE with the group mean as baseline
    dr_grpo    r - mean_g                        Dr. GRPO: GRPO without the std division
    rloo       r - mean of the other G-1         leave-one-out baseline, = G/(G-1) (r - mean_g)
"""

from __future__ import annotations

from typing import Callable

import torch

EPS = 1e-4  # as in TRL / verl: a group with std 0 gets advantage 0, not a blow-up


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be flat with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)  # [B, G]


def grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError("grpo needs algo.group_size >= 2 (the std of one sample is undefined)")
    r = _groups(rewards, group_size)  # [B, G]
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + EPS)
    return adv.view(-1)  # [N]


def reinforce(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r = _groups(rewards, group_size)  # [B, G]
    return (r - r.mean(1, keepdim=True)).view(-1)  # [N]


def rloo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError("rloo needs algo.group_size >= 2")
    r = _groups(rewards, group_size)  # [B, G]
    others = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    return (r - others).view(-1)  # [N]


ADVANTAGES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "grpo": grpo,
    "reinforce": reinforce,
    "dr_grpo": reinforce,
    "rloo": rloo,
}


def zero_variance_share(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal: they give no gradient."""
    r = _groups(rewards, group_size)
    return (r.max(1).values == r.min(1).values).float().mean().item()
