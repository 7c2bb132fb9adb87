"""One optimizer step on one fixed batch of rollouts, in one process or under torchrun:

    python tests/dist_step.py OUT.pt [overrides...]
    torchrun --nproc_per_node 2 tests/dist_step.py OUT.pt [overrides...]

Every rank builds the same batch (B prompts x G completions, ragged lengths, fixed rewards),
takes its share of whole groups, saves a checkpoint as train does before its first step, and
runs rl.train.update_policy (advantages from every rank's rewards); rank 0 saves the trained parameters (whole), the step's stats
and every rank's micro-batch count. tests/test_distributed.py compares the two."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rl import checkpoint  # noqa: E402
from rl.batching import token_budget_chunks  # noqa: E402
from rl.setup import Setup  # noqa: E402
from rl.train import make_optimizer, update_policy  # noqa: E402
from envs.types import Rollout  # noqa: E402
from tests.conftest import tiny_cfg  # noqa: E402

B, G = 4, 3


def fixed_rollouts(vocab: int, tasks: list[dict]) -> tuple[list[Rollout], torch.Tensor]:
    """tasks[i] is group i's task: only algo.sft_coef reads it (its gold answer)."""
    g = torch.Generator().manual_seed(1234)
    rollouts, rewards = [], []
    for i in range(B):
        prompt = torch.randint(10, vocab, (5 + 3 * i,), generator=g).tolist()
        for j in range(G):
            n = 2 + (i + 2 * j) % 5
            completion = torch.randint(10, vocab, (n,), generator=g).tolist()
            rollout_lps = (-torch.rand(n, generator=g)).tolist()
            rollouts.append(Rollout(tasks[i], prompt, completion, [1] * n, rollout_lps, "", "stop"))
            rewards.append(float(torch.rand((), generator=g)))
    return rollouts, torch.tensor(rewards)


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    cfg = tiny_cfg(Path(out).parent / "run", f"algo.group_size={G}", *overrides)
    s = Setup.build(cfg)
    policy = s.policy
    rollouts, rewards = fixed_rollouts(min(len(s.tokenizer), 5000), s.train_tasks[:B])
    mine = policy.dist.share(list(range(B)))  # this rank's prompts, whole groups
    idx = [k * G + j for k in mine for j in range(G)]
    rollouts = [rollouts[i] for i in idx]
    opt, sched = make_optimizer(cfg.trainer, policy, cfg.algo.ppo_epochs * cfg.algo.mini_batches)
    checkpoint.save(Path(out).parent / f"ckpt-{policy.dist.world}", 0, policy, s.tokenizer, opt, {}, 1)  # as train does
    share = G if cfg.trainer.share_prompt and not cfg.model.gradient_checkpointing else 1
    micro_batches = policy.dist.gather([len(token_budget_chunks(rollouts, cfg.trainer.token_budget, share))])
    if cfg.algo.kl_coef > 0:
        policy.set_reference({n: p.detach() for n, p in policy.named_trainable()})
    with torch.no_grad():  # move off the init (LoRA's B = 0 would give A no gradient) and away from the
        for _, p in policy.named_trainable():  # reference; elementwise, so the same whether sharded or not
            p.add_(0.01)
    stats = update_policy(cfg, policy, opt, sched, rollouts, rewards[idx], s)  # advantages from the gathered batch
    state = policy.trainable_full()
    if policy.dist.main:
        torch.save({"params": state, "stats": stats, "world": policy.dist.world, "micro_batches": micro_batches}, out)
    policy.dist.close()


if __name__ == "__main__":
    main()
