"""Atomic checkpoints and exact resume.

checkpoint-<step>/ holds the policy as an HF folder (loadable by rl.eval or
from_pretrained) plus trainer_state.pt: optimizer, LR schedule, data position and every
RNG, so a resumed run takes the same next step as one never stopped. A checkpoint is
written to a temporary folder and renamed: a crash mid-save leaves the previous one intact.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

PATTERN = re.compile(r"^checkpoint-(\d+)$")


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


def save(output_dir: Path, step: int, policy, tokenizer, trainer_state: dict, keep_last: int) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".tmp-checkpoint-"))
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    final = output_dir / f"checkpoint-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    # checkpoint-0 (where RL starts, after any warm-up) stays: it is the KL reference
    for old in all_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        if old.name != "checkpoint-0":
            shutil.rmtree(old, ignore_errors=True)
    return final


def all_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.pt").exists()]


def latest(output_dir: Path) -> Path | None:
    found = all_checkpoints(output_dir) if output_dir.exists() else []
    return found[-1] if found else None


def load_policy_weights(policy, folder: Path) -> None:
    """Load saved weights into the live policy; tied weights saved once are fine, anything
    else missing or extra is an error."""
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = policy.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for n, p in policy.named_parameters() if n in state}
    really_missing = [n for n, p in policy.named_parameters() if n in missing and p.data_ptr() not in loaded]
    if really_missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not fit the model: missing {really_missing[:5]}, unexpected {unexpected[:5]}")


def load(folder: Path, policy) -> dict:
    """Restore the policy's weights and RNG; return the trainer state for the caller to apply."""
    load_policy_weights(policy, folder)
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    set_rng_state(state["rng"])
    return state
