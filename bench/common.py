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

from lib.config import PruneConfig
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    return time.process_time()


def load_calibrated(model_name: str, nsamples: int, seed: int, seqlen: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """-> (float32 model, C4 calibration ids [nsamples, seqlen]) as main.py gets them, every weight touched.

    safetensors weights are memory-mapped: touching them makes the loaded RSS include the model, so what rises
    above it is the pruning's own memory.
    """
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    calib = get_calibration("c4", tokenizer, nsamples, seed, seqlen, resolve_data_dir(None))
    sum(p.float().sum().item() for p in model.parameters())
    return model, calib


def timed_prune(model: torch.nn.Module, calib: torch.Tensor, config: PruneConfig) -> dict:
    """prune_model once -> wall and CPU seconds, peak RSS before (loaded) and after, in MiB."""
    loaded, cpu, start = peak_rss_mb(), cpu_seconds(), time.perf_counter()
    prune_model(model, calib, config)
    return {"method": config.prune_method, "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu,
            "rss_loaded_mb": loaded, "rss_peak_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


def prune_once(model_name: str, method: str, nsamples: int, seqlen: int, seed: int, sparsity_type: str,
               ratio: float | None = None, **overrides) -> dict:
    """Load, draw calibration, prune once in this process -> timed_prune's measurements."""
    model, calib = load_calibrated(model_name, nsamples, seed, seqlen)
    config = PruneConfig(prune_method=method, sparsity_ratio=ratio, sparsity_type=sparsity_type, nsamples=nsamples,
                         seed=seed, **overrides)
    return timed_prune(model, calib, config)


def print_cost_table(rows: dict[str, dict], width: int = 14) -> None:
    """Wall s, CPU s and peak RSS per method, each with its ratio to wanda (the first row if wanda is absent)."""
    base = rows.get("wanda") or next(iter(rows.values()))
    print(f"{'method':<{width}}{'wall s':>8}{'x wanda':>9}{'CPU s':>8}{'x wanda':>9}{'peak RSS MiB':>14}{'x wanda':>9}"
          f"{'above load MiB':>16}")
    for m, r in rows.items():
        print(f"{m:<{width}}{r['seconds']:>8.1f}{r['seconds'] / base['seconds']:>9.3f}{r['cpu_seconds']:>8.1f}"
              f"{r['cpu_seconds'] / base['cpu_seconds']:>9.3f}{r['rss_peak_mb']:>14.0f}"
              f"{r['rss_peak_mb'] / base['rss_peak_mb']:>9.3f}{r['rss_peak_mb'] - r['rss_loaded_mb']:>16.0f}")


def run_child(script: str, argv: list[str]) -> dict:
    """Run `script --child argv...` in a fresh interpreter; its last stdout line is a JSON result."""
    out = subprocess.run([sys.executable, script, "--child", *argv], check=True, capture_output=True, text=True,
                         cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])
