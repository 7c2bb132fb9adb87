"""AdamW with both moments kept in 8 bits, in plain torch (trainer.optimizer=adamw_8bit).

Block-wise scaled float8 states (as torchao's AdamWFp8; bitsandbytes' AdamW8bit does the same
with a 256-entry dynamic code book, Dettmers et al. 2022): a moment is cut into blocks of 256
values, each block keeps its absmax in fp32 and each value is stored as float8 e4m3 (3 mantissa
bits: within 6.25% of the fp32 value, over 5 decades below the block's absmax). That is 2 bytes
of state per parameter (+ 2 x 4 / 256) instead of AdamW's 8. Each step dequantises one
parameter's moments to fp32, takes torch's AdamW update with them, and stores the new moments
back (round to nearest). Tensors under 4,096 values (norms, biases) keep fp32 moments, as in
bitsandbytes. On this project's 2-core CPU a step over SmolLM2-135M takes ~1.5 s more than
adamw's (a code-book lookup, bucketize, cost 4x that); on a GPU the passes are memory-bound.

The second moment is stored as its square root, and never below the smallest float8 step of its
block: sqrt(v) spans half the decades of v, and an entry that would round to 0 next to a large one
keeps a denominator (m / (0 + eps) would be a huge step; this one is at most a smaller step).

Single process (plain or LoRA); under torchrun the quantised state is not sharded (use adamw or
adamw_fused there)."""

from __future__ import annotations

import math

import torch

BLOCK = 256  # values per absmax
MIN_SIZE = 4096  # smaller tensors keep fp32 moments
CHUNK = 256 * BLOCK  # values updated at once: 256 KiB fp32 temporaries (smaller: more per-op overhead)
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3
FP8_TINY = 2.0**-9  # smallest positive e4m3 (subnormal)


def quantize(x: torch.Tensor, floor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n] fp32 (overwritten) -> (values [ceil(n / BLOCK) * BLOCK] float8 e4m3 (as uint8) scaled so each
    block's absmax is FP8_MAX, scale [ceil(n / BLOCK)] fp32 = absmax / FP8_MAX). floor: no value
    rounds below the smallest float8 step (for x >= 0, a denominator)."""
    pad = -x.numel() % BLOCK
    blocks = (torch.nn.functional.pad(x, (0, pad)) if pad else x).view(-1, BLOCK)  # [n_blocks, BLOCK]
    low, high = torch.aminmax(blocks, dim=1)  # [n_blocks] each: one pass, no |x| tensor
    scale = torch.maximum(high, -low).clamp_(min=1e-30).div_(FP8_MAX)  # [n_blocks]
    blocks.mul_(scale.reciprocal()[:, None]).clamp_(min=FP8_TINY if floor else -FP8_MAX, max=FP8_MAX)  # [-448, 448]
    # as bytes: load_state_dict would cast a floating state tensor to the parameter's dtype
    return blocks.to(FP8).view(torch.uint8).view(-1), scale


def dequantize(values: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """values [n_blocks * BLOCK] float8 e4m3 bytes, scale [n_blocks] -> [n] fp32."""
    return values.view(FP8).view(-1, BLOCK).float().mul_(scale.float()[:, None]).view(-1)[:n]


class AdamW8bit(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction), moments in 8 bits.
    State per parameter: step, and exp_avg / exp_avg_sqrt as (<key>_fp8, <key>_scale) or, for
    small tensors, fp32 <key>."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every state tensor of a floating parameter to the parameter's dtype: the
        float8 bytes are kept out of that and put back as they were (no 4x fp32 copy on resume)."""
        raw = {i: {k: v for k, v in s.items() if k.endswith("_fp8")} for i, s in state_dict["state"].items()}
        rest = {i: {k: v for k, v in s.items() if not k.endswith("_fp8")} for i, s in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": rest})
        by_id = {i: p for saved, group in zip(state_dict["param_groups"], self.param_groups)
                 for i, p in zip(saved["params"], group["params"])}
        for i, values in raw.items():
            self.state[by_id[i]].update({k: v.to(by_id[i].device) for k, v in values.items()})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = group["lr"], *group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("adamw_8bit does not take sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                state["step"] += 1
                t = float(state["step"])
                if p.numel() < MIN_SIZE:  # fp32 moments [n], updated in place through views of p's shape
                    for key in ("exp_avg", "exp_avg_sqrt"):
                        if key not in state:
                            state[key] = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
                    _update(p, p.grad, state["exp_avg"].view(p.shape), state["exp_avg_sqrt"].view(p.shape), t, *hyper)
                else:
                    self._chunked_step(p, state, t, hyper)
        return loss

    @staticmethod
    def _chunked_step(p: torch.Tensor, state: dict, t: float, hyper: tuple) -> None:
        """The update CHUNK values at a time: the float8 state is dequantised, updated and
        stored back one slice of whole blocks at a time (the same numbers as one pass over the
        tensor), so the fp32 temporaries are a few MB instead of 5 x the parameter (0.56 GB for
        SmolLM2's embedding), stay in cache, and come from reused heap instead of fresh pages."""
        n, n_blocks = p.numel(), -(-p.numel() // BLOCK)
        for key in ("exp_avg", "exp_avg_sqrt"):
            if key + "_fp8" not in state:  # first step: zeros (scale 0)
                state[key + "_fp8"] = torch.zeros(n_blocks * BLOCK, dtype=torch.uint8, device=p.device)
                state[key + "_scale"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
        flat = p.view(-1) if p.is_contiguous() else p.detach().reshape(-1).clone()
        grad = p.grad.reshape(-1)
        mv, ms, rv, rs = (state[k] for k in ("exp_avg_fp8", "exp_avg_scale", "exp_avg_sqrt_fp8", "exp_avg_sqrt_scale"))
        for start in range(0, n, CHUNK):
            end = min(start + CHUNK, n)
            b0, b1 = start // BLOCK, -(-end // BLOCK)
            vals = slice(b0 * BLOCK, b1 * BLOCK)
            m = dequantize(mv[vals], ms[b0:b1], end - start)
            r = dequantize(rv[vals], rs[b0:b1], end - start)
            m, r = _update(flat[start:end], grad[start:end], m, r, t, *hyper)
            mv[vals], ms[b0:b1] = quantize(m)
            rv[vals], rs[b0:b1] = quantize(r, floor=True)
        if flat.data_ptr() != p.data_ptr():
            p.copy_(flat.view_as(p))


def _update(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, r: torch.Tensor, t: float, lr: float, beta1: float,
            beta2: float, eps: float, wd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's AdamW step on p (in place) from grad, m = m_{t-1} and r = sqrt(v_{t-1}), all of one
    shape (fp32 m and r, overwritten in place); returns (m_t, sqrt(v_t))."""
    g = grad.float()  # [n]
    m = m.lerp_(g, 1 - beta1)  # [n] m_t
    r = r.square_().mul_(beta2).addcmul_(g, g, value=1 - beta2).sqrt_()  # [n] sqrt(v_t)
    denom = (r / math.sqrt(1 - beta2**t)).add_(eps)  # sqrt(v_t / (1 - beta2^t)) + eps
    p.mul_(1 - lr * wd)
    p.addcdiv_(m.to(p.dtype), denom.to(p.dtype), value=-lr / (1 - beta1**t))
    return m, r
