"""NeuronRank cost and payoff, measured side by side in one run (a benchmark, not a test).

    WANDA_DATA_DIR=../shared/data python bench/bench_neuronrank.py [--model smollm2-135m] [--nsamples 32] [--seqlen 512] \
        [--repeats 5] [--part all|cost|shrink] [--malloc_mmap_threshold 131072]

1. Pruning time and peak RSS of neuronrank and neuronrank_fisher (weight granularity, 50% unstructured)
   against wanda, each method in a fresh subprocess so peak RSS is that method's own; ratios to wanda.
2. Neuron granularity with --shrink at 25% and 50%: parameter count and forward-pass tokens per second of the
   shrunk model against the dense one, timed alternately in the same process (batch 1 x seqlen tokens).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from common import bench_parser, load_calibrated, pin_malloc, print_cost_table, prune_once
from common import run_child as run_script
from lib.config import PruneConfig
from lib.prune import prune_model

PRUNE_METHODS = ("wanda", "neuronrank", "neuronrank_fisher")
SHRINK_RATIOS = (0.25, 0.5)


def child_prune(args: argparse.Namespace) -> dict:
    """Prune once with one method, 50% unstructured; seconds and peak RSS before/after."""
    return prune_once(args.model, args.method, args.nsamples, args.seqlen, args.seed, "unstructured")


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads) of one forward pass over ids [1, seqlen]."""
    start, cpu_start = time.perf_counter(), time.process_time()
    model(ids, use_cache=False)
    return time.perf_counter() - start, time.process_time() - cpu_start


def child_shrink(args: argparse.Namespace) -> dict:
    """Prune MLP neurons with shrink; parameters and tokens/s of dense vs shrunk, timed alternately."""
    model, calib = load_calibrated(args.model, args.nsamples, args.seed, args.seqlen)
    dense = copy.deepcopy(model)
    prune_model(model, calib, PruneConfig(prune_method=args.method, sparsity_ratio=args.ratio, nsamples=args.nsamples,
                                          seed=args.seed, nr_granularity="neuron", shrink=True))
    ids = calib[:1]
    for m in (dense, model):  # warm-up
        forward_seconds(m, ids)
    dense_s, shrunk_s = [], []
    for _ in range(args.repeats):
        dense_s.append(forward_seconds(dense, ids))
        shrunk_s.append(forward_seconds(model, ids))
    (dense_wall, dense_cpu), (shrunk_wall, shrunk_cpu) = (map(statistics.median, zip(*s)) for s in (dense_s, shrunk_s))
    return {"ratio": args.ratio, "method": args.method, "intermediate_size": model.config.intermediate_size,
            "dense_params": sum(p.numel() for p in dense.parameters()),
            "shrunk_params": sum(p.numel() for p in model.parameters()),
            "dense_tok_s": ids.numel() / dense_wall, "shrunk_tok_s": ids.numel() / shrunk_wall,
            "dense_tok_cpu_s": ids.numel() / dense_cpu, "shrunk_tok_cpu_s": ids.numel() / shrunk_cpu}


def run_child(args: argparse.Namespace, kind: str, *extra: str) -> dict:
    """Run this script as a fresh subprocess in child mode `kind` (prune | shrink) -> its JSON result."""
    return run_script(__file__, [kind, "--model", args.model, "--nsamples", str(args.nsamples), "--seqlen",
                                 str(args.seqlen), "--seed", str(args.seed), "--repeats", str(args.repeats), *extra])


def cost(args: argparse.Namespace) -> None:
    """Part 1: prune time and peak RSS per method, ratios to wanda."""
    print("\n## Pruning cost, weight granularity 50% unstructured (one fresh process per method)")
    print("(wall seconds depend on what else the CPU runs; CPU seconds, all threads, much less)")
    print_cost_table({m: run_child(args, "prune", "--method", m) for m in PRUNE_METHODS}, width=20)


def shrink(args: argparse.Namespace) -> None:
    """Part 2: parameters and forward throughput of shrunk vs dense models."""
    print(f"\n## Neuron granularity with --shrink (neuronrank): forward pass, batch 1 x {args.seqlen} tokens, "
          f"median of {args.repeats}, dense and shrunk timed alternately")
    print("(tok/s: per wall second; tok/CPU-s: per CPU second of all threads, less sensitive to other load)")
    print(f"{'removed':<9}{'MLP width':>10}{'params':>13}{'x dense':>9}{'dense tok/s':>13}{'shrunk tok/s':>14}"
          f"{'speed-up':>10}{'dense tok/CPU-s':>17}{'shrunk tok/CPU-s':>18}{'speed-up':>10}")
    for ratio in SHRINK_RATIOS:
        r = run_child(args, "shrink", "--method", "neuronrank", "--ratio", str(ratio))
        print(f"{ratio:<9.0%}{r['intermediate_size']:>10}{r['shrunk_params']:>13,}"
              f"{r['shrunk_params'] / r['dense_params']:>9.3f}{r['dense_tok_s']:>13.0f}{r['shrunk_tok_s']:>14.0f}"
              f"{r['shrunk_tok_s'] / r['dense_tok_s']:>10.2f}{r['dense_tok_cpu_s']:>17.0f}"
              f"{r['shrunk_tok_cpu_s']:>18.0f}{r['shrunk_tok_cpu_s'] / r['dense_tok_cpu_s']:>10.2f}")
    print(f"(dense: {r['dense_params']:,} parameters)")


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes per model (median)")
    p.add_argument("--part", choices=["all", "cost", "shrink"], default="all", help="which of the two parts to run")
    p.add_argument("--child", choices=["prune", "shrink"], help=argparse.SUPPRESS)
    p.add_argument("--method", default="neuronrank", help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, default=0.25, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_prune(args) if args.child == "prune" else child_shrink(args)))
        return
    malloc = pin_malloc(args.malloc_mmap_threshold)
    print(f"# {args.model}, nsamples {args.nsamples}, seqlen {args.seqlen}, seed {args.seed}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"MALLOC_MMAP_THRESHOLD_={malloc}")
    if args.part != "shrink":
        cost(args)
    if args.part != "cost":
        shrink(args)


if __name__ == "__main__":
    main()
