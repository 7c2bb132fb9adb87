"""The transformers engine's sampling loop (rl/engines/decode.py) against transformers' own
generate and a per-row loop; its inverse-CDF draw against hand-derived distributions and a
plain per-row loop; the CPU attention (rl/attention.py) against transformers' sdpa."""

import math

import pytest
import torch

from rl import attention
from rl.engines import decode
from rl.setup import Setup
from envs.types import SamplingParams

P = torch.tensor([0.5, 0.3, 0.15, 0.05])


def prompts(s, n):
    return [s.env.prompt_ids(t)[-40 + 7 * i:] for i, t in enumerate(s.eval_tasks[:n])]  # lengths 40, 33, 26, ...


def frequencies(tokens: torch.Tensor, v: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=v).float() / len(tokens)


def test_draw_follows_the_distribution_and_top_p_keeps_the_smallest_nucleus():
    torch.manual_seed(0)
    n = 40000
    logprobs = P.log().expand(n, 4)
    sigma = math.sqrt(0.25 / n)  # the largest binomial standard error
    assert torch.allclose(frequencies(decode.draw(logprobs.exp(), 1.0), 4), P, atol=5 * sigma)
    # top_p 0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it -> {0, 1} renormalised to 0.625 / 0.375
    assert torch.allclose(frequencies(decode.draw(logprobs.exp(), 0.7), 4), torch.tensor([0.625, 0.375, 0, 0]), atol=5 * sigma)
    # top_p 0.95: 0.5 + 0.3 + 0.15 = 0.95 reaches it -> the last token (0.05) is never drawn
    freq = frequencies(decode.draw(logprobs.exp(), 0.95), 4)
    assert freq[3] == 0 and torch.allclose(freq[:3], P[:3] / 0.95, atol=5 * sigma)


def test_draw_never_takes_a_zero_probability_token():
    weights = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])  # unnormalised, as the loop passes them
    for u in (0.0, 0.5, 1.0 - 1e-7, 1.0):  # u = 1 (never drawn) is the rounding edge: still a real token
        assert decode.draw(weights, 1.0, torch.tensor([u, u])).tolist() == [0, 1]
        assert decode.draw(weights, 0.9, torch.tensor([u, u])).tolist() == [0, 1]


def plain_draw(probs: list[float], top_p: float, u: float) -> int:
    """The reference: rank by probability, keep the nucleus, walk the cumulative mass."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i]) if top_p < 1 else list(range(len(probs)))
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += probs[i]
    total = sum(probs[i] for i in kept)
    acc = 0.0
    for i in kept:
        acc += probs[i]
        if acc > u * total:
            return i
    return kept[-1]


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_vectorised_draw_equals_a_per_row_loop(top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 50, generator=g, dtype=torch.float64) * 2
    logprobs = torch.log_softmax(logits, -1)
    u = torch.rand(64, generator=g, dtype=torch.float64)
    got = decode.draw(logprobs.exp(), top_p, u).tolist()
    want = [plain_draw(row.exp().tolist(), top_p, x) for row, x in zip(logprobs, u.tolist())]
    assert got == want


def test_greedy_loop_equals_transformers_generate_row_by_row(tiny):
    """Left padding, the prefill shared by a group, the buffered cache and rows leaving the batch
    as they finish change nothing: each row equals generate() on its prompt alone."""
    s = Setup.build(tiny("++model.config_overrides.initializer_range=0.3"))  # varied greedy tokens
    model, tok = s.policy.model.eval(), s.tokenizer
    ps = prompts(s, 4)
    T = 12
    alone = []
    for p in ps:
        out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=T, min_new_tokens=T, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        new = out.sequences[0, len(p):]
        lps = torch.stack([torch.log_softmax(sc[0].float(), -1)[t] for sc, t in zip(out.scores, new)])
        alone.append((new.tolist(), lps))
    # EOS: tokens that the rows reach at different steps, so rows finish (and leave) one by one
    eos = {alone[0][0][3], alone[1][0][7], alone[2][0][10]}
    want = []
    for toks, lps in alone:
        k = next((i + 1 for i, t in enumerate(toks) if t in eos), T)
        want.append((toks[:k], lps[:k], "stop" if k < T or toks[-1] in eos else "length"))
    got = decode.sample(model, tok, ps, 2, SamplingParams(0.0, 1.0, T), eos)
    assert len(got) == 8
    for i, g in enumerate(got):
        toks, lps, reason = want[i // 2]
        assert g.completion == toks and g.finish_reason == reason
        assert torch.allclose(torch.tensor(g.rollout_logprobs), lps, atol=1e-4)
    assert len({len(w[0]) for w in want}) >= 3  # the rows did finish at different steps


def test_min_new_tokens_holds_back_eos(tiny):
    s = Setup.build(tiny())
    model, tok = s.policy.model.eval(), s.tokenizer
    eos = set(range(len(tok) - 100))  # nearly every token ends a completion
    torch.manual_seed(0)
    free = decode.sample(model, tok, prompts(s, 2), 3, SamplingParams(1.0, 1.0, 6), eos)
    forced = decode.sample(model, tok, prompts(s, 2), 3, SamplingParams(1.0, 1.0, 6, min_new_tokens=6), eos)
    assert max(len(x.completion) for x in free) < 6
    assert all(len(x.completion) == 6 and not set(x.completion[:5]) & eos for x in forced)
    assert all(math.isfinite(v) for x in forced for v in x.rollout_logprobs)


def test_cpu_attention_equals_sdpa_with_grouped_heads_and_padding(tiny):
    s = Setup.build(tiny())
    model = s.policy.model
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg._attn_implementation == attention.NAME
    ids = torch.randint(0, 1000, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :6], mask[2, :13] = 0, 0  # left padding: the mask is not None, the repeat_kv path in sdpa

    def run(impl):
        model.set_attn_implementation(impl)
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * mask[..., None]).square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return logits.detach(), grads

    a, ga = run("sdpa")
    b, gb = run(attention.NAME)
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
