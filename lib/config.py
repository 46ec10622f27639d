"""The frozen, validated settings. Library code takes these, never argparse.Namespace.

Each setting is declared once, as a dataclass field whose metadata carries its flag help, choices and group;
`lib/cli.py` builds the command line from these fields and maps the parsed flags back. Validation here needs
no model and no method: what a method cannot honour is checked where the method is looked up
(`lib.registry.find_method`). This module imports nothing heavy (no torch), so a config is cheap to build.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lib.protocols import PROTOCOLS

CALIB_DATASETS = ("c4", "wikitext2")
EVAL_DATASETS = ("wikitext2", "c4")
TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
HUB_PREFIX = "hf:"
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
OFFLOAD_MODES = ("auto", "none", "cpu", "disk")
BOS_MODES = ("auto", "always", "never")
MAX_EXPONENT = 10


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the value and what is accepted."""


def setting(default: Any, help: str, *, group: str = "pruning", choices: tuple | None = None,
            flags: tuple[str, ...] | None = None) -> Any:
    """A config field with what the CLI needs: help, group, choices, flag spellings (default --<name>)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "flags": flags})


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


@dataclass(frozen=True)
class PruneConfig:
    """Everything the pruning driver needs. Defaults follow Wanda (and the issue specs for new methods)."""

    prune_method: str = setting("wanda", "pruning method; the list with one line each is at the end of --help")
    # None: N/M for N:M, else 0.5 (resolved in __post_init__, so the stored value is always a number).
    sparsity_ratio: float | None = setting(None, "fraction of weights to prune, in [0, 1) (default 0.5; N/M "
                                                 "for N:M)")
    sparsity_type: str = setting("unstructured", "'unstructured' or N:M such as 2:4, 4:8")
    nsamples: int = setting(128, "calibration sequences (default 128)")
    calib_batch_size: int = setting(0, "calibration sequences per layer call (default 0: as many as fit 8192 "
                                       "tokens; lower it if a layer's activations run out of memory). Results "
                                       "are the same: statistics are summed one sequence at a time (on a GPU, "
                                       "batched matmuls may still round differently)")
    seed: int = setting(0, "calibration sampling seed (>= 0)")
    use_variant: bool = setting(False, "Wanda's alpha-search variant (unstructured only)")
    blocksize: int = setting(128, "SparseGPT block size (columns per lazy update)", group="SparseGPT")
    percdamp: float = setting(0.01, "SparseGPT dampening, fraction of mean diag(H), in (0, 1]", group="SparseGPT")
    sel_tau_percentile: float = setting(
        0.6, "layer-wide quantile of |x| above which a channel counts as active (IDF), in (0, 1)",
        group="selectivity")
    sel_top_quantile: float = setting(0.9, "quantile whose upper tail gives mu_top (spikiness R), in (0, 1)",
                                      group="selectivity")
    sel_idf_clip_max: float = setting(10.0, "upper clip of IDF (> 0)", group="selectivity")
    sel_idf_clip_min: float = setting(0.0, "lower clip of IDF (default 0, the published formula; > 0 keeps "
                                           "always-on channels)", group="selectivity")
    sel_spiky_clip_max: float = setting(10.0, "upper clip of the spikiness ratio R (> 0)", group="selectivity")
    sel_idf_exp: float = setting(1.0, "exponent on IDF, in [-10, 10] (0 turns it off)", group="selectivity")
    sel_spiky_exp: float = setting(1.0, "exponent on R, in [-10, 10] (0 turns it off)", group="selectivity")
    neuronrank_max_classes: int = setting(512, "K most frequent calibration token ids used as classes: 0 (no "
                                               "classes: neuronrank's factor is the variance alone) or >= 2 (one "
                                               "class has no between-class variance)",
                                          group="NeuronRank",
                                          flags=("--neuronrank-max-classes", "--neuronrank_max_classes"))
    nr_granularity: str = setting("weight", "'weight' (default) or 'neuron' (whole MLP neurons)",
                                  group="NeuronRank", choices=("neuron", "weight"))
    nr_exp: float = setting(1.0, "exponent gamma on the channel factor, in [-10, 10]", group="NeuronRank")
    shrink: bool = setting(False, "neuron granularity: physically drop pruned neurons", group="NeuronRank")
    # Add-ons that compose with the score methods (RESULTS.md): per-layer ratios, mask refinement, N:M permutation.
    layer_ratios: str = setting("uniform", "per-layer sparsity: 'uniform' (default) or 'owl' (layers with more "
                                           "outlier scores pruned less; one extra dense calibration pass)",
                                group="OWL", choices=("owl", "uniform"))
    owl_m: float = setting(5.0, "OWL: a score is an outlier above M times its layer's mean score (> 0)",
                           group="OWL")
    owl_lambda: float = setting(0.08, "OWL: layer ratios spread over 2 * lambda around the target, their mean "
                                      "the target (>= 0)", group="OWL")
    owl_score: str = setting("wanda", "OWL: outliers of Wanda's score |W| * ||X|| (default) or of the method's "
                                      "own score", group="OWL", choices=("method", "wanda"))
    refine: str = setting("none", "mask refinement after the score method: 'none' (default) or 'dsnot'",
                          group="DSnoT", choices=("dsnot", "none"))
    dsnot_cycles: int = setting(50, "DSnoT: most prune-and-regrow swaps per output row (>= 0)", group="DSnoT")
    dsnot_threshold: float = setting(0.1, "DSnoT: a row stops once |reconstruction error| <= this (>= 0; in "
                                          "units of w * sum over a sequence's tokens of x, as upstream)",
                                     group="DSnoT")
    dsnot_same_sign: bool = setting(False, "DSnoT unstructured: stop a row before its error changes sign "
                                           "(upstream's default is off; N:M always checks)", group="DSnoT")
    dsnot_skip: str = setting("mlp", "DSnoT: linears left with the initial mask: 'mlp' (upstream default: the "
                                     "MLP's linears) or 'none'", group="DSnoT", choices=("mlp", "none"))
    ria_alpha: float = setting(0.5, "RIA: exponent a on ||X_j||_2 (>= 0)", group="RIA")
    ria_group: str = setting("layer", "RIA: compare scores over the whole layer (upstream default) or per output "
                                      "row (upstream --per_outneuron)", group="RIA", choices=("layer", "row"))
    permute: bool = setting(False, "N:M: reorder input channels before the mask so large scores spread over "
                                   "groups (RIA's channel reallocation; any score method); folded into the MLP",
                            group="RIA")

    def __post_init__(self) -> None:
        if self.sparsity_ratio is None:
            n, m = parse_sparsity_type(self.sparsity_type)
            object.__setattr__(self, "sparsity_ratio", n / m if m else 0.5)
        check_finite(self)
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
        if self.seed < 0:
            # random.Random(-1) is random.Random(1): a negative seed would silently repeat another seed's run.
            raise ConfigError(f"seed {self.seed} must be >= 0")
        # 0 leaves a rank-deficient Hessian without dampening (Cholesky fails); above 1 the damping outweighs the
        # data and SparseGPT degenerates to magnitude pruning.
        if not 0.0 < self.percdamp <= 1.0:
            raise ConfigError(f"percdamp {self.percdamp} must be in (0, 1] (SparseGPT's default is 0.01)")
        for name in ("sel_tau_percentile", "sel_top_quantile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} {getattr(self, name)} must be in (0, 1)")
        for name in ("sel_idf_clip_max", "sel_spiky_clip_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be > 0")
        if not 0.0 <= self.sel_idf_clip_min <= self.sel_idf_clip_max:
            raise ConfigError(f"sel_idf_clip_min {self.sel_idf_clip_min} must be in [0, sel_idf_clip_max "
                              f"{self.sel_idf_clip_max}]")
        for name in ("sel_idf_exp", "sel_spiky_exp", "nr_exp"):
            # A factor of 10 (the default clip) to a power beyond 10 is beyond float16, and beyond 38 beyond
            # float32: the scores become inf or 0 and the mask is arbitrary.
            if not -MAX_EXPONENT <= getattr(self, name) <= MAX_EXPONENT:
                raise ConfigError(f"{name} {getattr(self, name)} must be in [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
        check_choice(self, "nr_granularity")
        if self.neuronrank_max_classes < 0 or self.neuronrank_max_classes == 1:
            # One class makes every between-class variance and Fisher ratio 0: the scores degenerate silently.
            raise ConfigError(f"neuronrank_max_classes {self.neuronrank_max_classes} must be 0 (no classes) or >= 2")
        for name in ("layer_ratios", "owl_score", "refine", "dsnot_skip", "ria_group"):
            check_choice(self, name)
        if not self.owl_m > 0:
            raise ConfigError(f"owl_m {self.owl_m} must be > 0")
        if self.dsnot_threshold < 0:
            raise ConfigError(f"dsnot_threshold {self.dsnot_threshold} must be >= 0")
        # Ratios spread over more than [0, 1) cannot be meant; nor can an exponent beyond the others' range, or
        # more swaps per row than any layer has columns to swap (a typo would run for hours).
        if not 0 <= self.owl_lambda <= 0.5:
            raise ConfigError(f"owl_lambda {self.owl_lambda} must be in [0, 0.5] (OWL's default is 0.08)")
        if not 0 <= self.ria_alpha <= MAX_EXPONENT:
            raise ConfigError(f"ria_alpha {self.ria_alpha} must be in [0, {MAX_EXPONENT}] (RIA's default is 0.5)")
        if not 0 <= self.dsnot_cycles <= 100_000:
            raise ConfigError(f"dsnot_cycles {self.dsnot_cycles} must be in [0, 100000] (DSnoT's default is 50)")

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
    seqlen: int | None = setting(None, "tokens per calibration/evaluation window (default min(2048, model "
                                       "maximum))", group="data")
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
    eval_limit: int | None = setting(None, "evaluate only the first N windows (default all)", group="evaluation")
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
    zs_limit: int | None = setting(None, "items per zero-shot task (default all)", group="evaluation")
    zs_batch_size: str = setting("1", "zero-shot batch size: a positive integer, or auto (lm-eval finds the "
                                      "largest that fits)", group="evaluation")
    save: str | None = setting(None, "folder for results.json and log_{method}.txt", group="outputs")
    save_model: str | None = setting(None, "folder for the pruned model (safetensors) and tokenizer",
                                     group="outputs")
    save_stats: bool = setting(False, "per-layer selection statistics in results.json", group="outputs")

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
