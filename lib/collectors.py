"""The statistics-collector contract, fed by the driver's forward hooks during the calibrate phase.

A collector keeps running sums and counts and divides only in `finalize`, so its result does not depend on
how tokens were batched, and it never stores activations (memory is independent of the token count).
Contract: `__init__(in_features, config, **context)`, `add_batch(x [..., in], token_ids [...] | None)`,
`finalize() -> dict[str, Tensor]`. Finalised tensors are shared by linears that read the same input
(q/k/v, gate/up), so consumers must not modify them in place. The two statistics several methods and add-ons
read live here (InputSquares: Wanda's norm; InputHessian: SparseGPT's Hessian, the one Hessian collector);
a collector only one family reads lives with it (`lib/methods/`, `lib/addons/`). The driver collects each
class once per linear, however many plug-ins ask for it.
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
        """Add one batch of a linear's inputs x [batch, seq, in] (or [tokens, in])."""
        raise NotImplementedError

    def finalize(self) -> dict[str, torch.Tensor]:
        """The statistics, from the sums so far."""
        raise NotImplementedError


def samples_and_rows(x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """x [batch, seq, in] or [tokens, in] -> (sequences in it, x as [tokens, in] float32)."""
    samples = x.shape[0] if x.dim() == 3 else 1
    return samples, x.reshape(-1, x.shape[-1]).float()


class InputSquares(Collector):
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


class InputHessian(Collector):
    """SparseGPT's layer Hessian H [in, in] = 2 X X^T / (number of calibration sequences)."""

    def __init__(self, in_features: int, config: PruneConfig, **context) -> None:
        # context: the method's collector context (selectivity's scratch buffers) when an add-on (--reconstruct)
        # adds this collector to another method's; unused.
        super().__init__(in_features, config)
        # Allocated by the first batch on the activations' device: linears that alias another's input (k, v,
        # up) never get one, and a layer on the GPU keeps its Hessian there.
        self.xxt: torch.Tensor | None = None
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = samples_and_rows(x)
        if self.xxt is None:
            self.xxt = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=rows.device)
        self.xxt.addmm_(rows.t(), rows)
        self.nsamples += samples

    def finalize(self) -> dict[str, torch.Tensor]:
        """{'hessian': H [in, in]}, scaled in place: the collector is done with its sums."""
        if self.xxt is None:
            raise RuntimeError("InputHessian.finalize() before any add_batch()")
        hessian, self.xxt = self.xxt, None
        return {"hessian": hessian.mul_(2.0 / max(self.nsamples, 1))}
