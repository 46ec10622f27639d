"""NeuronRank: channel scores from how a channel's activation varies across tokens and across token classes.

For each linear layer's input channel j over calibration tokens t (SELECTIVITY.md, section NeuronRank):
  nr_var      var_j   token variance of x_tj;
  nr_between  B_j     between-class variance  sum_c n_c (mu_cj - mu_j^cls)^2 / N_cls;
  nr_within   W_j     within-class variance   sum_c sum_{t in c} (x_tj - mu_cj)^2 / N_cls;
  nr_fisher   J_j     Fisher ratio            B_j / (W_j + eps).
A token's class is the id of the input token at its position, restricted to the K most frequent ids of the
calibration set (K = neuronrank_max_classes); tokens of other ids do not enter the class statistics.

Methods: `neuronrank` (f_j = var_j + B_j) and `neuronrank_fisher` (f_j = J_j), at two granularities:
  weight: S_ij = |W_ij| * ||X_j||_2 * (f_j / mean_j f_j)^gamma, masked per row or N:M like Wanda;
  neuron: whole MLP neurons removed, importance_j = f_j^gamma * ||W_down[:, j]||_2 * ||X_j||_2, the same
          count in every layer; with shrink the linears are resized and the model config updated.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar

import torch

from lib.collectors import Collector, samples_and_rows
from lib.config import MAX_EXPONENT, ConfigError, PruneConfig, Settings, register_settings, setting
from lib.registry import Method, register
from lib.structured import neuron_pruner

logger = logging.getLogger(__name__)

# J = B / (W + eps) with eps relative to the layer's mean total variance, so J does not depend on the
# activation scale (fp16 vs fp32 models, outlier layers); the absolute floor keeps an all-zero input at J = 0.
FISHER_EPS_REL = 1e-6
FISHER_EPS_ABS = 1e-30


@register_settings
@dataclass(frozen=True)
class NeuronRankSettings(Settings):
    """NeuronRank's settings, read by neuronrank and neuronrank_fisher."""

    group: ClassVar[str] = "NeuronRank (neuronrank, neuronrank_fisher)"
    neuronrank_max_classes: int = setting(512, "K most frequent calibration token ids used as classes: 0 (no "
                                               "classes: neuronrank's factor is the variance alone) or >= 2 (one "
                                               "class has no between-class variance)", bounds=">= 0",
                                          flags=("--neuronrank_max_classes", "--neuronrank-max-classes"))
    nr_exp: float = setting(1.0, "exponent gamma on the channel factor", bounds=f"[0, {MAX_EXPONENT}]",
                            note="0 gives plain Wanda scores")

    def check(self) -> None:
        if self.neuronrank_max_classes == 1:
            # One class makes every between-class variance and Fisher ratio 0: the scores degenerate silently.
            raise ConfigError(f"neuronrank_max_classes {self.neuronrank_max_classes} must be 0 (no classes) or >= 2")


def top_token_classes(calib_ids: torch.Tensor, max_classes: int) -> torch.Tensor:
    """calib_ids [n, seqlen] -> the max_classes most frequent ids [K], sorted ascending (ties: lower id wins)."""
    if max_classes <= 0:
        return torch.zeros(0, dtype=torch.long)
    ids, counts = torch.unique(calib_ids.flatten().cpu(), return_counts=True)
    # unique returns ids ascending; a stable sort by descending count keeps the lower id first among ties.
    order = torch.argsort(-counts, stable=True)[:max_classes]
    return ids[order].sort().values.long()


def prepare_classes(calib_ids: torch.Tensor, config: PruneConfig) -> dict:
    """Once per run, before the layer walk: {'class_ids': top-K ids [K]} for every NeuronRank collector."""
    class_ids = top_token_classes(calib_ids, config.neuronrank_max_classes)
    if class_ids.numel():
        covered = torch.isin(calib_ids.flatten().cpu(), class_ids).float().mean().item()
        logger.info("NeuronRank: %d token classes cover %.1f%% of %d calibration tokens", class_ids.numel(),
                    100 * covered, calib_ids.numel())
    return {"class_ids": class_ids}


def merge_moments(total: dict[str, torch.Tensor], count: torch.Tensor, sums: torch.Tensor, m2: torch.Tensor) -> None:
    """Add a batch's (count, sum, M2 = sum of squared deviations from its own mean) into the float64 running
    total (Chan, Golub & LeVeque's pairwise update), in place. Counts [K, 1] or [] broadcast over channels.

    Variances from running sums of x and x^2 cancel catastrophically where the variance is tiny next to the
    mean (NeuronRank's within-class variance is ~1e-9 of x^2 in early layers): the result then depends on how
    tokens were batched (--calib_batch_size). Deviations from each batch's own mean do not cancel."""
    count, sums, m2 = count.double(), sums.double(), m2.double()
    n_a, n = total["count"], total["count"] + count
    delta = sums / count.clamp_min(1) - total["sum"] / n_a.clamp_min(1)
    total["m2"] += m2 + delta.pow(2) * (n_a * count / n.clamp_min(1))
    total["sum"] += sums
    total["count"] += count


def batch_moments(rows: torch.Tensor, groups: torch.Tensor | None = None, ngroups: int = 1):
    """rows [t, in] (float32) -> (count [], sum [in], M2 [in]), or per group ([G, 1], [G, in], [G, in]) when
    groups [t] gives each row's group; one temporary the size of rows, no float64 copy."""
    if groups is None:
        count = torch.tensor(float(rows.shape[0]), device=rows.device)
        sums = rows.sum(0)
        return count, sums, (rows - sums / max(rows.shape[0], 1)).pow(2).sum(0)
    count = torch.bincount(groups, minlength=ngroups).unsqueeze(1).to(rows.dtype)
    sums = torch.zeros(ngroups, rows.shape[1], device=rows.device, dtype=rows.dtype).index_add_(0, groups, rows)
    deviation = rows - (sums / count.clamp_min(1))[groups]
    return count, sums, torch.zeros_like(sums).index_add_(0, groups, deviation.pow(2))


class InputClassMoments(Collector):
    """Per input channel: token moments, per-sequence mean moments, per-class moments (count, sum, M2; float64,
    of x minus the first batch's mean, merged pairwise by merge_moments, so --calib_batch_size changes them only
    by float32 rounding of values near the mean), divided in finalize.

    Memory is (5 + 2K) x in_features float64 plus K counts, whatever the token count, allocated lazily on the
    activations' device. Also publishes Wanda's scaler_row.
    """

    def __init__(self, in_features: int, config: PruneConfig, class_ids: torch.Tensor | None = None) -> None:
        super().__init__(in_features, config)
        self.nsamples = 0
        self.class_ids = (class_ids if class_ids is not None else torch.zeros(0)).long().sort().values
        # Running float64 totals, allocated on the activations' device by the first batch, so linears that
        # alias another's input (k, v, up) cost nothing.
        self.sums: dict[str, dict[str, torch.Tensor]] | None = None

    def _allocate(self, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
        """Moments (count, sum, M2) of tokens, of sequence means and of each class; the sum of x^2 (scaler_row)."""
        zeros = partial(torch.zeros, dtype=torch.float64, device=device)
        channels, classes = self.in_features, self.class_ids.numel()
        self.class_ids = self.class_ids.to(device)
        moments = lambda *shape: {"count": zeros(*shape[:-1], 1) if len(shape) > 1 else zeros(()),  # noqa: E731
                                  "sum": zeros(*shape), "m2": zeros(*shape)}
        return {"token": moments(channels), "sample": moments(channels), "class": moments(classes, channels),
                "sum_sq": {"x": zeros(channels)}, "shift": {}}

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        """x [batch, seq, in] or [tokens, in]; token_ids with one id per token ([batch, seq]) when K > 0."""
        samples, rows = samples_and_rows(x)
        rows = rows.float()
        sums = self.sums = self.sums if self.sums is not None else self._allocate(rows.device)
        sums["sum_sq"]["x"] += rows.pow(2).sum(0)
        if "x" not in sums["shift"]:
            sums["shift"]["x"] = rows.mean(0)
        # Moments of x - shift (the first batch's mean): float32 sums of values near the mean keep the
        # precision that class means need (B_j compares class means that differ by ~1e-4 of the mean).
        rows = rows - sums["shift"]["x"]
        merge_moments(sums["token"], *batch_moments(rows))
        merge_moments(sums["sample"], *batch_moments(rows.reshape(samples, -1, rows.shape[-1]).mean(1)))
        self.nsamples += samples
        if not self.class_ids.numel():
            return
        if token_ids is None or token_ids.numel() != rows.shape[0]:
            got = "none" if token_ids is None else f"{token_ids.numel()}"
            raise ValueError(f"NeuronRank class statistics need one token id per activation row: {rows.shape[0]} "
                             f"rows, {got} ids")
        flat = token_ids.reshape(-1).to(rows.device).long()
        pos = torch.searchsorted(self.class_ids, flat).clamp(max=self.class_ids.numel() - 1)
        hit = self.class_ids[pos] == flat
        merge_moments(sums["class"], *batch_moments(rows[hit], pos[hit], self.class_ids.numel()))

    def finalize(self) -> dict[str, torch.Tensor]:
        """scaler_row, nr_mean, nr_var, nr_sample_mean_var, nr_between, nr_within, nr_fisher [in]; nr_class_tokens []."""
        if self.sums is None:
            raise RuntimeError("InputClassMoments.finalize() before any add_batch()")
        token, sample, cls = self.sums["token"], self.sums["sample"], self.sums["class"]
        ntokens = token["count"].clamp_min(1)
        mean, var = self.sums["shift"]["x"].double() + token["sum"] / ntokens, token["m2"] / ntokens
        sample_mean_var = sample["m2"] / sample["count"].clamp_min(1)
        class_count = cls["count"].squeeze(1)
        class_tokens = class_count.sum()
        if class_tokens > 0:
            seen = class_count > 0
            count, class_sums = class_count[seen].unsqueeze(1), cls["sum"][seen]
            overall = class_sums.sum(0) / class_tokens
            between = (count * (class_sums / count - overall).pow(2)).sum(0) / class_tokens
            within = cls["m2"][seen].sum(0) / class_tokens
        else:
            between = within = torch.zeros_like(mean)
        eps = FISHER_EPS_REL * (between + within).mean() + FISHER_EPS_ABS
        fisher = between / (within + eps)
        out = {"scaler_row": self.sums["sum_sq"]["x"] / max(self.nsamples, 1), "nr_mean": mean, "nr_var": var,
               "nr_sample_mean_var": sample_mean_var, "nr_between": between, "nr_within": within,
               "nr_fisher": fisher, "nr_class_tokens": class_tokens}
        return {name: value.float() for name, value in out.items()}


def variance_factor(stats: dict) -> torch.Tensor:
    """neuronrank: f_j = var_j + B_j [in] (activation variance plus class-mean variance)."""
    return stats["nr_var"] + stats["nr_between"]


def fisher_factor(stats: dict) -> torch.Tensor:
    """neuronrank_fisher: f_j = J_j [in]."""
    return stats["nr_fisher"]


def relative_factor(factor: torch.Tensor, exponent: float) -> torch.Tensor:
    """(f_j / mean_j f_j)^gamma [in]; the mean makes gamma change the spread, not the scale."""
    return (factor / factor.mean().clamp_min(torch.finfo(factor.dtype).tiny)).pow(exponent)


def neuronrank_score(W: torch.Tensor, stats: dict, config: PruneConfig,
                     factor: Callable[[dict], torch.Tensor]) -> torch.Tensor:
    """S_ij = |W_ij| * ||X_j||_2 * (f_j / mean f)^gamma [out, in]."""
    column = stats["scaler_row"].sqrt() * relative_factor(factor(stats), config.nr_exp)
    return W.abs() * column.to(W.device).unsqueeze(0)


def check_neuronrank(config: PruneConfig, needs_classes: bool) -> None:
    """Settings NeuronRank cannot honour, one line each."""
    if needs_classes and config.neuronrank_max_classes < 2:
        raise ConfigError(f"{config.prune_method} ranks channels by how token classes differ, but "
                          f"--neuronrank_max_classes {config.neuronrank_max_classes} gives fewer than 2 classes (the "
                          "Fisher ratio is then 0 for every channel); set it >= 2 (default 512)")


def summarize_neuronrank(stats: dict, config: PruneConfig) -> dict:
    """Means of the channel statistics and the classified-token count, for --save_stats."""
    summary = {name: round(stats[name].mean().item(), 6) for name in
               ("nr_var", "nr_sample_mean_var", "nr_between", "nr_within", "nr_fisher")}
    summary["nr_fisher_median"] = round(stats["nr_fisher"].median().item(), 6)
    summary["nr_class_tokens"] = int(stats["nr_class_tokens"].item())
    return summary


for _name, _factor, _needs_classes, _what in [
        ("neuronrank", variance_factor, False, "activation variance + class-mean variance"),
        ("neuronrank_fisher", fisher_factor, True, "Fisher ratio between/within token classes")]:
    _score = partial(neuronrank_score, factor=_factor)
    register(Method(_name, (InputClassMoments,), score=_score, **neuron_pruner(_score), prepare=prepare_classes,
                    supports_variant=True, check=partial(check_neuronrank, needs_classes=_needs_classes),
                    summarize=summarize_neuronrank, help=f"Wanda x ({_what}); --nr_granularity weight or neuron"))
