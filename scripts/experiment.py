"""Run a grid of experiments (experiments/*.toml) and report it: one command from this laptop to a Slurm cluster.

    python scripts/experiment.py run experiments/addons.toml                          # in this process
    python scripts/experiment.py run experiments/addons.toml --executor processes --workers 4   # one GPU each
    python scripts/experiment.py run experiments/addons.toml --executor slurm --partition gpu --time 240 --wait
    python scripts/experiment.py run experiments/addons.toml --dry_run               # what would run, and why
    python scripts/experiment.py report experiments/addons.toml                      # report.md/csv, runs.csv/parquet

Every run is `main.py --model M --protocol P <settings> --seed K --save <results_dir>/<path>`. A run is skipped when
finished (lib/experiments/resume.py: results.json parses, holds a perplexity, records the run's settings), so
rerunning the same command resumes a stopped batch and retries failed runs (with --executor slurm: resubmits failed
and preempted tasks, and leaves alone those still queued or running).
Exit status: 0 all done (or submitted), 1 some run failed, 2 bad grid or flags, 130 Ctrl-C, 143 SIGTERM.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import os
import sys
import tomllib
from pathlib import Path

from lib.experiments.execute import INTERRUPTED, Signals
from lib.experiments.grid import Grid, GridError, Run, expand, load_grid
from lib.experiments.resume import read_results, why_unfinished
from lib.experiments.slurm import SlurmError

REPO = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """A flag that does not fit the grid: one line, exit 2."""


def say(text: str) -> None:
    """A progress line; once the reader of stdout is gone (| head), the batch goes on without it."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")


def expected_settings(run: Run) -> dict:
    """What results.json must record for the run to count as finished: the protocol's settings, then the run's."""
    from lib.config import PruneConfig, RunConfig, all_fields, flag_name
    from lib.protocols import protocol_settings

    # 'eval_limit = "all"' is recorded as null, the default the word names
    words = {flag_name(f): f.metadata.get("none_word") for cls in (RunConfig, PruneConfig) for f, _ in all_fields(cls)}
    settings = {**protocol_settings(run.protocol), **run.settings}
    return {**{k: None if v is not None and v == words.get(k) else v for k, v in settings.items()},
            "model": run.model, "seed": run.seed}


def parse_sets(pairs: list[str]) -> dict:
    """--set KEY=VALUE ... -> {KEY: VALUE as TOML reads it (0.5 a float, true a boolean, else a string)}."""
    settings = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {pair!r}: use KEY=VALUE, e.g. --set sparsity_ratio=0.6")
        try:
            settings[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key] = text
    return settings


def apply_overrides(grid: Grid, args: argparse.Namespace) -> Grid:
    """--models, --seeds, --results_dir, --protocol and --set replace the grid's own."""
    from lib.protocols import PROTOCOLS

    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise UsageError(f"--protocol {args.protocol!r} is not one of {sorted(PROTOCOLS)}")
    grid.models = args.models or grid.models
    if args.seeds is not None:  # every block's seeds too
        grid.seeds = args.seeds
        for block in grid.blocks:
            block["seeds"] = None
    grid.results_dir = Path(args.results_dir).resolve() if args.results_dir else grid.results_dir
    grid.protocol = args.protocol or grid.protocol
    grid.settings = {**grid.settings, **parse_sets(args.set)}
    return grid


def check_setting_names(runs: list[Run], grid: Grid) -> None:
    """Every setting must be a main.py flag (main's own parser), before anything runs."""
    import main

    flags = main.build_parser()._option_string_actions
    for run in runs:
        for name in run.settings:
            if f"--{name}" not in flags:
                raise GridError(f"{grid.path}: setting {name!r} (run {run.label}) is not a main.py setting; "
                                "see python main.py --help")


def select(runs: list[Run], patterns: list[str] | None) -> list[Run]:
    """The runs whose label matches one of the patterns (shell wildcards); a pattern matching none is an error."""
    if not patterns:
        return runs
    labels = list(dict.fromkeys(r.label for r in runs))
    for pattern in patterns:
        if not fnmatch.filter(labels, pattern):
            raise UsageError(f"--labels {pattern!r} matches no label of the grid: {' '.join(labels)}")
    return [r for r in runs if any(fnmatch.fnmatchcase(r.label, p) for p in patterns)]


def pending(runs: list[Run], dense_first: bool) -> list[Run]:
    """The runs that are not finished, each announced; with dense_first, the first of each model measures the
    dense perplexity unless a finished run of that model already did."""
    todo, dense_done = [], set()
    for i, run in enumerate(runs, 1):
        path = run.folder / "results.json"
        why = why_unfinished(path, expected_settings(run))
        if why is None:
            results, _ = read_results(path)
            if results.get("ppl_dense") is not None:
                dense_done.add(run.model)
            say(f"({i}/{len(runs)}) skip  {run.label} seed {run.seed} ({run.model}): finished")
            continue
        say(f"({i}/{len(runs)}) {'rerun' if path.exists() else 'todo '} {run.label} seed {run.seed} ({run.model})"
            + (f": {why}" if path.exists() else ""))
        todo.append(run)
    if dense_first:
        for run in todo:
            if run.model not in dense_done:
                run.settings.pop("no_dense_eval", None)
                dense_done.add(run.model)
    return todo


def finish(failed: list[str], stopped: int | None) -> int:
    """The batch's exit status, with one line naming what failed or that it stopped."""
    if stopped in INTERRUPTED:
        print(f"{'terminated (SIGTERM)' if stopped == 143 else 'interrupted'}: batch stopped; rerun this command to "
              "resume", file=sys.stderr)
        return stopped
    if failed:
        print(f"{len(failed)} runs failed: {' '.join(failed)} (see run.log in each; rerun this command to retry)",
              file=sys.stderr)
        return 1
    return 0


def name(run: Run) -> str:
    return f"{run.label} seed {run.seed} ({run.model})"


def execute_local(todo: list[Run]) -> int:
    """In this process, one run after another; the output on this terminal."""
    from lib.experiments.execute import run_one

    failed = []
    for i, run in enumerate(todo, 1):
        say(f"== ({i}/{len(todo)}) {name(run)}: main.py {' '.join(run.argv())}")
        try:
            status = run_one(run.argv(), run.folder, log_to_file=False)
        except KeyboardInterrupt:  # outside main.main (between its phases and ours)
            status = Signals.status()
        if status in INTERRUPTED:
            return finish(failed, status)
        if status != 0:
            say(f"FAILED {name(run)} (exit {status})")
            failed.append(str(run.folder))
    return finish(failed, None)


def execute_processes(todo: list[Run], workers: int, gpus: list[str] | None) -> int:
    """N worker processes, one GPU each where there are GPUs; each run's output in its run.log."""
    from lib.experiments.workers import detect_gpus, run_processes

    gpus = detect_gpus() if gpus is None else gpus
    say(f"{len(todo)} runs on {workers} workers" + (f", GPUs {','.join(gpus)}" if gpus else ", no GPU"))

    def done(index: int, status: int) -> None:
        run = todo[index]
        state = "done" if status == 0 else "stopped" if status in INTERRUPTED else f"FAILED (exit {status})"
        say(f"{state} {name(run)}; log {run.folder / 'run.log'}")

    statuses = run_processes([(r.argv(), r.folder) for r in todo], workers, gpus, done)
    stopped = next((s for s in statuses if s in INTERRUPTED), Signals.status() if None in statuses else None)
    return finish([str(r.folder) for r, s in zip(todo, statuses) if s not in (0, None, *INTERRUPTED)], stopped)


def execute_slurm(todo: list[Run], grid: Grid, args: argparse.Namespace) -> int:
    """One job array: a task per run (or per model with --per_task model); --wait waits and reports."""
    from lib.experiments.slurm import JobBook, SlurmSettings, submit, wait

    log_folder = grid.results_dir / ".slurm"
    active = JobBook(log_folder).active([r.folder for r in todo]) if args.slurm_cluster == "slurm" else {}
    for run in todo:
        if run.folder in active:
            say(f"queued {name(run)}: still in job {active[run.folder]}, not submitted again")
    todo = [r for r in todo if r.folder not in active]
    if not todo:
        return 0
    tasks = [{"argv": r.argv(), "folder": str(r.folder), "expected": expected_settings(r)} for r in todo]
    groups = ([[t for t, r in zip(tasks, todo) if r.model == m] for m in dict.fromkeys(r.model for r in todo)]
              if args.per_task == "model" else [[t] for t in tasks])
    settings = SlurmSettings(partition=args.partition, time_min=args.time, gpus=args.gpus_per_task,
                             cpus=args.cpus_per_task, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
                             account=args.account, extra=dict(kv.split("=", 1) for kv in args.sbatch))
    jobs = submit(groups, settings, log_folder, cluster=args.slurm_cluster)
    say(f"submitted {len(todo)} runs as {len(jobs)} array tasks of job {jobs[0].job_id.split('_')[0]}; logs in "
        f"{log_folder} and each run's run.log; rerun this command to resubmit what fails or is preempted")
    if not args.wait:
        return 0
    errors = wait(jobs)
    for group, error in zip(groups, errors):
        if error:
            say(f"FAILED task with {' '.join(t['folder'] for t in group)}: {error}")
    return finish([t["folder"] for g, e in zip(groups, errors) if e for t in g], None)


def bounded(kind: type, least: float):
    """An argparse type: a finite number of kind, >= least."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < least:
            raise argparse.ArgumentTypeError(f"{text} must be a finite number >= {least:g}")
        return value
    return parse


positive_int, natural = bounded(int, 1), bounded(int, 0)


def build_parser() -> argparse.ArgumentParser:
    from lib.cli import OneLineParser

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="run (or submit) the grid's unfinished runs")
    report = commands.add_parser("report", help="the grid's results: one tidy table and the comparison report")
    for sub in (run, report):
        sub.add_argument("grid", type=Path, help="a grid file, e.g. experiments/addons.toml")
        sub.add_argument("--models", nargs="+", help="replace the grid's models (e.g. gemma3-270m)")
        sub.add_argument("--seeds", nargs="+", type=natural, help="replace the grid's seeds")
        sub.add_argument("--labels", nargs="+", metavar="PATTERN", help="only the runs whose label matches (u50_*)")
        sub.add_argument("--results_dir", help="replace the grid's results_dir")
        sub.add_argument("--protocol", help="replace the grid's protocol (lib/protocols.py)")
        sub.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="a main.py setting for every run")
    report.add_argument("--out", type=Path, help="report folder (default <results_dir>/report)")
    report.add_argument("--baseline", default="wanda", help="method the paired change is measured against")
    run.add_argument("--executor", choices=["local", "processes", "slurm"], default="local",
                     help="local (default): this process, the model loaded once per model; processes: --workers "
                          "worker processes, one GPU each; slurm: a job array through submitit")
    run.add_argument("--dry_run", action="store_true", help="list the runs and whether each is finished; run nothing")
    run.add_argument("--workers", type=positive_int, default=2, help="processes: runs at once (default 2)")
    run.add_argument("--gpus", nargs="*", help="processes: device ids, one per worker in turn (default: "
                                               "CUDA_VISIBLE_DEVICES, else every CUDA device, else none)")
    slurm = run.add_argument_group("slurm (--executor slurm)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", type=positive_int, default=60, help="minutes per array task (default 60)")
    slurm.add_argument("--gpus_per_task", type=natural, default=1, help="0: a CPU job")
    slurm.add_argument("--cpus_per_task", type=positive_int, default=8)
    slurm.add_argument("--mem_gb", type=bounded(float, 0.001))
    slurm.add_argument("--array_parallelism", type=positive_int, default=64, help="array tasks running at once")
    slurm.add_argument("--per_task", choices=["run", "model"], default="run",
                       help="an array task per run (default) or per model (the model loaded once per task)")
    slurm.add_argument("--sbatch", nargs="+", default=[], metavar="KEY=VALUE", help="more sbatch options (qos=high)")
    slurm.add_argument("--wait", action="store_true", help="wait for the array and report failed tasks")
    slurm.add_argument("--slurm_cluster", choices=["slurm", "local", "debug"], default="slurm",
                       help="submitit's local or debug executor instead of Slurm (a check without a cluster)")
    return parser


def report_command(runs: list[Run], grid: Grid, args: argparse.Namespace) -> int:
    import report

    files = [str(r.folder / "results.json") for r in runs if (r.folder / "results.json").is_file()]
    if not files:
        print(f"error: no run of {grid.path} has a results.json under {grid.results_dir}", file=sys.stderr)
        return 1
    out = args.out or grid.results_dir / "report"
    return report.main([*files, "--out", str(out), "--baseline", args.baseline])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    Signals.install()
    try:
        if any("=" not in kv for kv in getattr(args, "sbatch", [])):
            raise UsageError(f"--sbatch {args.sbatch}: use KEY=VALUE, e.g. --sbatch qos=high")
        grid = apply_overrides(load_grid(args.grid), args)
        runs = select(expand(grid), args.labels)
        check_setting_names(runs, grid)
        if args.command == "report":
            return report_command(runs, grid, args)
        todo = pending(runs, grid.dense_eval == "first")
        say(f"{grid.path}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run -> "
            f"{grid.results_dir}")
        if args.dry_run or not todo:
            return 0
        if args.executor == "local":
            return execute_local(todo)
        if args.executor == "processes":
            return execute_processes(todo, args.workers, args.gpus)
        return execute_slurm(todo, grid, args)
    except (GridError, UsageError, SlurmError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return finish([], Signals.status())


if __name__ == "__main__":
    sys.exit(main())
