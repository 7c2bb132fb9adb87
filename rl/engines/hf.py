"""The transformers engine: batched sampling with the model's own forward, in the loop of
rl/engines/decode.py (prefill once, KV cache in preallocated buffers, inverse-CDF sampling,
the log-prob of every sampled token recorded on the fly).
It samples from the policy's own model when it can: one process, no `dtype`, and no LoRA
(or lora_merged=False: then through the adapters, which costs no memory but samples ~1.5x
slower on CPU). Otherwise from its own plain copy of the base architecture, which
`load_weights` fills with the policy's full weights (gathered from the shards, adapters
merged, one tensor at a time): with `dtype` set (bf16 samples ~1.5x faster where the CPU
has bf16), under LoRA, and on every rank of a distributed run (a sharded model cannot
generate rank by rank).

With engine.sleep the trainer calls `release()` before each update: the copy's weights are
freed, and load_weights allocates and fills them again (every rank calls both, in step). The
update gets that memory (a bf16 copy of a 135M model: 0.27 GB) for ~0.1 s of allocation a step.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
from transformers import AutoModelForCausalLM

from rl import attention
from rl.engines import decode
from rl.models import DTYPES
from envs.types import Sample, SamplingParams


class HFEngine:
    def __init__(self, policy, tokenizer, dtype: str | None = None, prefill_once: bool = True, lora_merged: bool = True,
                 sleep: bool = False):
        self.tokenizer = tokenizer
        self.prefill_once = prefill_once
        self.last_sync_s = 0.0
        self.shared = dtype is None and not policy.dist.distributed and not (policy.lora and lora_merged)
        self.sleep = sleep and not self.shared
        self._shapes: dict[int, torch.Size] = {}  # released: each freed weight's shape
        if self.shared:
            self.model = policy.model
        else:
            self.model = plain_copy(policy, DTYPES[dtype] if dtype else policy.dtype)
            self.load_weights(policy)
        self.eos_ids = set(_as_list(policy.generation_config.eos_token_id)) | {tokenizer.eos_token_id}

    def release(self) -> None:
        """engine.sleep: free the copy's weights until the next load_weights."""
        if self.sleep:
            for p in self.model.parameters():  # tied weights once
                if id(p) not in self._shapes:
                    self._shapes[id(p)] = p.shape
                    p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def load_weights(self, policy) -> None:
        """Copy the policy's full weights into the sampling copy (nothing to do when shared)."""
        start = time.perf_counter()
        if self._shapes:  # released: allocate again
            for p in self.model.parameters():
                p.data = torch.empty(self._shapes.pop(id(p)), dtype=p.dtype, device=p.device)
        if not self.shared:
            target = self.model.state_dict()
            filled: set[int] = set()
            with torch.no_grad():
                for name, value in policy.full_state():
                    if name not in target:
                        raise KeyError(f"the policy has a weight {name!r} that the engine's copy of "
                                       f"{type(self.model).__name__} does not")
                    target[name].copy_(value)
                    filled.add(target[name].data_ptr())
            missing = [n for n, t in target.items() if t.data_ptr() not in filled]
            if missing:
                raise KeyError(f"the engine's copy got no value for {missing[:5]} from the policy")
        self.last_sync_s = time.perf_counter() - start

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]:
        if self._shapes:
            raise RuntimeError("the engine's weights were released (engine.sleep): call load_weights(policy) first")
        was_training = self.model.training
        self.model.eval()
        try:
            return decode.sample(self.model, self.tokenizer, prompts, n, sampling, self.eos_ids, self.prefill_once)
        finally:
            self.model.train(was_training)


def native_dtype(device: torch.device) -> str | None:
    """engine.dtype=auto: bfloat16 where it is computed natively (CUDA, CPUs with AVX-512-BF16 or
    AMX), else None (sample from the policy's own weights)."""
    if device.type == "cuda":
        return "bfloat16"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def plain_copy(policy, dtype: torch.dtype):
    """An uninitialised model of the policy's base architecture, on the policy's device."""
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(policy.config)
    config.use_cache = True  # gradient checkpointing switches it off in the trainer's config
    with no_init_weights(), (torch.device(policy.device) if policy.device.type == "cuda" else nullcontext()):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=policy.model_cfg.get("trust_remote_code", False))
    model.tie_weights()  # from_config ties only when it initialises
    model.generation_config = copy.deepcopy(policy.generation_config)
    model = model.to(policy.device).eval().requires_grad_(False)
    attention.use_on_cpu(model)
    return model


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
