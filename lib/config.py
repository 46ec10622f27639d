"""The validated, frozen pruning configuration. Library code takes this, never argparse.Namespace."""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the value and what is accepted."""


def parse_sparsity_type(sparsity_type: str) -> tuple[int, int]:
    """'unstructured' -> (0, 0); 'N:M' with 0 < N < M -> (N, M)."""
    if sparsity_type == "unstructured":
        return 0, 0
    match = re.fullmatch(r"(\d+):(\d+)", sparsity_type)
    if match is None:
        raise ConfigError(f"sparsity_type '{sparsity_type}' is not understood; use 'unstructured' or 'N:M' "
                          "with integers 0 < N < M, e.g. 2:4 or 4:8")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"sparsity_type '{sparsity_type}' is impossible; N:M needs 0 < N < M (N weights of "
                          "every M are pruned), e.g. 2:4 or 4:8")
    return n, m


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class PruneConfig:
    """Everything the pruning driver needs. Defaults follow Wanda (and the issue specs for new methods)."""

    prune_method: str = "wanda"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    nsamples: int = 128
    # Calibration sequences per decoder-layer call; 0 = as many as fit 8192 tokens. Results do not depend on it.
    calib_batch_size: int = 0
    seed: int = 0
    use_variant: bool = False
    # SparseGPT / ablation reconstruction (Frantar & Alistarh 2023).
    blocksize: int = 128
    percdamp: float = 0.01
    # Selectivity factors (SELECTIVITY.md).
    sel_tau_percentile: float = 0.6
    sel_top_quantile: float = 0.9
    sel_idf_clip_max: float = 10.0
    sel_idf_clip_min: float = 0.0  # > 0 spares always-on channels (IDF 0 would prune their whole column)
    sel_spiky_clip_max: float = 10.0
    sel_idf_exp: float = 1.0
    sel_spiky_exp: float = 1.0
    # NeuronRank.
    neuronrank_max_classes: int = 512
    nr_granularity: str = "weight"
    nr_exp: float = 1.0
    shrink: bool = False

    def __post_init__(self) -> None:
        from lib.methods import METHODS  # late import: methods import this module

        if self.prune_method not in METHODS:
            raise ConfigError(f"unknown prune_method '{self.prune_method}'{suggest(self.prune_method, sorted(METHODS))}; "
                              f"choose from {sorted(METHODS)}")
        if not 0.0 <= self.sparsity_ratio < 1.0:
            raise ConfigError(f"sparsity_ratio {self.sparsity_ratio} is outside [0, 1)")
        n, m = parse_sparsity_type(self.sparsity_type)
        if m and abs(n / m - self.sparsity_ratio) > 1e-9:
            raise ConfigError(f"sparsity_type {self.sparsity_type} prunes {n}/{m} = {n / m:g} of the weights but "
                              f"sparsity_ratio is {self.sparsity_ratio}; pass --sparsity_ratio {n / m:g} or omit it")
        for name in ("nsamples", "blocksize"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be a positive integer")
        if self.calib_batch_size < 0:
            raise ConfigError(f"calib_batch_size {self.calib_batch_size} must be >= 0 (0 = automatic)")
        if not 0.0 <= self.percdamp:
            raise ConfigError(f"percdamp {self.percdamp} must be >= 0")
        for name in ("sel_tau_percentile", "sel_top_quantile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} {getattr(self, name)} must be in (0, 1)")
        for name in ("sel_idf_clip_max", "sel_spiky_clip_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be > 0")
        if not 0.0 <= self.sel_idf_clip_min <= self.sel_idf_clip_max:
            raise ConfigError(f"sel_idf_clip_min {self.sel_idf_clip_min} must be in [0, sel_idf_clip_max "
                              f"{self.sel_idf_clip_max}]")
        if self.nr_granularity not in ("weight", "neuron"):
            raise ConfigError(f"nr_granularity '{self.nr_granularity}' is not one of ['neuron', 'weight']")
        if self.neuronrank_max_classes < 0:
            raise ConfigError(f"neuronrank_max_classes {self.neuronrank_max_classes} must be >= 0")
        METHODS[self.prune_method].validate(self)

    @property
    def prune_n(self) -> int:
        """N of N:M (0 when unstructured)."""
        return parse_sparsity_type(self.sparsity_type)[0]

    @property
    def prune_m(self) -> int:
        """M of N:M (0 when unstructured)."""
        return parse_sparsity_type(self.sparsity_type)[1]

    def to_dict(self) -> dict:
        """Plain dict for results.json."""
        return dataclasses.asdict(self)
