"""Token log-probs (and entropy) of completions, computed from hidden states in chunks.

All-vocab logits for every token at once are b x T x V floats (8 x 512 x 150k x 4 B =
2.5 GB for one Qwen micro-batch); here only `chunk` rows of logits exist at a time, and with
grad on, each chunk is recomputed in backward instead of stored.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from rl.batching import position_ids


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, temperature: float,
                    entropy_grad: bool = False):
    """hidden [n, H], targets [n] -> logprobs [n], entropy [n] (with grad only if entropy_grad:
    the entropy bonus). The head is called as a module, inside the root's forward: FSDP's
    hooks see it."""
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
    pieces_lp, pieces_ent = [], []
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], targets[i : i + chunk], head, temperature, entropy_grad)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
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
