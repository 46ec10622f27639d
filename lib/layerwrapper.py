"""Statistics collectors: one per linear layer input, fed by a forward hook during the calibration pass.

A collector keeps running sums and counts and divides only in `finalize`, so its result does not depend on
how tokens were batched, and it never stores activations (memory is independent of the token count).
Contract: `__init__(in_features, config)`, `add_batch(x [..., in], token_ids [...] | None)`,
`finalize() -> dict[str, Tensor]`. Finalised tensors are shared by linears that read the same input
(q/k/v, gate/up), so consumers must not modify them in place.
"""
from __future__ import annotations

import torch

from lib.config import PruneConfig


class Collector:
    """Base class; subclasses set the statistics they publish in `finalize`."""

    def __init__(self, in_features: int, config: PruneConfig) -> None:
        self.in_features = in_features
        self.config = config

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def finalize(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _samples_and_rows(x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """x [batch, seq, in] or [tokens, in] -> (sequences in it, x as [tokens, in] float32)."""
    samples = x.shape[0] if x.dim() == 3 else 1
    return samples, x.reshape(-1, x.shape[-1]).float()


class WrappedGPT(Collector):
    """Wanda's statistic: scaler_row [in] = sum_t x_tj^2 / (number of calibration sequences)."""

    def __init__(self, in_features: int, config: PruneConfig) -> None:
        super().__init__(in_features, config)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = _samples_and_rows(x)
        self.sum_sq = self.sum_sq.to(rows.device)
        self.sum_sq += rows.pow(2).sum(dim=0, dtype=torch.float64)
        self.nsamples += samples

    def finalize(self) -> dict[str, torch.Tensor]:
        return {"scaler_row": (self.sum_sq / max(self.nsamples, 1)).float()}


class HessianCollector(Collector):
    """SparseGPT's layer Hessian H [in, in] = 2 X X^T / (number of calibration sequences)."""

    def __init__(self, in_features: int, config: PruneConfig) -> None:
        super().__init__(in_features, config)
        self.xxt = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = _samples_and_rows(x)
        self.xxt = self.xxt.to(rows.device)
        self.xxt.addmm_(rows.t(), rows)
        self.nsamples += samples

    def finalize(self) -> dict[str, torch.Tensor]:
        return {"hessian": 2.0 * self.xxt / max(self.nsamples, 1)}
