"""Evaluation: greedy answers on held-out tasks, scored by the configured rewards.

    python -m rl.eval model.name_or_path=outputs/smollm2-synthetic/checkpoint-12

takes the same config as training (so the same data split and prompt), prints a table per
category and writes eval.json and generations.jsonl next to the model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from rl.types import SamplingParams


def evaluate(engine, env, tasks: list[dict], reward_fn, exact_match: str, sampling: SamplingParams, batch: int):
    """Returns (metrics, generations): metrics has eval/<reward> overall and per category,
    eval/exact_match, and the share of each failure reason of the exact-match reward."""
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=sampling.max_new_tokens, stop=sampling.stop)
    generations = []
    for i in range(0, len(tasks), batch):
        chunk = tasks[i : i + batch]
        rollouts = env.rollout(engine, chunk, 1, greedy)
        scored = reward_fn([r.text for r in rollouts], **columns(chunk))
        for j, r in enumerate(rollouts):
            generations.append({
                "id": r.task.get("id"), "category": r.task.get("category", "default"), "completion": r.text,
                **{name: values[j] for name, values in scored.per_function.items()},
                "reason": scored.reasons[exact_match][j] if exact_match in scored.reasons else None,
            })
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
    for reason, count in count_reasons(g["reason"] for g in generations).items():
        metrics[f"eval/reason/{reason}"] = count / len(generations)
    return metrics, generations


def columns(tasks: list[dict]) -> dict[str, list]:
    """Dataset columns as keyword lists, the way TRL hands them to reward functions."""
    keys = {k for t in tasks for k in t}
    return {k: [t.get(k) for t in tasks] for k in keys}


def count_reasons(reasons) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in reasons:
        if r is not None:
            counts[r] += 1
    return dict(counts)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    import hydra

    from rl import config  # noqa: F401  registers the schemas
    from rl.setup import CONF_DIR, Setup

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def run(cfg):
        setup = Setup.build(cfg)
        sampling = setup.sampling
        tasks = setup.eval_tasks[: cfg.trainer.eval_size] if cfg.trainer.eval_size else setup.eval_tasks
        with torch.no_grad():
            metrics, generations = evaluate(setup.engine, setup.env, tasks, setup.reward_fn, cfg.reward.exact_match,
                                            sampling, cfg.trainer.eval_batch)
        out = Path(cfg.trainer.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        with (out / "generations.jsonl").open("w") as f:
            for g in generations:
                f.write(json.dumps(g, ensure_ascii=False) + "\n")
        setup.logger.table(f"eval of {cfg.model.name_or_path}", split_table(metrics))
        print(json.dumps({k: v for k, v in metrics.items() if "/" not in k[5:]}, indent=2))

    run()


def split_table(metrics: dict) -> dict[str, dict[str, float]]:
    """eval/<category>/<name> -> {category: {name: value}}; overall rows under 'all'."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[1] != "exact_match":
            table["all"][parts[1]] = value
        elif len(parts) == 3 and parts[1] != "reason":
            table[parts[1]][parts[2]] = value
    return dict(table)


if __name__ == "__main__":
    main()
