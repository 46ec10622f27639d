"""Can "wanda mask + weight reconstruction" beat SparseGPT on one real layer's objective? (issue 20, RESULTS.md)

    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/reconstruct_layer_check.py
    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/reconstruct_layer_check.py --layers 2,15,28

Walks the dense smollm2-135m (no layer is pruned, so every method sees the same inputs X) over 2 x --nsamples
C4 windows of --seqlen tokens drawn with --seed: the first --nsamples are the calibration set (the experiment
protocol's 16 x 256), the rest a held-out set. On each chosen decoder layer, per linear, it prints the relative
layer objective ||X W^T - X W'^T||^2 / ||X W^T||^2 on the calibration and on the held-out tokens (from their
Hessians X^T X, SparseGPT's collector) for, at 50%, 70% and 2:4:
  wanda        Wanda's mask, weights not updated
  wanda+admm   Wanda's mask, kept weights re-fitted by ADMM (lib.reconstruct.admm_update, 20 iterations)
  gradual      gradual ADMM with Wanda's score, per row (lib.reconstruct.gradual_admm, 20 iterations, 15 steps)
  sparsegpt    SparseGPT (its own mask and update; blocksize 128, percdamp 0.01)
  sgpt+admm    SparseGPT's mask, kept weights re-fitted by ADMM (is its mask or its update the better part?)
and the layer's mean over its linears. lib.reconstruct's log says where rows of an ADMM result fell back to the
masked original weights (none at these defaults). Float32 on the CPU; nothing is written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]

from lib.config import PruneConfig  # noqa: E402
from lib.data import calibration_windows, load_calibration_texts, resolve_data_dir  # noqa: E402
from lib.collectors import InputHessian, InputSquares  # noqa: E402
from lib.methods.sparsegpt import sparsegpt_reconstruct  # noqa: E402
from lib.methods.wanda import wanda_score  # noqa: E402
from lib.models import find_decoder_layers, find_linears, load_model  # noqa: E402
from lib.prune import calib_batch_size, calibrate, layer_walk  # noqa: E402
from lib.reconstruct import admm_system, admm_update, gradual_admm, relative_layer_error  # noqa: E402
from lib.sparsity import make_mask  # noqa: E402

SETTINGS = (("50%", "unstructured", 0.5), ("70%", "unstructured", 0.7), ("2:4", "2:4", None))
METHODS = ("wanda", "wanda+admm", "gradual", "sparsegpt", "sgpt+admm")


def candidates(W: torch.Tensor, stats: dict, config: PruneConfig) -> dict[str, torch.Tensor]:
    """The pruned weights [out, in] of every compared method for one linear (stats: calibration statistics)."""
    n, m, ratio = config.prune_n, config.prune_m, config.sparsity_ratio
    hessian = stats["hessian"]
    wanda_mask = make_mask(wanda_score(W, stats, config), ratio, n, m)
    sparsegpt = sparsegpt_reconstruct(W, {"hessian": hessian.clone()}, ratio, n, m, 128, 0.01)
    gradual, _ = gradual_admm(W, admm_system(hessian.clone()), ratio, lambda V: wanda_score(V, stats, config),
                              n, m, "row")
    return {"wanda": W * ~wanda_mask,
            "wanda+admm": admm_update(W, wanda_mask, admm_system(hessian.clone())),
            "gradual": gradual,
            "sparsegpt": sparsegpt,
            "sgpt+admm": admm_update(W, sparsegpt == 0, admm_system(hessian.clone()))}


def layer_table(layer_index: int, linears: dict, calib: dict, held: dict, nsamples: int, seed: int) -> None:
    """Print one decoder layer's objectives, per setting and linear, calibration then held-out."""
    header = "  ".join(f"{name:>10}" for name in METHODS)
    print(f"\n## layer {layer_index}: relative layer objective, calibration | held-out")
    print(f"{'setting':<8} {'linear':<18} {header} | {header}")
    for label, sparsity_type, ratio in SETTINGS:
        config = PruneConfig(prune_method="wanda", sparsity_type=sparsity_type, sparsity_ratio=ratio,
                             nsamples=nsamples, seed=seed)
        sums = torch.zeros(2, len(METHODS), dtype=torch.float64)
        for name, lin in linears.items():
            W = lin.weight.data.float()
            pruned = candidates(W, calib[name], config)
            row = torch.tensor([[relative_layer_error(W, pruned[k], s["hessian"]) for k in METHODS]
                                for s in (calib[name], held[name])], dtype=torch.float64)
            sums += row
            print(f"{label:<8} {name:<18} " + "  ".join(f"{v:>10.5f}" for v in row[0]) + " | "
                  + "  ".join(f"{v:>10.5f}" for v in row[1]))
        mean = sums / len(linears)
        print(f"{label:<8} {'mean':<18} " + "  ".join(f"{v:>10.5f}" for v in mean[0]) + " | "
              + "  ".join(f"{v:>10.5f}" for v in mean[1]))


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="2,15,28", help="comma-separated decoder layer indices")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("lib.reconstruct").setLevel(logging.INFO)
    wanted = sorted({int(i) for i in args.layers.split(",")})
    torch.manual_seed(0)
    config = PruneConfig(prune_method="wanda", nsamples=args.nsamples, seed=args.seed)
    model, tokenizer = load_model(args.model, dtype=torch.float32, device="cpu")
    ids = calibration_windows("c4", load_calibration_texts("c4", resolve_data_dir(None)), tokenizer,
                              2 * args.nsamples, args.seed, args.seqlen)
    layers = find_decoder_layers(model)
    batch = calib_batch_size(config, args.seqlen)
    n = args.nsamples
    print(f"# {args.model}, dense inputs; calibration: C4 windows 0..{n - 1}, held-out: {n}..{2 * n - 1} "
          f"({args.seqlen} tokens each, seed {args.seed}); ADMM: 20 iterations, damp 0.1, rho 1")
    collectors = (InputSquares, InputHessian)
    for i, layer, inps, kwargs in layer_walk(model, layers, ids, True, batch, None, False, "walk"):
        if i in wanted:
            linears = find_linears(layer)
            calib = calibrate(layer, linears, inps[:n], kwargs, ids[:n], collectors, config, {}, batch)
            held = calibrate(layer, linears, inps[n:], kwargs, ids[n:], collectors, config, {}, batch)
            layer_table(i, linears, calib, held, args.nsamples, args.seed)
        if i >= wanted[-1]:
            break


if __name__ == "__main__":
    main()
