"""Advantage estimators and reward shaping: pure functions of the flat reward vector of the
whole batch (every rank's groups, gathered), as in verl's core_algos.

    rewards: [N] with N = prompts x G, each group of G contiguous  ->  advantages: [N]

    grpo          (r - mean_g) / (std_g + eps)        DeepSeekMath; std as torch.std (unbiased)
    dr_grpo       r - mean_g                          Dr. GRPO: no std division
    rloo          r - mean of the other G-1           = G/(G-1) (r - mean_g)
    reinforce     r - b, b = mean_g (algo.baseline=group) or mean of the batch (=batch)
    reinforce_pp  (r - mean_B) / (std_B + eps)        REINFORCE++: whitened over the global batch

Every estimator is fn(rewards [N], algo) -> [N]; algo is the algo config (group_size,
baseline). Shaping before the estimator:

    multi_reward      GDPO: each reward function normalised within its group, then the weighted sum
    overlong_penalty  DAPO's soft overlong punishment from completion lengths
"""

from __future__ import annotations

from typing import Callable

import torch

EPS = 1e-4  # as in TRL / verl: a group with std 0 gets advantage 0, not a blow-up


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be flat with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)  # [B, G]


def grpo(rewards: torch.Tensor, algo) -> torch.Tensor:
    r = _groups(rewards, algo.group_size)  # [B, G]
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + EPS)
    return adv.view(-1)  # [N]


def dr_grpo(rewards: torch.Tensor, algo) -> torch.Tensor:
    r = _groups(rewards, algo.group_size)  # [B, G]
    return (r - r.mean(1, keepdim=True)).view(-1)  # [N]


def rloo(rewards: torch.Tensor, algo) -> torch.Tensor:
    G = algo.group_size
    r = _groups(rewards, G)  # [B, G]
    others = (r.sum(1, keepdim=True) - r) / (G - 1)  # [B, G] mean of the other G-1
    return (r - others).view(-1)  # [N]


def reinforce(rewards: torch.Tensor, algo) -> torch.Tensor:
    r = _groups(rewards, algo.group_size)  # [B, G]
    baseline = r.mean(1, keepdim=True) if algo.baseline == "group" else r.mean()  # [B, 1] or []
    return (r - baseline).view(-1)  # [N]


def reinforce_pp(rewards: torch.Tensor, algo) -> torch.Tensor:
    r = rewards.float()  # [N]
    std = r.std() if r.numel() > 1 else torch.zeros(())
    return (r - r.mean()) / (std + EPS)  # [N]


ADVANTAGES: dict[str, Callable[[torch.Tensor, object], torch.Tensor]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce": reinforce,
    "reinforce_pp": reinforce_pp,
}
GROUP_ESTIMATORS = {"grpo", "dr_grpo", "rloo"}  # need G >= 2 (reinforce too with baseline=group)


def has_group_baseline(algo) -> bool:
    """The advantage compares a completion only with its own group (GROUP_ESTIMATORS, or
    reinforce with baseline=group): a group whose rewards agree gets advantage 0."""
    return algo.advantage in GROUP_ESTIMATORS or (algo.advantage == "reinforce" and algo.baseline == "group")


def multi_reward(per_function: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """GDPO (TRL's multi_objective_aggregation="normalize_then_sum"): per_function [N, K]
    scores of K reward functions, weights [K] -> [N] weighted sum of each function's scores
    normalised within its group, so a function with a large range cannot drown the others.
    NaN (a function returned None: it does not apply) is left out of its group's mean and std
    and adds nothing, as TRL's nanmean/nanstd/nansum do."""
    n, k = per_function.shape
    r = per_function.float().view(-1, group_size, k)  # [B, G, K]
    seen = ~torch.isnan(r)  # [B, G, K]
    count = seen.sum(1, keepdim=True)  # [B, 1, K]
    mean = torch.where(seen, r, 0.0).sum(1, keepdim=True) / count.clamp(min=1)  # [B, 1, K]
    centred = torch.where(seen, r - mean, 0.0)  # [B, G, K]
    std = (centred.pow(2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # [B, 1, K] unbiased, as torch.std
    normed = centred / (std + EPS)  # [B, G, K]; 0 where skipped
    return (normed.view(n, k) * weights.float()[None, :]).sum(1)  # [N]


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: lengths [N] -> [N] added to the reward. 0 up to
    max_len - buffer, then falling linearly to -penalty at max_len, and -penalty beyond."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float)
    over = (lengths.float() - (max_len - buffer)).clamp(min=0, max=buffer)  # [N] tokens into the buffer
    return -penalty * over / buffer  # [N]


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] -> [B] bool: groups whose rewards are all equal (they give no policy gradient)."""
    r = _groups(rewards, group_size)  # [B, G]
    return r.max(1).values == r.min(1).values


def zero_variance_share(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal."""
    return zero_variance_groups(rewards, group_size).float().mean().item()
