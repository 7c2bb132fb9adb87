"""Build everything a run needs from the config: the pieces train and eval share."""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.base import Env, make_env
from envs.datasets import load_tasks
from rewards.combine import WeightedReward
from rewards.parsing import PARSERS, template_parser
from rl.engines import Engine, make_engine
from rl.metrics import MetricsLogger
from rl.models import load_model, load_tokenizer
from rl.types import SamplingParams

_HERE = Path(__file__).resolve().parent
# a source checkout or editable install has conf/ beside rl/; a wheel installs it as rl/conf
CONF_DIR = _HERE.parent / "conf" if (_HERE.parent / "conf" / "config.yaml").exists() else _HERE / "conf"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA; on CPU fp32 (bf16 autocast was no faster there and less exact)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Setup:
    policy: torch.nn.Module
    tokenizer: object
    engine: Engine
    env: Env
    train_tasks: list[dict]
    eval_tasks: list[dict]
    reward_fn: WeightedReward
    sampling: SamplingParams
    logger: MetricsLogger
    device: torch.device

    @classmethod
    def build(cls, cfg, resume_step: int | None = None) -> "Setup":
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        seed_everything(cfg.trainer.seed)
        device = pick_device(cfg.trainer.device)
        tokenizer = load_tokenizer(cfg.model)
        if getattr(tokenizer, "response_template", None):  # the model's own parser: reward kwarg parser=template
            PARSERS["template"] = template_parser(tokenizer)
        policy = load_model(cfg.model, tokenizer, device)
        train_tasks, eval_tasks = load_tasks(cfg.data)
        s = cfg.algo.sampling
        return cls(
            policy=policy,
            tokenizer=tokenizer,
            engine=make_engine(cfg.engine, policy, tokenizer, cfg.trainer.seed),
            env=make_env(cfg.env, tokenizer),
            train_tasks=train_tasks,
            eval_tasks=eval_tasks,
            reward_fn=WeightedReward(list(cfg.reward.functions)),
            sampling=SamplingParams(s.temperature, s.top_p, s.max_new_tokens, tuple(s.stop)),
            logger=MetricsLogger(cfg.logger, Path(cfg.trainer.output_dir), resume_step),
            device=device,
        )
