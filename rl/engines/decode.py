"""The transformers engine's sampling loop: prefill once, then one token per step.

What it does that `model.generate` does not (measured on SmolLM2-135M, 2 CPU cores, README
"Benchmarks"):
- each prompt is prefilled once and its KV cache repeated G times;
- the KV cache lives in buffers allocated once per call (`BufferedLayer`): a step writes one
  slot, where DynamicCache's torch.cat copies the whole cache of every layer;
- sampling is by inverse CDF (one cumsum and one searchsorted per step), where torch.multinomial
  draws an exponential for every vocabulary entry; the [n, V] work of a step is done in place and
  in buffers allocated once (on CPU a fresh tensor of that size costs page faults every step);
- the log-prob of each sampled token comes from the same softmax the token is drawn from;
- a stop string is looked for only in rows whose new token can end it (a vocabulary mask built
  once), so the per-step Python work is a handful of tensor ops;
- finished rows leave the batch once a quarter of it is finished.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rl.batching import left_pad, position_ids
from envs.types import Sample, SamplingParams

STOP_WINDOW = 16  # tokens before the newest that a stop string may span


class BufferedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of buffers with room for the whole completion.

    Mask sizes, sequence length and the attention read `keys`/`values` as before; `update`
    writes the new token's slot instead of concatenating (which copies the whole cache)."""

    @classmethod
    def from_layer(cls, layer: DynamicLayer, repeats: int, room: int) -> "BufferedLayer":
        new = cls()
        new.dtype, new.device, new.is_initialized = layer.dtype, layer.device, True
        keys, values = layer.keys.repeat_interleave(repeats, 0), layer.values.repeat_interleave(repeats, 0)
        b, h, t, d = keys.shape
        new.key_buf = keys.new_empty(b, h, t + room, d)  # [N, H_kv, T + room, D]
        new.value_buf = values.new_empty(b, values.shape[1], t + room, values.shape[3])
        new.key_buf[:, :, :t].copy_(keys)
        new.value_buf[:, :, :t].copy_(values)
        new._view(t)
        return new

    def _view(self, length: int) -> None:
        self.keys, self.values = self.key_buf[:, :, :length], self.value_buf[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, m = self.keys.shape[-2], key_states.shape[-2]
        if n + m > self.key_buf.shape[-2]:  # past the planned room (not in this loop): grow by doubling
            self.key_buf = torch.cat([self.key_buf, torch.empty_like(self.key_buf)], dim=-2)
            self.value_buf = torch.cat([self.value_buf, torch.empty_like(self.value_buf)], dim=-2)
        self.key_buf[:, :, n:n + m].copy_(key_states)
        self.value_buf[:, :, n:n + m].copy_(value_states)
        self._view(n + m)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        n = self.keys.shape[-2]
        self.key_buf, self.value_buf = self.key_buf[indices], self.value_buf[indices]
        self._view(n)


def buffered(cache: DynamicCache, repeats: int, room: int) -> DynamicCache:
    """The prefilled cache, each row repeated `repeats` times, with `room` more slots per layer.
    Layers of another kind (sliding windows, linear attention) are repeated as they are."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = BufferedLayer.from_layer(layer, repeats, room)
        elif repeats > 1:
            layer.batch_repeat_interleave(repeats)
    return cache


def draw(weights: torch.Tensor, top_p: float, u: torch.Tensor | None = None,
         cdf: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from the unnormalised probabilities `weights` [N, V], nucleus-truncated
    to top_p: the first token whose cumulative weight exceeds u * (kept weight), u ~ U[0, 1) per
    row ([N], drawn when None). `cdf`: an [N, V] buffer to reuse for the cumulative sums."""
    order = None
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        weights, order = weights.sort(dim=-1, descending=True)
        before = weights.cumsum(-1) - weights  # weight of the tokens ranked above each one
        weights = weights.masked_fill(before >= top_p * weights.sum(-1, keepdim=True), 0.0)
        cdf = None
    cdf = torch.cumsum(weights, -1, out=cdf) if cdf is not None else weights.cumsum(-1)  # [N, V]
    if u is None:
        u = torch.rand(cdf.shape[0], device=cdf.device, dtype=cdf.dtype)
    total = cdf[:, -1:].contiguous()  # [N, 1]
    token = torch.searchsorted(cdf, u[:, None] * total, right=True)  # [N, 1] first token with cdf > u * total
    token = torch.minimum(token, torch.searchsorted(cdf, total)).squeeze(1)  # u * total rounding up to total
    return order.gather(1, token[:, None]).squeeze(1) if order is not None else token


@lru_cache(maxsize=8)
def stop_enders(tokenizer, stop: tuple[str, ...], vocab: int) -> torch.Tensor:
    """[V] bool: tokens whose text can be the end of a stop string (ends with its last character,
    or is a partial UTF-8 piece). Only rows that sample one of these are checked in text."""
    last = {s[-1] for s in stop if s}
    mask = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, len(tokenizer))):
        text = tokenizer.decode([i])
        mask[i] = bool(text) and (text[-1] in last or "\ufffd" in text)
    return mask


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], n: int, sampling: SamplingParams, eos_ids: set[int],
           prefill_once: bool = True) -> list[Sample]:
    """len(prompts) * n completions, the n of each prompt contiguous, with the log-prob of every
    sampled token under softmax(logits / temperature) (temperature 1 when greedy)."""
    device, T = model.device, sampling.max_new_tokens
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, device)  # [B, P]
    repeats = n if prefill_once else 1
    if not prefill_once:
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [B*G, P]
    cache = DynamicCache(config=model.config)
    # The last position as an index tensor, not logits_to_keep=1: that slices a strided view,
    # and CPU bf16 linear on a strided [B, 1, H] view of [B, P, H] took 2.6 s and 1.7 GB at
    # B=32, P=352 (a contiguous copy: 7 ms, nothing extra)
    last = torch.tensor([ids.shape[1] - 1], device=device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), past_key_values=cache,
                   use_cache=True, logits_to_keep=last).logits[:, -1]  # [B, V]
    cache = buffered(cache, repeats, T)
    logits = logits.repeat_interleave(repeats, 0)  # [N, V]
    N, P, V = logits.shape[0], ids.shape[1], logits.shape[1]
    full_mask = torch.ones(N, P + T, dtype=mask.dtype, device=device)  # [N, P + T]
    full_mask[:, :P] = mask.repeat_interleave(repeats, 0)
    pos = position_ids(full_mask[:, :P])[:, -1:]  # [N, 1]

    eos = torch.tensor(sorted(eos_ids), device=device)
    enders = stop_enders(tokenizer, tuple(sampling.stop), V).to(device) if sampling.stop else None
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    tokens = torch.full((N, T), tokenizer.pad_token_id, dtype=torch.long, device=device)  # [N, T]
    logps = torch.zeros(N, T, device=device)  # [N, T]
    length = torch.full((N,), T, dtype=torch.long)  # [N] tokens kept per row (CPU)
    stopped = torch.zeros(N, dtype=torch.bool)  # [N] ended by EOS or a stop string (CPU)
    rows = torch.arange(N, device=device)  # [n] the original rows still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=device)  # [n] finished rows still in the batch
    weights, cdf = torch.empty(N, V, device=device), torch.empty(N, V, device=device)  # [N, V] reused every step
    for t in range(T):
        n = len(rows)
        x = logits.float()  # [n, V] (the model's own fp32 logits are not copied)
        if t < sampling.min_new_tokens:  # EOS suppressed until then (bench: forced lengths)
            x[:, eos] = float("-inf")
        if temperature != 1.0:
            x.div_(temperature)
        x.sub_(x.amax(-1, keepdim=True))  # logits / T - max: in place, no [n, V] allocation
        w = torch.exp(x, out=weights[:n])  # [n, V] unnormalised probabilities
        token = x.argmax(-1) if sampling.temperature <= 0 else draw(w, sampling.top_p, cdf=cdf[:n])  # [n]
        tokens[rows, t] = token
        logps[rows, t] = x.gather(1, token[:, None]).squeeze(1) - w.sum(-1).log()  # log softmax at the token
        ended = torch.isin(token, eos)  # [n]
        if enders is not None:
            for r in (enders[token] & ~ended & ~done).nonzero().flatten().tolist():
                text = tokenizer.decode(tokens[rows[r], max(0, t - STOP_WINDOW): t + 1].tolist())
                ended[r] = any(text.endswith(s) for s in sampling.stop)
        ended &= ~done
        if ended.any():
            finished = rows[ended].cpu()
            length[finished], stopped[finished] = t + 1, True
            done |= ended
        if t == T - 1 or bool(done.all()):
            break
        if int(done.sum()) * 4 >= len(rows):  # a quarter finished: they leave the batch
            keep = (~done).nonzero().flatten()
            cache.batch_select_indices(keep)
            rows, token, pos, full_mask, done = rows[keep], token[keep], pos[keep], full_mask[keep], done[keep]
        pos = pos + 1
        logits = model(input_ids=token[:, None], attention_mask=full_mask[:, :P + t + 1], position_ids=pos,
                       past_key_values=cache, use_cache=True).logits[:, -1]  # [n, V]
    out = []
    for row, lps, k, s in zip(tokens.tolist(), logps.tolist(), length.tolist(), stopped.tolist()):
        out.append(Sample(row[:k], lps[:k], "stop" if s else "length"))
    return out
