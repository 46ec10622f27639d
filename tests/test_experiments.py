# python -m pytest -q tests/test_experiments.py
"""The experiment runner (scripts/experiment.py, lib/experiments/): grid files, the resume rule, the local,
processes and Slurm executors end to end on a tiny model, failures, Ctrl-C and SIGTERM, resubmission."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import experiment  # scripts/
import main
from lib.experiments import execute
from lib.experiments.grid import GridError, expand, load_grid
from lib.experiments.resume import why_unfinished

REPO = Path(__file__).resolve().parent.parent

GRID = """protocol = "quick"
models = ["{model}"]
seeds = [0, 1]
results_dir = "{results}"
path = "{{label}}/seed{{seed}}"
dense_eval = "first"
settings = {{ nsamples = 4, seqlen = 32, eval_limit = 2, data_dir = "{data}" }}

[[block]]
label = "{{prune_method}}"
axes = {{ prune_method = ["wanda", "magnitude"] }}

[[block]]
label = "wanda_owl"
seeds = [1]
settings = {{ prune_method = "wanda", sparsity_ratio = 0.6, layer_ratios = "owl" }}
"""


@pytest.fixture
def grid_file(tmp_path, tiny_model_dir, data_dir):
    """A grid of 5 tiny-model runs: wanda and magnitude x seeds 0, 1, and wanda + OWL at 60% on seed 1."""
    path = tmp_path / "tiny.toml"
    path.write_text(GRID.format(model=tiny_model_dir("llama"), results=tmp_path / "results", data=data_dir))
    return path


@pytest.fixture
def fresh_main(monkeypatch):
    """main's readers as they are, restored after the test (the local executor memoises them in this process)."""
    for name in ("load_with_store", "load_wikitext2_rows", "load_calibration_texts", "load_tokenizer", "load_config",
                 "wikitext2_ids"):
        monkeypatch.setattr(main, name, getattr(main, name))
    execute.prepared_main.cache_clear()
    yield
    execute.prepared_main.cache_clear()


def results_of(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))}


# ---------------------------------------------------------------- grid files


def test_grid_expands_label_major_with_block_seeds(grid_file):
    runs = expand(load_grid(grid_file))
    assert [(r.label, r.seed) for r in runs] == [("wanda", 0), ("wanda", 1), ("magnitude", 0), ("magnitude", 1),
                                                 ("wanda_owl", 1)]
    owl = runs[-1]
    assert owl.folder == grid_file.parent / "results" / "wanda_owl" / "seed1"
    argv = owl.argv()
    assert argv[:4] == ["--model", owl.model, "--protocol", "quick"] and argv[-4:] == ["--seed", "1", "--save",
                                                                                        str(owl.folder)]
    assert "--layer_ratios" in argv and "--no_dense_eval" in argv  # dense_eval first: the runner gives it back


def test_addons_grid_is_the_results_md_grid():
    # RESULTS.md's 43 labels x 3 seeds, in the folders run_beyond_wanda.py wrote (results/beyond_wanda/<label>/seed<k>).
    runs = expand(load_grid(REPO / "experiments/addons.toml"))
    labels = list(dict.fromkeys(r.label for r in runs))
    assert len(labels) == 43 and len(runs) == 129
    by_label = {r.label: r for r in runs}
    assert by_label["u70_wanda_spiky_owl_dsnot"].settings == {
        "no_dense_eval": True, "sparsity_ratio": 0.7, "prune_method": "wanda_spiky", "layer_ratios": "owl",
        "refine": "dsnot"}
    assert by_label["nm24_ria_permute"].settings == {"no_dense_eval": True, "prune_method": "ria",
                                                     "sparsity_type": "2:4", "permute": True}
    assert by_label["u50_wanda"].folder == REPO / "results/beyond_wanda/u50_wanda/seed2"
    assert all(r.protocol == "experiment" for r in runs)


@pytest.mark.parametrize("text,key", [
    ("models = ['m']\nseeds = [0]\n[[block]]\naxes = { prune_method = ['wanda'] }", "protocol: is missing"),
    ("protocol = 'qiuck'\nmodels = ['m']\nseeds = [0]\n[[block]]", "protocol: 'qiuck' is not one of"),
    ("protocol = 'quick'\nmodels = 'm'\nseeds = [0]\n[[block]]", "models: must be a non-empty list of str"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0, '1']\n[[block]]", "seeds: must be a non-empty list of int"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [-1]\n[[block]]", "seeds: must be >= 0"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\nsetings = {}\n[[block]]", "setings: is not a grid key"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\nlabel = '{x}'\naxes = { y = ['a'] }",
     "block[0].label: names 'x', not an axis"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\naxes = { prune_method = [] }",
     "block[0].axes.prune_method: must be a list of distinct values"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\nsettings = { seed = 3 }",
     "block[0].settings.seed: is set by the runner"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\nsettings = { ratio = [0.5] }",
     "block[0].settings.ratio: must be a string, number or boolean"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\naxes = { x = { a = { sparsity_ratio = 0.5 }, "
     "b = { sparsity_ratio = 0.6 } } }\nlabel = 'same'", "gives two runs the label 'same'"),
    ("protocol = 'quick'\nmodels = ['m', 'n']\nseeds = [0]\npath = '{label}/seed{seed}'\n[[block]]\nlabel = 'a'",
     "path: '{label}/seed{seed}' would put runs of different models"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\npath = '{label}'\n[[block]]\nlabel = 'a'",
     "path: '{label}' must use {label} and {seed}"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\ndense_eval = 'once'\n[[block]]\nlabel = 'a'",
     "dense_eval: 'once' is not one of"),
    ("protocol = 'quick'\nmodels = ['m']\nseeds = [0]\n[[block]]\nlabel = 'a'\nsettings = { prune_methd = 'x' }",
     "setting 'prune_methd' (run a) is not a main.py setting"),
    ("protocol = 'quick'\nmodels = ['m'\n", "not valid TOML"),
    ("\xff", "not valid TOML"),
])
def test_a_damaged_grid_is_one_line_naming_file_and_key(tmp_path, capsys, text, key):
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1"))
    assert experiment.main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and key in err[0], err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flags,message", [
    (["--labels", "nosuch*"], "--labels 'nosuch*' matches no label of the grid: wanda magnitude wanda_owl"),
    (["--protocol", "fast"], "--protocol 'fast' is not one of"),
    (["--set", "nsamples"], "--set 'nsamples': use KEY=VALUE"),
    (["--sbatch", "qos"], "--sbatch ['qos']: use KEY=VALUE"),
    (["--workers", "0"], "argument --workers: 0 must be >= 1"),
    (["--executor", "mpi"], "argument --executor: invalid choice: 'mpi'"),
])
def test_bad_runner_flags_are_one_line(grid_file, capsys, flags, message):
    with pytest.raises(SystemExit) if "argument" in message else _nothing() as raised:
        status = experiment.main(["run", str(grid_file), *flags])
    status = raised.value.code if raised else status
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- the resume rule


def write(path: Path, results) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results if isinstance(results, str) else json.dumps(results))
    return path


GOOD = {"model": "m", "prune_method": "wanda", "sparsity_ratio": 0.5, "seed": 0, "nsamples": 16, "seqlen": 256,
        "eval_limit": None, "ppl_pruned": 12.5, "config": {"prune_method": "wanda", "layer_ratios": "owl",
                                                           "dsnot": {"dsnot_cycles": 50}}}


def test_resume_rule(tmp_path):
    path = tmp_path / "r" / "results.json"
    assert "does not exist" in why_unfinished(path, {})
    expected = {"model": "m", "prune_method": "wanda", "sparsity_ratio": 0.50, "seed": 0, "seqlen": None,
                "eval_limit": None, "layer_ratios": "owl", "dsnot_cycles": 50, "eval_batch_size": 8}
    write(path, GOOD)
    assert why_unfinished(path, expected) is None  # seqlen None = main.py's choice; eval_batch_size not recorded
    assert "records sparsity_ratio=0.5, this run has sparsity_ratio=0.6" in why_unfinished(
        path, {**expected, "sparsity_ratio": 0.6})
    assert "records dsnot_cycles=50" in why_unfinished(path, {**expected, "dsnot_cycles": 10})  # nested config
    assert "records eval_limit=null" in why_unfinished(path, {**expected, "eval_limit": 32})
    assert "records seed=0" in why_unfinished(path, {**expected, "seed": False})  # a boolean is not a number
    write(path, '{"model": "m", "ppl_pru')
    assert "is not valid JSON" in why_unfinished(path, expected)
    write(path, json.dumps(GOOD).replace("12.5", "NaN"))
    assert "NaN is not JSON" in why_unfinished(path, expected)
    write(path, [GOOD])
    assert "holds list" in why_unfinished(path, expected)


def test_a_null_perplexity_is_finished_only_when_main_recorded_an_overflow(tmp_path):
    # main.py writes an infinite perplexity as null and names it under "non_finite" (lib.checks.json_safe); a null
    # without that record is a damaged or foreign file, and the run is done again.
    path = tmp_path / "results.json"
    write(path, {**GOOD, "ppl_pruned": None, "non_finite": ["ppl_pruned"]})
    assert why_unfinished(path, {"seed": 0}) is None
    write(path, {**GOOD, "ppl_pruned": None})
    assert "'ppl_pruned' is null but not listed under 'non_finite'" in why_unfinished(path, {})
    write(path, {**GOOD, "ppl_pruned": None, "non_finite": ["ppl_dense"]})
    assert "not listed under 'non_finite'" in why_unfinished(path, {})
    write(path, {**GOOD, "ppl_pruned": "12.5"})
    assert "'ppl_pruned' is \"12.5\", not a number" in why_unfinished(path, {})
    write(path, {k: v for k, v in GOOD.items() if k != "ppl_pruned"})
    assert "no 'ppl_pruned'" in why_unfinished(path, {})


def test_finished_script_uses_the_same_rule(tmp_path):
    path = write(tmp_path / "results.json", {**GOOD, "ppl_pruned": None})
    done = subprocess.run([sys.executable, str(REPO / "scripts/finished.py"), str(path), "seed=0"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "not listed under 'non_finite'" in done.stdout
    write(path, GOOD)
    for args, code in ((["seed=0", "sparsity_ratio=0.50", "eval_limit=none", "layer_ratios=owl"], 0),
                       (["nsamples=128"], 1)):
        done = subprocess.run([sys.executable, str(REPO / "scripts/finished.py"), str(path), *args],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == code, done.stdout


# ---------------------------------------------------------------- executors end to end


def test_local_executor_runs_resumes_and_equals_main_alone(grid_file, tmp_path, fresh_main, monkeypatch):
    calls = []
    real_main, real_load = main.main, main.load_with_store
    monkeypatch.setattr(main, "main", lambda argv: calls.append(argv) or real_main(argv))
    assert experiment.main(["run", str(grid_file)]) == 0
    results = results_of(tmp_path / "results")
    assert sorted(results) == ["magnitude/seed0", "magnitude/seed1", "wanda/seed0", "wanda/seed1", "wanda_owl/seed1"]
    assert results["wanda/seed0"]["protocol"] == "quick" and results["wanda/seed0"]["nsamples"] == 4
    # dense_eval = "first": only the first run measured the dense perplexity
    assert [r["ppl_dense"] is not None for r in results.values()] == [False, False, True, False, False]
    assert len(calls) == 5
    # The dense weights were restored between runs: the last run equals the same command run alone.
    alone = tmp_path / "alone"
    owl_argv = calls[-1][:-1] + [str(alone)]
    monkeypatch.setattr(main, "load_with_store", real_load)  # a fresh load, as main.py alone does
    assert real_main(owl_argv) == 0
    single = json.loads((alone / "results.json").read_text())
    assert single["ppl_pruned"] == results["wanda_owl/seed1"]["ppl_pruned"]
    assert single["layer_sparsity"] == results["wanda_owl/seed1"]["layer_sparsity"]

    execute.prepared_main.cache_clear()
    assert experiment.main(["run", str(grid_file)]) == 0 and len(calls) == 5  # nothing reran
    (tmp_path / "results/magnitude/seed1/results.json").write_text('{"ppl_pruned": nul')  # a killed write
    assert experiment.main(["run", str(grid_file)]) == 0
    assert [c[c.index("--save") + 1] for c in calls[5:]] == [str(tmp_path / "results/magnitude/seed1")]


def test_a_failed_run_is_reported_the_batch_goes_on_and_a_rerun_retries_it(grid_file, tmp_path, fresh_main, capsys):
    text = grid_file.read_text().replace('layer_ratios = "owl"', 'layer_ratios = "owl", owl_m = 0')
    grid_file.write_text(text)
    assert experiment.main(["run", str(grid_file)]) == 1
    out, err = capsys.readouterr()
    assert "FAILED wanda_owl seed 1" in out and "error: owl_m 0.0 must be > 0" in err
    assert "1 runs failed: " + str(tmp_path / "results/wanda_owl/seed1") in err
    assert len(results_of(tmp_path / "results")) == 4
    grid_file.write_text(text.replace(", owl_m = 0", ""))
    assert experiment.main(["run", str(grid_file)]) == 0
    assert "wanda_owl/seed1" in results_of(tmp_path / "results")


def test_processes_executor_gives_the_local_results(grid_file, tmp_path, fresh_main, capsys):
    assert experiment.main(["run", str(grid_file), "--executor", "processes", "--workers", "2", "--gpus"]) == 0
    parallel = results_of(tmp_path / "results")
    assert len(parallel) == 5 and all((tmp_path / "results" / k / "run.log").is_file() for k in parallel)
    assert "wrote " in (tmp_path / "results/wanda/seed0/run.log").read_text()
    local = tmp_path / "local"
    assert experiment.main(["run", str(grid_file), "--results_dir", str(local)]) == 0
    for key, result in results_of(local).items():
        assert result["ppl_pruned"] == parallel[key]["ppl_pruned"], key
    capsys.readouterr()
    assert experiment.main(["run", str(grid_file), "--executor", "processes"]) == 0
    assert "5 finished, 0 to run" in capsys.readouterr().out


def start_runner(grid_file: Path, *flags: str, token: str):
    """scripts/experiment.py as a user starts it; the token in its environment finds its processes later."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNNER_TEST_TOKEN": token, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "scripts/experiment.py"), "run", str(grid_file), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def processes_with(token: str) -> list[int]:
    """Live processes whose environment holds the token (the runner and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"RUNNER_TEST_TOKEN={token}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("executor", ["local", "processes"])
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_the_batch_and_its_workers_and_a_rerun_resumes(grid_file, tmp_path, executor, sig,
                                                                              status):
    token = uuid.uuid4().hex
    proc = start_runner(grid_file, "--executor", executor, "--workers", "2", "--gpus", token=token)
    for line in proc.stdout:  # the first run has started
        if line.startswith("== (1/") or line.startswith("5 runs on 2 workers"):
            break
    time.sleep(1.0)
    if sig == signal.SIGINT and executor == "processes":
        for pid in processes_with(token):  # Ctrl-C: the terminal signals the whole foreground group
            os.kill(pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("batch stopped; rerun this command to resume")
    time.sleep(1.0)
    assert processes_with(token) == []  # no worker outlives the runner
    done = results_of(tmp_path / "results")
    assert len(done) < 5
    rerun = start_runner(grid_file, "--executor", executor, "--gpus", token=token)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{len(done)} finished, {5 - len(done)} to run" in out
    assert len(results_of(tmp_path / "results")) == 5
