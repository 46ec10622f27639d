"""Structured pruning of whole MLP neurons, for any per-input-channel importance (--nr_granularity neuron).

Neuron j of a decoder layer's MLP is row j of each widening linear (gate/up, fc1, dense_h_to_4h) and column j
of the narrowing one (down, fc2, dense_4h_to_h); the MLP is found by shape, not by model name. Importance is
a per-channel factor from the narrowing linear's input statistics times ||W_down[:, j]||_2. Without shrink the
neurons are zeroed (check_sparsity measures them); with shrink the linears are resized in place and the model
config's MLP width updated, so save_pretrained -> from_pretrained gives a smaller, faster model.

Any Wanda-form score |W_ij| * g_j gets this granularity for free: `Method(..., **neuron_pruner(score))`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar

import torch
from torch import nn

from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting

logger = logging.getLogger(__name__)

@register_settings
@dataclass(frozen=True)
class GranularitySettings(Settings):
    """What a method with a Wanda-form score removes: single weights, or whole MLP neurons (Method.structured)."""

    group: ClassVar[str] = "granularity (wanda, wanda_*, neuronrank*)"
    nr_granularity: str = setting("weight", "'weight' (default) or 'neuron' (whole MLP neurons)",
                                  choices=("neuron", "weight"))
    shrink: bool = setting(False, "neuron granularity: physically drop pruned neurons (a smaller model)")


# Config attributes that hold the MLP width, updated when --shrink removes neurons.
MLP_WIDTH_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size")


def find_mlp(linears: dict[str, nn.Linear]) -> tuple[list[str], str]:
    """The MLP of one decoder layer, by structure -> (names of the widening linears, name of the narrowing one).

    The narrowing ('down', fc2) linear maps more inputs to fewer outputs; the widening ones (gate/up, fc1) sit
    in the same module and map its output width to its input width. Square attention projections never match.
    """
    by_parent: dict[str, list[str]] = {}
    for name in linears:
        by_parent.setdefault(name.rpartition(".")[0], []).append(name)
    found = []
    for names in by_parent.values():
        for down in names:
            d = linears[down]
            if d.in_features <= d.out_features:
                continue
            ups = [u for u in names if u != down and linears[u].out_features == d.in_features
                   and linears[u].in_features == d.out_features]
            if ups:
                found.append((ups, down))
    if len(found) != 1:
        raise ConfigError(f"neuron granularity needs exactly one MLP per decoder layer (a linear widening the "
                          f"hidden size and one narrowing it back, in the same module); found {len(found)} among "
                          f"{sorted(linears)}")
    return found[0]


def _resize(linear: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep only rows (dim 0, with their bias entries) or columns (dim 1) `keep` of a linear, in place.

    The module object stays (hooks, references, accelerate's device hooks); only its tensors shrink.
    """
    weight = linear.weight
    linear.weight = nn.Parameter(weight.data.index_select(dim, keep.to(weight.device)).contiguous(),
                                 requires_grad=weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data[keep.to(linear.bias.device)].contiguous(),
                                       requires_grad=linear.bias.requires_grad)
        linear.out_features = keep.numel()
    else:
        linear.in_features = keep.numel()


def _shrink_config(layer: nn.Module, old_width: int, new_width: int) -> None:
    """Set the model config's MLP width (and modules' cached copies) so save_pretrained reloads with the new width."""
    configs = {id(c): c for m in layer.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "to_dict")}
    updated = []
    for cfg in configs.values():
        for key in MLP_WIDTH_KEYS:
            # An earlier layer may already have set the new width (the count is the same in every layer).
            if getattr(cfg, key, None) in (old_width, new_width):
                setattr(cfg, key, new_width)
                updated.append(key)
    if not updated:
        raise ConfigError(f"--shrink found no model config attribute among {list(MLP_WIDTH_KEYS)} equal to the "
                          f"MLP width {old_width}; run without --shrink to zero the neurons instead")
    for module in layer.modules():
        if getattr(module, "intermediate_size", None) == old_width:
            module.intermediate_size = new_width


def check_shrinkable(layer: nn.Module, width: int) -> None:
    """Fail before touching weights when the MLP width cannot be written back to the config."""
    configs = [c for m in layer.modules() if (c := getattr(m, "config", None)) is not None and hasattr(c, "to_dict")]
    if not any(isinstance(getattr(c, key, None), int) for c in configs for key in MLP_WIDTH_KEYS):
        raise ConfigError(f"--shrink found no model config attribute among {list(MLP_WIDTH_KEYS)} for the MLP "
                          f"width {width}; run without --shrink to zero the neurons instead")


@torch.no_grad()
def prune_neurons(layer: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, dict], config: PruneConfig,
                  importance: Callable[[dict, PruneConfig], torch.Tensor]) -> None:
    """Remove the int(ratio * width) least important MLP neurons of one layer: zero them, or drop them with shrink.

    importance(stats of the narrowing linear's input, config) -> per-channel factor [width]; it is multiplied
    by ||W_down[:, j]||_2, the neuron's write-out norm.
    """
    ups, down = find_mlp(linears)
    width = linears[down].in_features
    if config.shrink:
        check_shrinkable(layer, width)
    score = importance(stats[down], config).to(linears[down].weight.device).float()
    score = score * linears[down].weight.float().norm(dim=0)
    order = score.argsort(stable=True)
    removed = int(width * config.sparsity_ratio)
    drop, keep = order[:removed], order[removed:].sort().values
    logger.debug("MLP %s: removing %d of %d neurons%s", down, removed, width, " (shrink)" if config.shrink else "")
    if config.shrink:
        for name in ups:
            _resize(linears[name], keep, dim=0)
        _resize(linears[down], keep, dim=1)
        _shrink_config(layer, width, keep.numel())
        return
    for name in ups:
        linears[name].weight[drop.to(linears[name].weight.device)] = 0
        if linears[name].bias is not None:
            linears[name].bias[drop.to(linears[name].bias.device)] = 0
    linears[down].weight[:, drop.to(linears[down].weight.device)] = 0


def score_channel_importance(stats: dict, config: PruneConfig,
                             score: Callable[[torch.Tensor, dict, PruneConfig], torch.Tensor]) -> torch.Tensor:
    """Per-channel factor g_j [in] of any Wanda-form score |W_ij| * g_j, read off as score(ones [1, in])."""
    ones = torch.ones(1, stats["scaler_row"].numel(), device=stats["scaler_row"].device)
    return score(ones, stats, config)[0]


def neuron_granularity(config: PruneConfig) -> bool:
    """True when this run removes whole MLP neurons (--nr_granularity neuron)."""
    return config.nr_granularity == "neuron"


def neuron_pruner(score: Callable[[torch.Tensor, dict, PruneConfig], torch.Tensor]) -> dict:
    """Method fields giving any Wanda-form score a neuron granularity: Method(..., **neuron_pruner(score))."""
    return {"prune_layer": partial(prune_neurons, importance=partial(score_channel_importance, score=score)),
            "structured": neuron_granularity}
