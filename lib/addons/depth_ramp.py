"""Depth-ramp layer sparsities (--layer_ratios depth_ramp): per-layer sparsity rising linearly with depth, mean the
target, one step --ramp_beta (ATP, Huang et al. ICML 2025; lib/depth_ramp.py holds the formula and its range).

No calibration pass: the ratios depend only on the layer count, the target and beta, so a beta outside the range
the model's layer count allows is refused before any weight loads (the count comes from the meta skeleton).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting
from lib.depth_ramp import depth_ramp_limit, depth_ramp_ratios
from lib.registry import DenseWalk, LayerRatioPolicy, Method, register_addon


@register_settings
@dataclass(frozen=True)
class DepthRampSettings(Settings):
    """The depth ramp's step (--layer_ratios depth_ramp)."""

    group: ClassVar[str] = "depth ramp (--layer_ratios depth_ramp)"
    # (L - 1) * beta <= 2 min(S, 1 - S) <= 1 for any L >= 2, so no model accepts a step above 1.
    ramp_beta: float | None = setting(None, "sparsity added per decoder layer of depth (the paper's beta); at most "
                                            "min(2S, 2(1-S)) / (layers - 1) for target S (default: half of that)",
                                      bounds="[0, 1]")


def ramp_beta(config: PruneConfig, layers: int) -> float:
    """--ramp_beta, or half the largest step the layer count and target allow (0 for a one-layer model)."""
    if config.ramp_beta is not None:
        return config.ramp_beta
    limit, _ = depth_ramp_limit(layers, config.sparsity_ratio)
    return 0.0 if limit == float("inf") else limit / 2


@register_addon
class DepthRamp(LayerRatioPolicy):
    """--layer_ratios depth_ramp: s_i = S + beta (i - (L - 1) / 2); results: layer_ratios, ramp_beta."""

    name = "depth_ramp"
    help = "layer sparsity rising linearly with depth, mean the target (ATP, Huang et al. 2025; no extra pass)"

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.layer_ratios: list[float] = []
        self.beta: float | None = None

    def needs_calibration(self, method: Method) -> bool:
        return False

    def check_model(self, layers: int) -> None:
        self.ramp(layers)

    def ramp(self, layers: int) -> list[float]:
        """The ratios for `layers` decoder layers (ConfigError naming --ramp_beta when out of range)."""
        beta = ramp_beta(self.config, layers)
        try:
            return depth_ramp_ratios(layers, self.config.sparsity_ratio, beta)
        except ValueError as err:
            raise ConfigError(f"--ramp_beta: {err}") from None

    def ratios(self, walk: DenseWalk, method: Method, context: dict, layers: int) -> list[float]:
        self.layer_ratios, self.beta = self.ramp(layers), ramp_beta(self.config, layers)
        return self.layer_ratios

    def results(self) -> dict:
        return {"layer_ratios": self.layer_ratios, "ramp_beta": self.beta}
