"""Evaluation: answers on held-out tasks scored by the configured rewards, and BFCL
categories scored by BFCL's own checker.

    python -m rl.eval model.name_or_path=outputs/smollm2-synthetic/checkpoint-12   # HF folder or LoRA adapter folder
    python -m rl.eval model.name_or_path=... 'trainer.eval_bfcl=[simple_python,multiple,parallel,parallel_multiple,irrelevance]'
    python -m rl.eval score --category simple_python --predictions preds.jsonl --out result.json

The first two take the same config as training (so the same data split, prompt and engine),
print a table per category and write eval.json and generations.jsonl to trainer.output_dir.
`score` scores raw completions without a model: each line of preds.jsonl is
{"id": <BFCL id>, "completion": <raw model text>}; ids missing from it count as wrong. For the
multi-turn categories (multi_turn_base, ...) each line is BFCL's own multi-turn result,
{"id", "result": [[["f(a=1)", ...], ...], ...]} (per user turn, per step, the call strings),
scored by BFCL's multi-turn checker; only calls of a bare name with literal arguments reach it."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

from envs.types import SamplingParams


def evaluate(engine, env, tasks: list[dict], reward_fn, exact_match: str, sampling: SamplingParams, batch: int,
             k: int = 1, dist=None, trainer_state=None):
    """Returns (metrics, generations): metrics has eval/<reward> overall and per category,
    eval/exact_match, and the share of each failure reason of the exact-match reward.
    k = 1: one greedy answer per task. k > 1: k samples at sampling.temperature, and
    eval/pass@k (some sample exact) and eval/mean@k (mean exact match over samples).
    With `dist` (a Dist under torchrun) each rank answers its share and the generations are
    gathered: every rank returns the metrics of the whole set. `trainer_state` is what the
    rewards get as trainer_state (a rewards.combine.TrainerState; None: step 0)."""
    params = sampling if k > 1 else SamplingParams(0.0, 1.0, sampling.max_new_tokens, sampling.stop)
    generations = []
    tasks = dist.share(tasks) if dist is not None else tasks
    tasks_per_chunk = max(batch // k, 1)  # batch counts completions: k per task
    for i in range(0, len(tasks), tasks_per_chunk):
        chunk = tasks[i : i + tasks_per_chunk]
        rollouts = env.rollout(engine, chunk, k, params)  # [len(chunk) * k], a task's k samples contiguous
        scored = reward_fn(**reward_inputs(rollouts, getattr(env, "tokenizer", None), trainer_state))
        for j, r in enumerate(rollouts):
            generations.append({
                "id": r.task.get("id"), "category": r.task.get("category", "default"), "sample": j % k,
                "completion": r.text,
                **{name: None if math.isnan(values[j]) else values[j] for name, values in scored.per_function.items()},
                "reason": scored.reasons[exact_match][j] if exact_match in scored.reasons else None,
                **({"episode": episode_summary(r.episode)} if r.episode is not None else {}),
            })
    if dist is not None:
        generations = dist.gather(generations)
    by_category = defaultdict(list)
    for g in generations:
        by_category[g["category"]].append(g)
    metrics = {}
    names = [name for name, _, _ in reward_fn.functions]
    for name in names:
        metrics[f"eval/{name}"] = mean(g[name] for g in generations)
        for category, rows in sorted(by_category.items()):
            metrics[f"eval/{category}/{name}"] = mean(g[name] for g in rows)
    if exact_match in names:
        metrics["eval/exact_match"] = metrics[f"eval/{exact_match}"]
        if k > 1:
            metrics.update(pass_and_mean_at_k([g[exact_match] or 0.0 for g in generations], k))
    for reason, count in count_reasons(g["reason"] for g in generations).items():
        metrics[f"eval/reason/{reason}"] = count / len(generations)
    metrics.update(episode_metrics([g.get("episode") for g in generations], "eval/"))
    return metrics, generations


def pass_and_mean_at_k(exact: list[float], k: int) -> dict[str, float]:
    """exact: [tasks * k] exact-match values, a task's k samples contiguous."""
    per_task = torch.tensor(exact, dtype=torch.float32).view(-1, k)  # [tasks, k]
    return {f"eval/pass@{k}": (per_task >= 1.0).any(1).float().mean().item(),
            f"eval/mean@{k}": per_task.mean().item()}


def evaluate_bfcl(engine, env, categories: list[str], limit: int | None, sampling: SamplingParams, batch: int,
                  dist=None):
    """Greedy answers on BFCL categories, scored by BFCL's AST checker: bfcl/<category> accuracy
    (each rank answers its share under torchrun; the results are gathered)."""
    from rl import bfcl

    greedy = SamplingParams(0.0, 1.0, sampling.max_new_tokens, sampling.stop)
    metrics, generations = {}, []
    for category in categories:
        if category.startswith("multi_turn"):
            rows = bfcl_multi_turn_rows(engine, env, category, limit, greedy, batch, dist)
            generations += [{"id": i, "category": f"bfcl/{category}", "turns": t, **r} for i, t, r in rows]
            metrics[f"bfcl/{category}"] = bfcl.summarize(category, [r for _, _, r in rows])["accuracy"]
            continue
        entries = bfcl.load_category(category)[: limit or None]
        mine = dist.share(entries) if dist is not None else entries
        tasks = [bfcl.to_task(e) for e in mine]
        texts = [r.text for i in range(0, len(tasks), batch) for r in env.rollout(engine, tasks[i : i + batch], 1, greedy)]
        fmt = getattr(env, "parser", "tool_n1")  # model.tool_format
        rows = [(entry["id"], text, bfcl.score_entry(entry, text, fmt)) for entry, text in zip(mine, texts)]
        if dist is not None:
            rows = dist.gather(rows)
        results = [r for _, _, r in rows]
        generations += [{"id": i, "category": f"bfcl/{category}", "completion": t, **r} for i, t, r in rows]
        metrics[f"bfcl/{category}"] = bfcl.summarize(category, results)["accuracy"]
    if categories:
        metrics["bfcl/mean"] = mean(metrics[f"bfcl/{c}"] for c in categories)
    return metrics, generations


def bfcl_multi_turn_rows(engine, env, category: str, limit: int | None, greedy: SamplingParams, batch: int, dist=None):
    """BFCL multi-turn entries run as episodes over BFCL's API classes (the configured env if it
    has them, else a tool env with the same loop settings) and scored by BFCL's multi-turn
    checker: [(id, turns in BFCL's result format, result)]."""
    from envs.bfcl_multi_turn import load_multi_turn
    from rl.bfcl_multi_turn import episode_to_turns, score_entry_multi_turn

    tasks = load_multi_turn(category, limit or None)
    mine = dist.share(tasks) if dist is not None else tasks
    runner = bfcl_env(env)
    rows = []
    for i in range(0, len(mine), batch):
        for task, r in zip(mine[i : i + batch], runner.rollout(engine, mine[i : i + batch], 1, greedy)):
            turns = episode_to_turns(r.episode)
            turns += [[] for _ in range(1 + len(task["user_turns"]) - len(turns))]  # turns never reached: no answer
            rows.append((task["id"], turns, score_entry_multi_turn(task, turns)))
    return dist.gather(rows) if dist is not None else rows


def bfcl_env(env):
    """A multi-turn env whose tools are BFCL's API classes, with `env`'s prompt and loop settings."""
    from envs.bfcl_multi_turn import BFCLTools
    from envs.tool_env import ToolEnv

    if isinstance(env, ToolEnv) and any(isinstance(s, BFCLTools) for s in env.toolbox.sources):
        return env
    loop = {"max_turns": getattr(env, "max_turns", 5), "max_episode_tokens": getattr(env, "max_episode_tokens", None),
            "max_context": getattr(env, "max_context", None), "parser": getattr(env, "parser", "tool_n1")}
    single = getattr(env, "single", env)
    return ToolEnv(env.tokenizer, tools=[{"_target_": "envs.bfcl_multi_turn.BFCLTools"}], max_tool_tokens=512,
                   system_prompt=getattr(single, "system_prompt", None),
                   use_template_tools=getattr(single, "use_template_tools", False), **loop)


def columns(tasks: list[dict]) -> dict[str, list]:
    """Dataset columns as keyword lists, the way TRL hands them to reward functions."""
    keys = {k for t in tasks for k in t}
    return {k: [t.get(k) for t in tasks] for k in keys}


def reward_inputs(rollouts, tokenizer=None, trainer_state=None) -> dict:
    """The keywords of a reward call for a batch of rollouts, TRL's: completions (texts),
    prompts (the rendered prompt text, decoded once per distinct prompt, special tokens kept;
    None without a tokenizer), completion_ids, trainer_state and the dataset columns; and
    `episodes` (multi-turn envs: each rollout's episode dict; None for single-turn)."""
    rendered: dict[tuple, str] = {}
    if tokenizer is not None:
        for r in rollouts:
            key = tuple(r.prompt)
            if key not in rendered:
                rendered[key] = tokenizer.decode(r.prompt, skip_special_tokens=False)
    return {**columns([r.task for r in rollouts]),
            "completions": [r.text for r in rollouts],
            "prompts": [rendered[tuple(r.prompt)] for r in rollouts] if tokenizer is not None else None,
            "completion_ids": [list(r.completion) for r in rollouts],
            "episodes": [r.episode for r in rollouts],
            "trainer_state": trainer_state}


def episode_summary(episode: dict | None) -> tuple | None:
    """The numbers of an episode that metrics count (small enough to gather across ranks)."""
    if episode is None:
        return None
    return episode["stop"], episode["num_turns"], episode["num_calls"], episode["tool_errors"], episode["drift"]


def episode_metrics(summaries: list[tuple | None], prefix: str = "") -> dict[str, float]:
    """Multi-turn episodes: mean turns, calls and tool errors, the share with drift (ids that a
    fresh render of the conversation would not give) and of each stop reason."""
    summaries = [x for x in summaries if x is not None]
    if not summaries:
        return {}
    n = len(summaries)
    m = {f"{prefix}episode/turns": sum(x[1] for x in summaries) / n, f"{prefix}episode/calls": sum(x[2] for x in summaries) / n,
         f"{prefix}episode/tool_errors": sum(x[3] for x in summaries) / n,
         f"{prefix}episode/drift": sum(bool(x[4]) for x in summaries) / n}
    for stop, count in count_reasons(x[0] for x in summaries).items():
        m[f"{prefix}episode/stop/{stop}"] = count / n
    return m


def count_reasons(reasons) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in reasons:
        if r is not None:
            counts[r] += 1
    return dict(counts)


def mean(values) -> float:
    """Of the values that are not None (a reward that did not apply); NaN if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "score":
        sys.exit(score_main(sys.argv[2:]))
    import hydra

    from rl import config  # noqa: F401  registers the schemas
    from rl.setup import CONF_DIR, Setup

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def run(cfg):
        setup = Setup.build(cfg)
        dist = setup.policy.dist  # under torchrun each rank answers its share
        tasks = setup.eval_tasks[: cfg.trainer.eval_size] if cfg.trainer.eval_size else setup.eval_tasks
        with torch.no_grad():
            metrics, generations = evaluate(setup.engine, setup.env, tasks, setup.reward_fn, cfg.reward.exact_match,
                                            setup.sampling, cfg.trainer.eval_batch, cfg.trainer.eval_k, dist)
            bfcl_metrics, bfcl_generations = evaluate_bfcl(setup.engine, setup.env, list(cfg.trainer.eval_bfcl),
                                                           cfg.trainer.eval_bfcl_limit, setup.sampling,
                                                           cfg.trainer.eval_batch, dist)
        metrics.update(bfcl_metrics)
        if hasattr(setup.engine, "close"):
            setup.engine.close()
        if not dist.main:
            return
        out = Path(cfg.trainer.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        with (out / "generations.jsonl").open("w") as f:
            for g in generations + bfcl_generations:
                f.write(json.dumps(g, ensure_ascii=False) + "\n")
        setup.logger.table(f"eval of {cfg.model.name_or_path}", split_table(metrics))
        print(json.dumps({k: v for k, v in metrics.items() if k.count("/") == 1 and "/reason" not in k}, indent=2))

    run()


def score_main(argv: list[str]) -> int:
    """`python -m rl.eval score`: BFCL accuracy of raw completions, no model needed."""
    from rl import bfcl

    p = argparse.ArgumentParser(prog="python -m rl.eval score", description=score_main.__doc__)
    p.add_argument("--category", required=True, help=f"one of {bfcl.SINGLE_TURN} or multi_turn_base, "
                   "multi_turn_long_context, multi_turn_miss_param, multi_turn_miss_func")
    p.add_argument("--predictions", required=True,
                   help='JSONL: {"id": <BFCL id>, "completion": <raw model text>}, or a BFCL result file ({"id", "result"})')
    p.add_argument("--format", default="auto", choices=bfcl.FORMATS,
                   help="how completions are written: tool_n1 (ours), hermes, bfcl ([f(a=1)]), or auto (try each)")
    p.add_argument("--out", required=True, help="where to write the result JSON")
    args = p.parse_args(argv)
    predictions = {}
    for n, line in enumerate(Path(args.predictions).read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            predictions[row["id"]] = row["completion"] if "completion" in row else row["result"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"{args.predictions}:{n}: each line must be a JSON object with keys id and completion "
                             f"(or BFCL's id and result) ({type(e).__name__}: {e})") from None
    if args.category.startswith("multi_turn"):  # BFCL's multi-turn result format: turns of steps of call strings
        from rl.bfcl_multi_turn import score_multi_turn

        result = score_multi_turn(args.category, predictions)
    else:
        result = bfcl.score(args.category, predictions, fmt=args.format)
    Path(args.out).write_text(json.dumps({k: result[k] for k in ("category", "n", "correct", "accuracy")}, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def split_table(metrics: dict) -> dict[str, dict[str, float]]:
    """eval/<category>/<name> -> {category: {name: value}}; overall rows under 'all'."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[0] == "bfcl":
            table[f"bfcl/{parts[1]}"]["accuracy"] = value
            continue
        if len(parts) == 2 and parts[1] != "exact_match":
            table["all"][parts[1]] = value
        elif len(parts) == 3 and parts[1] != "reason":
            table[parts[1]][parts[2]] = value
    return dict(table)


if __name__ == "__main__":
    main()
