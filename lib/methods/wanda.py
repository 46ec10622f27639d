"""Magnitude and Wanda (Sun et al. 2023): |W| over the layer, and |W_ij| * ||X_j||_2 per output row."""
from __future__ import annotations

import torch

from lib.collectors import InputSquares
from lib.config import PruneConfig
from lib.registry import Method, register
from lib.structured import neuron_pruner


def magnitude_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """|W_ij| [out, in]."""
    return W.abs()


def wanda_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """Wanda: |W_ij| * ||X_j||_2 [out, in]."""
    return W.abs() * stats["scaler_row"].to(W.device).sqrt().unsqueeze(0)


register(Method("magnitude", (), score=magnitude_score, group="layer",
                help="|W|, compared over the whole layer"))
register(Method("wanda", (InputSquares,), score=wanda_score, supports_variant=True, **neuron_pruner(wanda_score),
                help="|W| * ||X||, compared per output row; or MLP neurons by ||X_j|| * ||W_down[:, j]||"))
