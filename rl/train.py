"""GRPO / REINFORCE for tool calling, top to bottom.

    python -m rl.train                      # embedded default: SmolLM2-135M, synthetic tasks, CPU
    python -m rl.train experiment=qwen_gpu  # a hub model on a GPU
    python -m rl.train --cfg job            # print the resolved config

One step (the log-derivative trick, grad E[R] = E[R grad log pi]):
    1. sample   G completions for each of B prompts; dynamic sampling    (engine, rl/algo.py)
                refills groups whose rewards are all equal
    2. score    each completion with the weighted reward functions       (rewards/)
    3. shape    GDPO per-function normalisation, overlong punishment,    (rl/algo.py)
                KL in the reward
    4. advantage per completion from the whole batch's rewards           (rl/advantages.py)
    5. loss     policy loss x TIS weight, aggregated, + KL - entropy     (rl/losses.py)
                + sft_coef x NLL of the prompts' gold answers (PPO-ptx)    (rl/sft.py)
    6. step     ppo_epochs x mini_batches optimizer steps: clip the gradient norm, AdamW, LR
    7. sync     the engine samples from the new weights
    8. log, evaluate, checkpoint

The recipe is config: conf/algo/*.yaml names one (grpo, dr_grpo, dapo, gspo, cispo, rloo,
reinforce, reinforce_pp), each a choice on three independent axes (advantage, policy loss,
aggregation) plus shaping. An optional SFT warm-up runs before RL (trainer.sft.steps). With
one optimizer step per batch old_logprobs = logprobs.detach() (ratio 1: the gradient is
REINFORCE's, clipping never binds); with several, the first mini-batch's old_logprobs come from
its own first forward too, and a no-grad pass before the first optimizer step gives the rest.

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
from rl import algo as algo_
from rl.advantages import zero_variance_share
from rl.engines import release
from rl.batching import collate, even_out, token_budget_chunks
from rl.eval import count_reasons, episode_metrics, episode_summary, evaluate, evaluate_bfcl, reward_inputs
from rl.losses import Normalizer, policy_loss, sequence_kl
from rl.metrics import Timings, memory_metrics, release_memory, return_freed_memory
from rl.optim import make_optimizer, set_base_lr
from rl.parallel import shutdown, world_size
from rl.setup import CONF_DIR, Setup, autocast, check_config, train_bf16
from rl.sft import gold_nll_backward, gold_rollouts, warm_up
from envs.datasets import TaskStream
from rewards.combine import TrainerState

log = logging.getLogger("rl.train")


def train(cfg: DictConfig) -> dict:
    """Runs cfg.trainer.steps RL steps; returns the summary (also written to summary.json)."""
    started = time.perf_counter()
    out = Path(cfg.trainer.output_dir)
    resume_from = checkpoint.latest(out)
    if resume_from is not None and not cfg.trainer.resume:
        raise FileExistsError(f"{out} already holds {resume_from.name}: add trainer.resume=true to continue that run, "
                              "or give a new trainer.output_dir (or delete the folder) to start over")
    check_config(cfg, world_size())  # every value range, before anything is written
    if cfg.trainer.return_freed_memory and not torch.cuda.is_available():
        return_freed_memory()  # glibc: RSS is what is alive (slower: page faults)
    if resume_from is not None:
        checkpoint.check_resumable(resume_from, world_size())
    s = Setup.build(cfg, resume_step=_step_of(resume_from))
    policy, algo, G, dist = s.policy, cfg.algo, cfg.algo.group_size, s.policy.dist
    opt, sched = make_optimizer(cfg.trainer, policy, algo.ppo_epochs * algo.mini_batches)
    data = TaskStream(s.train_tasks, cfg.trainer.batch_size, cfg.trainer.seed, cfg.data.stratify,
                      cfg.data.stratify_weights, cfg.data.adaptive_floor)
    eval_tasks = s.eval_tasks[: cfg.trainer.eval_size] if cfg.trainer.eval_size else s.eval_tasks
    run_eval = lambda step=0: held_out_eval(cfg, s, eval_tasks, TrainerState(step, cfg.trainer.steps))  # noqa: E731

    if resume_from is not None:
        state = checkpoint.load(resume_from, policy, opt)
        sched.load_state_dict(state["scheduler"])
        if set_base_lr(opt, sched, cfg.trainer.lr):
            log.info("trainer.lr=%g replaces the LR the checkpoint was trained with", cfg.trainer.lr)
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
                release(s.engine)  # engine.sleep: the sampling copy's memory goes to the update
                summary["sft"] = warm_up(cfg.trainer.sft, policy, s.tokenizer, s.env, s.train_tasks,
                                         cfg.trainer.token_budget, cfg.trainer.logprob_chunk,
                                         train_bf16(cfg.trainer, s.device), cfg.trainer.optimizer)
            s.engine.load_weights(policy)
            if cfg.trainer.sft.eval:
                with phase(s, summary, "warmup_eval", "evaluating after the warm-up"):
                    summary["after_warmup"] = run_eval()
                s.logger.log(0, {**summary["sft"], **summary["after_warmup"]})
        save(cfg, s, 0, opt, sched, data, summary)  # a crash during RL never redoes the warm-up
    weights = {name: w for name, _, w in s.reward_fn.functions}
    if algo.kl_coef > 0:  # KL to where RL started (after the warm-up): checkpoint-0, also after a resume
        policy.set_reference(checkpoint.trainable_values(out / "checkpoint-0", policy))

    s.logger.say(f"RL: steps {start + 1}..{cfg.trainer.steps}, {cfg.trainer.batch_size} prompts x {G} completions each")
    rl_started, timings = time.perf_counter(), Timings()  # the step's profile split
    for step in progress(range(start + 1, cfg.trainer.steps + 1), enabled=cfg.logger.console and dist.main):
        t0 = time.perf_counter()
        rollouts, scored, sampled = algo_.collect(  # B*G (this rank's B / world prompts), groups contiguous
            lambda tasks: sample_and_score(s, tasks, G, timings, TrainerState(step - 1, cfg.trainer.steps)),
            lambda: dist.share(data.next_batch()), algo, dist)
        t_gen = time.perf_counter()
        rewards = algo_.shaped_rewards(scored, rollouts, algo, weights)  # [B*G]
        if cfg.data.adaptive_floor is not None:  # the category shares follow every rank's exact-match failures
            data.observe(*outcomes(dist, rollouts, scored, cfg.reward.exact_match))
        release(s.engine)  # engine.sleep: the sampling copy's memory goes to the update
        stats = update_policy(cfg, policy, opt, sched, rollouts, rewards, s, timings)
        t_update = time.perf_counter()
        s.engine.load_weights(policy)
        t_end = time.perf_counter()

        times = {**timings.pop(), "time/update_s": t_update - t_gen, "time/sync_s": t_end - t_update,
                 "time/step_s": t_end - t0}  # + generate, reward, logprobs (reference, old), forward_backward, optimizer
        metrics = {**batch_metrics(dist, scored, rollouts, G, times), **stats, **sampled, **data.metrics(),
                   "lr": sched.get_last_lr()[0],
                   "sync/probe_diff": getattr(s.engine, "last_probe_diff", 0.0)}  # engines that check their sync
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step != cfg.trainer.steps:
            metrics.update(run_eval(step))
        if step == cfg.trainer.steps:
            summary["after_rl"] = run_eval(step)
            metrics.update(summary["after_rl"])
        s.logger.log(step, metrics)
        s.logger.samples(step, sample_rows(rollouts, scored))
        if step == cfg.trainer.steps or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
            save(cfg, s, step, opt, sched, data, summary)

    summary["time_s"]["rl"] = round(time.perf_counter() - rl_started, 1)  # this process's share, evals included
    summary["wall_s"] = time.perf_counter() - started
    memory = memory_metrics(dist)  # this process, the max over ranks
    summary["peak_rss_gb"] = max(summary.get("peak_rss_gb", 0.0), memory["mem/peak_rss_gb"])
    if "mem/cuda_max_allocated_gb" in memory:
        summary["peak_cuda_gb"] = max(summary.get("peak_cuda_gb", 0.0), memory["mem/cuda_max_allocated_gb"])
    if dist.main:
        report(s, summary, out, cfg.reward.exact_match)
    s.logger.close()
    if hasattr(s.engine, "close"):
        s.engine.close()
    return summary


def held_out_eval(cfg, s, eval_tasks, trainer_state: TrainerState | None = None) -> dict:
    """eval/* on the held-out split (pass@k with trainer.eval_k > 1) and bfcl/* on the
    configured BFCL categories: logged apart from the training reward. Under torchrun each
    rank answers its share and the scores are gathered. Rewards get `trainer_state` (the RL
    steps done, and trainer.steps), as in training."""
    t, dist = cfg.trainer, s.policy.dist
    metrics = evaluate(s.engine, s.env, eval_tasks, s.reward_fn, cfg.reward.exact_match, s.sampling, t.eval_batch,
                       t.eval_k, dist, trainer_state)[0]
    if t.eval_bfcl:
        metrics.update(evaluate_bfcl(s.engine, s.env, list(t.eval_bfcl), t.eval_bfcl_limit, s.sampling, t.eval_batch,
                                     dist)[0])
    return metrics


def sample_and_score(s, tasks: list[dict], G: int, timings: Timings | None = None, trainer_state=None):
    timings = timings or Timings()
    with timings("generate"):
        rollouts = s.env.rollout(s.engine, tasks, G, s.sampling)  # len(tasks) * G, groups contiguous
    with timings("reward"):
        return rollouts, s.reward_fn(**reward_inputs(rollouts, s.tokenizer, trainer_state))


def update_policy(cfg, policy, opt, sched, rollouts, rewards, s, timings: Timings | None = None) -> dict:
    """algo.ppo_epochs passes of algo.mini_batches optimizer steps on one batch of rollouts,
    each mini-batch micro-batched under trainer.token_budget and normalised by its counts
    summed over micro-batches and ranks, so accumulation and the ranks' summed gradients
    give exactly the full-mini-batch gradient."""
    algo, trainer, dist, timings = cfg.algo, cfg.trainer, policy.dist, timings or Timings()
    G, bf16 = algo.group_size, train_bf16(trainer, s.device)
    # a group's prompt runs once for its G completions (exact; needs the KV cache, so not
    # with gradient checkpointing)
    share = G if trainer.share_prompt and not cfg.model.gradient_checkpointing else 1
    temperature = algo.sampling.temperature
    entropy_grad = algo.entropy_coef > 0
    logprobs_of = lambda b, grad_entropy=False: policy.logprobs(  # noqa: E731
        b.input_ids, b.attention_mask, b.loss_mask.shape[1], temperature, trainer.logprob_chunk, share, grad_entropy)

    minis, indices = [], []  # [mini-batch][micro-batch] Batch, and each micro-batch's rollout indices
    for k in range(algo.mini_batches):  # whole groups, strided: the same mini-batches whatever the world size
        ids = [g * G + j for g in range(k, len(rollouts) // G, algo.mini_batches) for j in range(G)]
        chunks = [[ids[i] for i in c] for c in token_budget_chunks([rollouts[i] for i in ids], trainer.token_budget, share)]
        batches = [collate([rollouts[i] for i in c], torch.zeros(len(c)), s.tokenizer.pad_token_id, s.device) for c in chunks]
        if algo.overlong_filter:  # DAPO: a truncated completion is not trained on
            for b, c in zip(batches, chunks):
                b.loss_mask *= torch.tensor([r.finish_reason != "length" for r in (rollouts[i] for i in c)],
                                            dtype=b.loss_mask.dtype, device=b.loss_mask.device)[:, None]
        minis.append(batches)
        indices.append(chunks)
    everything = [b for batches in minis for b in batches]

    policy.eval()  # the reference and pi_old as they sample: no dropout
    with timings("logprobs"), torch.no_grad(), autocast(s.device, bf16):
        if policy.has_reference and algo.kl_coef > 0:
            with policy.reference():
                for b in even_out(everything, dist):
                    b.ref_logprobs = logprobs_of(b)[0]  # [b, C]
        if algo.ppo_epochs * algo.mini_batches > 1 or algo.kl_in_reward:  # pi_old: before the first optimizer step
            # the first mini-batch's come from its own first forward (no optimizer step yet), as
            # long as nothing needs them before it and a training-mode forward is the same function
            later = everything if algo.kl_in_reward or not policy.deterministic else [b for bs in minis[1:] for b in bs]
            for b in even_out(later, dist) if later else []:
                b.old_logprobs = logprobs_of(b)[0]  # [b, C]

    extra = {}
    if algo.kl_in_reward:  # reward -= beta * KL(sequence), with pi_old = the policy that sampled
        kl = torch.zeros(len(rollouts))
        for batches, chunks in zip(minis, indices):
            for b, c in zip(batches, chunks):
                kl[c] = sequence_kl(b.old_logprobs, b.ref_logprobs, b.loss_mask, algo.kl_estimator).float().cpu()
        rewards = rewards - algo.kl_coef * kl
        extra["kl_reward_penalty"] = float(dist.sum({"k": float(kl.sum())})["k"]) / max(
            dist.sum({"n": float(len(kl))})["n"], 1.0) * algo.kl_coef
    advantages = algo_.advantages(rewards, algo, dist)  # [n], from the whole batch's rewards
    for batches, chunks in zip(minis, indices):
        for b, c in zip(batches, chunks):
            b.advantages = advantages[c].to(s.device)

    policy.train()
    totals: dict[str, float] = {}
    steps = algo.ppo_epochs * algo.mini_batches
    mismatch_max, skipped = 0.0, 0
    golds = [gold_rollouts(s.env, s.tokenizer, [rollouts[i].task for c in chunks for i in c if i % G == 0])
             for chunks in indices] if algo.sft_coef > 0 else []  # each mini-batch's prompts' gold answers, once
    for _ in range(algo.ppo_epochs):
        for m, batches in enumerate(minis):
            norm = Normalizer([b.loss_mask for b in batches], reduce=dist.sum)
            for b in even_out(batches, dist):  # as many micro-batches on every rank (FSDP's collectives)
                with timings("forward_backward"):
                    with autocast(s.device, bf16):
                        logprobs, entropy = logprobs_of(b, entropy_grad)  # [b, C], [b, C]
                    if b.old_logprobs is None:  # on-policy (no optimizer step yet): ratio = 1
                        b.old_logprobs = logprobs.detach()
                    old = b.old_logprobs
                    loss, stats = policy_loss(algo, logprobs, old, b.ref_logprobs, b.advantages, b.loss_mask, norm,
                                              entropy, b.rollout_logprobs)
                    loss.backward()
                    release_memory(s.device)  # this micro-batch's activations, freed, leave RSS
                gap = (old - b.rollout_logprobs) * b.loss_mask  # [b, C] trainer vs engine
                stats["entropy"] = (entropy.detach() * b.loss_mask).sum() / norm.tokens
                stats["mismatch/logprob_diff"] = gap.abs().sum() / norm.tokens
                if b.loss_mask.any():
                    mismatch_max = max(mismatch_max, float(torch.exp(gap.masked_fill(b.loss_mask == 0, -1e9)).max()))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v) / steps  # sums over micro-batches, mean over steps
            if algo.sft_coef > 0:  # PPO-ptx: + sft_coef x NLL of the gold answers of these groups' prompts
                with timings("forward_backward"):
                    extra["sft_nll"] = extra.get("sft_nll", 0.0) + gold_nll_backward(
                        policy, s.tokenizer, golds[m], algo.sft_coef, trainer.token_budget, trainer.logprob_chunk,
                        bf16, algo.sft_agg) / steps
            with timings("optimizer"):
                grad_norm = policy.clip_grad_norm_(trainer.max_grad_norm)  # the global norm: every rank agrees
                if math.isfinite(grad_norm):
                    opt.step()
                    sched.step()
                else:  # a NaN/inf loss or gradient: no step, no poisoned weights; counted and reported
                    skipped += 1
                    log.warning("non-finite gradient norm (%s): optimizer step skipped", grad_norm)
                opt.zero_grad(set_to_none=True)
    extra["skipped_steps"] = skipped
    return {**dist.sum({**totals, "micro_batches": len(everything)}), **extra,
            "mismatch/max_ratio": dist.max({"r": mismatch_max})["r"], "grad_norm": grad_norm}


def batch_metrics(dist, scored, rollouts, group_size: int, times: dict) -> dict:
    """Reward, length and throughput metrics of the whole batch (every rank's rollouts), the
    slowest rank's times, and peak memory."""
    everyone = dist.gather([(scored, [(len(r.prompt), len(r.completion), r.finish_reason) for r in rollouts],
                             [episode_summary(r.episode) for r in rollouts])])
    times = dist.max(times)
    return {**reward_metrics(algo_.concat([sc for sc, _, _ in everyone]), group_size),
            **rollout_metrics([shape for _, shapes, _ in everyone for shape in shapes], times["time/step_s"]),
            **episode_metrics([e for _, _, episodes in everyone for e in episodes]),
            **times, **memory_metrics(dist)}


def outcomes(dist, rollouts, scored, name: str) -> tuple[list[str], list[float]]:
    """The category and the `name` reward (exact match) of every rollout of the batch, all ranks'."""
    mine = ([str(r.task.get("category")) for r in rollouts], list(scored.per_function[name]))
    everyone = dist.gather([mine])
    return [c for cs, _ in everyone for c in cs], [v for _, vs in everyone for v in vs]


def reward_metrics(scored, group_size: int) -> dict:
    rewards = torch.tensor(scored.total)  # [N] the whole batch
    m = {"reward/total": rewards.mean().item(), "reward/total_std": rewards.std().item() if len(rewards) > 1 else 0.0,
         "zero_variance_groups": zero_variance_share(rewards, group_size)}
    for name, values in scored.per_function.items():
        v = torch.tensor(values)
        v = v[~torch.isnan(v)]  # None: the function did not apply
        m[f"reward/{name}"] = v.mean().item() if len(v) else float("nan")
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
    """What samples.jsonl shows of rollouts; a multi-turn episode with its turns and tool results."""
    return [{"prompt": r.task["messages"][-1]["content"], "completion": r.text, "reward": scored.total[i],
             "reasons": {name: rs[i] for name, rs in scored.reasons.items()}, "ground_truth": r.task["ground_truth"],
             **({"episode": {"stop": r.episode["stop"], "final_answer": r.episode["final_answer"],
                             "turns": [{"text": t["text"], "results": [x["content"] for x in t["results"]]}
                                       for t in r.episode["turns"]]}} if r.episode is not None else {})}
            for i, r in enumerate(rollouts)]


def save(cfg, s, step, opt, sched, data, summary) -> None:
    state = {"scheduler": sched.state_dict(), "data": data.state_dict(), "summary": summary}
    checkpoint.save(Path(cfg.trainer.output_dir), step, s.policy, s.tokenizer, opt, state, cfg.trainer.keep_last)


def report(s, summary: dict, out: Path, exact_match: str) -> None:
    """summary.json and two tables: the held-out metrics, and exact match per category, at each
    stage (base, warm-up, RL)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    stages = {k: summary[k] for k in ("base", "after_warmup", "after_rl") if k in summary}
    overall = {stage: {key.removeprefix("eval/"): v for key, v in r.items() if key.count("/") == 1} for stage, r in stages.items()}
    cuda = f", CUDA peak {summary['peak_cuda_gb']:.1f} GB" if summary.get("peak_cuda_gb") else ""
    s.logger.table(f"held-out eval ({summary['wall_s']:.0f} s, peak RSS {summary['peak_rss_gb']:.1f} GB{cuda})", overall)
    name = f"/{exact_match}"
    per_category = {stage: {key.split("/")[1]: v for key, v in r.items() if key.count("/") == 2 and key.endswith(name)
                            and not key.startswith("eval/reason/")} for stage, r in stages.items()}
    s.logger.table(f"held-out exact match ({exact_match}) per category", per_category)


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
    shutdown()  # under torchrun: leave the process group together


if __name__ == "__main__":
    main()
