"""OWL (Yin et al. 2023): per-decoder-layer sparsity from each layer's share of outlier scores (--layer_ratios owl).

D_l = fraction of layer l's scores (every linear of the layer together) above owl_m times their mean; the D_l
are min-max scaled to a spread of 2 * owl_lambda and shifted so that their mean is the target sparsity, layers
with more outliers being pruned less. The scores are Wanda's |W| * ||X|| (--owl_score wanda, the paper's) or the
method's own. D_l come from one extra dense calibration walk before pruning the first layer (the driver's
DenseWalk: every layer's inputs from the dense layers before it, upstream OWL's extra pass).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch

from lib.collectors import InputSquares
from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting
from lib.methods.wanda import wanda_score
from lib.registry import DenseWalk, LayerRatioPolicy, Method, register_addon


logger = logging.getLogger(__name__)

# Highest per-layer sparsity OWL may hand out (a layer pruned 100% would cut the residual stream's input to it).
MAX_LAYER_RATIO = 0.99


@register_settings
@dataclass(frozen=True)
class OWLSettings(Settings):
    """OWL's settings (--layer_ratios owl)."""

    group: ClassVar[str] = "OWL (--layer_ratios owl)"
    owl_m: float = setting(5.0, "a score is an outlier above M times its layer's mean score", bounds="> 0")
    # Ratios spread over more than [0, 1) cannot be meant.
    owl_lambda: float = setting(0.08, "layer ratios spread over 2 * lambda around the target, their mean the "
                                      "target", bounds="[0, 0.5]", note="OWL's default is 0.08")
    owl_score: str = setting("wanda", "outliers of Wanda's score |W| * ||X|| (default) or of the method's own "
                                      "score", choices=("method", "wanda"))


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


@register_addon
class OWL(LayerRatioPolicy):
    """--layer_ratios owl: layers with more outlier scores pruned less; results: layer_ratios, outlier_ratios."""

    name = "owl"
    help = "layers with more outlier scores pruned less (one extra dense calibration pass)"
    nm_note = " (upstream OWL also applies N:M uniformly)"

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.layer_ratios: list[float] = []
        self.outlier_ratios: list[float] = []

    def check(self, method: Method) -> None:
        """Combinations OWL cannot honour, one line each."""
        super().check(method)
        config = self.config
        if uses_method_score(config) and method.score is None:
            raise ConfigError(f"--owl_score method needs a per-weight score, and '{method.name}' reconstructs "
                              f"weights without one; use --owl_score wanda")

    def needs_calibration(self, method: Method) -> bool:
        return not uses_method_score(self.config) or bool(method.collectors)

    def ratios(self, walk: DenseWalk, method: Method, context: dict, layers: int) -> list[float]:
        """D_l of every layer from the dense walk, then OWL's ratios (logged)."""
        config = self.config
        if uses_method_score(config):
            collectors, score = method.collectors, method.score
        else:
            collectors, score, context = (InputSquares,), wanda_score, {}
        self.outlier_ratios = [
            outlier_ratio(lambda: (score(lin.weight.data.float(), stats[name], config)
                                   for name, lin in linears.items()), config.owl_m)
            for linears, stats in walk(collectors, context, "OWL outlier ratios")]
        self.layer_ratios = owl_ratios(self.outlier_ratios, config.sparsity_ratio, config.owl_lambda)
        logger.info("OWL: outlier ratios %s -> layer sparsities %s (mean %.6f)",
                    [round(d, 6) for d in self.outlier_ratios], [round(r, 6) for r in self.layer_ratios],
                    sum(self.layer_ratios) / len(self.layer_ratios))
        return self.layer_ratios

    def results(self) -> dict:
        return {"layer_ratios": self.layer_ratios, "outlier_ratios": self.outlier_ratios}
