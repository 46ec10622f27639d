"""WikiText-2 perplexity (lib/eval.py's) of a pruned model, then of base + LoRA adapter, optionally merged and zero-shot.

    python lora_ft/evaluate_ppl.py --model out/zs_wanda/model --lora_weights out/lora_wanda \
        --seqlen 512 --eval_limit 16 --merge_masked

--merge_masked folds the adapter into the weights and re-zeros every pruned weight (sparsity kept);
--merge folds it in plainly, which fills the pruned weights and destroys sparsity (it says so).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from lib.cli import quiet_startup

    quiet_startup()  # Ctrl-C or SIGTERM during the imports below: one line, no traceback

import argparse
import json
from dataclasses import dataclass
from typing import ClassVar
import logging
from pathlib import Path

import torch

from lib.checks import check_model_target, check_output_dir
from lib.cli import OneLineParser, Progress, add_settings, run_cli, settings_from
from lib.config import BOS_MODES, ConfigError, Settings, setting
from lib.models import DTYPES
from lib.runinfo import save_model_atomic, write_atomic
from lora_ft.lora_utils import merge_lora

logger = logging.getLogger("lora_ft.evaluate_ppl")
# The phase the run is in and what it has written, for the one-line Ctrl-C / SIGTERM message.
PROGRESS = Progress()

@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """evaluate_ppl.py's flags; the evaluation flags mean what they mean in main.py."""

    group: ClassVar[str] = "evaluation"
    lora_weights: str | None = setting(None, "adapter folder written by lora_ft/finetune_lm.py", required=True)
    model: str | None = setting(None, "base model (default: the one recorded in the adapter's config)")
    data_dir: str | None = setting(None, "local data folder (default: $WANDA_DATA_DIR)")
    cache_dir: str = setting("llm_weights", "hub cache and GGUF conversions")
    seqlen: int | None = setting(None, "evaluation window in tokens (default min(2048, model maximum), as main.py)",
                                 bounds="positive")
    eval_limit: int | None = setting(None, "evaluate only the first N windows", bounds="positive")
    eval_batch_size: int = setting(1, "windows per forward", bounds="positive")
    bos: str = setting("auto", "BOS token in front of every evaluation window, as main.py's --bos: auto (default: "
                               "Gemma-family models), always, never", choices=BOS_MODES)
    skip_base: bool = setting(False, "do not evaluate the base model without the adapter")
    merge_masked: bool = setting(False, "merge the adapter, then re-apply the pruning mask (keeps sparsity)")
    merge: bool = setting(False, "merge the adapter plainly (fills pruned weights: destroys sparsity)")
    save_merged: str | None = setting(None, "save the merged model (and tokenizer) to this folder")
    eval_zero_shot: bool = setting(False, "also run lm-eval zero-shot on the final model")
    tasks: str | None = setting(None, "comma-separated lm-eval tasks (default: Wanda's seven)")
    zs_limit: int | None = setting(None, "items per zero-shot task", bounds="positive")
    zs_batch_size: int = setting(8, "zero-shot batch size", bounds="positive")
    dtype: str | None = setting(None, "default float32 on CPU, float16 on CUDA (lib.models' default)",
                                choices=tuple(sorted(DTYPES)))
    output: str | None = setting(None, "results JSON (default: <lora_weights>/eval_results.json)")

    def check(self) -> None:
        if self.merge and self.merge_masked:
            raise ConfigError("--merge and --merge_masked exclude each other; pass one")
        if self.save_merged and not (self.merge or self.merge_masked):
            raise ConfigError(f"--save_merged {self.save_merged} needs --merge_masked (keeps sparsity) or --merge")
        for name in ("tasks", "zs_limit"):
            if not self.eval_zero_shot and getattr(self, name) is not None:
                raise ConfigError(f"--{name} {getattr(self, name)} has no effect without --eval_zero_shot; add "
                                  "--eval_zero_shot or drop it")
        if self.tasks is not None and not self.task_list():
            raise ConfigError(f"tasks '{self.tasks}' names no task; pass comma-separated lm-eval task names")

    def task_list(self) -> list[str] | None:
        """The --tasks names (None when not given: the default tasks)."""
        return None if self.tasks is None else [t.strip() for t in self.tasks.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The CLI, built from EvaluateSettings (each flag declared once, with its rule)."""
    p = OneLineParser(description=__doc__.splitlines()[0])
    add_settings(p, EvaluateSettings)
    return p


def check_adapter(adapter: Path) -> str:
    """The adapter folder must hold a readable adapter_config.json and intact weights -> its base model spec."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"lora_weights '{adapter}' has no adapter_config.json; pass the --output_dir of "
                          "finetune_lm.py")
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, OSError, AttributeError) as err:
        raise ConfigError(f"lora_weights '{config_file}' is not a valid adapter config ({err})") from None
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), "pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError: truncated or damaged
            raise ConfigError(f"adapter weights '{weights}' are damaged or truncated ({err})") from None
    elif not (adapter / "adapter_model.bin").is_file():
        raise ConfigError(f"lora_weights '{adapter}' has no adapter_model.safetensors")
    return base


def main(argv: list[str] | None = None) -> dict:
    """Evaluate and return (and save) {sparsity, ppl} for base, base + adapter, and the merged model."""
    args = settings_from(EvaluateSettings, build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from peft import PeftModel

    from lib.data import (bos_record, choose_seqlen, load_wikitext2_rows, resolve_bos, resolve_data_dir,
                          wikitext2_ids)
    from lib.eval import eval_ppl
    from lib.models import load_config, load_model, load_tokenizer, max_sequence_length, resolve_model
    from lib.sparsity import check_sparsity

    PROGRESS.phase, PROGRESS.written = "check", []
    tasks = args.task_list()
    adapter = Path(args.lora_weights)
    spec = args.model or check_adapter(adapter)
    if args.model:
        check_adapter(adapter)
    if not spec:
        raise ConfigError(f"lora_weights '{adapter}' records no base model; pass --model")
    output = Path(args.output) if args.output else adapter / "eval_results.json"
    if output.is_dir():
        raise ConfigError(f"--output '{output}' is a folder; pass a file name such as eval_results.json")
    check_output_dir("--output's folder", output.parent)
    if args.save_merged:
        check_output_dir("--save_merged", args.save_merged)
        source = resolve_model(spec, args.cache_dir)[0]
        inputs = {"--lora_weights folder": adapter, **({"base model folder": source} if Path(source).is_dir() else {})}
        check_model_target("--save_merged", args.save_merged, inputs)
    data_dir = resolve_data_dir(args.data_dir)

    # Model files, data and window counts first: a bad input should fail before the model is loaded.
    model_config = load_config(spec, args.cache_dir)
    tokenizer = load_tokenizer(spec, args.cache_dir)
    bos_id = resolve_bos(args.bos, model_config.model_type, tokenizer)  # as main.py: the same windows it evaluates
    seqlen = choose_seqlen(args.seqlen, max_sequence_length(model_config), bos=bos_id is not None)
    test_ids = wikitext2_ids(load_wikitext2_rows("test", data_dir), tokenizer, bos_id is not None)
    windows = test_ids.numel() // seqlen
    if windows == 0:
        raise ConfigError(f"WikiText-2 test has {test_ids.numel()} tokens, fewer than one window of seqlen {seqlen}")
    if args.eval_limit is not None and args.eval_limit > windows:
        raise ConfigError(f"eval_limit {args.eval_limit} exceeds the {windows} windows of {seqlen} tokens in "
                          f"WikiText-2 test; use --eval_limit <= {windows} or omit it")
    PROGRESS.phase = "load"
    model, tokenizer = load_model(spec, cache_dir=args.cache_dir, dtype=DTYPES[args.dtype] if args.dtype else None)
    PROGRESS.phase = "evaluation"
    results: dict = {"model": spec, "lora_weights": str(adapter), "seqlen": seqlen, "eval_limit": args.eval_limit,
                     **bos_record(bos_id, args.bos),
                     "command": " ".join(["python", "lora_ft/evaluate_ppl.py",
                                          *(argv if argv is not None else sys.argv[1:])])}

    def ppl(m: torch.nn.Module) -> float:
        return eval_ppl(m, test_ids, seqlen, limit=args.eval_limit, batch_size=args.eval_batch_size, bos_id=bos_id)

    results["base_sparsity"] = check_sparsity(model)[0]
    if not args.skip_base:
        results["ppl_base"] = ppl(model)
        print(f"base            sparsity {results['base_sparsity']:.4f}  wikitext2 ppl {results['ppl_base']:.4f}")

    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    # The wrapped model itself: LoRA layers are injected in place, so it runs base + adapter.
    final = peft_model.get_base_model()
    results["ppl_adapter"] = ppl(final)
    print(f"base + adapter  (adapter unmerged, dense update)  wikitext2 ppl {results['ppl_adapter']:.4f}")

    if args.merge or args.merge_masked:
        final, report = merge_lora(peft_model, masked=args.merge_masked)
        kind = "merged_masked" if args.merge_masked else "merged"
        results[f"{kind}_sparsity"] = check_sparsity(final)[0]
        results[f"ppl_{kind}"] = ppl(final)
        results["merge"] = {"masked": report.masked, "adapted_zeros_before": report.zeros_before,
                            "adapted_zeros_after": report.zeros_after, "adapted_numel": report.numel}
        note = ("pruning mask re-applied" if args.merge_masked
                else "UNMASKED: the dense LoRA update fills pruned weights, this destroys sparsity")
        print(f"{kind:<15} sparsity {results['base_sparsity']:.4f} -> {results[kind + '_sparsity']:.4f}  "
              f"wikitext2 ppl {results['ppl_' + kind]:.4f}  ({note})")
        if args.save_merged:
            PROGRESS.phase = "save"
            save_model_atomic(final.save_pretrained, tokenizer, Path(args.save_merged).expanduser(),
                              record={"written_by": "lora_ft/evaluate_ppl.py --save_merged", "model": spec})
            PROGRESS.written.append(args.save_merged)
            PROGRESS.phase = "evaluation"
            print(f"merged model saved to {args.save_merged}")

    if args.eval_zero_shot:
        from lib.zeroshot import DEFAULT_TASKS, eval_zero_shot, format_zero_shot_table

        tasks = tasks or list(DEFAULT_TASKS)
        results["zero_shot"] = eval_zero_shot(final, tokenizer, tasks, args.zs_limit, args.zs_batch_size, data_dir)
        print(format_zero_shot_table(results["zero_shot"]))

    write_atomic(output, json.dumps(results, indent=2))
    print(f"results written to {output}")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, PROGRESS))
