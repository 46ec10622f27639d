"""Peak resident memory per phase of one run on the embedded model (a benchmark, not a test).

    WANDA_DATA_DIR=../shared/data .venv/bin/python bench/bench_memory.py [--method wanda] [--nsamples 32]
    # another version of the code, side by side: PYTHONPATH=<its checkout> .venv/bin/python bench/bench_memory.py
    # the evaluation's output head in chunks of positions vs whole [batch, seqlen, vocab] logits, one run:
    WANDA_DATA_DIR=../shared/data .venv/bin/python bench/bench_memory.py --model gemma3-270m --compare_head \
        --eval_only --seqlen 256 --eval_limit 8 --eval_batch_size 8

Phases: load, dense perplexity, prune, pruned perplexity. Before each phase the kernel's high-water mark is
reset (/proc/self/clear_refs, Linux), so each phase's peak is its own, not the run's so far. Uses only the
library calls every version since the first has (load_model, get_calibration, eval_ppl, prune_model).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import lib
from lib.data import get_calibration, get_wikitext2_test_ids, resolve_data_dir
from lib.eval import eval_ppl
from lib.models import load_model


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Make the high-water mark the current RSS (writing 5 to clear_refs, Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(2)
    if args.whole_logits:  # lib.eval's path for a model without a separable head: the whole logits at once
        import lib.eval as lib_eval

        lib_eval.head_parts = lambda model: None
    peaks: dict[str, float] = {}
    reset_peak()
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    sum(p.float().sum().item() for p in model.parameters())  # touch memory-mapped weights
    peaks["load"] = rss_mb("VmHWM")
    data = resolve_data_dir(None)
    calib = None if args.eval_only else get_calibration("c4", tokenizer, args.nsamples, 0, args.seqlen, data)
    test_ids = get_wikitext2_test_ids(tokenizer, data)
    for phase in ("dense ppl",) if args.eval_only else ("dense ppl", "prune", "pruned ppl"):
        reset_peak()
        base = rss_mb("VmRSS")
        if phase == "prune":
            lib.prune_model(model, calib, lib.PruneConfig(prune_method=args.method, nsamples=args.nsamples))
        else:
            eval_ppl(model, test_ids, args.seqlen, args.eval_limit, args.eval_batch_size)
        peaks[phase] = rss_mb("VmHWM") - base  # above what the phase started with
    return {"code": lib.__file__, "peaks_above_start_mb": peaks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="wanda")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval_limit", type=int, default=8)
    p.add_argument("--eval_batch_size", type=int, default=4)
    p.add_argument("--malloc_mmap_threshold", type=int, default=131072, help="MALLOC_MMAP_THRESHOLD_ for the child")
    p.add_argument("--compare_head", action="store_true",
                   help="two runs: the output head in chunks (lib.eval) and whole logits; prints both and the ratio")
    p.add_argument("--eval_only", action="store_true", help="load and dense perplexity only (no pruning)")
    p.add_argument("--whole_logits", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    # glibc's moving mmap threshold can keep freed temporaries in the heap (RSS +-100 MiB between identical
    # runs); a fixed one returns them, as in the other benchmarks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)}
    variants = {"chunked head": [], "whole logits": ["--whole_logits"]} if args.compare_head else {"": []}
    peaks = {}
    for name, extra in variants.items():
        argv = [sys.executable, __file__, "--child", *sys.argv[1:], *extra]
        result = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
                            .stdout.splitlines()[-1])
        peaks[name] = result["peaks_above_start_mb"]
    print(f"# {args.model}, {args.method}, nsamples {args.nsamples}, seqlen {args.seqlen}, eval {args.eval_limit} "
          f"windows x batch {args.eval_batch_size}; code from {Path(result['code']).parent.parent}; "
          f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}")
    print("load: peak RSS; other phases: peak above the RSS the phase started with")
    print(f"{'phase':<12}" + "".join(f"{name or 'MiB':>16}" for name in peaks)
          + ("    whole / chunked" if args.compare_head else ""))
    for phase in peaks[next(iter(peaks))]:
        row = [peaks[name][phase] for name in peaks]
        ratio = f"{row[1] / max(row[0], 1):>19.2f}" if args.compare_head else ""
        print(f"{phase:<12}" + "".join(f"{mb:>16.0f}" for mb in row) + ratio)


if __name__ == "__main__":
    main()
