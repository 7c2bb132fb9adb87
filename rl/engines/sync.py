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
import copy
import json
import os
from contextlib import nullcontext
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from rl.models import DTYPES
from rl.parallel import reshard

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


def export_weights(policy, folder: Path, dtype: str | None, shard_mb: int, write: bool = True) -> list[Path]:
    """Write policy.full_state() (gathered, adapters merged) in `dtype` (null: the policy's)
    as safetensors shards. write=False takes part in the gathering (every rank must) without
    writing: the ranks that do not push."""
    items = policy.full_state(dtype=DTYPES[dtype] if dtype else None, device="cpu")
    if not write:
        for _ in items:
            pass
        return []
    return write_shards(items, folder, shard_mb)


def write_shards(items, folder: Path, shard_mb: int) -> list[Path]:
    """(name, tensor) pairs -> safetensors shards of at most shard_mb, plus the index
    transformers loads them by. Memory stays bounded by a shard. Each file is written under
    a temporary name and renamed, so a reader never sees half a file."""
    shard: dict[str, torch.Tensor] = {}
    size, limit, paths, weight_map = 0, shard_mb << 20, [], {}

    def flush() -> None:
        path = folder / f"model-{len(paths) + 1:05d}.safetensors"
        tmp = folder / f".{path.name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
        shard.clear()

    for name, value in items:
        tensor = value.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > limit:
            flush()
            size = 0
        shard[name] = tensor
        size += nbytes
    if shard or not paths:
        flush()
    index, tmp = folder / "model.safetensors.index.json", folder / ".index.tmp"
    tmp.write_text(json.dumps({"metadata": {"total_size": sum(p.stat().st_size for p in paths)}, "weight_map": weight_map},
                              indent=1))
    os.replace(tmp, index)
    for stale in set(folder.glob("*.safetensors")) - set(paths):  # a different shard count than last time
        stale.unlink()
    return paths


def export_model(policy, tokenizer, folder: Path, dtype: str | None, shard_mb: int, write: bool = True) -> None:
    """A complete HF model folder (config, generation config, tokenizer, weights) of the base
    architecture, adapters merged: what an engine starts from and what rl.eval loads."""
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(policy.config)
        config.use_cache = True  # gradient checkpointing switches it off in the trainer's copy
        if dtype:
            config.dtype = dtype
        config.save_pretrained(folder)
        if policy.generation_config is not None:
            policy.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    export_weights(policy, folder, dtype, shard_mb, write)


def probe_prompt(tokenizer) -> list[int]:
    return list(tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


@torch.no_grad()
def trainer_logprobs(policy, prompt: list[int], tokens: list[int], temperature: float = 1.0,
                     dtype: str = "float32") -> list[float]:
    """log pi(token_t | prompt, tokens_<t) under the policy (a Policy handle: a collective
    forward when sharded) at `temperature`; with a low-precision dtype the forward runs under
    autocast to it, to compare like with like (an fp32 trainer and a bf16 engine differ by up
    to ~0.5 nats on a token from numerics alone, measured on SmolLM2 after the warm-up)."""
    ids = torch.tensor([prompt + tokens], device=policy.device)  # [1, P+T]
    cast = torch.autocast(policy.device.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()
    was_training = policy.module.training
    policy.eval()
    with cast:
        logprobs, _ = policy.logprobs(ids, torch.ones_like(ids), len(tokens), temperature)  # [1, T]
    policy.train(was_training)
    reshard(policy.module)  # no backward follows: let an FSDP root give its gathered weights back
    return logprobs[0].float().tolist()


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
