"""The method registry: a name, the collectors it needs, and pure functions. Imports no method.

Score methods: `score(W [out, in], stats, config) -> scores [out, in]`, low score = pruned, masked by the one
mask function (per row, or per layer for magnitude; N:M when asked).
Reconstruction methods (SparseGPT and the ablations): `update(W [out, in], stats, config) -> W' [out, in]`
with the pruned weights set to zero and the rest adjusted.
Layer methods (structured, e.g. NeuronRank neurons): `prune_layer(layer, linears, stats, config)`.

Method families live in `lib/methods/`, one module each, registering themselves on import; `lib.methods`
imports them all. A new method is one module there and one oracle test (IMPLEMENTATION_SUMMARY.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lib.config import ConfigError, PruneConfig, suggest

if TYPE_CHECKING:
    import torch

    from lib.collectors import Collector

Score = Callable[["torch.Tensor", dict, PruneConfig], "torch.Tensor"]


@dataclass(frozen=True)
class Method:
    """One registry entry: score or update, and/or prune_layer (used when `prunes_layer(config)`)."""

    name: str
    collectors: tuple[type[Collector], ...]
    score: Score | None = None
    update: Score | None = None
    prune_layer: Callable | None = None
    # "row" or "layer": the scores a mask compares; or a function(config) -> either (RIA's --ria_group).
    group: str | Callable[[PruneConfig], str] = "row"
    supports_variant: bool = False
    # Optional: a function(config) raising ConfigError for settings this method cannot honour.
    check: Callable[[PruneConfig], None] | None = None
    # Optional: a function(stats, config) -> small JSON-able summary, recorded per linear with --save_stats.
    summarize: Callable[[dict, PruneConfig], dict] | None = None
    # Optional: a function(calib_ids [n, seqlen], config) -> dict, run once before the layer walk; its items are
    # keyword arguments to every collector's constructor (NeuronRank's top-K token classes).
    prepare: Callable[["torch.Tensor", PruneConfig], dict] | None = None
    # Optional: a function(config) -> True when this run uses prune_layer rather than score/update (one method
    # name, two granularities: --nr_granularity). Without it, prune_layer is used whenever it is set.
    structured: Callable[[PruneConfig], bool] | None = None
    help: str = ""

    def prunes_layer(self, config: PruneConfig) -> bool:
        """True when the driver hands whole layers to prune_layer (structured pruning) for this config."""
        if self.prune_layer is None:
            return False
        return self.structured is None or self.structured(config)

    def mask_group(self, config: PruneConfig) -> str:
        """'row' or 'layer': which scores the unstructured mask compares, for this config."""
        return self.group(config) if callable(self.group) else self.group

    def validate(self, config: PruneConfig) -> None:
        """Reject settings this method cannot honour, naming the value."""
        if config.use_variant and not self.supports_variant:
            variant_methods = sorted(n for n, m in METHODS.items() if m.supports_variant)
            raise ConfigError(f"--use_variant applies to Wanda-score methods {variant_methods}, "
                              f"not '{self.name}'")
        structured = self.prunes_layer(config)
        if config.nr_granularity == "neuron" and not structured:
            neuron_methods = sorted(n for n, m in METHODS.items() if m.prune_layer is not None)
            raise ConfigError(f"--nr_granularity neuron applies to {neuron_methods}, not '{self.name}'")
        if config.shrink and not structured:
            raise ConfigError(f"--shrink drops whole neurons; it needs --nr_granularity neuron (method "
                              f"'{self.name}', granularity '{config.nr_granularity}')")
        if structured and (config.prune_n or config.use_variant):
            what, fix = ((f"sparsity_type {config.sparsity_type}", "use --sparsity_type unstructured")
                         if config.prune_n else ("--use_variant", "drop --use_variant"))
            raise ConfigError(f"{what} applies to weight granularity; '{self.name}' with --nr_granularity "
                              f"{config.nr_granularity} removes whole neurons, {fix}")
        if self.check is not None:
            self.check(config)


METHODS: dict[str, Method] = {}
# Checks of the add-ons that compose with any score method (OWL, DSnoT, permutation): each add-on module
# registers its check(method, config) on import, so the registry imports none of them.
ADDON_CHECKS: list[Callable[[Method, PruneConfig], None]] = []


def register(method: Method) -> Method:
    """Add a method to the registry (names are unique)."""
    if method.name in METHODS:
        raise ValueError(f"method '{method.name}' is registered twice")
    METHODS[method.name] = method
    return method


def find_method(config: PruneConfig) -> Method:
    """The registered method config.prune_method names, after checking it can honour the config."""
    method = METHODS.get(config.prune_method)
    if method is None:
        raise ConfigError(f"unknown prune_method '{config.prune_method}'"
                          f"{suggest(config.prune_method, sorted(METHODS))}; choose from {sorted(METHODS)}")
    method.validate(config)
    for check in ADDON_CHECKS:
        check(method, config)
    return method
