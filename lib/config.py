"""The frozen, validated settings. Library code takes these, never argparse.Namespace.

Each setting is declared once, by its owner, as a dataclass field whose metadata carries its flag help, group,
choices and bounds (`setting`); `lib/cli.py` builds the command line from these fields and maps the parsed
flags back, and one function (`check_settings`) checks every field against its declared rule. PruneConfig holds
the driver's own settings; each method family and add-on declares a `Settings` section in its own module and
registers it (`register_settings`, as peft's per-method configs), and PruneConfig carries one instance of every
registered section: `config.owl_m` reads OWL's. Rules between settings of one section are its `check()`;
what a method cannot honour is checked where the method is looked up (`lib.registry.find_method`). This
module imports nothing heavy (no torch) and no plug-in.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lib.errors import ConfigError
from lib.protocols import PROTOCOLS

CALIB_DATASETS = ("c4", "wikitext2")
EVAL_DATASETS = ("wikitext2", "c4")
TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
HUB_PREFIX = "hf:"
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
OFFLOAD_MODES = ("auto", "none", "cpu", "disk")
BOS_MODES = ("auto", "always", "never")
# A factor of 10 (the default clips) to a power beyond 10 is beyond float16, and beyond 38 beyond float32: the
# scores become inf or 0 and the mask is arbitrary. The bound of every exponent setting.
MAX_EXPONENT = 10
EXPONENT = f"[-{MAX_EXPONENT}, {MAX_EXPONENT}]"


def setting(default: Any, help: str, *, group: str | None = None, choices: tuple | None = None,
            flags: tuple[str, ...] | None = None, bounds: str | None = None, note: str | None = None,
            required: bool = False, none_word: str | None = None) -> Any:
    """A config field with what the CLI and the check need: help, group (default: its section's), choices, flag
    spellings (default --<name>; the first is the one messages use), bounds ('positive', '> 0', '>= 0', or an
    interval such as '(0, 1]'), a note added to the bounds' error message, whether the flag is required, and the
    word that gives back the None default on the command line (--eval_limit all over a protocol's limit)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "flags": flags,
                                            "bounds": bounds, "note": note, "required": required,
                                            "none_word": none_word})


def flag_name(f: dataclasses.Field) -> str:
    """The name a setting goes by on the command line and in messages: its first flag without dashes."""
    flags = f.metadata.get("flags")
    return flags[0].lstrip("-") if flags else f.name


def within(value: float, bounds: str) -> bool:
    """True when value satisfies bounds ('positive', '> x', '>= x', '[a, b]', '(a, b)', '[a, b)', '(a, b]')."""
    if bounds == "positive":
        return value > 0
    if bounds.startswith(">"):
        op, limit = bounds.split()
        return value >= float(limit) if op == ">=" else value > float(limit)
    low, high = (float(x) for x in bounds[1:-1].split(","))
    return (low <= value if bounds[0] == "[" else low < value) and (value <= high if bounds[-1] == "]" else value < high)


def bounds_text(bounds: str) -> str:
    """'a positive integer', '> 0', 'in (0, 1]': what the error message and --help say."""
    if bounds == "positive":
        return "a positive integer"
    return bounds if bounds.startswith(">") else f"in {bounds}"


def parse_sparsity_type(sparsity_type: str) -> tuple[int, int]:
    """'unstructured' -> (0, 0); 'N:M' with 0 < N < M -> (N, M)."""
    if sparsity_type == "unstructured":
        return 0, 0
    # No leading zeros: '02:04' would prune as 2:4 but be recorded, and grouped in reports, as another type.
    match = re.fullmatch(r"([1-9]\d*):([1-9]\d*)", sparsity_type)
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


def text_kind(spec: str, flag: str, named: tuple[str, ...]) -> str:
    """What a --calib_dataset / --eval_dataset entry names: 'named' (one of `named`), 'file' or 'hub'."""
    if spec in named:
        return "named"
    if spec.startswith(HUB_PREFIX):
        name = parse_hub_spec(spec, "train")[0]
        if name:
            return "hub"
    elif spec.lower().endswith(TEXT_FILE_SUFFIXES):
        return "file"
    raise ConfigError(f"{flag} '{spec}' is not one of {list(named)}, a {'/'.join(TEXT_FILE_SUFFIXES)} file, or a "
                      f"Hugging Face dataset {HUB_PREFIX}NAME[:CONFIG][@SPLIT]")


def has_fields(spec: str, flag: str, named: tuple[str, ...]) -> bool:
    """Whether the entry's documents are a field or column of rows (.jsonl, .jsonl.gz, .parquet, hub dataset)."""
    kind = text_kind(spec, flag, named)
    return kind == "hub" or (kind == "file" and not spec.lower().endswith(".txt"))


def parse_hub_spec(spec: str, default_split: str) -> tuple[str, str | None, str]:
    """'hf:NAME[:CONFIG][@SPLIT]' -> (NAME, CONFIG or None, SPLIT or default_split)."""
    rest, _, split = spec[len(HUB_PREFIX):].partition("@")
    name, _, config = rest.partition(":")
    return name, config or None, split or default_split


def check_finite(config: Any) -> None:
    """Every float field of a settings dataclass must be a finite number (NaN and inf are never meant)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} {value} must be a finite number")


def check_choice(config: Any, name: str) -> None:
    """A field whose metadata lists choices must hold one of them."""
    choices = next(f.metadata["choices"] for f in dataclasses.fields(config) if f.name == name)
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{name} '{value}' is not one of {list(choices)}")


def check_settings(settings: Any) -> None:
    """Every field of a settings dataclass against its declared rule: finite, one of its choices, within bounds."""
    check_finite(settings)
    for f in dataclasses.fields(settings):
        value, bounds = getattr(settings, f.name), f.metadata.get("bounds")
        if f.metadata.get("choices") and value is not None:
            check_choice(settings, f.name)
        if bounds and value is not None and not within(value, bounds):
            note = f.metadata.get("note")
            raise ConfigError(f"{flag_name(f)} {value} must be {bounds_text(bounds)}{f' ({note})' if note else ''}")


@dataclass(frozen=True)
class Settings:
    """A section of settings owned by a method family or add-on: frozen fields declared with `setting`, checked
    by their rules on construction, then by the section's own `check()` (rules between its settings)."""

    group: ClassVar[str] = "pruning"

    def __post_init__(self) -> None:
        check_settings(self)
        self.check()

    def check(self) -> None:
        """Rules between this section's settings; raise ConfigError naming the values."""

    def check_layer(self, linears: dict) -> None:
        """Rules against the model's shapes: linears are the first decoder layer's {name: nn.Linear} (on the meta
        device, before any weight loads); raise ConfigError naming the value and the limit."""


SECTIONS: list[type[Settings]] = []


def registered_sections() -> list[type[Settings]]:
    """Every registered section. The plug-ins register theirs when `lib.plugins` imports them, which happens here
    on first use (by name, at run time: this module imports no plug-in, and `import lib.config` stays light until
    a PruneConfig is built or its flags are listed)."""
    importlib.import_module("lib.plugins")
    return SECTIONS


def register_settings(section: type[Settings]) -> type[Settings]:
    """Add a settings section to every PruneConfig (its field names unique across sections); a decorator."""
    taken = {f.name for cls in [PruneConfig, *SECTIONS] for f in dataclasses.fields(cls)}
    clash = taken & {f.name for f in dataclasses.fields(section)}
    if clash:
        raise ValueError(f"settings {sorted(clash)} of {section.__name__} are declared twice")
    SECTIONS.append(section)
    return section


@dataclass(frozen=True, init=False)
class PruneConfig(Settings):
    """Everything the pruning driver needs: its own settings here, and one instance of every registered section
    (the methods' and add-ons'), whose settings read as attributes (`config.percdamp`). Built from flat keyword
    arguments: `PruneConfig(prune_method="sparsegpt", percdamp=0.1)`. Defaults follow Wanda (and the papers)."""

    prune_method: str = setting("wanda", "pruning method; the list with one line each is at the end of --help")
    # None: N/M for N:M, else 0.5 (resolved in __init__, so the stored value is always a number).
    sparsity_ratio: float | None = setting(None, "fraction of weights to prune, in [0, 1) (default 0.5; N/M "
                                                 "for N:M)")
    sparsity_type: str = setting("unstructured", "'unstructured' or N:M such as 2:4, 4:8")
    nsamples: int = setting(128, "calibration sequences (default 128)", bounds="positive")
    calib_batch_size: int = setting(0, "calibration sequences per layer call (default 0: as many as fit 8192 "
                                       "tokens; lower it if a layer's activations run out of memory). Results "
                                       "are the same: statistics are summed one sequence at a time (on a GPU, "
                                       "batched matmuls may still round differently)", bounds=">= 0",
                                    note="0 = automatic")
    # random.Random(-1) is random.Random(1): a negative seed would silently repeat another seed's run.
    seed: int = setting(0, "calibration sampling seed", bounds=">= 0")
    use_variant: bool = setting(False, "Wanda's alpha-search variant (unstructured; the methods with a Wanda-form "
                                       "score)")
    # Which add-on of each kind runs (lib/registry.py); the names are checked against the registry.
    layer_ratios: str = setting("uniform", "per-layer sparsity: 'uniform' (default) or a layer-ratio policy (the "
                                           "add-ons listed at the end)", group="add-ons")
    refine: str = setting("none", "mask refinement after the score method: 'none' (default) or a mask refiner "
                                  "(the add-ons listed at the end)", group="add-ons")
    permute: bool = setting(False, "N:M: reorder input channels before the mask so large scores spread over "
                                   "groups (RIA's channel reallocation; any score method); folded into the MLP",
                            group="add-ons")
    sections: tuple[Settings, ...] = field(default=(), repr=False, compare=True, metadata={"section": True})

    def __init__(self, sections: tuple[Settings, ...] = (), **values: Any) -> None:
        for f in own_fields(PruneConfig):
            object.__setattr__(self, f.name, values.pop(f.name, f.default))
        given = {type(section): section for section in sections}
        built = []
        for cls in registered_sections():
            mine = {name: values.pop(name) for name in [f.name for f in dataclasses.fields(cls)] if name in values}
            built.append(dataclasses.replace(given[cls], **mine) if cls in given else cls(**mine))
        if values:
            known = [f.name for f, _ in all_fields(PruneConfig)]
            name = sorted(values)[0]
            raise ConfigError(f"unknown setting '{name}'{suggest(name, known)}")
        object.__setattr__(self, "sections", tuple(built))
        if self.sparsity_ratio is None:
            n, m = parse_sparsity_type(self.sparsity_type)
            object.__setattr__(self, "sparsity_ratio", n / m if m else 0.5)
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a section's setting.
        for section in self.__dict__.get("sections", ()):
            if name in section.__dataclass_fields__:
                return getattr(section, name)
        raise AttributeError(f"'PruneConfig' has no setting '{name}'")

    def check(self) -> None:
        if not 0.0 <= self.sparsity_ratio < 1.0:
            raise ConfigError(f"sparsity_ratio {self.sparsity_ratio} is outside [0, 1)")
        n, m = parse_sparsity_type(self.sparsity_type)
        if m and abs(n / m - self.sparsity_ratio) > 1e-9:
            raise ConfigError(f"sparsity_type {self.sparsity_type} prunes {n}/{m} = {n / m:g} of the weights but "
                              f"sparsity_ratio is {self.sparsity_ratio}; pass --sparsity_ratio {n / m:g} or omit it")

    @property
    def prune_n(self) -> int:
        """N of N:M (0 when unstructured)."""
        return parse_sparsity_type(self.sparsity_type)[0]

    @property
    def prune_m(self) -> int:
        """M of N:M (0 when unstructured)."""
        return parse_sparsity_type(self.sparsity_type)[1]

    def to_dict(self) -> dict:
        """Plain flat dict for results.json: the driver's settings, then every section's."""
        flat = {f.name: getattr(self, f.name) for f in own_fields(PruneConfig)}
        for section in self.sections:
            flat.update(dataclasses.asdict(section))
        return flat


def own_fields(cls: type) -> list[dataclasses.Field]:
    """The settings fields a dataclass declares itself (not PruneConfig's `sections`)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("section")]


def all_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """(field, declaring class) of every setting of cls: its own, and for PruneConfig every registered section's."""
    pairs = [(f, cls) for f in own_fields(cls)]
    if cls is PruneConfig:
        pairs += [(f, section) for section in registered_sections() for f in dataclasses.fields(section)]
    return pairs


@dataclass(frozen=True)
class RunConfig:
    """What main.py does around the pruning: model, data, evaluation, outputs."""

    protocol: str | None = setting(None, "named calibration/evaluation sizes (lib/protocols.py): quick (make run), "
                                         "experiment (RESULTS.md), wanda (Wanda's paper); flags given override it",
                                   group="data", choices=tuple(PROTOCOLS))
    model: str = setting("smollm2-135m", "local HF folder, hub id, .gguf file, or the bundled alias "
                                         "'smollm2-135m' (default)", group="model")
    cache_dir: str = setting("llm_weights", "hub cache and GGUF conversions (default llm_weights)", group="model")
    dtype: str = setting("auto", "weights dtype; auto (default): the checkpoint's own dtype on GPU (bf16 for "
                                 "Llama-3, Gemma), float32 on CPU", group="model", choices=DTYPE_NAMES)
    device_map: str | None = setting(None, "'auto' spreads the model over all GPUs (large models)", group="model",
                                     choices=("auto",))
    offload: str = setting("auto", "where decoder layers live between visits to the execution device: none (all "
                                   "on the device), cpu (RAM), disk (read from the checkpoint, pruned layers "
                                   "written to --offload_dir); auto (default): none if the model fits the device, "
                                   "else cpu if it fits in RAM, else disk", group="model", choices=OFFLOAD_MODES)
    offload_dir: str | None = setting(None, "folder for pruned layers with --offload disk (default: a temporary "
                                            "folder)", group="model")
    seqlen: int | None = setting(None, "tokens per calibration/evaluation window (default, or auto: min(2048, "
                                       "model maximum))", group="data", none_word="auto")
    seqlen_max: bool = setting(False, "windows as long as the model's maximum context (Wanda's LLaMA-2 protocol: "
                                      "4096); instead of --seqlen", group="data")
    calib_dataset: str = setting("c4", "calibration text: c4 (default, as Wanda), wikitext2 (train split), a local "
                                       ".txt (documents separated by blank lines), .jsonl, .jsonl.gz or .parquet file "
                                       "(one document per row, field --calib_field), or a Hugging Face dataset "
                                       "hf:NAME[:CONFIG][@SPLIT] (split default train); windows drawn as from C4",
                                 group="data")
    calib_field: str = setting("text", "the field (.jsonl) or column (.parquet, hub dataset) holding the text of "
                                       "--calib_dataset (default text)", group="data")
    bos: str = setting("auto", "BOS token in front of every calibration and evaluation window: always, never "
                               "(Wanda's protocol: the text tokenised once, so only its first window starts with "
                               "the tokenizer's BOS), auto (default): always for Gemma-family models (trained with "
                               "BOS at every input's start), else never", group="data", choices=BOS_MODES)
    data_dir: str | None = setting(None, "local data folder like ../shared/data (else $WANDA_DATA_DIR, else the "
                                         "Hugging Face hub)", group="data")
    eval_limit: int | None = setting(None, "evaluate only the first N windows (default all)", group="evaluation",
                                     none_word="all")
    eval_dataset: str = setting("wikitext2", "comma-separated perplexity texts, each reported: wikitext2 (default, "
                                             "split --eval_split), c4 (held-out validation documents as SparseGPT "
                                             "reports: 1100 documents joined, at most 256 windows), a local file or "
                                             "hf:NAME[:CONFIG][@SPLIT] (split default test) as for --calib_dataset; "
                                             "ppl_dense/ppl_pruned are the first's", group="evaluation")
    eval_field: str = setting("text", "the field or column holding the text of --eval_dataset files and hub "
                                      "datasets (default text)", group="evaluation")
    eval_split: str = setting("test", "WikiText-2 split to evaluate", group="evaluation",
                              choices=("test", "validation"))
    eval_batch_size: int = setting(1, "windows per forward in the perplexity loop", group="evaluation")
    no_dense_eval: bool = setting(False, "skip the dense model's perplexity", group="evaluation")
    eval_zero_shot: bool = setting(False, "lm-eval zero-shot accuracy after pruning", group="evaluation")
    tasks: str | None = setting(None, "comma-separated lm-eval tasks (default: Wanda's seven)", group="evaluation")
    zs_limit: int | None = setting(None, "items per zero-shot task (default all)", group="evaluation",
                                   none_word="all")
    zs_batch_size: str = setting("1", "zero-shot batch size: a positive integer, or auto (lm-eval finds the "
                                      "largest that fits)", group="evaluation")
    save: str | None = setting(None, "folder for results.json and log_{method}.txt", group="outputs")
    save_model: str | None = setting(None, "folder for the pruned model (safetensors) and tokenizer",
                                     group="outputs")
    save_stats: bool = setting(False, "per-layer selection statistics in results.json", group="outputs")
    debug: bool = setting(False, "on an error, print the full traceback before the one-line message (also: "
                                 "environment variable WANDA_DEBUG=1)", group="outputs")

    def __post_init__(self) -> None:
        check_finite(self)
        if self.seqlen is not None and self.seqlen < 2:
            # A window's loss predicts tokens 2..seqlen from the ones before: one token leaves nothing to score.
            raise ConfigError(f"seqlen {self.seqlen} must be at least 2 tokens")
        if self.seqlen is not None and self.seqlen_max:
            raise ConfigError(f"seqlen {self.seqlen} and --seqlen_max both set the window; pass one")
        if self.zs_batch_size != "auto" and not (self.zs_batch_size.isdigit() and int(self.zs_batch_size) > 0):
            raise ConfigError(f"zs_batch_size '{self.zs_batch_size}' must be a positive integer or 'auto'")
        for name in ("eval_limit", "zs_limit", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} {value} must be a positive integer")
        for name in ("eval_split", "bos"):
            check_choice(self, name)
        if not self.eval_list():
            raise ConfigError(f"eval_dataset '{self.eval_dataset}' names no dataset; pass comma-separated names, "
                              "e.g. wikitext2,c4")
        for flag, specs, named in (("calib_dataset", [self.calib_dataset], CALIB_DATASETS),
                                   ("eval_dataset", self.eval_list(), EVAL_DATASETS)):
            field_name = flag.replace("dataset", "field")
            fielded = [has_fields(spec, flag, named) for spec in specs]  # each spec checked here
            if getattr(self, field_name) != "text" and not any(fielded):
                raise ConfigError(f"{field_name} '{getattr(self, field_name)}' has no effect: {flag} "
                                  f"'{getattr(self, flag)}' has no fields (.jsonl, .jsonl.gz, .parquet files and hub "
                                  "datasets have)")
        if self.protocol is not None:
            check_choice(self, "protocol")
        if self.device_map not in (None, "auto"):
            raise ConfigError(f"device_map '{self.device_map}' is not supported; use 'auto' or omit it")
        check_choice(self, "dtype")
        check_choice(self, "offload")
        if not self.eval_zero_shot:
            for name in ("tasks", "zs_limit"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name} {getattr(self, name)} has no effect without --eval_zero_shot; add "
                                      "--eval_zero_shot or drop it")
        if self.tasks is not None and not self.task_list():
            raise ConfigError(f"tasks '{self.tasks}' names no task; pass comma-separated lm-eval task names, e.g. "
                              "piqa,boolq")

    def eval_list(self) -> list[str]:
        """The comma-separated --eval_dataset as a list, each named once, in order."""
        return list(dict.fromkeys(d.strip() for d in self.eval_dataset.split(",") if d.strip()))

    def task_list(self) -> list[str]:
        """The comma-separated --tasks as a list ([] when none given)."""
        return [t.strip() for t in (self.tasks or "").split(",") if t.strip()]
