"""Optional supervised warm-up on gold answers (TRL's SFTTrainer), before RL.

A 135M model answers tool requests in prose: every completion of a group scores 0, so GRPO
has no gradient. A few SFT steps on gold Tool-N1 answers give it the format; RL then has
groups with variance to learn from."""

from __future__ import annotations

import logging
import tempfile

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from envs.single_turn import gold_answer

log = logging.getLogger(__name__)


def sft_dataset(env, tasks: list[dict]) -> Dataset:
    """Conversational prompt-completion rows: the env's exact prompt, the gold answer."""
    return Dataset.from_list([
        {"prompt": env.reset(t), "completion": [{"role": "assistant", "content": gold_answer(t)}]} for t in tasks
    ])


def warm_up(cfg, policy, tokenizer, env, tasks: list[dict], seed: int) -> dict:
    """cfg: trainer.sft. Trains `policy` in place; returns the last logged train metrics."""
    needed = cfg.steps * cfg.batch_size
    rows = (tasks * (needed // len(tasks) + 1))[:needed]
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
            report_to="none", seed=seed, completion_only_loss=True, disable_tqdm=True,
            use_cpu=policy.device.type == "cpu", bf16=policy.device.type == "cuda", max_length=2048,
        )
        trainer = SFTTrainer(model=policy, args=args, train_dataset=sft_dataset(env, rows), processing_class=tokenizer)
        trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
    policy.config.use_cache = True
    return {"sft/loss_first": history[0]["loss"], "sft/loss_last": history[-1]["loss"]} if history else {}
