"""Pruning a model larger than the memory it may use: weights offloaded to disk (a benchmark, not a test).

    .venv/bin/python bench/bench_offload.py [--folder /tmp/tinyllama-random] [--methods wanda wanda_spiky sparsegpt]

Builds (once) a random-initialised LLaMA with TinyLlama-1.1B's shapes (22 layers, hidden 2048, MLP 5632, 4.4 GB
in float32) saved as safetensors. Then, each in a fresh process on the CPU, prunes it 50% with every method twice:
with --offload disk (the layers are read from the checkpoint one at a time and written back pruned) and in
memory. Prints the model's size, each run's peak RSS and its ratio to the model size (offloaded runs must stay
below 0.5), and whether the offloaded run's weights equal the in-memory run's (a sha256 over every layer).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
              num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)


def build(folder: Path) -> None:
    """The random model, saved as safetensors shards (built in this process, which is not measured)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lib.models import local_source

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SHAPES)).eval()
        model.save_pretrained(folder, max_shard_size="1GB")
    if not (folder / "tokenizer_config.json").exists():  # loading wants one; the calibration ids are random
        AutoTokenizer.from_pretrained(local_source("smollm2-135m")).save_pretrained(folder)


def child(args: argparse.Namespace) -> dict:
    """Load, prune once, hash every layer's weights; peak RSS of this process."""
    from lib import PruneConfig, prune_model
    from lib.offload import load_with_store

    torch.set_num_threads(2)
    out = Path(args.folder).parent / f"offload-{args.method}"
    model, _, store = load_with_store(args.folder, "llm_weights", "float32", None, args.mode, str(out))
    calib = torch.randint(0, SHAPES["vocab_size"], (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    prune_model(model, calib, PruneConfig(prune_method=args.method, nsamples=args.nsamples), store=store)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for index in range(len(store.layers)):
        layer = store.onload(index)
        for name, tensor in sorted(layer.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        store.offload(index)
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sha256": digest.hexdigest()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default="/tmp/tinyllama-random")
    p.add_argument("--methods", nargs="+", default=["wanda", "wanda_spiky", "sparsegpt"])
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="wanda", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="disk", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    folder = Path(args.folder)
    build(folder)
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    print(f"# random LLaMA, TinyLlama-1.1B shapes, float32: {size_mb:.0f} MiB of safetensors in {folder}; "
          f"{args.nsamples} x {args.seqlen} random calibration tokens; torch {torch.__version__}, CPU")
    print(f"{'method':<14}{'offload':>8}{'prune s':>9}{'peak RSS MiB':>14}{'x model':>9}  weights")
    for method in args.methods:
        runs = {}
        for mode in ("disk", "none"):
            argv = [sys.executable, __file__, "--child", "--folder", str(folder), "--method", method, "--mode", mode,
                    "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
            runs[mode] = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout
                                    .splitlines()[-1])
        same = "identical" if runs["disk"]["sha256"] == runs["none"]["sha256"] else "DIFFER"
        for mode, r in runs.items():
            print(f"{method:<14}{mode:>8}{r['seconds']:>9.1f}{r['peak_rss_mb']:>14.0f}"
                  f"{r['peak_rss_mb'] / size_mb:>9.2f}  {same if mode == 'disk' else ''}")


if __name__ == "__main__":
    main()
