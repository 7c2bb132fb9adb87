"""Two layers of every Llama-family block that keep less for backward (model.fused_layers).

Autograd keeps what each op needs for its own backward. For one token of one SmolLM2 layer in
fp32 that is ~43 KB, and for a group's update (a prompt and 4 completions, ~900 tokens) over 30
layers it is 1.2 GB, the largest item of the embedded default's peak. The same idea as Liger's
SwiGLU and RMSNorm kernels, in plain torch:

    SwiGLU MLP   down(silu(x Wg^T) * (x Wu^T)) keeps x, the gate and up projections; silu and
                 the product are recomputed in backward (elementwise, cheap). Autograd also
                 keeps silu(gate) and the product: 2 x intermediate_size values a token more.
    RMSNorm      w * x / rms(x) keeps x and 1 / rms(x); autograd also keeps the normalised x.

Same matmuls and the same numbers as the modules' own forward (to rounding: tests compare
values and gradients). The patch applies per module class (Llama, Qwen2, Qwen3, Mistral); at
each call it falls back to the module's own forward when the projections are not plain bias-free
nn.Linear (LoRA adapters, quantised layers) or the activation is not SiLU. Under autocast the
matmuls run in the autocast dtype, as they would unfused."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")
MLPS = ("LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP")


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    t = x.device.type
    return torch.get_autocast_dtype(t) if torch.is_autocast_enabled(t) else None


class SwiGLU(torch.autograd.Function):
    """x [..., H], gate/up weights [I, H], down weight [H, I] -> down(silu(x Wg^T) * (x Wu^T)) [..., H]."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        ctx.dtypes = (x.dtype, w_gate.dtype)  # the gradients go back in these
        dtype = _autocast_dtype(x)
        if dtype is not None:
            x, w_gate, w_up, w_down = (t.to(dtype) for t in (x, w_gate, w_up, w_down))
        gate, up = x @ w_gate.T, x @ w_up.T  # [..., I] each
        out = (F.silu(gate) * up) @ w_down.T  # [..., H]
        ctx.save_for_backward(x, gate, up, w_gate, w_up, w_down)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        g = grad_out.to(gate.dtype)  # [..., H]
        sig = torch.sigmoid(gate)  # [..., I]
        silu = gate * sig
        grad_h = g @ w_down  # [..., I]
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  [N, d]
        grad_down = flat(g).T @ flat(silu * up) if ctx.needs_input_grad[3] else None  # [H, I]
        grad_up = grad_h * silu  # [..., I] d out / d up
        grad_gate = grad_h.mul_(up).mul_(sig * (1 + gate * (1 - sig)))  # silu'(g) = sig (1 + g (1 - sig))
        grad_x = (grad_gate @ w_gate).add_(grad_up @ w_up) if ctx.needs_input_grad[0] else None  # [..., H]
        grad_w_gate = flat(grad_gate).T @ flat(x) if ctx.needs_input_grad[1] else None  # [I, H]
        grad_w_up = flat(grad_up).T @ flat(x) if ctx.needs_input_grad[2] else None
        x_dtype, w_dtype = ctx.dtypes
        cast = lambda t, d: None if t is None else t.to(d)  # noqa: E731  back to the inputs' dtypes
        return cast(grad_x, x_dtype), cast(grad_w_gate, w_dtype), cast(grad_w_up, w_dtype), cast(grad_down, w_dtype)


class RMSNorm(torch.autograd.Function):
    """x [..., H], weight [H] -> weight * (x / rms(x)).to(x.dtype), as transformers' LlamaRMSNorm
    (statistics in fp32; the product takes torch's type promotion)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        ctx.save_for_backward(x, rstd, weight)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, rstd, weight = ctx.saved_tensors
        normed = x.float() * rstd  # [..., H] recomputed
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)  # [H]
        grad_x = None
        if ctx.needs_input_grad[0]:
            gn = (grad_out * weight).float()  # [..., H] d loss / d normed
            grad_x = (rstd * (gn - normed * (gn * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_w, None


def _mlp_forward(self, x):
    projections = (self.gate_proj, self.up_proj, self.down_proj)
    if all(type(p) is torch.nn.Linear and p.bias is None for p in projections) and self._fused_silu:
        return SwiGLU.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
    return type(self).forward(self, x)


def _norm_forward(self, x):
    return RMSNorm.apply(x, self.weight, self.variance_epsilon)


def apply(model: torch.nn.Module) -> int:
    """Patch the model's RMSNorm and SwiGLU MLP modules in place; returns how many."""
    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name in NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_norm_forward, module)
            count += 1
        elif name in MLPS and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            act = getattr(getattr(module, "config", None), "hidden_act", None)
            module._fused_silu = act in ("silu", "swish")
            module.forward = types.MethodType(_mlp_forward, module)
            count += 1
    return count
