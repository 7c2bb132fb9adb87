"""The fused linear log-prob (rl/logprobs.py LinearLogprob) against numbers derived by hand,
torch's gradcheck and the plain autograd path, in fp32/fp64 and under bf16 autocast."""

import math

import pytest
import torch

from rl.logprobs import LinearLogprob, token_logprobs


def plain(hidden, weight, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(1, targets[:, None]).squeeze(1), entropy


def test_by_hand():
    # logits [1, 0, -1] (T = 1): logprob of token 0 = 1 - log(e + 1 + 1/e); d/dlogits = onehot - p
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    lp, ent = LinearLogprob.apply(hidden, weight, torch.tensor([0]), 1.0, 4)
    z = math.e + 1 + 1 / math.e
    p = [math.e / z, 1 / z, (1 / math.e) / z]
    assert lp.item() == pytest.approx(1 - math.log(z), abs=1e-6)
    assert ent.item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-6)
    lp.sum().backward()
    d = [1 - p[0], -p[1], -p[2]]  # onehot - p
    assert hidden.grad.tolist()[0] == pytest.approx([d[0] - d[2], 0.0], abs=1e-6)  # d @ W
    assert weight.grad[:, 0].tolist() == pytest.approx(d, abs=1e-6) and weight.grad[:, 1].abs().max() == 0  # d^T h


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 7, (5,), generator=g)
    # fp32 logits inside: compare with a loose tolerance
    assert torch.autograd.gradcheck(lambda h, w: LinearLogprob.apply(h, w, targets, 0.7, 4)[0], (hidden, weight),
                                    eps=1e-3, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_the_plain_autograd_path(temperature):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(33, 16, generator=g, requires_grad=True)
    weight = torch.randn(500, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 500, (33,), generator=g)
    upstream = torch.randn(33, generator=g)
    lp, ent = LinearLogprob.apply(hidden, weight, targets, temperature, 8)
    (lp * upstream).sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    lp2, ent2 = plain(hidden, weight, targets, temperature)
    (lp2 * upstream).sum().backward()
    assert torch.allclose(lp, lp2, atol=1e-5) and torch.allclose(ent, ent2, atol=1e-4)
    assert torch.allclose(gh, hidden.grad, atol=1e-5) and torch.allclose(gw, weight.grad, atol=1e-5)


def test_bf16_autocast_matches_the_plain_path_under_autocast():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(20, 32, generator=g, requires_grad=True)
    weight = torch.randn(300, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = LinearLogprob.apply(hidden, weight, targets, 1.0, 8)
    lp.sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp2, _ = plain(hidden, weight, targets, 1.0)
    lp2.sum().backward()
    assert gh.dtype == gw.dtype == torch.float32
    assert torch.allclose(lp, lp2, atol=2e-2)
    assert torch.allclose(gh, hidden.grad, atol=3e-2, rtol=3e-2) and torch.allclose(gw, weight.grad, atol=3e-2, rtol=3e-2)


def test_token_logprobs_fused_equals_the_plain_path_on_a_model(tiny):
    """The whole model: the fused head (default) and the plain checkpointed head (the entropy
    bonus path) give the same log-probs and the same parameter gradients."""
    from rl.setup import Setup

    s = Setup.build(tiny())
    model = s.policy.model
    ids = torch.randint(0, 1000, (4, 30))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    grads = []
    for entropy_grad in (False, True):  # True: the plain path (entropy with gradient)
        model.zero_grad()
        lp, ent = token_logprobs(model, ids, mask, 12, temperature=0.9, chunk=7, entropy_grad=entropy_grad)
        lp.sum().backward()
        grads.append((lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = grads
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ea, eb, atol=1e-4)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
