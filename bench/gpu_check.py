"""Every method family on CUDA: unstructured and 2:4, float16 and bfloat16, in memory and onloaded.

    bench/gpu_check.sh                    # the same, with the environment set; exits non-zero on any failure
    .venv/bin/python bench/gpu_check.py [--quick] [--allow_cpu]

Runs main.main in this process for each combination, on the embedded model and on a tiny random Gemma 3 with a
16-token sliding window (calibration windows of 64 tokens, so both attention masks are exercised), printing
seconds and peak CUDA memory per run. --quick: one method per family on the embedded model only. --allow_cpu:
run without a GPU (slow; for checking this script).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import main

FAMILIES = ["magnitude", "wanda", "sparsegpt", "ablate_wanda_iter", "wanda_spiky", "neuronrank_fisher"]
OFFLOADED = ["wanda", "sparsegpt"]  # onloading is method-independent: two families exercise it


def tiny_sliding_gemma3(folder: Path, tokenizer_source: str) -> Path:
    """A 4-layer random Gemma 3 (window 16, full attention every other layer) with the embedded tokenizer."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, vocab_size=len(tokenizer), sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=512)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def runs(quick: bool, tiny: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) for every combination."""
    models = [("smollm2-135m", ["--model", "smollm2-135m", "--seqlen", "256", "--nsamples", "8"])]
    if not quick:
        models.append(("tiny-gemma3", ["--model", str(tiny), "--seqlen", "64", "--nsamples", "8"]))
    found = []
    for model, model_args in models:
        for dtype in ("float16", "bfloat16"):
            for sparsity in ("unstructured", "2:4"):
                for method in (FAMILIES[1:3] if quick else FAMILIES):
                    for offload in (["none", "cpu", "disk"] if method in OFFLOADED else ["none"]):
                        label = f"{model} {dtype} {sparsity} {method} offload={offload}"
                        found.append((label, [*model_args, "--dtype", dtype, "--sparsity_type", sparsity,
                                              "--prune_method", method, "--offload", offload, "--eval_limit", "4", "--save_stats",
                                              "--eval_batch_size", "4"]))
    return found


def main_check() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--allow_cpu", action="store_true")
    p.add_argument("--only", default="", help="run only the combinations whose label contains this text")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("error: no CUDA device; this check is for a GPU (pass --allow_cpu to check the script)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"# gpu_check on {device}; torch {torch.__version__}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        main_args = [(label, argv) for label, argv in runs(args.quick, Path(tmp) / "tiny-gemma3") if args.only in label]
        if any("tiny-gemma3" in label for label, _ in main_args):
            from lib.models import local_source

            tiny_sliding_gemma3(Path(tmp) / "tiny-gemma3", local_source("smollm2-135m"))
        for label, argv in main_args:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            out = Path(tmp) / "out"
            start = time.perf_counter()
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    code = main.main(argv + ["--save", str(out), "--offload_dir", str(Path(tmp) / "layers")])
                result = json.loads((out / "results.json").read_text()) if code == 0 else {}
            except BaseException:  # report every failure, then go on
                code, result = "exception", {}
                log.write(traceback.format_exc())
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
            ok = code == 0 and result.get("ppl_pruned") is not None
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label:<62} {seconds:6.1f}s  peak CUDA {peak:8.0f} MiB  "
                  f"ppl {result.get('ppl_dense')} -> {result.get('ppl_pruned')}")
            if not ok:
                print("     " + "\n     ".join(log.getvalue().strip().splitlines()[-6:]))
    print(f"# {len(main_args) - failures}/{len(main_args)} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_check())
