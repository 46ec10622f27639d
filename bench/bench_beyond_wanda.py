"""Cost of the add-ons (OWL, DSnoT, RIA, N:M permutation, ADMM reconstruction, depth ramp) against wanda and
sparsegpt, side by side in one run (a benchmark, not a test).

    WANDA_DATA_DIR=../shared/data python bench/bench_beyond_wanda.py [--model smollm2-135m] [--nsamples 32] \
        [--seqlen 512] [--malloc_mmap_threshold 131072] [--only 'PATTERN' ...]

    # issue 20's rows (ADMM, gradual ADMM, depth ramp) with their baselines, as RESULTS.md reports them:
    OMP_NUM_THREADS=1 python bench/bench_beyond_wanda.py --nsamples 16 --seqlen 256 --only '*admm*' '*ramp*'

Each configuration prunes once in a fresh subprocess (so peak RSS is its own); prune_model's wall and CPU seconds
and peak RSS, as ratios to wanda and to sparsegpt at the same sparsity type. `--only` keeps the configurations
whose label matches a pattern (fnmatch), and wanda and sparsegpt at each of their sparsity types.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import time

import torch

from common import bench_parser, peak_rss_mb, pin_malloc, run_child  # noqa: E402
from lib.config import PruneConfig  # noqa: E402
from lib.data import get_calibration, resolve_data_dir  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.prune import prune_model  # noqa: E402

# (label, sparsity type, PruneConfig fields); the first row of each type is the baseline.
CONFIGS = [
    ("wanda", "unstructured", {"prune_method": "wanda"}),
    ("wanda + owl", "unstructured", {"prune_method": "wanda", "layer_ratios": "owl"}),
    ("wanda + dsnot", "unstructured", {"prune_method": "wanda", "refine": "dsnot"}),
    ("wanda + dsnot (all linears)", "unstructured", {"prune_method": "wanda", "refine": "dsnot", "dsnot_skip": "none"}),
    ("wanda + owl + dsnot", "unstructured", {"prune_method": "wanda", "layer_ratios": "owl", "refine": "dsnot"}),
    ("ria", "unstructured", {"prune_method": "ria"}),
    ("wanda_spiky", "unstructured", {"prune_method": "wanda_spiky"}),
    ("wanda_spiky + owl + dsnot", "unstructured", {"prune_method": "wanda_spiky", "layer_ratios": "owl",
                                                   "refine": "dsnot"}),
    ("sparsegpt", "unstructured", {"prune_method": "sparsegpt"}),
    ("sparsegpt + owl", "unstructured", {"prune_method": "sparsegpt", "layer_ratios": "owl"}),
    ("wanda", "2:4", {"prune_method": "wanda"}),
    ("wanda + permute", "2:4", {"prune_method": "wanda", "permute": True}),
    ("ria + permute", "2:4", {"prune_method": "ria", "permute": True}),
    ("wanda + dsnot", "2:4", {"prune_method": "wanda", "refine": "dsnot"}),
    ("wanda + admm", "unstructured", {"prune_method": "wanda", "reconstruct": "admm"}),
    ("wanda + admm_gradual", "unstructured", {"prune_method": "wanda", "reconstruct": "admm_gradual"}),
    ("wanda + depth_ramp", "unstructured", {"prune_method": "wanda", "layer_ratios": "depth_ramp"}),
    ("wanda_spiky + admm", "unstructured", {"prune_method": "wanda_spiky", "reconstruct": "admm"}),
    ("sparsegpt", "2:4", {"prune_method": "sparsegpt"}),
    ("wanda + admm", "2:4", {"prune_method": "wanda", "reconstruct": "admm"}),
    ("wanda + admm_gradual", "2:4", {"prune_method": "wanda", "reconstruct": "admm_gradual"}),
    ("ria + permute + admm", "2:4", {"prune_method": "ria", "permute": True, "reconstruct": "admm"}),
]


def selected(patterns: list[str] | None) -> list[tuple[str, str, dict]]:
    """CONFIGS whose label matches a pattern (all for None), with the baselines of their sparsity types."""
    if not patterns:
        return CONFIGS
    rows = [c for c in CONFIGS if any(fnmatch.fnmatch(c[0], p) for p in patterns)]
    types = {t for _, t, _ in rows}
    return [c for c in CONFIGS if c in rows or (c[0] in ("wanda", "sparsegpt") and c[1] in types)]


def child(args: argparse.Namespace) -> dict:
    """Prune once with the JSON-given config fields -> seconds and peak RSS."""
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    calib = get_calibration("c4", tokenizer, args.nsamples, args.seed, args.seqlen, resolve_data_dir(None))
    sum(p.float().sum().item() for p in model.parameters())  # touch the memory-mapped weights
    before = peak_rss_mb()
    config = PruneConfig(sparsity_type=args.sparsity_type, nsamples=args.nsamples, seed=args.seed,
                         **json.loads(args.fields))
    start, cpu_start = time.perf_counter(), time.process_time()
    prune_model(model, calib, config)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "rss_loaded_mb": before, "rss_peak_mb": peak_rss_mb()}


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sparsity_type", default="unstructured", help=argparse.SUPPRESS)
    p.add_argument("--fields", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="only the configurations whose label matches (fnmatch), with their wanda and sparsegpt rows")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    malloc = pin_malloc(args.malloc_mmap_threshold)
    print(f"# {args.model}, nsamples {args.nsamples}, seqlen {args.seqlen}, seed {args.seed}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"MALLOC_MMAP_THRESHOLD_={malloc}")
    rows = [(label, sparsity_type, run_child(__file__, [
        "--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--seed",
        str(args.seed), "--sparsity_type", sparsity_type, "--fields", json.dumps(fields)]))
        for label, sparsity_type, fields in selected(args.only)]
    wanda = {t: r for label, t, r in reversed(rows) if label == "wanda"}
    sparsegpt = {t: r for label, t, r in rows if label == "sparsegpt"}
    print(f"{'configuration':<30}{'type':<14}{'wall s':>8}{'x wanda':>9}{'x sgpt':>8}{'CPU s':>8}{'x wanda':>9}{'x sgpt':>8}"
          f"{'peak RSS MiB':>14}{'x wanda':>9}{'x sgpt':>8}{'above load MiB':>16}")
    for label, t, r in rows:
        w, g = wanda[t], sparsegpt[t]
        print(f"{label:<30}{t:<14}{r['seconds']:>8.1f}{r['seconds'] / w['seconds']:>9.2f}"
              f"{r['seconds'] / g['seconds']:>8.2f}{r['cpu_seconds']:>8.1f}{r['cpu_seconds'] / w['cpu_seconds']:>9.2f}"
              f"{r['cpu_seconds'] / g['cpu_seconds']:>8.2f}"
              f"{r['rss_peak_mb']:>14.0f}{r['rss_peak_mb'] / w['rss_peak_mb']:>9.2f}"
              f"{r['rss_peak_mb'] / g['rss_peak_mb']:>8.2f}{r['rss_peak_mb'] - r['rss_loaded_mb']:>16.0f}")


if __name__ == "__main__":
    main()
