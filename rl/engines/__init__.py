"""Engines turn prompts into sampled completions with their token logprobs.

    class Engine(Protocol):
        def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]
            # len(prompts) * n samples, the n of each prompt contiguous
        def load_weights(self, policy) -> None
            # make the engine sample from the policy's current weights
"""

from __future__ import annotations

from typing import Protocol

from rl.types import Sample, SamplingParams


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]: ...

    def load_weights(self, policy) -> None: ...


def make_engine(cfg, policy, tokenizer) -> Engine:
    if cfg.name == "hf":
        from rl.engines.hf import HFEngine

        return HFEngine(policy, tokenizer, dtype=cfg.dtype, prefill_once=cfg.prefill_once)
    raise ValueError(f"engine.name={cfg.name!r} is not available: use engine=hf")
