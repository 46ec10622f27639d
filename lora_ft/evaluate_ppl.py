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
import logging
from pathlib import Path

import torch

from lib.checks import check_model_target, check_output_dir
from lib.cli import OneLineParser, Progress, run_cli
from lib.config import ConfigError
from lib.models import DTYPES
from lib.runinfo import save_model_atomic, write_atomic
from lora_ft.lora_utils import merge_lora

logger = logging.getLogger("lora_ft.evaluate_ppl")
# The phase the run is in and what it has written, for the one-line Ctrl-C / SIGTERM message.
PROGRESS = Progress()

def build_parser() -> argparse.ArgumentParser:
    """The CLI; evaluation flags mean what they mean in main.py."""
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--lora_weights", required=True, help="adapter folder written by lora_ft/finetune_lm.py")
    p.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter's config)")
    p.add_argument("--data_dir", default=None, help="local data folder (default: $WANDA_DATA_DIR)")
    p.add_argument("--cache_dir", default="llm_weights")
    p.add_argument("--seqlen", type=int, default=None,
                   help="evaluation window in tokens (default min(2048, model maximum), as main.py)")
    p.add_argument("--eval_limit", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--eval_batch_size", type=int, default=1)
    p.add_argument("--skip_base", action="store_true", help="do not evaluate the base model without the adapter")
    merge = p.add_mutually_exclusive_group()
    merge.add_argument("--merge_masked", action="store_true",
                       help="merge the adapter, then re-apply the pruning mask (keeps sparsity)")
    merge.add_argument("--merge", action="store_true",
                       help="merge the adapter plainly (fills pruned weights: destroys sparsity)")
    p.add_argument("--save_merged", default=None, help="save the merged model (and tokenizer) to this folder")
    p.add_argument("--eval_zero_shot", action="store_true", help="also run lm-eval zero-shot on the final model")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (default: Wanda's seven)")
    p.add_argument("--zs_limit", type=int, default=None, help="items per zero-shot task")
    p.add_argument("--zs_batch_size", type=int, default=8)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default float32 on CPU, float16 on CUDA (lib.models' default)")
    p.add_argument("--output", default=None, help="results JSON (default: <lora_weights>/eval_results.json)")
    return p


def check_args(args: argparse.Namespace) -> list[str] | None:
    """Flags no settings dataclass checks, one line naming the value -> the zero-shot task list (None: default)."""
    for name in ("seqlen", "eval_limit", "zs_limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} {value} must be a positive integer")
    for name in ("eval_batch_size", "zs_batch_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"{name} {getattr(args, name)} must be a positive integer")
    if args.save_merged and not (args.merge or args.merge_masked):
        raise ConfigError(f"--save_merged {args.save_merged} needs --merge_masked (keeps sparsity) or --merge")
    for name in ("tasks", "zs_limit"):
        if not args.eval_zero_shot and getattr(args, name) is not None:
            raise ConfigError(f"--{name} {getattr(args, name)} has no effect without --eval_zero_shot; add "
                              "--eval_zero_shot or drop it")
    tasks = None
    if args.tasks is not None:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not tasks:
            raise ConfigError(f"tasks '{args.tasks}' names no task; pass comma-separated lm-eval task names")
    return tasks


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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from peft import PeftModel

    from lib.data import get_wikitext2_test_ids, resolve_data_dir
    from lib.eval import eval_ppl
    from lib.models import load_config, load_model, load_tokenizer, max_sequence_length, resolve_model
    from lib.sparsity import check_sparsity

    PROGRESS.phase, PROGRESS.written = "check", []
    tasks = check_args(args)
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
    model_max = max_sequence_length(load_config(spec, args.cache_dir))
    if args.seqlen is not None and model_max is not None and args.seqlen > model_max:
        raise ConfigError(f"seqlen {args.seqlen} exceeds the model's maximum of {model_max} positions")
    seqlen = args.seqlen or min(2048, model_max or 2048)
    test_ids = get_wikitext2_test_ids(load_tokenizer(spec, args.cache_dir), data_dir)
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
                     "command": " ".join(["python", "lora_ft/evaluate_ppl.py",
                                          *(argv if argv is not None else sys.argv[1:])])}

    def ppl(m: torch.nn.Module) -> float:
        return eval_ppl(m, test_ids, seqlen, limit=args.eval_limit, batch_size=args.eval_batch_size)

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
