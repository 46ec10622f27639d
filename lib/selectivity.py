"""Selectivity-weighted Wanda: wanda_idf, wanda_spiky, wanda_select (SELECTIVITY.md).

S_ij = |W_ij| * ||X_j||_2 * IDF_j ** sel_idf_exp * R_j ** sel_spiky_exp, with IDF (how rarely input channel j is
active, borrowed from text retrieval) and R (how much larger its top activations are than its mean) from the
same single calibration pass as Wanda's norm (`WrappedGPTSelectivity`). Exponent 0 gives Wanda exactly.

The factor functions take any stats dict holding active_rate / top_mean / mean_abs of shape [in] and return
[in], so they apply at other granularities (e.g. neurons) unchanged.
"""
from __future__ import annotations

import torch

from lib.config import PruneConfig
from lib.layerwrapper import Scratch, WrappedGPTSelectivity, inverse_document_frequency, spikiness
from lib.methods import Method, register, wanda_score
from lib.structured import neuron_pruner


def idf_factor(stats: dict, config: PruneConfig) -> torch.Tensor:
    """IDF_j ** sel_idf_exp [in], IDF clipped to [sel_idf_clip_min, sel_idf_clip_max] (default [0, 10])."""
    idf = inverse_document_frequency(stats["active_rate"], config.sel_idf_clip_max, config.sel_idf_clip_min)
    return idf.pow(config.sel_idf_exp)


def spiky_factor(stats: dict, config: PruneConfig) -> torch.Tensor:
    """R_j ** sel_spiky_exp [in], R clipped to [1, sel_spiky_clip_max]."""
    return spikiness(stats["top_mean"], stats["mean_abs"], config.sel_spiky_clip_max).pow(config.sel_spiky_exp)


def wanda_idf_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """|W_ij| * ||X_j|| * IDF_j^a [out, in]."""
    return wanda_score(W, stats, config) * idf_factor(stats, config).to(W.device).unsqueeze(0)


def wanda_spiky_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """|W_ij| * ||X_j|| * R_j^b [out, in]."""
    return wanda_score(W, stats, config) * spiky_factor(stats, config).to(W.device).unsqueeze(0)


def wanda_select_score(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """|W_ij| * ||X_j|| * IDF_j^a * R_j^b [out, in]."""
    factor = idf_factor(stats, config) * spiky_factor(stats, config)
    return wanda_score(W, stats, config) * factor.to(W.device).unsqueeze(0)


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    """min / p10 / median / p90 / max of a [in] tensor, as floats."""
    qs = torch.quantile(values.double(), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
    return {name: round(float(v), 6) for name, v in zip(("min", "p10", "p50", "p90", "max"), qs)}


def summarize(stats: dict) -> dict:
    """What the factors did to one linear's input channels (for --save_stats): a small JSON-able dict."""
    idf, spiky = stats["idf"], stats["spikiness"]
    return {
        "tau": round(float(stats["tau"]), 8),
        "channels": int(idf.numel()),
        "idf_zero_channels": int((stats["active_rate"] >= 1.0).sum()),  # active on every token: all weights lost
        "never_active_channels": int((stats["active_rate"] <= 0.0).sum()),  # IDF at its clip
        "active_rate_mean": round(float(stats["active_rate"].double().mean()), 6),
        "idf": _quantiles(idf),
        "spikiness": _quantiles(spiky),
    }


for _name, _score, _help in [
    ("wanda_idf", wanda_idf_score, "|W| * ||X|| * IDF (rarely active input channels weigh more)"),
    ("wanda_spiky", wanda_spiky_score, "|W| * ||X|| * R (input channels with rare large peaks weigh more)"),
    ("wanda_select", wanda_select_score, "|W| * ||X|| * IDF * R"),
]:
    register(Method(_name, (WrappedGPTSelectivity,), score=_score, supports_variant=True, summarize=summarize,
                    prepare=lambda calib_ids, config: {"scratch": Scratch()}, help=_help, **neuron_pruner(_score)))
