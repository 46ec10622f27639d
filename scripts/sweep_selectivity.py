# python scripts/sweep_selectivity.py --model smollm2-135m --sparsity_ratio 0.5 --sparsity_type unstructured \
#     [--design axes|full] [--max_points N] [--val_seeds 0] [--test_seeds 0 1 2]
"""Selectivity hyperparameter sweep that never tunes on the test set.

1. Every grid point of (sel_tau_percentile, sel_top_quantile, sel_idf_exp, sel_spiky_exp) is pruned with
   --method (default wanda_select) and scored on WikiText-2 *validation*, over --val_seeds; wanda too.
2. The point with the lowest mean validation perplexity is selected (ties: the earlier grid point; the
   default setting is always the first).
3. Only the selected setting and wanda are evaluated on *test*, over --test_seeds.
4. summary.md (validation ranking, selection, paired test comparison) and a full report.py report of the
   test runs are written to  $RESULTS_DIR/<model>/selectivity_sweep_<ratio>_<type>/.

Grid size: --design axes (default) varies one factor at a time around the defaults (1 + sum(k_i - 1) points,
7 for the default axes); --design full is the Cartesian product (81); --max_points caps either (env
SWEEP_DESIGN, SWEEP_MAX_POINTS). Finished runs (scripts/finished.py) are skipped, so an interrupted sweep resumes.
Environment as scripts/run_selectivity_experiments.sh: PYTHON, RESULTS_DIR, NSAMPLES, SEQLEN, EVAL_LIMIT.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import report  # scripts/report.py, beside this file (a script's folder is on sys.path)
from lib.experiments.execute import INTERRUPTED, Signals
from lib.experiments.resume import why_unfinished

REPO = Path(__file__).resolve().parent.parent
# Grid axis -> main.py flag. The defaults below include PruneConfig's defaults (0.6, 0.9, 1, 1).
AXES = {"tau_percentile": "--sel_tau_percentile", "top_quantile": "--sel_top_quantile",
        "idf_exp": "--sel_idf_exp", "spiky_exp": "--sel_spiky_exp"}
DEFAULT_POINT = {"tau_percentile": 0.6, "top_quantile": 0.9, "idf_exp": 1.0, "spiky_exp": 1.0}
DEFAULT_AXES = {"tau_percentile": [0.5, 0.6, 0.7], "top_quantile": [0.8, 0.9, 0.95],
                "idf_exp": [0.5, 1.0, 2.0], "spiky_exp": [0.5, 1.0, 2.0]}


def build_grid(axes: dict[str, list[float]], default: dict[str, float], design: str,
               max_points: int | None) -> list[dict[str, float]]:
    """Grid points, the default first; 'axes' varies one factor at a time, 'full' is the Cartesian product."""
    if design == "full":
        points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    elif design == "axes":
        points = [dict(default)]
        for name, values in axes.items():
            points += [{**default, name: v} for v in values if v != default[name]]
    else:
        raise ValueError(f"design '{design}' is not one of ['axes', 'full']")
    points = [default] + [p for p in points if p != default]  # default first, once
    if max_points is not None and len(points) > max_points:
        if max_points < 1:
            raise ValueError(f"max_points {max_points} must be >= 1")
        rest = points[1:]
        step = len(rest) / (max_points - 1) if max_points > 1 else 0
        points = [points[0]] + [rest[int(i * step)] for i in range(max_points - 1)]
    return points


def slug(point: dict[str, float]) -> str:
    """A folder name for a grid point: 'tau0.6_top0.9_idf1_spiky1'."""
    short = {"tau_percentile": "tau", "top_quantile": "top", "idf_exp": "idf", "spiky_exp": "spiky"}
    return "_".join(f"{short[name]}{value:g}" for name, value in point.items())


def point_args(point: dict[str, float]) -> list[str]:
    """main.py flags for a grid point."""
    return [arg for name, value in point.items() for arg in (AXES[name], f"{value:g}")]


def select_best(val_ppl: dict[str, float], order: list[str]) -> str:
    """The slug with the lowest validation perplexity; ties go to the earlier slug in grid order."""
    candidates = [s for s in order if s in val_ppl]
    if not candidates:
        raise RuntimeError("no grid point has a validation result; see the run.log files")
    return min(candidates, key=lambda s: (val_ppl[s], order.index(s)))


class Runner:
    """Runs main.py once per (split, method, setting, seed), skipping runs whose results.json exists."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root, self.failed = args, root, []

    def run(self, split: str, method: str, point: dict[str, float] | None, seed: int, dense: bool) -> Path:
        """The run's folder; results.json is there unless the run failed (recorded in self.failed)."""
        folder = self.root / split / method / (slug(point) if point else "") / f"seed{seed}"
        folder = Path(os.path.normpath(folder))
        why = why_unfinished(folder / "results.json", {"model": self.args.model, "prune_method": method,
                                                       "seed": seed, "eval_split": split})
        if why is None:
            print(f"skip {folder.relative_to(self.root)}: results.json is finished", flush=True)
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        a = self.args
        command = [a.python, str(REPO / "main.py"), "--model", a.model, "--prune_method", method,
                   "--sparsity_ratio", f"{a.sparsity_ratio:g}", "--sparsity_type", a.sparsity_type,
                   "--seed", str(seed), "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen),
                   "--eval_split", split]
        command += [] if a.eval_limit == "none" else ["--eval_limit", str(a.eval_limit)]
        command += [] if dense else ["--no_dense_eval"]
        command += point_args(point) if point else []
        command += ["--save", str(folder)]
        print(f"run  {folder.relative_to(self.root)} (log: {folder / 'run.log'})", flush=True)
        with open(folder / "run.log", "w") as log:
            log.write("$ " + shlex.join(command) + "\n")
            log.flush()
            code = run_child(command, log)
        if code in INTERRUPTED:  # main.py was interrupted (Ctrl-C, SIGTERM): stop the sweep, a rerun resumes it
            print(f"interrupted {folder.relative_to(self.root)}: sweep stopped (rerun to resume)", file=sys.stderr)
            raise SystemExit(Signals.status() if Signals.terminated else code)
        if code != 0 or not (folder / "results.json").is_file():
            print(f"FAILED {folder.relative_to(self.root)} (exit {code}); see {folder / 'run.log'}", file=sys.stderr)
            self.failed.append(str(folder.relative_to(self.root)))
        return folder


def run_child(command: list[str], log) -> int:
    """main.py as a child process -> its exit status. Ctrl-C reaches it with the terminal's process group; a SIGTERM
    to this process is passed on to it, and either way it is waited for (it removes what it had half-written)."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        return child.wait()
    except KeyboardInterrupt:
        if Signals.terminated:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
        raise


def mean_ppl(folders: list[Path]) -> tuple[dict[int, float], float]:
    """Per-seed pruned perplexity of the folders that have a results.json, and its mean (nan if none)."""
    runs = report.load_runs([f / "results.json" for f in folders if (f / "results.json").is_file()])
    by_seed = {int(r["seed"]): float(r["ppl_pruned"]) for r in runs}
    return by_seed, report.mean_std(list(by_seed.values()))[0]


def main(argv: list[str] | None = None) -> int:
    """Sweep on validation, select, evaluate the selection and wanda on test, write summary.md."""
    default_python = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else "python3"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="wanda_select", help="the selectivity method being tuned")
    parser.add_argument("--sparsity_ratio", type=float, default=0.5)
    parser.add_argument("--sparsity_type", default="unstructured")
    parser.add_argument("--val_seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--design", choices=["axes", "full"], default=os.environ.get("SWEEP_DESIGN", "axes"))
    parser.add_argument("--max_points", type=int,
                        default=int(os.environ["SWEEP_MAX_POINTS"]) if os.environ.get("SWEEP_MAX_POINTS") else None)
    for name, values in DEFAULT_AXES.items():
        parser.add_argument(f"--{name}", type=float, nargs="+", default=values, help=f"grid values (default {values})")
    parser.add_argument("--nsamples", type=int, default=int(os.environ.get("NSAMPLES", 32)))
    parser.add_argument("--seqlen", type=int, default=int(os.environ.get("SEQLEN", 512)))
    parser.add_argument("--eval_limit", default=os.environ.get("EVAL_LIMIT", "16"), help="'none' evaluates everything")
    parser.add_argument("--python", default=os.environ.get("PYTHON") or default_python)
    parser.add_argument("--results_dir", default=os.environ.get("RESULTS_DIR") or str(REPO / "results"))
    args = parser.parse_args(argv)
    args.command_line = "python scripts/sweep_selectivity.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    axes = {name: getattr(args, name) for name in DEFAULT_AXES}
    grid = build_grid(axes, DEFAULT_POINT, args.design, args.max_points)
    model_tag = Path(args.model.rstrip("/")).name.removesuffix(".gguf")
    root = Path(args.results_dir) / model_tag / f"selectivity_sweep_{args.sparsity_ratio:g}_{args.sparsity_type.replace(':', '-')}"
    runner = Runner(args, root)
    print(f"== {len(grid)} grid points x {len(args.val_seeds)} validation seeds, then the selection and wanda on "
          f"test x {len(args.test_seeds)} seeds -> {root}", flush=True)

    val_wanda = [runner.run("validation", "wanda", None, s, dense=False) for s in args.val_seeds]
    val_points = {slug(p): [runner.run("validation", args.method, p, s, dense=False) for s in args.val_seeds]
                  for p in grid}
    wanda_val_by_seed, wanda_val = mean_ppl(val_wanda)
    val_by_seed = {name: mean_ppl(folders) for name, folders in val_points.items()}
    val_ppl = {name: mean for name, (by_seed, mean) in val_by_seed.items() if by_seed}
    order = [slug(p) for p in grid]
    try:
        best = select_best(val_ppl, order)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    best_point = grid[order.index(best)]
    print(f"selected on validation: {best} ({val_ppl[best]:.3f}; wanda {wanda_val:.3f})", flush=True)

    test_wanda = [runner.run("test", "wanda", None, s, dense=(i == 0)) for i, s in enumerate(args.test_seeds)]
    test_best = [runner.run("test", args.method, best_point, s, dense=False) for s in args.test_seeds]
    test_files = [f / "results.json" for f in test_wanda + test_best if (f / "results.json").is_file()]
    rows = None
    if test_files:
        test_runs = report.load_runs(test_files)
        rows = report.summarise(report.runs_table(test_runs, report.config_defaults()))
        report.main([str(f) for f in test_files] + ["--out", str(root / "test_report")])

    write_summary(root / "summary.md", args, grid, order, val_by_seed, wanda_val_by_seed, best, rows, runner.failed)
    print((root / "summary.md").read_text())
    if runner.failed:
        print(f"{len(runner.failed)} runs failed: {', '.join(runner.failed)} (rerun the same command to retry)",
              file=sys.stderr)
        return 1
    return 0


def write_summary(path: Path, args: argparse.Namespace, grid: list[dict], order: list[str],
                  val_by_seed: dict[str, tuple[dict[int, float], float]], wanda_val_by_seed: dict[int, float],
                  best: str, test_rows, failed: list[str]) -> None:
    """summary.md: how it was run, the validation ranking, the selection, and the test comparison."""
    a = args
    lines = [f"# Selectivity sweep: {a.method} on {a.model}, {a.sparsity_ratio:g} {a.sparsity_type}", "",
             f"Command: `{a.command_line}`", "",
             f"Calibration nsamples={a.nsamples}, seqlen={a.seqlen}; evaluation eval_limit={a.eval_limit}. "
             f"Grid design '{a.design}', {len(grid)} points; selected on WikiText-2 validation over seeds "
             f"{a.val_seeds}, then reported on test over seeds {a.test_seeds}. The test set played no part in "
             "the selection.", "",
             "## Validation (selection)", "",
             "| rank | setting | validation ppl | Δ vs wanda % (paired) |", "|---|---|---|---|"]
    wanda_mean = report.mean_std(list(wanda_val_by_seed.values()))[0]
    ranked = sorted((name for name in order if val_by_seed[name][0]),
                    key=lambda name: (val_by_seed[name][1], order.index(name)))
    for rank, name in enumerate(ranked, 1):
        by_seed, mean = val_by_seed[name]
        change, _, n = report.paired_change(by_seed, wanda_val_by_seed)
        mark = " **selected**" if name == best else ""
        default = " (default)" if name == order[0] else ""
        lines.append(f"| {rank} | {name}{default}{mark} | {mean:.3f} | "
                     f"{'' if n == 0 else f'{change:+.2f} (n={n})'} |")
    lines += ["", f"wanda on validation: {wanda_mean:.3f}", "",
              f"Selected: **{best}** ({', '.join(f'{AXES[k][2:]}={v:g}' for k, v in grid[order.index(best)].items())}).",
              "", "## Test (selected setting vs wanda)", ""]
    if test_rows is not None:
        lines += ["| method | setting | seeds | perplexity | Δ vs wanda % |", "|---|---|---|---|---|"]
        for _, row in test_rows.iterrows():
            lines.append(f"| {row['method']} | {row['setting'] or 'default'} | {','.join(map(str, row['seeds']))} | "
                         f"{report.format_ppl(row)} | {report.format_change(row, 'wanda')} |")
        lines += ["", "Full test report: test_report/report.md."]
    else:
        lines.append("No test results (all test runs failed).")
    if failed:
        lines += ["", "Failed runs (excluded): " + ", ".join(failed)]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    Signals.install()  # SIGTERM (Slurm's preemption and time limit) stops the sweep like Ctrl-C, exit 143
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C reaches this process and the current main.py together
        print("\ninterrupted: sweep stopped (rerun to resume)", file=sys.stderr)
        sys.exit(Signals.status())
