"""The pieces of an RL step around the loss that are not the algorithm box: the start-up check
of the algo config, sampling with DAPO's dynamic sampling, and rewards -> advantages over
the whole (gathered) batch."""

from __future__ import annotations

import math

import torch

from rewards.combine import RewardResult
from rl.advantages import ADVANTAGES, has_group_baseline, multi_reward, overlong_penalty, zero_variance_groups
from rl.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

CHOICES = {"advantage": ADVANTAGES, "policy_loss": POLICY_LOSSES, "loss_agg": AGGREGATIONS, "kl_estimator": KL_ESTIMATORS,
           "baseline": ("group", "batch"), "reward_norm": ("sum", "per_function"),
           "sft_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")}  # the gold NLL: no length constant


def check(algo, batch_size: int, world: int = 1) -> None:
    """Fail at start-up, before any model loads or checkpoint is written, on an algo config
    that cannot train; say which key and what to use."""
    for key, options in CHOICES.items():
        if algo[key] not in options:
            raise ValueError(f"algo.{key}={algo[key]!r} is unknown: use one of {sorted(options)}")
    G = algo.group_size
    if G < 1:
        raise ValueError(f"algo.group_size={G}: sample at least 1 completion per prompt (GRPO uses 4-16)")
    if G < 2 and has_group_baseline(algo):
        raise ValueError(f"algo.group_size={G} with algo.advantage={algo.advantage} (a group baseline): every "
                         "advantage would be 0 and nothing would train; use group_size >= 2, or advantage=reinforce_pp "
                         "or advantage=reinforce with algo.baseline=batch")
    if G < 2 and algo.reward_norm == "per_function":
        raise ValueError("algo.reward_norm=per_function normalises each reward within its group: use group_size >= 2")
    if batch_size < 1:
        raise ValueError(f"trainer.batch_size={batch_size}: use at least 1 prompt per step")
    for key in ("ppo_epochs", "mini_batches"):
        if algo[key] < 1:
            raise ValueError(f"algo.{key}={algo[key]}: use 1 or more")
    if (batch_size // world) % algo.mini_batches:
        raise ValueError(f"algo.mini_batches={algo.mini_batches} does not divide each rank's {batch_size // world} "
                         f"prompts (trainer.batch_size={batch_size} over {world} processes): mini-batches hold whole groups")
    if algo.clip_low < 0 or algo.clip_high < 0 or algo.clip_ratio_c <= 1:
        raise ValueError("algo.clip_low and algo.clip_high must be >= 0 and algo.clip_ratio_c > 1")
    if not (math.isfinite(algo.sft_coef) and algo.sft_coef >= 0):
        raise ValueError(f"algo.sft_coef={algo.sft_coef}: use a finite number >= 0 (0 = no gold-answer term)")
    if algo.kl_in_reward and algo.kl_coef <= 0:
        raise ValueError("algo.kl_in_reward=true needs algo.kl_coef > 0")
    if algo.overlong_buffer < 0 or algo.overlong_buffer >= algo.sampling.max_new_tokens:
        raise ValueError(f"algo.overlong_buffer={algo.overlong_buffer} must be in [0, sampling.max_new_tokens="
                         f"{algo.sampling.max_new_tokens})")


def concat(results: list[RewardResult]) -> RewardResult:
    """Several reward results as one batch, in order."""
    first = results[0]
    return RewardResult([v for r in results for v in r.total],
                        {name: [v for r in results for v in r.per_function[name]] for name in first.per_function},
                        {name: [v for r in results for v in r.reasons[name]] for name in first.reasons})


def _select(rollouts: list, scored: RewardResult, groups: list[int], G: int):
    idx = [g * G + j for g in groups for j in range(G)]
    picked = RewardResult([scored.total[i] for i in idx], {k: [v[i] for i in idx] for k, v in scored.per_function.items()},
                          {k: [v[i] for i in idx] for k, v in scored.reasons.items()})
    return [rollouts[i] for i in idx], picked


def collect(sample_and_score, next_tasks, algo, dist):
    """Rollouts and their rewards for this rank's share of one batch. With
    algo.dynamic_sampling (DAPO), groups whose rewards are all equal are dropped and the batch
    is refilled from fresh prompts, up to algo.max_refill_rounds extra rounds (every rank draws
    the same number of batches, so the data order stays rank-independent). If every group of
    every round is flat, the last round is kept as it is (its advantages are 0).

    sample_and_score(tasks) -> (rollouts, RewardResult); next_tasks() -> this rank's tasks."""
    tasks = next_tasks()
    rollouts, scored = sample_and_score(tasks)
    if not algo.dynamic_sampling:
        return rollouts, scored, {}
    G, want = algo.group_size, len(tasks)
    kept_r, kept_s, dropped, rounds = [], [], 0, 0
    while True:
        flat = zero_variance_groups(torch.tensor(scored.total), G).tolist()
        good = [g for g, f in enumerate(flat) if not f][: want - len(kept_r) // G]
        dropped += sum(flat)
        r, sc = _select(rollouts, scored, good, G)
        kept_r, kept_s = kept_r + r, kept_s + [sc]
        short = dist.max({"short": float(len(kept_r) < want * G)})["short"]
        if not short or rounds >= algo.max_refill_rounds:
            break
        rounds += 1
        rollouts, scored = sample_and_score(next_tasks())
    stats = {"dynamic/rounds": rounds, "dynamic/dropped_groups": dropped, "dynamic/kept_groups": len(kept_r) // G}
    if not kept_r:
        return rollouts, scored, stats
    return kept_r, concat(kept_s), stats


def shaped_rewards(scored: RewardResult, rollouts: list, algo, weights: dict[str, float]) -> torch.Tensor:
    """[n] the reward each completion is trained on: the weighted sum (or GDPO's per-function
    normalised sum), plus DAPO's soft overlong punishment."""
    if algo.reward_norm == "per_function":
        names = list(scored.per_function)
        per_function = torch.tensor([scored.per_function[k] for k in names]).T  # [n, K]
        rewards = multi_reward(per_function, torch.tensor([weights[k] for k in names]), algo.group_size)
    else:
        rewards = torch.tensor(scored.total, dtype=torch.float)  # [n]
    if algo.overlong_buffer:
        lengths = torch.tensor([sum(r.loss_mask) for r in rollouts])  # the model's own tokens (not tool output)
        rewards = rewards + overlong_penalty(lengths, algo.sampling.max_new_tokens, algo.overlong_buffer,
                                             algo.overlong_penalty)
    return rewards  # [n]


def advantages(rewards: torch.Tensor, algo, dist) -> torch.Tensor:
    """[n] this rank's advantages, computed on the whole batch's rewards (every rank's groups,
    gathered in rank order), so batch baselines and whitening see the global batch."""
    everyone = dist.gather([(dist.rank, rewards.tolist())])
    everyone.sort(key=lambda pair: pair[0])
    start = sum(len(values) for rank, values in everyone if rank < dist.rank)
    full = torch.tensor([v for _, values in everyone for v in values], dtype=torch.float)  # [N]
    return ADVANTAGES[algo.advantage](full, algo)[start : start + len(rewards)]  # [n]
