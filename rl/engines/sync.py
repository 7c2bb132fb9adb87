"""Weight sync for engines that run outside the trainer's model (vllm, vllm_server), and
the check that it worked.

Peers' worst vLLM failure is a sync that silently does nothing (or half of something): the
engine keeps sampling from stale weights and nothing says so. So every sync ends with a
probe: the engine decodes a fixed prompt greedily and reports the log-prob of each token;
the trainer scores the same tokens with the policy; if they differ by more than a tolerance
the run stops with both numbers.
"""

from __future__ import annotations

import atexit
from contextlib import nullcontext
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from rl.models import DTYPES

PROBE_MESSAGES = [{"role": "user", "content": "What is the weather in Oslo in celsius? Answer with a tool call."}]
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.03}  # mean |diff| per probe token


class WeightSyncError(RuntimeError):
    """The engine is not sampling from the policy's weights."""


def sync_folder(parent: str | None) -> Path:
    """A fresh folder in RAM (/dev/shm) the weights pass through, removed at exit."""
    root = parent or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    folder = Path(tempfile.mkdtemp(prefix="toolcall-rl-weights-", dir=root))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def export_weights(policy, folder: Path, dtype: str, shard_mb: int) -> list[Path]:
    """Write the policy's weights as safetensors shards of at most shard_mb, cast to dtype.

    Tied tensors (lm_head = embed_tokens) are written once: the loader re-ties them. Each
    shard is written under a temporary name and renamed, so a reader never sees half a file."""
    seen: set[int] = set()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, limit = 0, shard_mb << 20
    for name, value in policy.state_dict().items():
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensor = value.detach().to("cpu", DTYPES[dtype]).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    paths = []
    for i, shard in enumerate(shards):
        path = folder / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tmp = folder / f".{path.name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        paths.append(path)
    for stale in set(folder.glob("*.safetensors")) - set(paths):  # a different shard count than last time
        stale.unlink()
    return paths


def export_model(policy, tokenizer, folder: Path, dtype: str, shard_mb: int) -> None:
    """A complete HF model folder (config, tokenizer, weights) an engine can start from."""
    policy.config.save_pretrained(folder)
    if policy.generation_config is not None:
        policy.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    export_weights(policy, folder, dtype, shard_mb)


def probe_prompt(tokenizer) -> list[int]:
    return list(tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


@torch.no_grad()
def trainer_logprobs(policy, prompt: list[int], tokens: list[int], temperature: float = 1.0,
                     dtype: str = "float32") -> list[float]:
    """log pi(token_t | prompt, tokens_<t) under the policy at `temperature`; with a
    low-precision dtype the forward runs under autocast to it, to compare like with like
    (an fp32 trainer and a bf16 engine differ by up to ~0.5 nats on a token from
    numerics alone, measured on SmolLM2 after the warm-up)."""
    ids = torch.tensor([prompt + tokens], device=policy.device)  # [1, P+T]
    cast = torch.autocast(policy.device.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()
    with cast:
        logits = policy(input_ids=ids).logits[0, len(prompt) - 1: -1].float() / temperature  # [T, V]
    return torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).squeeze(1).tolist()


def check_probe(engine_lps: list[float], trainer_lps: list[float], tolerance: float, engine: str) -> float:
    """Mean |difference| per probe token; raises WeightSyncError with both rows when over
    the tolerance. The mean, not the max: low-precision noise spikes on single tokens,
    while stale or half-loaded weights move every token."""
    if len(engine_lps) != len(trainer_lps) or not engine_lps:
        raise WeightSyncError(f"{engine}: the probe returned {len(engine_lps)} log-probs for {len(trainer_lps)} tokens")
    diff = sum(abs(a - b) for a, b in zip(engine_lps, trainer_lps)) / len(engine_lps)
    if not diff <= tolerance:  # also catches NaN
        raise WeightSyncError(
            f"{engine} weight sync check failed: after loading the policy's weights, the engine's greedy log-probs "
            f"of the probe prompt differ from the trainer's by {diff:.4g} per token on average "
            f"(engine.probe_tolerance={tolerance}).\n"
            f"  engine : {[round(x, 4) for x in engine_lps]}\n  trainer: {[round(x, 4) for x in trainer_lps]}\n"
            "The engine would sample from stale or partly loaded weights. If the gap is only numerics, raise "
            "engine.probe_tolerance.")
    return diff


def verify_probe(sample, policy, prompt: list[int], dtype: str, tolerance: float, engine: str) -> float:
    """The engine's greedy probe `sample` (a Sample) against the trainer's log-probs of the same tokens."""
    trainer = trainer_logprobs(policy, prompt, sample.completion, dtype=dtype)
    return check_probe(sample.rollout_logprobs, trainer, tolerance, engine)


def kv_cache_bytes(kv_cache_gb: float | None, cuda: bool) -> int | None:
    """vLLM's KV-cache size; on CPU 1 GiB by default, since there gpu_memory_utilization
    would reserve that share of host RAM (and fails at start on a small machine)."""
    gb = kv_cache_gb if kv_cache_gb is not None else (None if cuda else 1.0)
    return None if gb is None else int(gb * (1 << 30))


def tolerance(cfg, dtype: str) -> float:
    return cfg.probe_tolerance if cfg.probe_tolerance is not None else DEFAULT_TOLERANCE[dtype]
