"""Selectivity-weighted Wanda: wanda_idf, wanda_spiky, wanda_select (SELECTIVITY.md).

S_ij = |W_ij| * ||X_j||_2 * IDF_j ** sel_idf_exp * R_j ** sel_spiky_exp, with IDF (how rarely input channel j is
active, borrowed from text retrieval) and R (how much larger its top activations are than its mean) from the
same single calibration pass as Wanda's norm (`InputAbsHistogram`). Exponent 0 gives Wanda exactly.

The factor functions take any stats dict holding active_rate / top_mean / mean_abs of shape [in] and return
[in], so they apply at other granularities (e.g. neurons) unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from lib.collectors import samples_and_rows
from lib.config import EXPONENT, ConfigError, PruneConfig, Settings, register_settings, setting
from lib.collectors import InputSquares
from lib.methods.wanda import wanda_score
from lib.registry import Method, Score, register
from lib.structured import neuron_pruner


@register_settings
@dataclass(frozen=True)
class SelectivitySettings(Settings):
    """The selectivity factors' settings, read by wanda_idf/spiky/select and ria_idf/spiky/select."""

    group: ClassVar[str] = "selectivity (*_idf, *_spiky, *_select)"
    sel_tau_percentile: float = setting(0.6, "layer-wide quantile of |x| above which a channel counts as active "
                                             "(IDF)", bounds="(0, 1)")
    sel_top_quantile: float = setting(0.9, "quantile whose upper tail gives mu_top (spikiness R)", bounds="(0, 1)")
    sel_idf_clip_max: float = setting(10.0, "upper clip of IDF", bounds="> 0")
    sel_idf_clip_min: float = setting(0.0, "lower clip of IDF (default 0, the published formula; > 0 keeps "
                                           "always-on channels); at most sel_idf_clip_max", bounds=">= 0")
    sel_spiky_clip_max: float = setting(10.0, "upper clip of the spikiness ratio R", bounds="> 0")
    sel_idf_exp: float = setting(1.0, "exponent on IDF (0 turns it off)", bounds=EXPONENT)
    sel_spiky_exp: float = setting(1.0, "exponent on R (0 turns it off)", bounds=EXPONENT)

    def check(self) -> None:
        if self.sel_idf_clip_min > self.sel_idf_clip_max:
            raise ConfigError(f"sel_idf_clip_min {self.sel_idf_clip_min} must be in [0, sel_idf_clip_max "
                              f"{self.sel_idf_clip_max}]")


def inverse_document_frequency(active_rate: torch.Tensor, clip_max: float, clip_min: float = 0.0) -> torch.Tensor:
    """IDF_j = log(1 / p_j) clipped to [clip_min, clip_max] (default [0, clip_max]); p_j = 0 gives clip_max. [in] -> [in]."""
    return torch.log(1.0 / active_rate.double()).clamp(clip_min, clip_max).float()


def spikiness(top_mean: torch.Tensor, mean_abs: torch.Tensor, clip_max: float, eps: float = 1e-10) -> torch.Tensor:
    """R_j = mu_top_j / (mu_j + eps) clipped to [1, clip_max]. [in], [in] -> [in]."""
    return (top_mean.double() / (mean_abs.double() + eps)).clamp(1.0, clip_max).float()


def idf(stats: dict, config: PruneConfig) -> torch.Tensor:
    """IDF_j [in] of one linear's input channels, clipped to [sel_idf_clip_min, sel_idf_clip_max]."""
    return inverse_document_frequency(stats["active_rate"], config.sel_idf_clip_max, config.sel_idf_clip_min)


def spikiness_ratio(stats: dict, config: PruneConfig) -> torch.Tensor:
    """R_j [in] of one linear's input channels, clipped to [1, sel_spiky_clip_max]."""
    return spikiness(stats["top_mean"], stats["mean_abs"], config.sel_spiky_clip_max)


def idf_factor(stats: dict, config: PruneConfig) -> torch.Tensor:
    """IDF_j ** sel_idf_exp [in], IDF clipped to [sel_idf_clip_min, sel_idf_clip_max] (default [0, 10])."""
    return idf(stats, config).pow(config.sel_idf_exp)


def spiky_factor(stats: dict, config: PruneConfig) -> torch.Tensor:
    """R_j ** sel_spiky_exp [in], R clipped to [1, sel_spiky_clip_max]."""
    return spikiness_ratio(stats, config).pow(config.sel_spiky_exp)


# Selectivity histogram bins (SELECTIVITY.md, "Streaming statistics"). Bin k of a channel's histogram is read
# straight from the float32 bit pattern of |x|: the exponent and the top SUB_BITS mantissa bits, so bins are
# 2**-SUB_BITS of an octave wide (3.1% to 6.25% relative width) from 2**MIN_EXP to 2**MAX_EXP. Bin 0 holds
# |x| < 2**MIN_EXP and is treated as a point mass at 0 (so a ReLU's exact zeros stay zeros); the last bin holds
# everything >= 2**MAX_EXP, its upper edge being the channel's running maximum.
SUB_BITS = 4
MIN_EXP = -16
MAX_EXP = 14
N_BINS = (MAX_EXP - MIN_EXP) * 2**SUB_BITS + 2
_BIT_SHIFT = 23 - SUB_BITS
# (bits >> _BIT_SHIFT) of 2**MIN_EXP is (MIN_EXP + 127) << SUB_BITS; it must land in bin 1.
_BIN_OFFSET = ((MIN_EXP + 127) << SUB_BITS) - 1


def bin_edges() -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper edges [N_BINS] (float64) of the selectivity histogram; the last upper edge is +inf."""
    j = torch.arange(N_BINS - 2, dtype=torch.float64)
    octave = torch.pow(2.0, MIN_EXP + torch.div(j, 2**SUB_BITS, rounding_mode="floor"))
    lower = octave * (1 + torch.remainder(j, 2**SUB_BITS) / 2**SUB_BITS)
    lo = torch.cat([torch.zeros(1, dtype=torch.float64), lower, torch.tensor([2.0**MAX_EXP], dtype=torch.float64)])
    hi = torch.cat([lo[1:], torch.tensor([float("inf")], dtype=torch.float64)])
    return lo, hi


class Scratch:
    """One reusable float32 buffer for the |x| of a batch, shared by a run's selectivity collectors.

    Hooks run one at a time, so one buffer serves every linear of every layer; reusing it instead of allocating
    [tokens, in] floats per linear and batch saves the page faults of fresh large allocations (about a third of
    the collector's time on CPU). Lives as long as the prune_model call that made it (Method.prepare).
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def get(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        if self.buffer is None or self.buffer.numel() < numel or self.buffer.device != device:
            self.buffer = None  # free the old one before allocating
            self.buffer = torch.empty(numel, dtype=torch.float32, device=device)
        return self.buffer[:numel].view(shape)


class InputAbsHistogram(InputSquares):
    """Wanda's scaler_row plus the selectivity statistics of SELECTIVITY.md, from per-channel histograms of |x|.

    State per input channel: N_BINS exact counts, and the exact Σ|x|, Σx² and max|x|: 485 numbers, whatever
    the number of calibration tokens. Counts, sums and maxima do not depend on how tokens were batched.
    Publishes scaler_row, tau (layer-wide), active_rate (p), mean_abs (mu), top_mean (mu_top), all [in] except
    tau []; IDF and R are computed from them by `idf` and `spikiness_ratio`.
    """

    def __init__(self, in_features: int, config: PruneConfig, scratch: Scratch | None = None) -> None:
        super().__init__(in_features, config)
        self.scratch = scratch
        self.counts: torch.Tensor | None = None  # [in * N_BINS] int64, allocated on the first batch
        self.sum_abs = torch.zeros(in_features, dtype=torch.float64)
        self.max_abs = torch.zeros(in_features, dtype=torch.float32)
        self.ntokens = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = samples_and_rows(x)
        device, channels = rows.device, self.in_features
        if self.counts is None:
            # Lazily: linears that alias another's input (k, v, up) never receive a batch and cost nothing.
            self.counts = torch.zeros(channels * N_BINS, dtype=torch.int64, device=device)
            base = torch.arange(channels, dtype=torch.int32, device=device) * N_BINS
            self._shift, self._first, self._last = base - _BIN_OFFSET, base, base + N_BINS - 1
            self.sum_sq, self.sum_abs, self.max_abs = (t.to(device) for t in (self.sum_sq, self.sum_abs, self.max_abs))
        self.sum_sq += rows.pow(2).sum(dim=0)
        self.nsamples += samples
        absx = rows.abs() if self.scratch is None else torch.abs(rows, out=self.scratch.get(rows.shape, device))
        # A batch's float32 column sums are exact enough; the running total is float64.
        self.sum_abs += absx.sum(dim=0)
        torch.maximum(self.max_abs, absx.amax(dim=0), out=self.max_abs)
        # Flat bin index channel * N_BINS + k, straight from the float bits (no log, no search), computed in place
        # over |x|, which is not needed after this.
        flat = absx.view(torch.int32)
        torch.bitwise_right_shift(flat, _BIT_SHIFT, out=flat).add_(self._shift)
        torch.clamp(flat, self._first, self._last, out=flat)
        # Counts only (no per-bin sums): the uniform-in-bin estimate is within 1% of mu_top (tests), and the
        # second scatter would cost as much as everything else here.
        self.counts += torch.bincount(flat.view(-1), minlength=self.counts.numel())
        self.ntokens += rows.shape[0]

    def finalize(self) -> dict[str, torch.Tensor]:
        stats = super().finalize()
        if self.counts is None or self.ntokens == 0:
            raise RuntimeError("InputAbsHistogram.finalize() before any add_batch()")
        stats.update(selectivity_from_histogram(self.counts.view(self.in_features, N_BINS), self.sum_abs,
                                                self.max_abs, self.ntokens, self.config.sel_tau_percentile,
                                                self.config.sel_top_quantile))
        return stats


def _layer_quantile_bin(counts: torch.Tensor, position: float) -> tuple[int, torch.Tensor, torch.Tensor]:
    """tau's bin: the bin of the layer-wide histogram (summed over channels) holding 0-based position `position`
    -> (bin, layer counts [bins] float64, their cumulative sums [bins])."""
    layer_counts = counts.sum(dim=0, dtype=torch.float64)
    cumulative = layer_counts.cumsum(0)
    b = int(torch.searchsorted(cumulative, torch.tensor([position], dtype=torch.float64, device=counts.device),
                               right=True).clamp(max=counts.shape[1] - 1))
    return b, layer_counts, cumulative


def selectivity_from_histogram(counts: torch.Tensor, sum_abs: torch.Tensor, max_abs: torch.Tensor, ntokens: int,
                               tau_percentile: float, top_quantile: float) -> dict[str, torch.Tensor]:
    """Histograms [in, N_BINS] (int), Σ|x| and max|x| [in] -> tau [], active_rate, mean_abs, top_mean [in].

    Inside a bin, values are taken as spread uniformly between its edges, the upper edge capped by the
    channel's maximum; bin 0 (|x| < 2**MIN_EXP) is a point mass at 0. Quantiles follow torch.quantile (linear,
    0-based position q * (n - 1)). Only five passes over [in, N_BINS] (it runs once per linear per layer).
    """
    device = counts.device
    max_abs = max_abs.double().to(device)
    lo, hi = (edge.to(device) for edge in bin_edges())
    channels = counts.shape[0]
    rows = torch.arange(channels, device=device)
    below_or_at = counts.cumsum(1)  # int64 [in, bins]: tokens in bins <= b, exact

    def capped_edges(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges of bin b[j] of each channel, the upper one capped by the channel's maximum. -> [in], [in]."""
        top = torch.minimum(hi[b], max_abs)
        return torch.minimum(lo[b], top), top

    position = tau_percentile * (ntokens * channels - 1)
    b, layer_counts, cumulative = _layer_quantile_bin(counts, position)
    # Active rate p_j = fraction of tokens with |x| > tau: whole bins above tau's bin, plus the share of that bin
    # above tau (none when tau is the point mass at 0).
    active = (ntokens - below_or_at[:, b]).double()
    if b == 0:
        tau = torch.zeros((), dtype=torch.float64, device=device)
    else:
        top = torch.minimum(hi[b], max_abs.max())
        tau = lo[b] + ((position - cumulative[b - 1] + 0.5) / layer_counts[b]).clamp(0.0, 1.0) * (top - lo[b])
        bin_lo, bin_hi = capped_edges(torch.full((channels,), b, device=device))
        share = ((bin_hi - tau) / (bin_hi - bin_lo).clamp(min=1e-300)).clamp(0.0, 1.0)
        active = active + counts[:, b].double() * share
    active_rate = active / ntokens
    mean_abs = sum_abs.double().to(device) / ntokens

    # mu_top: the mean of the k = n - ceil(q (n - 1)) largest values (those >= torch.quantile's q-quantile):
    # whole bins above the bin holding the k-th largest value at their midpoints, then the top r of that bin.
    k = ntokens - math.ceil(top_quantile * (ntokens - 1))
    partial = (below_or_at <= ntokens - k).sum(dim=1)  # [in]: the bin holding the k-th largest value
    mid = (lo + hi) / 2
    mid[-1] = lo[-1]  # the open top bin: corrected below through the channel maximum
    mass_below_or_at = (counts * mid).cumsum(1)  # float64 [in, bins]
    taken_counts = (ntokens - below_or_at[rows, partial]).double()
    taken_sums = mass_below_or_at[:, -1] - mass_below_or_at[rows, partial]
    # The bin holding the maximum spans [lo, max], not [lo, hi].
    top_bin = _bin_of(max_abs.float()).to(device)
    top_lo, top_hi = capped_edges(top_bin)
    top_fix = counts[rows, top_bin] * ((top_lo + top_hi) / 2 - mid[top_bin])
    taken_sums = taken_sums + torch.where(top_bin > partial, top_fix, 0.0)
    bin_lo, bin_hi = capped_edges(partial)
    bin_count = counts[rows, partial].double().clamp(min=1)
    rest = k - taken_counts
    # Top r of n values spread uniformly over [lo, hi]: mean hi - (r / n) (hi - lo) / 2.
    top_mean = (taken_sums + rest * (bin_hi - rest / bin_count * (bin_hi - bin_lo) / 2)) / k
    # When the k-th largest value is (treated as) 0 the quantile is 0 and every token is "at or above" it.
    top_mean = torch.where(partial == 0, mean_abs, top_mean)
    return {"tau": tau.float(), "active_rate": active_rate.float(), "mean_abs": mean_abs.float(),
            "top_mean": top_mean.float()}


def _bin_of(values: torch.Tensor) -> torch.Tensor:
    """Histogram bin index (0 .. N_BINS - 1, int64) of non-negative float32 values, any shape."""
    bits = torch.bitwise_right_shift(values.contiguous().view(torch.int32), _BIT_SHIFT)
    return (bits - _BIN_OFFSET).clamp(0, N_BINS - 1).long()


def select_factor(stats: dict, config: PruneConfig) -> torch.Tensor:
    """IDF_j ** sel_idf_exp * R_j ** sel_spiky_exp [in]."""
    return idf_factor(stats, config) * spiky_factor(stats, config)


# The selectivity factors any per-weight score can be multiplied by: suffix -> (factor function, what it is).
FACTORS = {
    "idf": (idf_factor, "IDF (rarely active input channels weigh more)"),
    "spiky": (spiky_factor, "R (input channels with rare large peaks weigh more)"),
    "select": (select_factor, "IDF * R"),
}


def times_factor(score: Score, factor: Callable[[dict, PruneConfig], torch.Tensor]) -> Score:
    """score(W, stats, config) [out, in] times factor(stats, config) [in] per input column."""
    def weighted(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
        return score(W, stats, config) * factor(stats, config).to(W.device).unsqueeze(0)
    weighted.__doc__ = f"{score.__name__} [out, in] times {factor.__name__} [in] per input column."
    return weighted


def register_selective(base: str, score: Score, describe: str,
                       fields: Callable[[Score], dict] = lambda weighted: {}) -> None:
    """Register {base}_idf, {base}_spiky, {base}_select: `score` times each factor of FACTORS, statistics from one
    InputAbsHistogram pass; fields(weighted score) gives extra Method fields (e.g. neuron granularity)."""
    for suffix, (factor, what) in FACTORS.items():
        weighted = times_factor(score, factor)
        register(Method(f"{base}_{suffix}", (InputAbsHistogram,), score=weighted, summarize=summarize,
                        prepare=lambda calib_ids, config: {"scratch": Scratch()}, help=f"{describe} * {what}",
                        **fields(weighted)))


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    """min / p10 / median / p90 / max of a [in] tensor, as floats."""
    # On the CPU: the statistics may live on a GPU, and the quantile points must be on the values' device.
    qs = torch.quantile(values.double().cpu(), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
    return {name: round(float(v), 6) for name, v in zip(("min", "p10", "p50", "p90", "max"), qs)}


def summarize(stats: dict, config: PruneConfig) -> dict:
    """What the factors did to one linear's input channels (for --save_stats): a small JSON-able dict."""
    idf_j, spiky = idf(stats, config), spikiness_ratio(stats, config)
    return {
        "tau": round(float(stats["tau"]), 8),
        "channels": int(idf_j.numel()),
        "idf_zero_channels": int((stats["active_rate"] >= 1.0).sum()),  # active on every token: all weights lost
        "never_active_channels": int((stats["active_rate"] <= 0.0).sum()),  # IDF at its clip
        "active_rate_mean": round(float(stats["active_rate"].double().mean()), 6),
        "idf": _quantiles(idf_j),
        "spikiness": _quantiles(spiky),
    }


register_selective("wanda", wanda_score, "|W| * ||X||",
                   lambda weighted: {"supports_variant": True, **neuron_pruner(weighted)})
