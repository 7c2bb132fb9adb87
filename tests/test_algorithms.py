"""The algorithm box (advantages, policy losses, aggregation, shaping, dynamic sampling and the
start-up check) against hand-derived numbers, against plain per-sample Python loops, and, on a
tiny categorical policy, against the analytic policy gradient of E[R].

Everything here is pure tensors: no model, no engine, CPU only, each test well under a second."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from rewards.combine import RewardResult
from rl import algo as algo_mod
from rl.advantages import ADVANTAGES, multi_reward, overlong_penalty
from rl.config import AlgoConfig
from rl.losses import (AGGREGATIONS, POLICY_LOSSES, Normalizer, dual_clip_loss, policy_loss,
                       ppo_clip_loss, sequence_kl, truncated_is_weight)


def algo(**kw):
    """The algo fields the losses read (as tests/test_losses.py's helper)."""
    base = dict(policy_loss="ppo_clip", loss_agg="token-mean", clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0, kl_coef=0.0,
                kl_estimator="k3", kl_in_reward=False, entropy_coef=0.0, tis_cap=0.0, loss_norm_len=None,
                sampling=SimpleNamespace(max_new_tokens=8), group_size=4, baseline="group")
    return SimpleNamespace(**{**base, **kw})


def adv_algo(G, baseline="group"):
    return SimpleNamespace(group_size=G, baseline=baseline)


# ---------------------------------------------------------------------------------------------
# 1. Hand-derived numbers
# ---------------------------------------------------------------------------------------------


def test_dual_clip_by_hand():
    # old = 0, so ratio = exp(lp): ratios 10, 2, 1.1, 0.5; clip 0.2 -> [0.8, 1.2]; c = 3
    lp = torch.log(torch.tensor([[10.0, 2.0, 1.1, 0.5]])).requires_grad_()
    old = torch.zeros(1, 4)
    # A = -1: PPO loss = -min(rho A, clip(rho) A) = max(rho, clip(rho)):
    #   rho=10  -> PPO 10, above the cap -c A = 3 -> 3 (capped, and no gradient)
    #   rho=2   -> PPO 2 < 3 -> 2 (the pessimistic unclipped term, not capped)
    #   rho=1.1 -> 1.1
    #   rho=0.5 -> max(0.5, 0.8) = 0.8 (clipped below)
    loss, clipped = dual_clip_loss(lp, old, torch.tensor([-1.0]), None, algo())
    assert torch.allclose(loss, torch.tensor([[3.0, 2.0, 1.1, 0.8]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    loss.sum().backward()
    # d/dlp of rho*|A| is rho (rho = 2, 1.1); the capped and the clipped token have none
    assert torch.allclose(lp.grad, torch.tensor([[0.0, 2.0, 1.1, 0.0]]), atol=1e-6)
    # A = +2: plain PPO-clip, the cap never applies: -min(2 rho, 2 clip(rho)) = -2.4, -2.4, -2.2, -1.0
    loss, clipped = dual_clip_loss(lp.detach(), old, torch.tensor([2.0]), None, algo())
    ppo, ppo_clipped = ppo_clip_loss(lp.detach(), old, torch.tensor([2.0]), None, algo())
    assert torch.allclose(loss, torch.tensor([[-2.4, -2.4, -2.2, -1.0]]), atol=1e-6)
    assert torch.equal(loss, ppo) and torch.equal(clipped, ppo_clipped)
    # a larger c moves the cap: c = 20 leaves rho = 10 at its PPO loss 10
    loss, _ = dual_clip_loss(lp.detach(), old, torch.tensor([-1.0]), None, algo(clip_ratio_c=20.0))
    assert loss[0, 0].item() == pytest.approx(10.0, rel=1e-5)


def test_gspo_by_hand():
    # log ratios 0.1, -0.1, 0.15 on the 3 trained tokens (the 4th, masked, is 5.0 and must not count):
    # s = exp((0.1 - 0.1 + 0.15) / 3) = exp(0.05) = 1.051271, inside [0.8, 1.2]
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    lp = (old + torch.tensor([[0.1, -0.1, 0.15, 5.0]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    A = 2.0
    s = math.exp(0.05)
    loss, clipped = POLICY_LOSSES["gspo"](lp, old, torch.tensor([A]), mask, algo())
    # every token carries the sequence's surrogate -s A = -2.102542
    assert torch.allclose(loss, torch.full((1, 4), -s * A), atol=1e-6)
    assert clipped.sum().item() == 0
    # under seq-mean-token-mean (one sequence): L = sum_t(-s A)/3, and d s / d lp_t = s / |y|,
    # so -dL/dlp_t = s A / |y| = 1.051271 * 2 / 3 = 0.700847 on the trained tokens, 0 on the masked one
    agg = AGGREGATIONS["seq-mean-token-mean"](loss, mask, Normalizer([mask]), algo())
    agg.backward()
    assert torch.allclose(-lp.grad, torch.tensor([[s * A / 3] * 3 + [0.0]]), atol=1e-6)
    # which is the gradient of GSPO's sequence objective s(theta) * A
    lp2 = lp.detach().clone().requires_grad_()
    (torch.exp(((lp2 - old) * mask).sum() / 3) * A).backward()
    assert torch.allclose(-lp.grad, lp2.grad, atol=1e-6)

    # clipped: mean log ratio 0.3 -> s = exp(0.3) = 1.349859 > 1.2
    lp3 = (old + torch.tensor([[0.3, 0.3, 0.3, -4.0]])).requires_grad_()
    loss, clipped = POLICY_LOSSES["gspo"](lp3, old, torch.tensor([1.0]), mask, algo())
    assert torch.allclose(loss, torch.full((1, 4), -1.2), atol=1e-6)  # -clip(s) A = -1.2, no gradient
    assert clipped.tolist() == [[1.0] * 4]
    (loss * mask).sum().backward()
    assert lp3.grad.abs().sum().item() == 0
    # same ratio with A = -1: the unclipped term is the pessimistic one: loss s = 1.349859
    loss, clipped = POLICY_LOSSES["gspo"](lp3.detach(), old, torch.tensor([-1.0]), mask, algo())
    assert torch.allclose(loss, torch.full((1, 4), math.exp(0.3)), atol=1e-6)
    assert clipped.sum().item() == 0


def test_cispo_by_hand():
    # ratios exp(0.5) = 1.6487 -> w = 1.2 ; exp(-0.5) = 0.6065 -> w = 0.8 ; exp(0.1) = 1.10517 -> w = 1.10517
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = lp.detach() - torch.tensor([[0.5, -0.5, 0.1]])
    A = 1.5
    w = torch.tensor([[1.2, 0.8, math.exp(0.1)]])
    loss, clipped = POLICY_LOSSES["cispo"](lp, old, torch.tensor([A]), None, algo())
    # -w A logp = -1.2*1.5*(-1) = 1.8 ; -0.8*1.5*(-2) = 2.4 ; -1.10517*1.5*(-0.5) = 0.828878
    assert torch.allclose(loss, torch.tensor([[1.8, 2.4, math.exp(0.1) * 0.75]]), atol=1e-5)
    assert clipped.tolist() == [[1.0, 1.0, 0.0]]
    loss.sum().backward()
    # no gradient through w: dL/dlp = -w A = -1.8, -1.2, -1.657756 (with it, the unclipped token would
    # get an extra -A logp w = +0.8289)
    assert torch.allclose(lp.grad, -w * A, atol=1e-5)


def test_reinforce_pp_by_hand():
    # batch [1, 2, 3, 4]: mean 2.5, unbiased std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.290994
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3) + 1e-4
    want = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / sd
    # whitened over the whole batch: the group size does not matter
    for G in (1, 2, 4):
        assert torch.allclose(ADVANTAGES["reinforce_pp"](r, adv_algo(G)), want, atol=1e-6)
    # a single reward: std taken as 0 -> advantage 0, not NaN
    assert ADVANTAGES["reinforce_pp"](torch.tensor([3.0]), adv_algo(1)).tolist() == [0.0]


def test_agreeing_groups_keep_a_gradient_only_when_whitened_over_the_batch():
    """The embedded default's reason for gspo_pp: an irrelevance prompt whose 4 completions all
    answer [] (ToolRL +4) and a tool prompt whose 4 all answer [] (-2). GRPO's group baseline
    gives both groups advantage 0; whitened over the batch, [] is pushed up on the first and
    down on the second: mean 1, unbiased std sqrt(8 x 9 / 7) = 3.207135, A = +-3 / 3.207135."""
    r = torch.tensor([4.0] * 4 + [-2.0] * 4)
    assert ADVANTAGES["grpo"](r, adv_algo(4)).abs().max().item() < 1e-6
    a = 3 / (math.sqrt(72 / 7) + 1e-4)  # 0.935385
    assert torch.allclose(ADVANTAGES["reinforce_pp"](r, adv_algo(4)), torch.tensor([a] * 4 + [-a] * 4), atol=1e-6)


def test_reinforce_batch_baseline_by_hand():
    r = torch.tensor([1.0, 0.0, 3.0, 0.0])
    # baseline=batch: b = mean(1, 0, 3, 0) = 1 -> [0, -1, 2, -1]
    assert torch.allclose(ADVANTAGES["reinforce"](r, adv_algo(2, "batch")), torch.tensor([0.0, -1.0, 2.0, -1.0]))
    # baseline=group: b = 0.5 and 1.5 -> [0.5, -0.5, 1.5, -1.5]
    assert torch.allclose(ADVANTAGES["reinforce"](r, adv_algo(2, "group")), torch.tensor([0.5, -0.5, 1.5, -1.5]))
    # batch baseline also works with G = 1 (no group at all)
    assert torch.allclose(ADVANTAGES["reinforce"](r, adv_algo(1, "batch")), torch.tensor([0.0, -1.0, 2.0, -1.0]))


def test_multi_reward_gives_functions_equal_influence():
    # one group of 4; function a in [0, 1], function b in [0, 100]
    per_function = torch.tensor([[1.0, 0.0], [0.0, 100.0], [0.0, 0.0], [0.0, 0.0]])
    # a = [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5 -> [1.5, -0.5, -0.5, -0.5]
    # b = 100 * [0, 1, 0, 0]: the same after normalising -> [-0.5, 1.5, -0.5, -0.5]; sum [1, 1, -1, -1]
    out = multi_reward(per_function, torch.tensor([1.0, 1.0]), 4)
    assert torch.allclose(out, torch.tensor([1.0, 1.0, -1.0, -1.0]), atol=1e-3)
    # the completion that won only the small-range function counts as much as the one that won the big one
    assert out[0].item() == pytest.approx(out[1].item(), rel=1e-3)
    # (a plain sum would not: 1 vs 100)
    plain = per_function.sum(1)
    assert plain[1] / plain[0] == 100
    # weights still weigh: w = [2, 1] -> 2*[1.5, -.5, -.5, -.5] + [-.5, 1.5, -.5, -.5] = [2.5, 0.5, -1.5, -1.5]
    out = multi_reward(per_function, torch.tensor([2.0, 1.0]), 4)
    assert torch.allclose(out, torch.tensor([2.5, 0.5, -1.5, -1.5]), atol=1e-3)
    # normalised per group: a second group with shifted, scaled values gives the same numbers
    two = torch.cat([per_function, per_function * 7 + 3])
    assert torch.allclose(multi_reward(two, torch.tensor([1.0, 1.0]), 4).view(2, 4),
                          torch.tensor([[1.0, 1.0, -1.0, -1.0]] * 2), atol=1e-3)


def test_multi_reward_leaves_out_skipped_values():
    nan = float("nan")
    # one group of 4; function a skipped (None) for the last two: a = [1, 0, -, -] -> mean 0.5,
    # unbiased std sqrt((0.25 + 0.25) / 1) = 0.707 -> [0.707, -0.707, 0, 0]; b = [0, 1, 0, 1]:
    # mean 0.5, std sqrt(4 * 0.25 / 3) = 0.577 -> [-0.866, 0.866, -0.866, 0.866]
    per_function = torch.tensor([[1.0, 0.0], [0.0, 1.0], [nan, 0.0], [nan, 1.0]])
    out = multi_reward(per_function, torch.tensor([1.0, 1.0]), 4)
    assert torch.allclose(out, torch.tensor([0.7071 - 0.8660, -0.7071 + 0.8660, -0.8660, 0.8660]), atol=1e-3)
    # against a plain loop over groups and functions on random inputs with random skips
    g = torch.Generator().manual_seed(0)
    values = torch.randn(12, 3, generator=g)
    values[torch.rand(12, 3, generator=g) < 0.3] = nan
    weights = torch.tensor([1.0, 0.5, 2.0])
    expected = torch.zeros(12)
    for b in range(3):
        for k in range(3):
            col = [values[b * 4 + j, k].item() for j in range(4)]
            kept = [v for v in col if v == v]
            if not kept:
                continue
            mu = sum(kept) / len(kept)
            sd = (sum((v - mu) ** 2 for v in kept) / max(len(kept) - 1, 1)) ** 0.5
            for j, v in enumerate(col):
                if v == v:
                    expected[b * 4 + j] += weights[k] * (v - mu) / (sd + 1e-4)  # EPS
    assert torch.allclose(multi_reward(values, weights, 4), expected, atol=1e-4)


def test_overlong_penalty_by_hand():
    # max_len 10, buffer 4, penalty 1: 0 up to 10 - 4 = 6, then -(l - 6) / 4: -0.25 at 7, -0.5 at 8,
    # -1 at 10, and -1 (DAPO's cap) beyond
    lengths = torch.tensor([0, 5, 6, 7, 8, 10, 12])
    out = overlong_penalty(lengths, 10, 4, 1.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    # penalty scales it: -0.5 * 2 / 4 = -0.25 at length 8
    assert overlong_penalty(torch.tensor([8]), 10, 4, 0.5).item() == pytest.approx(-0.25)
    # buffer 0 turns it off
    assert overlong_penalty(lengths, 10, 0, 1.0).abs().sum().item() == 0


def test_truncated_is_weight_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0, -1.0]], requires_grad=True)
    rollout = torch.tensor([[0.0, -1.0, 1.0, -3.0]])
    # exp(old - rollout) = 1, e = 2.718 -> capped at 2, e^-1 = 0.3679, e^2 = 7.389 -> 2
    w = truncated_is_weight(old, rollout, 2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, math.exp(-1), 2.0]]), atol=1e-6)
    assert not w.requires_grad


def test_policy_loss_applies_tis_only_with_cap_and_rollout_logprobs():
    lp = torch.tensor([[-1.0, -2.0]])
    rollout = torch.tensor([[-1.0, -2.0 - math.log(3.0)]])  # pi_old / pi_rollout = 1, 3
    mask = torch.ones(1, 2)
    norm = Normalizer([mask])
    a = algo(policy_loss="reinforce", tis_cap=2.0, loss_agg="seq-mean-token-sum")
    # reinforce, A = 1: pg = [1, 2]; TIS weights [1, min(3, 2) = 2] -> 1 + 4 = 5
    loss, stats = policy_loss(a, lp, lp, None, torch.tensor([1.0]), mask, norm, rollout_logprobs=rollout)
    assert loss.item() == pytest.approx(5.0, rel=1e-5)
    assert stats["pg_loss"].item() == pytest.approx(5.0, rel=1e-5)
    # no cap or no rollout logprobs: plain 1 + 2 = 3
    assert policy_loss(algo(policy_loss="reinforce", loss_agg="seq-mean-token-sum"), lp, lp, None,
                       torch.tensor([1.0]), mask, norm, rollout_logprobs=rollout)[0].item() == pytest.approx(3.0)
    assert policy_loss(a, lp, lp, None, torch.tensor([1.0]), mask, norm)[0].item() == pytest.approx(3.0)


def test_seq_mean_token_sum_norm_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    norm = Normalizer([mask])
    # trained tokens sum: 1 + 2 + 4 + 5 + 0 = 12; the all-masked row is not a sequence: 2 sequences
    assert norm.sequences == 2 and norm.tokens == 5
    # / (2 sequences x max_new_tokens 8) = 12 / 16 = 0.75
    assert AGGREGATIONS["seq-mean-token-sum-norm"](values, mask, norm, algo()).item() == pytest.approx(0.75)
    # / (2 x loss_norm_len 3) = 2
    assert AGGREGATIONS["seq-mean-token-sum-norm"](values, mask, norm, algo(loss_norm_len=3)).item() == pytest.approx(2.0)
    # the constant does not depend on the length: a longer sequence's tokens weigh the same as a shorter one's
    values.requires_grad_()
    AGGREGATIONS["seq-mean-token-sum-norm"](values, mask, norm, algo()).backward()
    assert torch.allclose(values.grad, mask / 16)


def test_entropy_bonus_by_hand():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    entropy = torch.tensor([[0.6, 0.3], [0.9, 100.0]], requires_grad=True)
    norm = Normalizer([mask])
    adv = torch.tensor([1.0, -1.0])
    a = algo(policy_loss="reinforce", entropy_coef=0.1)
    # token-mean pg: (1 + 2 - 0.5) / 3 = 0.833333 ; bonus: (0.6 + 0.3 + 0.9) / 3 = 0.6 (the masked 100 ignored)
    loss, stats = policy_loss(a, lp, lp, None, adv, mask, norm, entropy=entropy)
    assert stats["pg_loss"].item() == pytest.approx(2.5 / 3)
    assert stats["entropy_bonus"].item() == pytest.approx(0.6)
    assert loss.item() == pytest.approx(2.5 / 3 - 0.1 * 0.6)
    assert stats["loss"].item() == pytest.approx(loss.item())
    loss.backward()  # the bonus pushes entropy up: d loss / d entropy = -0.1 / 3 per trained token
    assert torch.allclose(entropy.grad, -0.1 / 3 * mask)
    # entropy_coef = 0 or no entropy: no bonus, no stat
    for a_, ent in ((algo(policy_loss="reinforce"), entropy), (a, None)):
        loss, stats = policy_loss(a_, lp, lp, None, adv, mask, norm, entropy=ent)
        assert loss.item() == pytest.approx(2.5 / 3) and "entropy_bonus" not in stats


def test_kl_in_reward_keeps_kl_out_of_the_loss_but_reports_it():
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    mask = torch.ones(1, 2)
    norm = Normalizer([mask])
    # k1 = lp - ref = [1, 0] -> token-mean 0.5 ; reinforce pg with A = 1: (1 + 2) / 2 = 1.5
    kw = dict(policy_loss="reinforce", kl_estimator="k1", kl_coef=0.4)
    loss, stats = policy_loss(algo(**kw), lp, lp, ref, torch.tensor([1.0]), mask, norm)
    assert loss.item() == pytest.approx(1.5 + 0.4 * 0.5) and stats["kl"].item() == pytest.approx(0.5)
    loss, stats = policy_loss(algo(**kw, kl_in_reward=True), lp, lp, ref, torch.tensor([1.0]), mask, norm)
    assert loss.item() == pytest.approx(1.5)
    assert stats["kl"].item() == pytest.approx(0.5)
    # the reward-side KL is the per-sequence token sum: 1 + 0 = 1 (k3: e^-1 - (-1) - 1 = 0.367879 + 0)
    assert sequence_kl(lp, ref, mask, "k1").tolist() == [1.0]
    assert sequence_kl(lp, ref, mask, "k3").item() == pytest.approx(math.exp(-1))
    assert sequence_kl(lp, ref, torch.tensor([[0.0, 1.0]]), "k1").tolist() == [0.0]


# ---------------------------------------------------------------------------------------------
# 2. Vectorised vs a plain per-sample loop
# ---------------------------------------------------------------------------------------------


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):  # unbiased, as torch.std
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _advantage_loop(name, rewards, G, baseline):
    r = rewards.tolist()
    out = []
    for g in range(len(r) // G):
        grp = r[g * G:(g + 1) * G]
        for i, x in enumerate(grp):
            out.append({
                "grpo": lambda: (x - _mean(grp)) / (_std(grp) + 1e-4),
                "dr_grpo": lambda: x - _mean(grp),
                "rloo": lambda: x - (sum(grp) - x) / (G - 1),
                "reinforce": lambda: x - (_mean(grp) if baseline == "group" else _mean(r)),
                "reinforce_pp": lambda: (x - _mean(r)) / (_std(r) + 1e-4),
            }[name]())
    return out


@pytest.mark.parametrize("baseline", ["group", "batch"])
@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_advantages_match_a_loop(name, baseline):
    torch.manual_seed(3)
    G = 4
    rewards = torch.randn(7 * G) * 3 + 1
    rewards[4:8] = 2.0  # a flat group
    got = ADVANTAGES[name](rewards, adv_algo(G, baseline))
    assert got.shape == (7 * G,)
    assert got.tolist() == pytest.approx(_advantage_loop(name, rewards, G, baseline), abs=1e-5)


def _policy_loss_loop(name, lp, old, adv, mask, a):
    """(loss, clipped, d(sum_t mask_t loss_t)/d lp_t) per token, in plain Python."""
    lo, hi, c = 1 - a.clip_low, 1 + a.clip_high, a.clip_ratio_c
    b, T = len(lp), len(lp[0])
    loss, clip, grad = [[0.0] * T for _ in range(b)], [[0.0] * T for _ in range(b)], [[0.0] * T for _ in range(b)]

    def surrogate(rho, A):  # -min(rho A, clip(rho) A): (value, clipped, d value / d log rho)
        cl = min(max(rho, lo), hi)
        if cl * A < rho * A:
            return -cl * A, 1.0, 0.0
        return -rho * A, 0.0, -rho * A

    for i in range(b):
        A = adv[i]
        n = sum(mask[i])
        s = math.exp(sum((lp[i][t] - old[i][t]) * mask[i][t] for t in range(T)) / max(n, 1))
        for t in range(T):
            rho = math.exp(lp[i][t] - old[i][t])
            if name == "reinforce":
                v, f, d = -A * lp[i][t], 0.0, -A
            elif name == "ppo_clip":
                v, f, d = surrogate(rho, A)
            elif name == "dual_clip":
                v, f, d = surrogate(rho, A)
                if A < 0 and -c * A < v:
                    v, f, d = -c * A, 1.0, 0.0
            elif name == "gspo":
                v, f, d = surrogate(s, A)  # the sequence ratio on every token; d s_t / d lp_t = s (GSPO-token)
            elif name == "cispo":
                w = min(max(rho, lo), hi)
                v, f, d = -w * A * lp[i][t], float(w != rho), -w * A
            else:
                raise KeyError(f"no loop reference for policy loss {name!r}: add one here")
            loss[i][t], clip[i][t], grad[i][t] = v, f, d * mask[i][t]
    return loss, clip, grad


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_losses_match_a_loop(name):
    torch.manual_seed(4)
    b, T = 12, 9
    old = torch.randn(b, T).double() - 1.5
    lp = (old + torch.randn(b, T).double() * 0.8).requires_grad_()  # ratios from ~0.1 to ~10: every branch
    adv = torch.randn(b).double()
    adv[0] = 0.0
    mask = (torch.rand(b, T) > 0.25).double()
    mask[1] = 0.0  # a sequence with nothing to train
    a = algo(clip_low=0.2, clip_high=0.28, clip_ratio_c=2.5)
    loss, clipped = POLICY_LOSSES[name](lp, old, adv, mask, a)
    (loss * mask).sum().backward()
    want_loss, want_clip, want_grad = _policy_loss_loop(name, lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), a)
    assert loss.shape == clipped.shape == (b, T)
    assert torch.allclose(loss, torch.tensor(want_loss, dtype=loss.dtype), atol=1e-9)
    assert torch.equal(clipped.double(), torch.tensor(want_clip).double())
    assert torch.allclose(lp.grad, torch.tensor(want_grad, dtype=lp.dtype), atol=1e-9)
    if name != "reinforce":  # the inputs do reach the clipping branches
        assert 0 < (torch.tensor(want_clip) * mask).sum() < mask.sum()


def _aggregation_loop(name, values, mask, a):
    seqs = [(v, m) for v, m in zip(values, mask)]
    n_tokens = max(sum(sum(m) for _, m in seqs), 1.0)
    n_seqs = max(sum(1 for _, m in seqs if sum(m) > 0), 1)
    sums = [sum(x * y for x, y in zip(v, m)) for v, m in seqs]
    if name == "token-mean":
        return sum(sums) / n_tokens
    if name == "seq-mean-token-mean":
        return sum(s / max(sum(m), 1) for s, (_, m) in zip(sums, seqs)) / n_seqs
    if name == "seq-mean-token-sum":
        return sum(sums) / n_seqs
    if name == "seq-mean-token-sum-norm":
        return sum(sums) / (n_seqs * (a.loss_norm_len or a.sampling.max_new_tokens))
    raise KeyError(f"no loop reference for aggregation {name!r}: add one here")


@pytest.mark.parametrize("loss_norm_len", [None, 5])
@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregations_match_a_loop(name, loss_norm_len):
    torch.manual_seed(5)
    values = torch.randn(6, 7).double()
    mask = (torch.rand(6, 7) > 0.4).double()
    mask[2] = 0.0
    mask[3] = 1.0
    a = algo(loss_norm_len=loss_norm_len)
    got = AGGREGATIONS[name](values, mask, Normalizer([mask]), a)
    assert got.item() == pytest.approx(_aggregation_loop(name, values.tolist(), mask.tolist(), a), abs=1e-10)
    # split into micro-batches sharing one Normalizer: the parts add up to the whole
    norm = Normalizer([mask[:2], mask[2:]])
    parts = AGGREGATIONS[name](values[:2], mask[:2], norm, a) + AGGREGATIONS[name](values[2:], mask[2:], norm, a)
    assert parts.item() == pytest.approx(got.item(), abs=1e-10)


def test_multi_reward_matches_a_loop():
    torch.manual_seed(6)
    G, B, K = 4, 5, 3
    per_function = torch.randn(B * G, K) * torch.tensor([1.0, 50.0, 0.01]) + torch.tensor([0.0, 10.0, -3.0])
    per_function[:G, 1] = 7.0  # a function flat within one group contributes 0 there
    weights = torch.tensor([0.5, 2.0, 1.0])
    got = multi_reward(per_function, weights, G)
    rows = per_function.tolist()
    want = []
    for g in range(B):
        grp = rows[g * G:(g + 1) * G]
        cols = [[row[k] for row in grp] for k in range(K)]
        for row in grp:
            want.append(sum(weights[k].item() * (row[k] - _mean(cols[k])) / (_std(cols[k]) + 1e-4) for k in range(K)))
    assert got.tolist() == pytest.approx(want, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# 3. Expected gradients on a tiny categorical policy (one-token "sequences", 5 actions)
# ---------------------------------------------------------------------------------------------

REWARD = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0])
THETA = torch.tensor([0.3, -0.2, 0.0, 0.5, 0.1])
G, GROUPS = 8, 40_000


def analytic_gradient(theta):
    # d/dtheta_k sum_y softmax(theta)_y R_y = p_k (R_k - E[R])
    p = torch.softmax(theta, 0)
    return p * (REWARD - (p * REWARD).sum())


@pytest.fixture(scope="module")
def actions():
    gen = torch.Generator().manual_seed(0)
    return torch.multinomial(torch.softmax(THETA, 0), G * GROUPS, replacement=True, generator=gen)  # [N]


def expected_gradient(actions, advantage, loss="reinforce", baseline="group"):
    """The ascent direction -d loss / d theta that the trainer's loss gives on this batch (on-policy:
    old = logprobs.detach()), its standard error taking groups as the independent units, and
    -d loss / d logprob per sample."""
    theta = THETA.clone().requires_grad_()
    logp = torch.log_softmax(theta, 0)[actions][:, None]  # [N, 1]
    logp.retain_grad()
    mask = torch.ones_like(logp)
    adv = ADVANTAGES[advantage](REWARD[actions], adv_algo(G, baseline))  # [N]
    value, _ = policy_loss(algo(policy_loss=loss, loss_agg="token-mean"), logp, logp.detach(), None, adv, mask,
                           Normalizer([mask]))
    value.backward()
    # per sample: A_i * d log p(a_i) / d theta = A_i (onehot(a_i) - p)
    per_sample = adv[:, None] * (torch.nn.functional.one_hot(actions, 5).float() - torch.softmax(THETA, 0))
    groups = len(actions) // G
    per_group = per_sample.view(groups, G, 5).sum(1)  # [groups, 5]
    # the loss is that estimator (up to float32 accumulation over N terms, far below the standard error;
    # the scatter-add into theta is not bit-reproducible, so exact comparisons use the per-sample gradient)
    assert torch.allclose(-theta.grad, per_group.mean(0) / G, atol=3e-4)
    se = per_group.std(0) / G / math.sqrt(groups)
    return -theta.grad, se, -logp.grad[:, 0]


@pytest.mark.parametrize("advantage,baseline", [("rloo", "group"), ("reinforce", "batch")])
def test_unbiased_estimators_match_the_analytic_gradient(actions, advantage, baseline):
    # rloo: the leave-one-out baseline is independent of the sample -> unbiased.
    # reinforce with baseline=batch: the batch mean includes the sample with weight 1/N -> bias
    # factor (1 - 1/N), invisible at N = 320k.
    est, se, _ = expected_gradient(actions, advantage, baseline=baseline)
    exact = analytic_gradient(THETA)
    z = ((est - exact) / se).abs()
    assert z.max() < 5, (est, exact, se)
    assert se.max() < 3e-3  # the check is sharp: the smallest |exact| component (0.031) is > 10 se


def test_dr_grpo_gradient_is_scaled_by_g_minus_1_over_g(actions):
    # A_i = r_i - mean_g includes r_i / G, so E[A_i grad log p_i] = (1 - 1/G) E[r_i grad log p_i]
    # - (1/G) sum_{j != i} E[r_j] E[grad log p_i] = (G-1)/G grad E[R]: dr_grpo is biased towards 0 by 1/G.
    est, se, _ = expected_gradient(actions, "dr_grpo")
    exact = analytic_gradient(THETA)
    assert ((est - (G - 1) / G * exact) / se).abs().max() < 5, (est, exact, se)
    assert ((est - exact) / se).abs().max() > 10  # and the bias is visible: it is not simply unbiased
    scale = (est @ exact) / (exact @ exact)
    assert scale.item() == pytest.approx((G - 1) / G, abs=0.02)


def test_grpo_gradient_points_the_analytic_way(actions):
    # grpo divides each group's (r - mean_g) by that group's std: a per-group positive rescaling,
    # correlated with the rewards, so the expected gradient is not a fixed multiple of grad E[R]
    # (and not unbiased), but it stays close in direction.
    est, _, _ = expected_gradient(actions, "grpo")
    exact = analytic_gradient(THETA)
    cos = torch.nn.functional.cosine_similarity(est, exact, dim=0).item()
    assert cos > 0.95, cos
    assert (est @ exact).item() > 0
    # the std division changes the scale (std of these rewards ~0.9): not dr_grpo's (G-1)/G
    scale = ((est @ exact) / (exact @ exact)).item()
    assert abs(scale - (G - 1) / G) > 0.05, scale


@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_on_policy_losses_have_the_reinforce_gradient_categorical(actions, loss):
    # ratio 1: nothing is clipped, d rho / d theta = d log pi / d theta, CISPO's weight is 1
    actions = actions[: 2000 * G]  # exactness needs no large sample
    est, _, per_sample = expected_gradient(actions, "rloo", loss=loss)
    ref, _, ref_per_sample = expected_gradient(actions, "rloo", loss="reinforce")
    adv = ADVANTAGES["rloo"](REWARD[actions], adv_algo(G))
    # per sample, exactly REINFORCE's A_i / N (token-mean over N one-token sequences)
    assert torch.equal(per_sample, ref_per_sample)
    assert torch.allclose(per_sample, adv / len(actions), rtol=1e-6, atol=0)
    assert ref.abs().min() > 0.01
    assert torch.allclose(est, ref, atol=3e-4)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_on_policy_losses_have_the_reinforce_gradient_sequences(loss, agg):
    torch.manual_seed(7)
    logits = torch.randn(6, 5, 11, requires_grad=True)  # [b, T, V]
    tokens = torch.randint(0, 11, (6, 5))
    mask = (torch.rand(6, 5) > 0.2).float()
    adv = ADVANTAGES["grpo"](torch.randn(6), adv_algo(3))
    grads = {}
    for name in (loss, "reinforce"):
        logits.grad = None
        logprobs = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(2)  # [b, T]
        value, stats = policy_loss(algo(policy_loss=name, loss_agg=agg), logprobs, logprobs.detach(), None, adv, mask,
                                   Normalizer([mask]))
        value.backward()
        grads[name] = logits.grad.clone()
        assert stats["clip_frac"].item() == 0
    assert grads["reinforce"].abs().sum() > 0
    assert torch.allclose(grads[loss], grads["reinforce"], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 4. rl.algo.check
# ---------------------------------------------------------------------------------------------


def algo_cfg(**overrides):
    cfg = OmegaConf.structured(AlgoConfig())
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


@pytest.mark.parametrize("overrides,batch_size,world,match", [
    (dict(advantage="ppo"), 8, 1, r"algo\.advantage='ppo'"),
    (dict(policy_loss="clip"), 8, 1, r"algo\.policy_loss='clip'"),
    (dict(loss_agg="token-sum"), 8, 1, r"algo\.loss_agg='token-sum'"),
    (dict(kl_estimator="k4"), 8, 1, r"algo\.kl_estimator='k4'"),
    (dict(baseline="global"), 8, 1, r"algo\.baseline='global'"),
    (dict(reward_norm="max"), 8, 1, r"algo\.reward_norm='max'"),
    (dict(group_size=1), 8, 1, r"algo\.group_size=1 with algo\.advantage=grpo"),
    (dict(group_size=1, advantage="rloo"), 8, 1, r"algo\.group_size=1 with algo\.advantage=rloo"),
    (dict(group_size=1, advantage="dr_grpo"), 8, 1, r"algo\.group_size=1"),
    (dict(group_size=1, advantage="reinforce"), 8, 1, r"algo\.group_size=1"),  # baseline=group
    (dict(group_size=0, advantage="reinforce_pp"), 8, 1, r"algo\.group_size=0"),
    (dict(), 0, 1, r"trainer\.batch_size=0"),
    (dict(mini_batches=3), 8, 1, r"algo\.mini_batches=3"),
    (dict(mini_batches=4), 8, 4, r"algo\.mini_batches=4 .* 2 prompts"),  # 8 / 4 ranks = 2 per rank
    (dict(mini_batches=0), 8, 1, r"algo\.mini_batches=0"),
    (dict(ppo_epochs=0), 8, 1, r"algo\.ppo_epochs=0"),
    (dict(kl_in_reward=True), 8, 1, r"algo\.kl_in_reward"),
    (dict(group_size=1, advantage="reinforce_pp", reward_norm="per_function"), 8, 1, r"reward_norm=per_function"),
    (dict(overlong_buffer=128), 8, 1, r"algo\.overlong_buffer=128"),  # max_new_tokens 128
    (dict(overlong_buffer=64, sampling__max_new_tokens=32), 8, 1, r"algo\.overlong_buffer=64"),
    (dict(overlong_buffer=-1), 8, 1, r"algo\.overlong_buffer=-1"),
    (dict(clip_ratio_c=1.0), 8, 1, r"clip_ratio_c"),
    (dict(clip_low=-0.1), 8, 1, r"clip_low"),
])
def test_check_rejects_bad_configs_naming_the_key(overrides, batch_size, world, match):
    with pytest.raises(ValueError, match=match):
        algo_mod.check(algo_cfg(**overrides), batch_size, world)


@pytest.mark.parametrize("overrides,batch_size,world", [
    (dict(), 8, 1),
    (dict(group_size=1, advantage="reinforce_pp"), 8, 1),
    (dict(group_size=1, advantage="reinforce", baseline="batch"), 8, 1),
    (dict(mini_batches=4), 8, 1),
    (dict(mini_batches=2), 8, 4),
    (dict(kl_in_reward=True, kl_coef=0.05), 8, 1),
    (dict(overlong_buffer=127), 8, 1),
    (dict(advantage="dr_grpo", policy_loss="gspo", loss_agg="seq-mean-token-sum-norm", reward_norm="per_function"), 1, 1),
])
def test_check_accepts_good_configs(overrides, batch_size, world):
    algo_mod.check(algo_cfg(**overrides), batch_size, world)


# ---------------------------------------------------------------------------------------------
# 5. rl.algo.collect (DAPO dynamic sampling), shaped_rewards, advantages over the gathered batch
# ---------------------------------------------------------------------------------------------


class FakeDist:
    def __init__(self, rank=0, others=(), short_elsewhere=0):
        self.rank, self.others, self.short_elsewhere, self.max_calls = rank, list(others), short_elsewhere, 0

    def gather(self, items):
        return self.others + items  # other ranks' items first, out of rank order

    def max(self, values):
        self.max_calls += 1
        if self.max_calls <= self.short_elsewhere:  # another rank is still short this round
            return {k: max(v, 1.0) for k, v in values.items()}
        return dict(values)


class Sampler:
    """Tasks are names; a name starting with 'f' is a flat group (all rewards equal), 'v' varied."""

    def __init__(self, rounds, G):
        self.rounds, self.G, self.task_calls, self.sample_calls = list(rounds), G, 0, []

    def next_tasks(self):
        self.task_calls += 1
        return self.rounds.pop(0)

    def __call__(self, tasks):
        self.sample_calls.append(tasks)
        rollouts = [f"{t}/{j}" for t in tasks for j in range(self.G)]
        total = [1.0 if t.startswith("f") else float(j) for t in tasks for j in range(self.G)]
        fmt = [0.5 * x for x in total]
        return rollouts, RewardResult(total, {"acc": list(total), "fmt": fmt},
                                      {"acc": [f"why {r}" for r in rollouts], "fmt": [None] * len(rollouts)})


def dyn(**kw):
    return SimpleNamespace(**{**dict(dynamic_sampling=True, group_size=2, max_refill_rounds=3), **kw})


def _rows(tasks, G=2):
    return [f"{t}/{j}" for t in tasks for j in range(G)]


def test_collect_drops_flat_groups_and_refills():
    s = Sampler([["v0", "f1", "v2", "f3"], ["f4", "v5", "v6", "v7"], ["v8", "v9", "v10", "v11"]], 2)
    rollouts, scored, stats = algo_mod.collect(s, s.next_tasks, dyn(), FakeDist())
    # round 0 keeps v0, v2 (drops f1, f3); round 1 drops f4, keeps v5, v6 (room for 2 more); v7 is surplus
    assert rollouts == _rows(["v0", "v2", "v5", "v6"])
    assert stats == {"dynamic/rounds": 1, "dynamic/dropped_groups": 3, "dynamic/kept_groups": 4}
    assert s.task_calls == 2 and len(s.sample_calls) == 2
    # the rewards stay aligned with their rollouts, in every field
    assert scored.total == [0.0, 1.0] * 4
    assert scored.per_function == {"acc": [0.0, 1.0] * 4, "fmt": [0.0, 0.5] * 4}
    assert scored.reasons["acc"] == [f"why {r}" for r in rollouts] and scored.reasons["fmt"] == [None] * 8


def test_collect_without_refill_when_nothing_is_flat():
    s = Sampler([["v0", "v1", "v2"], ["v3", "v4", "v5"]], 2)
    rollouts, scored, stats = algo_mod.collect(s, s.next_tasks, dyn(), FakeDist())
    assert rollouts == _rows(["v0", "v1", "v2"]) and len(scored.total) == 6
    assert stats == {"dynamic/rounds": 0, "dynamic/dropped_groups": 0, "dynamic/kept_groups": 3}
    assert s.task_calls == 1


def test_collect_stops_after_max_refill_rounds():
    s = Sampler([["v0", "f1", "f2"], ["f3", "f4", "f5"], ["f6", "f7", "f8"], ["v9", "v10", "v11"]], 2)
    rollouts, scored, stats = algo_mod.collect(s, s.next_tasks, dyn(max_refill_rounds=2), FakeDist())
    # 1 + 2 rounds sampled, the 4th batch of tasks never drawn; the batch is left short (1 group)
    assert len(s.sample_calls) == 3 and s.task_calls == 3
    assert rollouts == _rows(["v0"]) and scored.total == [0.0, 1.0]
    assert stats == {"dynamic/rounds": 2, "dynamic/dropped_groups": 8, "dynamic/kept_groups": 1}


def test_collect_returns_the_last_round_when_everything_is_flat():
    s = Sampler([["f0", "f1"], ["f2", "f3"], ["f4", "f5"]], 2)
    rollouts, scored, stats = algo_mod.collect(s, s.next_tasks, dyn(max_refill_rounds=2), FakeDist())
    assert rollouts == _rows(["f4", "f5"])
    assert scored.total == [1.0] * 4 and scored.per_function["fmt"] == [0.5] * 4
    assert stats == {"dynamic/rounds": 2, "dynamic/dropped_groups": 6, "dynamic/kept_groups": 0}


def test_collect_with_max_refill_rounds_zero_never_refills():
    s = Sampler([["v0", "f1"], ["v2", "v3"]], 2)
    rollouts, _, stats = algo_mod.collect(s, s.next_tasks, dyn(max_refill_rounds=0), FakeDist())
    assert rollouts == _rows(["v0"]) and s.task_calls == 1
    assert stats == {"dynamic/rounds": 0, "dynamic/dropped_groups": 1, "dynamic/kept_groups": 1}


def test_collect_keeps_drawing_while_another_rank_is_short():
    # this rank is full after round 0, another rank is not: this rank still draws a batch (so every
    # rank consumes the same number of batches) but keeps what it had
    s = Sampler([["v0", "v1"], ["v2", "f3"], ["v4", "v5"]], 2)
    dist = FakeDist(short_elsewhere=1)
    rollouts, _, stats = algo_mod.collect(s, s.next_tasks, dyn(), dist)
    assert rollouts == _rows(["v0", "v1"])
    assert s.task_calls == 2 and dist.max_calls == 2
    assert stats["dynamic/rounds"] == 1 and stats["dynamic/kept_groups"] == 2


def test_collect_without_dynamic_sampling_returns_the_first_round():
    s = Sampler([["f0", "v1", "f2"], ["v3", "v4", "v5"]], 2)
    rollouts, scored, stats = algo_mod.collect(s, s.next_tasks, dyn(dynamic_sampling=False), FakeDist())
    assert rollouts == _rows(["f0", "v1", "f2"]) and scored.total == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert stats == {} and s.task_calls == 1


def test_shaped_rewards_sum_per_function_and_overlong():
    scored = RewardResult([1.0, 100.0, 0.0, 0.0], {"a": [1.0, 0.0, 0.0, 0.0], "b": [0.0, 100.0, 0.0, 0.0]},
                          {"a": [None] * 4, "b": [None] * 4})
    rollouts = [SimpleNamespace(completion=[0] * n, loss_mask=[1] * n) for n in (3, 6, 7, 8)]
    base = dict(group_size=4, overlong_buffer=0, overlong_penalty=1.0, sampling=SimpleNamespace(max_new_tokens=8))
    # sum: the weighted totals as they are
    plain = algo_mod.shaped_rewards(scored, rollouts, SimpleNamespace(reward_norm="sum", **base), {"a": 1, "b": 1})
    assert plain.tolist() == [1.0, 100.0, 0.0, 0.0]
    # per_function: GDPO, [1, 1, -1, -1] (see test_multi_reward_gives_functions_equal_influence)
    gdpo = algo_mod.shaped_rewards(scored, rollouts, SimpleNamespace(reward_norm="per_function", **base),
                                   {"a": 1.0, "b": 1.0})
    assert torch.allclose(gdpo, torch.tensor([1.0, 1.0, -1.0, -1.0]), atol=1e-3)
    # overlong buffer 4 of max 8: lengths 3, 6, 7, 8 -> 0, -0.5, -0.75, -1 on top
    base["overlong_buffer"] = 4
    shaped = algo_mod.shaped_rewards(scored, rollouts, SimpleNamespace(reward_norm="sum", **base), {"a": 1, "b": 1})
    assert torch.allclose(shaped, torch.tensor([1.0, 99.5, -0.75, -1.0]))


def test_advantages_use_the_gathered_batch_in_rank_order():
    a = SimpleNamespace(advantage="reinforce_pp", group_size=2, baseline="group")
    mine, theirs = torch.tensor([3.0, 4.0]), [1.0, 2.0]
    # rank 1 of 2; rank 0 holds [1, 2]: whitened over [1, 2, 3, 4] -> this rank's [0.5, 1.5] / 1.291
    got = algo_mod.advantages(mine, a, FakeDist(rank=1, others=[(0, theirs)]))
    assert torch.allclose(got, torch.tensor([0.5, 1.5]) / (math.sqrt(5 / 3) + 1e-4), atol=1e-6)
    # as rank 0 with rank 1 holding [1, 2] (listed first by gather): the slice is the first two
    got = algo_mod.advantages(mine, a, FakeDist(rank=0, others=[(1, theirs)]))
    assert torch.allclose(got, torch.tensor([0.5, 1.5]) / (math.sqrt(5 / 3) + 1e-4), atol=1e-6)
    # a group estimator on the gathered [10, 20, 3, 4]: rank 1's group [3, 4] has mean 3.5 and std
    # sqrt(0.5) -> [-0.5, 0.5] / 0.7071, whatever rank 0's group holds
    a.advantage = "grpo"
    got = algo_mod.advantages(mine, a, FakeDist(rank=1, others=[(0, [10.0, 20.0])]))
    assert torch.allclose(got, torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-4), atol=1e-6)
