"""Prune a Hugging Face causal LM one-shot and evaluate it.

    python main.py --model smollm2-135m --prune_method wanda --sparsity_ratio 0.5 \
        --sparsity_type unstructured --nsamples 32 --seqlen 512 --eval_limit 16 --save out/wanda
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    # Ctrl-C or SIGTERM during the imports below (seconds) would print their traceback; nothing is written yet.
    from lib.cli import quiet_startup

    quiet_startup()

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib.checks import check_apart, check_dense_perplexity, check_finite_weights, check_free_space, \
    check_model_target, check_not_degenerate, check_output_dir, json_safe, locate_non_finite, sparsity_miss
from lib.cli import OneLineParser, Progress, add_settings, run_cli, settings_from
from lib.config import ConfigError, PruneConfig, RunConfig
from lib.errors import RunError
from lib.data import DataError, EvalText, calibration_source, calibration_windows, load_calibration_texts, \
    bos_record, choose_seqlen, load_eval_text, resolve_bos, resolve_data_dir, text_sha256
from lib.eval import eval_ppl
from lib.plugins import ADDONS, METHODS, Method, find_method, selector_choices
from lib.models import check_weights_match, find_decoder_layers, load_config, load_tokenizer, \
    max_sequence_length, resolve_model
from lib.offload import LayerStore, load_with_store
from lib.protocols import PROTOCOLS, protocol_settings
from lib.prune import PruneReport, check_layers, needs_calibration, prune_model
from lib.runinfo import git_commit, keep_apart, peak_rss_mb, save_model_atomic, versions, write_atomic_all, \
    write_failure
from lib.sparsity import check_sparsity

# The phase the run is in and what it has written; run() updates it, the Ctrl-C message reads it.
PROGRESS = Progress()


def registry_help() -> str:
    """The methods and the add-ons, one line each, for the end of --help."""
    width = max(map(len, [*METHODS, *ADDONS]))
    methods = "\n".join(f"  {name:<{width}}  {METHODS[name].help}" for name in sorted(METHODS))
    addons = "\n".join(f"  {name:<{width}}  {cls.help} (--{cls.selector}{'' if cls.off is False else ' ' + name})"
                       for name, cls in sorted(ADDONS.items()))
    return f"methods (--prune_method):\n{methods}\n\nadd-ons (compose with the score methods):\n{addons}"


def build_parser() -> argparse.ArgumentParser:
    """Every flag comes from a RunConfig or PruneConfig field; the methods and add-ons are listed after them."""
    p = OneLineParser(description=__doc__, epilog=registry_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, RunConfig)
    add_settings(p, PruneConfig, choices=selector_choices())
    return p


@dataclass
class Plan:
    """What the checks established before the model loads: the method, the window length, the token ids."""

    method: Method
    data_dir: Path | None
    seqlen: int
    eval_sets: dict[str, EvalSet]  # --eval_dataset, in order; the first gives ppl_dense / ppl_pruned
    calib_ids: torch.Tensor  # [nsamples, seqlen] (0 rows when the method needs no calibration); 1 + seqlen with BOS
    bos_id: int | None = None  # in front of every calibration and evaluation window (--bos); None: Wanda's windows
    calib: dict = field(default_factory=dict)  # calib_source, calib_sha256 for results.json
    tasks: list[str] | None = None
    task_plan: object = None


def check_structure(model_config, config: PruneConfig, folder: Path | None = None) -> int:
    """Build the model on the meta device (no weights, no memory): decoder layers found, the config agrees with
    the checkpoint in folder (tensor names and shapes), widths fit N:M and the settings' limits -> its parameter
    count."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(model_config)
    except (ValueError, KeyError, TypeError) as err:  # a config no causal-LM class accepts
        raise ConfigError(f"model type '{getattr(model_config, 'model_type', '?')}' is not a causal LM that "
                          f"transformers can build ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if folder is not None:
        check_weights_match(skeleton, folder)
    check_layers(find_decoder_layers(skeleton), config)
    return sum(p.numel() for p in skeleton.parameters())


def plan_zero_shot(run_cfg: RunConfig, data_dir: Path | None):
    """The zero-shot tasks and where each will come from; a request where none can run is an error."""
    from lib.zeroshot import DEFAULT_TASKS, plan_tasks

    tasks = run_cfg.task_list() or list(DEFAULT_TASKS)
    task_plan = plan_tasks(tasks, data_dir)
    if not task_plan.local and not task_plan.hub:
        name, reason = next(iter(task_plan.skipped.items()))
        raise ConfigError(f"no zero-shot task of {tasks} can run here: '{name}': {reason}")
    if task_plan.hub:
        from lib.zeroshot import unknown_hub_tasks

        unknown = unknown_hub_tasks(task_plan.hub)
        if unknown:
            name, hint = next(iter(unknown.items()))
            raise ConfigError(f"zero-shot task '{name}' is not an lm-eval task{hint}; "
                              f"{len(unknown)} of {tasks} unknown")
    for name, reason in task_plan.skipped.items():
        logging.getLogger("lib.zeroshot").warning("zero-shot: will skip task '%s': %s", name, reason)
    return tasks, task_plan


def check_zero_shot_done(results: dict, plan: Plan) -> None:
    """After everything is saved: a task that could not be loaded or returned nothing (the ones skipped by plan,
    warned about before pruning, aside) makes the run fail, so a batch does not take it as complete."""
    failed = {name: row["skipped"] for name, row in (results.get("zero_shot") or {}).items()
              if "skipped" in row and name not in plan.task_plan.skipped}
    if failed:
        name, reason = next(iter(failed.items()))
        raise RunError(f"zero-shot: {len(failed)} task(s) not evaluated, first '{name}': {reason}; the rest of the "
                       "results are saved")


def model_inputs(run_cfg: RunConfig) -> dict[str, Path]:
    """The files the run reads its model from ({what: path}), which no output may replace or write into."""
    source, gguf = resolve_model(run_cfg.model, run_cfg.cache_dir)
    inputs = {"--model folder": Path(source)} if Path(source).is_dir() else {}
    return {**inputs, "--model file": gguf} if gguf is not None else inputs


def check_outputs(run_cfg: RunConfig, inputs: dict[str, Path]) -> None:
    """--save, --save_model, --cache_dir and --offload_dir must be (or become) writable folders, tried with a
    real file, and none may be or lie inside the model's folder.

    A --save_model folder is replaced as a whole (atomically): only a new or empty one, or one an earlier save
    wrote (lib.runinfo.MARKER), never one that holds the model or a researcher's other files.
    """
    for flag, path in (("--save", run_cfg.save), ("--save_model", run_cfg.save_model),
                       ("--cache_dir", run_cfg.cache_dir), ("--offload_dir", run_cfg.offload_dir)):
        if path:
            check_output_dir(flag, path)
    for flag, path in (("--save", run_cfg.save), ("--offload_dir", run_cfg.offload_dir)):
        if path:
            check_apart(flag, path, inputs)
    if run_cfg.save_model:
        check_model_target("--save_model", run_cfg.save_model, inputs)


def check_space(run_cfg: RunConfig, model_config, parameters: int, converting: bool) -> None:
    """The disks of the outputs whose size is known before the work hold it: the pruned model (--save_model),
    the pruned layers (--offload disk), the float32 conversion of a GGUF file (--cache_dir), results (--save)."""
    import tempfile

    from lib.models import resolve_dtype

    model_bytes = parameters * resolve_dtype(run_cfg.dtype, model_config).itemsize
    needs = [("--save", run_cfg.save, 2**20)] if run_cfg.save else []
    if run_cfg.save_model:
        needs.append(("--save_model", run_cfg.save_model, model_bytes))
    if run_cfg.offload == "disk":
        needs.append(("--offload_dir", run_cfg.offload_dir or tempfile.gettempdir(), model_bytes))
    if converting:
        needs.append(("--cache_dir", run_cfg.cache_dir, parameters * 4))
    check_free_space(needs)


@dataclass
class EvalSet:
    """One --eval_dataset entry, tokenised: its stream and where it came from (recorded in results.json)."""

    ids: torch.Tensor  # [1, N]
    source: str
    sha256: str


def count_eval_windows(run_cfg: RunConfig, name: str, test_ids: torch.Tensor, seqlen: int, source: str) -> None:
    """The evaluation text must hold one window of seqlen tokens, and --eval_limit no more than it holds."""
    windows = test_ids.numel() // seqlen
    what = f"WikiText-2 {run_cfg.eval_split}" if name == "wikitext2" else f"eval_dataset {name}"
    if windows == 0:
        raise DataError(f"{what} ({source}) has {test_ids.numel()} tokens, fewer than one evaluation window of "
                        f"seqlen {seqlen}; lower --seqlen or use more text")
    if run_cfg.eval_limit is not None and run_cfg.eval_limit > windows:
        raise ConfigError(f"eval_limit {run_cfg.eval_limit} exceeds the {windows} windows of {seqlen} tokens in "
                          f"{what} ({source}); use --eval_limit <= {windows} or omit it")


def tokenize_eval(text: EvalText, tokenizer, bos: bool, seqlen: int) -> torch.Tensor:
    """An evaluation text's stream [1, N] (a function of its own, so a batch runner can memoise it)."""
    return text.ids(tokenizer, bos, seqlen)


def plan_eval_sets(run_cfg: RunConfig, data_dir: Path | None, tokenizer, bos: bool, seqlen: int) -> dict[str, EvalSet]:
    """Every --eval_dataset entry read, tokenised and counted, before the model loads."""
    sets = {}
    for name in run_cfg.eval_list():
        text = load_eval_text(name, run_cfg.eval_split, data_dir, run_cfg.eval_field)
        ids = tokenize_eval(text, tokenizer, bos, seqlen)
        count_eval_windows(run_cfg, name, ids, seqlen, text.source)
        sets[name] = EvalSet(ids, text.source, text_sha256(text.texts))
    return sets


def check(run_cfg: RunConfig, config: PruneConfig) -> Plan:
    """Everything that can fail before the model loads: method, outputs, model, seqlen, widths, tasks, and the
    data, read and tokenised (the tokenizer loads without the weights) so every count is checked."""
    method = find_method(config)
    inputs = model_inputs(run_cfg)
    check_outputs(run_cfg, inputs)
    data_dir = resolve_data_dir(run_cfg.data_dir)
    model_config = load_config(run_cfg.model, run_cfg.cache_dir)
    tokenizer = load_tokenizer(run_cfg.model, run_cfg.cache_dir)
    bos_id = resolve_bos(run_cfg.bos, model_config.model_type, tokenizer)
    seqlen = choose_seqlen(run_cfg.seqlen, max_sequence_length(model_config), run_cfg.seqlen_max, bos_id is not None)
    parameters = check_structure(model_config, config, inputs.get("--model folder"))
    check_space(run_cfg, model_config, parameters, "--model file" in inputs)
    tasks, task_plan = plan_zero_shot(run_cfg, data_dir) if run_cfg.eval_zero_shot else (None, None)
    # Read and count the data before paying for the model, so a missing or damaged file fails in seconds.
    calib_texts = (load_calibration_texts(run_cfg.calib_dataset, data_dir, run_cfg.calib_field)
                   if needs_calibration(method, config) else None)
    eval_sets = plan_eval_sets(run_cfg, data_dir, tokenizer, bos_id is not None, seqlen)
    calib_ids, calib = torch.zeros(0, seqlen, dtype=torch.long), {}
    if calib_texts is not None:
        source = calibration_source(run_cfg.calib_dataset, data_dir)
        calib_ids = calibration_windows(run_cfg.calib_dataset, calib_texts, tokenizer, config.nsamples, config.seed,
                                        seqlen, source=source, bos_id=bos_id)
        calib = {"calib_source": source, "calib_sha256": text_sha256(calib_texts)}
    return Plan(method, data_dir, seqlen, eval_sets, calib_ids, bos_id, calib, tasks, task_plan)


def save_outputs(run_cfg: RunConfig, results: dict, store: LayerStore, tokenizer, seconds: dict,
                 t_start: float) -> None:
    """The pruned model (--save_model), then results.json and Wanda's log file (--save), each atomically.

    results.json is strict JSON: a non-finite number (an overflowed perplexity) is written as null and its key
    listed under "non_finite" (lib.checks.json_safe).
    """
    if run_cfg.save_model:
        t = time.time()
        needed = sum(p.numel() * p.element_size() for p in store.model.parameters())
        record = {"written_by": "main.py --save_model", "model": results["model"], "config": results["config"]}
        save_model_atomic(store.save_pretrained, tokenizer, Path(run_cfg.save_model).expanduser(), needed, record)
        PROGRESS.written.append(run_cfg.save_model)
        seconds["save_model"] = time.time() - t
        print(f"saved pruned model to {run_cfg.save_model}")
    seconds["total"] = time.time() - t_start
    results.update({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "versions": versions(), "git_commit": git_commit(), "argv": sys.argv[1:],
    })
    safe, non_finite = json_safe(results)
    if non_finite:
        safe["non_finite"] = non_finite
        results["non_finite"] = non_finite
        print(f"warning: {', '.join(non_finite)} not finite; recorded as null in results.json")
    if run_cfg.save:
        write_results(Path(run_cfg.save).expanduser(), results, json.dumps(safe, indent=2, allow_nan=False) + "\n")


# What makes two runs the same run: an earlier results.json in --save that differs in any is kept apart.
SAME_RUN = ("model", "prune_method", "sparsity_type", "sparsity_ratio", "seed", "nsamples", "seqlen", "eval_limit",
            "eval_split", "calib_dataset", "bos", "config")


def write_results(save: Path, results: dict, text: str) -> None:
    """Wanda's log_{method}.txt and results.json into save, both or neither (results.json last, as the mark of a
    finished run); an earlier run's results.json of other settings is renamed first, never replaced."""
    kept = keep_apart(save / "results.json", json.loads(text), SAME_RUN)
    if kept:
        print(f"kept the results.json of an earlier run with other settings as {kept}")
    method, sparsity, ppl = results["prune_method"], results["measured_sparsity"], results["ppl_pruned"]
    log = f"method\tactual_sparsity\tppl_test\n{method}\t{sparsity:.4f}\t{ppl:.4f}\n"
    try:
        write_atomic_all({save / f"log_{method}.txt": log, save / "results.json": text})
    except OSError as err:
        raise write_failure("results", save, err) from None
    PROGRESS.written.append(str(save / "results.json"))
    print(f"wrote {save / 'results.json'}")


def evaluate(model, store: LayerStore, plan: Plan, run_cfg: RunConfig, which: str, seconds: dict) -> dict[str, float]:
    """The 'dense' or 'pruned' perplexity of every --eval_dataset, timed and printed; layers onloaded as the
    forward goes.

    NaN means broken activations, so the first linear that outputs NaN/inf is named. inf alone is a result (a
    destroyed model's loss overflows exp) and is recorded, as null, in results.json.
    """
    PROGRESS.phase = f"{which} evaluation"
    t = time.time()
    ppls = {}
    with store.streaming():
        for name, eval_set in plan.eval_sets.items():
            ppl = eval_ppl(model, eval_set.ids, plan.seqlen, run_cfg.eval_limit, run_cfg.eval_batch_size, plan.bos_id)
            if math.isnan(ppl):
                locate_non_finite(model, find_decoder_layers(model), eval_set.ids[:, :plan.seqlen])
                raise RunError(f"{which} perplexity is NaN although every linear's output is finite on the first "
                               "window; try --dtype float32")
            label = f"wikitext2 {run_cfg.eval_split}" if name == "wikitext2" else name
            print(f"{which} perplexity ({label}): {ppl:.4f}")
            if which == "dense":
                check_dense_perplexity(ppl, getattr(model.config.get_text_config(), "vocab_size", None))
            ppls[name] = ppl
    seconds[f"eval_{which}"] = time.time() - t
    return ppls


def results_record(run_cfg: RunConfig, config: PruneConfig, plan: Plan, model, sparsity: float, per_layer: list,
                   dense: dict[str, float] | None, pruned: dict[str, float]) -> dict:
    """results.json's content before the add-ons' extras and the run's bookkeeping (save_outputs adds those).

    ppl_dense / ppl_pruned are the first --eval_dataset's (WikiText-2 by default); "eval_datasets" holds every
    entry's source, content hash and both perplexities.
    """
    first = next(iter(plan.eval_sets))
    evals = {name: {"source": s.source, "sha256": s.sha256, "ppl_dense": dense[name] if dense else None,
                    "ppl_pruned": pruned[name]} for name, s in plan.eval_sets.items()}
    return {
        "model": run_cfg.model, "protocol": run_cfg.protocol, "prune_method": config.prune_method,
        "sparsity_type": config.sparsity_type, "sparsity_ratio": config.sparsity_ratio,
        "measured_sparsity": sparsity, "layer_sparsity": per_layer,
        "ppl_dense": dense[first] if dense else None, "ppl_pruned": pruned[first], "eval_split": run_cfg.eval_split,
        "eval_datasets": evals, "calib_dataset": run_cfg.calib_dataset, **plan.calib, "seed": config.seed,
        "nsamples": config.nsamples, "seqlen": plan.seqlen, **bos_record(plan.bos_id, run_cfg.bos),
        "eval_limit": run_cfg.eval_limit,
        "parameters": sum(p.numel() for p in model.parameters()), "config": config.to_dict(),
    }


def prune(model, store: LayerStore, plan: Plan, run_cfg: RunConfig, config: PruneConfig,
          seconds: dict) -> tuple[PruneReport, float, list[float]]:
    """The pruning phase, timed -> (the driver's report, measured sparsity, per-layer sparsity)."""
    PROGRESS.phase = "pruning"
    t = time.time()
    report = prune_model(model, plan.calib_ids, config, record_stats=run_cfg.save_stats, store=store)
    seconds["prune"] = time.time() - t
    if report.shrunk or store.mode == "disk":
        # Dropped neurons are gone from the weights (and layers on disk are not in memory): the driver counted
        # each layer's zeros right after pruning it, against its original size.
        sparsity, per_layer = report.sparsity, report.layer_sparsity
    else:
        sparsity, per_layer = check_sparsity(model)
    print(f"pruned with {config.prune_method} ({config.sparsity_type}, ratio {config.sparsity_ratio}) in "
          f"{seconds['prune']:.1f}s; measured sparsity {sparsity:.4f}")
    if sparsity_miss(config.sparsity_ratio, sparsity):
        print(sparsity_miss(config.sparsity_ratio, sparsity))
    return report, sparsity, per_layer


def run(run_cfg: RunConfig, config: PruneConfig) -> dict:
    """The whole job: check, load, prune, evaluate, save. Returns results.json's content."""
    t_start = time.time()
    seconds: dict[str, float | None] = {}
    PROGRESS.phase, PROGRESS.written = "check", []
    t = time.time()
    plan = check(run_cfg, config)
    seconds["calibration_data"] = time.time() - t  # reading and tokenising the data is most of the check

    PROGRESS.phase = "load"
    t = time.time()
    model, tokenizer, store = load_with_store(run_cfg.model, run_cfg.cache_dir, run_cfg.dtype, run_cfg.device_map,
                                              run_cfg.offload, run_cfg.offload_dir)
    if store.mode != "disk":  # on disk the layers are checked as they are visited (their statistics)
        check_finite_weights(find_decoder_layers(model))
        check_not_degenerate(find_decoder_layers(model))
    seconds["load"] = time.time() - t
    print(f"loaded {run_cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) in "
          f"{seconds['load']:.1f}s; seqlen {plan.seqlen}, dtype {next(model.parameters()).dtype}, device "
          f"{store.device}, offload {store.mode}, device_map {run_cfg.device_map or 'none'}")

    dense = None if run_cfg.no_dense_eval else evaluate(model, store, plan, run_cfg, "dense", seconds)

    report, sparsity, per_layer = prune(model, store, plan, run_cfg, config, seconds)
    pruned = evaluate(model, store, plan, run_cfg, "pruned", seconds)

    results = results_record(run_cfg, config, plan, model, sparsity, per_layer, dense, pruned)
    if plan.tasks:
        from lib.zeroshot import eval_zero_shot, format_zero_shot_table

        PROGRESS.phase = "zero-shot evaluation"
        t = time.time()
        zs_batch = run_cfg.zs_batch_size if run_cfg.zs_batch_size == "auto" else int(run_cfg.zs_batch_size)
        with store.streaming():
            results["zero_shot"] = eval_zero_shot(model, tokenizer, plan.tasks, run_cfg.zs_limit, zs_batch,
                                                  plan.data_dir, plan.task_plan)
        seconds["zero_shot"] = time.time() - t
        print(format_zero_shot_table(results["zero_shot"]))
    results.update(report.results())
    if run_cfg.save_stats:
        results["layer_stats"] = report.layer_stats
    PROGRESS.phase = "save"
    save_outputs(run_cfg, results, store, tokenizer, seconds, t_start)
    if plan.tasks:
        check_zero_shot_done(results, plan)
    PROGRESS.phase = "done"
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse argv, run, and return the exit status: 0 done, 2 bad input, 3 failed on the data or the model's
    numbers (one line each; --debug adds the traceback), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM:
    Slurm's preemption or time limit), each with one line naming the phase."""
    PROGRESS.phase, PROGRESS.written = "startup", []
    git_commit()  # read once per process, before any run (lib.runinfo.git_commit)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.protocol in PROTOCOLS:  # an unknown name is left to RunConfig's one-line error
        parser.set_defaults(**protocol_settings(args.protocol))  # flags on the command line still win
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_cli(lambda: run(settings_from(RunConfig, args), settings_from(PruneConfig, args)), PROGRESS,
                   debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
