"""Input-channel permutation for N:M (--permute; RIA's channel reallocation, Zhang et al. ICLR 2024), any score.

Before the N:M mask, a linear's input channels are reordered so that channels with large total score spread over
different groups of M: sort channels by their column sum of the score, cut the order into M chunks, and deal
chunk k into slot k of every group (odd chunks reversed, a snake deal). The mask is then N:M in that order.

Where the order folds into the neighbouring layer it is folded: the MLP's intermediate channels (rows of
gate/up or fc1 and their biases, columns of down or fc2) are permuted together, which leaves the model's
function unchanged and makes the stored down/fc2 N:M in storage order. Every other linear keeps its stored
column order; its mask is N:M in the recorded order `index` (W[:, index] is N:M), and a runtime with N:M
kernels must gather its input channels x[..., index] before the sparse matmul (RESULTS.md).
Upstream's optional assignment-solver refinement (--lsa) is not implemented.
"""
from __future__ import annotations


import torch
from torch import nn

from lib.config import ConfigError, PruneConfig
from lib.registry import ColumnOrder, LinearMask, Method, register_addon



def reallocation_index(scores: torch.Tensor, prune_m: int) -> torch.Tensor:
    """scores [out, in] -> index [in]: new column c holds old column index[c]; large-score channels spread.

    Upstream `--reallocation` with `--importance_score sum`: channels ascending by column sum of the score,
    chunk k of in/M channels dealt into slot k of each group of M, odd chunks reversed.
    """
    cols = scores.shape[1]
    if cols % prune_m:
        raise ConfigError(f"a layer with {cols} input columns cannot be permuted for N:M with M={prune_m}")
    per_slot = cols // prune_m
    order = torch.sort(scores.double().sum(dim=0), stable=True)[1]
    index = torch.empty_like(order)
    for k in range(prune_m):
        chunk = order[k * per_slot:(k + 1) * per_slot]
        index[k::prune_m] = chunk if k % 2 == 0 else chunk.flip(0)
    return index


def foldable_mlp(linears: dict[str, nn.Linear]) -> tuple[list[str], str] | None:
    """(widening linears, narrowing linear) of the layer's MLP, whose intermediate order can fold; None if none."""
    from lib.structured import find_mlp

    try:
        return find_mlp(linears)
    except ConfigError:  # no single MLP by shape (fused gate_up): nothing folds, every mask is recorded
        return None


@torch.no_grad()
def fold_mlp(linears: dict[str, nn.Linear], ups: list[str], down: str, index: torch.Tensor) -> None:
    """Reorder the MLP's intermediate channels in place: rows (and biases) of ups, columns of down, by index."""
    for name in ups:
        linear = linears[name]
        linear.weight.data = linear.weight.data[index.to(linear.weight.device)].contiguous()
        if linear.bias is not None:
            linear.bias.data = linear.bias.data[index.to(linear.bias.device)].contiguous()
    weight = linears[down].weight
    weight.data = weight.data[:, index.to(weight.device)].contiguous()


@register_addon
class Permute(ColumnOrder):
    """--permute: N:M masks chosen in RIA's reallocated column order; results: permutations, folded_permutations."""

    name = "permute"
    help = "N:M: input channels reordered so large scores spread over groups (RIA's channel reallocation)"

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        # {"layers.i.name": index}: W[:, index] is N:M (a runtime gathers x[..., index]); folded ones were applied
        # to the MLP's weights (down is N:M as stored) and are recorded for reference only.
        self.permutations: dict[str, list[int]] = {}
        self.folded: dict[str, list[int]] = {}
        self.layer, self.linears, self.fold = 0, {}, None

    def check(self, method: Method) -> None:
        """Combinations the permutation cannot honour, one line each."""
        if not self.config.prune_n:
            raise ConfigError("--permute reorders input channels so N:M groups keep more of the large scores; it "
                              "needs --sparsity_type N:M such as 2:4 (unstructured masks do not depend on the order)")
        structured = method.prunes_layer(self.config)
        if structured or method.score is None:
            raise ConfigError(f"--permute needs a per-weight score to reorder channels by, and '{method.name}' "
                              f"{'removes whole neurons' if structured else 'reconstructs weights'}; "
                              f"use a score method such as wanda or ria")

    def start_layer(self, index: int, linears: dict[str, nn.Linear]) -> None:
        self.layer, self.linears, self.fold = index, linears, foldable_mlp(linears)

    def order(self, scores: torch.Tensor) -> torch.Tensor:
        return reallocation_index(scores, self.config.prune_m)

    def apply(self, linear: nn.Linear, item: LinearMask) -> torch.Tensor:
        """Fold the order into the MLP where it folds (down is then N:M as stored), else record it."""
        key, index, mask = f"layers.{self.layer}.{item.name}", item.order, item.mask
        if self.fold is not None and item.name == self.fold[1]:
            fold_mlp(self.linears, *self.fold, index)
            linear.weight.data[mask] = 0
            self.folded[key] = index.tolist()
            return mask
        stored = torch.zeros_like(mask).index_copy_(1, index.to(mask.device), mask)
        linear.weight.data[stored] = 0
        self.permutations[key] = index.tolist()
        return stored

    def results(self) -> dict:
        # W[:, index] of each linear here is N:M: a runtime gathers its input channels x[..., index] (RESULTS.md).
        return {"permutations": self.permutations, "folded_permutations": self.folded}
