"""The transformers engine: sampled-token logprobs equal a forward pass of the trainer;
prefilling once per group changes nothing; a bf16 copy is synced after a step."""

import pytest
import torch

from rl.engines.hf import HFEngine
from rl.logprobs import token_logprobs
from rl.batching import collate
from rl.setup import Setup
from envs.types import Rollout, SamplingParams


def prompts(s, n=3):
    return [s.env.prompt_ids(t) for t in s.eval_tasks[:n]]


def test_rollout_logprobs_match_trainer_logprobs(tiny):
    s = Setup.build(tiny())
    torch.manual_seed(0)
    ps = prompts(s)
    samples = HFEngine(s.policy, s.tokenizer).generate(ps, 2, SamplingParams(temperature=0.7, max_new_tokens=12))
    assert len(samples) == 6
    rollouts = [Rollout({}, ps[i // 2], x.completion, [1] * len(x.completion), x.rollout_logprobs, "", x.finish_reason)
                for i, x in enumerate(samples)]
    b = collate(rollouts, torch.zeros(6), s.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        lp, _ = token_logprobs(s.policy.model, b.input_ids, b.attention_mask, b.loss_mask.shape[1], temperature=0.7)
    assert torch.allclose(lp * b.loss_mask, b.rollout_logprobs * b.loss_mask, atol=1e-4)


def test_prefill_once_gives_the_same_greedy_tokens(tiny):
    s = Setup.build(tiny())
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    a = HFEngine(s.policy, s.tokenizer, prefill_once=True).generate(prompts(s), 2, greedy)
    b = HFEngine(s.policy, s.tokenizer, prefill_once=False).generate(prompts(s), 2, greedy)
    assert [x.completion for x in a] == [x.completion for x in b]
    assert all(torch.allclose(torch.tensor(x.rollout_logprobs), torch.tensor(y.rollout_logprobs), atol=1e-4) for x, y in zip(a, b))
    assert a[0].completion == a[1].completion  # greedy: a group is n copies


def test_bf16_copy_follows_the_policy_after_sync(tiny):
    s = Setup.build(tiny())
    engine = HFEngine(s.policy, s.tokenizer, dtype="bfloat16")
    assert engine.model is not s.policy.model and engine.model.dtype == torch.bfloat16
    with torch.no_grad():
        for p in s.policy.parameters():
            p.add_(0.01)
    name, value = next(iter(s.policy.model.state_dict().items()))
    assert not torch.allclose(engine.model.state_dict()[name].float(), value, atol=1e-3)
    engine.load_weights(s.policy)
    assert torch.allclose(engine.model.state_dict()[name].float(), value, atol=1e-2)


def test_stop_string_ends_the_completion(tiny):
    s = Setup.build(tiny())
    # any decoded text ends with its own last character: use it as the stop string
    free = HFEngine(s.policy, s.tokenizer).generate(prompts(s, 1), 1, SamplingParams(temperature=0.0, max_new_tokens=8))[0]
    stop = s.tokenizer.decode(free.completion[:3])[-2:]
    cut = HFEngine(s.policy, s.tokenizer).generate(prompts(s, 1), 1, SamplingParams(0.0, 1.0, 8, (stop,)))[0]
    assert cut.finish_reason == "stop" and len(cut.completion) <= 3
    assert s.tokenizer.decode(cut.completion).endswith(stop)


def test_sleep_frees_the_copy_during_the_update_and_the_sync_refills_it(tiny):
    s = Setup.build(tiny())
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    awake = HFEngine(s.policy, s.tokenizer, dtype="bfloat16")
    engine = HFEngine(s.policy, s.tokenizer, dtype="bfloat16", sleep=True)
    before = engine.generate(prompts(s), 1, greedy)
    assert [x.completion for x in before] == [x.completion for x in awake.generate(prompts(s), 1, greedy)]
    held = sum(p.numel() for p in engine.model.parameters())
    engine.release()
    assert held > 0 and sum(p.numel() for p in engine.model.parameters()) == 0
    engine.release()  # twice is once
    with pytest.raises(RuntimeError, match="load_weights"):
        engine.generate(prompts(s), 1, greedy)
    with torch.no_grad():  # "the update"
        for p in s.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    engine.load_weights(s.policy)
    awake.load_weights(s.policy)
    assert sum(p.numel() for p in engine.model.parameters()) == held
    assert all(torch.equal(a, b) for a, b in zip(engine.model.state_dict().values(), awake.model.state_dict().values()))
    assert engine.model.lm_head.weight is engine.model.get_input_embeddings().weight or \
        not s.policy.config.tie_word_embeddings  # still tied after the refill
    after = engine.generate(prompts(s), 1, greedy)
    assert [x.completion for x in after] == [x.completion for x in awake.generate(prompts(s), 1, greedy)]
    shared = HFEngine(s.policy, s.tokenizer, sleep=True)  # samples from the policy itself: nothing to free
    shared.release()
    assert shared.model is s.policy.model and all(p.numel() for p in s.policy.parameters())
