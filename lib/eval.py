"""Perplexity as Wanda computes it: non-overlapping windows of seqlen text tokens, mean token NLL.

A window's targets are its text tokens 2..seqlen (the first has no context inside the window). With a BOS id the
model sees BOS + the window (1 + seqlen positions); BOS is context only: it neither replaces a text token nor is a
target, so the targets, their number and their weighting are the same with and without it.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from lib.data import with_bos
from lib.models import input_device

logger = logging.getLogger(__name__)

LOSS_CHUNK = 512  # positions per float32 log-softmax


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
    offset = 0 if bos_id is None else 1  # logits at position offset + k predict text token k + 1
    nll_sum = 0.0
    for start in tqdm(range(0, nwindows, batch_size), desc=f"ppl ({nwindows} windows)", leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits  # the model's dtype
        targets = batch[:, offset + 1:].to(logits.device)
        # float32 log-softmax a chunk of positions at a time: a whole window's float32 logits would be
        # seqlen x vocab x 4 bytes per sequence (2 GiB at 4096 x 128k).
        loss_sum = 0.0
        for pos in range(0, seqlen - 1, LOSS_CHUNK):
            chunk = logits[:, offset + pos:offset + min(pos + LOSS_CHUNK, seqlen - 1)].float()
            loss_sum += nn.functional.cross_entropy(chunk.reshape(-1, chunk.shape[-1]),
                                                    targets[:, pos:pos + chunk.shape[1]].reshape(-1),
                                                    reduction="sum").item()
        # Wanda weights each window's mean loss by seqlen and divides by nwindows * seqlen.
        nll_sum += loss_sum / (seqlen - 1) * seqlen
    return float(torch.exp(torch.tensor(nll_sum / (nwindows * seqlen))).item())
