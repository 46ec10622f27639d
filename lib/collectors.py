"""The statistics-collector contract, fed by the driver's forward hooks during the calibrate phase.

A collector keeps running sums and counts and divides only in `finalize`, so its result does not depend on
how tokens were batched, and it never stores activations (memory is independent of the token count).
Contract: `__init__(in_features, config, **context)`, `add_batch(x [..., in], token_ids [...] | None)`,
`finalize() -> dict[str, Tensor]`. Finalised tensors are shared by linears that read the same input
(q/k/v, gate/up), so consumers must not modify them in place. Concrete collectors live with the method
family that needs them (`lib/methods/`).
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
