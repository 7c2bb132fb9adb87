"""The data that flows through one RL step, and the glossary's names for it.

    prompt           token ids of the rendered chat up to the assistant turn
    completion       token ids the policy produced (multi-turn: interleaved with tool
                     output tokens, which loss_mask zeroes)
    group (G)        completions sampled for one prompt; contiguous in every flat list
    logprobs         log pi_theta of completion tokens, with grad
    old_logprobs     log pi_old (the policy that sampled), no grad
    rollout_logprobs logprobs reported by the engine; differ from old_logprobs numerically
    ref_logprobs     frozen reference policy, for KL
    loss_mask        1 on tokens the policy is trained on
    advantages       one number per completion here (per-sequence), broadcast over tokens
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # generation also ends on these strings (kept in the output)
    min_new_tokens: int = 0  # EOS is suppressed before this many tokens (bench/: forced lengths)


@dataclass
class Sample:
    """One completion from an engine."""

    completion: list[int]
    rollout_logprobs: list[float]  # [len(completion)] log-prob of each sampled token at the sampling temperature
    finish_reason: str  # "stop" (EOS or stop string) | "length"


@dataclass
class Rollout:
    """One completion of one task, ready to score and train on."""

    task: dict  # the data row: id, category, messages, tools, ground_truth, ...
    prompt: list[int]
    completion: list[int]
    loss_mask: list[int]  # [len(completion)]
    rollout_logprobs: list[float]  # [len(completion)]
    text: str  # the completion decoded, what rewards read
    finish_reason: str
    episode: dict | None = None  # multi-turn: turns, calls, results, final answer and state (envs/multi_turn.py)


@dataclass
class Batch:
    """Rollouts as padded tensors: prompts left-padded to P, completions right-padded to C,
    so every completion starts at column P."""

    input_ids: torch.Tensor  # [b, P + C]
    attention_mask: torch.Tensor  # [b, P + C]
    loss_mask: torch.Tensor  # [b, C] float
    advantages: torch.Tensor  # [b]
    rollout_logprobs: torch.Tensor  # [b, C]
    old_logprobs: torch.Tensor | None = None  # [b, C], set when the policy takes several steps per batch
    ref_logprobs: torch.Tensor | None = None  # [b, C]
    extras: dict = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.loss_mask.shape[1]
