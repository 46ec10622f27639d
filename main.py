"""Prune a Hugging Face causal LM one-shot and evaluate it.

    python main.py --model smollm2-135m --prune_method wanda --sparsity_ratio 0.5 \
        --sparsity_type unstructured --nsamples 32 --seqlen 512 --eval_limit 16 --save out/wanda
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lib.config import ConfigError, PruneConfig
from lib.data import CALIB_DATASETS, get_calibration, load_c4_texts, load_wikitext2_rows, \
    resolve_data_dir
from lib.eval import eval_ppl
from lib.methods import METHODS
from lib.models import DEFAULT_MODEL, find_decoder_layers, load_config, load_model, max_sequence_length, resolve_model
from lib.prune import check_widths, prune_model
from lib.sparsity import check_sparsity

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "gguf", "numpy", "lm_eval", "peft")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line, like every other input error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="local HF folder, hub id, .gguf file, or the bundled alias 'smollm2-135m' (default)")
    g.add_argument("--cache_dir", default="llm_weights", help="hub cache and GGUF conversions (default llm_weights)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights dtype (default float16 on CUDA, float32 on CPU)")
    g.add_argument("--device_map", default=None, help="'auto' spreads the model over all GPUs (large models)")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune_method", default="wanda", metavar="METHOD",
                   help=f"one of {sorted(METHODS)}")
    g.add_argument("--sparsity_ratio", type=float, default=None,
                   help="fraction of weights to prune, in [0, 1) (default 0.5; N/M for N:M)")
    g.add_argument("--sparsity_type", default="unstructured", help="'unstructured' or N:M such as 2:4, 4:8")
    g.add_argument("--use_variant", action="store_true", help="Wanda's alpha-search variant (unstructured only)")
    g.add_argument("--nsamples", type=int, default=128, help="calibration sequences (default 128)")
    g.add_argument("--seqlen", type=int, default=None,
                   help="tokens per calibration/evaluation window (default min(2048, model maximum))")
    g.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    g.add_argument("--calib_batch_size", type=int, default=0,
                   help="calibration sequences per layer call (default 0: as many as fit 8192 tokens; lower it "
                        "if a layer's activations run out of memory; results are the same)")
    g.add_argument("--calib_dataset", default="c4", help=f"one of {list(CALIB_DATASETS)} (default c4)")
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT block size")
    g.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT dampening, fraction of mean diag(H)")
    g = p.add_argument_group("selectivity (wanda_idf, wanda_spiky, wanda_select)")
    g.add_argument("--sel_tau_percentile", type=float, default=0.6)
    g.add_argument("--sel_top_quantile", type=float, default=0.9)
    g.add_argument("--sel_idf_clip_max", type=float, default=10.0)
    g.add_argument("--sel_idf_clip_min", type=float, default=0.0,
                   help="lower clip of IDF (default 0, the published formula; > 0 keeps always-on channels)")
    g.add_argument("--sel_spiky_clip_max", type=float, default=10.0)
    g.add_argument("--sel_idf_exp", type=float, default=1.0)
    g.add_argument("--sel_spiky_exp", type=float, default=1.0)
    g = p.add_argument_group("NeuronRank (neuronrank, neuronrank_fisher)")
    g.add_argument("--neuronrank-max-classes", "--neuronrank_max_classes", dest="neuronrank_max_classes",
                   type=int, default=512, help="K most frequent calibration token ids used as classes")
    g.add_argument("--nr_granularity", default="weight", help="'weight' (default) or 'neuron' (MLP neurons)")
    g.add_argument("--nr_exp", type=float, default=1.0, help="exponent gamma on the channel factor")
    g.add_argument("--shrink", action="store_true", help="neuron granularity: physically drop pruned neurons")
    g = p.add_argument_group("evaluation")
    g.add_argument("--data_dir", default=None, help="local data folder like ../shared/data (else $WANDA_DATA_DIR, "
                                                    "else the Hugging Face hub)")
    g.add_argument("--eval_limit", type=int, default=None, help="evaluate only the first N windows (default all)")
    g.add_argument("--eval_split", choices=["test", "validation"], default="test", help="WikiText-2 split")
    g.add_argument("--eval_batch_size", type=int, default=1)
    g.add_argument("--no_dense_eval", action="store_true", help="skip the dense model's perplexity")
    g.add_argument("--eval_zero_shot", action="store_true", help="lm-eval zero-shot accuracy after pruning")
    g.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (default: Wanda's seven)")
    g.add_argument("--zs_limit", type=int, default=None, help="items per zero-shot task (default all)")
    g.add_argument("--zs_batch_size", type=int, default=1)
    g = p.add_argument_group("outputs")
    g.add_argument("--save", default=None, help="folder for results.json and log_{method}.txt")
    g.add_argument("--save_model", default=None, help="folder for the pruned model (safetensors) and tokenizer")
    g.add_argument("--save_stats", action="store_true", help="per-layer selection statistics in results.json")
    return p


def make_config(args: argparse.Namespace) -> PruneConfig:
    """The validated pruning config from the parsed flags (the only place that reads the Namespace)."""
    ratio = args.sparsity_ratio
    if ratio is None:
        from lib.config import parse_sparsity_type

        n, m = parse_sparsity_type(args.sparsity_type)
        ratio = n / m if m else 0.5
    return PruneConfig(
        prune_method=args.prune_method, sparsity_ratio=ratio, sparsity_type=args.sparsity_type,
        nsamples=args.nsamples, calib_batch_size=args.calib_batch_size, seed=args.seed, use_variant=args.use_variant, blocksize=args.blocksize,
        percdamp=args.percdamp, sel_tau_percentile=args.sel_tau_percentile, sel_top_quantile=args.sel_top_quantile,
        sel_idf_clip_max=args.sel_idf_clip_max, sel_idf_clip_min=args.sel_idf_clip_min, sel_spiky_clip_max=args.sel_spiky_clip_max,
        sel_idf_exp=args.sel_idf_exp, sel_spiky_exp=args.sel_spiky_exp,
        neuronrank_max_classes=args.neuronrank_max_classes, nr_granularity=args.nr_granularity,
        nr_exp=args.nr_exp, shrink=args.shrink)


def check_args(args: argparse.Namespace) -> None:
    """Input checks that need no model."""
    if args.seqlen is not None and args.seqlen <= 0:
        raise ConfigError(f"seqlen {args.seqlen} must be a positive integer")
    for name in ("eval_limit", "zs_limit", "eval_batch_size", "zs_batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} {value} must be a positive integer")
    if args.calib_dataset not in CALIB_DATASETS:
        raise ConfigError(f"calib_dataset '{args.calib_dataset}' is not one of {list(CALIB_DATASETS)}")
    if args.device_map not in (None, "auto"):
        raise ConfigError(f"device_map '{args.device_map}' is not supported; use 'auto' or omit it")
    if args.save and Path(args.save).exists() and not Path(args.save).is_dir():
        raise ConfigError(f"--save '{args.save}' exists and is not a folder")


def choose_seqlen(requested: int | None, model_max: int | None) -> int:
    """min(2048, model maximum) by default; a request above the model's maximum is an error."""
    if requested is None:
        return min(2048, model_max or 2048)
    if model_max is not None and requested > model_max:
        raise ConfigError(f"seqlen {requested} exceeds the model's maximum of {model_max} positions")
    return requested


def check_structure(model_config, config: PruneConfig) -> None:
    """Build the model on the meta device (no weights, no memory) to check layer widths against N:M."""
    if not config.prune_m:
        return
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config)
    check_widths(find_decoder_layers(skeleton), config)


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def git_commit() -> str | None:
    """HEAD of the repo main.py lives in, with '-dirty' when tracked files changed."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> dict:
    """The whole job: validate, load, calibrate, prune, evaluate, save. Returns results.json's content."""
    t_start = time.time()
    seconds: dict[str, float | None] = {}
    config = make_config(args)
    check_args(args)
    resolve_model(args.model, args.cache_dir)
    data_dir = resolve_data_dir(args.data_dir)
    model_config = load_config(args.model, args.cache_dir)
    seqlen = choose_seqlen(args.seqlen, max_sequence_length(model_config))
    check_structure(model_config, config)
    tasks = task_plan = None
    if args.eval_zero_shot:
        from lib.zeroshot import DEFAULT_TASKS, plan_tasks

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(DEFAULT_TASKS)
        # Say now, not after the pruning, which tasks cannot run here; refuse a request where none can.
        task_plan = plan_tasks(tasks, data_dir)
        if not task_plan.local and not task_plan.hub:
            name, reason = next(iter(task_plan.skipped.items()))
            raise ConfigError(f"no zero-shot task of {tasks} can run here: '{name}': {reason}")
        for name, reason in task_plan.skipped.items():
            logging.getLogger("lib.zeroshot").warning("zero-shot: will skip task '%s': %s", name, reason)
    # Find the data before paying for the model, so a missing file fails in a second.
    eval_rows = load_wikitext2_rows(args.eval_split, data_dir)
    if config.sparsity_ratio > 0 and METHODS[config.prune_method].collectors:
        calib_texts = load_c4_texts(data_dir) if args.calib_dataset == "c4" else None

    t = time.time()
    model, tokenizer = load_model(args.model, args.cache_dir, DTYPES.get(args.dtype), args.device_map)
    seconds["load"] = time.time() - t
    print(f"loaded {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{next(model.parameters()).dtype}) in {seconds['load']:.1f}s; seqlen {seqlen}")

    t = time.time()
    test_ids = tokenizer("\n\n".join(eval_rows), return_tensors="pt").input_ids
    calib_ids = None
    if config.sparsity_ratio > 0 and METHODS[config.prune_method].collectors:
        if args.calib_dataset == "c4":
            from lib.data import c4_windows

            calib_ids = c4_windows(calib_texts, tokenizer, config.nsamples, config.seed, seqlen)
        else:
            calib_ids = get_calibration(args.calib_dataset, tokenizer, config.nsamples, config.seed, seqlen, data_dir)
    seconds["calibration_data"] = time.time() - t

    ppl_dense = None
    if not args.no_dense_eval:
        t = time.time()
        ppl_dense = eval_ppl(model, test_ids, seqlen, args.eval_limit, args.eval_batch_size)
        seconds["eval_dense"] = time.time() - t
        print(f"dense perplexity (wikitext2 {args.eval_split}): {ppl_dense:.4f}")

    t = time.time()
    if calib_ids is None:
        calib_ids = torch.zeros(0, seqlen, dtype=torch.long)
    report = prune_model(model, calib_ids, config, record_stats=args.save_stats)
    seconds["prune"] = time.time() - t
    sparsity, per_layer = check_sparsity(model)
    if config.shrink:
        # Dropped neurons are gone from the weights, so count them against the original sizes instead.
        sparsity, per_layer = report.sparsity, report.layer_sparsity
    print(f"pruned with {config.prune_method} ({config.sparsity_type}, ratio {config.sparsity_ratio}) in "
          f"{seconds['prune']:.1f}s; measured sparsity {sparsity:.4f}")

    t = time.time()
    ppl_pruned = eval_ppl(model, test_ids, seqlen, args.eval_limit, args.eval_batch_size)
    seconds["eval_pruned"] = time.time() - t
    print(f"pruned perplexity (wikitext2 {args.eval_split}): {ppl_pruned:.4f}")

    results = {
        "model": args.model, "prune_method": config.prune_method, "sparsity_type": config.sparsity_type,
        "sparsity_ratio": config.sparsity_ratio, "measured_sparsity": sparsity, "layer_sparsity": per_layer,
        "ppl_dense": ppl_dense, "ppl_pruned": ppl_pruned, "eval_split": args.eval_split,
        "calib_dataset": args.calib_dataset, "seed": config.seed, "nsamples": config.nsamples, "seqlen": seqlen,
        "eval_limit": args.eval_limit, "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
    }
    if tasks:
        from lib.zeroshot import eval_zero_shot, format_zero_shot_table

        t = time.time()
        results["zero_shot"] = eval_zero_shot(model, tokenizer, tasks, args.zs_limit, args.zs_batch_size, data_dir,
                                              task_plan)
        seconds["zero_shot"] = time.time() - t
        print(format_zero_shot_table(results["zero_shot"]))
    if args.save_stats:
        results["layer_stats"] = report.layer_stats
    if args.save_model:
        t = time.time()
        model.save_pretrained(args.save_model)
        tokenizer.save_pretrained(args.save_model)
        seconds["save_model"] = time.time() - t
        print(f"saved pruned model to {args.save_model}")
    seconds["total"] = time.time() - t_start
    results.update({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "versions": versions(), "git_commit": git_commit(), "argv": sys.argv[1:],
    })
    if args.save:
        save = Path(args.save)
        write_atomic(save / "results.json", json.dumps(results, indent=2) + "\n")
        # Wanda's log format, for scripts that parse it.
        write_atomic(save / f"log_{config.prune_method}.txt",
                     f"method\tactual_sparsity\tppl_test\n{config.prune_method}\t{sparsity:.4f}\t{ppl_pruned:.4f}\n")
        print(f"wrote {save / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
