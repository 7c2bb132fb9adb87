"""Build everything a run needs from the config: the pieces train and eval share."""

from __future__ import annotations

import functools
import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from envs.base import Env, make_env
from envs.datasets import check_adaptive_floor, check_stratify_weights, load_tasks
from rewards.combine import WeightedReward
from rewards.parsing import PARSERS, template_parser
from rl import algo as algo_
from rl import optim, parallel
from rl import policy as policy_
from rl.advantages import has_group_baseline
from rl.engines import Engine, make_engine
from rl.metrics import MetricsLogger
from rl.models import load_tokenizer
from rl.parallel import pick_device  # noqa: F401  (re-exported)
from rl.policy import Policy
from envs.types import SamplingParams

_HERE = Path(__file__).resolve().parent
# a source checkout or editable install has conf/ beside rl/; a wheel installs it as rl/conf
CONF_DIR = _HERE.parent / "conf" if (_HERE.parent / "conf" / "config.yaml").exists() else _HERE / "conf"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` where `bf16` (from `train_bf16`), else the weights' own dtype."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def train_bf16(trainer, device: torch.device) -> bool:
    """Whether the trainer's forward/backward autocasts to bf16: trainer.bf16 on CUDA,
    trainer.cpu_bf16 on CPU, where null means "where the CPU has AMX". On a 2-core Xeon with
    AMX, SmolLM2-135M's forward+backward of a [4, 256] batch took 2.7 s under bf16 autocast
    against 5.1 s in fp32, but one RL group (a 250-token prompt shared by 4 x 40 tokens) 1.8 s
    against 2.1 s: the weight casts and attention eat most of the gain at these sizes. On CPUs
    without AMX (AVX2, AVX-512-BF16 alone) bf16 autocast was no faster. Either way it is less
    exact than fp32, so the embedded default keeps fp32."""
    if device.type == "cuda":
        return bool(trainer.bf16)
    return cpu_has_amx() if trainer.cpu_bf16 is None else bool(trainer.cpu_bf16)


@functools.cache
def cpu_has_amx() -> bool:
    """The CPU computes bf16 matmuls on AMX tiles (Linux: /proc/cpuinfo's amx_bf16 flag)."""
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_world(cfg, world: int) -> None:
    """Under torchrun each rank takes an equal share of a batch's prompts (whole groups)."""
    for key, value in (("trainer.batch_size", cfg.trainer.batch_size), ("trainer.sft.batch_size", cfg.trainer.sft.batch_size)):
        if key.startswith("trainer.sft") and cfg.trainer.sft.steps == 0:
            continue
        if value % world:
            raise ValueError(f"{key}={value} is not divisible by the {world} processes of this run: each rank samples "
                             f"whole groups for an equal share of the prompts; use a multiple of {world}")


TOOL_FORMATS = ("tool_n1", "hermes", "llama3_json", "mistral", "template")


def check_adaptive(floor, exact_match: str, names: list[str], algo) -> None:
    """data.adaptive_floor: null, or a finite number >= 0 with reward.exact_match among the
    reward functions' names (the shares follow its failures). With a group baseline it warns:
    a category every completion gets right gives its share away without pushing back (README)."""
    check_adaptive_floor(floor)
    if floor is None:
        return
    if exact_match not in names:
        raise ValueError(f"data.adaptive_floor={floor} follows the failures of reward.exact_match="
                         f"{exact_match}, which is not among reward.functions {names}: add it with weight 0 "
                         "(as conf/reward/toolrl_schema.yaml does with tool_n1), or data.adaptive_floor=null")
    if has_group_baseline(algo):
        logging.getLogger("rl.setup").warning(
            "data.adaptive_floor=%s with algo.advantage=%s (a group baseline): measured on the embedded default, "
            "algo=gspo fell from 0.55 to 0.37 with adaptive shares; add data.adaptive_floor=null (README, Algorithms)",
            floor, algo.advantage)


def check_config(cfg, world: int) -> None:
    """Every value range, before a model loads or anything is written: a bad value fails here
    naming its key, never as a ZeroDivisionError after checkpoint-0."""
    t, smp = cfg.trainer, cfg.algo.sampling
    rules = [
        ("trainer.steps", t.steps, t.steps >= 0, ">= 0"),
        ("trainer.lr", t.lr, math.isfinite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("trainer.max_grad_norm", t.max_grad_norm, t.max_grad_norm > 0, "> 0"),
        ("trainer.token_budget", t.token_budget, t.token_budget >= 1, ">= 1"),
        ("trainer.logprob_chunk", t.logprob_chunk, t.logprob_chunk >= 1, ">= 1"),
        ("trainer.eval_k", t.eval_k, t.eval_k >= 1, ">= 1"),
        ("trainer.eval_batch", t.eval_batch, t.eval_batch >= 1, ">= 1"),
        ("trainer.eval_size", t.eval_size, t.eval_size is None or t.eval_size >= 1, ">= 1 or null (all)"),
        ("trainer.eval_every", t.eval_every, t.eval_every >= 0, ">= 0"),
        ("trainer.save_every", t.save_every, t.save_every >= 0, ">= 0"),
        ("trainer.keep_last", t.keep_last, t.keep_last >= 0, ">= 0"),
        ("trainer.lr_warmup_steps", t.lr_warmup_steps, t.lr_warmup_steps >= 0, ">= 0"),
        ("trainer.sft.steps", t.sft.steps, t.sft.steps >= 0, ">= 0"),
        ("trainer.sft.batch_size", t.sft.batch_size, t.sft.steps == 0 or t.sft.batch_size >= 1, ">= 1"),
        ("algo.sampling.temperature", smp.temperature, smp.temperature >= 0, ">= 0 (0 = greedy)"),
        ("algo.sampling.top_p", smp.top_p, 0 < smp.top_p <= 1, "in (0, 1]"),
        ("algo.sampling.max_new_tokens", smp.max_new_tokens, smp.max_new_tokens >= 1, ">= 1"),
        ("trainer.optimizer", t.optimizer, t.optimizer in optim.OPTIMIZERS, " | ".join(optim.OPTIMIZERS)),
        ("data.max_skipped_share", cfg.data.max_skipped_share, 0 <= cfg.data.max_skipped_share <= 1, "in [0, 1]"),
        ("data.irrelevance_near_miss", cfg.data.irrelevance_near_miss, 0 <= cfg.data.irrelevance_near_miss <= 1, "in [0, 1]"),
        ("model.tool_format", cfg.model.tool_format, cfg.model.tool_format in TOOL_FORMATS, " | ".join(TOOL_FORMATS)),
    ]
    for key, value, ok, want in rules:
        if not ok:
            raise ValueError(f"{key}={value}: use {want}")
    check_stratify_weights(cfg.data.stratify_weights)
    algo_.check(cfg.algo, t.batch_size, world)
    check_world(cfg, world)
    rewards = WeightedReward(list(cfg.reward.functions), parser=cfg.model.tool_format)  # every reward resolves: names, keys, kwargs, signatures
    check_adaptive(cfg.data.adaptive_floor, cfg.reward.exact_match, [name for name, _, _ in rewards.functions], cfg.algo)


@dataclass
class Setup:
    policy: Policy
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
        dist = parallel.init(cfg.trainer.device)
        check_world(cfg, dist.world)
        tokenizer = load_tokenizer(cfg.model)
        if getattr(tokenizer, "response_template", None):  # the model's own parser: reward kwarg parser=template
            PARSERS["template"] = template_parser(tokenizer)
        elif cfg.model.tool_format == "template":
            raise ValueError(f"model.tool_format=template, but the tokenizer of {cfg.model.name_or_path} has no response "
                             "template (transformers' parse_response): use hermes, llama3_json or mistral")
        with torch.random.fork_rng(devices=[]):  # model init draws its own seeds
            policy = policy_.build(cfg, tokenizer, dist)
        seed_everything(cfg.trainer.seed + dist.rank)  # each rank samples its own completions
        train_tasks, eval_tasks = load_tasks(cfg.data)
        logger = MetricsLogger(cfg.logger, Path(cfg.trainer.output_dir), resume_step, enabled=dist.main,
                               run_config=OmegaConf.to_container(cfg, resolve=True) if cfg.logger.wandb else None)
        trainable, total = policy.counts()
        logger.say(f"policy: {trainable:,} of {total:,} parameters train"
                   + (f" (LoRA r={cfg.model.lora.r})" if policy.lora else "")
                   + (f", FSDP2 over {dist.world} ranks ({dist.backend})" if dist.distributed else ""))
        s = cfg.algo.sampling
        return cls(
            policy=policy,
            tokenizer=tokenizer,
            engine=make_engine(cfg.engine, policy, tokenizer, cfg.trainer.seed + dist.rank),
            env=make_env(cfg.env, tokenizer, cfg.model.tool_format),
            train_tasks=train_tasks,
            eval_tasks=eval_tasks,
            reward_fn=WeightedReward(list(cfg.reward.functions),  # columns: for the check of required parameters
                                     columns={k for t in (*train_tasks, *eval_tasks) for k in t},
                                     parser=cfg.model.tool_format),
            sampling=SamplingParams(s.temperature, s.top_p, s.max_new_tokens, tuple(s.stop)),
            logger=logger,
            device=dist.device,
        )
