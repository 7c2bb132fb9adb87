"""Optional supervised warm-up on gold answers, before RL.

A 135M model answers tool requests in prose: every completion of a group scores 0, so GRPO
has no gradient. A few SFT steps on gold Tool-N1 answers teach it the format; RL then has
groups with variance to learn from.

The loss is -mean log pi(gold token) over answer tokens, computed with the same chunked
token_logprobs and the env's exact prompt tokens as RL. (TRL's SFTTrainer does the same job
but materialises full-vocab logits over every prompt token too; bench/sft_warmup.py times
both on the same batch.)
"""

from __future__ import annotations

import torch

from envs.single_turn import gold_answer
from rl import optim
from rl.batching import collate, even_out, token_budget_chunks
from rl.losses import AGGREGATIONS, Normalizer
from rl.metrics import release_memory
from rl.setup import autocast
from envs.types import Rollout


def gold_rollouts(env, tokenizer, tasks: list[dict]) -> list[Rollout]:
    """Gold answers as rollouts; a multi-turn env plays its rows' gold turns through its
    tools (the tool results and template tokens are real, and masked out of the loss)."""
    if hasattr(env, "gold_rollouts"):
        return env.gold_rollouts(tasks)
    rollouts = []
    for task in tasks:
        answer = gold_answer(task, getattr(env, "parser", "tool_n1"))
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rollouts.append(Rollout(task=task, prompt=env.prompt_ids(task), completion=ids, loss_mask=[1] * len(ids),
                                rollout_logprobs=[0.0] * len(ids), text=answer, finish_reason="stop"))
    return rollouts


def gold_nll_backward(policy, tokenizer, rollouts: list[Rollout], coef: float, token_budget: int, chunk: int = 1024,
                      bf16: bool = False, agg: str = "token-mean") -> float:
    """Back-propagates coef x the NLL of gold answers (`gold_rollouts`, this rank's share; the
    counts are summed over ranks), aggregated by `agg` (rl.losses.AGGREGATIONS: token-mean is
    the mean NLL per gold token, seq-mean-token-sum the mean NLL per gold answer), into the
    gradients already there, and returns that aggregated NLL. In RL (algo.sft_coef) they are
    the gold answers of the step's own prompts: InstructGPT's PPO-ptx / OpenRLHF's ptx_coef."""
    batches = [collate([rollouts[i] for i in idx], torch.zeros(len(idx)), tokenizer.pad_token_id, policy.device)
               for idx in token_budget_chunks(rollouts, token_budget)]
    norm = Normalizer([b.loss_mask for b in batches], reduce=policy.dist.sum)
    total = 0.0
    for b in even_out(batches, policy.dist):  # as many micro-batches on every rank (FSDP's collectives)
        with autocast(policy.device, bf16):
            logprobs, _ = policy.logprobs(b.input_ids, b.attention_mask, b.loss_mask.shape[1], 1.0, chunk)  # [b, C]
        loss = AGGREGATIONS[agg](-logprobs, b.loss_mask, norm, None)  # the NLL of the gold answers
        (coef * loss).backward()
        release_memory(policy.device)  # this micro-batch's activations, freed, leave RSS
        total += loss.item()
    return policy.dist.sum({"nll": total})["nll"]


def warm_up(cfg, policy, tokenizer, env, tasks: list[dict], token_budget: int, chunk: int = 1024,
            bf16: bool = False, optimizer: str = "adamw") -> dict:
    """cfg: trainer.sft. Trains the policy (a Policy handle: its adapters under LoRA, its
    shards under torchrun) in place on cfg.steps batches of gold answers (cycling through
    `tasks` in order; each rank takes its share); returns the first and last loss."""
    opt = optim.make(optimizer, policy.parameters(), cfg.lr)
    policy.train()
    losses = []
    for step in range(cfg.steps):
        start = step * cfg.batch_size
        batch_tasks = policy.dist.share([tasks[(start + i) % len(tasks)] for i in range(cfg.batch_size)])
        total = gold_nll_backward(policy, tokenizer, gold_rollouts(env, tokenizer, batch_tasks), 1.0, token_budget, chunk,
                                  bf16)
        policy.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return {"sft/loss_first": losses[0], "sft/loss_last": losses[-1]} if losses else {}
