"""Seconds per SFT warm-up step: our loop (rl/sft.py) against TRL's SFTTrainer, same model,
same gold answers, same batch, in one process.

    python bench/sft_warmup.py --steps 3 --batch 8

Both compute the loss on answer tokens only; ours reuses the env's exact prompt tokens and
computes log-probs of answer positions only, in chunks."""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from envs.single_turn import SingleTurnEnv, gold_answer
from envs.synthetic import generate
from rl.models import smollm2_folder
from rl.parallel import Dist
from rl.policy import Policy
from rl.sft import warm_up


def ours(model, tokenizer, env, tasks, steps, batch) -> float:
    cfg = OmegaConf.create({"steps": steps, "batch_size": batch, "lr": 5e-5})
    start = time.perf_counter()
    warm_up(cfg, Policy(model, Dist()), tokenizer, env, tasks, token_budget=1 << 20)
    return (time.perf_counter() - start) / steps


def trl(model, tokenizer, env, tasks, steps, batch) -> float:
    rows = [{"prompt": env.reset(t), "completion": [{"role": "assistant", "content": gold_answer(t)}]}
            for t in tasks[: steps * batch]]
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch, learning_rate=5e-5,
                         lr_scheduler_type="constant", save_strategy="no", report_to="none", completion_only_loss=True,
                         disable_tqdm=True, use_cpu=True, logging_steps=1)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    env = SingleTurnEnv(tokenizer)
    tasks = generate(a.steps * a.batch, seed=11)
    result = {}
    for name, fn in (("toolcall_rl", ours), ("trl_sfttrainer", trl)):
        model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32)
        result[f"{name}_s_per_step"] = round(fn(model, tokenizer, env, tasks, a.steps, a.batch), 2)
    result["ratio_trl_over_ours"] = round(result["trl_sfttrainer_s_per_step"] / result["toolcall_rl_s_per_step"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
