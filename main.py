"""Prune a Hugging Face causal LM one-shot and evaluate it.

    python main.py --model smollm2-135m --prune_method wanda --sparsity_ratio 0.5 \
        --sparsity_type unstructured --nsamples 32 --seqlen 512 --eval_limit 16 --save out/wanda
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.cli import OneLineParser, add_settings, run_cli, settings_from
from lib.config import ConfigError, PruneConfig, RunConfig
from lib.data import calibration_windows, load_calibration_texts, load_wikitext2_rows, resolve_data_dir, \
    wikitext2_ids
from lib.eval import eval_ppl
from lib.methods import METHODS, Method, find_method
from lib.models import DTYPES, find_decoder_layers, load_config, load_model, max_sequence_length, resolve_model
from lib.prune import check_widths, needs_calibration, prune_model
from lib.runinfo import git_commit, peak_rss_mb, versions, write_atomic
from lib.sparsity import check_sparsity


def build_parser() -> argparse.ArgumentParser:
    """Every flag comes from a RunConfig or PruneConfig field; the methods are listed after the flags."""
    width = max(map(len, METHODS))
    methods = "\n".join(f"  {name:<{width}}  {METHODS[name].help}" for name in sorted(METHODS))
    p = OneLineParser(description=__doc__, epilog=f"methods (--prune_method):\n{methods}",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, RunConfig)
    add_settings(p, PruneConfig)
    return p


@dataclass
class Plan:
    """What the checks established before the model loads: the method, the data read, the window length."""

    method: Method
    data_dir: Path | None
    seqlen: int
    eval_rows: list[str]
    calib_texts: list[str] | None
    tasks: list[str] | None = None
    task_plan: object = None


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


def plan_zero_shot(run_cfg: RunConfig, data_dir: Path | None):
    """The zero-shot tasks and where each will come from; a request where none can run is an error."""
    from lib.zeroshot import DEFAULT_TASKS, plan_tasks

    tasks = [t.strip() for t in run_cfg.tasks.split(",") if t.strip()] if run_cfg.tasks else list(DEFAULT_TASKS)
    task_plan = plan_tasks(tasks, data_dir)
    if not task_plan.local and not task_plan.hub:
        name, reason = next(iter(task_plan.skipped.items()))
        raise ConfigError(f"no zero-shot task of {tasks} can run here: '{name}': {reason}")
    for name, reason in task_plan.skipped.items():
        logging.getLogger("lib.zeroshot").warning("zero-shot: will skip task '%s': %s", name, reason)
    return tasks, task_plan


def check(run_cfg: RunConfig, config: PruneConfig) -> Plan:
    """Everything that can fail before the model loads: method, outputs, model, seqlen, widths, data, tasks."""
    method = find_method(config)
    if run_cfg.save and Path(run_cfg.save).exists() and not Path(run_cfg.save).is_dir():
        raise ConfigError(f"--save '{run_cfg.save}' exists and is not a folder")
    resolve_model(run_cfg.model, run_cfg.cache_dir)
    data_dir = resolve_data_dir(run_cfg.data_dir)
    model_config = load_config(run_cfg.model, run_cfg.cache_dir)
    seqlen = choose_seqlen(run_cfg.seqlen, max_sequence_length(model_config))
    check_structure(model_config, config)
    tasks, task_plan = plan_zero_shot(run_cfg, data_dir) if run_cfg.eval_zero_shot else (None, None)
    # Read the data before paying for the model, so a missing file fails in a second.
    eval_rows = load_wikitext2_rows(run_cfg.eval_split, data_dir)
    calib_texts = (load_calibration_texts(run_cfg.calib_dataset, data_dir) if needs_calibration(method, config)
                   else None)
    return Plan(method, data_dir, seqlen, eval_rows, calib_texts, tasks, task_plan)


def save_outputs(run_cfg: RunConfig, results: dict, model, tokenizer, seconds: dict, t_start: float) -> None:
    """The pruned model (--save_model), then results.json and Wanda's log file (--save), each atomically."""
    if run_cfg.save_model:
        t = time.time()
        model.save_pretrained(run_cfg.save_model)
        tokenizer.save_pretrained(run_cfg.save_model)
        seconds["save_model"] = time.time() - t
        print(f"saved pruned model to {run_cfg.save_model}")
    seconds["total"] = time.time() - t_start
    results.update({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "versions": versions(), "git_commit": git_commit(), "argv": sys.argv[1:],
    })
    if run_cfg.save:
        save = Path(run_cfg.save)
        write_atomic(save / "results.json", json.dumps(results, indent=2) + "\n")
        # Wanda's log format, for scripts that parse it.
        method, sparsity, ppl = results["prune_method"], results["measured_sparsity"], results["ppl_pruned"]
        write_atomic(save / f"log_{method}.txt", f"method\tactual_sparsity\tppl_test\n{method}\t{sparsity:.4f}\t"
                                                 f"{ppl:.4f}\n")
        print(f"wrote {save / 'results.json'}")


def run(run_cfg: RunConfig, config: PruneConfig) -> dict:
    """The whole job: check, load, calibrate, prune, evaluate, write. Returns results.json's content."""
    t_start = time.time()
    seconds: dict[str, float | None] = {}
    plan = check(run_cfg, config)

    t = time.time()
    model, tokenizer = load_model(run_cfg.model, run_cfg.cache_dir, DTYPES.get(run_cfg.dtype), run_cfg.device_map)
    seconds["load"] = time.time() - t
    print(f"loaded {run_cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{next(model.parameters()).dtype}) in {seconds['load']:.1f}s; seqlen {plan.seqlen}")

    t = time.time()
    test_ids = wikitext2_ids(plan.eval_rows, tokenizer)
    calib_ids = torch.zeros(0, plan.seqlen, dtype=torch.long)
    if plan.calib_texts is not None:
        calib_ids = calibration_windows(run_cfg.calib_dataset, plan.calib_texts, tokenizer, config.nsamples,
                                        config.seed, plan.seqlen)
    seconds["calibration_data"] = time.time() - t

    ppl_dense = None
    if not run_cfg.no_dense_eval:
        t = time.time()
        ppl_dense = eval_ppl(model, test_ids, plan.seqlen, run_cfg.eval_limit, run_cfg.eval_batch_size)
        seconds["eval_dense"] = time.time() - t
        print(f"dense perplexity (wikitext2 {run_cfg.eval_split}): {ppl_dense:.4f}")

    t = time.time()
    report = prune_model(model, calib_ids, config, record_stats=run_cfg.save_stats)
    seconds["prune"] = time.time() - t
    sparsity, per_layer = check_sparsity(model)
    if config.shrink:
        # Dropped neurons are gone from the weights, so count them against the original sizes instead.
        sparsity, per_layer = report.sparsity, report.layer_sparsity
    print(f"pruned with {config.prune_method} ({config.sparsity_type}, ratio {config.sparsity_ratio}) in "
          f"{seconds['prune']:.1f}s; measured sparsity {sparsity:.4f}")

    t = time.time()
    ppl_pruned = eval_ppl(model, test_ids, plan.seqlen, run_cfg.eval_limit, run_cfg.eval_batch_size)
    seconds["eval_pruned"] = time.time() - t
    print(f"pruned perplexity (wikitext2 {run_cfg.eval_split}): {ppl_pruned:.4f}")

    results = {
        "model": run_cfg.model, "prune_method": config.prune_method, "sparsity_type": config.sparsity_type,
        "sparsity_ratio": config.sparsity_ratio, "measured_sparsity": sparsity, "layer_sparsity": per_layer,
        "ppl_dense": ppl_dense, "ppl_pruned": ppl_pruned, "eval_split": run_cfg.eval_split,
        "calib_dataset": run_cfg.calib_dataset, "seed": config.seed, "nsamples": config.nsamples,
        "seqlen": plan.seqlen, "eval_limit": run_cfg.eval_limit, "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
    }
    if plan.tasks:
        from lib.zeroshot import eval_zero_shot, format_zero_shot_table

        t = time.time()
        results["zero_shot"] = eval_zero_shot(model, tokenizer, plan.tasks, run_cfg.zs_limit, run_cfg.zs_batch_size,
                                              plan.data_dir, plan.task_plan)
        seconds["zero_shot"] = time.time() - t
        print(format_zero_shot_table(results["zero_shot"]))
    if config.layer_ratios != "uniform":
        results.update(layer_ratios=report.layer_ratios, outlier_ratios=report.outlier_ratios)
    if config.refine != "none":
        results["refine_swaps"] = report.refine_swaps
    if config.permute:
        # W[:, index] of each linear here is N:M: a runtime gathers its input channels x[..., index] (RESULTS.md).
        results.update(permutations=report.permutations, folded_permutations=report.folded_permutations)
    if run_cfg.save_stats:
        results["layer_stats"] = report.layer_stats
    save_outputs(run_cfg, results, model, tokenizer, seconds, t_start)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_cli(lambda: run(settings_from(RunConfig, args), settings_from(PruneConfig, args)))


if __name__ == "__main__":
    sys.exit(main())
