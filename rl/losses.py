"""Policy losses, KL estimators and loss aggregation: three independent registries (as in
verl's core_algos), all pure tensor functions on per-token values.

Shapes: logprobs, old_logprobs, ref_logprobs, mask: [b, T]; advantages: [b] (per sequence).
"""

from __future__ import annotations

from typing import Callable

import torch


def reinforce_loss(logprobs, old_logprobs, advantages, clip_low: float, clip_high: float):
    """-A * log pi(y_t): the log-derivative trick, one term per token."""
    loss = -advantages[:, None] * logprobs  # [b, T]
    return loss, {"clipped": torch.zeros_like(logprobs)}


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low: float, clip_high: float):
    """-min(rho A, clip(rho, 1-low, 1+high) A) with rho = pi / pi_old (GRPO, DAPO's clip-higher)."""
    ratio = torch.exp(logprobs - old_logprobs)  # [b, T]
    adv = advantages[:, None]  # [b, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)  # [b, T]
    return loss, {"clipped": (clipped < unclipped).float()}


POLICY_LOSSES: dict[str, Callable] = {"reinforce": reinforce_loss, "ppo_clip": ppo_clip_loss}


def kl_k1(logprobs, ref_logprobs):
    return logprobs - ref_logprobs  # [b, T]


def kl_k2(logprobs, ref_logprobs):
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [b, T]


def kl_k3(logprobs, ref_logprobs):
    """Schulman's unbiased, always >= 0 estimator: exp(r) - r - 1 with r = log ref - log pi."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1  # [b, T]


KL_ESTIMATORS: dict[str, Callable] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# Aggregations reduce [b, T] to a scalar. They SUM and divide by a normaliser counted over
# the whole batch (all micro-batches), so gradient accumulation gives the full-batch gradient.
def token_mean(values, mask, norm: "Normalizer"):
    """sum over all tokens / number of tokens in the batch (DAPO, Dr. GRPO style)."""
    return (values * mask).sum() / norm.tokens


def seq_mean_token_mean(values, mask, norm: "Normalizer"):
    """mean over each sequence's tokens, then mean over sequences (original GRPO)."""
    per_seq = (values * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b]
    return per_seq.sum() / norm.sequences


def seq_mean_token_sum(values, mask, norm: "Normalizer"):
    """sum over each sequence's tokens, mean over sequences (plain REINFORCE on sequence log-prob)."""
    return (values * mask).sum() / norm.sequences


AGGREGATIONS: dict[str, Callable] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
}


class Normalizer:
    """Batch-wide counts that every micro-batch divides by. Under data parallelism `reduce`
    sums them over the ranks (Dist.sum), so each rank's loss is its share of the global one."""

    def __init__(self, loss_masks: list[torch.Tensor], reduce=None):
        counts = {"tokens": sum(float(m.sum()) for m in loss_masks), "sequences": float(sum(m.shape[0] for m in loss_masks))}
        if reduce is not None:
            counts = reduce(counts)
        self.tokens = max(counts["tokens"], 1.0)
        self.sequences = max(int(counts["sequences"]), 1)


def policy_loss(algo, logprobs, old_logprobs, ref_logprobs, advantages, mask, norm: Normalizer):
    """The scalar to backpropagate for one micro-batch, and detached stats (sums over its tokens)."""
    pg, extra = POLICY_LOSSES[algo.policy_loss](logprobs, old_logprobs, advantages, algo.clip_low, algo.clip_high)
    aggregate = AGGREGATIONS[algo.loss_agg]
    loss = aggregate(pg, mask, norm)
    stats = {"pg_loss": loss.detach(), "clip_frac": (extra["clipped"] * mask).sum() / norm.tokens}
    if ref_logprobs is not None:
        kl = KL_ESTIMATORS[algo.kl_estimator](logprobs, ref_logprobs)
        kl_loss = aggregate(kl, mask, norm)
        loss = loss + algo.kl_coef * kl_loss
        stats["kl"] = kl_loss.detach()
    stats["loss"] = loss.detach()
    return loss, stats
