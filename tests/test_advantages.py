"""Advantage estimators against numbers worked out by hand, and against a per-group loop."""

import math

import pytest
import torch

from types import SimpleNamespace

from rl.advantages import ADVANTAGES, zero_variance_share


def A(G, baseline="group"):
    return SimpleNamespace(group_size=G, baseline=baseline)


def test_grpo_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4*0.25/3) = 0.57735
    adv = ADVANTAGES["grpo"](torch.tensor([1.0, 0.0, 0.0, 1.0]), A(4))
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]), atol=1e-6)


def test_grpo_two_groups_and_zero_variance_group():
    # group 1: [3, 1] mean 2 std sqrt(2) ; group 2: [5, 5] -> zeros
    adv = ADVANTAGES["grpo"](torch.tensor([3.0, 1.0, 5.0, 5.0]), A(2))
    s = math.sqrt(2) + 1e-4
    assert torch.allclose(adv, torch.tensor([1 / s, -1 / s, 0.0, 0.0]), atol=1e-6)


def test_reinforce_and_rloo_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])  # mean 0.25
    assert torch.allclose(ADVANTAGES["reinforce"](r, A(4)), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # rloo: 1 - mean(0,0,0) = 1 ; 0 - mean(1,0,0) = -1/3
    assert torch.allclose(ADVANTAGES["rloo"](r, A(4)), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_vectorised_matches_per_group_loop(name):
    torch.manual_seed(0)
    G = 5
    rewards = torch.rand(6 * G)
    got = ADVANTAGES[name](rewards, A(G))
    for g in range(6):
        r = rewards[g * G:(g + 1) * G].tolist()
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))
        for i, x in enumerate(r):
            want = {
                "grpo": (x - mean) / (std + 1e-4),
                "reinforce": x - mean,
                "reinforce_pp": (x - rewards.mean().item()) / (rewards.std().item() + 1e-4),
                "dr_grpo": x - mean,
                "rloo": x - (sum(r) - x) / (G - 1),
            }[name]
            assert got[g * G + i].item() == pytest.approx(want, abs=1e-5)


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="multiple of group_size"):
        ADVANTAGES["grpo"](torch.zeros(5), A(2))


def test_zero_variance_share():
    assert zero_variance_share(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2) == pytest.approx(2 / 3)
