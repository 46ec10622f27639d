"""OWL (Yin et al. 2023): per-decoder-layer sparsity from each layer's share of outlier scores (--layer_ratios owl).

D_l = fraction of layer l's scores (every linear of the layer together) above owl_m times their mean; the D_l
are min-max scaled to a spread of 2 * owl_lambda and shifted so that their mean is the target sparsity, layers
with more outliers being pruned less. The scores are Wanda's |W| * ||X|| (--owl_score wanda, the paper's) or the
method's own. The driver gets every layer's D_l from one extra dense calibration walk before pruning the first
layer (`lib.prune.outlier_ratios`); this module holds the arithmetic and the checks.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch

from lib.config import ConfigError, PruneConfig
from lib.registry import ADDON_CHECKS, Method


logger = logging.getLogger(__name__)

# Highest per-layer sparsity OWL may hand out (a layer pruned 100% would cut the residual stream's input to it).
MAX_LAYER_RATIO = 0.99


def outlier_ratio(scores: Callable[[], Iterator[torch.Tensor]], owl_m: float) -> float:
    """D = fraction of all entries of a layer's score matrices above owl_m * their joint mean (strict >).

    scores() yields the layer's score matrices; it is called twice (mean, then count), so a layer's scores are
    never all in memory at once. The mean is over the concatenation, so the large (MLP) matrices dominate it,
    as upstream's torch.cat.
    """
    total, count = 0.0, 0
    for s in scores():
        total += s.double().sum().item()
        count += s.numel()
    threshold = owl_m * total / max(count, 1)
    outliers = sum(int((s.double() > threshold).sum()) for s in scores())
    return outliers / max(count, 1)


def owl_ratios(outlier_ratios: list[float], target: float, owl_lambda: float) -> list[float]:
    """Per-layer sparsities from D_l: min-max scaled to [0, 2 * lambda], shifted to mean `target`, more D = less.

    Upstream: density r = (D - min D) / (max D - min D) * 2 lambda; r += (1 - target) - mean(r); s_l = 1 - r_l.
    Differences (RESULTS.md): equal D_l (upstream divides by zero) give uniform ratios; where a ratio would leave
    [0, MAX_LAYER_RATIO] the deviations from the target are scaled down together (upstream clamps at 0.01, which
    breaks mean == target), so the mean stays the target and the order is kept.
    """
    D = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = D.max() - D.min() if D.numel() else torch.tensor(0.0, dtype=torch.float64)
    if D.numel() == 0 or spread == 0 or owl_lambda == 0:
        return [float(target)] * len(outlier_ratios)
    density = (D - D.min()) / spread * (2 * owl_lambda)
    deviation = -(density - density.mean())  # sparsity minus target
    high = max(MAX_LAYER_RATIO, target)
    shrink = 1.0
    if deviation.min() < 0:
        shrink = min(shrink, target / float(-deviation.min()))
    if deviation.max() > 0:
        shrink = min(shrink, (high - target) / float(deviation.max()))
    if shrink < 1.0:
        logger.warning("OWL: ratios %.4f +- up to %.4f leave [0, %g]; spread scaled by %.4f", target,
                       float(deviation.abs().max()), high, shrink)
    ratios = target + shrink * deviation
    return [float(r) for r in ratios.clamp(0.0, high)]


def uses_method_score(config: PruneConfig) -> bool:
    """True when OWL's outliers come from the method's own score rather than Wanda's."""
    return config.owl_score == "method"


def check(method: Method, config: PruneConfig) -> None:
    """Combinations OWL cannot honour, one line each (called where the method is looked up)."""
    if config.layer_ratios != "owl":
        return
    if config.prune_n:
        raise ConfigError(f"--layer_ratios owl gives each layer its own sparsity, but sparsity_type "
                          f"{config.sparsity_type} fixes every layer at {config.prune_n}/{config.prune_m}; use "
                          f"--sparsity_type unstructured (upstream OWL also applies N:M uniformly)")
    if method.prunes_layer(config):
        raise ConfigError(f"--layer_ratios owl sets weight sparsity per layer; '{method.name}' with "
                          f"--nr_granularity {config.nr_granularity} removes whole neurons")
    if uses_method_score(config) and method.score is None:
        raise ConfigError(f"--owl_score method needs a per-weight score, and '{method.name}' reconstructs "
                          f"weights without one; use --owl_score wanda")


ADDON_CHECKS.append(check)
