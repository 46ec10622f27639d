"""Shared benchmark plumbing: prune once per fresh subprocess so each method's peak RSS is its own.

Not run directly; see bench_methods.py, bench_selectivity.py, bench_neuronrank.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from lib.config import PruneConfig, parse_sparsity_type
from lib.data import get_calibration, resolve_data_dir
from lib.models import load_model
from lib.prune import prune_model
from lib.runinfo import peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every benchmark shares: the model and the calibration protocol, and the pinned malloc threshold."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malloc_mmap_threshold", type=int, default=131072,
                   help="MALLOC_MMAP_THRESHOLD_ for the children in bytes (0: glibc's moving default)")
    return p


def pin_malloc(threshold: int) -> str:
    """Set MALLOC_MMAP_THRESHOLD_ for the children (0 unsets it) -> its value, for the header line.

    glibc's default threshold moves with the allocation history, so freed layer temporaries can stay in the heap
    and peak RSS wander by +-25% between identical runs; a fixed threshold returns them to the system.
    """
    if threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(threshold)  # inherited by the children
    else:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    return os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset")


def prune_once(model_name: str, method: str, nsamples: int, seqlen: int, seed: int, sparsity_type: str,
               ratio: float | None = None, **overrides) -> dict:
    """Load, draw calibration, prune once in this process; -> seconds of prune_model and RSS before/after."""
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    calib = get_calibration("c4", tokenizer, nsamples, seed, seqlen, resolve_data_dir(None))
    loaded = peak_rss_mb()
    n, m = parse_sparsity_type(sparsity_type)
    config = PruneConfig(prune_method=method, sparsity_ratio=ratio if ratio is not None else (n / m if m else 0.5),
                         sparsity_type=sparsity_type, nsamples=nsamples, seed=seed, **overrides)
    start = time.perf_counter()
    prune_model(model, calib, config)
    return {"method": method, "seconds": time.perf_counter() - start, "rss_loaded_mb": loaded,
            "rss_peak_mb": peak_rss_mb()}


def run_child(script: str, argv: list[str]) -> dict:
    """Run `script --child argv...` in a fresh interpreter; its last stdout line is a JSON result."""
    out = subprocess.run([sys.executable, script, "--child", *argv], check=True, capture_output=True, text=True,
                         cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])
