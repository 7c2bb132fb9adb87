"""Server mode: rollouts from a vLLM OpenAI-compatible server on other GPUs (or another
process), weight sync through the server's dev endpoints.

Start the server (same machine; its GPUs are set with CUDA_VISIBLE_DEVICES):

    CUDA_VISIBLE_DEVICES=1 python -m rl.engines.vllm_server --model Qwen/Qwen2.5-1.5B-Instruct --port 8000

then train with `engine=vllm_server engine.url=http://127.0.0.1:8000`. The trainer pushes
its weights at start and after every step (rank 0 pushes under torchrun; every rank takes
part in gathering them), in one of two ways:
- engine.sync=folder (default, one machine): bf16 safetensors into a RAM folder
  (engine.sync_dir, default /dev/shm), then `POST /collective_rpc toolcall_rl_reload` makes
  every worker reload them in place;
- engine.sync=broadcast (the server may be on another machine): the tensors stream over a
  process group between the trainer and the server's workers (rl/engines/broadcast.py,
  gloo or nccl, rendezvous on engine.sync_port of the server's host); each worker writes
  them to its own RAM and reloads.
Then `POST /reset_prefix_cache`, then the same probe check as the colocated engine. Every
request and the group have a timeout (engine.connect_timeout_s, engine.request_timeout_s)
and fail with the URL and what to do, instead of hanging.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import torch

from rl.engines.sync import export_weights, kv_cache_bytes, probe_prompt, sync_folder, tolerance, verify_probe
from rl.models import DTYPES
from envs.types import Sample, SamplingParams

START_HINT = "start one with `python -m rl.engines.vllm_server --model <model> --port <port>` (README, server mode)"


class ServerError(RuntimeError):
    pass


class VLLMServerEngine:
    def __init__(self, cfg, policy, tokenizer):
        self.cfg, self.url = cfg, cfg.url.rstrip("/")
        self.dtype = cfg.dtype or "bfloat16"
        self.tolerance = tolerance(cfg, self.dtype)
        wait_for_server(self.url, cfg.connect_timeout_s)
        self.model = self._request("GET", "/v1/models")["data"][0]["id"]
        if cfg.sync not in ("folder", "broadcast"):
            raise ValueError(f"engine.sync={cfg.sync!r}: use folder (one machine) or broadcast (crosses machines)")
        self.folder = sync_folder(cfg.sync_dir) if cfg.sync == "folder" else None
        self.group = None  # the broadcast group, joined at the first sync
        self.probe = probe_prompt(tokenizer)
        self.last_sync_s = 0.0
        self.last_probe_diff = 0.0
        self.load_weights(policy)  # the server may hold other weights (base model, an older run)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Sample]:
        seeds = [int(torch.randint(2**31 - 1, ())) for _ in prompts]  # from torch's RNG: restored on resume
        with ThreadPoolExecutor(max_workers=min(32, len(prompts))) as pool:  # one request per group
            groups = pool.map(lambda ps: self._complete(ps[0], n, sampling, ps[1]), zip(prompts, seeds))
            return [sample for group in groups for sample in group]  # B*G, groups contiguous

    def load_weights(self, policy) -> None:
        """Rank 0 pushes (every rank takes part in gathering the full weights); then every
        rank checks the server against its own forward."""
        start = time.perf_counter()
        if self.cfg.sync == "broadcast":
            self._broadcast(policy)
        else:
            export_weights(policy, self.folder, self.dtype, self.cfg.shard_mb, write=policy.dist.main)
            if policy.dist.main:
                self._request("POST", "/collective_rpc", {"method": "toolcall_rl_reload",
                                                          "kwargs": {"weights_path": str(self.folder)}})
        if policy.dist.main:
            self._request("POST", "/reset_prefix_cache")
        policy.dist.barrier()  # no rank samples or probes before the push is complete
        self.last_sync_s = time.perf_counter() - start
        self.verify(policy)

    def _broadcast(self, policy) -> None:
        """Stream the full weights to every worker; they write and reload them (their answer to
        the receive request comes once they have)."""
        main = policy.dist.main
        if main and self.group is None:
            self.group = self._join(policy)
        with ThreadPoolExecutor(max_workers=1) as pool:
            receiving = pool.submit(self._request, "POST", "/collective_rpc", {
                "method": "toolcall_rl_receive", "kwargs": {"shard_mb": str(self.cfg.shard_mb)}}) if main else None
            try:
                for name, tensor in policy.full_state(dtype=DTYPES[self.dtype]):
                    if main:
                        if receiving.done():  # the workers answered before the stream ended: their error
                            receiving.result()
                            raise ServerError(f"vLLM server {self.url}: the workers stopped receiving before {name}")
                        self.group.send(name, tensor)
                if main:
                    self.group.end()
            except ServerError:
                raise
            except Exception as e:
                raise ServerError(f"vLLM server {self.url}: the weight broadcast failed ({type(e).__name__}: {e}); "
                                  "is the server still up?") from e
            if receiving is not None:
                receiving.result()  # the workers' answer once they have reloaded, or their error

    def _join(self, policy):
        from rl.engines.broadcast import Group

        workers = len(self._request("POST", "/collective_rpc", {"method": "toolcall_rl_rank"})["results"])
        backend = self.cfg.sync_backend or ("nccl" if policy.device.type == "cuda" else "gloo")
        host, world, timeout = urlparse(self.url).hostname, 1 + workers, self.cfg.request_timeout_s
        with ThreadPoolExecutor(max_workers=1) as pool:
            joining = pool.submit(self._request, "POST", "/collective_rpc", {"method": "toolcall_rl_join", "kwargs": {
                "port": str(self.cfg.sync_port), "world_size": str(world), "backend": backend, "timeout_s": str(timeout)}})
            try:
                group = Group(host, self.cfg.sync_port, 0, world, backend, timeout)
            except Exception as e:
                raise ServerError(f"vLLM server {self.url}: could not join its weight-broadcast group at "
                                  f"{host}:{self.cfg.sync_port} ({type(e).__name__}: {e}); the port must be reachable "
                                  "from the trainer (engine.sync_port)") from e
            joining.result()
        return group

    def verify(self, policy) -> float:
        probe = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=self.cfg.probe_tokens, stop=())
        self.last_probe_diff = verify_probe(self._complete(self.probe, 1, probe, seed=0)[0], policy, self.probe, self.dtype,
                                            self.tolerance, f"vllm_server {self.url}")
        return self.last_probe_diff

    def _complete(self, prompt: list[int], n: int, s: SamplingParams, seed: int) -> list[Sample]:
        if s.temperature == 0 and n > 1:  # the server refuses n > 1 when greedy; the n copies are equal anyway
            return self._complete(prompt, 1, s, seed) * n
        body = {"model": self.model, "prompt": prompt, "n": n, "temperature": s.temperature, "top_p": s.top_p,
                "max_tokens": s.max_new_tokens, "min_tokens": s.min_new_tokens, "stop": list(s.stop) or None, "include_stop_str_in_output": True,
                "logprobs": 0, "return_token_ids": True, "skip_special_tokens": False, "seed": seed}
        choices = sorted(self._request("POST", "/v1/completions", body)["choices"], key=lambda c: c["index"])
        return [Sample(list(c["token_ids"]), list(c["logprobs"]["token_logprobs"]),
                       "length" if c["finish_reason"] == "length" else "stop") for c in choices]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        return request(self.url, method, path, body, self.cfg.request_timeout_s)


def request(url: str, method: str, path: str, body: dict | None, timeout_s: float) -> dict:
    """One HTTP call with a deadline; every failure names the URL, the path and the fix."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        hint = (" (the server needs VLLM_SERVER_DEV_MODE=1 for weight sync: start it with "
                "`python -m rl.engines.vllm_server`)") if e.code == 404 else ""
        raise ServerError(f"vLLM server {url}: {method} {path} -> HTTP {e.code}{hint}: {detail}") from None
    except (TimeoutError, socket.timeout):
        raise TimeoutError(f"vLLM server {url}: {method} {path} got no answer within {timeout_s:g} s "
                           "(engine.request_timeout_s); is the server overloaded or stuck?") from None
    except urllib.error.URLError as e:
        raise ConnectionError(f"vLLM server {url}: {method} {path} failed ({e.reason}); {START_HINT}") from None
    return json.loads(text) if text.strip() else {}


def wait_for_server(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no vLLM server answered at {url}/health within {timeout_s:g} s "
                                   f"(engine.connect_timeout_s); {START_HINT}, or set engine.url") from None
            time.sleep(1.0)


def server_command(args: argparse.Namespace) -> list[str]:
    """The vLLM API server with what the trainer needs: dev endpoints, our worker extension,
    processed (temperature-scaled) logprobs, prefix caching."""
    from rl.engines.vllm import WORKER_EXTENSION
    from rl.models import resolve

    cuda = torch.cuda.is_available()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve(args.model),
           "--host", args.host, "--port", str(args.port), "--dtype", args.dtype, "--seed", str(args.seed),
           "--worker-extension-cls", WORKER_EXTENSION, "--logprobs-mode", "processed_logprobs",
           "--enable-prefix-caching", "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if (kv_bytes := kv_cache_bytes(args.kv_cache_gb, cuda)) is not None:
        cmd += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    if not cuda:
        cmd += ["--enforce-eager"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start a vLLM server the trainer can sample from and sync (engine=vllm_server)")
    p.add_argument("--model", default="smollm2-135m", help="hub id, local folder, or smollm2-135m")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--kv-cache-gb", type=float, default=None, help="fixed KV cache size (CPU default 1)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--stop-after-s", type=float, default=None, help="shut the server down after this long")
    args = p.parse_args(argv)
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    server = subprocess.Popen(server_command(args), env=env)
    # SIGTERM would end this launcher without its `finally` and orphan the server: make it an exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return server.wait(timeout=args.stop_after_s)
    except subprocess.TimeoutExpired:
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
