"""Per-seed perplexities of scripts/run_beyond_wanda.sh, their mean ± std, and the paired change vs wanda.

    .venv/bin/python scripts/beyond_wanda_table.py [RESULTS_DIR]      (default results/beyond_wanda)

One Markdown row per label: ppl_pruned of each seed found (4 decimals, as run_beyond_wanda.sh prints them), the
mean ± sample std (n - 1) over those seeds, and the paired change vs wanda of the same sparsity (u50_*, u70_*
vs <prefix>_wanda; nm24_* vs nm24_wanda): per seed run by both, ppl - ppl_wanda, mean ± sample std. A std
needs two seeds; with one it is '-'.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.2f} ± {std}"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "results/beyond_wanda")
    ppl: dict[str, dict[int, float]] = {}
    for path in sorted(root.glob("*/seed*/results.json")):
        ppl.setdefault(path.parent.parent.name, {})[int(path.parent.name[4:])] = json.loads(path.read_text())[
            "ppl_pruned"]
    seeds = sorted({s for runs in ppl.values() for s in runs})
    print("| run | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds | mean ± std | paired change vs wanda |")
    print("| --- |" + " ---: |" * (len(seeds) + 3))
    for label, runs in ppl.items():
        reference = label.split("_")[0] + "_wanda"
        base = ppl.get(reference, {}) if label != reference else {}
        paired = [runs[s] - base[s] for s in runs if s in base]
        cells = [f"{runs[s]:.4f}" if s in runs else "-" for s in seeds]
        change = f"{mean_std(paired)} (n={len(paired)})" if paired else "-"
        print(f"| {label} | " + " | ".join(cells) + f" | {len(runs)} | {mean_std(list(runs.values()))} | {change} |")


if __name__ == "__main__":
    main()
