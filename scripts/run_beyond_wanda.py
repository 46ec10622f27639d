"""The add-on comparison of RESULTS.md: OWL, DSnoT, RIA and the N:M permutation against wanda and sparsegpt, with
wanda_spiky under the same add-ons, several seeds, in one process.

    .venv/bin/python scripts/run_beyond_wanda.py [--seeds 0 1 2] [--labels u50_wanda ...] [--model smollm2-135m]
        [--results_dir results/beyond_wanda] [--bos never]

Every run is `main.py <PROTOCOL> <its arguments> --seed K --save <results_dir>/<label>/seed<K>`, executed by
main.main in this process: the model is loaded once and its dense weights are restored before each run, and the
data files are read and tokenised once, which saves ~30 s per run on the embedded model. Everything else
(calibration draw, pruning, evaluation, results.json, whose "argv" is the equivalent main.py command) is main.py's
own code, so a run here gives the same perplexity as the same command run alone (checked for wanda, OWL+DSnoT
and RIA+permute; RESULTS.md).

Resume: a run whose results.json exists is skipped. A failed run is reported and the batch goes on; the exit
status is 1 if any failed. Then one line per run: label, seed, ppl_pruned, measured sparsity, prune seconds.
`scripts/beyond_wanda_table.py` makes the Markdown table with paired changes and significance labels.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import main

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = ["--protocol", "experiment", "--no_dense_eval"]

# label -> main.py arguments. Prefix: u50/u60/u70 = unstructured at that ratio, nm24 = 2:4. OWL is refused with
# N:M (its published N:M form mixes N per layer), so the 2:4 block has no OWL rows.
ADDONS = {"": [], "_owl": ["--layer_ratios", "owl"], "_dsnot": ["--refine", "dsnot"],
          "_owl_dsnot": ["--layer_ratios", "owl", "--refine", "dsnot"]}


def build_runs() -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for ratio in ("0.5", "0.6", "0.7"):
        prefix = f"u{ratio[2]}0"
        base = ["--sparsity_ratio", ratio]
        for method in ("wanda", "wanda_spiky"):
            for suffix, extra in ADDONS.items():
                runs[f"{prefix}_{method}{suffix}"] = ["--prune_method", method, *base, *extra]
        runs[f"{prefix}_ria"] = ["--prune_method", "ria", *base]
        runs[f"{prefix}_sparsegpt"] = ["--prune_method", "sparsegpt", *base]
        runs[f"{prefix}_sparsegpt_owl"] = ["--prune_method", "sparsegpt", *base, "--layer_ratios", "owl"]
    runs["u50_wanda_dsnot_samesign"] = ["--prune_method", "wanda", "--sparsity_ratio", "0.5", "--refine", "dsnot",
                                        "--dsnot_same_sign"]
    nm = ["--sparsity_type", "2:4"]
    for method in ("wanda", "wanda_spiky"):
        runs[f"nm24_{method}"] = ["--prune_method", method, *nm]
        runs[f"nm24_{method}_dsnot"] = ["--prune_method", method, *nm, "--refine", "dsnot"]
        runs[f"nm24_{method}_permute"] = ["--prune_method", method, *nm, "--permute"]
    runs["nm24_ria"] = ["--prune_method", "ria", *nm]
    runs["nm24_ria_permute"] = ["--prune_method", "ria", *nm, "--permute"]
    runs["nm24_sparsegpt"] = ["--prune_method", "sparsegpt", *nm]
    return runs


RUNS = build_runs()
# OWL's two hyperparameters around the published M = 5, lambda = 0.08, at 70% (where its published gain is).
OWL_SWEEP = {f"u70_wanda_owl_m{m}_l{lam}": ["--prune_method", "wanda", "--sparsity_ratio", "0.7", "--layer_ratios",
                                            "owl", "--owl_m", m, "--owl_lambda", lam]
             for m, lam in [("5", "0.04"), ("5", "0.12"), ("5", "0.16"), ("5", "0.2"), ("5", "0.3"), ("3", "0.08"),
                            ("7", "0.08"), ("10", "0.08")]}
GRIDS = {"addons": RUNS, "owl_sweep": OWL_SWEEP}


def load_once():
    """main.load_with_store that loads on the first call and afterwards restores the dense weights in place."""
    real, kept = main.load_with_store, {}

    def load(*args):
        if args != kept.get("args"):
            model, tokenizer, store = real(*args)
            if store.mode != "none":
                raise SystemExit("run_beyond_wanda.py keeps the dense weights in memory; use a model that fits")
            kept.update(args=args, loaded=(model, tokenizer, store),
                        dense={k: v.detach().clone() for k, v in model.state_dict().items()})
        model = kept["loaded"][0]
        model.load_state_dict(kept["dense"])
        return kept["loaded"]
    return load


def cache_data() -> None:
    """Read and tokenise each data file once: main.check's readers, memoised on their arguments (the texts by
    identity: the memoised readers return the same objects on every call)."""
    for name in ("load_eval_text", "load_calibration_texts", "load_tokenizer", "load_config", "tokenize_eval"):
        setattr(main, name, functools.lru_cache(maxsize=None)(getattr(main, name)))


def main_cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grid", choices=sorted(GRIDS), default="addons",
                   help="addons: RESULTS.md's comparison; owl_sweep: OWL's M and lambda at 70%%")
    p.add_argument("--labels", nargs="+", choices=sorted(RUNS) + sorted(OWL_SWEEP), metavar="LABEL",
                   help=f"runs of the grid to do (default all): {' '.join(RUNS)}")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--results_dir", type=Path, default=REPO / "results/beyond_wanda")
    p.add_argument("--bos", choices=["auto", "always", "never"],
                   help="override the protocol's --bos (never: RESULTS.md's earlier Gemma3 protocol)")
    args = p.parse_args()
    main.load_with_store = load_once()
    cache_data()
    failed = []
    runs = GRIDS[args.grid]
    if set(args.labels or ()) - set(runs):
        p.error(f"--labels {' '.join(sorted(set(args.labels) - set(runs)))} not in --grid {args.grid}")
    for label in args.labels or runs:  # label-major: a label's seeds finish together, for the paired test
        for seed in args.seeds:
            out = args.results_dir / label / f"seed{seed}"
            if (out / "results.json").exists():
                continue
            bos = ["--bos", args.bos] if args.bos else []
            argv = ["--model", args.model, *PROTOCOL, *bos, *runs[label], "--seed", str(seed), "--save", str(out)]
            print(f"== {label} seed {seed}: main.py {' '.join(argv)}", file=sys.stderr, flush=True)
            sys.argv = ["main.py", *argv]  # results.json records the equivalent command
            status = main.main(argv)
            if status == 130:
                return 130
            if status != 0:
                print(f"FAILED: {label} seed {seed} (exit {status})", file=sys.stderr)
                failed.append(f"{label}/seed{seed}")
    for path in sorted(args.results_dir.glob("*/seed*/results.json")):
        r = json.loads(path.read_text())
        print(f"{path.parent.parent.name:<28} {path.parent.name:<6} ppl {r['ppl_pruned']:.4f}  sparsity "
              f"{r['measured_sparsity']:.4f}  prune {r['seconds']['prune']:.1f}s")
    if failed:
        print(f"failed runs: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_cli())
