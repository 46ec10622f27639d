"""Summarise the --save_stats selectivity statistics of one results.json per linear kind (not a benchmark).

    python scripts/investigations/selectivity_stats.py out/sel/wanda_select_0.5_unstructured_s0/results.json

One row per linear kind (q_proj, o_proj, gate_proj, down_proj, or OPT's names): channels, IDF-0 channels and
never-active channels summed over layers, and the median over layers of the p10 / p50 / p90 of IDF and of R.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results.json written with --save_stats by a selectivity method")
    args = p.parse_args()
    with open(args.results) as handle:
        layer_stats = json.load(handle).get("layer_stats")
    if not layer_stats:
        raise SystemExit(f"{args.results} has no layer_stats; rerun main.py with --save_stats")
    kinds: dict[str, list[dict]] = defaultdict(list)
    for name, summary in layer_stats.items():
        kinds[name.rsplit(".", 1)[-1]].append(summary)
    print("| input of | channels | IDF-0 channels (sum) | never-active channels (sum) | IDF p10 / p50 / p90 | "
          "R p10 / p50 / p90 | largest R |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, rows in kinds.items():
        def median(field: str, q: str) -> str:
            return f"{statistics.median(r[field][q] for r in rows):.2f}"

        print(f"| {kind} | {rows[0]['channels']} | {sum(r['idf_zero_channels'] for r in rows)} | "
              f"{sum(r['never_active_channels'] for r in rows)} | "
              f"{' / '.join(median('idf', q) for q in ('p10', 'p50', 'p90'))} | "
              f"{' / '.join(median('spikiness', q) for q in ('p10', 'p50', 'p90'))} | "
              f"{max(r['spikiness']['max'] for r in rows):.2f} |")


if __name__ == "__main__":
    main()
