"""The one layer-walk driver every method goes through (llm-compressor's sequential pipeline, Wanda's loop).

1. Capture what the first decoder layer receives for each calibration sequence: hidden states and every
   keyword argument (attention mask, position ids, rotary position_embeddings, cache position ...).
2. Per layer, three phases (llm-compressor's sequential pipeline): calibrate (hook each linear's input into
   the method's collectors and run the calibration sequences through the layer), compress (score and mask, or
   reconstruct, each linear), propagate (re-run the pruned layer so the next layer sees its outputs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from lib.checks import check_finite_activations, check_finite_stats
from lib.collectors import Collector
from lib.config import ConfigError, PruneConfig
from lib.models import find_decoder_layers, find_linears, input_device
from lib.offload import LayerStore
from lib.plugins import find_method, selected_addons
from lib.registry import (AddOn, ColumnOrder, DenseWalk, LayerRatioPolicy, LinearMask, MaskRefiner, Method,
                          WeightReconstruction)
from lib.sparsity import make_mask, make_variant_mask

logger = logging.getLogger(__name__)


# Tokens per layer call when --calib_batch_size is 0 (auto): 16 sequences of 512, 4 of 2048.
CALIB_TOKENS_PER_BATCH = 8192


def calib_batch_size(config: PruneConfig, seqlen: int) -> int:
    """Calibration sequences per layer call: --calib_batch_size, or (0) as many as fit CALIB_TOKENS_PER_BATCH."""
    return config.calib_batch_size or max(1, CALIB_TOKENS_PER_BATCH // max(seqlen, 1))


class _StopForward(Exception):
    """Raised by the capture hook to stop the model's forward after the first decoder layer's inputs."""


@dataclass
class PruneReport:
    """What prune_model did: per-layer sparsity and seconds, and per-linear statistic summaries on request."""

    method: str
    layer_sparsity: list[float] = field(default_factory=list)
    layer_seconds: list[float] = field(default_factory=list)
    layer_stats: dict[str, dict] = field(default_factory=dict)
    # The add-ons' fields for results.json (OWL's layer_ratios, DSnoT's refine_swaps ...), after the run.
    addon_results: dict = field(default_factory=dict)
    # True when a layer lost weights from its shape (structured pruning with --shrink), not only to zeros.
    shrunk: bool = False

    def results(self) -> dict:
        """The fields the add-ons add to results.json."""
        return self.addon_results

    @property
    def sparsity(self) -> float:
        """Mean of the per-layer fractions (layers have equal shapes in every supported family)."""
        return sum(self.layer_sparsity) / max(len(self.layer_sparsity), 1)


def to_device(obj, device: torch.device, memo: dict | None = None):
    """Move every tensor inside obj (tensors, tuples, lists, dicts) to device; other values unchanged.

    memo (id -> moved tensor) makes a tensor shared by several layers' arguments move once and stay shared.
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # keep obj alive so its id is not reused
        return memo[id(obj)][1]
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device, memo) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, memo) for k, v in obj.items()}
    return obj


def layer_device(layer: nn.Module) -> torch.device:
    """The device of a decoder layer's weights (differs per layer under device_map='auto')."""
    return next(layer.parameters()).device


def hidden_of(output) -> torch.Tensor:
    """A decoder layer returns a tensor or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, (tuple, list)) else output


# Keyword arguments that carry a KV cache (None with use_cache=False); a layer walk must not pass one along.
CACHE_KWARGS = ("past_key_values", "past_key_value", "cache", "layer_past", "use_cache")


def activation_device(device: torch.device, shape: tuple, dtype: torch.dtype) -> torch.device:
    """Where the two calibration activation buffers live: the execution device when both fit in half its free
    memory, else the CPU (each batch then visits the device as it is used)."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    need = 2 * math.prod(shape) * dtype.itemsize
    if need <= free // 2:
        return device
    logger.info("calibration activations (%.1f GiB for two buffers) stay on the CPU", need / 2**30)
    return torch.device("cpu")


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList,
                         calib_ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """calib_ids [n, seqlen] -> (first layer's hidden inputs [n, seqlen, hidden], every layer's keyword arguments).

    Layers do not all get the same arguments: sliding-window and full-attention layers (Gemma2/3, any config
    with layer_types) get different masks, Gemma3's local and global layers different rotary tables. So one
    more forward of the first sequence records what the model's own forward hands each layer, with every
    layer's forward replaced by a recorder that passes its input through (no layer computes). Arguments
    shared by several layers stay one tensor. Every sequence has the same length and no padding, so the
    arguments do not depend on which sequence is used.
    """
    device = input_device(model)
    inps: torch.Tensor | None = None

    def first_layer_input(module, args, kwargs):
        nonlocal inps
        hidden = args[0] if args else kwargs["hidden_states"]
        if inps is None:
            shape = (calib_ids.shape[0], *hidden.shape[1:])
            inps = torch.empty(shape, dtype=hidden.dtype, device=activation_device(hidden.device, shape, hidden.dtype))
        inps[i] = hidden[0]
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(first_layer_input, with_kwargs=True)
    try:
        for i in range(calib_ids.shape[0]):
            with contextlib.suppress(_StopForward):
                model(calib_ids[i:i + 1].to(device), use_cache=False)
    finally:
        handle.remove()
    return inps, record_layer_kwargs(model, layers, calib_ids[:1].to(device))


def record_layer_kwargs(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor) -> list[dict]:
    """What the model's forward passes each decoder layer besides the hidden states, for input ids [1, seqlen]."""
    recorded: list[dict] = []

    def recorder(index: int):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            recorded.append({k: v for k, v in kwargs.items() if k not in CACHE_KWARGS and k != "hidden_states"})
            if index == len(layers) - 1:
                raise _StopForward
            # The masks and rotary tables are built before the first layer, so whatever flows between the
            # recorders does not matter: a family that takes outputs[0] (Falcon) gets a slice, which is fine.
            return hidden
        return forward

    # Replace forward on the instances (not hooks: a hook cannot skip the layer); restore whatever was there
    # before, such as accelerate's device hooks, which also live in the instance's forward attribute.
    saved = [layer.__dict__.get("forward") for layer in layers]
    try:
        for index, layer in enumerate(layers):
            layer.forward = recorder(index)
        with contextlib.suppress(_StopForward):
            model(ids, use_cache=False)
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    if len(recorded) != len(layers):
        raise RuntimeError(f"the model's forward called {len(recorded)} of its {len(layers)} decoder layers")
    return recorded


class CalibrationHooks:
    """Forward hooks that feed every linear's input to fresh collectors, for one layer's calibrate phase.

    Use as a context manager (hooks removed on exit); call `next_batch(token_ids)` before each forward of the
    layer and `finalize()` after the last. Linears that read the very same input tensor (q/k/v, gate/up)
    share one set of collectors: the first to see the tensor in a forward owns it, the others alias it.
    `context` (from method.prepare) goes to every collector's constructor as keyword arguments.
    """

    def __init__(self, linears: dict[str, nn.Linear], classes: tuple[type[Collector], ...], config: PruneConfig,
                 context: dict | None = None) -> None:
        self.linears = linears
        self.collectors = {name: [cls(lin.in_features, config, **(context or {})) for cls in classes]
                           for name, lin in linears.items()}
        self.aliases: dict[str, str] = {}
        self._owner: dict[int, tuple[str, torch.Tensor]] = {}  # id(input) -> (first linear, input), this batch
        self._token_ids: torch.Tensor | None = None
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            if name in self.aliases:
                return
            owner = self._owner.get(id(x))
            if owner is not None and owner[1] is x:
                self.aliases[name] = owner[0]
                return
            self._owner[id(x)] = (name, x)
            if x.dim() == 2 and self._token_ids is not None:
                # Some layers flatten tokens before the MLP (OPT's fc1/fc2): restore [sequences, tokens, in] so
                # collectors count sequences, not batches (scales must agree across a layer's linears for OWL).
                x = x.reshape(self._token_ids.shape[0], -1, x.shape[-1])
            # One sequence at a time: every collector then sums in the same order whatever --calib_batch_size
            # is, so float32 rounding (which SparseGPT's updates and NeuronRank's variances amplify) cannot
            # depend on it; the forward itself stays batched.
            ids = self._token_ids
            for i in range(x.shape[0]) if x.dim() == 3 else [None]:
                part, part_ids = (x, ids) if i is None else (x[i:i + 1], None if ids is None else ids[i:i + 1])
                for collector in self.collectors[name]:
                    collector.add_batch(part.detach(), part_ids)
        return hook

    def __enter__(self) -> CalibrationHooks:
        if any(self.collectors.values()):
            self._handles = [lin.register_forward_hook(self._hook(name)) for name, lin in self.linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._owner = [], {}

    def next_batch(self, token_ids: torch.Tensor | None) -> None:
        """Before each layer forward: the batch's token ids [b, seqlen]; forget the last batch's tensors."""
        self._owner.clear()
        self._token_ids = token_ids

    def finalize(self) -> dict[str, dict]:
        """{linear name: statistics}; aliased linears get their owner's (the same tensors, not copies)."""
        finalized: dict[str, dict] = {}
        for name, collectors in self.collectors.items():
            if name not in self.aliases:
                finalized[name] = {}
                for collector in collectors:
                    finalized[name].update(collector.finalize())
        return {name: finalized[self.aliases.get(name, name)] for name in self.linears}


@torch.no_grad()
def calibrate(layer: nn.Module, linears: dict[str, nn.Linear], inps: torch.Tensor, kwargs: dict,
              calib_ids: torch.Tensor, collectors: tuple[type[Collector], ...], config: PruneConfig, context: dict,
              batch: int) -> dict[str, dict]:
    """Calibrate phase: run inps [n, seqlen, hidden] through the layer in batches -> {linear: statistics}."""
    with CalibrationHooks(linears, collectors, config, context) as hooks:
        for j in range(0, inps.shape[0], batch):
            x = inps[j:j + batch].to(layer_device(layer))
            hooks.next_batch(calib_ids[j:j + batch].to(x.device))
            layer(x, **kwargs)
    return hooks.finalize()


def of_kind(addons: list[AddOn], kind: type) -> list:
    """The add-ons of one kind, in registry order."""
    return [addon for addon in addons if isinstance(addon, kind)]


def choose_mask(item: LinearMask, method: Method, config: PruneConfig, addons: list[AddOn]) -> None:
    """item.order and item.mask from the score: the column order's (if any), a reconstruction's own mask (gradual
    pruning) or the one mask function (or Wanda's variant), then every mask refiner in turn."""
    for column_order in of_kind(addons, ColumnOrder):  # at most one: --permute selects it
        item.order = column_order.order(item.scores)
        item.scores = item.ordered(item.scores)
    for reconstruction in of_kind(addons, WeightReconstruction):  # at most one: --reconstruct selects it
        item.mask = reconstruction.select(item, method, config)
    if item.mask is None and config.use_variant and not config.prune_n:
        item.mask = make_variant_mask(item.scores, config.sparsity_ratio)
    elif item.mask is None:
        item.mask = make_mask(item.scores, config.sparsity_ratio, config.prune_n, config.prune_m,
                              method.mask_group(config))
    for refiner in of_kind(addons, MaskRefiner):
        item.mask = refiner.refine(item)


def prune_linear(name: str, linear: nn.Linear, stats: dict, method: Method, config: PruneConfig,
                 addons: list[AddOn]) -> None:
    """Prune one linear in place: the method's reconstruction, or its score -> mask -> the add-ons' post-steps.

    A weight reconstruction fits the dense weights' outputs with the final mask, in the stored column order, which
    is the statistics' order: before a column order folds into the MLP (so the statistics need no reordering).
    """
    W = linear.weight.data
    if method.update is not None:
        linear.weight.data = method.update(W.float(), stats, config).to(W.dtype)
        return
    weight = W.float()
    item = LinearMask(name, weight, stats, method.score(weight, stats, config))
    choose_mask(item, method, config, addons)
    mask = item.stored_mask()
    for reconstruction in of_kind(addons, WeightReconstruction):  # item.weight is still the dense weights
        linear.weight.data = reconstruction.reconstruct(item.weight, mask, stats).to(W.dtype)
    linear.weight.data[mask] = 0
    for column_order in of_kind(addons, ColumnOrder):
        column_order.apply(linear, item)


def compress(layer: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, dict], method: Method,
             config: PruneConfig, addons: list[AddOn] = (), index: int = 0, ratio: float | None = None) -> None:
    """Compress phase: prune every linear of decoder layer `index` in place (or the whole layer, for structured
    methods). ratio: this layer's sparsity (a layer-ratio policy's), default config.sparsity_ratio."""
    if ratio is not None and ratio != config.sparsity_ratio:
        config = dataclasses.replace(config, sparsity_ratio=ratio)
    if method.prunes_layer(config):
        method.prune_layer(layer, linears, stats, config)
        return
    for addon in addons:
        addon.start_layer(index, linears)
    # Linears reading one input (q/k/v, gate/up) share its statistics and what the solvers cache there (an
    # [in, in] factor each); dropped after the last of them, so at most one input's cache is alive at a time.
    last_reader = {id(stats[name]): name for name in linears}
    caches = [*method.caches, *(key for addon in addons for key in addon.caches)]
    for name, linear in linears.items():
        prune_linear(name, linear, stats[name], method, config, addons)
        if last_reader[id(stats[name])] == name:
            for key in caches:
                stats[name].pop(key, None)


@torch.no_grad()
def propagate(layer: nn.Module, inps: torch.Tensor, outs: torch.Tensor, kwargs: dict, batch: int) -> None:
    """Propagate phase: the pruned layer's outputs written into outs [n, seqlen, hidden], batch by batch."""
    device = layer_device(layer)
    for j in range(0, inps.shape[0], batch):
        outs[j:j + batch] = hidden_of(layer(inps[j:j + batch].to(device), **kwargs))


# No autograd anywhere in the walk, whoever calls it: a forward with grad on keeps every layer's graph alive through
# the activation buffers (15.7 GiB by layer 10 of smollm2 with 128 windows). torch.no_grad wraps a generator's every
# resume; the caller's body between resumes runs under the caller's own mode, so calibrate has its own decorator.
@torch.no_grad()
def layer_walk(model: nn.Module, layers: nn.ModuleList, calib_ids: torch.Tensor, needs_data: bool, batch: int,
               store: LayerStore | None, changes_weights: bool, desc: str, seconds: list[float] | None = None):
    """The walk every pass shares: yields (index, layer on its device, inps, kwargs) per decoder layer; when the
    caller's body for that layer is done, propagates the layer's outputs (the next layer's inputs) into the
    second activation buffer, swaps the buffers, and offloads the layer (written back if it changed).

    Without data (magnitude) inps and kwargs are None and nothing is captured or propagated. seconds, when
    given, receives each layer's wall time (onload, the caller's body, propagate, offload).
    """
    if needs_data:
        # Two activation buffers for the whole walk: a layer reads one and writes the other, then they swap.
        inps, layer_kwargs = capture_layer_inputs(model, layers, calib_ids)
        outs = torch.empty_like(inps)
        moved: dict[torch.device, dict] = {}  # per device: kwargs tensors already moved there
    progress = tqdm(range(len(layers)), desc=desc)
    for i in progress:
        progress.set_description(f"{desc} ({i + 1}/{len(layers)})")
        start = time.time()
        layer = store.onload(i) if store is not None else layers[i]
        kwargs = None
        if needs_data:
            device = layer_device(layer)
            if inps.device != device and store is None:  # device_map='auto': the next layers on another GPU
                inps, outs = inps.to(device), outs.to(device)
            kwargs = to_device(layer_kwargs[i], device, moved.setdefault(device, {}))
        yield i, layer, (inps if needs_data else None), kwargs
        if needs_data:
            propagate(layer, inps, outs, kwargs, batch)
            inps, outs = outs, inps
            check_finite_activations(i, inps)
        if store is not None:
            store.offload(i, changed=changes_weights)
        if seconds is not None:
            seconds.append(time.time() - start)


def dense_walk(model: nn.Module, layers: nn.ModuleList, calib_ids: torch.Tensor, config: PruneConfig, batch: int,
               store: LayerStore | None) -> DenseWalk:
    """The walk a layer-ratio policy may run before pruning: per layer, (linears, their statistics from the given
    collectors), weights untouched; each layer's inputs come from the dense layers before it."""
    def walk(collectors: tuple[type[Collector], ...], context: dict, desc: str):
        for i, layer, inps, kwargs in layer_walk(model, layers, calib_ids, bool(collectors), batch, store, False, desc):
            linears = find_linears(layer)
            stats: dict[str, dict] = {name: {} for name in linears}
            if inps is not None:
                stats = calibrate(layer, linears, inps, kwargs, calib_ids, collectors, config, context, batch)
            yield linears, stats
    return walk


def needs_calibration(method: Method, config: PruneConfig) -> bool:
    """True when pruning reads calibration data: the method's collectors or an add-on's."""
    if config.sparsity_ratio == 0:
        return False
    return bool(method.collectors) or any(addon.needs_calibration(method) for addon in selected_addons(config))


def check_layers(layers: nn.ModuleList, config: PruneConfig) -> None:
    """Fail before any work if some linear's input width is not a multiple of M, a settings section's check of
    the first layer's shapes fails, or an add-on cannot honour the layer count (works on the meta device)."""
    linears = find_linears(layers[0])
    if config.prune_m:
        for name, linear in linears.items():
            if linear.in_features % config.prune_m:
                raise ConfigError(f"layer '{name}' has {linear.in_features} input columns, not a multiple of "
                                  f"M={config.prune_m}; {config.sparsity_type} cannot apply")
    for section in config.sections:
        section.check_layer(linears)
    for addon in selected_addons(config):
        addon.check_model(len(layers))


def layer_sparsity(linears: dict[str, nn.Linear], original: int) -> float:
    """Zeros plus weights removed by shrinking, over the layer's weight count before pruning."""
    zeros = sum((lin.weight == 0).sum().item() for lin in linears.values())
    remaining = sum(lin.weight.numel() for lin in linears.values())
    return (zeros + original - remaining) / original


def layer_ratios(model: nn.Module, layers: nn.ModuleList, calib_ids: torch.Tensor, method: Method,
                 config: PruneConfig, addons: list[AddOn], context: dict, batch: int,
                 store: LayerStore | None) -> list[float]:
    """Each layer's sparsity: the layer-ratio policy's, else config.sparsity_ratio everywhere."""
    for policy in of_kind(addons, LayerRatioPolicy):
        walk = dense_walk(model, layers, calib_ids, config, batch, store)
        return policy.ratios(walk, method, context, len(layers))
    return [config.sparsity_ratio] * len(layers)


@torch.no_grad()
def prune_model(model: nn.Module, calib_ids: torch.Tensor, config: PruneConfig, record_stats: bool = False,
                store: LayerStore | None = None) -> PruneReport:
    """Prune every decoder linear of `model` in place; calib_ids [nsamples, seqlen] token ids.

    With a store (lib/offload.py) each layer is onloaded to the execution device for its three phases and
    offloaded after; the activations stay where capture put them (the execution device) and each batch is
    moved to the layer's device as it is used.
    """
    method = find_method(config)
    layers = find_decoder_layers(model)
    check_layers(layers, config)
    report = PruneReport(method.name)
    if config.sparsity_ratio == 0:
        logger.info("sparsity_ratio 0: nothing to prune")
        return report
    calib_ids = calib_ids[:config.nsamples]
    # Several sequences per layer call: on CPU this is ~5x faster than Wanda's one at a time, and collectors
    # are batch-split invariant, so the statistics are the same.
    batch = calib_batch_size(config, calib_ids.shape[1])
    context = method.prepare(calib_ids, config) if method.prepare is not None else {}
    addons = selected_addons(config)
    ratios = layer_ratios(model, layers, calib_ids, method, config, addons, context, batch, store)
    # The method's collectors plus those the add-ons need, each class once.
    collectors = tuple(dict.fromkeys(method.collectors + sum((addon.collectors for addon in addons), ())))
    for i, layer, inps, kwargs in layer_walk(model, layers, calib_ids, bool(collectors), batch, store, True,
                                             "pruning layer", report.layer_seconds):
        linears = find_linears(layer)
        stats: dict[str, dict] = {name: {} for name in linears}
        if inps is not None:
            stats = calibrate(layer, linears, inps, kwargs, calib_ids, collectors, config, context, batch)
            for name, linear_stats in stats.items():
                check_finite_stats(i, name, linear_stats)
        # Structured methods may shrink linears: count removed weights as pruned, against the original size.
        original = sum(lin.weight.numel() for lin in linears.values())
        compress(layer, linears, stats, method, config, addons, i, ratios[i])
        report.shrunk |= sum(lin.weight.numel() for lin in linears.values()) != original
        if record_stats and method.summarize is not None:
            for name in linears:
                report.layer_stats[f"layers.{i}.{name}"] = method.summarize(stats[name], config)
        report.layer_sparsity.append(layer_sparsity(linears, original))
        logger.info("layer %d/%d: sparsity %.4f", i + 1, len(layers), report.layer_sparsity[-1])
    for addon in addons:
        report.addon_results.update(addon.results())
    return report
