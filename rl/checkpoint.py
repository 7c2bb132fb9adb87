"""Atomic checkpoints and exact resume, in one process or under torchrun.

    checkpoint-<step>/
      config.json, model-*.safetensors, tokenizer   the policy as an HF folder (rl.eval, from_pretrained),
                                                    gathered from the shards by every rank, written by rank 0
      adapter_config.json, adapter_model.safetensors   instead, under LoRA: the adapter in PEFT's own format
                                                    (PeftModel.from_pretrained) + toolcall_rl_base.json
      checkpoint.json     step, number of processes, LoRA or not
      trainer_state.pt    step, LR schedule, data position, summary, world size; in one process also
                          the optimizer and the RNG. Written last: it marks the folder complete.
      dcp/                distributed: trainable weights + optimizer state, sharded (torch.distributed.checkpoint)
      rng-rank<r>.pt      distributed: each rank's RNG
      manifest.json       every file's size and sha256, written last: a folder whose files do not
                          match it is incomplete, and resume falls back to the newest one that does

A resumed run takes the same next step as one never stopped. A checkpoint is written to a
temporary folder and renamed: a crash mid-save leaves the previous one intact. checkpoint-0
(where RL starts, after any warm-up) is never pruned: it is the KL reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rl import lora
from rl.engines.sync import export_model
from rl.parallel import local, reshard

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE = "trainer_state.pt"
META = "checkpoint.json"  # step, world size: readable before anything loads
MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(output_dir: Path, step: int, policy, tokenizer, optimizer, trainer_state: dict, keep_last: int) -> Path:
    """Every rank calls this (the weights are gathered, the shards written by each); rank 0
    writes the HF folder or adapter and the trainer state, then renames."""
    d = policy.dist
    bad = [n for n, p in policy.named_trainable() if not torch.isfinite(local(p)).all()]
    if d.max({"bad": float(len(bad))})["bad"]:
        raise RuntimeError(f"refusing to write checkpoint-{step}: the weights hold NaN/inf ({bad[:3] or 'on another rank'}); "
                           f"resume from the last checkpoint in {output_dir} with trainer.resume=true and a lower trainer.lr")
    if d.main:
        output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(d.broadcast(tempfile.mkdtemp(dir=output_dir, prefix=".tmp-checkpoint-") if d.main else None))
    with _write_errors(tmp, step, d):
        save_weights(policy, tokenizer, tmp)
    state = {**trainer_state, "step": step, "world_size": d.world}
    if d.distributed:
        import torch.distributed.checkpoint as dcp

        state["optimizer_saved"] = bool(optimizer.state)  # checkpoint-0: AdamW has no state yet
        dcp.save(_sharded(policy, optimizer if state["optimizer_saved"] else None), checkpoint_id=str(tmp / "dcp"))
        torch.save(rng_state(), tmp / f"rng-rank{d.rank}.pt")
    else:
        state.update(optimizer=optimizer.state_dict(), rng=rng_state())
    d.barrier()
    final = output_dir / f"checkpoint-{step}"
    if d.main:
        with _write_errors(tmp, step, d):
            (tmp / META).write_text(json.dumps({"step": step, "world_size": d.world, "lora": policy.lora}))
            torch.save(state, tmp / STATE)
            write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in all_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            if old.name != "checkpoint-0":
                shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


@contextmanager
def _write_errors(tmp: Path, step: int, dist):
    """A failed write (a full disk makes torch.save say only "unexpected pos") becomes an error
    naming the folder, the free space and how to go on; in one process the partial folder goes."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(tmp.parent).free / 1e9
        if not dist.distributed:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"could not write checkpoint-{step} into {tmp.parent} ({free:.1f} GB free on that disk): {e}. "
                           f"Free some space (trainer.keep_last keeps fewer checkpoints) and resume with "
                           f"trainer.resume=true: the last complete checkpoint there is kept") from e


def save_weights(policy, tokenizer, folder: Path) -> None:
    """The policy as an HF folder in its own dtype, or under LoRA its adapter (a collective:
    every rank gathers, rank 0 writes)."""
    if policy.lora:
        tensors = policy.trainable_full()
        if policy.dist.main:
            lora.save_adapter(policy.peft, folder, tensors, policy.model_cfg)
            tokenizer.save_pretrained(folder)
    else:
        export_model(policy, tokenizer, folder, dtype=None, shard_mb=4096, write=policy.dist.main)


def all_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE).exists()]


def latest(output_dir: Path) -> Path | None:
    """The newest complete checkpoint: one whose files match its manifest. A damaged newer one
    (a disk that lost a file, a truncated copy) is skipped with a warning naming the file."""
    folders = all_checkpoints(output_dir) if output_dir.exists() else []
    for folder in reversed(folders):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning("%s is incomplete (%s): resuming from the checkpoint before it", folder, problem)
    if folders:
        log.warning("no checkpoint in %s is complete: the run starts over from the beginning", output_dir)
    return None


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Lists every file of the folder but the manifest itself, so rewriting it after an edit
    (a reseeded trainer_state.pt) leaves a checkpoint that verifies."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST)
    entries = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": entries}, indent=1))


def verify(folder: Path) -> str | None:
    """None if every file of the manifest is there with its size and hash, else what is wrong.
    A folder from before manifests (none written) is taken as complete."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return None
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{manifest} is unreadable ({e})"
    for name, want in entries.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != want["size"]:
            return f"{file} has {file.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(file) != want["sha256"]:
            return f"{file} does not match its sha256 in the manifest"
    return None


def read_state(folder: Path) -> dict:
    try:
        return torch.load(folder / STATE, weights_only=False)
    except Exception as e:  # noqa: BLE001  a torn or foreign file: say which
        raise RuntimeError(f"cannot read {folder / STATE} ({type(e).__name__}: {e}); delete {folder} to resume from "
                           "the checkpoint before it") from None


def check_resumable(folder: Path, world: int) -> None:
    """Fail before anything loads when `folder` was written by another number of processes."""
    meta = folder / META
    saved_world = json.loads(meta.read_text())["world_size"] if meta.exists() else read_state(folder).get("world_size", 1)
    if saved_world != world:
        raise RuntimeError(
            f"{folder} was written by {saved_world} process(es) and this run has {world}: resume with the same "
            f"count (torchrun --nproc_per_node {saved_world}, or plain `python -m rl.train` for 1). To go on with "
            f"another count, start a new run from its weights: model.name_or_path={folder} (optimizer state and the "
            "data position start afresh).")


def load(folder: Path, policy, optimizer) -> dict:
    """Restore the policy's weights, the optimizer and the RNG; return the trainer state for
    the caller to apply (schedule, data position, summary)."""
    d = policy.dist
    check_resumable(folder, d.world)
    state = read_state(folder)
    if d.distributed:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        with_optimizer = state.get("optimizer_saved", True)
        sharded = _sharded(policy, optimizer if with_optimizer else None)
        dcp.load(sharded, checkpoint_id=str(folder / "dcp"))
        # dcp.load has filled every trainable key or failed; not strict: the frozen base (LoRA) is not in it
        set_model_state_dict(policy.module, sharded["model"], options=_options(strict=False))
        if with_optimizer:
            set_optimizer_state_dict(policy.module, optimizer, sharded["optim"], options=_options())
        set_rng_state(torch.load(folder / f"rng-rank{d.rank}.pt", weights_only=False))
        reshard(policy.module)
    else:
        load_policy_weights(policy, folder)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    return state


def trainable_values(folder: Path, policy) -> dict[str, torch.Tensor]:
    """The trainable parameters' values saved in a checkpoint (this rank's shards when
    distributed), by the names of policy.named_trainable(), without touching the policy."""
    if policy.dist.distributed:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        live = get_model_state_dict(policy.module, options=_options())
        copy = {k: v.detach().clone() for k, v in live.items()}
        dcp.load({"model": copy}, checkpoint_id=str(folder / "dcp"))
        names = {n for n, _ in policy.named_trainable()}  # a tied weight has two keys here, one parameter
        return {k.removeprefix("model."): v for k, v in copy.items() if k.removeprefix("model.") in names}
    saved = lora.read_adapter(folder) if policy.lora else _read_safetensors(folder)
    return {name: saved[name] for name, _ in policy.named_trainable() if name in saved}


def load_policy_weights(policy, folder: Path) -> None:
    """Load a single-process checkpoint's weights into the live policy: the adapter under
    LoRA, else the HF folder (tied weights saved once are fine; anything else missing or
    extra is an error naming the file)."""
    if policy.lora:
        saved = lora.read_adapter(folder)
        params = dict(policy.named_trainable())
        if set(saved) != set(params):
            raise RuntimeError(f"{folder / lora.ADAPTER_FILE} does not fit the model's adapters: missing "
                               f"{sorted(set(params) - set(saved))[:5]}, unexpected {sorted(set(saved) - set(params))[:5]} "
                               "(were model.lora.r / target_modules the same?)")
        with torch.no_grad():
            for name, p in params.items():
                local(p).copy_(saved[name])
        return
    model = policy.model
    state = _read_safetensors(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for n, p in model.named_parameters() if n in state}
    really_missing = [n for n, p in model.named_parameters() if n in missing and p.data_ptr() not in loaded]
    if really_missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not fit the model: missing {really_missing[:5]}, unexpected {unexpected[:5]}")


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights: the checkpoint is incomplete")
    state = {}
    for file in files:
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError) as e:
            raise RuntimeError(f"cannot read {file} ({e}): the checkpoint is damaged; delete {folder} to resume "
                               "from the one before it") from None
    return state


def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)  # under LoRA: the adapters only; the base comes from its own files


def _sharded(policy, optimizer=None) -> dict:
    """{"model": trainable weights, "optim": optimizer state} as sharded state dicts. Only ask
    for the optimizer once it has state: torch initialises an empty one by taking a step
    (with lr 0, but AdamW's step count would then be one ahead of a single process's)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(policy.module, options=_options())}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(policy.module, optimizer, options=_options())
    return state
