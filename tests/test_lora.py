"""LoRA (model.lora.r > 0) on a tiny random model: only the adapters train and the base stays
bit-identical; an engine synced with merged weights samples what the policy computes; the
KL reference is where RL started (adapters off without a warm-up, the frozen starting
adapter after one); the checkpoint is a PEFT adapter that PeftModel.from_pretrained, rl.eval
and rl.export load; resume is exact."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl import checkpoint
from rl.batching import collate
from rl.engines.hf import HFEngine
from rl.setup import Setup
from rl.train import train
from envs.types import Rollout, SamplingParams
from tests.test_training import DENSE, metrics

LORA = ["model.lora.r=4", "model.lora.alpha=8"]
ROOT = Path(__file__).parent.parent


def batch(s, n=3, sampling=SamplingParams(temperature=1.0, max_new_tokens=8, stop=())):
    """A few real prompts with sampled completions, as a padded batch."""
    ps = [s.env.prompt_ids(t) for t in s.eval_tasks[:n]]
    torch.manual_seed(0)
    samples = HFEngine(s.policy, s.tokenizer).generate(ps, 1, sampling)
    rollouts = [Rollout({}, ps[i], x.completion, [1] * len(x.completion), x.rollout_logprobs, "", "stop")
                for i, x in enumerate(samples)]
    return collate(rollouts, torch.zeros(n), s.tokenizer.pad_token_id, "cpu")


def logprobs(policy, b, **kw):
    with torch.no_grad():
        return policy.logprobs(b.input_ids, b.attention_mask, b.loss_mask.shape[1], **kw)[0] * b.loss_mask


def perturb_adapters(policy, scale=0.05, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in policy.named_trainable():
            p.add_(torch.randn_like(p) * scale)


def test_only_the_adapters_train_and_the_base_stays_bit_identical(tiny, tmp_path, monkeypatch):
    seen = {}
    real_save = checkpoint.save

    def spy(output_dir, step, policy, tokenizer, opt, state, keep_last):
        seen[step] = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
        seen["trainable"] = [n for n, _ in policy.named_trainable()]
        return real_save(output_dir, step, policy, tokenizer, opt, state, keep_last)

    monkeypatch.setattr(checkpoint, "save", spy)
    train(tiny(*DENSE, *LORA, "trainer.lr=1e-2", "algo.group_size=4", "algo.sampling.temperature=1.5"))
    assert seen["trainable"] and all(".lora_" in n for n in seen["trainable"])
    base = [k for k in seen[0] if ".lora_" not in k]
    adapters = [k for k in seen[0] if ".lora_B." in k]
    assert all(torch.equal(seen[0][k], seen[2][k]) for k in base)  # bit-identical
    assert sum(not torch.equal(seen[0][k], seen[2][k]) for k in adapters) >= len(adapters) // 2
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not list((tmp_path / "checkpoint-2").glob("model*.safetensors"))  # the adapter, not a full copy


@pytest.mark.parametrize("merged", [False, True])
def test_engine_samples_from_base_plus_adapters(tiny, merged):
    s = Setup.build(tiny(*LORA))
    perturb_adapters(s.policy)
    engine = HFEngine(s.policy, s.tokenizer, lora_merged=merged)  # through the adapters, or a merged copy
    assert engine.shared == (not merged)
    ps = [s.env.prompt_ids(t) for t in s.eval_tasks[:3]]
    torch.manual_seed(0)
    samples = engine.generate(ps, 2, SamplingParams(temperature=0.7, max_new_tokens=10, stop=()))
    rollouts = [Rollout({}, ps[i // 2], x.completion, [1] * len(x.completion), x.rollout_logprobs, "", "stop")
                for i, x in enumerate(samples)]
    b = collate(rollouts, torch.zeros(6), s.tokenizer.pad_token_id, "cpu")
    assert torch.allclose(logprobs(s.policy, b, temperature=0.7), b.rollout_logprobs * b.loss_mask, atol=1e-4)
    if merged:  # after another change, a sync brings the copy along
        perturb_adapters(s.policy, seed=2)
        engine.load_weights(s.policy)
        again = engine.generate(ps[:1], 1, SamplingParams(temperature=0.0, max_new_tokens=6, stop=()))[0]
        from rl.engines.sync import trainer_logprobs

        assert max(abs(a - b) for a, b in zip(again.rollout_logprobs, trainer_logprobs(s.policy, ps[0], again.completion))) < 1e-4


def test_reference_is_where_rl_started(tiny):
    plain = Setup.build(tiny())  # the same random base, without adapters
    s = Setup.build(tiny(*LORA))
    b = batch(plain)
    base = logprobs(plain.policy, b)
    assert torch.equal(logprobs(s.policy, b), base)  # LoRA's init (B = 0) is the base model exactly

    s.policy.reference_from_current()  # no warm-up: the reference is the base, adapters off
    perturb_adapters(s.policy)  # "training"
    moved = logprobs(s.policy, b)
    assert not torch.allclose(moved, base, atol=1e-3)
    with s.policy.reference():
        assert torch.equal(logprobs(s.policy, b), base)
    assert torch.equal(logprobs(s.policy, b), moved)  # and back

    s.policy.reference_from_current()  # after a warm-up: the frozen starting adapter
    start = logprobs(s.policy, b)
    perturb_adapters(s.policy, seed=3)
    assert not torch.allclose(logprobs(s.policy, b), start, atol=1e-3)
    with s.policy.reference():
        assert torch.equal(logprobs(s.policy, b), start)


def test_kl_reference_after_a_lora_warm_up_is_checkpoint_0(tiny, tmp_path):
    # the first RL step's policy is checkpoint-0 itself: KL exactly 0; then it moves away
    train(tiny(*DENSE, *LORA, "algo.kl_coef=0.1", "trainer.sft.steps=2", "trainer.sft.batch_size=2",
               "trainer.sft.lr=1e-2", "trainer.lr=1e-2", "algo.sampling.temperature=1.5", "trainer.steps=3",
               "trainer.sft.eval=false"))
    steps = [r for r in metrics(tmp_path) if "kl" in r]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-7) and steps[-1]["kl"] > 0
    values = checkpoint.trainable_values(tmp_path / "checkpoint-0", Setup.build(tiny(*LORA)).policy)
    assert any(v.abs().sum() > 0 for k, v in values.items() if ".lora_B." in k)  # the warm-up's adapter


def test_resume_with_lora_takes_the_same_next_step(tiny, tmp_path):
    common = [*DENSE, *LORA, "algo.kl_coef=0.1", "trainer.lr=1e-2", "algo.sampling.temperature=1.5", "trainer.save_every=1"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(tiny(*common, "trainer.steps=3", f"trainer.output_dir={whole}"))
    train(tiny(*common, "trainer.steps=2", f"trainer.output_dir={broken}"))
    train(tiny(*common, "trainer.steps=3", f"trainer.output_dir={broken}", "trainer.resume=true"))
    a, b = metrics(whole)[-1], metrics(broken)[-1]
    for key in ("reward/total", "loss", "grad_norm", "kl", "entropy"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_adapter_checkpoint_loads_with_peft_rl_eval_and_export(tiny, tmp_path):
    from peft import PeftModel

    from rl.models import load_model

    cfg = tiny(*DENSE, *LORA, "trainer.lr=1e-2", "algo.sampling.temperature=1.5")
    train(cfg)
    ckpt = tmp_path / "checkpoint-2"
    assert json.loads((ckpt / "adapter_config.json").read_text())["r"] == 4

    trained = Setup.build(tiny(*LORA))  # the trained policy, restored the way resume does
    checkpoint.load_policy_weights(trained.policy, ckpt)
    b = batch(trained)
    expected = logprobs(trained.policy, b)

    plain = Setup.build(tiny())
    peft_model = PeftModel.from_pretrained(plain.policy.model, str(ckpt))  # PEFT's own loader
    ids, mask, C = b.input_ids, b.attention_mask, b.loss_mask.shape[1]
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    lp = torch.log_softmax(logits[:, -C - 1:-1].float(), -1).gather(2, ids[:, -C:, None]).squeeze(2) * b.loss_mask
    assert torch.allclose(lp, expected, atol=1e-4)

    merged = load_model(tiny(f"model.name_or_path={ckpt}").model, trained.tokenizer, torch.device("cpu"))
    assert not any(".lora_" in n for n, _ in merged.named_parameters())  # our loader merges

    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "rl.export", str(ckpt), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits2 = exported(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.allclose(logits2, logits, atol=1e-4)

    done = subprocess.run([sys.executable, "-m", "rl.eval", "experiment=smoke", f"model.name_or_path={ckpt}",
                           f"trainer.output_dir={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval/exact_match" in json.loads((tmp_path / "eval" / "eval.json").read_text())
