"""Baseline cost side by side (a benchmark, not a test): magnitude, wanda, sparsegpt on the quick protocol.

    WANDA_DATA_DIR=../shared/data .venv/bin/python bench/bench_methods.py [--rounds 1] [--methods magnitude wanda sparsegpt]

Each method prunes the embedded model 50% unstructured in a fresh subprocess (wall seconds of prune_model and
peak RSS, as ratios to wanda); then, in this process, the seconds of one calibration forward pass through all
decoder layers: the floor wanda cannot beat, since it runs every layer twice (collect, then propagate).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from common import bench_parser, peak_rss_mb, pin_malloc, prune_once, run_child  # bench/ is on sys.path when run
from lib.data import get_calibration, resolve_data_dir
from lib.models import find_decoder_layers, load_model
from lib.config import PruneConfig
from lib.prune import calib_batch_size, capture_layer_inputs, propagate


@torch.no_grad()
def one_forward_pass_seconds(model_name: str, nsamples: int, seqlen: int, seed: int) -> tuple[float, float]:
    """(seconds to capture the first layer's inputs, seconds of one pass of all samples through every layer)."""
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    calib = get_calibration("c4", tokenizer, nsamples, seed, seqlen, resolve_data_dir(None))
    layers = find_decoder_layers(model)
    start = time.perf_counter()
    inps, layer_kwargs = capture_layer_inputs(model, layers, calib)
    outs = torch.empty_like(inps)
    capture = time.perf_counter() - start
    start = time.perf_counter()
    for layer, kwargs in zip(layers, layer_kwargs):
        propagate(layer, inps, outs, kwargs, calib_batch_size(PruneConfig(), calib.shape[1]))
        inps, outs = outs, inps
    return capture, time.perf_counter() - start


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity_type", default="unstructured")
    p.add_argument("--rounds", type=int, default=1, help="runs per method in rotated order; medians reported")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="wanda", help=argparse.SUPPRESS)
    args = p.parse_args()
    protocol = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                "--seed", str(args.seed), "--sparsity_type", args.sparsity_type]
    if args.child:
        print(json.dumps(prune_once(args.model, args.method, args.nsamples, args.seqlen, args.seed,
                                    args.sparsity_type)))
        return
    malloc = pin_malloc(args.malloc_mmap_threshold)
    print(f"# {args.model}, nsamples {args.nsamples}, seqlen {args.seqlen}, seed {args.seed}, 50% {args.sparsity_type}, "
          f"rounds {args.rounds}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"MALLOC_MMAP_THRESHOLD_={malloc}")
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for r in range(args.rounds):
        order = args.methods[r % len(args.methods):] + args.methods[:r % len(args.methods)]
        for method in order:
            runs[method].append(run_child(__file__, protocol + ["--method", method]))
            print(f"  round {r + 1}/{args.rounds} {method}: {runs[method][-1]['seconds']:.1f}s", file=sys.stderr)
    rows = {m: {k: statistics.median(x[k] for x in rs) for k in ("seconds", "rss_peak_mb")} for m, rs in runs.items()}
    base = rows.get("wanda", next(iter(rows.values())))
    print(f"\n{'method':<12}{'prune s':>9}{'x wanda':>9}{'peak RSS MiB':>14}{'x wanda':>9}")
    for m, r in rows.items():
        print(f"{m:<12}{r['seconds']:>9.1f}{r['seconds'] / base['seconds']:>9.2f}{r['rss_peak_mb']:>14.0f}"
              f"{r['rss_peak_mb'] / base['rss_peak_mb']:>9.2f}")
    capture, one_pass = one_forward_pass_seconds(args.model, args.nsamples, args.seqlen, args.seed)
    print(f"\none calibration forward pass through all decoder layers: {one_pass:.1f}s "
          f"(+ {capture:.1f}s to capture the first layer's inputs); wanda / one pass = "
          f"{base['seconds'] / one_pass:.2f} (peak RSS of this process {peak_rss_mb():.0f} MiB)")


if __name__ == "__main__":
    main()
