"""WikiText-2 perplexity exactly as Wanda computes it: non-overlapping seqlen windows, mean token NLL."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from lib.models import input_device

logger = logging.getLogger(__name__)


@torch.no_grad()
def eval_ppl(model: nn.Module, test_ids: torch.Tensor, seqlen: int, limit: int | None = None,
             batch_size: int = 1) -> float:
    """test_ids [1, N] -> perplexity over the first `limit` (default all) full windows of seqlen tokens."""
    nwindows = test_ids.numel() // seqlen
    if limit is not None:
        nwindows = min(nwindows, limit)
    if nwindows == 0:
        raise ValueError(f"evaluation text has {test_ids.numel()} tokens, fewer than one window of {seqlen}")
    device = input_device(model)
    windows = test_ids[0, :nwindows * seqlen].reshape(nwindows, seqlen)
    nll_sum = 0.0
    for start in tqdm(range(0, nwindows, batch_size), desc=f"ppl ({nwindows} windows)", leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           batch[:, 1:].reshape(-1).to(logits.device))
        # Wanda weights each window's mean loss by seqlen and divides by nwindows * seqlen.
        nll_sum += loss.item() * seqlen * batch.shape[0]
    return float(torch.exp(torch.tensor(nll_sum / (nwindows * seqlen))).item())
