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
from lib.experiments.grid import expand, load_grid
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
    for name in ("load_with_store", "wikitext2_ids", *execute.READERS):
        if hasattr(main, name):
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
    (["--workers", "0"], "argument --workers: 0 must be a finite number >= 1"),
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
    # A top-level key may hold what main.py resolved a setting to; "<name>_setting" then holds the setting.
    write(path, {**GOOD, "bos": "always", "bos_setting": "auto"})
    assert why_unfinished(path, {**expected, "bos": "auto"}) is None
    assert "records bos=\"auto\", this run has bos=\"never\"" in why_unfinished(path, {**expected, "bos": "never"})
    write(path, '{"model": "m", "ppl_pru')
    assert "is not valid JSON" in why_unfinished(path, expected)
    write(path, json.dumps(GOOD).replace("12.5", "NaN"))
    assert "NaN is not JSON" in why_unfinished(path, expected)
    write(path, [GOOD])
    assert "holds list" in why_unfinished(path, expected)


def test_a_word_for_the_default_counts_as_the_null_it_records(tmp_path):
    """eval_limit = "all" over a protocol's limit runs every window and records null: that run is finished."""
    path = write(tmp_path / "grid.toml", 'protocol = "experiment"\nmodels = ["m"]\nseeds = [0]\n'
                 '[[block]]\nlabel = "all"\nsettings = { prune_method = "wanda", eval_limit = "all", seqlen = "auto" }\n')
    run = expand(load_grid(path))[0]
    assert "--eval_limit all" in " ".join(run.argv())
    expected = experiment.expected_settings(run)
    assert (expected["eval_limit"], expected["seqlen"], expected["nsamples"]) == (None, None, 16)
    write(tmp_path / "results.json", {**GOOD, "seqlen": 512})
    assert why_unfinished(tmp_path / "results.json", expected) is None
    write(tmp_path / "results.json", {**GOOD, "eval_limit": 32})
    assert "records eval_limit=32, this run has eval_limit=null" in why_unfinished(tmp_path / "results.json", expected)


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
    # Ten seeds (30 tiny runs, seconds of work), so the signal lands inside the batch even when a loaded machine
    # starves this test between the runner's first line and the signal (with 5 runs the batch could finish first).
    seeds = ["--seeds", *map(str, range(10))]
    total = 30
    proc = start_runner(grid_file, "--executor", executor, "--workers", "2", "--gpus", *seeds, token=token)
    for line in proc.stdout:  # the first run has started (processes: once a worker opened a run's log)
        if line.startswith("== (1/") or line.startswith(f"{total} runs on 2 workers"):
            break
    deadline = time.time() + 60
    while executor == "processes" and not list((tmp_path / "results").rglob("run.log")) and time.time() < deadline:
        time.sleep(0.05)
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
    assert len(done) < total
    if sig == signal.SIGINT:
        return
    rerun = start_runner(grid_file, "--executor", executor, "--gpus", *seeds, token=token)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{len(done)} finished, {total - len(done)} to run" in out
    assert len(results_of(tmp_path / "results")) == total


# ---------------------------------------------------------------- Slurm


def test_slurm_executor_through_submitits_debug_executor(grid_file, tmp_path, fresh_main, capsys):
    assert experiment.main(["run", str(grid_file), "--executor", "slurm", "--slurm_cluster", "debug", "--wait",
                            "--per_task", "model"]) == 0
    assert len(results_of(tmp_path / "results")) == 5
    assert "submitted 5 runs as 1 array tasks" in capsys.readouterr().out
    assert "wrote " in (tmp_path / "results/wanda_owl/seed1/run.log").read_text()


STUB = r"""#!{python}
# A stand-in for Slurm's {name}. sbatch keeps the job script, prints the job id and runs the array tasks here in the
# background, one after another, with the environment Slurm gives a task (STUB_HOLD: leaves them pending); srun runs
# its command with --output/--error; sacct reports the states kept in $STUB_SLURM/states.json.
import json, os, re, subprocess, sys
from pathlib import Path
root = Path(os.environ["STUB_SLURM"])
states_path = root / "states.json"
name = "{name}"


def states():
    return json.loads(states_path.read_text()) if states_path.exists() else {{}}


def save(new):
    tmp = root / "states.tmp"
    tmp.write_text(json.dumps(new))
    os.replace(tmp, states_path)


def run_job(job, tasks):
    for task in tasks:
        task_id = f"{{job}}_{{task}}" if task is not None else job
        save({{**states(), task_id: "RUNNING"}})
        env = {{**os.environ, "SLURM_JOB_ID": job if task is None else f"{{job}}{{task:03d}}", "SLURM_NTASKS": "1",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
               "SLURM_JOB_NODELIST": "node1",
               "SLURM_CPUS_PER_TASK": "1"}}
        if task is not None:
            env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task))
        code = subprocess.call(["bash", str(root / f"job{{job}}.sh")], env=env)
        save({{**states(), task_id: "COMPLETED" if code == 0 else "FAILED"}})


if name == "sbatch" and sys.argv[1] == "--stub-run":
    run_job(sys.argv[2], [None if t == "-" else int(t) for t in sys.argv[3:]])
elif name == "sbatch":
    script = Path(sys.argv[-1]).read_text()
    job = str(1000 + len(list(root.glob("job*.sh"))))
    (root / f"job{{job}}.sh").write_text(script)
    array = re.search(r"#SBATCH --array=0-(\d+)%(\d+)", script)
    tasks = [str(t) for t in range(int(array.group(1)) + 1)] if array else ["-"]
    save({{**states(), **{{(f"{{job}}_{{t}}" if t != "-" else job): "PENDING" for t in tasks}}}})
    if not os.environ.get("STUB_HOLD"):
        subprocess.Popen([sys.executable, __file__, "--stub-run", job, *tasks], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {{job}}")
elif name == "srun":
    args = sys.argv[1:]
    out = err = None
    while args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            value = args.pop(0)
            for key, env in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID"),
                             ("%t", "SLURM_PROCID")):
                value = value.replace(key, os.environ.get(env, "0"))
            out, err = (value, err) if flag == "--output" else (out, value)
    with open(out, "a") as o, open(err, "a") as e:
        sys.exit(subprocess.call(" ".join(args), shell=True, stdout=o, stderr=e))
elif name == "sacct":
    jobs = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
    print("JobID|State|NodeList")
    for task_id, state in states().items():
        if task_id.split("_")[0] in jobs:
            print(f"{{task_id}}|{{state}}|node1")
"""


def wait_for_stub_jobs(root: Path) -> dict:
    """The stub cluster's states once no task is pending or running."""
    deadline = time.time() + 300
    while time.time() < deadline:
        states = json.loads((root / "states.json").read_text()) if (root / "states.json").exists() else {}
        if states and not {"PENDING", "RUNNING"} & set(states.values()):
            return states
        time.sleep(0.2)
    raise TimeoutError(f"stub Slurm jobs still pending or running: {states}")


@pytest.fixture
def stub_slurm(tmp_path, monkeypatch):
    """sbatch, srun and sacct stubs first on PATH; the folder holding the job scripts and states."""
    root = tmp_path / "slurm"
    root.mkdir()
    for name in ("sbatch", "srun", "sacct", "scancel", "scontrol"):
        (root / name).write_text(STUB.format(python=sys.executable, name=name))
        (root / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{root}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_SLURM", str(root))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return root


def test_an_array_task_skips_what_it_finished_before_a_requeue_and_fails_on_a_failed_run(grid_file, fresh_main):
    # submitit requeues a preempted or timed-out task with the same arguments: the task resumes by the rule.
    from lib.experiments.slurm import RunGroup

    runs = expand(load_grid(grid_file))[:2]
    tasks = [{"argv": r.argv(), "folder": str(r.folder), "expected": experiment.expected_settings(r)} for r in runs]
    assert RunGroup()(tasks) == [0, 0]
    before = [(r.folder / "results.json").stat().st_mtime_ns for r in runs]
    assert RunGroup()(tasks) == [0, 0]  # the requeued task: nothing reruns
    assert [(r.folder / "results.json").stat().st_mtime_ns for r in runs] == before
    (runs[1].folder / "results.json").unlink()
    bad = {**tasks[1], "argv": tasks[1]["argv"] + ["--owl_m", "0"]}
    with pytest.raises(RuntimeError, match=f"1 of 2 runs failed or were stopped: {runs[1].folder}; see run.log"):
        RunGroup()([tasks[0], bad])  # the task fails in sacct, so the next submission includes it


def test_slurm_errors_are_one_line(grid_file, tmp_path, stub_slurm, monkeypatch, capsys):
    (stub_slurm / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1\n")
    assert experiment.main(["run", str(grid_file), "--executor", "slurm", "--partition", "gpux"]) == 2
    err = capsys.readouterr().err  # sbatch's own message passes through, then one line of ours
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "error: sbatch refused the job array: sbatch: error: invalid partition specified: gpux")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no srun
    assert experiment.main(["run", str(grid_file), "--executor", "slurm"]) == 2
    assert "no Slurm here (srun is not on PATH)" in capsys.readouterr().err


def test_slurm_job_array_environment_and_resubmission(grid_file, tmp_path, stub_slurm, monkeypatch, capsys):
    monkeypatch.setenv("WANDA_DATA_DIR", "/data/shared")
    flags = ["--labels", "wanda*", "--executor", "slurm", "--partition", "gpu", "--time", "240", "--gpus_per_task",
             "1", "--cpus_per_task", "4", "--array_parallelism", "2", "--sbatch", "qos=high"]
    assert experiment.main(["run", str(grid_file), *flags]) == 0
    assert "submitted 3 runs as 3 array tasks of job 1000" in capsys.readouterr().out
    script = (stub_slurm / "job1000.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --qos=high", "#SBATCH --signal=USR2@90",
                 f"export PYTHONPATH={REPO}", "export WANDA_DATA_DIR=/data/shared",
                 "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"):
        assert line in script, line
    assert set(wait_for_stub_jobs(stub_slurm).values()) == {"COMPLETED"}
    assert len(results_of(tmp_path / "results")) == 3
    assert "wrote " in (tmp_path / "results/wanda/seed1/run.log").read_text()  # each run's log in its folder

    # A failed or lost run is resubmitted alone by the same command; the finished ones are not.
    (tmp_path / "results/wanda/seed0/results.json").unlink()
    assert experiment.main(["run", str(grid_file), *flags]) == 0
    assert "#SBATCH --array" not in (stub_slurm / "job1001.sh").read_text()  # one task: a plain job
    wait_for_stub_jobs(stub_slurm)
    assert len(results_of(tmp_path / "results")) == 3

    # A run whose job is still queued is not submitted twice; once that job failed, it is.
    (tmp_path / "results/wanda/seed1/results.json").unlink()
    monkeypatch.setenv("STUB_HOLD", "1")
    assert experiment.main(["run", str(grid_file), *flags]) == 0
    capsys.readouterr()
    assert experiment.main(["run", str(grid_file), *flags]) == 0
    assert "queued wanda seed 1 (" in capsys.readouterr().out
    assert len(list(stub_slurm.glob("job*.sh"))) == 3
    (stub_slurm / "states.json").write_text(json.dumps({**json.loads((stub_slurm / "states.json").read_text()),
                                                        "1002": "FAILED"}))
    assert experiment.main(["run", str(grid_file), *flags]) == 0
    assert len(list(stub_slurm.glob("job*.sh"))) == 4


def test_every_grid_file_in_experiments_expands_and_shared_labels_agree():
    # A label means one configuration everywhere: the Gemma3 subset and the add-on grid share folders' names.
    import main

    flags = main.build_parser()._option_string_actions
    settings_of: dict[str, dict] = {}
    for path in sorted((REPO / "experiments").glob("*.toml")):
        runs = expand(load_grid(path))
        assert runs, path
        for run in runs:
            assert all(f"--{name}" in flags for name in run.settings), (path, run.label)
            if path.stem.startswith("addons"):
                assert settings_of.setdefault(run.label, run.settings) == run.settings, (path, run.label)


def test_a_worker_records_the_commit_it_started_with(monkeypatch):
    # An in-process worker keeps the code it imported; a commit made while it runs must not be recorded by its
    # later runs. git is read once per process (main.main calls git_commit at start-up).
    from lib import runinfo

    heads = iter(["aaaa\n", "", "bbbb\n", ""])  # rev-parse, then status --porcelain (clean), twice

    def fake_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout=next(heads))

    runinfo.git_commit.cache_clear()
    monkeypatch.setattr(runinfo.subprocess, "run", fake_run)
    try:
        assert runinfo.git_commit() == "aaaa"
        assert runinfo.git_commit() == "aaaa"  # HEAD moved to bbbb meanwhile: not read again
    finally:
        runinfo.git_commit.cache_clear()
