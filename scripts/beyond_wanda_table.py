"""RESULTS.md's tables from the results of experiments/addons.toml (and addons_gemma3, owl_sweep, reconstruct):
perplexity per configuration and column, the paired change vs wanda (and vs sparsegpt where it ran) with a paired
t-test, what wanda_spiky adds over wanda under the same add-ons, the best configuration per column, and every seed's
perplexity.

    .venv/bin/python scripts/beyond_wanda_table.py [RESULTS_DIR]      (default results/beyond_wanda)
    .venv/bin/python scripts/beyond_wanda_table.py results/reconstruct results/reconstruct_gemma3   # README's headline

With several folders (one model each) it prints one perplexity table, a column per model and sparsity.

Columns are the label prefixes (u50, u60, u70 = unstructured 50/60/70 %, nm24 = 2:4). Perplexity: mean ± sample
std (n - 1) over the seeds found (a cell with fewer seeds than the most common count says how many). Change: per seed both ran, 100 * (ppl / ppl_wanda - 1) against wanda of the same
column, mean ± sample std, and report.py's two-sided paired t-test on those per-seed changes (n - 1 degrees of
freedom): 'better'/'worse' at p < 0.05, else 'n.s.'. Best per column: the lowest mean perplexity, and whether it is
significantly better than wanda and than the runner-up (the same paired test against each).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from report import mean_std, paired_changes, paired_t_test, significance

COLUMNS = {"u50": "50%", "u60": "60%", "u70": "70%", "nm24": "2:4"}
METHODS = ["wanda_spiky", "sparsegpt", "wanda", "ria"]  # longest match first
ADDON_NAMES = {"owl": "owl", "dsnot": "dsnot", "samesign": "(same sign)", "permute": "permute", "admm": "admm",
               "admm_gradual": "admm_gradual", "ramp": "depth ramp"}
ALIASES = {"admm_gradual": "wanda_admm_gradual"}  # reconstruct.toml's label for wanda + --reconstruct admm_gradual


def _addon_tokens(rest: str) -> list[str]:
    """'_owl_dsnot' -> ['owl', 'dsnot']; 'admm_gradual' is one add-on."""
    return [a for a in rest.replace("admm_gradual", "admm-gradual").split("_") if a]


def split_label(label: str) -> tuple[str, str]:
    """'u70_wanda_spiky_owl_dsnot' -> ('u70', 'wanda_spiky + owl + dsnot')."""
    column, rest = label.split("_", 1)
    rest = ALIASES.get(rest, rest)
    method = next(m for m in METHODS if rest == m or rest.startswith(m + "_"))
    addons = [ADDON_NAMES[a.replace("-", "_")] for a in _addon_tokens(rest[len(method):])]
    return column, " + ".join([method, *addons]).replace(" + (same sign)", " (same sign)")


def load(root: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(column, configuration) -> {seed: ppl_pruned}."""
    ppl: dict[tuple[str, str], dict[int, float]] = {}
    for path in sorted(root.glob("*/seed*/results.json")):
        key = split_label(path.parent.parent.name)
        ppl.setdefault(key, {})[int(path.parent.name[4:])] = json.loads(path.read_text())["ppl_pruned"]
    return ppl


def fmt_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {std:.2f}"


def change_cell(runs: dict[int, float], base: dict[int, float]) -> str:
    changes = paired_changes(runs, base)
    if not changes:
        return "-"
    mean, std = mean_std(changes)
    spread = f" ± {std:.1f}" if len(changes) > 1 else ""
    return f"{mean:+.1f}{spread} % {significance(mean, paired_t_test(changes))}"


def tables(ppl: dict[tuple[str, str], dict[int, float]]) -> str:
    columns = [c for c in COLUMNS if any(col == c for col, _ in ppl)]
    configs = sorted({cfg for _, cfg in ppl}, key=lambda cfg: (_config_order(cfg), cfg))
    head = "| configuration | " + " | ".join(COLUMNS[c] for c in columns) + " |\n|---|" + "---:|" * len(columns)
    counts = [len(r) for r in ppl.values()]
    usual = max(set(counts), key=counts.count)
    out = [f"Perplexity, mean ± std over {usual} seeds (n seeds in brackets where not {usual}):", "", head]
    for cfg in configs:
        cells = []
        for c in columns:
            runs = ppl.get((c, cfg))
            cells.append("" if not runs else fmt_mean_std(list(runs.values()))
                         + ("" if len(runs) == usual else f" (n={len(runs)})"))
        out.append(f"| {cfg} | " + " | ".join(cells) + " |")
    for base in ("wanda", "sparsegpt"):
        if base == "sparsegpt" and not any(cfg == base for _, cfg in ppl):
            continue
        out += ["", f"Paired change vs {base} (per seed, % of {base}'s perplexity), mean ± std, paired t-test:", "",
                head]
        for cfg in configs:
            if cfg == base:
                continue
            cells = [change_cell(ppl[(c, cfg)], ppl.get((c, base), {})) if (c, cfg) in ppl else "" for c in columns]
            out.append(f"| {cfg} | " + " | ".join(cells) + " |")
    spiky = []
    for cfg in configs:
        twin = "wanda" + cfg[len("wanda_spiky"):]
        if cfg.startswith("wanda_spiky") and any((c, twin) in ppl for c in columns):
            cells = [change_cell(ppl[(c, cfg)], ppl[(c, twin)]) if (c, cfg) in ppl and (c, twin) in ppl else ""
                     for c in columns]
            spiky.append(f"| {cfg} vs {twin} | " + " | ".join(cells) + " |")
    if spiky:
        out += ["", "What spikiness adds: wanda_spiky vs wanda under the same add-ons (paired, % of the wanda run):",
                "", head, *spiky]
    out += ["", "Best per column (lowest mean perplexity):", ""]
    for c in columns:
        ranked = sorted(((mean_std(list(r.values()))[0], cfg) for (col, cfg), r in ppl.items() if col == c))
        (best_mean, best), second = ranked[0], ranked[1][1] if len(ranked) > 1 else ranked[0][1]  # one run so far
        vs = [f"vs {other}: {change_cell(ppl[(c, best)], ppl[(c, other)])}" for other in dict.fromkeys(
            ["wanda", second]) if other != best]
        out.append(f"- {COLUMNS[c]}: **{best}** {best_mean:.2f}; " + ("; ".join(vs) or "the only configuration run"))
    seeds = sorted({s for r in ppl.values() for s in r})
    out += ["", "Every run (ppl_pruned as results.json holds it):", "",
            "| column | configuration | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---|" + "---:|" * len(seeds)]
    for c in columns:
        for cfg in configs:
            if (c, cfg) in ppl:
                runs = ppl[(c, cfg)]
                out.append(f"| {COLUMNS[c]} | {cfg} | "
                           + " | ".join(f"{runs[s]:.4f}" if s in runs else "-" for s in seeds) + " |")
    return "\n".join(out)


def _config_order(cfg: str) -> int:
    """wanda first, then its add-ons, ria, wanda_spiky and its add-ons, sparsegpt."""
    order = ["wanda", "wanda + owl", "wanda + dsnot", "wanda + dsnot (same sign)", "wanda + owl + dsnot",
             "wanda + permute", "ria", "ria + permute", "wanda_spiky", "wanda_spiky + owl", "wanda_spiky + dsnot",
             "wanda_spiky + owl + dsnot", "wanda_spiky + permute", "sparsegpt", "sparsegpt + owl",
             "wanda + admm", "wanda + admm_gradual", "wanda + depth ramp", "wanda + depth ramp + admm",
             "wanda_spiky + admm", "ria + permute + admm"]
    return order.index(cfg) if cfg in order else len(order)


def combined(roots: list[Path]) -> str:
    """One perplexity table over several results folders: a column per (folder's model, sparsity column); a cell
    with fewer seeds than the most common count says how many."""
    per_root = [(root, load(root)) for root in roots]
    counts = [len(r) for _, ppl in per_root for r in ppl.values()]
    usual = max(set(counts), key=counts.count)
    heads, cells = [], {}
    for root, ppl in per_root:
        model = next((json.loads(f.read_text()).get("model") for f in root.glob("*/seed*/results.json")), None) \
            or root.name
        for c in COLUMNS:
            if any(col == c for col, _ in ppl):
                heads.append(f"{model} {COLUMNS[c]}")
                for (col, cfg), runs in ppl.items():
                    if col == c:
                        n = "" if len(runs) == usual else f" (n={len(runs)})"
                        cells[(heads[-1], cfg)] = fmt_mean_std(list(runs.values())) + n
    configs = sorted({cfg for _, cfg in cells}, key=lambda cfg: (_config_order(cfg), cfg))
    out = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    out += [f"| {cfg} | " + " | ".join(cells.get((h, cfg), "") for h in heads) + " |" for cfg in configs]
    return "\n".join(out)


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]] or [Path(__file__).resolve().parent.parent / "results/beyond_wanda"]
    print(tables(load(roots[0])) if len(roots) == 1 else combined(roots))


if __name__ == "__main__":
    main()
