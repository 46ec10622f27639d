"""Onloading: the decoder layers' weights live on CPU or on disk and visit the execution device one layer at a
time (SparseGPT's llama_sequential, llm-compressor's onloading), so a model larger than the GPU, or than RAM,
can be pruned.

Modes (--offload): 'none' (the whole model on the execution device), 'cpu' (layers in RAM, moved to the
device and back), 'disk' (layers on the meta device; each one is read from its safetensors file when it is
visited, written to --offload_dir once pruned, and dropped again), 'auto' (none if the model fits the device,
else cpu if it fits in RAM, else disk). Everything but the decoder layers (embeddings, final norm, head) stays
on the execution device.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from lib.config import ConfigError
from lib.runinfo import remove_stale_temps, write_errors, write_failure
from lib.models import find_decoder_layers, load_config, load_model, load_tokenizer, local_source, resolve_dtype

logger = logging.getLogger(__name__)



def execution_device() -> torch.device:
    """Where layers compute: the first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), or a very large number where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a saved model folder (one file or shards)."""
    return sorted(folder.glob("*.safetensors"))


def checkpoint_bytes(folder: Path, dtype: torch.dtype, checkpoint_dtype: torch.dtype | None) -> int:
    """The model's size in memory at dtype, from its safetensors files."""
    size = sum(f.stat().st_size for f in checkpoint_files(folder))
    if checkpoint_dtype is not None and checkpoint_dtype.itemsize:
        size = size * dtype.itemsize // checkpoint_dtype.itemsize
    return size


def choose_mode(requested: str, model_bytes: int, device: torch.device, all_gpus: bool = False) -> str:
    """'auto' -> none / cpu / disk by where the model fits (a margin for activations); other modes unchanged.

    all_gpus (--device_map auto): the free memory of every GPU counts, since the model is spread over them.
    """
    if requested != "auto":
        return requested
    fits_ram = model_bytes < 0.7 * available_ram_bytes()
    if device.type == "cuda":
        gpus = range(torch.cuda.device_count()) if all_gpus else [device]
        free = sum(torch.cuda.mem_get_info(gpu)[0] for gpu in gpus)
        if model_bytes < 0.8 * free:
            return "none"
        return "cpu" if fits_ram else "disk"
    return "none" if fits_ram else "disk"


class LayerStore:
    """Where each decoder layer's weights are between visits, and the moves to and from the execution device.

    cpu: the layer's tensors stay nn.Parameters in RAM; onload moves the module, offload moves it back.
    disk: the layer's parameters are meta tensors; `sources[i]` is the safetensors file holding layer i's
    tensors under their full names (the checkpoint, then the pruned copy in `folder` once the layer changed).
    """

    def __init__(self, model: nn.Module, mode: str, device: torch.device, folder: Path | None = None,
                 sources: list[Path] | None = None) -> None:
        self.model, self.mode, self.device = model, mode, device
        self.layers = find_decoder_layers(model)
        self.prefix = next(name for name, module in model.named_modules() if module is self.layers)
        self.folder = folder
        self.sources = sources or []
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def names(self, index: int) -> list[str]:
        """Full state-dict names of layer index's parameters and persistent buffers."""
        return [f"{self.prefix}.{index}.{name}" for name in self.layers[index].state_dict()]

    def onload(self, index: int) -> nn.Module:
        """Bring layer index's weights to the execution device; returns the layer."""
        layer = self.layers[index]
        if self.mode == "cpu":
            layer.to(self.device)
        elif self.mode == "disk":
            from accelerate.utils import set_module_tensor_to_device
            from safetensors import safe_open

            try:
                with safe_open(str(self.sources[index]), framework="pt", device="cpu") as handle:
                    for full in self.names(index):
                        local = full[len(f"{self.prefix}.{index}."):]
                        set_module_tensor_to_device(layer, local, self.device,
                                                    value=handle.get_tensor(full).to(self.dtype))
            except write_errors() as err:  # removed or damaged while the run uses it (OSError, SafetensorError)
                text = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
                raise ConfigError(f"--offload disk: layer {index}'s weights '{self.sources[index]}' can no longer "
                                  f"be read ({text}); the checkpoint changed during the run") from None
        return layer

    def offload(self, index: int, changed: bool = False) -> None:
        """Send layer index back to where it lives; a changed layer's weights are kept (disk: written first)."""
        layer = self.layers[index]
        if self.mode == "cpu":
            layer.to("cpu")
        elif self.mode == "disk":
            from accelerate.utils import set_module_tensor_to_device

            if changed:
                target = self.folder / f"layer_{index:04d}.safetensors"
                tensors = {f"{self.prefix}.{index}.{k}": v.detach().to("cpu").contiguous()
                           for k, v in layer.state_dict().items()}
                save_tensors(tensors, target, "a pruned layer (--offload disk)")
                self.sources[index] = target
            for name, _ in list(layer.named_parameters()) + list(layer.named_buffers()):
                set_module_tensor_to_device(layer, name, "meta")

    @contextlib.contextmanager
    def streaming(self):
        """Forward hooks that onload each layer before it runs and offload it after: whole-model forwards
        (perplexity, zero-shot) then work as if the model were on the device."""
        if self.mode == "none":
            yield
            return
        def before(index: int):
            return lambda module, args: self.onload(index) and None

        def after(index: int):
            return lambda module, args, output: self.offload(index)

        handles = []
        for index, layer in enumerate(self.layers):
            handles += [layer.register_forward_pre_hook(before(index)), layer.register_forward_hook(after(index))]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def save_pretrained(self, folder: Path) -> None:
        """A Hugging Face folder of the (pruned) model, one layer in memory at a time: a shard for the rest of
        the model and one per layer, with the index from_pretrained reads."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if self.mode != "disk":
            self.model.save_pretrained(folder)
            return
        weight_map: dict[str, str] = {}
        total = 0
        seen: set[int] = set()
        rest = {}
        for name, tensor in self.model.state_dict().items():
            if name.startswith(f"{self.prefix}.") or tensor.device.type == "meta":
                continue
            if tensor.data_ptr() in seen:  # tied weights (lm_head = embeddings) are stored once
                continue
            seen.add(tensor.data_ptr())
            rest[name] = tensor.detach().to("cpu").contiguous()
        shards = [("model-rest.safetensors", rest)]
        save_file(rest, str(folder / shards[0][0]), metadata={"format": "pt"})
        for index in range(len(self.layers)):
            layer = self.onload(index)
            tensors = {f"{self.prefix}.{index}.{k}": v.detach().to("cpu").contiguous()
                       for k, v in layer.state_dict().items()}
            self.offload(index)
            shard = f"model-layer-{index:04d}.safetensors"
            save_file(tensors, str(folder / shard), metadata={"format": "pt"})
            shards.append((shard, tensors))
        for shard, tensors in shards:
            for name, tensor in tensors.items():
                weight_map[name] = shard
                total += tensor.numel() * tensor.element_size()
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        self.model.config.save_pretrained(folder)
        if getattr(self.model, "generation_config", None) is not None:
            self.model.generation_config.save_pretrained(folder)


def load_layered(source: Path, dtype: torch.dtype, device: torch.device,
                 folder: Path | None = None) -> tuple[nn.Module, LayerStore]:
    """The model with its decoder layers left on disk (_load_layered). Without folder, pruned layers go to a
    temporary folder removed with the store or at interpreter exit (after Ctrl-C, SIGTERM and errors too)."""
    if folder is not None:
        return _load_layered(source, dtype, device, folder)
    folder = offload_temp_folder()
    try:
        model, store = _load_layered(source, dtype, device, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(store, shutil.rmtree, folder, True)
    return model, store


def _load_layered(source: Path, dtype: torch.dtype, device: torch.device, folder: Path) -> tuple[nn.Module, LayerStore]:
    """The model with its decoder layers left on disk: everything else is read to the device, each layer's
    tensors only when the layer is visited. -> (model, its store). `folder` takes pruned layers."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    files = checkpoint_files(source)
    if not files:
        raise ConfigError(f"--offload disk reads the layers from safetensors files; '{source}' has none "
                          "(use --offload cpu)")
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            where.update({key: path for key in handle.keys()})

    config = AutoConfig.from_pretrained(source)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    layers = find_decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    missing = [name for name in model.state_dict() if name not in where and not name.startswith(f"{prefix}.")]
    for name in model.state_dict():
        if name.startswith(f"{prefix}.") or name not in where:
            continue
        with safe_open(str(where[name]), framework="pt", device="cpu") as handle:
            set_module_tensor_to_device(model, name, device, value=handle.get_tensor(name).to(dtype))
    model.tie_weights()
    still_meta = [name for name in missing if model.get_parameter(name).device.type == "meta"] if missing else []
    if still_meta:
        raise ConfigError(f"--offload disk: the checkpoint in '{source}' has no tensor for {still_meta[:3]}; its "
                          "names differ from the model's (use --offload cpu)")
    sources = []
    for index in range(len(layers)):
        names = [f"{prefix}.{index}.{name}" for name in layers[index].state_dict()]
        files_of_layer = {where.get(name) for name in names}
        if None in files_of_layer:
            absent = [name for name in names if name not in where][:3]
            raise ConfigError(f"--offload disk: the checkpoint in '{source}' has no tensor for {absent}; its names "
                              "differ from the model's (use --offload cpu)")
        if len(files_of_layer) > 1:  # a layer split over two shards: gather it into one file once
            sources.append(_gather_layer(names, where, folder / f"layer_{index:04d}.dense.safetensors"))
        else:
            sources.append(files_of_layer.pop())
    for buffer_name, buffer in model.named_buffers():  # non-persistent buffers (rotary tables) are built on CPU
        if not buffer_name.startswith(f"{prefix}.") and buffer.device != device:
            set_module_tensor_to_device(model, buffer_name, device, value=buffer)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = False
    return model, LayerStore(model, "disk", device, folder, sources)


def _gather_layer(names: list[str], where: dict[str, Path], target: Path) -> Path:
    """Copy one layer's tensors from several shards into one safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in names:
        with safe_open(str(where[name]), framework="pt", device="cpu") as handle:
            tensors[name] = handle.get_tensor(name)
    save_tensors(tensors, target, "a layer gathered from several shards (--offload disk)")
    return target


def save_tensors(tensors: dict[str, torch.Tensor], target: Path, what: str) -> None:
    """safetensors' save_file; a full disk (SafetensorError or OSError) is one line naming target and the size."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(target))
    except write_errors() as err:
        Path(target).unlink(missing_ok=True)
        raise write_failure(what, target, err, sum(t.numel() * t.element_size() for t in tensors.values())) \
            from None


OFFLOAD_PREFIX = "wanda-offload-"


def offload_temp_folder() -> Path:
    """A new temporary folder for --offload disk without --offload_dir, named with host and pid; a SIGKILLed
    run's folder is removed here by the next run on this host (lib.runinfo.remove_stale_temps)."""
    import socket

    root = Path(tempfile.gettempdir())
    remove_stale_temps(root, prefix=OFFLOAD_PREFIX)
    return Path(tempfile.mkdtemp(prefix=f"{OFFLOAD_PREFIX}{socket.gethostname()}-{os.getpid()}.", dir=root))


def place_outside_layers(model: nn.Module, device: torch.device) -> None:
    """Move every parameter and buffer that is not in a decoder layer to device (cpu mode: the layers stay)."""
    layers = find_decoder_layers(model)
    inside = {id(t) for layer in layers for t in list(layer.parameters()) + list(layer.buffers())}
    moved: dict[int, torch.Tensor] = {}  # tied weights (embeddings = head) move once and stay tied
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if id(tensor) in inside or tensor.device == device:
                continue
            if id(tensor) not in moved:
                moved[id(tensor)] = (nn.Parameter(tensor.data.to(device), requires_grad=tensor.requires_grad)
                                     if isinstance(tensor, nn.Parameter) else tensor.to(device))
            (module._parameters if isinstance(tensor, nn.Parameter) else module._buffers)[name] = moved[id(tensor)]


def load_with_store(spec: str, cache_dir: str, dtype_name: str, device_map: str | None, offload: str,
                    offload_dir: str | None) -> tuple[nn.Module, object, LayerStore]:
    """Load for pruning as --offload asks -> (model, tokenizer, store); 'auto' chooses by size (choose_mode).

    With onloading, --device_map auto is not used: the layers visit the one execution device in turn instead
    of being spread over devices (and offloaded by accelerate, whose offloaded weights cannot be pruned).
    """
    device = execution_device()
    source = local_source(spec, cache_dir)
    dtype = resolve_dtype(dtype_name, load_config(spec, cache_dir) if device.type == "cuda" else None)
    mode = offload
    if offload == "auto":
        model_config = load_config(spec, cache_dir)
        own = getattr(model_config, "dtype", None)
        own = getattr(torch, own) if isinstance(own, str) and hasattr(torch, own) else own
        size = checkpoint_bytes(Path(source), dtype, own) if Path(source).is_dir() else 0
        mode = choose_mode("auto", size, device, all_gpus=device_map == "auto")
        logger.info("--offload auto: %s (model %.1f GiB at %s)", mode, size / 2**30, dtype)
    if mode != "none" and device_map is not None:
        logger.warning("--device_map %s is not used with --offload %s: layers visit %s one at a time", device_map,
                       mode, device)
    if mode == "disk":
        folder = Path(offload_dir).expanduser() if offload_dir else None
        model, store = load_layered(Path(source), dtype, device, folder)
        return model, load_tokenizer(spec, cache_dir), store
    if mode == "cpu":
        model, tokenizer = load_model(spec, cache_dir, dtype, None, device="cpu")
        place_outside_layers(model, device)
        return model, tokenizer, LayerStore(model, "cpu", device)
    model, tokenizer = load_model(spec, cache_dir, dtype, device_map)
    if any(p.device.type == "meta" for p in find_decoder_layers(model).parameters()):
        raise ConfigError(f"--device_map {device_map} left some decoder layers offloaded by accelerate (the model "
                          "does not fit the GPUs), and those cannot be pruned; use --offload cpu or disk")
    return model, tokenizer, LayerStore(model, "none", device)
