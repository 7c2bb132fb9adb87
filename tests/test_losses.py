"""Policy losses, KL estimators and aggregation against hand-derived numbers; the
micro-batched gradient equals the full-batch gradient."""

import math
from types import SimpleNamespace

import pytest
import torch

from rl.losses import AGGREGATIONS, KL_ESTIMATORS, Normalizer, policy_loss, ppo_clip_loss, reinforce_loss


def algo(**kw):
    base = dict(policy_loss="ppo_clip", loss_agg="token-mean", clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0, kl_coef=0.0,
                kl_estimator="k3", kl_in_reward=False, entropy_coef=0.0, tis_cap=0.0, loss_norm_len=None,
                sampling=SimpleNamespace(max_new_tokens=8))
    return SimpleNamespace(**{**base, **kw})


def test_ppo_clip_by_hand():
    # ratio e^{0.5}=1.6487 with A=+1 is clipped to 1.2 -> loss -1.2
    # ratio e^{-0.5}=0.6065 with A=+1: min(0.6065, 0.8) -> -0.6065 (not clipped: the pessimistic term)
    # ratio e^{0.5} with A=-1: min(-1.6487, -1.2) = -1.6487 -> loss +1.6487
    lp = torch.tensor([[0.5, -0.5, 0.5]])
    old = torch.zeros(1, 3)
    for adv, want, clipped in [(1.0, [-1.2, -math.exp(-0.5), -1.2], [1, 0, 1]),
                               (-1.0, [math.exp(0.5), 0.8, math.exp(0.5)], [0, 1, 0])]:
        loss, clip = ppo_clip_loss(lp, old, torch.tensor([adv]), None, algo())
        assert torch.allclose(loss, torch.tensor([want]), atol=1e-5)
        assert clip.tolist() == [clipped]


def test_clip_higher_is_asymmetric():
    loss, _ = ppo_clip_loss(torch.tensor([[0.5]]), torch.zeros(1, 1), torch.tensor([1.0]), None, algo(clip_high=0.28))
    assert loss.item() == pytest.approx(-1.28)


def test_reinforce_loss_by_hand():
    loss, _ = reinforce_loss(torch.tensor([[-1.0, -2.0]]), None, torch.tensor([0.5]), None, algo())
    assert loss.tolist() == [[0.5, 1.0]]


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])  # r = ref - lp = -1
    assert KL_ESTIMATORS["k1"](lp, ref).item() == pytest.approx(1.0)
    assert KL_ESTIMATORS["k2"](lp, ref).item() == pytest.approx(0.5)
    assert KL_ESTIMATORS["k3"](lp, ref).item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert KL_ESTIMATORS["k3"](lp, lp).item() == 0.0


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    norm = Normalizer([mask])
    assert AGGREGATIONS["token-mean"](values, mask, norm, algo()).item() == pytest.approx(10 / 4)
    assert AGGREGATIONS["seq-mean-token-mean"](values, mask, norm, algo()).item() == pytest.approx((2 + 4) / 2)
    assert AGGREGATIONS["seq-mean-token-sum"](values, mask, norm, algo()).item() == pytest.approx((6 + 4) / 2)
    # Dr. GRPO: the constant is max_new_tokens (8 here) or algo.loss_norm_len
    assert AGGREGATIONS["seq-mean-token-sum-norm"](values, mask, norm, algo()).item() == pytest.approx(10 / (2 * 8))
    assert AGGREGATIONS["seq-mean-token-sum-norm"](values, mask, norm, algo(loss_norm_len=5)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_micro_batches_give_the_full_batch_gradient(agg):
    torch.manual_seed(0)
    theta = torch.randn(4, 6, requires_grad=True)
    old = torch.randn(4, 6)
    adv = torch.randn(4)
    mask = (torch.rand(4, 6) > 0.3).float()
    a = algo(loss_agg=agg, kl_coef=0.1)
    ref = torch.randn(4, 6)
    loss, _ = policy_loss(a, theta, old, ref, adv, mask, Normalizer([mask]))
    loss.backward()
    full = theta.grad.clone()
    theta.grad = None
    norm = Normalizer([mask[:1], mask[1:]])
    for part in (slice(0, 1), slice(1, 4)):
        loss, _ = policy_loss(a, theta[part], old[part], ref[part], adv[part], mask[part], norm)
        loss.backward()
    assert torch.allclose(theta.grad, full, atol=1e-6)
