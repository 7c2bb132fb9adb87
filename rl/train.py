"""GRPO / REINFORCE for tool calling, top to bottom.

    python -m rl.train                      # embedded default: SmolLM2-135M, synthetic tasks, CPU
    python -m rl.train experiment=qwen_gpu  # a hub model on a GPU
    python -m rl.train --cfg job            # print the resolved config

One step (the log-derivative trick, grad E[R] = E[R grad log pi]):
    1. sample   G completions for each of B prompts                      (engine)
    2. score    each completion with the weighted reward functions       (rewards/)
    3. advantage per completion from its group's rewards                 (rl/advantages.py)
    4. loss     policy loss on completion tokens (+ KL), micro-batched   (rl/losses.py)
    5. step     clip the gradient norm, AdamW, LR schedule
    6. sync     the engine samples from the new weights
    7. log, evaluate, checkpoint

Deviations from textbook GRPO, all in config: loss aggregation (algo.loss_agg), asymmetric
clip (algo.clip_high), KL off by default (algo.kl_coef=0, as Dr. GRPO and DAPO found it
unneeded), an optional SFT warm-up before RL (trainer.sft.steps), and with one update per
batch old_logprobs = logprobs.detach() (ratio 1; the gradient is REINFORCE's).

Scale changes nothing here: LoRA (model.lora.r > 0) and FSDP2 under torchrun live behind the
policy handle (rl/policy.py). Under torchrun every rank samples whole groups for its share of
the batch's prompts, divides its loss by batch-wide counts summed over all ranks, and the
gradients are summed: the step is the one-process step on the whole batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from rl import checkpoint
from rl import config as _schemas  # noqa: F401  registers the config schemas with Hydra
from rl.advantages import ADVANTAGES, zero_variance_share
from rl.batching import collate, even_out, token_budget_chunks
from rl.eval import columns, count_reasons, evaluate, evaluate_bfcl
from rl.losses import Normalizer, policy_loss
from rl.metrics import memory_metrics
from rl.parallel import world_size
from rl.setup import CONF_DIR, Setup, autocast
from rl.sft import warm_up
from envs.datasets import TaskStream
from rewards.combine import RewardResult

log = logging.getLogger("rl.train")


def train(cfg: DictConfig) -> dict:
    """Runs cfg.trainer.steps RL steps; returns the summary (also written to summary.json)."""
    started = time.perf_counter()
    out = Path(cfg.trainer.output_dir)
    resume_from = checkpoint.latest(out)
    if resume_from is not None and not cfg.trainer.resume:
        raise FileExistsError(f"{out} already holds {resume_from.name}: add trainer.resume=true to continue that run, "
                              "or give a new trainer.output_dir (or delete the folder) to start over")
    if resume_from is not None:
        checkpoint.check_resumable(resume_from, world_size())
    s = Setup.build(cfg, resume_step=_step_of(resume_from))
    policy, algo, G, dist = s.policy, cfg.algo, cfg.algo.group_size, s.policy.dist
    opt, sched = make_optimizer(cfg.trainer, policy)
    data = TaskStream(s.train_tasks, cfg.trainer.batch_size, cfg.trainer.seed)
    eval_tasks = s.eval_tasks[: cfg.trainer.eval_size] if cfg.trainer.eval_size else s.eval_tasks
    run_eval = lambda: held_out_eval(cfg, s, eval_tasks)  # noqa: E731

    if resume_from is not None:
        state = checkpoint.load(resume_from, policy, opt)
        sched.load_state_dict(state["scheduler"])
        data.load_state_dict(state["data"])
        start, summary = state["step"], state["summary"]
        s.engine.load_weights(policy)
        log.info("resumed from %s", resume_from)
    else:
        start, summary = 0, {"time_s": {}}
        with phase(s, summary, "base_eval", f"evaluating the starting model on {len(eval_tasks)} held-out tasks"):
            summary["base"] = run_eval()
        s.logger.log(0, {f"base/{k.removeprefix('eval/')}": v for k, v in summary["base"].items()})
        if cfg.trainer.sft.steps > 0:
            with phase(s, summary, "sft", f"SFT warm-up: {cfg.trainer.sft.steps} steps x {cfg.trainer.sft.batch_size} gold answers"):
                summary["sft"] = warm_up(cfg.trainer.sft, policy, s.tokenizer, s.env, s.train_tasks,
                                         cfg.trainer.token_budget, cfg.trainer.logprob_chunk, cfg.trainer.bf16)
            s.engine.load_weights(policy)
            if cfg.trainer.sft.eval:
                with phase(s, summary, "warmup_eval", "evaluating after the warm-up"):
                    summary["after_warmup"] = run_eval()
                s.logger.log(0, {**summary["sft"], **summary["after_warmup"]})
        save(cfg, s, 0, opt, sched, data, summary)  # a crash during RL never redoes the warm-up
    if algo.kl_coef > 0:  # KL to where RL started (after the warm-up): checkpoint-0, also after a resume
        policy.set_reference(checkpoint.trainable_values(out / "checkpoint-0", policy))

    s.logger.say(f"RL: steps {start + 1}..{cfg.trainer.steps}, {cfg.trainer.batch_size} prompts x {G} completions each")
    rl_started = time.perf_counter()
    for step in progress(range(start + 1, cfg.trainer.steps + 1), enabled=cfg.logger.console and dist.main):
        t0 = time.perf_counter()
        tasks = dist.share(data.next_batch())  # this rank's B / world of the batch's B tasks
        rollouts = s.env.rollout(s.engine, tasks, G, s.sampling)  # B*G (this rank's), groups contiguous
        t_gen = time.perf_counter()
        scored = s.reward_fn([r.text for r in rollouts], **columns([r.task for r in rollouts]))
        rewards = torch.tensor(scored.total)  # [B*G]
        advantages = ADVANTAGES[algo.advantage](rewards, G)  # [B*G], per group
        stats = update_policy(cfg, policy, opt, sched, rollouts, advantages, s)
        t_update = time.perf_counter()
        s.engine.load_weights(policy)
        t_end = time.perf_counter()

        times = {"time/generate_s": t_gen - t0, "time/update_s": t_update - t_gen, "time/sync_s": t_end - t_update,
                 "time/step_s": t_end - t0}
        metrics = {**batch_metrics(dist, scored, rollouts, G, times), **stats, "lr": sched.get_last_lr()[0],
                   "sync/probe_diff": getattr(s.engine, "last_probe_diff", 0.0)}  # engines that check their sync
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step != cfg.trainer.steps:
            metrics.update(run_eval())
        if step == cfg.trainer.steps:
            summary["after_rl"] = run_eval()
            metrics.update(summary["after_rl"])
        s.logger.log(step, metrics)
        s.logger.samples(step, sample_rows(rollouts, scored))
        if step == cfg.trainer.steps or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
            save(cfg, s, step, opt, sched, data, summary)

    summary["time_s"]["rl"] = round(time.perf_counter() - rl_started, 1)  # this process's share, evals included
    summary["wall_s"] = time.perf_counter() - started
    summary["peak_rss_gb"] = max(summary.get("peak_rss_gb", 0.0), memory_metrics(dist)["mem/peak_rss_gb"])
    if dist.main:
        report(s, summary, out)
    s.logger.close()
    if hasattr(s.engine, "close"):
        s.engine.close()
    return summary


def held_out_eval(cfg, s, eval_tasks) -> dict:
    """eval/* on the held-out split (pass@k with trainer.eval_k > 1) and bfcl/* on the
    configured BFCL categories: logged apart from the training reward. Under torchrun each
    rank answers its share and the scores are gathered."""
    t, dist = cfg.trainer, s.policy.dist
    metrics = evaluate(s.engine, s.env, eval_tasks, s.reward_fn, cfg.reward.exact_match, s.sampling, t.eval_batch,
                       t.eval_k, dist)[0]
    if t.eval_bfcl:
        metrics.update(evaluate_bfcl(s.engine, s.env, list(t.eval_bfcl), t.eval_bfcl_limit, s.sampling, t.eval_batch,
                                     dist)[0])
    return metrics


def update_policy(cfg, policy, opt, sched, rollouts, advantages, s) -> dict:
    """algo.updates_per_batch optimizer steps on one batch of rollouts, micro-batched under
    trainer.token_budget; every micro-batch's loss is normalised by batch-wide counts (summed
    over ranks), so accumulation and the ranks' summed gradients give exactly the full-batch
    gradient."""
    algo, trainer = cfg.algo, cfg.trainer
    # a group's prompt runs once for its G completions (exact; needs the KV cache, so not
    # with gradient checkpointing)
    share = algo.group_size if trainer.share_prompt and not cfg.model.gradient_checkpointing else 1
    chunks = token_budget_chunks(rollouts, trainer.token_budget, share)
    batches = [collate([rollouts[i] for i in idx], advantages[idx], s.tokenizer.pad_token_id, s.device) for idx in chunks]
    norm = Normalizer([b.loss_mask for b in batches], reduce=policy.dist.sum)
    batches = even_out(batches, policy.dist)  # as many micro-batches on every rank (FSDP's collectives)
    temperature = algo.sampling.temperature
    logprobs_of = lambda b: policy.logprobs(b.input_ids, b.attention_mask, b.loss_mask.shape[1],  # noqa: E731
                                            temperature, trainer.logprob_chunk, share)
    policy.eval()  # the reference and pi_old as they sample: no dropout
    with torch.no_grad(), autocast(s.device, trainer.bf16):
        if policy.has_reference and algo.kl_coef > 0:
            with policy.reference():
                for b in batches:
                    b.ref_logprobs = logprobs_of(b)[0]  # [b, C]
        if algo.updates_per_batch > 1:
            for b in batches:
                b.old_logprobs = logprobs_of(b)[0]  # [b, C]

    policy.train()
    totals: dict[str, float] = {}
    for _ in range(algo.updates_per_batch):
        for b in batches:
            with autocast(s.device, trainer.bf16):
                logprobs, entropy = logprobs_of(b)  # [b, C], [b, C]
            old = b.old_logprobs if b.old_logprobs is not None else logprobs.detach()  # on-policy: ratio = 1
            loss, stats = policy_loss(algo, logprobs, old, b.ref_logprobs, b.advantages, b.loss_mask, norm)
            loss.backward()
            stats["entropy"] = (entropy * b.loss_mask).sum() / norm.tokens
            stats["logprob_diff_vs_rollout"] = ((old - b.rollout_logprobs).abs() * b.loss_mask).sum() / norm.tokens
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v) / algo.updates_per_batch  # sums over micro-batches
        grad_norm = policy.clip_grad_norm_(trainer.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return {**policy.dist.sum({**totals, "micro_batches": len(chunks)}), "grad_norm": grad_norm}


def make_optimizer(cfg, policy):
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    total = max(cfg.steps, 1)

    def factor(step: int) -> float:
        if step < cfg.lr_warmup_steps:
            return (step + 1) / cfg.lr_warmup_steps
        progress_ = (step - cfg.lr_warmup_steps) / max(total - cfg.lr_warmup_steps, 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress_)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress_, 1.0)))
        raise ValueError(f"trainer.lr_schedule={cfg.lr_schedule!r}: use constant, linear or cosine")

    factor(0)  # fail on a bad schedule name now, not at the first step
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def batch_metrics(dist, scored, rollouts, group_size: int, times: dict) -> dict:
    """Reward, length and throughput metrics of the whole batch (every rank's rollouts), the
    slowest rank's times, and peak memory."""
    everyone = dist.gather([(scored, [(len(r.prompt), len(r.completion), r.finish_reason) for r in rollouts])])
    times = dist.max(times)
    return {**reward_metrics(concat([sc for sc, _ in everyone]), group_size),
            **rollout_metrics([shape for _, shapes in everyone for shape in shapes], times["time/step_s"]),
            **times, **memory_metrics(dist)}


def concat(results: list) -> RewardResult:
    """The reward results of every rank as one batch (rank order)."""
    first = results[0]
    return RewardResult([v for r in results for v in r.total],
                        {name: [v for r in results for v in r.per_function[name]] for name in first.per_function},
                        {name: [v for r in results for v in r.reasons[name]] for name in first.reasons})


def reward_metrics(scored, group_size: int) -> dict:
    rewards = torch.tensor(scored.total)  # [N] the whole batch
    m = {"reward/total": rewards.mean().item(), "reward/total_std": rewards.std().item() if len(rewards) > 1 else 0.0,
         "zero_variance_groups": zero_variance_share(rewards, group_size)}
    for name, values in scored.per_function.items():
        v = torch.tensor(values)
        m[f"reward/{name}"] = v.mean().item()
        m[f"reward/{name}_std"] = v.std().item() if len(v) > 1 else 0.0
        for reason, count in count_reasons(scored.reasons[name]).items():
            m[f"reason/{name}/{reason}"] = count / len(values)
    return m


def rollout_metrics(shapes: list[tuple[int, int, str]], seconds: float) -> dict:
    """shapes: (prompt length, completion length, finish reason) of every rollout of the batch."""
    return {"completion_len": sum(c for _, c, _ in shapes) / len(shapes),
            "truncated": sum(reason == "length" for _, _, reason in shapes) / len(shapes),
            "tokens_per_s": sum(p + c for p, c, _ in shapes) / seconds}


def sample_rows(rollouts, scored) -> list[dict]:
    return [{"prompt": r.task["messages"][-1]["content"], "completion": r.text, "reward": scored.total[i],
             "reasons": {name: rs[i] for name, rs in scored.reasons.items()}, "ground_truth": r.task["ground_truth"]}
            for i, r in enumerate(rollouts)]


def save(cfg, s, step, opt, sched, data, summary) -> None:
    state = {"scheduler": sched.state_dict(), "data": data.state_dict(), "summary": summary}
    checkpoint.save(Path(cfg.trainer.output_dir), step, s.policy, s.tokenizer, opt, state, cfg.trainer.keep_last)


def report(s, summary: dict, out: Path) -> None:
    """summary.json and a table: the held-out metrics at each stage (base, warm-up, RL)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    stages = {k: summary[k] for k in ("base", "after_warmup", "after_rl") if k in summary}
    overall = {stage: {key.removeprefix("eval/"): v for key, v in r.items() if key.count("/") == 1} for stage, r in stages.items()}
    s.logger.table(f"held-out eval ({summary['wall_s']:.0f} s)", overall)


def progress(steps: range, enabled: bool):
    if not enabled:
        yield from steps
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[bold]RL", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  transient=False) as bar:
        task = bar.add_task("steps", total=len(steps))
        for step in steps:
            yield step
            bar.advance(task)


@contextmanager
def phase(s, summary: dict, name: str, message: str):
    """Announce a long phase and record its wall time in summary["time_s"]."""
    s.logger.say(message)
    start = time.perf_counter()
    yield
    summary["time_s"][name] = round(time.perf_counter() - start, 1)


def _step_of(folder: Path | None) -> int | None:
    return int(folder.name.split("-")[1]) if folder is not None else None


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    train(cfg)
    if torch.distributed.is_initialized():  # under torchrun: leave the process group cleanly
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
