"""ADMM weight reconstruction after any score method's mask (--reconstruct admm) and gradual ADMM pruning, the
mask chosen during the iterations from the method's own score (--reconstruct admm_gradual). The algorithms are
lib/reconstruct.py's (Boza 2024, "Fast and Effective Weight Update for Pruned Large Language Models").

Both read SparseGPT's Hessian (lib.collectors.InputHessian, the one Hessian collector: a run with both asks for
it once). Linears reading the same input (q/k/v, gate/up) share one normalised, damped system per layer.
admm re-fits the kept weights once the final mask is known: after the layer-ratio policy's sparsity, N:M, the
permutation (the driver reconstructs in the stored order, before the permutation folds into the MLP) and DSnoT.
admm_gradual replaces the mask function: a method with no per-weight score, neuron granularity, Wanda's variant,
a mask refiner and --permute are refused, in one line, before the model loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lib.collectors import InputHessian
from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting
from lib.reconstruct import admm_system_from_stats, admm_update, gradual_admm
from lib.registry import LinearMask, Method, WeightReconstruction, register_addon


@register_settings
@dataclass(frozen=True)
class AdmmSettings(Settings):
    """The weight-reconstruction selector and the ADMM add-ons' settings (--reconstruct admm, admm_gradual)."""

    group: ClassVar[str] = "ADMM (--reconstruct admm, admm_gradual)"
    reconstruct: str = setting("none", "weight reconstruction after the mask: 'none' (default) or a weight "
                                       "reconstruction (the add-ons listed at the end)", group="add-ons")
    # Each iteration costs two [out, in] x [in, in] products; thousands cannot be meant (a typo runs for hours).
    admm_iterations: int = setting(20, "ADMM iterations per linear (Boza 2024: 20)", bounds="[1, 1000]")
    admm_prune_steps: int = setting(15, "admm_gradual: the first iterations, which re-select the mask on a cubic "
                                        "schedule up to the target; at most admm_iterations (Boza 2024: 15)",
                                    bounds="[1, 1000]")
    admm_damp: float = setting(0.1, "damping as a fraction of the normalised Hessian's mean diagonal (upstream's "
                                    "percdamp)", bounds="[0, 1]")
    admm_rho: float = setting(1.0, "ADMM's penalty rho (on the normalised problem, unit diagonal)", bounds="> 0")

    def check(self) -> None:
        if self.reconstruct == "admm_gradual" and self.admm_prune_steps > self.admm_iterations:
            raise ConfigError(f"admm_prune_steps {self.admm_prune_steps} must be at most admm_iterations "
                              f"{self.admm_iterations}")


def refuse_without_score(name: str, method: Method, config: PruneConfig) -> None:
    """Both add-ons work on a score method's per-weight mask."""
    if method.prunes_layer(config):
        raise ConfigError(f"--reconstruct {name} re-fits single weights; '{method.name}' with --nr_granularity "
                          f"{config.nr_granularity} removes whole neurons")
    if method.score is None or method.update is not None:
        raise ConfigError(f"--reconstruct {name} re-fits the weights a score method's mask keeps, and "
                          f"'{method.name}' reconstructs the weights itself; use a score method such as wanda or ria")


@register_addon
class Admm(WeightReconstruction):
    """--reconstruct admm: the kept weights of every linear re-fitted to its dense outputs for the final mask;
    results: reconstructed_linears."""

    name = "admm"
    help = "re-fit the kept weights to the dense layer's outputs for the final mask (ADMM, Boza 2024)"
    collectors = (InputHessian,)
    caches = ("admm_system",)

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.count = 0

    def check(self, method: Method) -> None:
        refuse_without_score(self.name, method, self.config)

    def reconstruct(self, W: torch.Tensor, mask: torch.Tensor, stats: dict) -> torch.Tensor:
        config = self.config
        self.count += 1
        system = admm_system_from_stats(stats, config.admm_damp, config.admm_rho)
        return admm_update(W, mask, system, config.admm_iterations)

    def results(self) -> dict:
        return {"reconstructed_linears": self.count}


@register_addon
class AdmmGradual(Admm):
    """--reconstruct admm_gradual: the mask chosen during ADMM from the method's score of W + U on a cubic
    schedule, exact at the target per row / layer / N:M group; results: reconstructed_linears."""

    name = "admm_gradual"
    help = ("choose the mask during ADMM from the method's score of W + U, pruned on a cubic schedule up to the "
            "target (Boza 2024's gradual mode)")

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.fitted: tuple[torch.Tensor, torch.Tensor] | None = None  # (mask, W') of the linear being pruned

    def check(self, method: Method) -> None:
        super().check(method)
        config = self.config
        for on, flag in ((config.use_variant, "--use_variant"), (config.refine != "none", f"--refine {config.refine}"),
                         (config.permute, "--permute")):
            if on:
                raise ConfigError(f"--reconstruct admm_gradual chooses the mask itself, so {flag} cannot change it; "
                                  f"use --reconstruct admm to re-fit after {flag}'s mask")

    def select(self, item: LinearMask, method: Method, config: PruneConfig) -> torch.Tensor:
        """Gradual ADMM from the unpruned weights at this layer's sparsity; W' kept for reconstruct."""
        system = admm_system_from_stats(item.stats, config.admm_damp, config.admm_rho)
        fitted, mask = gradual_admm(item.weight, system, config.sparsity_ratio,
                                    lambda V: method.score(V, item.stats, config), config.prune_n, config.prune_m,
                                    method.mask_group(config), config.admm_iterations, config.admm_prune_steps)
        self.fitted = (mask, fitted)
        return mask

    def reconstruct(self, W: torch.Tensor, mask: torch.Tensor, stats: dict) -> torch.Tensor:
        chosen, fitted = self.fitted
        if chosen is not mask:  # the driver hands back the mask select chose (no refiner or order may run)
            raise RuntimeError("admm_gradual: the mask to reconstruct is not the one it chose")
        self.fitted = None
        self.count += 1
        return fitted
