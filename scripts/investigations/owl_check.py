"""OWL's layer ratios on a real model against an independent computation, and what they look like (RESULTS.md).

    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/owl_check.py results/beyond_wanda/u70_wanda_owl/seed0

Reads a `--layer_ratios owl` run's results.json (its model, seed, nsamples, seqlen, owl_m, owl_lambda and sparsity
ratio), recomputes upstream's outlier ratios from scratch and compares: the calibration windows go through the
dense model's own forward with a hook on every linear of every decoder layer summing x_j^2 over all tokens (no
layer-by-layer driver), scores |W_ij| * ||X_j|| of all the layer's linears together, D_l = share above owl_m times
their mean (upstream's check_outlier_mean), ratios by upstream's min-max formula (numpy, as luuyin/OWL). Prints per
layer: D_l both ways, the run's ratio and upstream's, and the largest differences; exit 1 if D_l differ by more
than 1e-6 or ratios by more than 1e-9 (where the run's ratios leave no layer above 0.99, where ours rescale).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from check_layer_inputs import forward_with_hooks


def dense_input_norms(model, layers, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer, per linear: sum over every calibration token of x_j^2 (float64), from the model's own forward."""
    from lib.models import find_linears

    sums: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        for name, linear in find_linears(layer).items():
            def hook(module, args, i=i, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sums[i][name] = sums[i].get(name, 0) + (x * x).sum(0)
            handles.append(linear.register_forward_pre_hook(hook))
    forward_with_hooks(model, ids, handles)
    return sums


def upstream_outlier_ratio(layer, norms: dict[str, torch.Tensor], owl_m: float) -> float:
    """check_outlier_mean on the concatenated |W| * sqrt(sum x^2) of the layer's linears (a fraction, not %)."""
    from lib.models import find_linears

    scores = torch.cat([(linear.weight.double().abs() * norms[name].sqrt()[None, :]).flatten()
                        for name, linear in find_linears(layer).items()])
    return float((scores > scores.mean() * owl_m).double().mean())


def upstream_ratios(D: list[float], sparsity: float, lam: float) -> np.ndarray:
    """luuyin/OWL's arithmetic: min-max scale to 2 lambda, shift to mean density 1 - sparsity, sparsity = 1 - r."""
    r = np.array(D)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    r = r - np.mean(r) + (1 - sparsity)
    return 1 - r


def main() -> int:
    from lib.data import get_calibration, resolve_data_dir
    from lib.models import find_decoder_layers, load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="folder of a --layer_ratios owl run (holding results.json)")
    args = p.parse_args()
    r = json.loads((args.run / "results.json").read_text())
    cfg = r["config"]
    model, tokenizer = load_model(r["model"], dtype=torch.float32)
    ids = get_calibration(r["calib_dataset"], tokenizer, cfg["nsamples"], cfg["seed"], r["seqlen"],
                          resolve_data_dir(None))
    layers = find_decoder_layers(model)
    norms = dense_input_norms(model, layers, ids)
    D = [upstream_outlier_ratio(layer, n, cfg["owl_m"]) for layer, n in zip(layers, norms)]
    ours_D, ours_r = r["outlier_ratios"], r["layer_ratios"]
    ratios = upstream_ratios(D, cfg["sparsity_ratio"], cfg["owl_lambda"])
    print(f"# {r['model']}, seed {cfg['seed']}, {cfg['nsamples']} x {r['seqlen']} tokens, target "
          f"{cfg['sparsity_ratio']}, M {cfg['owl_m']}, lambda {cfg['owl_lambda']}")
    print("layer   D_l (this check)   D_l (run)   ratio (upstream)   ratio (run)")
    for i, (d, od, u, o) in enumerate(zip(D, ours_D, ratios, ours_r)):
        print(f"{i:>5}   {100 * d:>14.4f}%   {100 * od:>8.4f}%   {u:>16.4f}   {o:>11.4f}")
    d_diff = max(abs(a - b) for a, b in zip(D, ours_D))
    r_diff = float(np.max(np.abs(ratios - np.array(ours_r))))
    print(f"max |D_l difference| {d_diff:.2e}; max |ratio difference| {r_diff:.2e}; D_l range "
          f"{100 * min(D):.3f}%-{100 * max(D):.3f}% (max/min {max(D) / max(min(D), 1e-12):.2f}); layer ratios "
          f"{min(ours_r):.4f}-{max(ours_r):.4f}, mean {np.mean(ours_r):.6f}")
    comparable = max(ratios) <= 0.99
    return 0 if d_diff <= 1e-6 and (r_diff <= 1e-9 or not comparable) else 1


if __name__ == "__main__":
    sys.exit(main())
