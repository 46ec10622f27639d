"""Magnitude and Wanda (Sun et al. 2023): |W| over the layer, and |W_ij| * ||X_j||_2 per output row."""
from __future__ import annotations

import torch

from lib.collectors import Collector, samples_and_rows
from lib.config import PruneConfig
from lib.registry import Method, register
from lib.structured import neuron_pruner


class WrappedGPT(Collector):
    """Wanda's statistic: scaler_row [in] = sum_t x_tj^2 / (number of calibration sequences)."""

    def __init__(self, in_features: int, config: PruneConfig) -> None:
        super().__init__(in_features, config)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = samples_and_rows(x)
        self.sum_sq = self.sum_sq.to(rows.device)
        # The batch is summed in float32 (no float64 copy of the activations), the running total in float64.
        self.sum_sq += rows.pow(2).sum(dim=0)
        self.nsamples += samples

    def finalize(self) -> dict[str, torch.Tensor]:
        return {"scaler_row": (self.sum_sq / max(self.nsamples, 1)).float()}


def magnitude_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """|W_ij| [out, in]."""
    return W.abs()


def wanda_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """Wanda: |W_ij| * ||X_j||_2 [out, in]."""
    return W.abs() * stats["scaler_row"].to(W.device).sqrt().unsqueeze(0)


register(Method("magnitude", (), score=magnitude_score, group="layer",
                help="|W|, compared over the whole layer"))
register(Method("wanda", (WrappedGPT,), score=wanda_score, supports_variant=True, **neuron_pruner(wanda_score),
                help="|W| * ||X||, compared per output row; or MLP neurons by ||X_j|| * ||W_down[:, j]||"))
