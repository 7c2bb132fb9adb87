"""LoRA through PEFT: adapters on the decoder's linear projections, the merged weights that
engines sample from, and adapter files in PEFT's own format.

    model.lora.r=16                       adapters of rank 16 on every linear projection of the
                                          decoder layers (PEFT's "all-linear": not lm_head)
    model.lora.target_modules=[q_proj,v_proj]   or only these

Only the adapters train; the base weights stay bit-identical. Engines get W + scale * B @ A
computed on the fly, one layer at a time, and the trained weights are never merged in place
(PEFT's merge/unmerge round trip is not exact in floating point).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

ADAPTER = "default"  # PEFT's name for the one adapter we train
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_FILE = "toolcall_rl_base.json"  # how to rebuild the exact base model the adapter was trained on


def apply(model, cfg, gradient_checkpointing: bool, seed: int):
    """Wrap `model` with fresh LoRA adapters (cfg: model.lora); returns the PeftModel. The
    adapters' random init is seeded (same on every rank, same as one process)."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:  # before get_peft_model, so checkpointed blocks see inputs that need grad
        model.enable_input_require_grads()
    targets = list(cfg.target_modules) if cfg.target_modules else "all-linear"
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as e:
            raise ValueError(f"model.lora.target_modules={targets}: {e}") from None
    from peft.tuners.lora import Linear

    head = model.get_output_embeddings()
    odd = [name for name, layer in lora_layers(model).items() if not isinstance(layer, Linear) or layer.base_layer is head]
    if odd:
        raise ValueError(f"model.lora.target_modules={targets} puts adapters on {odd[:3]}: only the linear projections "
                         "of the decoder layers are supported (not embeddings, not lm_head)")
    return peft_model


def lora_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def delta(layer, gather) -> torch.Tensor:
    """scale * B @ A of the trained adapter, full size, fp32 ([out, in] like the base weight)."""
    a = gather(layer.lora_A[ADAPTER].weight).float()  # [r, in]
    b = gather(layer.lora_B[ADAPTER].weight).float()  # [out, r]
    d = (b @ a) * layer.scaling[ADAPTER]
    return d.T if getattr(layer, "fan_in_fan_out", False) else d


_BASE = re.compile(r"^(.*)\.base_layer\.(weight|bias)$")


def merged_name(key: str, layers: dict) -> tuple[str, str | None]:
    """A parameter name of the adapted model -> (the base architecture's name, the LoRA layer
    whose delta merges into it, or None). lora_* parameters map to ('', None): skipped."""
    if ".lora_" in key:
        return "", None
    m = _BASE.match(key)
    if m and m.group(1) in layers:
        return f"{m.group(1)}.{m.group(2)}", (m.group(1) if m.group(2) == "weight" else None)
    return key, None


def adapter_key_to_param(key: str) -> str:
    """PEFT file key (base_model.model.X.lora_A.weight) -> our parameter name (X.lora_A.default.weight)."""
    key = key.removeprefix("base_model.model.")
    return re.sub(r"\.(lora_[A-Za-z_]+)\.", rf".\1.{ADAPTER}.", key, count=1)


def param_to_adapter_key(name: str) -> str:
    return "base_model.model." + name.replace(f".{ADAPTER}.", ".", 1)


def save_adapter(peft_model, folder: Path, tensors: dict[str, torch.Tensor], base_cfg: dict) -> None:
    """Write the adapter in PEFT's format (loadable by PeftModel.from_pretrained), plus the
    description of the base model it belongs to. tensors: our parameter names -> full tensors."""
    state = {f"base_model.model.{name}": t for name, t in tensors.items()}
    peft_model.save_pretrained(str(folder), state_dict=state, save_embedding_layers=False)
    (folder / BASE_MODEL_FILE).write_text(json.dumps(base_cfg, indent=2))


def read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    """Our parameter names -> tensors, from a PEFT adapter folder."""
    from safetensors.torch import load_file

    path = folder / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a complete LoRA checkpoint")
    return {adapter_key_to_param(k): v for k, v in load_file(str(path)).items()}


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def base_config(folder: Path) -> dict | None:
    """The model config (model.* keys) of the base an adapter folder was trained on, if recorded."""
    path = Path(folder) / BASE_MODEL_FILE
    return json.loads(path.read_text()) if path.exists() else None
