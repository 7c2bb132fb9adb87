"""A run is never lost to a bad value, a non-finite step, a damaged checkpoint or a resume:
config errors come before anything is written, NaN steps are skipped and counted, resume
falls back to the newest complete checkpoint, and every launch keeps its own overrides."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl import checkpoint
from rl.train import train
from tests.test_training import DENSE, metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("override,key", [
    ("algo.group_size=0", "algo.group_size=0"),
    ("algo.group_size=1", "algo.group_size=1"),
    ("algo.group_size=-2", "algo.group_size=-2"),
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("algo.advantage=gpro", "algo.advantage='gpro'"),
    ("algo.loss_agg=mean", "algo.loss_agg='mean'"),
    ("trainer.eval_k=0", "trainer.eval_k=0"),
    ("trainer.lr=0", "trainer.lr=0"),
    ("trainer.token_budget=0", "trainer.token_budget=0"),
    ("algo.sampling.top_p=0", "algo.sampling.top_p=0"),
    ("algo.sampling.max_new_tokens=0", "algo.sampling.max_new_tokens=0"),
    ("trainer.optimizer=sgdd", "trainer.optimizer=sgdd"),
    ("data.max_skipped_share=2", "data.max_skipped_share=2"),
    ("data.irrelevance_near_miss=1.5", "data.irrelevance_near_miss=1.5"),
])
def test_bad_values_fail_before_anything_is_written(tiny, tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("(", r"\(")):
        train(tiny(override))
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "metrics.jsonl").exists()
    train(tiny())  # the corrected command runs: no FileExistsError


def test_a_non_finite_step_is_skipped_counted_and_never_saved(tiny, tmp_path, monkeypatch):
    import rl.train as train_mod

    real = train_mod.policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # the first step's loss is NaN
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(train_mod, "policy_loss", poisoned)
    train(tiny(*DENSE, "trainer.lr=1e-3", "algo.sampling.temperature=1.5", "trainer.keep_last=3"))
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["skipped_steps"] for r in steps] == [1, 0]
    w = {i: checkpoint._read_safetensors(tmp_path / f"checkpoint-{i}") for i in (0, 1, 2)}
    assert all(torch.isfinite(v).all() for state in w.values() for v in state.values())
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])  # the skipped step changed nothing
    assert any(not torch.equal(w[1][k], w[2][k]) for k in w[1])  # the next one trained


def test_saving_non_finite_weights_is_refused(tiny, tmp_path):
    from rl.setup import Setup
    from rl.train import make_optimizer

    s = Setup.build(tiny())
    opt, _ = make_optimizer(tiny().trainer, s.policy)
    with torch.no_grad():
        s.policy.named_trainable()[0][1].fill_(float("inf"))
    with pytest.raises(RuntimeError, match="refusing to write checkpoint-3: the weights hold NaN/inf"):
        checkpoint.save(tmp_path, 3, s.policy, s.tokenizer, opt, {}, 2)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_a_failed_write_names_the_folder_and_the_free_space(tiny, tmp_path, monkeypatch):
    from rl.setup import Setup
    from rl.train import make_optimizer

    s = Setup.build(tiny())
    opt, _ = make_optimizer(tiny().trainer, s.policy)
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch.save says when the disk fills mid-write
        if str(f).endswith(checkpoint.STATE):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 70144 vs 70036")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(RuntimeError, match=r"could not write checkpoint-3 into .* GB free on that disk.*trainer.resume=true"):
        checkpoint.save(tmp_path, 3, s.policy, s.tokenizer, opt, {}, 2)
    assert not list(tmp_path.glob("checkpoint-*")) and not list(tmp_path.glob(".tmp-checkpoint-*"))


def test_a_rewritten_manifest_does_not_list_itself(tmp_path):
    (tmp_path / "trainer_state.pt").write_bytes(b"state")
    checkpoint.write_manifest(tmp_path)
    assert checkpoint.verify(tmp_path) is None
    (tmp_path / "trainer_state.pt").write_bytes(b"edited state")  # e.g. the RNG reseeded by hand
    checkpoint.write_manifest(tmp_path)
    assert checkpoint.verify(tmp_path) is None
    assert sorted(json.loads((tmp_path / checkpoint.MANIFEST).read_text())["files"]) == ["trainer_state.pt"]


def test_no_complete_checkpoint_says_the_run_starts_over(tmp_path, caplog):
    folder = tmp_path / "checkpoint-0"
    folder.mkdir()
    (folder / "trainer_state.pt").write_bytes(b"state")
    checkpoint.write_manifest(folder)
    (folder / "trainer_state.pt").write_bytes(b"damaged")
    assert checkpoint.latest(tmp_path) is None
    assert "checkpoint-0 is incomplete" in caplog.text and "starts over from the beginning" in caplog.text


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_weights", "corrupt_state", "delete_manifest_file"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tiny, tmp_path, caplog, damage):
    train(tiny(*DENSE, "trainer.keep_last=3"))
    newest = tmp_path / "checkpoint-2"
    weights = sorted(newest.glob("*.safetensors"))[0]
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete_weights":
        weights.unlink()
    elif damage == "corrupt_state":
        data = bytearray((newest / "trainer_state.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newest / "trainer_state.pt").write_bytes(bytes(data))
    else:
        (newest / "config.json").unlink()
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint-1"
    assert "checkpoint-2 is incomplete" in caplog.text and (damage == "corrupt_state" or weights.name in caplog.text
                                                            or "config.json" in caplog.text)
    summary = train(tiny(*DENSE, "trainer.keep_last=3", "trainer.resume=true"))  # redoes step 2
    assert "after_rl" in summary and checkpoint.verify(newest) is None
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r] == [1, 2]


def test_a_resume_takes_the_new_trainer_lr(tiny, tmp_path):
    """The optimizer and schedule a checkpoint saves carry the first launch's LR; a resume with
    another trainer.lr (the NaN-checkpoint message's advice) trains with the new one."""
    train(tiny(*DENSE, "trainer.lr=1e-3", "trainer.steps=1"))
    train(tiny(*DENSE, "trainer.lr=2e-4", "trainer.steps=2", "trainer.resume=true"))
    assert [r["lr"] for r in metrics(tmp_path) if "loss" in r] == pytest.approx([1e-3, 2e-4])


def test_every_launch_keeps_its_own_overrides(tmp_path):
    run = [sys.executable, "-m", "rl.train", "experiment=smoke", f"trainer.output_dir={tmp_path}"]
    for extra in (["trainer.steps=1"], ["trainer.steps=2", "trainer.resume=true"]):
        done = subprocess.run(run + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    recorded = sorted((tmp_path / ".hydra").glob("*/overrides.yaml"))
    assert len(recorded) == 2
    assert "trainer.steps=1" in recorded[0].read_text() and "trainer.resume=true" in recorded[1].read_text()
    assert math.isfinite(json.loads((tmp_path / "summary.json").read_text())["wall_s"])


def test_a_torn_metrics_line_does_not_stop_a_resume(tiny, tmp_path):
    from rl.metrics import MetricsLogger

    lines = [json.dumps({"step": s, "loss": 0.5}) for s in (0, 1, 2)] + ['{"step": 3, "lo']  # killed mid-write
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    MetricsLogger(tiny().logger, tmp_path, resume_step=2).close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_wandb_gets_the_resolved_config_and_a_missing_wandb_an_install_hint(tiny, tmp_path, monkeypatch):
    import types

    from rl.metrics import MetricsLogger

    cfg = tiny("logger.wandb=true")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'toolcall-rl\[wandb\]'"):
        MetricsLogger(cfg.logger, tmp_path, None)
    seen = {}
    fake = types.SimpleNamespace(init=lambda **kw: seen.update(kw) or types.SimpleNamespace(finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from rl.setup import Setup

    Setup.build(cfg).logger.close()  # what a run hands to W&B
    assert seen["config"]["algo"]["name"] == cfg.algo.name and seen["config"]["trainer"]["output_dir"] == str(tmp_path)
