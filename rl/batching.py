"""Rollouts to padded tensors, and micro-batches under a token budget."""

from __future__ import annotations

from dataclasses import replace

import torch

from envs.types import Batch, Rollout


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)  # [B, P], [B, P]


def right_pad(rows: list[list], pad, dtype) -> torch.Tensor:
    width = max(1, max(map(len, rows)))
    out = torch.full((len(rows), width), pad, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out  # [B, C]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]


def collate(rollouts: list[Rollout], advantages: torch.Tensor, pad_id: int, device) -> Batch:
    """Prompts left-padded to P, completions right-padded to C: completions start at column P."""
    prompt_ids, prompt_mask = left_pad([r.prompt for r in rollouts], pad_id)  # [b, P]
    completion_ids = right_pad([r.completion for r in rollouts], pad_id, torch.long)  # [b, C]
    completion_mask = right_pad([[1] * len(r.completion) for r in rollouts], 0, torch.long)  # [b, C]
    return Batch(
        input_ids=torch.cat([prompt_ids, completion_ids], 1).to(device),  # [b, P + C]
        attention_mask=torch.cat([prompt_mask, completion_mask], 1).to(device),  # [b, P + C]
        loss_mask=right_pad([r.loss_mask for r in rollouts], 0, torch.float).to(device),  # [b, C]
        advantages=advantages.to(device),  # [b]
        rollout_logprobs=right_pad([r.rollout_logprobs for r in rollouts], 0.0, torch.float).to(device),  # [b, C]
    )


def token_budget_chunks(rollouts: list[Rollout], budget: int, group_size: int = 1) -> list[list[int]]:
    """Consecutive index lists, whole groups of `group_size` at a time, whose padded size
    b * (longest prompt + longest completion) fits the budget; a group over budget gets a
    micro-batch of its own."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for start in range(0, len(rollouts), group_size):
        group = list(range(start, min(start + group_size, len(rollouts))))
        candidate = current + group
        width = max(len(rollouts[i].prompt) for i in candidate) + max(len(rollouts[i].completion) for i in candidate)
        if current and len(candidate) * width > budget:
            chunks.append(current)
            candidate = group
        current = candidate
    if current:
        chunks.append(current)
    return chunks


def even_out(batches: list[Batch], dist) -> list[Batch]:
    """Under FSDP every forward and backward is a collective: each rank must run as many
    micro-batches as the rank with the most. Pads with zero-weight copies of the last one
    (loss mask 0: they add nothing to the loss, the gradient or the stats). Normalise with
    the real batches' counts, before padding."""
    count = int(dist.max({"micro_batches": len(batches)})["micro_batches"])
    last = batches[-1]
    return batches + [replace(last, loss_mask=torch.zeros_like(last.loss_mask), advantages=torch.zeros_like(last.advantages))
                      for _ in range(count - len(batches))]
