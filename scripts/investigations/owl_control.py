"""Controls for OWL (RESULTS.md): is its gain the outlier signal, or any spread of per-layer sparsities?

    .venv/bin/python scripts/investigations/owl_control.py --control shuffled|reversed [--seeds 0 1 2] [--ratio 0.7] \
        [--results_dir results/owl_control]

Runs `main.py --prune_method wanda --layer_ratios owl` (experiments/addons.toml's protocol and settings) with OWL's per-layer
ratios replaced after they are computed: 'shuffled' permutes them across layers (torch.Generator seeded with the
run's seed + 1000), 'reversed' mirrors them around the target (2 * target - ratio_l: layers with more outliers
pruned more). Mean and spread stay OWL's; only which layer gets which ratio changes. results.json holds the ratios
used. If OWL's gain over uniform Wanda is the outlier signal, both controls should lose it; if the shuffled
ratios do as well, the spread alone is the gain.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import main
from lib.addons import owl
from lib.experiments.execute import INTERRUPTED, Signals
from lib.experiments.resume import why_unfinished

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = ["--protocol", "experiment", "--no_dense_eval"]  # as experiments/addons.toml


OWL_RATIOS = owl.owl_ratios  # the real one, kept before any patch (patches must not stack over seeds)


def patched(control: str, seed: int):
    """owl.owl_ratios, then shuffled or reversed."""
    def owl_ratios(outlier_ratios, target, owl_lambda):
        ratios = OWL_RATIOS(outlier_ratios, target, owl_lambda)
        if control == "reversed":
            return [2 * target - r for r in ratios]
        order = torch.randperm(len(ratios), generator=torch.Generator().manual_seed(seed + 1000)).tolist()
        return [ratios[i] for i in order]
    return owl_ratios


def main_cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--control", choices=["shuffled", "reversed"], required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratio", default="0.7")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--results_dir", type=Path, default=REPO / "results/owl_control")
    args = p.parse_args()
    status = 0
    for seed in args.seeds:
        out = args.results_dir / f"u{args.ratio[2]}0_wanda_owl_{args.control}" / f"seed{seed}"
        if why_unfinished(out / "results.json", {"model": args.model, "prune_method": "wanda", "seed": seed,
                                                 "sparsity_ratio": float(args.ratio), "layer_ratios": "owl"}) is None:
            continue
        owl.owl_ratios = patched(args.control, seed)
        argv = ["--model", args.model, *PROTOCOL, "--prune_method", "wanda", "--sparsity_ratio", args.ratio,
                "--layer_ratios", "owl", "--seed", str(seed), "--save", str(out)]
        sys.argv = ["owl_control.py", "--control", args.control, *argv]
        Signals.install()  # SIGTERM stops the run like Ctrl-C (exit 143)
        code = main.main(argv)
        if code in INTERRUPTED:
            return Signals.status()
        status = max(status, code)
    return status


if __name__ == "__main__":
    sys.exit(main_cli())
