"""Perplexity as Wanda computes it: non-overlapping windows of seqlen text tokens, mean token NLL.

A window's targets are its text tokens 2..seqlen (the first has no context inside the window). With a BOS id the
model sees BOS + the window (1 + seqlen positions); BOS is context only: it neither replaces a text token nor is a
target, so the targets, their number and their weighting are the same with and without it.

The output head is applied to the final hidden states a chunk of positions at a time, so memory holds one chunk's
logits, never [batch, seqlen, vocab] (Gemma3's 262k vocabulary: 2 GiB of float32 logits per 8 x 256 batch).
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from lib.data import with_bos
from lib.models import input_device

logger = logging.getLogger(__name__)

HEAD_CHUNK_LOGITS = 2**25  # logits per chunk of the output head: 128 MiB in float32 (128 positions at 262k vocab)
CHECK_POSITIONS = 8  # positions of the first window on which the chunked head is checked against the model's forward


def finish_logits(logits: torch.Tensor, config) -> torch.Tensor:
    """What a causal LM's forward does to its head's output [.., vocab]: Gemma2/3's final soft-capping, Cohere's
    logit_scale, Granite's logits_scaling."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    return logits


def head_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(the decoder stack giving final hidden states, the output head), or None where the model has no such split."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (base, head) if isinstance(base, nn.Module) and isinstance(head, nn.Module) and base is not model \
        else None


def chunked_head_ok(model: nn.Module, parts: tuple[nn.Module, nn.Module], window: torch.Tensor) -> bool:
    """The chunked head's logits equal the model's own on the first positions of window [1, L] (an unknown
    family could transform its logits in ways finish_logits does not know)."""
    ids = window[:, :CHECK_POSITIONS]
    own = model(ids, use_cache=False).logits.float()
    hidden = parts[0](ids, use_cache=False)[0]
    head = parts[1]
    mine = finish_logits(head(hidden.to(head.weight.device)), model.config).float().to(own.device)
    return bool(torch.allclose(mine, own, rtol=1e-3, atol=1e-3 * own.abs().max().item()))


def window_nll(model: nn.Module, parts: tuple[nn.Module, nn.Module] | None, batch: torch.Tensor,
               offset: int) -> float:
    """Summed NLL of batch [b, offset + L]'s text tokens 2..L; logits at position offset + k predict token k + 1."""
    targets = batch[:, offset + 1:]
    if parts is None:  # the whole [b, positions, vocab] logits, in the model's dtype
        logits = model(batch, use_cache=False).logits[:, offset:-1]
        rows, head = logits.reshape(-1, logits.shape[-1]), None
    else:
        hidden = parts[0](batch, use_cache=False)[0][:, offset:-1]
        head = parts[1]
        rows = hidden.reshape(-1, hidden.shape[-1]).to(head.weight.device)
    targets = targets.reshape(-1).to(rows.device)
    step = max(1, HEAD_CHUNK_LOGITS // (model.config.get_text_config().vocab_size or 1))
    loss_sum = 0.0
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step]
        logits = chunk if head is None else finish_logits(head(chunk), model.config)
        # float32 log-softmax: a chunk of positions at a time (2 GiB per 4096-token window at 128k vocab).
        loss_sum += nn.functional.cross_entropy(logits.float(), targets[start:start + step], reduction="sum").item()
    return loss_sum


@torch.no_grad()
def eval_ppl(model: nn.Module, test_ids: torch.Tensor, seqlen: int, limit: int | None = None,
             batch_size: int = 1, bos_id: int | None = None) -> float:
    """test_ids [1, N] -> perplexity over the first `limit` (default all) full windows of seqlen tokens, each
    preceded by bos_id unless it is None."""
    nwindows = test_ids.numel() // seqlen
    if limit is not None:
        nwindows = min(nwindows, limit)
    if nwindows == 0:
        raise ValueError(f"evaluation text has {test_ids.numel()} tokens, fewer than one window of {seqlen}")
    device = input_device(model)
    windows = with_bos(test_ids[0, :nwindows * seqlen].reshape(nwindows, seqlen), bos_id)
    offset = 0 if bos_id is None else 1
    parts = head_parts(model)
    if parts is not None and not chunked_head_ok(model, parts, windows[:1].to(device)):
        logger.warning("%s: the output head applied to its hidden states differs from its forward's logits; "
                       "evaluating with whole logits (more memory)", type(model).__name__)
        parts = None
    nll_sum = 0.0
    for start in tqdm(range(0, nwindows, batch_size), desc=f"ppl ({nwindows} windows)", leave=False):
        loss_sum = window_nll(model, parts, windows[start:start + batch_size].to(device), offset)
        # Wanda weights each window's mean loss by seqlen and divides by nwindows * seqlen.
        nll_sum += loss_sum / (seqlen - 1) * seqlen
    return float(torch.exp(torch.tensor(nll_sum / (nwindows * seqlen))).item())
