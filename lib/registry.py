"""The registries of methods and add-ons: names, the collectors they need, and small functions. Imports no plug-in.

Score methods: `score(W [out, in], stats, config) -> scores [out, in]`, low score = pruned, masked by the one
mask function (per row, or per layer for magnitude; N:M when asked).
Reconstruction methods (SparseGPT and the ablations): `update(W [out, in], stats, config) -> W' [out, in]`
with the pruned weights set to zero and the rest adjusted.
Layer methods (structured, e.g. NeuronRank neurons): `prune_layer(layer, linears, stats, config)`.

Method families live in `lib/methods/`, one module each, registering themselves on import; `lib.methods`
imports them all. A new method is one module there and one oracle test (IMPLEMENTATION_SUMMARY.md).

Add-ons compose with the score methods and come in four kinds, each a class below with a small interface; the
driver calls them through it and names none (llm-compressor turns `sparsity_profile="owl"` into a plain
per-layer list the same way). One instance runs per prune_model call and keeps that run's results:
  LayerRatioPolicy      per-layer sparsities, from a dense calibration walk before pruning (OWL);
  ColumnOrder           the column order an N:M mask is chosen in, and how the mask lands on the weights (permute);
  MaskRefiner           a post-step changing a linear's mask (DSnoT);
  WeightReconstruction  a post-step fitting the kept weights to the dense ones' outputs given the final mask and the
                        statistics (the layer's Hessian from lib.collectors.InputHessian, the one Hessian collector).
Add-on modules live in `lib/addons/`, registering themselves with `register_addon`; `lib.addons` imports them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from lib.config import ConfigError, PruneConfig, suggest

if TYPE_CHECKING:
    import torch
    from torch import nn

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
    # Keys this method caches in an input's statistics (SparseGPT's inverse factor), shared by the linears reading
    # that input; the driver drops them once the last of those linears is pruned.
    caches: tuple[str, ...] = ()
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


def register(method: Method) -> Method:
    """Add a method to the registry (names are unique)."""
    if method.name in METHODS:
        raise ValueError(f"method '{method.name}' is registered twice")
    METHODS[method.name] = method
    return method


def find_method(config: PruneConfig) -> Method:
    """The registered method config.prune_method names, after checking it and the add-ons can honour the config."""
    method = METHODS.get(config.prune_method)
    if method is None:
        raise ConfigError(f"unknown prune_method '{config.prune_method}'"
                          f"{suggest(config.prune_method, sorted(METHODS))}; choose from {sorted(METHODS)}")
    method.validate(config)
    for addon in selected_addons(config):
        addon.check(method)
    return method


@dataclass
class LinearMask:
    """One linear's mask as the compress phase builds it, handed to the add-ons in turn.

    scores and mask have their columns in `order` (column j is stored column order[j]; None: the stored order).
    """

    name: str
    weight: torch.Tensor  # W [out, in] float, stored column order, not yet pruned
    stats: dict  # the linear's statistics (stored column order)
    scores: torch.Tensor  # [out, in], low = pruned
    order: torch.Tensor | None = None  # [in]
    mask: torch.Tensor | None = None  # [out, in] bool, True = pruned

    def ordered(self, t: torch.Tensor) -> torch.Tensor:
        """The last dimension of t ([in] or [out, in]) in `order`."""
        return t if self.order is None else t[..., self.order.to(t.device)]

    def stored_mask(self) -> torch.Tensor:
        """mask [out, in] with its columns back in the stored order."""
        if self.order is None:
            return self.mask
        return self.mask.new_zeros(self.mask.shape).index_copy_(1, self.order.to(self.mask.device), self.mask)


# A dense calibration walk a layer-ratio policy may run: (collector classes, collector context, progress label)
# -> per decoder layer, (its linears {name: nn.Linear}, their statistics {name: dict}); weights untouched.
DenseWalk = Callable[[tuple, dict, str], Iterator[tuple[dict, dict]]]


class AddOn:
    """Base of the add-on kinds. A kind names the PruneConfig field that selects its add-ons (`selector`, with
    `off` when none runs); an add-on sets `name`, `help`, the `collectors` it adds to the pruning walk, and
    overrides what it needs. `check` refuses method/setting combinations it cannot honour, in one line."""

    kind: ClassVar[str] = ""
    selector: ClassVar[str] = ""
    off: ClassVar[Any] = None
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    collectors: ClassVar[tuple[type[Collector], ...]] = ()
    caches: ClassVar[tuple[str, ...]] = ()  # as Method.caches: dropped after the last linear reading the input

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    @classmethod
    def selected(cls, config: PruneConfig) -> bool:
        """True when the config turns this add-on on (a boolean selector: when it is set)."""
        value = getattr(config, cls.selector, cls.off)
        return value is True if isinstance(value, bool) else value == cls.name

    def check(self, method: Method) -> None:
        """Raise ConfigError for a combination with `method` (or a setting) this add-on cannot honour."""

    def needs_calibration(self, method: Method) -> bool:
        """True when this add-on reads calibration data (its collectors, or its own dense walk)."""
        return bool(self.collectors)

    def check_model(self, layers: int) -> None:
        """Raise ConfigError for a model this add-on cannot honour: `layers` decoder layers (counted on the meta
        device, before any weight loads)."""

    def start_layer(self, index: int, linears: dict[str, nn.Linear]) -> None:
        """Called before the compress phase of decoder layer `index` (0-based) with its linears."""

    def results(self) -> dict:
        """The fields this add-on adds to results.json (JSON-able), after the run."""
        return {}


class LayerRatioPolicy(AddOn):
    """Per-layer sparsities whose mean is the target (--layer_ratios NAME)."""

    kind, selector, off = "layer ratios", "layer_ratios", "uniform"
    nm_note: ClassVar[str] = ""  # appended to the N:M refusal (e.g. what upstream does)

    def check(self, method: Method) -> None:
        """Per-layer sparsities need unstructured weight pruning: N:M and whole-neuron granularity are refused."""
        config = self.config
        if config.prune_n:
            raise ConfigError(f"--layer_ratios {self.name} gives each layer its own sparsity, but sparsity_type "
                              f"{config.sparsity_type} fixes every layer at {config.prune_n}/{config.prune_m}; use "
                              f"--sparsity_type unstructured{self.nm_note}")
        if method.prunes_layer(config):
            raise ConfigError(f"--layer_ratios {self.name} sets weight sparsity per layer; '{method.name}' with "
                              f"--nr_granularity {config.nr_granularity} removes whole neurons")

    def ratios(self, walk: DenseWalk, method: Method, context: dict, layers: int) -> list[float]:
        """Each decoder layer's sparsity; `walk` runs the dense model's calibration if the policy needs it."""
        raise NotImplementedError


class ColumnOrder(AddOn):
    """The column order an N:M mask is chosen in (--permute), and how the mask then lands on the weights. One is
    registered at a time (the selector is a switch)."""

    kind, selector, off = "column order", "permute", False

    def order(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [out, in] -> order [in]: new column j is stored column order[j]."""
        raise NotImplementedError

    def apply(self, linear: nn.Linear, item: LinearMask) -> torch.Tensor:
        """Zero item.mask's weights of `linear` (the mask is in item.order) -> the mask in the stored order."""
        raise NotImplementedError


class MaskRefiner(AddOn):
    """A post-step on a linear's mask, before any weight is zeroed (--refine NAME)."""

    kind, selector, off = "mask refinement", "refine", "none"

    def refine(self, item: LinearMask) -> torch.Tensor:
        """-> the new mask [out, in], columns in item.order, the same count per row (or per N:M group)."""
        raise NotImplementedError


class WeightReconstruction(AddOn):
    """A post-step on the kept weights given the final mask (--reconstruct NAME, the setting its module declares).

    The statistics are in the input order the calibration saw, which is the stored order when reconstruct runs:
    the driver calls it before a column order (--permute) folds into the MLP."""

    kind, selector, off = "weight reconstruction", "reconstruct", "none"

    def select(self, item: LinearMask, method: Method, config: PruneConfig) -> torch.Tensor | None:
        """A reconstruction that chooses the mask itself (gradual pruning) returns it [out, in] here, from the
        unpruned item.weight and this layer's config (its sparsity); None (default): the mask function chooses."""
        return None

    def reconstruct(self, W: torch.Tensor, mask: torch.Tensor, stats: dict) -> torch.Tensor:
        """W [out, in] float, the dense weights (a layer-wise objective fits their outputs), mask [out, in] ->
        W' [out, in], zero where mask. Called before a column order folds into the MLP: W, mask and the
        statistics share the stored order."""
        raise NotImplementedError


# The order checks run and results.json lists their fields; the driver runs each kind at its own step.
KINDS: tuple[type[AddOn], ...] = (LayerRatioPolicy, MaskRefiner, ColumnOrder, WeightReconstruction)
ADDONS: dict[str, type[AddOn]] = {}


def register_addon(addon: type[AddOn]) -> type[AddOn]:
    """Add an add-on class to the registry (names are unique, the kind one of KINDS); usable as a decorator."""
    if addon.name in ADDONS or not addon.name:
        raise ValueError(f"add-on '{addon.name}' is registered twice or has no name")
    kind = next((kind for kind in KINDS if issubclass(addon, kind)), None)
    if kind is None:
        raise ValueError(f"add-on '{addon.name}' is none of the kinds {[k.__name__ for k in KINDS]}")
    if isinstance(kind.off, bool) and addon_names(kind):  # a switch selects every add-on of its kind
        raise ValueError(f"add-on '{addon.name}': --{kind.selector} already selects {addon_names(kind)}")
    ADDONS[addon.name] = addon
    return addon


def addon_names(kind: type[AddOn]) -> list[str]:
    """The registered add-ons of one kind, sorted."""
    return sorted(name for name, cls in ADDONS.items() if issubclass(cls, kind))


def selector_choices() -> dict[str, tuple]:
    """{selector field: (off, every registered name)} of the kinds chosen by name, for --help."""
    return {kind.selector: (kind.off, *addon_names(kind)) for kind in KINDS if not isinstance(kind.off, bool)}


def check_selectors(config: PruneConfig) -> None:
    """Every kind's selector names a registered add-on of that kind (or is off)."""
    for kind in KINDS:
        value = getattr(config, kind.selector, kind.off)
        if isinstance(value, bool) or value == kind.off:
            continue
        names = addon_names(kind)
        if value not in names:
            raise ConfigError(f"unknown {kind.selector} '{value}'{suggest(str(value), names)}; choose from "
                              f"{[kind.off, *names]}")


def selected_addons(config: PruneConfig) -> list[AddOn]:
    """One instance of every add-on the config turns on, in KINDS' order."""
    check_selectors(config)
    return [cls(config) for kind in KINDS for cls in ADDONS.values() if issubclass(cls, kind) and cls.selected(config)]
