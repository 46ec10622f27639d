"""The experiment runner's executors side by side (a benchmark, not a test): a grid of 8 tiny-model runs with
--executor processes --workers 2 against --executor local, and the runner's per-run overhead over a bare main.py.

    OMP_NUM_THREADS=1 python bench/bench_executors.py [--repeats 3] [--workers 2]

Everything runs as a user runs it: fresh subprocesses of scripts/experiment.py and main.py, one thread each, on a
tiny Llama (tests/conftest.py, 4 layers) and fabricated WikiText-2/C4 files in a temporary folder, the quick
protocol with nsamples 8, seqlen 128, eval_limit 8. Each measurement starts from an empty results folder; the
minimum wall time over --repeats is printed, with every repeat.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]  # the test fixtures build the model and data

GRID = """protocol = "quick"
models = ["{model}"]
seeds = {seeds}
results_dir = "{results}"
path = "{{label}}/seed{{seed}}"
settings = {{ nsamples = 8, seqlen = 128, eval_limit = 8, no_dense_eval = true }}

[[block]]
axes = {{ prune_method = {methods} }}
"""


def prepare(root: Path) -> tuple[Path, Path]:
    """A tiny model folder and a data folder (the test suite's fixtures, built once)."""
    from conftest import make_tiny_model, make_tokenizer
    from test_fuzz import make_data

    model = root / "tiny-llama"
    make_tiny_model("llama", num_hidden_layers=4).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    make_data(root / "data")
    return model, root / "data"


def timed(command: list[str], env: dict) -> float:
    """Wall seconds of one command, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def grid_file(root: Path, name: str, model: Path, methods: list[str], seeds: list[int], results: Path) -> Path:
    path = root / f"{name}.toml"
    path.write_text(GRID.format(model=model, results=results, methods=methods, seeds=seeds))
    return path


def measure(label: str, repeats: int, make_command) -> float:
    """Min wall seconds over repeats of make_command(i) (a fresh results folder each time), printed."""
    times = [timed(*make_command(i)) for i in range(repeats)]
    print(f"{label:<52} {min(times):7.2f} s   (repeats: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = prepare(root)
        env["WANDA_DATA_DIR"] = str(data)
        runner = [sys.executable, str(ROOT / "scripts/experiment.py"), "run"]
        methods = ["wanda", "magnitude", "wanda_spiky", "ria"]  # x 2 seeds = 8 runs
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
              f"{platform.python_version()}; 8 runs ({', '.join(methods)} x seeds 0, 1), tiny Llama 4 layers, "
              "nsamples 8, seqlen 128, eval_limit 8")

        def grid_run(flags, n=methods, seeds=(0, 1)):
            return lambda i: ([*runner, str(grid_file(root, f"g{time.time_ns()}", model, n, list(seeds),
                                                      root / f"r{time.time_ns()}")), *flags], env)
        local = measure("8 runs, --executor local", args.repeats, grid_run([]))
        procs = measure(f"8 runs, --executor processes --workers {args.workers}", args.repeats,
                        grid_run(["--executor", "processes", "--workers", str(args.workers)]))
        print(f"processes / local wall-clock ratio: {procs / local:.2f}\n")

        bare = measure("1 run, bare python main.py", args.repeats, lambda i: (
            [sys.executable, str(ROOT / "main.py"), "--model", str(model), "--protocol", "quick", "--nsamples", "8",
             "--seqlen", "128", "--eval_limit", "8", "--no_dense_eval", "--prune_method", "wanda", "--seed", "0",
             "--save", str(root / f"bare{time.time_ns()}")], env))
        one = measure("1 run (same settings), scripts/experiment.py local", args.repeats, grid_run([], ["wanda"], [0]))
        print(f"runner overhead per run: {one - bare:+.2f} s ({one / bare:.2f} x a bare main.py run); "
              f"per run inside the 8-run local batch: {local / 8:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
