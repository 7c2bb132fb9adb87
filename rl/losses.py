"""Policy losses, KL estimators and loss aggregation: three independent registries (as in
verl's core_algos), all pure tensor functions on per-token values.

Shapes: logprobs, old_logprobs, ref_logprobs, mask: [b, T]; advantages: [b] (per sequence).
"""

from __future__ import annotations

from typing import Callable

import torch


def reinforce_loss(logprobs, old_logprobs, advantages, mask, algo):
    """-A * log pi(y_t): the log-derivative trick, one term per token."""
    loss = -advantages[:, None] * logprobs  # [b, T]
    return loss, torch.zeros_like(logprobs)


def _clipped_surrogate(ratio, advantages, algo):
    """-min(rho A, clip(rho, 1-low, 1+high) A): [b, T] loss and [b, T] 1 where the clip binds."""
    adv = advantages[:, None]  # [b, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - algo.clip_low, 1.0 + algo.clip_high) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()  # [b, T], [b, T]


def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, algo):
    """PPO-clip with rho = pi / pi_old per token (GRPO; DAPO's clip-higher when clip_high > clip_low)."""
    return _clipped_surrogate(torch.exp(logprobs - old_logprobs), advantages, algo)


def dual_clip_loss(logprobs, old_logprobs, advantages, mask, algo):
    """PPO-clip, and for A < 0 the loss is also capped at -c A (c = algo.clip_ratio_c > 1), so
    a token whose ratio exploded cannot dominate the batch (Ye et al. 2020, verl's clip_ratio_c)."""
    loss, clipped = _clipped_surrogate(torch.exp(logprobs - old_logprobs), advantages, algo)  # [b, T]
    adv = advantages[:, None].expand_as(loss)  # [b, T]
    cap = -adv * algo.clip_ratio_c  # [b, T]
    capped = (adv < 0) & (cap < loss)
    return torch.where(capped, cap, loss), torch.maximum(clipped, capped.float())


def gspo_loss(logprobs, old_logprobs, advantages, mask, algo):
    """GSPO: one length-normalised ratio per sequence, s = exp(mean_t log(pi / pi_old)),
    clipped as in PPO. Written per token as sg(s) * pi_t / sg(pi_t) (GSPO-token), whose
    gradient, averaged over the sequence's tokens, is GSPO's."""
    seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b]
    ratio = torch.exp(seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach())  # [b, T], value s per token
    return _clipped_surrogate(ratio, advantages, algo)


def cispo_loss(logprobs, old_logprobs, advantages, mask, algo):
    """CISPO (MiniMax-M1): -sg(clip(rho, 1-low, 1+high)) A log pi. The importance weight is
    clipped, never the gradient: every token keeps a REINFORCE gradient."""
    ratio = torch.exp(logprobs - old_logprobs).detach()  # [b, T]
    weight = torch.clamp(ratio, 1.0 - algo.clip_low, 1.0 + algo.clip_high)  # [b, T]
    return -weight * advantages[:, None] * logprobs, (weight != ratio).float()


POLICY_LOSSES: dict[str, Callable] = {
    "reinforce": reinforce_loss,
    "ppo_clip": ppo_clip_loss,
    "dual_clip": dual_clip_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}


def kl_k1(logprobs, ref_logprobs):
    return logprobs - ref_logprobs  # [b, T]


def kl_k2(logprobs, ref_logprobs):
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [b, T]


def kl_k3(logprobs, ref_logprobs):
    """Schulman's unbiased, always >= 0 estimator: exp(r) - r - 1 with r = log ref - log pi."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1  # [b, T]


KL_ESTIMATORS: dict[str, Callable] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def sequence_kl(logprobs, ref_logprobs, mask, estimator: str):
    """KL of each sequence to the reference, summed over its tokens: [b] (for algo.kl_in_reward)."""
    return (KL_ESTIMATORS[estimator](logprobs, ref_logprobs) * mask).sum(1)  # [b]


# Aggregations reduce [b, T] to a scalar. They SUM and divide by a normaliser counted over
# the whole batch (all micro-batches, all ranks), so gradient accumulation and data
# parallelism give the full-batch gradient.
def token_mean(values, mask, norm: "Normalizer", algo):
    """sum over all tokens / number of tokens in the batch (DAPO)."""
    return (values * mask).sum() / norm.tokens


def seq_mean_token_mean(values, mask, norm: "Normalizer", algo):
    """mean over each sequence's tokens, then mean over sequences (original GRPO)."""
    per_seq = (values * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b]
    return per_seq.sum() / norm.sequences


def seq_mean_token_sum(values, mask, norm: "Normalizer", algo):
    """sum over each sequence's tokens, mean over sequences (REINFORCE on the sequence log-prob)."""
    return (values * mask).sum() / norm.sequences


def seq_mean_token_sum_norm(values, mask, norm: "Normalizer", algo):
    """Dr. GRPO: token sum over sequences / (sequences x a constant length), the constant
    being algo.loss_norm_len (default: sampling.max_new_tokens). No length bias either way."""
    length = algo.loss_norm_len or algo.sampling.max_new_tokens
    return (values * mask).sum() / (norm.sequences * length)


AGGREGATIONS: dict[str, Callable] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


class Normalizer:
    """Batch-wide counts that every micro-batch divides by. Under data parallelism `reduce`
    sums them over the ranks (Dist.sum), so each rank's loss is its share of the global one."""

    def __init__(self, loss_masks: list[torch.Tensor], reduce=None):
        counts = {"tokens": sum(float(m.sum()) for m in loss_masks),  # sequences with at least one trained token
                  "sequences": float(sum(int((m.sum(1) > 0).sum()) for m in loss_masks))}
        if reduce is not None:
            counts = reduce(counts)
        self.tokens = max(counts["tokens"], 1.0)
        self.sequences = max(int(counts["sequences"]), 1)


def truncated_is_weight(old_logprobs, rollout_logprobs, cap: float):
    """TIS: min(pi_old / pi_rollout, cap) per token, no grad [b, T]: corrects for the engine
    sampling from slightly different numbers than the trainer computes."""
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap).detach()


def policy_loss(algo, logprobs, old_logprobs, ref_logprobs, advantages, mask, norm: Normalizer, entropy=None,
                rollout_logprobs=None):
    """The scalar to backpropagate for one micro-batch, and detached stats (sums over its tokens).

    loss = agg(pg * tis) + kl_coef * agg(kl)  [unless algo.kl_in_reward]  - entropy_coef * agg(entropy)"""
    pg, clipped = POLICY_LOSSES[algo.policy_loss](logprobs, old_logprobs, advantages, mask, algo)  # [b, T] x2
    if algo.tis_cap > 0 and rollout_logprobs is not None:
        pg = pg * truncated_is_weight(old_logprobs, rollout_logprobs, algo.tis_cap)
    aggregate = AGGREGATIONS[algo.loss_agg]
    loss = aggregate(pg, mask, norm, algo)
    stats = {"pg_loss": loss.detach(), "clip_frac": (clipped * mask).sum() / norm.tokens}
    if ref_logprobs is not None:
        kl = aggregate(KL_ESTIMATORS[algo.kl_estimator](logprobs, ref_logprobs), mask, norm, algo)
        if not algo.kl_in_reward:
            loss = loss + algo.kl_coef * kl
        stats["kl"] = kl.detach()
    if algo.entropy_coef and entropy is not None:
        bonus = aggregate(entropy, mask, norm, algo)
        loss = loss - algo.entropy_coef * bonus
        stats["entropy_bonus"] = bonus.detach()
    stats["loss"] = loss.detach()
    return loss, stats
