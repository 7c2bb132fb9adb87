"""One GRPO step, this project vs TRL's GRPOTrainer: the same shape-only workload through both,
in one run, step times side by side.

    python bench/grpo_vs_trl.py --preset tiny --steps 5                  # CPU, fp32
    python bench/grpo_vs_trl.py --preset qwen2.5-1.5b --steps 5          # a CUDA GPU, bf16
    python bench/grpo_vs_trl.py --preset qwen2.5-1.5b --engine vllm      # ours samples with vLLM
    python bench/grpo_vs_trl.py --preset tiny --prompt-len 16 --completion-len 8 --prompts 2 --group 2 --steps 1

The workload, identical for both systems:
- model: a random-init model of the preset's shape, built by rl.models.load_model from the same
  config and seed (the same weights in both processes); SmolLM2's tokenizer;
- batch: `prompts` random-word prompts of exactly `prompt_len` tokens (the same ids for both;
  TRL gets their text, which tokenizes back to exactly those ids: checked), `group`
  completions each, sampled at temperature 1, top-p 1, every completion exactly
  `completion_len` tokens long (EOS suppressed until then: SamplingParams.min_new_tokens, which
  the engines pass on as vLLM's min_tokens; TRL: transformers' min_new_tokens; checked on every
  completion);
- reward: the decoded completion's length in characters / 100 (the same function for both; it
  differs within a group, so advantages are not zero);
- algorithm: GRPO, group mean/std advantages, PPO-clip 0.2, sequence-mean of token-means
  (TRL loss_type="grpo"), no KL (beta 0: no reference model), one optimizer step per batch
  (no old-logprob pass), AdamW(lr, betas (0.9, 0.99), weight decay 0), grad-norm clip 1.0,
  constant LR, no gradient checkpointing; micro-batches of one group (TRL:
  per_device_train_batch_size = group, gradient_accumulation_steps = prompts,
  generation_batch_size = prompts x group; ours: trainer.token_budget = group x (prompt +
  completion));
- precision: fp32 on CPU (tiny); bf16 weights and bf16 autocast on CUDA (qwen presets).

A step is what each system does between two optimizer steps. Ours: rl/train.py's step body
(algo.collect -> sample_and_score -> shaped_rewards -> update_policy -> engine.load_weights),
with this project's engine (--engine hf|vllm), policy handle, optimizer and config composed
from conf/. TRL: GRPOTrainer.train(), timed by a TrainerCallback from on_step_begin to
on_step_end (generation, rewards, forward/backward of every micro-batch, clip, AdamW; TRL
samples with transformers generate from the training model, use_vllm=False, so it has no
weight sync). The first step is a warm-up and is left out of the medians when steps > 1.
Each system runs in its own subprocess (this script with --system ours|trl), one after the
other, so memory peaks and thread pools stay apart.

Output: one JSON line per system, then {"ratio": ours / trl median step time, ...}. See
`FIELDS` below for what each key means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/grpo_vs_trl.py` from a source checkout
    sys.path.insert(0, str(ROOT))

FIELDS = {
    "system": "toolcall-rl | trl",
    "preset": "the preset name",
    "engine": "what sampled: hf / vllm (ours), transformers-generate (TRL)",
    "steps": "steps in the medians (the first is a warm-up, left out when more than one ran)",
    "median_step_s": "median seconds of one whole step (generate .. optimizer step, + weight sync for ours)",
    "median_gen_s": "median seconds of generation within a step",
    "gen_tok_s": "generated tokens (prompts x group x completion_len) per second of generation time",
    "train_tok_s": "prompt + completion tokens of the batch per second of the whole step",
    "peak_mem_gb": "CPU: peak RSS of the system's process; CUDA: torch.cuda.max_memory_allocated of it (mem_kind says)",
    "engine_peak_rss_gb": "ours, --engine vllm on CPU: peak RSS of the largest exited child process, vLLM's "
                          "engine core among them (not in peak_mem_gb)",
    "device_used_gb_after_steps": "CUDA: memory in use on the device after the last step, vLLM's engine process included",
    "gen_time": "how median_gen_s was measured (both systems: a timer around their generate call)",
    "step_times_s": "every step's seconds, the warm-up included",
}

# Llama-like tiny model for CPU; Qwen2.5 shapes (hidden/layers/heads/vocab of the real models)
QWEN = {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "rope_theta": 1000000.0}
PRESETS = {
    "tiny": {"model": "tiny-random", "device": "cpu", "dtype": "float32", "prompts": 8, "group": 8,
             "prompt_len": 244, "completion_len": 256,
             "shape": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "tie_word_embeddings": True}},
    "qwen2.5-0.5b": {"model": "qwen2.5-0.5b-random", "device": "cuda", "dtype": "bfloat16", "prompts": 8, "group": 8,
                     "prompt_len": 128, "completion_len": 256,
                     "shape": {**QWEN, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                               "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                               "tie_word_embeddings": True}},
    "qwen2.5-1.5b": {"model": "qwen2.5-0.5b-random", "device": "cuda", "dtype": "bfloat16", "prompts": 8, "group": 8,
                     "prompt_len": 128, "completion_len": 256,
                     "shape": {**QWEN, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                               "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                               "tie_word_embeddings": True}},
    "qwen2.5-7b": {"model": "qwen2.5-0.5b-random", "device": "cuda", "dtype": "bfloat16", "prompts": 8, "group": 8,
                   "prompt_len": 128, "completion_len": 256,
                   "shape": {**QWEN, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                             "tie_word_embeddings": False}},
}


# ---- the shared workload -------------------------------------------------------------------

def workload(a) -> dict:
    """The preset with the command line's overrides."""
    w = dict(PRESETS[a.preset])
    for key in ("prompts", "group", "prompt_len", "completion_len"):
        if getattr(a, key) is not None:
            w[key] = getattr(a, key)
    return w


def compose_cfg(a, w: dict, out_dir: str):
    """This project's config for the workload, composed from conf/ like a run's."""
    from hydra import compose, initialize_config_dir

    from rl import config as _schemas  # noqa: F401  registers the config schemas
    from rl.setup import CONF_DIR

    cuda = w["device"] == "cuda"
    overrides = [
        f"model={w['model']}", f"model.dtype={w['dtype']}", f"engine={a.engine}", "algo=grpo",
        f"trainer={'gpu' if cuda else 'cpu'}", f"trainer.device={w['device']}", f"trainer.output_dir={out_dir}",
        f"trainer.steps={a.steps}", f"trainer.batch_size={w['prompts']}", f"trainer.lr={a.lr}", "trainer.weight_decay=0.0",
        "trainer.betas=[0.9,0.99]", "trainer.optimizer=adamw",  # TRL's optimizer, not the CPU trainer's 8-bit one
        "trainer.lr_schedule=constant", "trainer.lr_warmup_steps=0", "trainer.max_grad_norm=1.0",
        f"trainer.token_budget={w['group'] * (w['prompt_len'] + w['completion_len'])}",  # one group per micro-batch
        f"trainer.bf16={cuda}", f"trainer.seed={a.seed}", "trainer.sft.steps=0",
        f"algo.group_size={w['group']}", "algo.kl_coef=0.0", "algo.ppo_epochs=1", "algo.mini_batches=1",
        "algo.sampling.temperature=1.0", "algo.sampling.top_p=1.0", f"algo.sampling.max_new_tokens={w['completion_len']}",
        "algo.sampling.stop=[]", "logger.console=false", "logger.jsonl=false", "logger.tensorboard=false",
    ]
    if a.engine == "hf":
        overrides.append("engine.dtype=null")  # sample from the policy's own weights, as TRL does
    else:
        overrides += [f"engine.dtype={w['dtype']}", f"engine.gpu_memory_utilization={a.gpu_memory_utilization}",
                      f"engine.max_model_len={max(w['prompt_len'] + w['completion_len'], 512) + 64}"]  # + the sync probe
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=overrides)
    cfg.model.config_overrides = dict(w["shape"])  # the whole shape, nothing left from the yaml
    return cfg


def word_tokens(tokenizer) -> list[int]:
    """Ids of tokens that are one space-led lowercase ASCII word and encode back to themselves:
    text made of them tokenizes to exactly those ids (the pre-tokenizer splits at the spaces)."""
    vocab = tokenizer.get_vocab()
    out = []
    for token_id in sorted(vocab.values()):
        text = tokenizer.decode([token_id])
        word = text[1:]
        if text.startswith(" ") and len(word) >= 2 and word.isascii() and word.isalpha() and word.islower():
            if tokenizer.encode(text, add_special_tokens=False) == [token_id]:
                out.append(token_id)
    if len(out) < 100:
        raise RuntimeError(f"the tokenizer has only {len(out)} single-word tokens: cannot build the synthetic prompts")
    return out


def make_prompts(tokenizer, n: int, length: int, seed: int) -> list[tuple[list[int], str]]:
    """n prompts of exactly `length` tokens: (ids, text), with tokenizer(text) == ids."""
    import torch

    words = word_tokens(tokenizer)
    g = torch.Generator().manual_seed(seed)
    prompts = []
    while len(prompts) < n:
        ids = [words[i] for i in torch.randint(len(words), (length,), generator=g).tolist()]
        text = tokenizer.decode(ids)
        if tokenizer(text)["input_ids"] == ids:  # what TRL's tokenization of the text gives
            prompts.append((ids, text))
    return prompts


def length_reward(completions: list[str], **kwargs) -> list[float]:
    """The decoded completion's length in characters / 100: cheap, and not constant in a group."""
    return [len(c) / 100.0 for c in completions]


def check_lengths(lengths: list[int], want: int, system: str) -> None:
    if any(n != want for n in lengths):
        raise RuntimeError(f"{system}: completion lengths {sorted(set(lengths))} but the workload forces exactly {want} "
                           "tokens: the forced length (min_new_tokens / min_tokens) did not hold")


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, seconds: list[float], device):
    """fn, appending each call's wall time (device synchronised) to `seconds`."""
    def wrapped(*args, **kwargs):
        sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(device)
        seconds.append(time.perf_counter() - t0)
        return out

    return wrapped


def peak_memory(device: str, engine_children: bool = False) -> dict:
    import torch

    if device == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30, "mem_kind": "cuda_max_allocated"}
    out = {"peak_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "mem_kind": "peak_rss"}
    if engine_children:  # vLLM's engine core is a child process: its peak, once it has exited (engine.close())
        out["engine_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return out


def device_used(device: str) -> dict:
    """CUDA: memory in use on the whole device now, other processes (a vLLM engine core) included."""
    if device != "cuda":
        return {}
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"device_used_gb_after_steps": round((total - free) / 2**30, 3)}


def summarize(system: str, a, w: dict, engine: str, step_s: list[float], gen_s: list[float], extra: dict) -> dict:
    keep = slice(1, None) if len(step_s) > 1 else slice(None)  # the first step warms caches up
    step, gen = statistics.median(step_s[keep]), statistics.median(gen_s[keep])
    generated = w["prompts"] * w["group"] * w["completion_len"]
    return {"system": system, "preset": a.preset, "engine": engine, "steps": len(step_s[keep]),
            "median_step_s": round(step, 4), "median_gen_s": round(gen, 4),
            "gen_tok_s": round(generated / gen, 1),
            "train_tok_s": round(w["prompts"] * w["group"] * (w["prompt_len"] + w["completion_len"]) / step, 1),
            **{k: round(v, 3) if isinstance(v, float) else v
               for k, v in peak_memory(w["device"], system == "toolcall-rl" and engine == "vllm").items()},
            "prompts": w["prompts"], "group": w["group"], "prompt_len": w["prompt_len"],
            "completion_len": w["completion_len"], "dtype": w["dtype"], "device": w["device"],
            "step_times_s": [round(t, 4) for t in step_s], **extra}


# ---- ours ------------------------------------------------------------------------------------

class FixedPromptEnv:
    """SingleTurnEnv without the chat rendering: each task carries its prompt's token ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def rollout(self, engine, tasks, n, sampling):
        from envs.types import Rollout

        samples = engine.generate([t["prompt_ids"] for t in tasks], n, sampling)  # [B*n], groups contiguous
        return [Rollout(task=tasks[i // n], prompt=tasks[i // n]["prompt_ids"], completion=s.completion,
                        loss_mask=[1] * len(s.completion), rollout_logprobs=s.rollout_logprobs,
                        text=self.tokenizer.decode(s.completion, skip_special_tokens=True), finish_reason=s.finish_reason)
                for i, s in enumerate(samples)]


def run_ours(a, w: dict, prompts) -> dict:
    import torch

    from rewards.combine import WeightedReward
    from rl import algo as algo_
    from rl import parallel
    from rl import policy as policy_
    from rl.engines import make_engine
    from rl.models import load_tokenizer
    from rl.setup import Setup, check_config, seed_everything
    from rl.train import make_optimizer, sample_and_score, update_policy
    from envs.types import SamplingParams

    cfg = compose_cfg(a, w, str(Path(a.tmp) / "ours"))
    check_config(cfg, 1)
    dist = parallel.init(cfg.trainer.device)
    tokenizer = load_tokenizer(cfg.model)
    with torch.random.fork_rng(devices=[]):
        policy = policy_.build(cfg, tokenizer, dist)
    seed_everything(cfg.trainer.seed)
    engine = make_engine(cfg.engine, policy, tokenizer, cfg.trainer.seed)
    gen_times: list[float] = []
    engine.generate = timed(engine.generate, gen_times, w["device"])
    smp = cfg.algo.sampling
    s = Setup(policy=policy, tokenizer=tokenizer, engine=engine, env=FixedPromptEnv(tokenizer), train_tasks=[],
              eval_tasks=[], reward_fn=WeightedReward([{"_target_": f"{__name__}.length_reward", "name": "length"}]),
              sampling=SamplingParams(smp.temperature, smp.top_p, smp.max_new_tokens, tuple(smp.stop),
                                      min_new_tokens=w["completion_len"]),  # forced length: EOS suppressed until then
              logger=None,
              device=dist.device)
    algo, G = cfg.algo, cfg.algo.group_size
    opt, sched = make_optimizer(cfg.trainer, policy, algo.ppo_epochs * algo.mini_batches)
    weights = {name: wt for name, _, wt in s.reward_fn.functions}
    tasks = [{"id": i, "prompt_ids": ids} for i, (ids, _) in enumerate(prompts)]

    step_s, gen_s = [], []
    for _ in range(a.steps):  # rl/train.py's step body
        gen_times.clear()
        sync(w["device"])
        t0 = time.perf_counter()
        rollouts, scored, _ = algo_.collect(lambda t: sample_and_score(s, t, G), lambda: dist.share(tasks), algo, dist)
        rewards = algo_.shaped_rewards(scored, rollouts, algo, weights)  # [B*G]
        stats = update_policy(cfg, policy, opt, sched, rollouts, rewards, s)
        s.engine.load_weights(policy)
        sync(w["device"])
        step_s.append(time.perf_counter() - t0)
        gen_s.append(sum(gen_times))
        check_lengths([len(r.completion) for r in rollouts], w["completion_len"], "toolcall-rl")
        if not math.isfinite(stats["loss"]) or stats["skipped_steps"]:
            raise RuntimeError(f"toolcall-rl: a non-finite loss or a skipped optimizer step: {stats}")
    used = device_used(w["device"])
    if hasattr(engine, "close"):
        engine.close()
    return summarize("toolcall-rl", a, w, a.engine, step_s, gen_s, {"gen_time": "measured (engine.generate)", **used})


# ---- TRL -------------------------------------------------------------------------------------

def run_trl(a, w: dict, prompts) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl.models import load_model, load_tokenizer

    cfg = compose_cfg(a, w, str(Path(a.tmp) / "ours"))
    cuda = w["device"] == "cuda"
    tokenizer = load_tokenizer(cfg.model)
    with torch.random.fork_rng(devices=[]):
        model = load_model(cfg.model, tokenizer, torch.device(w["device"]))  # the same weights as ours' policy
    B, G, C = w["prompts"], w["group"], w["completion_len"]
    args = GRPOConfig(
        output_dir=str(Path(a.tmp) / "trl"), report_to="none", logging_steps=1, save_strategy="no",
        disable_tqdm=True, use_cpu=not cuda, bf16=cuda, seed=a.seed, max_steps=a.steps, dataloader_num_workers=0,
        per_device_train_batch_size=G, gradient_accumulation_steps=B, generation_batch_size=B * G, num_generations=G,
        num_iterations=1, max_completion_length=C, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": C}, use_vllm=False, beta=0.0, loss_type="grpo", scale_rewards="group",
        epsilon=0.2, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.99, optim="adamw_torch", max_grad_norm=1.0, gradient_checkpointing=False,
        shuffle_dataset=False, log_completions=False,
    )
    lengths: list[int] = []

    def length(prompts, completions, completion_ids, **kwargs):
        lengths.extend(len(c) for c in completion_ids)
        return length_reward(completions)

    trainer = GRPOTrainer(model=model, reward_funcs=[length], args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": [text for _, text in prompts]}))
    got = trainer._tokenize_prompts([text for _, text in prompts])[0]
    if [list(ids) for ids in got] != [ids for ids, _ in prompts]:
        raise RuntimeError("trl: the prompt texts do not tokenize back to the shared prompt ids")

    gen_times: list[float] = []  # transformers generate (use_vllm=False)
    trainer._generate_single_turn = timed(trainer._generate_single_turn, gen_times, w["device"])
    step_s, gen_s = [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            gen_times.clear()
            sync(w["device"])
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(w["device"])
            step_s.append(time.perf_counter() - self.t0)
            gen_s.append(sum(gen_times))

    trainer.add_callback(StepTimer())
    trainer.train()
    check_lengths(lengths, C, "trl")
    if len(step_s) != a.steps or len(lengths) != a.steps * B * G:
        raise RuntimeError(f"trl: {len(step_s)} optimizer steps and {len(lengths)} completions, expected {a.steps} "
                           f"and {a.steps * B * G}: the batch arithmetic does not match the workload")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not losses or not all(map(math.isfinite, losses)):
        raise RuntimeError(f"trl: non-finite or missing losses {losses}")
    return summarize("trl", a, w, "transformers-generate", step_s, gen_s,
                     {"gen_time": "measured (GRPOTrainer._generate_single_turn)", **device_used(w["device"]),
                      "trl_version": __import__("trl").__version__})


# ---- the two processes -----------------------------------------------------------------------

def worker(a) -> None:
    from rl.models import load_tokenizer

    w = workload(a)
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl-") as a.tmp:  # run folders (nothing is saved)
        cfg = compose_cfg(a, w, str(Path(a.tmp) / "ours"))
        prompts = make_prompts(load_tokenizer(cfg.model), w["prompts"], w["prompt_len"], a.seed)
        result = run_ours(a, w, prompts) if a.system == "ours" else run_trl(a, w, prompts)
    Path(a.result).write_text(json.dumps(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per system; the first is a warm-up when > 1")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="this project's sampler (TRL: transformers)")
    p.add_argument("--prompts", type=int, help="prompts per batch (preset: 8)")
    p.add_argument("--group", type=int, help="completions per prompt (preset: 8)")
    p.add_argument("--prompt-len", dest="prompt_len", type=int, help="prompt tokens (preset)")
    p.add_argument("--completion-len", dest="completion_len", type=int, help="completion tokens, forced (preset)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory-utilization", dest="gpu_memory_utilization", type=float, default=0.3,
                   help="--engine vllm on CUDA: vLLM's share of GPU memory (the trainer needs the rest)")
    p.add_argument("--system", choices=["ours", "trl"], help=argparse.SUPPRESS)  # the worker processes
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    w = workload(a)
    for key in ("prompts", "group", "prompt_len", "completion_len", "steps"):
        value = a.steps if key == "steps" else w[key]
        if value < (2 if key == "group" else 1):
            p.error(f"--{key.replace('_', '-')}={value}: use at least {2 if key == 'group' else 1}")
    if a.system:
        worker(a)
        return 0

    import torch

    if w["device"] == "cuda" and not torch.cuda.is_available():
        print(f"--preset {a.preset} is a GPU shape (bf16 on CUDA) and this machine has no CUDA device: run it on a GPU, "
              "or use --preset tiny here", file=sys.stderr)
        return 2
    results = []
    for system in ("ours", "trl"):
        with tempfile.TemporaryDirectory(prefix="grpo_vs_trl-") as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]),
                   "--system", system, "--result", str(out)]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr)  # libraries' chatter stays off stdout
            if proc.returncode != 0 or not out.exists():
                print(f"the {system} worker failed (exit {proc.returncode}): {' '.join(cmd)}", file=sys.stderr)
                return 1
            results.append(json.loads(out.read_text()))
            print(json.dumps(results[-1]), flush=True)
    ours, trl = results
    print(json.dumps({"ratio": round(ours["median_step_s"] / trl["median_step_s"], 3),
                      "gen_ratio": round(ours["median_gen_s"] / trl["median_gen_s"], 3),
                      "mem_ratio": round(ours["peak_mem_gb"] / trl["peak_mem_gb"], 3),
                      "preset": a.preset, "engine": a.engine, "steps": ours["steps"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
