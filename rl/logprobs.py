"""Token log-probs (and entropy) of completions, computed from hidden states in chunks.

All-vocab logits for every token at once are b x T x V floats (8 x 512 x 150k x 4 B =
2.5 GB for one Qwen micro-batch); here only `chunk` rows of logits exist at a time, and with
grad on, each chunk is recomputed in backward instead of stored (`LinearLogprob`, fused: no
[n, V] tensor is kept; the backward recomputes the logits and takes three elementwise passes).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from rl.batching import position_ids


class LinearLogprob(torch.autograd.Function):
    """log softmax(hidden @ W^T / T)[target] and its entropy, `chunk` rows at a time, without
    keeping any [n, V] tensor for backward (the logits are recomputed there from hidden, W and
    the saved log-normaliser): what Liger's fused linear cross-entropy does, in plain torch.

    The [chunk, V] tensors live in buffers allocated once per call and reused across chunks,
    with in-place ops: on CPU a fresh 200 MB tensor costs more in page faults than the exp over
    it (measured: exp into a new [1024, 49152] tensor 105 ms, in place 20 ms). Gradients go to
    hidden and W (tied or not; W's summed over chunks in one buffer); matmuls run in the
    autocast dtype when autocast is on, as they would in the plain path. The entropy has no
    gradient (the entropy bonus takes the plain path)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int):
        """hidden [N, H], weight [V, H], targets [N] -> logprobs [N], entropy [N]."""
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
        h, w = (hidden.to(dtype), weight.to(dtype)) if dtype else (hidden, weight)
        n, rows = hidden.shape[0], min(chunk, hidden.shape[0])
        logits, lowp = _buffers(rows, weight.shape[0], h.dtype, hidden.device)  # [chunk, V] each, reused
        probs = torch.empty_like(logits)  # [chunk, V], reused
        logprobs = torch.empty(n, dtype=logits.dtype, device=hidden.device)  # [N]
        entropy, logz = torch.empty_like(logprobs), torch.empty_like(logprobs)  # [N]
        for i in range(0, n, chunk):
            j = slice(i, i + chunk)
            x = _logits_into(logits, lowp, h[j], w, temperature)  # [c, V]
            top = x.amax(-1, keepdim=True)  # [c, 1]
            x.sub_(top)  # x - max
            e = torch.exp(x, out=probs[: len(x)])  # [c, V] unnormalised probabilities
            total = e.sum(-1)  # [c]
            logprobs[j] = x.gather(1, targets[j, None]).squeeze(1) - total.log()
            logz[j] = top.squeeze(1) + total.log()
            entropy[j] = total.log() - torch.linalg.vecdot(e, x) / total  # log Z' - E_p[x - max]
        ctx.save_for_backward(hidden, weight, targets, logz)
        ctx.temperature, ctx.dtype, ctx.chunk = temperature, dtype, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, targets, logz = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        h, w = (hidden.to(dtype), weight.to(dtype)) if dtype else (hidden, weight)
        n, rows = hidden.shape[0], min(chunk, hidden.shape[0])
        logits, lowp = _buffers(rows, weight.shape[0], h.dtype, hidden.device)  # [chunk, V] each, reused
        g = grad_logprobs.to(logits.dtype) / ctx.temperature  # [N] d logprob / d raw logit carries 1/T
        grad_hidden = torch.empty(n, hidden.shape[1], dtype=h.dtype, device=hidden.device) \
            if ctx.needs_input_grad[0] else None  # [N, H]
        grad_weight = torch.zeros(weight.shape, dtype=h.dtype, device=weight.device) \
            if ctx.needs_input_grad[1] else None  # [V, H] summed over chunks
        for i in range(0, n, chunk):
            j = slice(i, i + chunk)
            x = _logits_into(logits, lowp, h[j], w, ctx.temperature)  # [c, V] recomputed
            x.sub_(logz[j, None]).exp_().mul_(-g[j, None])  # -p * g / T
            x[torch.arange(len(x), device=x.device), targets[j]] += g[j]  # + onehot * g / T
            d = x if lowp is None else lowp[: len(x)].copy_(x)  # [c, V] in the matmul dtype
            if grad_hidden is not None:
                torch.mm(d, w, out=grad_hidden[j])  # [c, H]
            if grad_weight is not None:
                grad_weight.addmm_(d.T, h[j])  # [V, H]
        return (grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
                grad_weight.to(weight.dtype) if grad_weight is not None else None, None, None, None)


def _buffers(rows: int, vocab: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[rows, V] logits in fp32 (fp64 for fp64 inputs), and one in the matmul dtype when that is
    lower (bf16/fp16: autocast or a low-precision model)."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    logits = torch.empty(rows, vocab, dtype=wide, device=device)
    return logits, (torch.empty(rows, vocab, dtype=dtype, device=device) if dtype != wide else None)


def _logits_into(logits, lowp, h, w, temperature: float) -> torch.Tensor:
    """h @ w^T / T into the wide buffer (through the low-precision one when the matmul is bf16/fp16)."""
    c = len(h)
    x = torch.mm(h, w.T, out=logits[:c]) if lowp is None else logits[:c].copy_(torch.mm(h, w.T, out=lowp[:c]))
    return x.div_(temperature) if temperature != 1.0 else x


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, temperature: float,
                    entropy_grad: bool = False):
    """The plain path: hidden [n, H], targets [n] -> logprobs [n], entropy [n] (with grad only
    if entropy_grad: the entropy bonus). The head is called as a module, inside the root's
    forward: FSDP's hooks see it."""
    logits = head(hidden).float() / temperature  # [n, V]
    logz = torch.logsumexp(logits, dim=-1)  # [n]
    logprobs = logits.gather(1, targets[:, None]).squeeze(1) - logz
    if entropy_grad:
        entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    else:
        with torch.no_grad():
            entropy = logz.detach() - (torch.softmax(logits.detach(), dim=-1) * logits.detach()).sum(-1)
    return logprobs, entropy


def completion_hidden(model, input_ids, attention_mask, completion_len: int, group_size: int = 1) -> torch.Tensor:
    """Final hidden states that predict each completion token: [b, C, H].

    With group_size > 1 (rows i*G..i*G+G-1 share one prompt) the prompt is run once per
    group and its KV cache repeated G times, so prompt tokens cost 1/G of the compute; the
    gradient still flows into the prompt's keys and values, so it is exact."""
    b, length = input_ids.shape
    start = length - completion_len  # = P
    decoder = model.get_decoder()
    if group_size == 1:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                         use_cache=False).last_hidden_state  # [b, P + C, H]
        return hidden[:, start - 1 : length - 1]  # [b, C, H]
    prompt_ids, prompt_mask = input_ids[::group_size, :start], attention_mask[::group_size, :start]  # [b/G, P]
    cache = DynamicCache(config=model.config)
    prompt_hidden = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                            past_key_values=cache, use_cache=True).last_hidden_state  # [b/G, P, H]
    cache.batch_repeat_interleave(group_size)  # [b, ...] keys/values, differentiable
    completion_hidden_ = decoder(input_ids=input_ids[:, start:], attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask)[:, start:], past_key_values=cache,
                                 use_cache=True).last_hidden_state  # [b, C, H]
    first = prompt_hidden[:, -1:].repeat_interleave(group_size, 0)  # [b, 1, H] predicts the first completion token
    return torch.cat([first, completion_hidden_[:, :-1]], 1)  # [b, C, H]


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int,
                   temperature: float = 1.0, chunk: int = 1024, group_size: int = 1,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids/attention_mask [b, P + C] with completions starting at column P.
    Returns logprobs [b, C] (with grad if enabled) and entropy [b, C] (grad only if entropy_grad)."""
    b, length = input_ids.shape
    hidden = completion_hidden(model, input_ids, attention_mask, completion_len, group_size)
    hidden = hidden.reshape(b * completion_len, -1)  # [b*C, H]
    targets = input_ids[:, length - completion_len:].reshape(-1)  # [b*C]
    head = model.get_output_embeddings()
    temperature = temperature if temperature > 0 else 1.0
    if not entropy_grad and type(head) is torch.nn.Linear and head.bias is None:  # fused, all chunks in one call
        logprobs, entropy = LinearLogprob.apply(hidden, head.weight, targets, temperature, chunk)
        return logprobs.view(b, completion_len), entropy.view(b, completion_len)  # [b, C], [b, C]
    pieces_lp, pieces_ent = [], []
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], targets[i : i + chunk], head, temperature, entropy_grad)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)  # logits recomputed in backward
        else:
            lp, ent = _chunk_logprobs(*args)
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    logprobs = torch.cat(pieces_lp).view(b, completion_len)  # [b, C]
    entropy = torch.cat(pieces_ent).view(b, completion_len)  # [b, C]
    return logprobs, entropy


class LogprobModule(torch.nn.Module):
    """The model with token_logprobs as its forward. It is the FSDP root when sharded, so the
    embedding, final norm and (tied) lm_head are gathered by the root's own hooks and every
    use of them happens inside its forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, completion_len: int, temperature: float = 1.0, chunk: int = 1024,
                group_size: int = 1, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, entropy = token_logprobs(self.model, input_ids, attention_mask, completion_len, temperature, chunk,
                                           group_size, entropy_grad)
        return logprobs.clone(), entropy  # not a view: FSDP's pre-backward hook must stay on the output
