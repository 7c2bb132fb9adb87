"""The log-derivative trick on a small softmax policy: REINFORCE's estimate matches the
analytic gradient of the expected reward, and on-policy GRPO (ratio 1) has REINFORCE's gradient."""

import torch
from types import SimpleNamespace

from rl.advantages import ADVANTAGES
from rl.losses import Normalizer, policy_loss
from tests.test_losses import algo

REWARD = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0])


def analytic_gradient(theta):
    # d/dtheta_k sum_y softmax(theta)_y R_y = p_k (R_k - E[R])
    p = torch.softmax(theta, 0)
    return p * (REWARD - (p * REWARD).sum())


def test_reinforce_estimator_matches_analytic_gradient():
    torch.manual_seed(0)
    theta = torch.tensor([0.3, -0.2, 0.0, 0.5, 0.1], requires_grad=True)
    n = 200_000
    actions = torch.multinomial(torch.softmax(theta.detach(), 0), n, replacement=True)
    logp = torch.log_softmax(theta, 0)[actions]  # [n]
    rewards = REWARD[actions]
    # gradient ASCENT direction on E[R] = -gradient of the REINFORCE loss (no baseline: unbiased)
    (-(rewards * logp).mean()).backward()
    estimate = -theta.grad
    exact = analytic_gradient(theta.detach())
    # sampling error ~ std / sqrt(n) ~ 1e-3; allow 5 sigma
    assert torch.allclose(estimate, exact, atol=6e-3), (estimate, exact)


def test_group_baseline_keeps_the_estimate_unbiased():
    torch.manual_seed(1)
    theta = torch.tensor([0.3, -0.2, 0.0, 0.5, 0.1], requires_grad=True)
    G, groups = 8, 40_000
    actions = torch.multinomial(torch.softmax(theta.detach(), 0), G * groups, replacement=True)
    adv = ADVANTAGES["rloo"](REWARD[actions], SimpleNamespace(group_size=G))  # leave-one-out keeps it unbiased
    (-(adv * torch.log_softmax(theta, 0)[actions]).mean()).backward()
    assert torch.allclose(-theta.grad, analytic_gradient(theta.detach()), atol=6e-3)


def test_on_policy_grpo_gradient_equals_reinforce():
    torch.manual_seed(2)
    logits = torch.randn(6, 5, 11, requires_grad=True)  # [b, T, V]
    tokens = torch.randint(0, 11, (6, 5))
    mask = (torch.rand(6, 5) > 0.2).float()
    adv = ADVANTAGES["grpo"](torch.randn(6), SimpleNamespace(group_size=3))
    grads = {}
    for name in ("ppo_clip", "reinforce"):
        logits.grad = None
        logprobs = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(2)  # [b, T]
        loss, _ = policy_loss(algo(policy_loss=name, loss_agg="seq-mean-token-mean"), logprobs, logprobs.detach(),
                              None, adv, mask, Normalizer([mask]))
        loss.backward()
        grads[name] = logits.grad.clone()
    assert grads["reinforce"].abs().sum() > 0
    assert torch.allclose(grads["ppo_clip"], grads["reinforce"], atol=1e-7)
