"""Export a checkpoint as a plain HF model folder, a LoRA adapter merged into its base.

    python -m rl.export outputs/run/checkpoint-12 outputs/merged
    python -m rl.export outputs/run/checkpoint-12 outputs/merged --dtype bfloat16

The input is any checkpoint folder of a run (an HF folder, or under LoRA the adapter in PEFT's
format with the record of its base model) or any PEFT adapter folder whose adapter_config.json
names its base. The output loads with AutoModelForCausalLM.from_pretrained, vLLM, or
`python -m rl.eval model.name_or_path=<out>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf


def export(checkpoint: Path, out: Path, dtype: str = "float32") -> Path:
    from rl.config import ModelConfig
    from rl.models import load_model, load_tokenizer

    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a folder: give a checkpoint-N folder of a run")
    cfg = OmegaConf.structured(ModelConfig(name_or_path=str(checkpoint), dtype=dtype))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint-N folder (HF weights or a LoRA adapter)")
    p.add_argument("out", type=Path, help="where to write the merged HF folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    print(export(args.checkpoint, args.out, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
