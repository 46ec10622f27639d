# python scripts/report.py results/smollm2-135m --out results/smollm2-135m/report
#   (any mix of results.json files and folders searched recursively for them)
"""Compare pruning runs: runs.csv and runs.parquet (one row per run: settings, metrics, timings), report.md and
report.csv (one row per group), ppl_by_method.png and, when several ratios were run, ppl_vs_sparsity.png.

Runs are grouped by (model, evaluation/calibration protocol, sparsity type, ratio, method, non-default
hyperparameters), so sweep points never merge. Perplexity is mean +- sample std over seeds; the change
against the baseline (wanda) is paired per seed: the mean over the seeds both have of
100 * (ppl_method / ppl_baseline - 1), so negative means the method beats the baseline; its p-value is
scipy.stats.ttest_rel on those per-seed changes against no change. A results.json that cannot be read, or whose
identity or perplexity is missing or of the wrong type, is named on stderr with the field and left out; a wrong
optional field (timings, memory) is named and left blank. An overflowed perplexity (null, listed under
"non_finite" by main.py) is reported as inf.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lib.experiments.resume import perplexity_problem, read_results

# Config keys that are either group axes of their own or vary per run by design.
NOT_HYPERPARAMETERS = {"prune_method", "sparsity_ratio", "sparsity_type", "seed", "nsamples"}
# Row order: the baseline first, then the selectivity methods; anything else follows alphabetically.
METHOD_ORDER = ["wanda", "wanda_idf", "wanda_spiky", "wanda_select", "magnitude", "sparsegpt", "neuronrank",
                "neuronrank_fisher"]
PROTOCOL = ["model", "eval_split", "eval_limit", "seqlen", "nsamples"]
GROUP = PROTOCOL + ["sparsity_type", "sparsity_ratio", "method", "setting"]
CSV_COLUMNS = GROUP + ["n_seeds", "seeds", "ppl_mean", "ppl_std", "change_vs_baseline_pct", "change_std_pct",
                       "change_n", "change_p", "ppl_dense", "prune_seconds", "total_seconds", "peak_rss_mb",
                       "peak_cuda_mb", "measured_sparsity"]
NUMBER, INTEGER, TEXT = (int, float), int, str
# results.json fields: name -> (accepted types, required). A required field that is missing or wrong skips the file.
FIELDS = {"model": (TEXT, True), "prune_method": (TEXT, True), "sparsity_type": (TEXT, True),
          "sparsity_ratio": (NUMBER, True), "seed": (INTEGER, True), "eval_split": (TEXT, False),
          "eval_limit": (INTEGER, False), "seqlen": (INTEGER, False), "nsamples": (INTEGER, False),
          "protocol": (TEXT, False), "ppl_dense": (NUMBER, False), "measured_sparsity": (NUMBER, False),
          "peak_rss_mb": (NUMBER, False), "peak_cuda_mb": (NUMBER, False), "git_commit": (TEXT, False),
          "config": (dict, False), "seconds": (dict, False), "versions": (dict, False)}


def find_results(paths: list[str | Path]) -> list[Path]:
    """Every results.json named directly or found under a folder, deduplicated, in sorted order."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("results.json"))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise FileNotFoundError(f"{path} is neither a results.json file nor a folder")
    return sorted(found)


def _fits(value, kinds) -> bool:
    return not isinstance(value, bool) and isinstance(value, kinds)


def checked_run(path: Path) -> tuple[dict | None, list[str]]:
    """(the run with every field of the right type, warnings) or (None, [why the file is skipped])."""
    run, problem = read_results(path)
    if run is None:
        return None, [f"skipping {problem}"]
    problem = perplexity_problem(run)
    if problem:
        return None, [f"skipping {path}: {problem}"]
    notes = []
    for name, (kinds, required) in FIELDS.items():
        value = run.get(name)
        if value is None and not required:
            continue
        if value is None or not _fits(value, kinds) or (kinds is NUMBER and not math.isfinite(value)):
            shown = "missing" if name not in run else f"{json.dumps(value)}, not {_kind_name(kinds)}"
            if required:
                return None, [f"skipping {path}: '{name}' is {shown}"]
            notes.append(f"{path}: '{name}' is {shown}; left blank")
            run[name] = None
    seconds = run.get("seconds") or {}
    for phase, value in list(seconds.items()):
        if value is not None and not _fits(value, NUMBER):
            notes.append(f"{path}: 'seconds.{phase}' is {json.dumps(value)}, not a number; left blank")
            seconds[phase] = None
    run["_path"] = str(path)
    return run, notes


def _kind_name(kinds) -> str:
    return {NUMBER: "a number", INTEGER: "an integer", TEXT: "a string", dict: "a table"}[kinds]


def load_runs(paths: list[Path]) -> list[dict]:
    """The parsed results.json files, each with its path under '_path'; a file that cannot be used is named on
    stderr with the reason and left out (a killed, truncated or foreign file must not hide the others)."""
    runs = []
    for path in paths:
        run, notes = checked_run(path)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        if run is not None:
            runs.append(run)
    return runs


def config_defaults() -> dict | None:
    """Every pruning setting's default (PruneConfig's and its sections'), or None when lib cannot be imported."""
    try:
        from lib.config import PruneConfig, all_fields
        # Every setting's default, the methods' and add-ons' sections too (importing lib registers them).
        return {f.name: f.default for f, _ in all_fields(PruneConfig) if f.default is not dataclasses.MISSING}
    except Exception as error:  # the report must still work where the package is not installed
        warnings.warn(f"cannot read defaults from lib/config.py ({error}); labelling every hyperparameter "
                      "that varies across the runs instead")
        return None


def setting_label(config: dict, defaults: dict | None, varying: set[str]) -> str:
    """'k=v, ...' for hyperparameters off their default (or, for keys without a known default, that vary)."""
    parts = []
    for name in sorted(set(config) - NOT_HYPERPARAMETERS):
        value = config[name]
        off_default = value != defaults[name] if defaults is not None and name in defaults else name in varying
        if off_default:
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def runs_table(runs: list[dict], defaults: dict | None = None) -> pd.DataFrame:
    """One row per run: its settings, the setting label, its metrics and timings (seconds_<phase>)."""
    configs = [r.get("config") or {} for r in runs]
    seen: dict[str, set[str]] = {}
    for config in configs:
        for name, value in config.items():
            seen.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    varying = {name for name, values in seen.items() if len(values) > 1}
    rows = []
    for run, config in zip(runs, configs):
        overflowed = run["ppl_pruned"] is None
        rows.append({
            "model": run["model"], "eval_split": run.get("eval_split") or "test", "eval_limit": run.get("eval_limit"),
            "seqlen": run.get("seqlen"), "nsamples": run.get("nsamples"), "protocol": run.get("protocol"),
            "sparsity_type": run["sparsity_type"], "sparsity_ratio": round(float(run["sparsity_ratio"]), 6),
            "method": run["prune_method"], "setting": setting_label(config, defaults, varying), "seed": run["seed"],
            "ppl_pruned": math.inf if overflowed else float(run["ppl_pruned"]), "ppl_overflowed": overflowed,
            "ppl_dense": run.get("ppl_dense"), "measured_sparsity": run.get("measured_sparsity"),
            **{f"seconds_{phase}": value for phase, value in (run.get("seconds") or {}).items()},
            "peak_rss_mb": run.get("peak_rss_mb"), "peak_cuda_mb": run.get("peak_cuda_mb"),
            "git_commit": run.get("git_commit"), "versions": json.dumps(run.get("versions") or {}, sort_keys=True),
            "path": run["_path"]})
    table = pd.DataFrame(rows)
    for column in ("eval_limit", "seqlen", "nsamples"):  # integers with gaps (None = all windows / not recorded)
        table[column] = table[column].astype("Int64")
    return table.astype({c: "float64" for c in table if c.startswith("seconds_")})


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_changes(method_ppl: dict[int, float], baseline_ppl: dict[int, float]) -> list[float]:
    """100 * (method / baseline - 1) for each seed both have, in seed order."""
    return [100.0 * (method_ppl[s] / baseline_ppl[s] - 1.0) for s in sorted(set(method_ppl) & set(baseline_ppl))]


def paired_change(method_ppl: dict[int, float], baseline_ppl: dict[int, float]) -> tuple[float, float, int]:
    """Mean and sample std over shared seeds of 100 * (method / baseline - 1), and how many seeds were shared."""
    changes = paired_changes(method_ppl, baseline_ppl)
    return (*mean_std(changes), len(changes))


def paired_t_test(changes: list[float]) -> float:
    """Two-sided p-value of scipy's paired t-test of the per-seed changes against no change (n - 1 degrees of
    freedom); nan for n < 2 or a non-finite change. Identical non-zero changes give 0, all-zero changes 1 (scipy
    gives nan for a zero spread). With 3 seeds p < 0.05 needs |mean| > 4.30 standard errors."""
    if len(changes) < 2 or not all(math.isfinite(c) for c in changes):
        return math.nan
    mean, std = mean_std(changes)
    if std == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return float(stats.ttest_rel(changes, np.zeros(len(changes))).pvalue)


def significance(mean_change: float, p: float, alpha: float = 0.05) -> str:
    """'better' / 'worse' (lower / higher perplexity than the baseline, paired t-test p < alpha) or 'n.s.', with p."""
    if not math.isfinite(mean_change):
        return "untested (perplexity overflowed)"
    if math.isnan(p):
        return "untested (1 seed)"
    if p >= alpha:
        return f"n.s. (p={p:.2f})"
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"  # not "p=0.000"
    return f"{'better' if mean_change < 0 else 'worse'} ({shown})"


def _group(runs: pd.DataFrame) -> pd.Series:
    """One group's aggregate (runs: its rows, one per seed)."""
    ppl = dict(zip(runs["seed"], runs["ppl_pruned"]))
    mean, std = mean_std(list(ppl.values()))
    return pd.Series({"seeds": sorted(ppl), "ppl_by_seed": ppl, "ppl_mean": mean, "ppl_std": std,
                      "prune_seconds": runs.get("seconds_prune", pd.Series(dtype=float)).mean(),
                      "total_seconds": runs.get("seconds_total", pd.Series(dtype=float)).mean(),
                      "peak_rss_mb": runs["peak_rss_mb"].astype(float).max(),
                      "peak_cuda_mb": runs["peak_cuda_mb"].astype(float).max(),
                      "measured_sparsity": runs["measured_sparsity"].astype(float).mean()})


def summarise(table: pd.DataFrame, baseline: str = "wanda") -> pd.DataFrame:
    """One row per group, in reading order, with the paired change against the baseline method of its cell."""
    duplicated = table.duplicated(GROUP + ["seed"])
    for path in table.loc[duplicated, "path"]:
        warnings.warn(f"two runs of one group and seed: ignoring {path}")
    table = table[~duplicated]
    rows = table.groupby(GROUP, dropna=False, sort=False).apply(_group, include_groups=False).reset_index()
    dense = table.groupby(["model", "seqlen", "eval_limit", "eval_split"], dropna=False)["ppl_dense"].mean()
    rows["ppl_dense"] = [dense.get(tuple(k), math.nan) for k in rows[["model", "seqlen", "eval_limit", "eval_split"]]
                         .itertuples(index=False)]
    changes = [_against_baseline(row, rows, baseline) for row in rows.itertuples()]
    rows = pd.concat([rows, pd.DataFrame(changes, index=rows.index)], axis=1)
    order = rows.apply(lambda r: (_type_order(r["sparsity_type"]), r["sparsity_ratio"], _method_order(r["method"]),
                                  r["setting"]), axis=1)
    protocol = rows[PROTOCOL].astype(str).agg("|".join, axis=1)
    return rows.assign(_p=protocol, _o=order).sort_values(["_p", "_o"]).drop(columns=["_p", "_o"]).reset_index(
        drop=True)


def _against_baseline(row, rows: pd.DataFrame, baseline: str) -> dict:
    """is_baseline and the paired change, its std, n and p against the baseline row of the row's cell."""
    cell = GROUP[:-2]
    same = (rows[cell].astype(str) == pd.Series({c: str(getattr(row, c)) for c in cell})).all(axis=1)
    candidates = rows[same & (rows["method"] == baseline)]
    base = candidates[candidates["setting"] == ""] if (candidates["setting"] == "").any() else candidates
    result = {"is_baseline": False, "change_pct": None, "change_std_pct": None, "change_n": 0, "change_p": None}
    if len(base) != 1:
        return result
    if base.index[0] == row.Index:
        return {**result, "is_baseline": True, "change_n": len(row.seeds)}
    changes = paired_changes(row.ppl_by_seed, base.iloc[0]["ppl_by_seed"])
    mean, std = mean_std(changes)
    return {**result, "change_pct": mean, "change_std_pct": std, "change_n": len(changes),
            "change_p": paired_t_test(changes)}


def _type_order(sparsity_type: str) -> tuple:
    """unstructured first, then N:M by M and N."""
    if ":" not in sparsity_type:
        return (0, 0, 0, sparsity_type)
    n, m = sparsity_type.split(":", 1)
    return (1, int(m) if m.isdigit() else 0, int(n) if n.isdigit() else 0, sparsity_type)


def _method_order(method: str) -> tuple:
    """Known methods in METHOD_ORDER, the rest alphabetically after them."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _fmt(value, digits: int = 2) -> str:
    """A number for the Markdown table, '' when missing."""
    if value is None or pd.isna(value):
        return ""
    return f"{value:.{digits}f}"


def format_ppl(row) -> str:
    """'mean ± std' (or just the mean for one seed; 'inf (overflowed)' when a seed's perplexity overflowed)."""
    if math.isinf(row["ppl_mean"]):
        return "inf (overflowed)"
    if len(row["seeds"]) < 2 or math.isnan(row["ppl_std"]):
        return _fmt(row["ppl_mean"])
    return f"{row['ppl_mean']:.2f} ± {row['ppl_std']:.2f}"


def format_change(row, baseline: str) -> str:
    """'-1.23 ± 0.40 (n=3)', 'ref' for the baseline, '' when there is nothing to pair with."""
    if row["is_baseline"]:
        return "ref"
    if row["change_pct"] is None:  # no baseline run in this cell
        return ""
    if row["change_n"] == 0:
        return f"no seed shared with {baseline}"
    text = f"{row['change_pct']:+.2f}"
    if row["change_n"] > 1 and not math.isnan(row["change_std_pct"]):
        text += f" ± {row['change_std_pct']:.2f}"
    return f"{text} (n={row['change_n']})"


def format_significance(row) -> str:
    """The paired t-test's verdict for a row with a baseline to pair with, else ''."""
    if row["is_baseline"] or row["change_pct"] is None or row["change_n"] == 0:
        return ""
    return significance(row["change_pct"], row["change_p"])


def write_markdown(rows: pd.DataFrame, table: pd.DataFrame, path: Path, baseline: str = "wanda") -> None:
    """report.md: one table per model and protocol, then provenance (versions, commits, files)."""
    lines = ["# Pruning comparison", "",
             f"Perplexity is mean ± sample std over calibration seeds. Δ vs {baseline} is paired per seed: the mean "
             f"over the seeds both runs have of 100·(ppl / ppl_{baseline} − 1), ± its sample std, n = shared "
             f"seeds. Negative Δ means lower perplexity than {baseline}. The paired t-test (scipy.stats.ttest_rel, "
             "two-sided, n − 1 degrees of freedom, on the per-seed Δ) calls a row better or worse at p < 0.05, else "
             "n.s. (not significant). Seconds are means over seeds; peak memory is the maximum over seeds.", ""]
    for key, group in rows.groupby(PROTOCOL, dropna=False, sort=False):
        protocol = dict(zip(PROTOCOL, key))
        dense = group["ppl_dense"].dropna()
        lines += [f"## {protocol['model']}: WikiText-2 {protocol['eval_split']}", "",
                  f"Calibration: nsamples={_none(protocol['nsamples'])}, seqlen={_none(protocol['seqlen'])}. "
                  f"Evaluation: split={protocol['eval_split']}, eval_limit={_none(protocol['eval_limit'])}. Dense "
                  f"perplexity: {_fmt(dense.iloc[0]) if len(dense) else 'not measured'}.", ""]
        has_cuda = group["peak_cuda_mb"].notna().any()
        header = ["sparsity", "method", "setting", "seeds", "perplexity", f"Δ vs {baseline} %", "paired t-test",
                  "prune s", "total s", "peak RSS MB"] + (["peak CUDA MB"] if has_cuda else []) + ["measured sparsity"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in group.iterrows():
            cells = [f"{row['sparsity_ratio']:g} {row['sparsity_type']}", row["method"], row["setting"] or "default",
                     ",".join(map(str, row["seeds"])), format_ppl(row), format_change(row, baseline),
                     format_significance(row), _fmt(row["prune_seconds"], 1), _fmt(row["total_seconds"], 1),
                     _fmt(row["peak_rss_mb"], 0)]
            cells += [_fmt(row["peak_cuda_mb"], 0)] if has_cuda else []
            lines.append("| " + " | ".join(cells + [_fmt(row["measured_sparsity"], 4)]) + " |")
        lines.append("")
    versions = [", ".join(f"{k} {v}" for k, v in sorted(json.loads(text).items())) or "not recorded"
                for text in sorted(table["versions"].unique())]
    lines += ["## Provenance", "", f"{len(table)} results.json files.", "",
              "Package versions: " + "; ".join(versions), "",
              "Git commits: " + ", ".join(sorted(map(str, table["git_commit"].unique()))), ""]
    path.write_text("\n".join(lines))


def _none(value) -> str:
    return "None" if value is None or pd.isna(value) else str(value)


def write_tables(rows: pd.DataFrame, table: pd.DataFrame, out: Path) -> None:
    """report.csv (the Markdown's rows, full precision), runs.csv and runs.parquet (every run)."""
    csv = rows.assign(n_seeds=rows["seeds"].map(len), seeds=rows["seeds"].map(lambda s: " ".join(map(str, s))),
                      change_vs_baseline_pct=rows["change_pct"].where(~rows["is_baseline"], 0.0))
    csv.reindex(columns=CSV_COLUMNS).to_csv(out / "report.csv", index=False)
    table.to_csv(out / "runs.csv", index=False)
    table.to_parquet(out / "runs.parquet", index=False)


def _label(row) -> str:
    """Method name, with its setting when not default."""
    return row["method"] + (f"\n{row['setting']}" if row["setting"] else "")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_by_method(rows: pd.DataFrame, path: Path, baseline: str = "wanda") -> None:
    """ppl_by_method.png: one panel per (protocol, sparsity), a bar per method with ± sample-std error bars."""
    plt = _pyplot()
    panels = list(rows.groupby(PROTOCOL + ["sparsity_type", "sparsity_ratio"], dropna=False, sort=False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.1 * max(len(g) for _, g in panels) + 2),
                                                      3.6 * len(panels)), squeeze=False)
    for ax, (key, group) in zip(axes[:, 0], panels):
        x = list(range(len(group)))
        heights = group["ppl_mean"].tolist()
        ax.bar(x, [h if math.isfinite(h) else math.nan for h in heights], yerr=group["ppl_std"].fillna(0.0).tolist(),
               capsize=4,
               color=["tab:gray" if m == baseline else "tab:blue" for m in group["method"]])
        ax.set_xticks(x, [_label(r) for _, r in group.iterrows()], rotation=20, ha="right", fontsize=8)
        dense = group["ppl_dense"].dropna()
        if len(dense):
            ax.axhline(dense.iloc[0], color="black", linestyle="--", linewidth=1, label=f"dense {dense.iloc[0]:.2f}")
            ax.legend(fontsize=8)
        finite = [h for h in heights if math.isfinite(h) and h > 0]
        if finite and max(finite) / min(finite) > 20:  # magnitude pruning can be orders of magnitude worse
            ax.set_yscale("log")
        seeds = sorted(set(group["seeds"].map(len)))
        ax.set_title(f"{key[0]}, {key[-1]:g} {key[-2]}, WikiText-2 {key[1]} "
                     f"(seeds per method: {'/'.join(map(str, seeds))})", fontsize=9)
        ax.set_ylabel("perplexity (bars: ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_sparsity(rows: pd.DataFrame, path: Path) -> bool:
    """ppl_vs_sparsity.png when some method was run at several ratios of one sparsity type; True if written."""
    keys = PROTOCOL + ["sparsity_type", "method", "setting"]
    lines = [(k, g.sort_values("sparsity_ratio")) for k, g in rows.groupby(keys, dropna=False, sort=False)
             if len(g) > 1]
    if not lines:
        return False
    plt = _pyplot()
    panels: dict[tuple, list] = {}
    for key, line in lines:
        panels.setdefault(key[:-2], []).append((key[-2:], line))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4.2 * len(panels)), squeeze=False)
    for ax, (key, group) in zip(axes[:, 0], panels.items()):
        for (method, setting), line in sorted(group, key=lambda item: (_method_order(item[0][0]), item[0][1])):
            ax.errorbar(line["sparsity_ratio"], line["ppl_mean"], yerr=line["ppl_std"].fillna(0.0), marker="o",
                        capsize=3, label=method + (f" ({setting})" if setting else ""))
        dense = pd.concat([line["ppl_dense"] for _, line in group]).dropna()
        if len(dense):
            ax.axhline(dense.iloc[0], color="black", linestyle="--", linewidth=1, label=f"dense {dense.iloc[0]:.2f}")
        ax.set_yscale("log")  # perplexity grows roughly exponentially with sparsity
        ax.set_xlabel("sparsity ratio")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"{key[0]}, {key[-1]}, WikiText-2 {key[1]}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Write the report for the given results into --out; print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="results.json files or folders searched recursively for them")
    parser.add_argument("--out", required=True, help="folder for report.md, report.csv, runs.csv/.parquet, plots")
    parser.add_argument("--baseline", default="wanda", help="method the paired change is measured against")
    args = parser.parse_args(argv)
    try:
        paths = find_results(args.paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = load_runs(paths)
    if not runs:
        print(f"no readable results.json found under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    table = runs_table(runs, config_defaults())
    rows = summarise(table, baseline=args.baseline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, table, out / "report.md", baseline=args.baseline)
    write_tables(rows, table, out)
    plot_by_method(rows, out / "ppl_by_method.png", baseline=args.baseline)
    written = ["report.md", "report.csv", "runs.csv", "runs.parquet", "ppl_by_method.png"]
    stale = out / "ppl_vs_sparsity.png"
    if plot_vs_sparsity(rows, stale):
        written.append("ppl_vs_sparsity.png")
    elif stale.exists():  # left from an earlier report over more ratios: it would no longer match report.md
        stale.unlink()
    print((out / "report.md").read_text())
    print(f"wrote {', '.join(str(out / name) for name in written)} from {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
