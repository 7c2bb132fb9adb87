"""trainer.optimizer=adamw_8bit (rl/adamw8bit.py): AdamW with block-scaled float8 moments.

- quantize/dequantize against a plain per-block loop that picks the nearest float8 value by
  enumerating all 256 of them, and against hand-picked numbers;
- the first step equals torch's AdamW (its moments are still exact); small tensors keep fp32
  moments and follow AdamW step for step; a long run stays close to AdamW's trajectory;
- the second moment never rounds to 0 next to a large entry;
- the state survives state_dict -> torch.save -> load_state_dict byte for byte, and the next
  step is the same as without the round trip;
- it trains the tiny model through rl.train."""

import io

import pytest
import torch

from rl import optim
from rl.adamw8bit import BLOCK, FP8, FP8_MAX, MIN_SIZE, AdamW8bit, dequantize, quantize

E4M3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()  # every float8 value (and NaNs)
E4M3 = E4M3[torch.isfinite(E4M3)]


def plain_quantize(x: torch.Tensor, floor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One block at a time, one value at a time: the nearest float8 value by enumeration."""
    n_blocks = -(-x.numel() // BLOCK)
    values, scales = [], []
    for b in range(n_blocks):
        block = [float(v) for v in x[b * BLOCK:(b + 1) * BLOCK]] + [0.0] * max(0, (b + 1) * BLOCK - x.numel())
        scale = max(max(abs(v) for v in block), 1e-30) / FP8_MAX
        scales.append(scale)
        for v in block:
            target = max(v / scale, 2.0**-9) if floor else v / scale
            values.append(float(E4M3[(E4M3 - target).abs().argmin()]))
    return torch.tensor(values), torch.tensor(scales)


def test_quantize_equals_a_per_value_nearest_search():
    torch.manual_seed(0)
    x = torch.randn(3 * BLOCK + 17) * torch.logspace(-4, 1, 3 * BLOCK + 17)  # a ragged last block, 5 decades
    for floor, data in ((False, x), (True, x.abs())):
        codes, scale = quantize(data.clone(), floor)
        want_values, want_scale = plain_quantize(data, floor)
        assert codes.dtype == torch.uint8 and codes.numel() == 4 * BLOCK and scale.shape == (4,)
        assert torch.allclose(scale, want_scale.float(), rtol=1e-6)
        got = codes.view(FP8).float()
        assert torch.equal(got, want_values.float()), (got - want_values).abs().max()
        back = dequantize(codes, scale, data.numel())
        assert torch.allclose(back, (want_values.view(-1, BLOCK) * want_scale[:, None]).flatten()[: data.numel()].float())


def test_quantize_by_hand():
    # one block: absmax 2 -> scale 2/448; 2 -> 448 exactly, 1 -> 224 exactly, 0.3 -> 67.2 -> 64
    # (e4m3 steps by 8 between 64 and 128), -0.01 -> -2.24 -> -2.25 (steps of 0.25 in [2, 4))
    x = torch.zeros(BLOCK)
    x[:4] = torch.tensor([2.0, 1.0, 0.3, -0.01])
    codes, scale = quantize(x.clone())
    assert scale.item() == pytest.approx(2 / 448)
    assert codes.view(FP8).float()[:4].tolist() == [448.0, 224.0, 64.0, -2.25]
    back = dequantize(codes, scale, BLOCK)[:4]
    assert back.tolist() == pytest.approx([2.0, 1.0, 64 * 2 / 448, -2.25 * 2 / 448])
    # the relative error of a value in float8's normal range is at most half a step: 1/16
    y = torch.rand(BLOCK * 8) + 0.05
    assert ((dequantize(*quantize(y.clone()), y.numel()) - y).abs() / y).max() <= 1 / 16 + 1e-6


def test_the_second_moment_never_rounds_to_zero():
    # 1e-12 next to 1 in one block: below float8's range, so plain rounding gives 0; the
    # floored store keeps the smallest step (a larger denominator: a smaller, safe update)
    x = torch.zeros(BLOCK)
    x[0], x[1] = 1.0, 1e-12
    plain = dequantize(*quantize(x.clone()), BLOCK)
    floored = dequantize(*quantize(x.clone(), floor=True), BLOCK)
    assert plain[1] == 0 and floored[1] > 0 and floored[1] == pytest.approx(2.0**-9 / 448)


def test_first_step_is_adamws_and_small_tensors_stay_exact():
    torch.manual_seed(0)
    big, small = torch.randn(64, MIN_SIZE // 32), torch.randn(10)  # 8192 values (8-bit) and 10 (fp32)
    grads = [[torch.randn_like(big), torch.randn_like(small)] for _ in range(4)]
    ours = [big.clone().requires_grad_(), small.clone().requires_grad_()]
    ref = [big.clone().requires_grad_(), small.clone().requires_grad_()]
    o = AdamW8bit(ours, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    r = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for step, g in enumerate(grads):
        for p, q, gi in zip(ours, ref, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        o.step()
        r.step()
        if step == 0:  # m and v are still exact: the same update (~ -lr * sign(g) after decay)
            assert torch.allclose(ours[0], ref[0], atol=1e-6)
            assert torch.allclose(ours[0], big * (1 - 1e-3) - 1e-2 * torch.sign(g[0]), atol=1e-6)
        assert torch.allclose(ours[1], ref[1], atol=1e-6)  # fp32 moments: AdamW exactly
    state = o.state[ours[0]]
    assert state["exp_avg_fp8"].dtype == torch.uint8 and state["exp_avg_sqrt_fp8"].numel() == big.numel()
    assert "exp_avg" in o.state[ours[1]] and "exp_avg_fp8" not in o.state[ours[1]]
    moved = (ours[0] - big).norm()
    assert (ours[0] - ref[0]).norm() < 0.05 * moved  # quantised moments: close to AdamW, not equal


def test_tracks_adamw_on_a_badly_scaled_quadratic():
    torch.manual_seed(0)
    start, target = torch.randn(256, 64), torch.randn(256, 64)
    curvature = torch.logspace(-2, 1, 64)  # gradients over 3 decades within each block
    final = {}
    for name in ("adamw", "adamw_8bit"):
        w = start.clone().requires_grad_()
        opt = optim.make(name, [w], lr=1e-2, weight_decay=0.0)
        for _ in range(300):
            opt.zero_grad()
            loss = ((w - target) ** 2 * curvature).mean()
            loss.backward()
            opt.step()
        final[name] = (w.detach(), loss.item())
    start_loss = ((start - target) ** 2 * curvature).mean().item()
    assert final["adamw_8bit"][1] < 0.1 * start_loss
    assert final["adamw_8bit"][1] < 1.5 * final["adamw"][1] + 1e-3
    drift = (final["adamw_8bit"][0] - final["adamw"][0]).norm() / (final["adamw"][0] - start).norm()
    assert drift < 0.1


def test_state_survives_a_checkpoint_round_trip():
    torch.manual_seed(0)
    p = torch.randn(3 * BLOCK + 5, 7).requires_grad_()
    grads = [torch.randn_like(p) for _ in range(3)]
    opt = AdamW8bit([p], lr=1e-2)
    for g in grads[:2]:
        p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"p": p.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    q = saved["p"].clone().requires_grad_()
    restored = AdamW8bit([q], lr=1e-2)
    restored.load_state_dict(saved["opt"])
    for key, value in opt.state[p].items():
        assert restored.state[q][key].dtype == value.dtype and torch.equal(restored.state[q][key], value), key
    p.grad, q.grad = grads[2].clone(), grads[2].clone()
    opt.step()
    restored.step()
    assert torch.equal(p, q)


def test_trains_the_tiny_model_and_resumes(tiny, tmp_path):
    """Through rl.train with the SFT warm-up and RL: finite losses, parameters that move, and a
    run resumed from its step-1 checkpoint (8-bit state included) ends on the same weights."""
    from safetensors.torch import load_file

    from rl.train import train
    from tests.test_training import DENSE, metrics

    common = [*DENSE, "trainer.optimizer=adamw_8bit", "trainer.lr=1e-3", "algo.sampling.temperature=1.5",
              "trainer.sft.steps=2", "trainer.save_every=1", "trainer.keep_last=3"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(tiny(*common, f"trainer.output_dir={whole}"))
    steps = [r for r in metrics(whole) if "loss" in r]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    weights = lambda out, i: {k: v for f in sorted((out / f"checkpoint-{i}").glob("*.safetensors"))  # noqa: E731
                              for k, v in load_file(f).items()}
    before, after = weights(whole, 0), weights(whole, 2)
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    train(tiny(*common, "trainer.steps=1", f"trainer.output_dir={broken}"))
    train(tiny(*common, f"trainer.output_dir={broken}", "trainer.resume=true"))
    resumed = weights(broken, 2)
    assert all(torch.equal(resumed[k], after[k]) for k in after)


def test_chunked_step_equals_one_pass_over_the_tensor(monkeypatch):
    """The update runs CHUNK values at a time; with chunks of 4 blocks over a ragged tensor of
    10+ blocks (and a non-contiguous one) the weights and float8 state equal those of one
    chunk spanning the whole tensor, bit for bit, step after step. A small non-contiguous
    tensor (fp32 moments) takes its step too."""
    from rl import adamw8bit

    torch.manual_seed(0)
    shapes = [(10 * BLOCK + 17,), (3 * BLOCK, 7)]
    results = []
    for chunk in (4 * BLOCK, 1 << 30):
        monkeypatch.setattr(adamw8bit, "CHUNK", chunk)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        params[1] = torch.nn.Parameter(torch.randn(7, 3 * BLOCK).t())  # non-contiguous
        params.append(torch.nn.Parameter(torch.randn(7, 64).t()))  # non-contiguous, under MIN_SIZE
        opt = AdamW8bit(params, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p) * torch.logspace(-3, 0, p.numel()).view_as(p)
            opt.step()
        results.append(([p.detach().clone() for p in params], opt.state_dict()["state"]))
    (p_small, s_small), (p_whole, s_whole) = results
    assert all(torch.equal(a, b) for a, b in zip(p_small, p_whole))
    assert all(torch.equal(s_small[i][k], s_whole[i][k]) for i in s_whole for k in s_whole[i])
