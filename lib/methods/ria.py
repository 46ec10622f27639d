"""RIA, Relative Importance and Activations (Zhang et al. ICLR 2024): ria, and ria_idf / ria_spiky / ria_select.

S_ij = (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** a  (a = ria_alpha, 0.5): the weight's share
of its input channel's column plus its share of its output row, times the activation norm. Compared over the
whole layer (--ria_group layer, upstream's default) or per output row (upstream's --per_outneuron). The
selectivity variants multiply S by the selectivity factors of lib/methods/selectivity.py. Channel permutation
for N:M (upstream's --reallocation) is --permute, for any score (lib/addons/permute.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lib.config import MAX_EXPONENT, PruneConfig, Settings, register_settings, setting
from lib.methods.selectivity import register_selective
from lib.collectors import InputSquares
from lib.registry import Method, register


@register_settings
@dataclass(frozen=True)
class RIASettings(Settings):
    """RIA's settings, read by ria and ria_idf / ria_spiky / ria_select."""

    group: ClassVar[str] = "RIA (ria, ria_*)"
    ria_alpha: float = setting(0.5, "exponent a on ||X_j||_2", bounds=f"[0, {MAX_EXPONENT}]",
                               note="RIA's default is 0.5")
    ria_group: str = setting("layer", "compare scores over the whole layer (upstream default) or per output row "
                                      "(upstream --per_outneuron)", choices=("layer", "row"))


def relative_importance(W: torch.Tensor) -> torch.Tensor:
    """RI_ij = |W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik| [out, in], in float64 (an all-zero column or row
    gives 0/0 = NaN upstream; here it gives 0)."""
    A = W.abs().double()
    column = A.sum(dim=0, keepdim=True)
    row = A.sum(dim=1, keepdim=True)
    return (A / column.clamp_min(torch.finfo(A.dtype).tiny) + A / row.clamp_min(torch.finfo(A.dtype).tiny))


def ria_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """RIA: RI_ij * ||X_j||_2 ** ria_alpha [out, in] (float32)."""
    norm = stats["scaler_row"].to(W.device).double().sqrt()
    return (relative_importance(W) * norm.pow(config.ria_alpha).unsqueeze(0)).float()


def ria_group(config: PruneConfig) -> str:
    """--ria_group: 'layer' (upstream default) or 'row'."""
    return config.ria_group


register(Method("ria", (InputSquares,), score=ria_score, group=ria_group,
                help="(|W|/column sum + |W|/row sum) * ||X||^a, compared per layer (--ria_group)"))
register_selective("ria", ria_score, "RIA", lambda weighted: {"group": ria_group})
