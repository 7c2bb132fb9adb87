"""rl/fused.py: RMSNorm and SwiGLU MLP that keep less for backward. By hand on tiny inputs;
the same logits and gradients as the unpatched model for every patched architecture (fp32, and
bf16 autocast); what they keep for backward, counted; the fallback for non-plain projections."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rl import fused


def tiny_model(arch: str, seed: int = 0):
    config = AutoConfig.for_model(arch, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=100, head_dim=16)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def test_rmsnorm_by_hand():
    # x = [3, 4], w = [1, 2], eps 0: rms = sqrt(12.5); out = [3, 8] / rms.
    # d sum(out) / dx_i = w_i / r - (w . x) x_i / (H r^3) = [-0.090510, 0.067882]
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = fused.RMSNorm.apply(x, w, 0.0)
    r = math.sqrt(12.5)
    assert out.tolist()[0] == pytest.approx([3 / r, 8 / r], rel=1e-6)
    out.sum().backward()
    assert x.grad.tolist()[0] == pytest.approx([1 / r - 33 / (2 * r**3), 2 / r - 44 / (2 * r**3)], rel=1e-6)
    assert w.grad.tolist() == pytest.approx([3 / r, 4 / r], rel=1e-6)  # d sum(out) / dw = x / r


def test_swiglu_by_hand():
    # H = I = 1, x = 1, Wg = 1, Wu = 2, Wd = 3: out = 3 silu(1) 2 = 6 sigmoid(1);
    # d out / dx = Wd (silu'(1) Wg up + silu(1) Wu), silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
    s = 1 / (1 + math.exp(-1))
    x, wg, wu, wd = (torch.tensor([[v]], dtype=torch.float64, requires_grad=True) for v in (1.0, 1.0, 2.0, 3.0))
    out = fused.SwiGLU.apply(x, wg, wu, wd)
    assert out.item() == pytest.approx(6 * s)
    out.backward()
    assert x.grad.item() == pytest.approx(3 * (s * (1 + (1 - s)) * 2 + s * 2))
    assert wd.grad.item() == pytest.approx(2 * s)  # silu(1) * up
    assert wu.grad.item() == pytest.approx(3 * s)  # Wd silu(1) x
    assert wg.grad.item() == pytest.approx(3 * 2 * s * (2 - s))  # Wd up silu'(1) x


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_patched_model_gives_the_same_logits_and_gradients(arch, autocast):
    plain, patched = tiny_model(arch), tiny_model(arch)
    patched.load_state_dict(plain.state_dict())
    layers = plain.config.num_hidden_layers
    expected = layers * 3 + 1 + (layers * 2 if arch == "qwen3" else 0)  # 2 norms + MLP per layer, final norm, q/k norms
    assert fused.apply(patched) == expected
    ids = torch.randint(0, 100, (2, 9))
    results = []
    for model in (plain, patched):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(ids).logits
        (logits.float().square().mean()).backward()
        results.append((logits.float(), {n: p.grad for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    tol = 2e-2 if autocast else 1e-5
    assert torch.allclose(la, lb, rtol=tol, atol=tol)
    for name, grad in ga.items():
        assert torch.allclose(gb[name], grad, rtol=tol, atol=tol * grad.abs().max().item()), name


def saved_activation_bytes(module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward through module(x), parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def test_what_the_fused_layers_keep_for_backward():
    model = tiny_model("llama")
    mlp, norm = model.model.layers[0].mlp, model.model.layers[0].input_layernorm
    T, H, I = 10, 64, 96  # noqa: E741
    x = torch.randn(1, T, H, requires_grad=True)
    plain_mlp, plain_norm = saved_activation_bytes(mlp, x), saved_activation_bytes(norm, x)
    fused.apply(model)
    # x, gate and up: (H + 2 I) floats a token; autograd also keeps silu(gate) and the product
    assert saved_activation_bytes(mlp, x) == T * (H + 2 * I) * 4 < plain_mlp - T * I * 4
    # x and 1 / rms: (H + 1) floats a token; autograd also keeps x / rms
    assert saved_activation_bytes(norm, x) == T * (H + 1) * 4 <= plain_norm - T * H * 4


def test_falls_back_for_projections_that_are_not_plain_linear():
    class Scaled(torch.nn.Linear):  # stands for a LoRA or quantised layer
        def forward(self, x):
            return 2 * super().forward(x)

    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    scaled = Scaled(64, 96, bias=False)
    scaled.weight.data.copy_(mlp.gate_proj.weight)
    mlp.gate_proj = scaled
    x = torch.randn(1, 5, 64)
    want = type(mlp).forward(mlp, x)
    fused.apply(model)
    assert torch.equal(mlp(x), want)
