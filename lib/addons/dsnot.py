"""DSnoT (Zhang et al. ICLR 2024): training-free prune-and-regrow refinement of any score mask (--refine dsnot).

Per output row i, with d_ij = W_ij * sum_x_j (sum_x_j = the sum of x_j over a sequence's tokens, averaged over
sequences: T * E[x_j], upstream's sum_metric_row), the reconstruction error is e_i = sum over pruned j of d_ij
(the dense row's output minus the pruned row's, summed over a sequence). Each cycle, while |e_i| > threshold:
regrow the pruned weight r with the largest d_ir / Var(x_r) of e_i's sign, and prune a kept weight q of low score
with d_iq of the opposite sign (unstructured: the lowest-score one; N:M: the lowest-score kept weight of r's own
group, so groups stay N:M), up to dsnot_cycles swaps. Transcribed from upstream `prune_DSnoT` (RESULTS.md lists
the differences: invalid candidates stop a row instead of corrupting the mask; the method's own score ranks the
kept weights; var gets a floor).
"""
from __future__ import annotations


from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lib.collectors import Collector
from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting
from lib.registry import LinearMask, MaskRefiner, Method, register_addon


# Var(x_j) floor relative to the layer's mean variance: a constant channel (var 0) would make upstream's
# d / var infinite or NaN.
VAR_FLOOR_REL = 1e-12
VAR_FLOOR_ABS = 1e-30


@register_settings
@dataclass(frozen=True)
class DSnoTSettings(Settings):
    """DSnoT's settings (--refine dsnot)."""

    group: ClassVar[str] = "DSnoT (--refine dsnot)"
    # More swaps per row than any layer has columns to swap cannot be meant (a typo would run for hours).
    dsnot_cycles: int = setting(50, "most prune-and-regrow swaps per output row", bounds="[0, 100000]",
                                note="DSnoT's default is 50")
    dsnot_threshold: float = setting(0.1, "a row stops once |reconstruction error| <= this (in units of w * sum "
                                          "over a sequence's tokens of x, as upstream)", bounds=">= 0")
    dsnot_same_sign: bool = setting(False, "unstructured: stop a row before its error changes sign (upstream's "
                                           "default is off; N:M always checks)")
    dsnot_skip: str = setting("mlp", "linears left with the initial mask: 'mlp' (upstream default: the MLP's "
                                     "linears) or 'none'", choices=("mlp", "none"))


class InputMeanVariance(Collector):
    """Per input channel: sum of x and of per-sequence population variances (float64), and the sequence count.

    Publishes dsnot_sum_x [in] = sum_t x_tj / n_seq (T * E[x_j]) and dsnot_var [in] = the mean over sequences of
    Var_t(x_sj) (upstream's running average of per-sequence variances; the spread between sequence means is not
    in it). Sums are allocated on the first batch on the activations' device; activations are never kept.
    """

    def __init__(self, in_features: int, config: PruneConfig, **context) -> None:
        super().__init__(in_features, config)
        self.sum_x: torch.Tensor | None = None
        self.sum_var: torch.Tensor | None = None
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        seqs = (x if x.dim() == 3 else x.reshape(1, -1, x.shape[-1])).float()
        if self.sum_x is None:
            self.sum_x = torch.zeros(self.in_features, dtype=torch.float64, device=x.device)
            self.sum_var = torch.zeros(self.in_features, dtype=torch.float64, device=x.device)
        var, _ = torch.var_mean(seqs, dim=1, unbiased=False)  # [b, in], float32 per batch
        self.sum_x += seqs.sum(dim=(0, 1), dtype=torch.float64)
        self.sum_var += var.sum(dim=0, dtype=torch.float64)
        self.nsamples += seqs.shape[0]

    def finalize(self) -> dict[str, torch.Tensor]:
        if self.sum_x is None:
            raise RuntimeError("InputMeanVariance.finalize() before any add_batch()")
        n = max(self.nsamples, 1)
        return {"dsnot_sum_x": (self.sum_x / n).float(), "dsnot_var": (self.sum_var / n).float()}


def skipped(linears: dict[str, nn.Linear], config: PruneConfig) -> set[str]:
    """Names of one layer's linears that keep their initial mask (--dsnot_skip mlp: the MLP, found by shape)."""
    if config.dsnot_skip != "mlp":
        return set()
    from lib.structured import find_mlp

    try:
        ups, down = find_mlp(linears)
    except ConfigError:  # no single MLP by shape (fused gate_up): nothing is skipped
        return set()
    return {*ups, down}


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [out, n] gathered at one column per row idx [out] -> [out]."""
    return t.gather(1, idx.unsqueeze(1)).squeeze(1)


def _prune_order(scores: torch.Tensor, mask: torch.Tensor,
                 d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unstructured DSnoT's candidates to prune, per row [out, in]: kept weights with d < 0 by ascending score,
    then kept with d > 0 by descending score (upstream's return_reorder_indice: ties in the second part by
    descending column), then the rest -> (order, low pointer, high pointer, count with d < 0) per row."""
    out, cols = scores.shape
    rank = torch.empty(out, cols, dtype=torch.long, device=d.device).scatter_(
        1, torch.sort(scores.float(), dim=1, stable=True)[1], torch.arange(cols, device=d.device).expand(out, cols))
    negative, positive = ~mask & (d < 0), ~mask & (d > 0)
    key = torch.where(negative, rank, torch.where(positive, 2 * cols - 1 - rank, 2 * cols + rank))
    prune_lo = torch.zeros(out, dtype=torch.long, device=d.device)
    n_negative = negative.sum(dim=1)
    return torch.sort(key, dim=1)[1], prune_lo, n_negative + positive.sum(dim=1) - 1, n_negative


def dsnot(W: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, sum_x: torch.Tensor, var: torch.Tensor,
          cycles: int, threshold: float, same_sign: bool = False, prune_m: int = 0) -> tuple[torch.Tensor, int]:
    """Refine mask [out, in] (True = pruned) of W [out, in] -> (new mask, swaps made); every row keeps its count.

    scores [out, in] rank kept weights (low = pruned first); sum_x, var [in] from InputMeanVariance. prune_m > 0: a
    regrown weight's partner is the lowest-score kept weight of its own group of prune_m columns, and the swap
    needs e's sign unchanged (always, as upstream); else `same_sign` decides.
    """
    out, cols = W.shape
    rows = torch.arange(out, device=W.device)
    d = W.float() * sum_x.float().to(W.device).unsqueeze(0)
    var = var.float().to(W.device)
    var = var.clamp_min(VAR_FLOOR_REL * var.mean().item() + VAR_FLOOR_ABS)
    mask = mask.clone()
    pruned_d = d.masked_fill(~mask, 0)
    error = pruned_d.sum(dim=1)
    sign0 = torch.sign(error)
    grow = torch.sort(pruned_d / var.unsqueeze(0), dim=1, stable=True)[1]
    grow_lo = torch.zeros(out, dtype=torch.long, device=W.device)
    grow_hi = torch.full((out,), cols - 1, dtype=torch.long, device=W.device)
    if prune_m:
        kept_scores = scores.float().masked_fill(mask, float("inf"))
    else:
        prune_order, prune_lo, prune_hi, n_negative = _prune_order(scores, mask, d)
    active = torch.ones(out, dtype=torch.bool, device=W.device)
    swaps = 0
    for _ in range(cycles):
        if not active.any():
            break
        up = error > 0
        # Regrow: the largest d/var (e > 0) or the smallest (e <= 0); pointers move in every row, as upstream.
        r = _take(grow, torch.where(up, grow_hi, grow_lo).clamp(0, cols - 1))
        r_ok = (grow_lo <= grow_hi) & _take(mask, r) & torch.where(up, _take(d, r) > 0, _take(d, r) < 0)
        grow_hi, grow_lo = torch.where(up, grow_hi - 1, grow_hi), torch.where(up, grow_lo, grow_lo + 1)
        if prune_m:
            start = r - r % prune_m
            group = start.unsqueeze(1) + torch.arange(prune_m, device=W.device)
            q = start + kept_scores.gather(1, group).argmin(dim=1)
            q_ok = ~_take(mask, q)
        else:
            down = error < 0
            slot = torch.where(down, prune_hi, prune_lo)
            q = _take(prune_order, slot.clamp(0, cols - 1))
            q_ok = torch.where(down, prune_hi >= n_negative, prune_lo < n_negative) & (prune_lo <= prune_hi)
            prune_hi, prune_lo = torch.where(down, prune_hi - 1, prune_hi), torch.where(down, prune_lo, prune_lo + 1)
        after = error + _take(d, q) - _take(d, r)
        active &= (error.abs() > threshold) & r_ok & q_ok
        if prune_m or same_sign:
            active &= torch.sign(after) == sign0
        if prune_m:
            kept_scores[rows, q] = float("inf")  # never offered again, swapped or not (upstream)
        mask[rows[active], q[active]] = True
        mask[rows[active], r[active]] = False
        error = torch.where(active, after, error)
        swaps += int(active.sum())
    return mask, swaps


@register_addon
class DSnoT(MaskRefiner):
    """--refine dsnot: prune-and-regrow swaps on each linear's mask; results: refine_swaps (per layer)."""

    name = "dsnot"
    help = "prune-and-regrow swaps lowering each row's reconstruction error (DSnoT)"
    collectors = (InputMeanVariance,)

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.swaps: list[int] = []
        self.skip: set[str] = set()

    def check(self, method: Method) -> None:
        """Combinations DSnoT cannot honour, one line each."""
        if method.prunes_layer(self.config):
            raise ConfigError(f"--refine dsnot swaps single weights; '{method.name}' with --nr_granularity "
                              f"{self.config.nr_granularity} removes whole neurons")
        if method.score is None:
            raise ConfigError(f"--refine dsnot refines a score method's mask before any reconstruction, and "
                              f"'{method.name}' reconstructs the weights (its zeros are not a mask to swap); use a "
                              f"score method such as wanda")

    def start_layer(self, index: int, linears: dict[str, nn.Linear]) -> None:
        self.skip = skipped(linears, self.config)
        self.swaps.append(0)

    def refine(self, item: LinearMask) -> torch.Tensor:
        """DSnoT on one linear's mask (unless --dsnot_skip leaves it), in the mask's column order."""
        if item.name in self.skip:
            return item.mask
        config = self.config
        mask, swaps = dsnot(item.ordered(item.weight), item.scores, item.mask, item.ordered(item.stats["dsnot_sum_x"]),
                            item.ordered(item.stats["dsnot_var"]), config.dsnot_cycles, config.dsnot_threshold,
                            config.dsnot_same_sign, config.prune_m)
        self.swaps[-1] += swaps
        return mask

    def results(self) -> dict:
        return {"refine_swaps": self.swaps}
