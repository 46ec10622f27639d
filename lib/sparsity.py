"""The one mask function every method goes through, Wanda's alpha-search variant, and sparsity checks."""
from __future__ import annotations

import logging

import torch
from torch import nn

from lib.config import ConfigError

logger = logging.getLogger(__name__)


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores [r, n] -> bool [r, n]: the k lowest scores of each row, ties broken by position.

    The same set as argsort(dim=1, stable=True)[:, :k], found by a selection (kthvalue) instead of a full sort:
    every score below the k-th smallest value, then the first of the scores equal to it, by position, until k.
    Several times faster than the sort on CPU (gradual ADMM selects a mask 15 times per linear). Scores holding
    NaN, and dtypes kthvalue lacks, take the sort.
    """
    if k <= 0 or k >= scores.shape[1] or scores.dtype not in (torch.float32, torch.float64) or bool(scores.isnan().any()):
        if k <= 0:
            return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        idx = scores.argsort(dim=1, stable=True)[:, :k]
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(1, idx, True)
    kth = scores.kthvalue(k, dim=1, keepdim=True).values
    chosen = scores < kth
    ties = scores == kth
    missing = k - chosen.sum(dim=1, keepdim=True)
    count = torch.int32 if scores.shape[1] < 2**31 else torch.int64  # half the memory of int64 (a 70B linear: 0.9 GB)
    return chosen.logical_or_(ties.logical_and_(ties.cumsum(dim=1, dtype=count) <= missing))


def make_mask(scores: torch.Tensor, sparsity_ratio: float, prune_n: int = 0, prune_m: int = 0,
              group: str = "row") -> torch.Tensor:
    """scores [out, in] -> bool mask [out, in], True = prune (lowest scores).

    N:M (prune_n > 0): exactly N of every M consecutive input columns in each row.
    Unstructured: exactly floor(ratio * in) per row (group='row', Wanda) or floor(ratio * numel) over the
    whole matrix (group='layer', magnitude). Ties break by position (a stable sort's order), so masks are
    reproducible; unstructured masks are found by a selection (lowest_k), not a full sort.
    """
    if prune_n:
        if scores.shape[1] % prune_m:
            raise ConfigError(f"a layer with {scores.shape[1]} input columns cannot be pruned {prune_n}:{prune_m}; "
                              f"the width must be a multiple of {prune_m}")
        idx = scores.reshape(-1, prune_m).argsort(dim=1, stable=True)[:, :prune_n]
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).reshape(-1, prune_m).scatter_(
            1, idx, True).reshape(scores.shape)
    if group == "row":
        return lowest_k(scores, int(scores.shape[1] * sparsity_ratio))
    if group == "layer":
        return lowest_k(scores.reshape(1, -1), int(scores.numel() * sparsity_ratio)).reshape(scores.shape)
    raise ValueError(f"group '{group}' is not one of ['layer', 'row']")


def _mask_given_alpha(alpha: float, sorted_scores: torch.Tensor, cumsum: torch.Tensor, row_sum: torch.Tensor,
                      scores: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Prune, per row, the smallest scores whose cumulative sum stays within alpha * row sum."""
    keep_count = (cumsum <= (row_sum * alpha).unsqueeze(1)).sum(dim=1, keepdim=True)
    thresh = torch.gather(sorted_scores, 1, (keep_count - 1).clamp(min=0))
    mask = (scores <= thresh) & (keep_count > 0)
    return mask, mask.float().mean().item()


def make_variant_mask(scores: torch.Tensor, sparsity_ratio: float, tol: float = 0.001) -> torch.Tensor:
    """Wanda appendix variant: bisect alpha so the layer's sparsity is within tol of the target. [out,in] -> bool."""
    sorted_scores = torch.sort(scores, dim=-1, stable=True)[0]
    cumsum = torch.cumsum(sorted_scores, dim=1)
    row_sum = scores.sum(dim=1)
    alpha, low, high = 0.4, 0.0, 0.8
    mask, cur = _mask_given_alpha(alpha, sorted_scores, cumsum, row_sum, scores)
    while abs(cur - sparsity_ratio) > tol and high - low >= tol:
        if cur > sparsity_ratio:
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        mask, cur = _mask_given_alpha(alpha, sorted_scores, cumsum, row_sum, scores)
    logger.debug("variant: alpha %.4f gives sparsity %.6f", alpha, cur)
    return mask


def check_sparsity(model: nn.Module) -> tuple[float, list[float]]:
    """Fraction of zero weights over all prunable decoder linears, and per decoder layer."""
    from lib.models import find_decoder_layers, find_linears

    zeros = total = 0
    per_layer = []
    for layer in find_decoder_layers(model):
        layer_zeros = layer_total = 0
        for linear in find_linears(layer).values():
            layer_zeros += (linear.weight == 0).sum().item()
            layer_total += linear.weight.numel()
        per_layer.append(layer_zeros / max(layer_total, 1))
        zeros, total = zeros + layer_zeros, total + layer_total
    return zeros / max(total, 1), per_layer
