"""Does --refine dsnot lower one real layer's reconstruction error? (DSnoT's regression on smollm2-135m, RESULTS.md)

    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/dsnot_layer_check.py --layer 2
    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/dsnot_layer_check.py --layer 2 --sparsity_type 2:4

Walks smollm2-135m as the experiment protocol's `--refine dsnot` run does (C4 calibration, --nsamples 16
--seqlen 256, seed 0; layers before --layer pruned with wanda + DSnoT at the defaults, so the chosen layer sees
the inputs the real run gives it) and, on that layer, keeps every linear's calibration inputs X [tokens, in].
Per linear it prints:
  1. whether lib.addons.dsnot.dsnot's mask (our statistics, our defaults) equals the published loop's
     (tests/test_dsnot.py's transcription of zyxxmu/DSnoT prune_DSnoT, fed upstream's WrappedGPT statistics
     computed on the same X), and the number of weights where they differ;
  2. the relative reconstruction error ||W X - (M*W) X||_F / ||W X||_F (all rows; DSnoT's paper objective),
     its share that is the mean over tokens (the only part DSnoT's e_i = sum_t (W - M*W) x_t measures), the
     mean |e_i|, the mean over rows of each row's relative error ||(W_i - M_i*W_i) X|| / ||W_i X||, and the
     fraction of rows whose error rose, for the Wanda mask and for the refined mask under each variant: same-sign off/on,
     threshold 0.1 (upstream's units: a 256-token sum) and 0.1 * seqlen / 2048 (upstream's per-token tolerance).
     --dsnot_skip mlp leaves gate/up/down at the Wanda mask, so its rows are the Wanda rows there.
Weights and activations in float32 on the CPU; nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from lib.config import PruneConfig  # noqa: E402
from lib.data import calibration_windows, load_calibration_texts, resolve_data_dir  # noqa: E402
from lib.addons.dsnot import InputMeanVariance, dsnot, skipped  # noqa: E402
from lib.collectors import InputSquares  # noqa: E402
from lib.methods.wanda import wanda_score  # noqa: E402
from lib.models import find_decoder_layers, find_linears, load_model  # noqa: E402
from lib.plugins import find_method, selected_addons  # noqa: E402
from lib.prune import calib_batch_size, calibrate, compress, layer_walk  # noqa: E402
from lib.sparsity import make_mask  # noqa: E402
from test_dsnot import upstream_dsnot, upstream_stats  # noqa: E402


@torch.no_grad()
def layer_inputs(layer, linears, inps, kwargs, batch) -> dict[str, torch.Tensor]:
    """Every linear's input over the calibration set -> {name: X [n, seqlen, in]} (float32)."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = [lin.register_forward_hook(lambda m, a, o, name=name: seen[name].append(a[0].detach().float()))
               for name, lin in linears.items()]
    try:
        for j in range(0, inps.shape[0], batch):
            layer(inps[j:j + batch], **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


def errors(W: torch.Tensor, mask: torch.Tensor, X: torch.Tensor) -> tuple[float, float, float, torch.Tensor]:
    """W [out, in], mask (True = pruned), X [n, T, in] -> (relative Frobenius error of W X, share of the squared
    error that is the per-sequence token mean (DSnoT's e), mean_i |e_i| with e_i = sum_t / n_seq as upstream,
    per-row relative errors [out])."""
    delta = W.masked_fill(~mask, 0).double()  # dense minus pruned weights
    Xd = X.double()
    Y = Xd @ W.double().T
    E = Xd @ delta.T  # [n, T, out]
    rel = (E.norm() / Y.norm()).item()
    mean_part = (E.mean(dim=1, keepdim=True).expand_as(E).norm() ** 2 / E.norm() ** 2).item()
    e = E.sum(dim=1).mean(dim=0)  # [out]: upstream's sum over a sequence's tokens, averaged over sequences
    rows = E.flatten(0, 1).norm(dim=0) / Y.flatten(0, 1).norm(dim=0)
    return rel, mean_part, e.abs().mean().item(), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--sparsity_type", default="unstructured")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(0)
    config = PruneConfig(prune_method="wanda", sparsity_type=args.sparsity_type, nsamples=args.nsamples,
                         seed=args.seed, refine="dsnot")
    method, addons = find_method(config), selected_addons(config)
    model, tokenizer = load_model(args.model, dtype=torch.float32, device="cpu")
    calib_ids = calibration_windows("c4", load_calibration_texts("c4", resolve_data_dir(None)), tokenizer,
                                    args.nsamples, args.seed, args.seqlen)
    layers = find_decoder_layers(model)
    batch = calib_batch_size(config, args.seqlen)
    collectors = (InputSquares, InputMeanVariance)
    n, m = config.prune_n, config.prune_m
    scaled = 0.1 * args.seqlen / 2048
    variants = [("same_sign off, thr 0.1 (default)", False, 0.1), ("same_sign on,  thr 0.1", True, 0.1),
                (f"same_sign off, thr {scaled:g}", False, scaled), (f"same_sign on,  thr {scaled:g}", True, scaled)]
    if m:  # N:M always checks the sign
        variants = [("thr 0.1 (default)", True, 0.1), (f"thr {scaled:g}", True, scaled)]
    print(f"# {args.model} layer {args.layer}, {args.sparsity_type}, {args.nsamples} x {args.seqlen} C4 tokens, "
          f"seed {args.seed}; earlier layers pruned with wanda + dsnot (defaults)")
    for i, layer, inps, kwargs in layer_walk(model, layers, calib_ids, True, batch, None, True, "walk"):
        linears = find_linears(layer)
        stats = calibrate(layer, linears, inps, kwargs, calib_ids, collectors, config, {}, batch)
        if i < args.layer:
            compress(layer, linears, stats, method, config, addons, i)
            continue
        X = layer_inputs(layer, linears, inps, kwargs, batch)
        mlp = skipped(linears, config)
        print(f"{'linear':<18} {'variant':<32} {'swaps':>6} {'rel err':>9} {'mean share':>10} {'mean|e|':>9} "
              f"{'row err':>8} {'rows worse':>10}")
        for name, lin in linears.items():
            W = lin.weight.data.float()
            s = stats[name]
            scores = wanda_score(W, s, config)
            initial = make_mask(scores, config.sparsity_ratio, n, m)
            ref = upstream_stats(X[name])
            for key, ours_key in (("scaler_row", "scaler_row"), ("sum_metric_row", "dsnot_sum_x"),
                                  ("var", "dsnot_var")):
                diff = ((ref[key] - s[ours_key]).abs().max() / ref[key].abs().max()).item()
                assert diff < 1e-4, f"{name} {key}: relative difference {diff:.2e}"
            ours, _ = dsnot(W, scores, initial, s["dsnot_sum_x"], s["dsnot_var"], 50, 0.1, False, m)
            theirs = upstream_dsnot(W, ref, config.sparsity_ratio, n, m, 50, 0.1, without_same_sign=True)
            differ = int((ours != theirs).sum())
            print(f"{name:<18} ours vs published loop (defaults): {'EQUAL' if differ == 0 else 'DIFFER'} "
                  f"({differ} of {ours.numel()} weights differ; ours prunes {int(ours.sum())}, "
                  f"published {int(theirs.sum())})")
            base = errors(W, initial, X[name])
            print(f"{'':<18} {'wanda mask':<32} {0:>6} {base[0]:>9.5f} {base[1]:>10.4f} {base[2]:>9.4f} "
                  f"{base[3].mean().item():>8.5f}")
            for label, same_sign, thr in variants:
                mask, swaps = dsnot(W, scores, initial, s["dsnot_sum_x"], s["dsnot_var"], 50, thr, same_sign, m)
                err = errors(W, mask, X[name])
                worse = (err[3] > base[3]).double().mean().item()
                print(f"{'':<18} {label:<32} {swaps:>6} {err[0]:>9.5f} {err[1]:>10.4f} {err[2]:>9.4f} "
                      f"{err[3].mean().item():>8.5f} {worse:>10.3f}  "
                      f"({'+' if err[0] >= base[0] else ''}{100 * (err[0] / base[0] - 1):.2f}% vs wanda"
                      f"{', skipped by --dsnot_skip mlp' if name in mlp else ''})")
        break


if __name__ == "__main__":
    main()
