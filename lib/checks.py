"""Checks that stop a run with one line before it wastes work or writes garbage: output folders that cannot be
written, non-finite weights or statistics, floats that JSON cannot hold. Imports no model code; torch only
inside the functions that take tensors.

    check_output_dir("--save", "out/wanda")               # before the model loads
    check_finite_weights(layers)                          # after it loads, before calibration
    check_finite_stats(3, "mlp.down_proj", stats)         # in the driver, after a layer's calibrate phase
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.errors import ConfigError, RunError

if TYPE_CHECKING:
    import torch
    from torch import nn


class NonFiniteError(RunError):
    """A weight, activation or statistic is NaN or inf; the message names the layer and the linear."""


def check_output_dir(flag: str, path: str | Path) -> None:
    """path must be a writable folder or creatable as one; tried with a real temporary file, nothing is left.

    Root ignores permission bits, so a check of mode bits would pass where the write later fails (a path under
    a regular file, a read-only mount): only creating a file proves it.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} '{path}' exists and is not a folder; pass a folder (it is created if missing)")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} '{path}' cannot be created: '{existing}' is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{flag} '{path}' is not writable ({err.strerror} in '{existing}'); pass a folder you "
                          "can write to") from None


def check_model_target(flag: str, path: str | Path, inputs: dict[str, str | Path] | None = None) -> None:
    """A folder a model (or adapter) will replace as a whole must be new, empty, or one this tool wrote (it holds
    lib.runinfo.MARKER), and must not be, hold or lie inside an input (inputs: {flag: folder}, e.g. --model): the
    atomic save renames over it and must never delete a researcher's files or the model it reads from."""
    from lib.runinfo import MARKER

    check_apart(flag, path, inputs or {}, may_hold=False)
    target = Path(path).expanduser()
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise ConfigError(f"{flag} '{path}' holds files this tool did not write (no {MARKER} in it); pass a new or "
                          "empty folder (a folder an earlier save wrote is replaced)")


def check_apart(flag: str, path: str | Path, inputs: dict[str, str | Path], may_hold: bool = True) -> None:
    """An output folder must not be an input (inputs: {flag: file or folder}) or lie inside one (its files would
    be loaded with the model: an adapter_config.json there makes transformers apply the adapter); unless may_hold,
    it must not hold one either (a save that replaces the folder would delete it)."""
    target = Path(path).expanduser().resolve()
    for name, source in inputs.items():
        source = Path(source).expanduser().resolve()
        inside = target == source or source in target.parents
        if inside or (not may_hold and target in source.parents):
            relation = "is" if target == source else ("lies inside" if inside else "holds")
            raise ConfigError(f"{flag} '{path}' {relation} the {name} '{source}'; writing there would replace or "
                              "mix with what the run reads; pass another folder")


def check_free_space(needs: list[tuple[str, str | Path, int]]) -> None:
    """needs: (flag, folder, bytes) of the writes ahead; each file system must have their sum free (5% to spare),
    checked before the work so a full disk is found in seconds, not after the run."""
    from lib.runinfo import free_bytes

    by_disk: dict[int, list[tuple[str, str | Path, int]]] = {}
    for need in needs:
        existing = Path(need[1]).expanduser().absolute()
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        by_disk.setdefault(existing.stat().st_dev, []).append(need)
    for group in by_disk.values():
        needed, free = sum(n for _, _, n in group), free_bytes(Path(group[0][1]))
        if free < needed * 1.05:
            what = " + ".join(f"{flag} '{path}' {n / 2**30:.2f} GiB" for flag, path, n in group)
            raise ConfigError(f"not enough disk space: {what} needed, {free / 2**30:.2f} GiB free there; free "
                              "space or pass a folder on another disk")


def check_not_degenerate(layers: nn.ModuleList) -> None:
    """Some decoder linear weight is non-zero, else RunError: an all-zero checkpoint (a failed export) scores
    the uniform distribution's perplexity, which would otherwise be reported as a result."""
    if not any(bool(m.weight.detach().any()) for layer in layers for m in layer.modules()
               if type(m).__name__ == "Linear" and m.weight.device.type != "meta"):
        raise RunError("every decoder linear weight of the model is zero (an empty or failed export?); there is "
                       "nothing to prune or measure")


# A dense model this far above a uniform guess over its vocabulary (perplexity = vocabulary size) is broken: its
# config disagrees with its weights, or the weights are damaged. Untrained models sit near 1x (tiny test models
# measure 0.7x to 1.15x), so the margin is 2x.
DEGENERATE_PPL_FACTOR = 2.0


def check_dense_perplexity(ppl: float, vocab_size: int | None) -> None:
    """The dense perplexity must be below DEGENERATE_PPL_FACTOR x the vocabulary size, else RunError."""
    if vocab_size and ppl > DEGENERATE_PPL_FACTOR * vocab_size:
        raise RunError(f"dense perplexity {ppl:.1f} is more than {DEGENERATE_PPL_FACTOR:g}x the vocabulary size "
                       f"{vocab_size} (a uniform guess scores {vocab_size}): the model is broken or its config "
                       "disagrees with its weights; pruning it would measure nothing")


# A measured sparsity further than this from the requested ratio is reported (--use_variant's bisection, whole
# neurons, rows too narrow for the ratio): results.json records both, the warning says by how much.
SPARSITY_TOLERANCE = 0.005


def sparsity_miss(requested: float, measured: float) -> str | None:
    """A one-line warning when measured sparsity misses requested by more than SPARSITY_TOLERANCE, else None."""
    if abs(measured - requested) <= SPARSITY_TOLERANCE:
        return None
    return (f"warning: measured sparsity {measured:.4f} misses the requested {requested:g} by "
            f"{measured - requested:+.4f} (tolerance {SPARSITY_TOLERANCE}); results.json records both")


def _first_bad(tensor: torch.Tensor) -> str:
    """Where the first non-finite entry of tensor is, e.g. 'row 3' of a weight [out, in]."""
    import torch

    bad = (~torch.isfinite(tensor)).nonzero()
    if bad.numel() == 0:
        return ""
    count = int(bad.shape[0])
    where = f"row {int(bad[0, 0])}" if tensor.dim() == 2 else f"index {bad[0].tolist()}"
    return f"{count} non-finite value{'s' if count > 1 else ''} (first at {where})"


def check_finite_weights(layers: nn.ModuleList) -> None:
    """Every nn.Linear weight of every decoder layer is finite, else NonFiniteError naming layer and linear.

    A NaN weight makes every score after it NaN: Wanda then reports perplexity NaN with exit 0, SparseGPT fails
    in its Cholesky factorisation. One pass over the weights (a few ms per layer) is cheap next to either.
    """
    import torch
    from torch import nn

    for index, layer in enumerate(layers):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and not torch.isfinite(module.weight).all():
                raise NonFiniteError(f"layer {index} linear '{name}' has {_first_bad(module.weight.detach())} in "
                                     "its weight; the model file is damaged or was saved from a diverged run")


def check_finite_stats(layer_index: int, linear: str, stats: dict[str, Any]) -> None:
    """Every tensor in one linear's statistics (from the collectors' finalize) is finite, else NonFiniteError.

    Non-finite statistics come from non-finite activations (float16 overflow, a damaged earlier layer); the
    scores and masks built on them are meaningless, so the run stops here with the layer and linear named.
    """
    import torch

    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteError(f"layer {layer_index} linear '{linear}': statistic '{key}' has "
                                 f"{_first_bad(value)}; its input activations overflowed or are NaN (try --dtype "
                                 "float32)")


def check_finite_activations(layer_index: int, hidden: torch.Tensor) -> None:
    """A decoder layer's outputs [n, seqlen, hidden] are finite, else NonFiniteError naming the layer."""
    import torch

    if not torch.isfinite(hidden).all():
        raise NonFiniteError(f"layer {layer_index} produced {_first_bad(hidden.reshape(-1))} in its outputs "
                             "(overflow or NaN; try --dtype float32)")


def json_safe(value: Any) -> tuple[Any, list[str]]:
    """value with every NaN/inf float replaced by None, and the dotted paths of what was replaced.

    results.json is strict JSON (json.dumps(allow_nan=False)): NaN is not JSON and breaks jq, JavaScript and
    strict parsers. A destroyed model's perplexity can overflow to inf; that is a result, not an error, so it is
    recorded as null and the path listed under "non_finite" rather than refused after the work is done.
    """
    replaced: list[str] = []

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            replaced.append(path)
            return None
        if isinstance(obj, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return obj

    return walk(value, ""), replaced


def locate_non_finite(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor) -> None:
    """Run ids [1, seqlen] once with a hook on every decoder linear; NonFiniteError at the first non-finite output.

    Called only after a perplexity came out NaN, to name where the activations broke instead of reporting NaN.
    """
    import torch
    from torch import nn

    class _Found(Exception):
        pass

    def hook_for(index: int, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not torch.isfinite(output).all():
                raise _Found(f"layer {index} linear '{name}' outputs {_first_bad(output.reshape(-1))} (its input "
                             f"{'is' if torch.isfinite(inputs[0]).all() else 'is not'} finite)")
        return hook

    handles = [module.register_forward_hook(hook_for(i, name)) for i, layer in enumerate(layers)
               for name, module in layer.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            model(ids.to(model.get_input_embeddings().weight.device), use_cache=False)
    except _Found as found:
        raise NonFiniteError(f"{found}; the activations overflow or are NaN (try --dtype float32)") from None
    finally:
        for handle in handles:
            handle.remove()
