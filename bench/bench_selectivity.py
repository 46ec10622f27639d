"""Cost of the selectivity statistics, measured side by side in one run (a benchmark, not a test).

    WANDA_DATA_DIR=../shared/data .venv/bin/python bench/bench_selectivity.py [--model smollm2-135m] [--nsamples 32] \
        [--seqlen 512] [--rounds 1] [--threads N] [--malloc_mmap_threshold 131072] [--sparsity_type unstructured]

Pruning (calibration pass + scoring + masking, everything prune_model does) of wanda, wanda_idf, wanda_spiky and
wanda_select at 50%, each in a fresh subprocess so peak RSS is that method's own: wall seconds, CPU seconds
(user + system of the process during prune_model) and peak RSS, as ratios to wanda. With --rounds R > 1 the
methods run R times in rotated order and the table shows medians. --threads sets torch's thread count in the
children (default: torch's own); on a machine shared with other jobs, 1 thread avoids oversubscribed thread
pools, whose barrier waits hit the collector's many small element-wise ops far harder than wanda's two.
--malloc_mmap_threshold (default 131072 bytes; 0 = glibc's default) is set as MALLOC_MMAP_THRESHOLD_ in the
children: glibc's default threshold moves with the allocation history, so freed layer temporaries stay in the
heap and peak RSS wandered by +-25% between runs whose collectors were identical (wanda_idf vs wanda_spiky);
a fixed threshold returns them to the system and peak RSS then measures memory in use.
Then the collectors alone on one layer's real input shapes (same process, alternated) to show where time goes.
Targets (issue 3): time <= 1.10 x wanda, peak memory <= 1.10 x wanda.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from common import bench_parser, pin_malloc, print_cost_table, prune_once, run_child  # bench/ is on sys.path when run
from lib.config import PruneConfig
from lib.methods.selectivity import Scratch, InputAbsHistogram
from lib.collectors import InputSquares
from lib.models import load_model
from lib.prune import calib_batch_size

METHODS = ("wanda", "wanda_idf", "wanda_spiky", "wanda_select")


def child_prune(args: argparse.Namespace) -> dict:
    """Load the model and the quick protocol's calibration ids, prune once with one method; seconds and RSS."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return prune_once(args.model, args.method, args.nsamples, args.seqlen, args.seed, args.sparsity_type)


def collector_seconds(channels: int, seqlen: int, nsamples: int, cls: type) -> float:
    """Seconds for one collector to take `nsamples` sequences of [seqlen, channels] in the driver's batches
    (lib.prune.calib_batch_size) and finalize."""
    per_batch = min(nsamples, calib_batch_size(PruneConfig(prune_method="wanda_select"), seqlen))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(per_batch, seqlen, channels, generator=gen) * torch.exp(torch.randn(channels, generator=gen))
    extra = {"scratch": Scratch()} if cls is InputAbsHistogram else {}  # as Method.prepare gives the driver
    collector = cls(channels, PruneConfig(prune_method="wanda_select"), **extra)
    start = time.perf_counter()
    for _ in range(0, nsamples, per_batch):
        collector.add_batch(batch)
    collector.finalize()
    return time.perf_counter() - start


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--sparsity_type", default="unstructured")
    p.add_argument("--rounds", type=int, default=1, help="runs per method, rotated order; medians reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch's default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="wanda", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_prune(args)))
        return
    protocol = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--seed",
                str(args.seed), "--sparsity_type", args.sparsity_type, "--threads", str(args.threads)]
    malloc = pin_malloc(args.malloc_mmap_threshold)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for method in METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]:
            runs[method].append(run_child(__file__, protocol + ["--method", method]))
            print(f"  round {r + 1}/{args.rounds} {method}: {runs[method][-1]['seconds']:.1f}s", file=sys.stderr)
    threads = runs["wanda"][0]["threads"]
    print(f"# {args.model}, nsamples {args.nsamples}, seqlen {args.seqlen}, seed {args.seed}, 50% "
          f"{args.sparsity_type}, rounds {args.rounds}; torch {torch.__version__}, {threads} thread(s) in the "
          f"children, MALLOC_MMAP_THRESHOLD_={malloc}, "
          f"{platform.machine()}, load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    keys = ("seconds", "cpu_seconds", "rss_peak_mb", "rss_loaded_mb")
    rows = {m: {k: statistics.median(run[k] for run in rs) for k in keys} for m, rs in runs.items()}
    print("\n## prune_model, one fresh process per method (medians over rounds)")
    print_cost_table(rows)

    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = load_model(args.model, dtype=torch.float32)[0].config
    hidden, mlp = model_config.hidden_size, model_config.intermediate_size
    per_batch = min(args.nsamples, calib_batch_size(PruneConfig(prune_method="wanda_select"), args.seqlen))
    print(f"\n## collectors alone, one layer's inputs ({args.nsamples} sequences of {args.seqlen} tokens in batches of "
          f"{per_batch}, as the driver), alternated, median of 3, {torch.get_num_threads()} thread(s)")
    print(f"{'input':<24}{'InputSquares s':>14}{'Selectivity s':>15}{'extra s':>9}")
    for name, channels in (("attention (hidden)", hidden), ("down_proj (mlp)", mlp)):
        times = {InputSquares: [], InputAbsHistogram: []}
        for _ in range(3):
            for cls in times:
                times[cls].append(collector_seconds(channels, args.seqlen, args.nsamples, cls))
        plain, sel = (statistics.median(times[c]) for c in (InputSquares, InputAbsHistogram))
        print(f"{name + f' [{channels}]':<24}{plain:>14.3f}{sel:>15.3f}{sel - plain:>9.3f}")


if __name__ == "__main__":
    main()
