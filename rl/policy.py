"""The policy handle: one face for a plain model, LoRA adapters (PEFT) and FSDP2 shards, so
that rl/train.py reads the same whichever is switched on.

    policy.logprobs(ids, mask, C, ...)   token log-probs [b, C] and entropy [b, C] of completions
    policy.parameters()                  what the optimizer updates (only adapters under LoRA)
    policy.clip_grad_norm_(max)          global norm over every rank's shards
    policy.full_state(dtype)             (name, full tensor) in the base architecture's names:
                                         gathered from shards, adapters merged, one tensor at a
                                         time (engines, checkpoints, export)
    with policy.reference(): ...         forward under the KL reference (where RL started)
    policy.dist                          rank, world size, all-reduce and gather, the rank-0 gate

The reference costs no second model. It is the trainable weights' values at checkpoint-0,
swapped in for the reference forward and back (a frozen copy of only what trains: the
adapters under LoRA, as TRL keeps a "ref" adapter). When those values are LoRA's untouched
init (no warm-up), the adapters are simply switched off: the same numbers, less compute.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from omegaconf import OmegaConf

from rl import lora as lora_
from rl.logprobs import LogprobModule
from rl.models import load_model
from rl.parallel import Dist, full_tensor, local, reshard, shard

ADAPTERS_OFF = "adapters_off"


class Policy:
    def __init__(self, model, d: Dist, peft_model=None, model_cfg: dict | None = None, module: LogprobModule | None = None):
        """module: the LogprobModule around `model`, already sharded when distributed."""
        self.model = model  # the transformers model (adapters injected in place under LoRA)
        self.peft = peft_model  # the PeftModel around it, or None
        self.module = module if module is not None else LogprobModule(model)  # forward/backward; the FSDP root
        self.dist = d
        self.model_cfg = model_cfg or {}
        self._reference: dict[str, torch.Tensor] | str | None = None
        # Taken now, while every FSDP unit is sharded: after a forward without backward the
        # root registers its unsharded parameters in their place until the next reshard.
        self._trainable = [(n.removeprefix("model."), p) for n, p in self.module.named_parameters() if p.requires_grad]

    # ---- what the loop uses ---------------------------------------------------------------
    @property
    def lora(self) -> bool:
        return self.peft is not None

    @property
    def config(self):
        return self.model.config

    @property
    def generation_config(self):
        return self.model.generation_config

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def logprobs(self, input_ids, attention_mask, completion_len: int, temperature: float = 1.0, chunk: int = 1024,
                 group_size: int = 1, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, P + C] ids and mask -> logprobs [b, C] (grad if enabled), entropy [b, C] (grad if entropy_grad)."""
        return self.module(input_ids, attention_mask, completion_len, temperature, chunk, group_size, entropy_grad)

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Trainable parameters named as in self.model (adapters: '...q_proj.lora_A.default.weight');
        the sharded ones when distributed."""
        return list(self._trainable)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_trainable()]

    def counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the whole model (not this rank's shard)."""
        reshard(self.module)
        params = list(self.module.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    @property
    def deterministic(self) -> bool:
        """A training-mode forward is the evaluation-mode function: no dropout anywhere (modules,
        attention, LoRA), so the first forward of an update gives pi_old's logprobs too."""
        dropouts = [m.p for m in self.module.modules() if isinstance(m, torch.nn.Dropout)]
        attention = [v for k, v in self.config.to_dict().items() if k.endswith("dropout") and isinstance(v, (int, float))]
        return not any(p > 0 for p in dropouts + attention)

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def eval(self) -> None:
        self.module.eval()

    def clip_grad_norm_(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        return float(full_tensor(norm))

    # ---- full weights, for engines and checkpoints -----------------------------------------
    def full_state(self, dtype: torch.dtype | None = None, device=None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight of the base architecture under its own name, whole, with the adapters
        merged (W + scale * B @ A) and the trained weights untouched. Tied weights come once.
        A collective when sharded: every rank must iterate to the end, in step."""
        reshard(self.module)  # read the shards, not a root gathered before the last optimizer step
        layers = lora_.lora_layers(self.model) if self.lora else {}
        seen: set[int] = set()
        with torch.no_grad():
            for key, value in self.model.state_dict(keep_vars=True).items():
                if id(value) in seen:
                    continue
                seen.add(id(value))
                name, merge_from = lora_.merged_name(key, layers)
                if not name:
                    continue
                tensor = full_tensor(value.detach())
                if merge_from is not None:
                    tensor = (tensor.float() + lora_.delta(layers[merge_from], full_tensor)).to(tensor.dtype)
                yield name, tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype)

    def trainable_full(self) -> dict[str, torch.Tensor]:
        """Trainable parameters, whole, on CPU (a collective when sharded)."""
        return {name: full_tensor(p.detach()).cpu() for name, p in self.named_trainable()}

    # ---- the KL reference ------------------------------------------------------------------
    def set_reference(self, values: dict[str, torch.Tensor]) -> None:
        """values: trainable parameter name -> this rank's value (its shard when sharded). LoRA
        adapters still at their init (every lora_B zero) mean: switch the adapters off."""
        names = {n for n, _ in self.named_trainable()}
        if set(values) != names:
            raise RuntimeError(f"the KL reference does not fit the trainable parameters: missing "
                               f"{sorted(names - set(values))[:5]}, unexpected {sorted(set(values) - names)[:5]}")
        untouched = self.lora and all(not bool(local(v).any()) for n, v in values.items() if ".lora_B." in n)
        untouched = bool(self.dist.sum({"nonzero": float(not untouched)})["nonzero"] == 0)  # every rank's shard
        self._reference = ADAPTERS_OFF if untouched else {n: local(v).detach().clone() for n, v in values.items()}

    def reference_from_current(self) -> None:
        self.set_reference({n: p for n, p in self.named_trainable()})

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    @contextmanager
    def reference(self):
        """Forward passes inside run under the reference's weights (no grad)."""
        if self._reference is None:
            raise RuntimeError("no KL reference was set (algo.kl_coef > 0 sets it at the start of RL)")
        if self._reference == ADAPTERS_OFF:
            with torch.no_grad(), self.peft.disable_adapter():
                yield
            return
        params = dict(self.named_trainable())
        saved = {}
        with torch.no_grad():
            for name, value in self._reference.items():
                target = local(params[name])
                saved[name] = target.clone()
                target.copy_(value)
        reshard(self.module)  # a root FSDP unit left unsharded would still hold the live weights
        try:
            with torch.no_grad():
                yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    local(params[name]).copy_(value)
            reshard(self.module)


def build(cfg, tokenizer, d: Dist) -> Policy:
    """The policy for cfg.model (+ cfg.model.lora), sharded over the ranks when distributed."""
    model = load_model(cfg.model, tokenizer, torch.device("cpu") if d.distributed else d.device)
    peft_model = None
    if cfg.model.lora.r > 0:
        peft_model = lora_.apply(model, cfg.model.lora, cfg.model.gradient_checkpointing, cfg.model.init_seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["lora"] = {**model_cfg["lora"], "r": 0}  # what a saved adapter's base is: the model without it
    module = LogprobModule(model)
    if d.distributed:
        shard(module, model, d, cfg.trainer.fsdp.cpu_offload, cfg.trainer.bf16, cfg.trainer.fsdp.reshard_after_forward)
    return Policy(model, d, peft_model, model_cfg, module)
