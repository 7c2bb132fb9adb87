"""Token log-probs (and entropy) of completions, computed from hidden states in chunks.

All-vocab logits for every token at once are b x T x V floats (8 x 512 x 150k x 4 B =
2.5 GB for one Qwen micro-batch); here only `chunk` rows of logits exist at a time, and with
grad on, each chunk is recomputed in backward instead of stored.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rl.batching import position_ids


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias, temperature: float):
    """hidden [n, H], targets [n] -> logprobs [n], entropy [n] (entropy without grad)."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature  # [n, V]
    logz = torch.logsumexp(logits, dim=-1)  # [n]
    logprobs = logits.gather(1, targets[:, None]).squeeze(1) - logz
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=-1)
        entropy = logz.detach() - (probs * logits.detach()).sum(-1)
    return logprobs, entropy


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int,
                   temperature: float = 1.0, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids/attention_mask [b, P + C] with completions starting at column P.
    Returns logprobs [b, C] (with grad if enabled) and entropy [b, C] (no grad)."""
    b, length = input_ids.shape
    start = length - completion_len  # = P
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    ).last_hidden_state  # [b, P + C, H]
    hidden = hidden[:, start - 1 : length - 1].reshape(b * completion_len, -1)  # predicts tokens P..P+C-1: [b*C, H]
    targets = input_ids[:, start:].reshape(-1)  # [b*C]
    head = model.get_output_embeddings()
    temperature = temperature if temperature > 0 else 1.0
    pieces_lp, pieces_ent = [], []
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], targets[i : i + chunk], head.weight, head.bias, temperature)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    logprobs = torch.cat(pieces_lp).view(b, completion_len)  # [b, C]
    entropy = torch.cat(pieces_ent).view(b, completion_len)  # [b, C]
    return logprobs, entropy
