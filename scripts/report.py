# python scripts/report.py results/smollm2-135m --out results/smollm2-135m/report
#   (any mix of results.json files and folders searched recursively for them)
"""Compare pruning runs: report.md, report.csv, ppl_by_method.png and, when several ratios were run, ppl_vs_sparsity.png.

Runs are grouped by (model, evaluation/calibration protocol, sparsity type, ratio, method, non-default
hyperparameters), so sweep points never merge. Perplexity is mean +- sample std over seeds; the change
against the baseline (wanda) is paired per seed: the mean over the seeds both have of
100 * (ppl_method / ppl_baseline - 1), so negative means the method beats the baseline.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Config keys that are either group axes of their own or vary per run by design.
NOT_HYPERPARAMETERS = {"prune_method", "sparsity_ratio", "sparsity_type", "seed", "nsamples"}
# Row order: the baseline first, then the selectivity methods; anything else follows alphabetically.
METHOD_ORDER = ["wanda", "wanda_idf", "wanda_spiky", "wanda_select", "magnitude", "sparsegpt", "neuronrank",
                "neuronrank_fisher"]
CSV_COLUMNS = ["model", "eval_split", "eval_limit", "seqlen", "nsamples", "sparsity_type", "sparsity_ratio",
               "method", "setting", "n_seeds", "seeds", "ppl_mean", "ppl_std", "change_vs_baseline_pct",
               "change_std_pct", "change_n", "change_p", "ppl_dense", "prune_seconds", "total_seconds", "peak_rss_mb",
               "peak_cuda_mb", "measured_sparsity"]


@dataclass(frozen=True)
class Protocol:
    """What must match for two perplexities to be comparable: model, calibration and evaluation settings."""

    model: str
    nsamples: int | None
    seqlen: int | None
    eval_limit: int | None
    eval_split: str


@dataclass(frozen=True)
class GroupKey:
    """One row of the report: a method at one sparsity under one protocol and hyperparameter setting."""

    protocol: Protocol
    sparsity_type: str
    sparsity_ratio: float
    method: str
    setting: str  # "" for default hyperparameters, else "name=value, ..."


@dataclass
class Row:
    """The aggregate of one group over its seeds."""

    key: GroupKey
    seeds: list[int]
    ppl_mean: float
    ppl_std: float
    change_pct: float | None = None
    change_std_pct: float | None = None
    change_n: int = 0
    change_p: float | None = None  # paired t-test over the shared seeds (nan for one seed)
    is_baseline: bool = False
    ppl_dense: float | None = None
    prune_seconds: float | None = None
    total_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    measured_sparsity: float | None = None
    ppl_by_seed: dict[int, float] = field(default_factory=dict)


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


def load_runs(paths: list[Path]) -> list[dict]:
    """The parsed results.json files, each with its path under '_path'; an unreadable one is named on stderr
    and left out (a killed or truncated run must not hide the others)."""
    runs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            if not isinstance(run, dict) or "prune_method" not in run or "ppl_pruned" not in run:
                raise ValueError("not a results.json of main.py (no prune_method / ppl_pruned)")
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            print(f"warning: skipping {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                  file=sys.stderr)
            continue
        run["_path"] = str(path)
        runs.append(run)
    return runs


def config_defaults() -> dict | None:
    """Every pruning setting's default (PruneConfig's and its sections'), or None when lib cannot be imported."""
    try:
        import dataclasses

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
    for name in sorted(config):
        if name in NOT_HYPERPARAMETERS:
            continue
        value = config[name]
        if defaults is not None and name in defaults:
            off_default = value != defaults[name]
        else:
            off_default = name in varying
        if off_default:
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def varying_keys(runs: list[dict]) -> set[str]:
    """Config keys that take more than one value across the runs."""
    values: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for name, value in run.get("config", {}).items():
            values[name].add(json.dumps(value, sort_keys=True))
    return {name for name, seen in values.items() if len(seen) > 1}


def group_key(run: dict, defaults: dict | None, varying: set[str]) -> GroupKey:
    """The group a run belongs to."""
    protocol = Protocol(model=str(run["model"]), nsamples=run.get("nsamples"), seqlen=run.get("seqlen"),
                        eval_limit=run.get("eval_limit"), eval_split=run.get("eval_split", "test"))
    return GroupKey(protocol=protocol, sparsity_type=str(run["sparsity_type"]),
                    sparsity_ratio=round(float(run["sparsity_ratio"]), 6), method=str(run["prune_method"]),
                    setting=setting_label(run.get("config", {}), defaults, varying))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def paired_changes(method_ppl: dict[int, float], baseline_ppl: dict[int, float]) -> list[float]:
    """100 * (method / baseline - 1) for each seed both have, in seed order."""
    return [100.0 * (method_ppl[s] / baseline_ppl[s] - 1.0) for s in sorted(set(method_ppl) & set(baseline_ppl))]


def paired_change(method_ppl: dict[int, float], baseline_ppl: dict[int, float]) -> tuple[float, float, int]:
    """Mean and sample std over shared seeds of 100 * (method / baseline - 1), and how many seeds were shared."""
    changes = paired_changes(method_ppl, baseline_ppl)
    mean, std = mean_std(changes)
    return mean, std, len(changes)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (Numerical Recipes' betacf, Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def paired_t_test(changes: list[float]) -> float:
    """Two-sided p-value of a paired t-test that the mean change is zero (n - 1 degrees of freedom); nan for n < 2.

    Identical non-zero changes give 0, all-zero changes 1. With 3 seeds (2 degrees of freedom) p < 0.05 needs
    |mean| > 4.30 standard errors.
    """
    n = len(changes)
    if n < 2:
        return math.nan
    mean, std = mean_std(changes)
    if std == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (std / math.sqrt(n))
    df = n - 1
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def significance(mean_change: float, p: float, alpha: float = 0.05) -> str:
    """'better' / 'worse' (lower / higher perplexity than the baseline, paired t-test p < alpha) or 'n.s.', with p."""
    if math.isnan(p):
        return "untested (1 seed)"
    if p >= alpha:
        return f"n.s. (p={p:.2f})"
    return f"{'better' if mean_change < 0 else 'worse'} (p={p:.3f})"


def _mean_of(values: list) -> float | None:
    """Mean of the non-null values, or None."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _max_of(values: list) -> float | None:
    """Max of the non-null values, or None."""
    present = [float(v) for v in values if v is not None]
    return max(present) if present else None


def summarise(runs: list[dict], baseline: str = "wanda", defaults: dict | None = None) -> list[Row]:
    """One Row per group, sorted for reading, with the paired change against the baseline method."""
    varying = varying_keys(runs)
    groups: dict[GroupKey, dict[int, dict]] = defaultdict(dict)
    # Dense perplexity does not depend on the calibration seed or the method: one value per model/eval setting.
    dense: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        key = group_key(run, defaults, varying)
        seed = int(run.get("seed", 0))
        if seed in groups[key]:
            warnings.warn(f"two runs of {key.method} ({key.setting or 'default'}) with seed {seed}: keeping "
                          f"{groups[key][seed]['_path']}, ignoring {run['_path']}")
            continue
        groups[key][seed] = run
        if run.get("ppl_dense") is not None:
            p = key.protocol
            dense[(p.model, p.seqlen, p.eval_limit, p.eval_split)].append(float(run["ppl_dense"]))

    rows: dict[GroupKey, Row] = {}
    for key, by_seed in groups.items():
        seeds = sorted(by_seed)
        ppl = {s: float(by_seed[s]["ppl_pruned"]) for s in seeds}
        mean, std = mean_std([ppl[s] for s in seeds])
        seconds = [by_seed[s].get("seconds") or {} for s in seeds]
        p = key.protocol
        rows[key] = Row(
            key=key, seeds=seeds, ppl_mean=mean, ppl_std=std, ppl_by_seed=ppl,
            ppl_dense=_mean_of(dense.get((p.model, p.seqlen, p.eval_limit, p.eval_split), [])),
            prune_seconds=_mean_of([s.get("prune") for s in seconds]),
            total_seconds=_mean_of([s.get("total") for s in seconds]),
            peak_rss_mb=_max_of([by_seed[s].get("peak_rss_mb") for s in seeds]),
            peak_cuda_mb=_max_of([by_seed[s].get("peak_cuda_mb") for s in seeds]),
            measured_sparsity=_mean_of([by_seed[s].get("measured_sparsity") for s in seeds]))

    for key, row in rows.items():
        base = _baseline_for(key, rows, baseline)
        if base is None:
            continue
        if base.key == key:
            row.is_baseline = True
            continue
        row.change_pct, row.change_std_pct, row.change_n = paired_change(row.ppl_by_seed, base.ppl_by_seed)
        row.change_p = paired_t_test(paired_changes(row.ppl_by_seed, base.ppl_by_seed))
    return sorted(rows.values(), key=_row_order)


def _baseline_for(key: GroupKey, rows: dict[GroupKey, Row], baseline: str) -> Row | None:
    """The baseline row in the same cell: its default setting, else the only baseline setting there is."""
    candidates = [r for k, r in rows.items() if k.method == baseline and k.protocol == key.protocol
                  and k.sparsity_type == key.sparsity_type and k.sparsity_ratio == key.sparsity_ratio]
    default = [r for r in candidates if r.key.setting == ""]
    if default:
        return default[0]
    return candidates[0] if len(candidates) == 1 else None


def _type_order(sparsity_type: str) -> tuple:
    """unstructured first, then N:M by M and N."""
    if ":" not in sparsity_type:
        return (0, 0, 0, sparsity_type)
    n, m = sparsity_type.split(":", 1)
    return (1, int(m) if m.isdigit() else 0, int(n) if n.isdigit() else 0, sparsity_type)


def _method_order(method: str) -> tuple:
    """Known methods in METHOD_ORDER, the rest alphabetically after them."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _row_order(row: Row) -> tuple:
    """Sort key: protocol, sparsity type, ratio, method, setting."""
    p, k = row.key.protocol, row.key
    return (p.model, p.eval_split, str(p.eval_limit), str(p.seqlen), str(p.nsamples), _type_order(k.sparsity_type),
            k.sparsity_ratio, _method_order(k.method), k.setting)


def _fmt(value: float | None, digits: int = 2) -> str:
    """A number for the Markdown table, '' when missing."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.{digits}f}"


def format_ppl(row: Row) -> str:
    """'mean ± std' (or just the mean for one seed)."""
    if len(row.seeds) < 2 or math.isnan(row.ppl_std):
        return _fmt(row.ppl_mean)
    return f"{row.ppl_mean:.2f} ± {row.ppl_std:.2f}"


def format_change(row: Row, baseline: str) -> str:
    """'-1.23 ± 0.40 (n=3)', 'ref' for the baseline, '' when there is nothing to pair with."""
    if row.is_baseline:
        return "ref"
    if row.change_pct is None:  # no baseline run in this cell
        return ""
    if row.change_n == 0:
        return f"no seed shared with {baseline}"
    text = f"{row.change_pct:+.2f}"
    if row.change_n > 1 and row.change_std_pct is not None and not math.isnan(row.change_std_pct):
        text += f" ± {row.change_std_pct:.2f}"
    return f"{text} (n={row.change_n})"


def format_significance(row: Row) -> str:
    """The paired t-test's verdict for a row with a baseline to pair with, else ''."""
    if row.is_baseline or row.change_pct is None or row.change_n == 0 or row.change_p is None:
        return ""
    return significance(row.change_pct, row.change_p)


def write_markdown(rows: list[Row], runs: list[dict], path: Path, baseline: str = "wanda") -> None:
    """report.md: one table per model and protocol, then provenance (versions, commits, files)."""
    lines = ["# Pruning comparison", "",
             f"Perplexity is mean ± sample std over calibration seeds. Δ vs {baseline} is paired per seed: the mean "
             f"over the seeds both runs have of 100·(ppl / ppl_{baseline} − 1), ± its sample std, n = shared "
             f"seeds. Negative Δ means lower perplexity than {baseline}. The paired t-test (two-sided, n − 1 "
             "degrees of freedom, on the per-seed Δ) calls a row better or worse at p < 0.05, else n.s. (not "
             "significant). Seconds are means over seeds; peak memory is the maximum over seeds.", ""]
    by_protocol: dict[Protocol, list[Row]] = defaultdict(list)
    for row in rows:
        by_protocol[row.key.protocol].append(row)
    for protocol, group in by_protocol.items():
        dense = next((r.ppl_dense for r in group if r.ppl_dense is not None), None)
        lines += [f"## {protocol.model}: WikiText-2 {protocol.eval_split}", "",
                  f"Calibration: nsamples={protocol.nsamples}, seqlen={protocol.seqlen}. Evaluation: "
                  f"split={protocol.eval_split}, eval_limit={protocol.eval_limit}. Dense perplexity: "
                  f"{_fmt(dense) or 'not measured'}.", ""]
        has_cuda = any(r.peak_cuda_mb is not None for r in group)
        header = ["sparsity", "method", "setting", "seeds", "perplexity", f"Δ vs {baseline} %", "paired t-test",
                  "prune s", "total s", "peak RSS MB"] + (["peak CUDA MB"] if has_cuda else []) + ["measured sparsity"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in group:
            k = row.key
            cells = [f"{k.sparsity_ratio:g} {k.sparsity_type}", k.method, k.setting or "default",
                     ",".join(map(str, row.seeds)), format_ppl(row), format_change(row, baseline),
                     format_significance(row), _fmt(row.prune_seconds, 1), _fmt(row.total_seconds, 1),
                     _fmt(row.peak_rss_mb, 0)]
            cells += [_fmt(row.peak_cuda_mb, 0)] if has_cuda else []
            cells += [_fmt(row.measured_sparsity, 4)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    versions = sorted({json.dumps(r.get("versions", {}), sort_keys=True) for r in runs})
    commits = sorted({str(r.get("git_commit")) for r in runs})
    lines += ["## Provenance", "", f"{len(runs)} results.json files.", "",
              "Package versions: " + "; ".join(_versions_text(v) for v in versions), "",
              "Git commits: " + ", ".join(commits), ""]
    path.write_text("\n".join(lines))


def _versions_text(versions_json: str) -> str:
    """'torch 2.13.0, transformers 5.24.0' from the JSON of a versions dict."""
    versions = json.loads(versions_json)
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "not recorded"


def write_csv(rows: list[Row], path: Path) -> None:
    """report.csv: the same rows as the Markdown, one column per quantity, full precision."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            k, p = row.key, row.key.protocol
            writer.writerow({
                "model": p.model, "eval_split": p.eval_split, "eval_limit": p.eval_limit, "seqlen": p.seqlen,
                "nsamples": p.nsamples, "sparsity_type": k.sparsity_type, "sparsity_ratio": k.sparsity_ratio,
                "method": k.method, "setting": k.setting, "n_seeds": len(row.seeds),
                "seeds": " ".join(map(str, row.seeds)), "ppl_mean": row.ppl_mean,
                "ppl_std": "" if math.isnan(row.ppl_std) else row.ppl_std,
                "change_vs_baseline_pct": 0.0 if row.is_baseline else _blank(row.change_pct),
                "change_std_pct": _blank(row.change_std_pct),
                "change_n": len(row.seeds) if row.is_baseline else row.change_n,
                "change_p": _blank(row.change_p),
                "ppl_dense": _blank(row.ppl_dense), "prune_seconds": _blank(row.prune_seconds),
                "total_seconds": _blank(row.total_seconds), "peak_rss_mb": _blank(row.peak_rss_mb),
                "peak_cuda_mb": _blank(row.peak_cuda_mb), "measured_sparsity": _blank(row.measured_sparsity)})


def _blank(value: float | None) -> float | str:
    """'' for None or nan, else the value."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _label(row: Row) -> str:
    """Method name, with its setting when not default."""
    return row.key.method + (f"\n{row.key.setting}" if row.key.setting else "")


def plot_by_method(rows: list[Row], path: Path, baseline: str = "wanda") -> None:
    """ppl_by_method.png: one panel per (protocol, sparsity), a bar per method with ± sample-std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        panels[(row.key.protocol, row.key.sparsity_type, row.key.sparsity_ratio)].append(row)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.1 * max(len(g) for g in panels.values()) + 2),
                                                      3.6 * len(panels)), squeeze=False)
    for ax, ((protocol, sparsity_type, ratio), group) in zip(axes[:, 0], panels.items()):
        x = list(range(len(group)))
        heights = [r.ppl_mean for r in group]
        errors = [0.0 if math.isnan(r.ppl_std) else r.ppl_std for r in group]
        colors = ["tab:gray" if r.key.method == baseline else "tab:blue" for r in group]
        ax.bar(x, heights, yerr=errors, capsize=4, color=colors)
        ax.set_xticks(x, [_label(r) for r in group], rotation=20, ha="right", fontsize=8)
        dense = next((r.ppl_dense for r in group if r.ppl_dense is not None), None)
        if dense is not None:
            ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense {dense:.2f}")
            ax.legend(fontsize=8)
        finite = [h for h in heights if math.isfinite(h) and h > 0]
        if finite and max(finite) / min(finite) > 20:  # magnitude pruning can be orders of magnitude worse
            ax.set_yscale("log")
        seeds = sorted({len(r.seeds) for r in group})
        ax.set_title(f"{protocol.model}, {ratio:g} {sparsity_type}, WikiText-2 {protocol.eval_split} "
                     f"(seeds per method: {'/'.join(map(str, seeds))})", fontsize=9)
        ax.set_ylabel("perplexity (bars: ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_sparsity(rows: list[Row], path: Path) -> bool:
    """ppl_vs_sparsity.png when some method was run at several ratios of one sparsity type; True if written."""
    lines: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        lines[(row.key.protocol, row.key.sparsity_type, row.key.method, row.key.setting)].append(row)
    lines = {k: sorted(v, key=lambda r: r.key.sparsity_ratio) for k, v in lines.items() if len(v) > 1}
    if not lines:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, dict] = defaultdict(dict)
    for (protocol, sparsity_type, method, setting), line in lines.items():
        panels[(protocol, sparsity_type)][(method, setting)] = line
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4.2 * len(panels)), squeeze=False)
    for ax, ((protocol, sparsity_type), group) in zip(axes[:, 0], panels.items()):
        for (method, setting), line in sorted(group.items(), key=lambda item: (_method_order(item[0][0]), item[0][1])):
            ax.errorbar([r.key.sparsity_ratio for r in line], [r.ppl_mean for r in line],
                        yerr=[0.0 if math.isnan(r.ppl_std) else r.ppl_std for r in line], marker="o", capsize=3,
                        label=method + (f" ({setting})" if setting else ""))
        dense = next((r.ppl_dense for line in group.values() for r in line if r.ppl_dense is not None), None)
        if dense is not None:
            ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense {dense:.2f}")
        ax.set_yscale("log")  # perplexity grows roughly exponentially with sparsity
        ax.set_xlabel("sparsity ratio")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"{protocol.model}, {sparsity_type}, WikiText-2 {protocol.eval_split}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Write the report for the given results into --out; print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="results.json files or folders searched recursively for them")
    parser.add_argument("--out", required=True, help="folder for report.md, report.csv and the PNG plots")
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
    rows = summarise(runs, baseline=args.baseline, defaults=config_defaults())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, runs, out / "report.md", baseline=args.baseline)
    write_csv(rows, out / "report.csv")
    plot_by_method(rows, out / "ppl_by_method.png", baseline=args.baseline)
    written = ["report.md", "report.csv", "ppl_by_method.png"]
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
