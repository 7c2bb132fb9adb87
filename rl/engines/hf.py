"""The transformers engine: batched sampling with `model.generate`.

Two things it does beyond a plain generate call:
- the prompt is prefilled once and its KV cache repeated G times (generate's own
  num_return_sequences would prefill every prompt G times);
- the log-prob of every sampled token is recorded on the fly (one [N, V] buffer, not the
  whole [N, T, V] score history).
It samples from the policy's own model when it can: one process, no `dtype`, and no LoRA
(or lora_merged=False: then through the adapters, which costs no memory but samples ~1.5x
slower on CPU). Otherwise from its own plain copy of the base architecture, which
`load_weights` fills with the policy's full weights (gathered from the shards, adapters
merged, one tensor at a time): with `dtype` set (bf16 samples ~1.5x faster where the CPU
has bf16), under LoRA, and on every rank of a distributed run (a sharded model cannot
generate rank by rank).
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LogitsProcessor, LogitsProcessorList

from rl.batching import left_pad, position_ids
from rl.models import DTYPES
from envs.types import Sample, SamplingParams


class SampledLogprobs(LogitsProcessor):
    """Records log pi(token | prefix) / temperature of each token as it is sampled.

    transformers runs user processors before its temperature/top-p warpers, so `scores` here
    are raw logits; the token chosen from step t's scores shows up in input_ids at step t+1."""

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None  # [N, V] log-softmax of the last step
        self.taken: list[torch.Tensor] = []  # per step [N]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.taken.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        self._take(last_tokens)
        return torch.stack(self.taken, dim=1)  # [N, T_new]


def truncate(tokens: list[int], eos_ids: set[int], stop: tuple[str, ...], tokenizer) -> tuple[list[int], str]:
    """Cut the generated row after the first EOS or stop string; the rest is padding."""
    for k, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: k + 1], "stop"
        if stop:
            window = tokenizer.decode(tokens[max(0, k - 16): k + 1])
            if any(window.endswith(s) for s in stop):
                return tokens[: k + 1], "stop"
    return tokens, "length"


class HFEngine:
    def __init__(self, policy, tokenizer, dtype: str | None = None, prefill_once: bool = True, lora_merged: bool = True):
        self.tokenizer = tokenizer
        self.prefill_once = prefill_once
        self.last_sync_s = 0.0
        self.shared = dtype is None and not policy.dist.distributed and not (policy.lora and lora_merged)
        if self.shared:
            self.model = policy.model
        else:
            self.model = plain_copy(policy, DTYPES[dtype] if dtype else policy.dtype)
            self.load_weights(policy)
        self.eos_ids = set(_as_list(policy.generation_config.eos_token_id)) | {tokenizer.eos_token_id}

    def load_weights(self, policy) -> None:
        """Copy the policy's full weights into the sampling copy (nothing to do when shared)."""
        start = time.perf_counter()
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

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]:
        model, device = self.model, self.model.device
        was_training = model.training
        model.eval()
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id, device)  # [B, P]
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [B*G, P]
        kwargs = {}
        if self.prefill_once and n > 1:
            cache = DynamicCache(config=model.config)
            prefix = slice(None, ids.shape[1] - 1)  # generate feeds the last prompt token itself
            single_ids, single_mask = ids[::n, prefix], mask[::n, prefix]
            model(input_ids=single_ids, attention_mask=single_mask, position_ids=position_ids(single_mask),
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(n)
            kwargs["past_key_values"] = cache
        recorder = SampledLogprobs(sampling.temperature)
        sample = sampling.temperature > 0
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            logits_processor=LogitsProcessorList([recorder]),
            stop_strings=list(sampling.stop) or None,
            tokenizer=self.tokenizer if sampling.stop else None,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        new = out[:, ids.shape[1]:]  # [B*G, T_new]
        logprobs = recorder.finish(new[:, -1])  # [B*G, T_new]
        model.train(was_training)
        samples = []
        for row, lps in zip(new.tolist(), logprobs.tolist()):
            tokens, reason = truncate(row, self.eos_ids, sampling.stop, self.tokenizer)
            samples.append(Sample(tokens, lps[: len(tokens)], reason))
        return samples


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
    return model.to(policy.device).eval().requires_grad_(False)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
