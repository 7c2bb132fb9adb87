"""Engines turn prompts into sampled completions with their token logprobs.

    class Engine(Protocol):
        def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]
            # len(prompts) * n samples, the n of each prompt contiguous
        def load_weights(self, policy) -> None
            # make the engine sample from the policy's current weights
    Optional: release() frees what sampling holds until the next load_weights (the trainer
    calls it before each update); close() releases processes; last_sync_s / last_probe_diff
    are logged.
"""

from __future__ import annotations

from typing import Protocol

from envs.types import Sample, SamplingParams


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]: ...

    def load_weights(self, policy) -> None: ...


def release(engine) -> None:
    """Before an update: free what the engine holds for sampling, if it can (engine.sleep)."""
    if hasattr(engine, "release"):
        engine.release()


def make_engine(cfg, policy, tokenizer, seed: int = 0) -> Engine:
    if cfg.name == "hf":
        from rl.engines.hf import HFEngine, native_dtype

        dtype = native_dtype(policy.device) if cfg.dtype == "auto" else cfg.dtype
        return HFEngine(policy, tokenizer, dtype=dtype, prefill_once=cfg.prefill_once, lora_merged=cfg.lora_merged,
                        sleep=cfg.sleep)
    if cfg.name == "vllm":
        from rl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, policy, tokenizer, seed)
    if cfg.name == "vllm_server":
        from rl.engines.vllm_server import VLLMServerEngine

        return VLLMServerEngine(cfg, policy, tokenizer)
    raise ValueError(f"engine.name={cfg.name!r} is not available: use engine=hf, engine=vllm or engine=vllm_server")
