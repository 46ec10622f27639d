# python -m pytest -q tests/test_report.py
"""The comparison report's arithmetic on fabricated results.json files, and the experiment scripts' resume
behaviour with a fake main.py (no model, no data, no network)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import report  # scripts/ is on pytest's pythonpath (pyproject.toml)
import sweep_selectivity

REPO = Path(__file__).resolve().parent.parent

DEFAULT_CONFIG = {"prune_method": "wanda", "sparsity_ratio": 0.5, "sparsity_type": "unstructured", "nsamples": 32,
                  "seed": 0, "use_variant": False, "sel_tau_percentile": 0.6, "sel_top_quantile": 0.9,
                  "sel_idf_exp": 1.0, "sel_spiky_exp": 1.0}


def fabricate(root: Path, method: str, seed: int, ppl: float, *, ratio: float = 0.5, sparsity_type: str = "unstructured",
              split: str = "test", dense: float | None = None, total: float = 100.0, prune: float = 5.0,
              rss: float = 1000.0, config: dict | None = None, folder: str | None = None) -> Path:
    """Write one results.json as main.py would, under root/<folder or method>/seed<k>/."""
    path = root / f"{ratio}_{sparsity_type.replace(':', '-')}" / (folder or method) / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    cfg = {**DEFAULT_CONFIG, "prune_method": method, "sparsity_ratio": ratio, "sparsity_type": sparsity_type,
           "seed": seed, **(config or {})}
    path.write_text(json.dumps({
        "model": "tiny", "prune_method": method, "sparsity_type": sparsity_type, "sparsity_ratio": ratio,
        "measured_sparsity": ratio, "ppl_dense": dense, "ppl_pruned": ppl, "eval_split": split,
        "seconds": {"load": 1.0, "calibration_data": 1.0, "prune": prune, "eval_dense": None, "eval_pruned": 2.0,
                    "total": total},
        "peak_rss_mb": rss, "peak_cuda_mb": None, "seed": seed, "nsamples": 32, "seqlen": 128, "eval_limit": 4,
        "config": cfg, "versions": {"torch": "2.13.0", "transformers": "5.24.0"}, "git_commit": "abc123"}))
    return path


def test_mean_std_is_the_sample_std() -> None:
    assert report.mean_std([10.0, 12.0, 14.0]) == pytest.approx((12.0, 2.0))
    mean, std = report.mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)


def test_paired_change_uses_only_shared_seeds() -> None:
    # Seeds 0 and 1 are shared: +10 % and +20 %; seed 3 (method only) and 2 (baseline only) are ignored.
    mean, std, n = report.paired_change({0: 11.0, 1: 12.0, 3: 9.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert (mean, n) == (pytest.approx(15.0), 2)
    assert std == pytest.approx(math.sqrt(50.0))


def test_paired_change_is_not_the_change_of_means() -> None:
    # -50 % and +100 % average to +25 %; the change of the means, 100 * (22.5 / 15 - 1), would be +50 %.
    mean, _, n = report.paired_change({0: 5.0, 1: 40.0}, {0: 10.0, 1: 20.0})
    assert (mean, n) == (pytest.approx(25.0), 2)


def test_paired_t_test_gives_the_old_hand_written_p_values() -> None:
    # The p-values of the regularised incomplete beta this report computed before it used scipy.stats.ttest_rel
    # (commit 867b52b, scripts/report.py paired_t_test), for the same per-seed changes.
    old = {(-1.0, -2.0, -3.0): 0.07417990022744857, (1.0, 3.0): 0.29516723530086636,
           (-10.0, 0.0, -10.0): 0.1835034190722737, (0.5, -0.2, 1.7, 2.2, -0.4): 0.2136123911149537,
           (-12.3, -9.8, -11.1): 0.004228005683036401, (3.0, 3.1, 2.9, 3.05): 6.2737302480507985e-06,
           (100.0, -50.0): 0.7951672353008667}
    for changes, p in old.items():
        assert report.paired_t_test(list(changes)) == pytest.approx(p, rel=1e-9), changes


def test_paired_t_test_matches_the_closed_forms() -> None:
    # The t distribution's two-sided tail has closed forms for 1 degree of freedom (Cauchy), 1 - 2 atan|t| / pi,
    # and for 2, 1 - |t| / sqrt(t^2 + 2). Changes -1, -2, -3: mean -2, std 1, t = -2 sqrt(3) with 2 d.o.f.
    t = -2.0 * math.sqrt(3.0)
    assert report.paired_t_test([-1.0, -2.0, -3.0]) == pytest.approx(1.0 - abs(t) / math.sqrt(t * t + 2.0), rel=1e-12)
    # Two changes 1 and 3: mean 2, std sqrt(2), t = 2 / (sqrt(2) / sqrt(2)) = 2 with 1 d.o.f.
    assert report.paired_t_test([1.0, 3.0]) == pytest.approx(1.0 - 2.0 * math.atan(2.0) / math.pi, rel=1e-12)
    # Many degrees of freedom approach the normal: t = 1.96 with 10^5 d.o.f. gives p = 0.05 to 1e-4.
    n = 100001
    changes = [1.0 + (1 if i % 2 else -1) for i in range(n - 1)] + [1.0]
    mean, std = report.mean_std(changes)
    shifted = [c - mean + 1.96 * std / math.sqrt(n) for c in changes]  # t = 1.96 exactly
    assert report.paired_t_test(shifted) == pytest.approx(0.05, abs=1e-4)
    assert math.isnan(report.paired_t_test([5.0]))
    assert report.paired_t_test([2.0, 2.0]) == 0.0 and report.paired_t_test([0.0, 0.0, 0.0]) == 1.0


def test_significance_labels() -> None:
    assert report.significance(-3.0, 0.01) == "better (p=0.010)"
    assert report.significance(+3.0, 0.001) == "worse (p=0.001)"
    assert report.significance(-3.0, 0.2) == "n.s. (p=0.20)"
    assert report.significance(-30.0, 0.0002) == "better (p<0.001)"  # not "p=0.000"
    assert report.significance(-3.0, math.nan) == "untested (1 seed)"


@pytest.fixture
def fabricated(tmp_path: Path) -> Path:
    """A results tree: wanda and wanda_select over 3 seeds, a sweep point, a second ratio, 2:4, a validation run."""
    root = tmp_path / "results"
    for seed, (w, s) in enumerate([(10.0, 9.0), (12.0, 12.0), (14.0, 12.6)]):
        fabricate(root, "wanda", seed, w, dense=8.0 if seed == 0 else None, total=100.0 + 10 * seed,
                  prune=5.0 + seed, rss=[1000.0, 1200.0, 1100.0][seed])
        fabricate(root, "wanda_select", seed, s)
    fabricate(root, "wanda_select", 0, 11.0, config={"sel_tau_percentile": 0.7}, folder="wanda_select_tau0.7")
    for seed in (0, 1):
        fabricate(root, "wanda", seed, 30.0 + seed, ratio=0.6)
        fabricate(root, "wanda_select", seed, 27.0 + seed, ratio=0.6)
    fabricate(root, "wanda", 0, 20.0, ratio=0.5, sparsity_type="2:4")
    fabricate(root, "magnitude", 0, 2000.0, ratio=0.5, sparsity_type="2:4")
    fabricate(root, "wanda_select", 0, 9.5, split="validation", folder="wanda_select_val")
    return root


def test_report_rows_csv_markdown_and_plots(fabricated: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report.main([str(fabricated), "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8  # 3 + 2 + 2 + 1 groups: the sweep point and the validation run stay separate

    def row(method: str, ratio: str = "0.5", sparsity_type: str = "unstructured", setting: str = "",
            split: str = "test") -> dict:
        (match,) = [r for r in rows if (r["method"], r["sparsity_ratio"], r["sparsity_type"], r["setting"],
                                        r["eval_split"]) == (method, ratio, sparsity_type, setting, split)]
        return match

    wanda = row("wanda")
    assert float(wanda["ppl_mean"]) == pytest.approx(12.0) and float(wanda["ppl_std"]) == pytest.approx(2.0)
    assert float(wanda["change_vs_baseline_pct"]) == 0.0
    assert float(wanda["total_seconds"]) == pytest.approx(110.0) and float(wanda["prune_seconds"]) == pytest.approx(6.0)
    assert float(wanda["peak_rss_mb"]) == 1200.0 and wanda["peak_cuda_mb"] == ""
    assert float(wanda["ppl_dense"]) == 8.0 and float(wanda["measured_sparsity"]) == 0.5

    select = row("wanda_select")  # 9, 12, 12.6 against 10, 12, 14: -10 %, 0 %, -10 %
    assert float(select["ppl_mean"]) == pytest.approx(11.2)
    assert float(select["ppl_std"]) == pytest.approx(math.sqrt(3.72))
    assert float(select["change_vs_baseline_pct"]) == pytest.approx(-20.0 / 3)
    assert float(select["change_std_pct"]) == pytest.approx(math.sqrt(100.0 / 3))
    assert select["change_n"] == "3" and float(select["ppl_dense"]) == 8.0  # dense is shared by the protocol

    sweep_point = row("wanda_select", setting="sel_tau_percentile=0.7")
    assert (sweep_point["n_seeds"], sweep_point["change_n"]) == ("1", "1")
    assert float(sweep_point["change_vs_baseline_pct"]) == pytest.approx(10.0)

    assert float(row("wanda_select", ratio="0.6")["change_vs_baseline_pct"]) == pytest.approx(
        50.0 * (27.0 / 30.0 - 1) + 50.0 * (28.0 / 31.0 - 1))
    assert float(row("magnitude", sparsity_type="2:4")["change_vs_baseline_pct"]) == pytest.approx(9900.0)
    validation = row("wanda_select", split="validation")  # no wanda on validation: nothing to pair with
    assert validation["change_vs_baseline_pct"] == "" and validation["change_n"] == "0"

    markdown = (out / "report.md").read_text()
    assert "| 0.5 unstructured | wanda | default | 0,1,2 | 12.00 ± 2.00 | ref |  |" in markdown
    # -10, 0, -10 %: t = -2 with 2 d.o.f., p = 1 - 2 / sqrt(6) = 0.18; 0.6: -10 %, -9.68 % with 1 d.o.f.
    assert float(select["change_p"]) == pytest.approx(1.0 - 2.0 / math.sqrt(6.0))
    assert "| 11.20 ± 1.93 | -6.67 ± 5.77 (n=3) | n.s. (p=0.18) |" in markdown
    changes = [100.0 * (27.0 / 30.0 - 1), 100.0 * (28.0 / 31.0 - 1)]
    t = report.mean_std(changes)[0] / (report.mean_std(changes)[1] / math.sqrt(2.0))
    assert float(row("wanda_select", ratio="0.6")["change_p"]) == pytest.approx(1.0 - 2.0 * math.atan(abs(t)) / math.pi)
    assert f"| better (p={1.0 - 2.0 * math.atan(abs(t)) / math.pi:.3f}) |" in markdown
    assert "| +10.00 (n=1) | untested (1 seed) |" in markdown
    assert "| 0.5 unstructured | wanda_select | sel_tau_percentile=0.7 | 0 | 11.00 | +10.00 (n=1) |" in markdown
    assert "Dense perplexity: 8.00" in markdown and "torch 2.13.0" in markdown
    for name in ("ppl_by_method.png", "ppl_vs_sparsity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_ratio_writes_no_sparsity_plot_and_dedupes_paths(tmp_path: Path) -> None:
    root = tmp_path / "results"
    first = fabricate(root, "wanda", 0, 10.0)
    fabricate(root, "wanda", 1, 11.0)
    assert report.find_results([root, first]) == sorted({first.resolve(), (root / "0.5_unstructured/wanda/seed1/results.json").resolve()})
    out = tmp_path / "report"
    out.mkdir()
    (out / "ppl_vs_sparsity.png").write_bytes(b"stale")
    assert report.main([str(root), str(first), "--out", str(out)]) == 0
    assert (out / "ppl_by_method.png").exists() and not (out / "ppl_vs_sparsity.png").exists()
    assert "| 0,1 | 10.50 ± 0.71 | ref |" in (out / "report.md").read_text()


FAKE_MAIN = r'''#!{python}
# A stand-in for the interpreter: imitates `python main.py ...` (results.json into --save, argv into a log);
# any other script (report.py) runs under the real interpreter.
import json, os, sys
script, *args = sys.argv[1:]
if not script.endswith("main.py"):
    os.execv({python!r}, [{python!r}, script, *args])
with open(os.environ["FAKE_MAIN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
opts, i = {{}}, 0
while i < len(args):
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        opts[args[i][2:]], i = args[i + 1], i + 2
    else:
        opts[args[i][2:]], i = True, i + 1
method, seed, split = opts["prune_method"], int(opts["seed"]), opts.get("eval_split", "test")
if "%s/%d" % (method, seed) in os.environ.get("FAKE_FAIL", "").split():
    sys.exit("fake failure")
if os.environ.get("FAKE_SLEEP"):  # a long run that stops on SIGTERM as main.py does (exit 143)
    import signal, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(os.environ["FAKE_SLEEP"], "w") as pid:
        pid.write(str(os.getpid()))
    time.sleep(60)
tau = float(opts.get("sel_tau_percentile", 0.6))
best_tau = 0.7 if split == "validation" else 0.5  # the test set prefers another setting than validation
ppl = 20.0 + seed if method == "wanda" else 19.0 + seed + 10 * abs(tau - best_tau)
config = {{"prune_method": method, "seed": seed, "sel_tau_percentile": tau}}
result = {{"model": opts["model"], "prune_method": method, "sparsity_type": opts["sparsity_type"],
          "sparsity_ratio": float(opts["sparsity_ratio"]), "measured_sparsity": float(opts["sparsity_ratio"]),
          "ppl_dense": None if "no_dense_eval" in opts else 15.0, "ppl_pruned": ppl, "eval_split": split,
          "seconds": {{"prune": 1.0, "total": 2.0}}, "peak_rss_mb": 100.0, "peak_cuda_mb": None, "seed": seed,
          "nsamples": int(opts["nsamples"]), "seqlen": int(opts["seqlen"]), "eval_limit": int(opts["eval_limit"]),
          "config": config, "versions": {{}}, "git_commit": "fake"}}
with open(os.path.join(opts["save"], "results.json"), "w") as f:
    json.dump(result, f)
'''


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable that imitates main.py and logs every call to $FAKE_MAIN_LOG."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_MAIN.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_MAIN_LOG", str(tmp_path / "calls.log"))
    return fake


def calls(tmp_path: Path) -> list[list[str]]:
    """The argv of every fake main.py call so far."""
    log = tmp_path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_selectivity_script_is_a_thin_caller_of_the_runner(tmp_path, tiny_model_dir, data_dir):
    # scripts/run_selectivity_experiments.sh keeps its interface and layout; the runs are the runner's.
    results = tmp_path / "results"
    env = {**os.environ, "RESULTS_DIR": str(results), "NSAMPLES": "4", "SEQLEN": "32", "EVAL_LIMIT": "2",
           "METHODS": "wanda magnitude", "WANDA_DATA_DIR": str(data_dir), "PYTHON": sys.executable,
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    model = tiny_model_dir("llama")
    script = [str(REPO / "scripts/run_selectivity_experiments.sh"), str(model), "0.50", "2:4", "--seeds", "0", "1"]
    done = subprocess.run(script, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cell = results / model.name / "0.5_2-4"
    for method in ("wanda", "magnitude"):
        for seed in (0, 1):
            run = json.loads((cell / method / f"seed{seed}" / "results.json").read_text())
            assert (run["seed"], run["sparsity_type"], run["nsamples"], run["protocol"]) == (seed, "2:4", 4, "quick")
    assert "| 0.5 2:4 | magnitude |" in (cell / "report" / "report.md").read_text()
    done = subprocess.run(script + ["--no-report"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "4 finished, 0 to run" in done.stdout
    bad = subprocess.run(script[:1] + ["tiny", "0.5", "--sedes"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option '--sedes'" in bad.stderr


def test_build_grid_sizes() -> None:
    axes = sweep_selectivity.DEFAULT_AXES
    default = sweep_selectivity.DEFAULT_POINT
    assert len(sweep_selectivity.build_grid(axes, default, "full", None)) == 81
    one_at_a_time = sweep_selectivity.build_grid(axes, default, "axes", None)
    assert len(one_at_a_time) == 9 and one_at_a_time[0] == default
    capped = sweep_selectivity.build_grid(axes, default, "full", 4)
    assert len(capped) == 4 and capped[0] == default and len({json.dumps(p) for p in capped}) == 4


def test_selectivity_sweep_selects_on_validation_only(tmp_path: Path, fake_python: Path) -> None:
    results = tmp_path / "results"
    code = sweep_selectivity.main([
        "--model", "tiny", "--python", str(fake_python), "--results_dir", str(results), "--val_seeds", "0",
        "--test_seeds", "0", "1", "--tau_percentile", "0.5", "0.6", "0.7", "--top_quantile", "0.9",
        "--idf_exp", "1", "--spiky_exp", "1", "--nsamples", "4", "--seqlen", "16", "--eval_limit", "2"])
    assert code == 0
    runs = calls(tmp_path)
    split_of = [(argv[argv.index("--eval_split") + 1], argv[argv.index("--prune_method") + 1],
                 argv[argv.index("--sel_tau_percentile") + 1] if "--sel_tau_percentile" in argv else None)
                for argv in runs]
    assert sorted(s for s in split_of if s[0] == "validation") == sorted(
        [("validation", "wanda", None)] + [("validation", "wanda_select", t) for t in ("0.5", "0.6", "0.7")])
    # Validation prefers tau 0.7 (the test set would prefer 0.5): only 0.7 and wanda ever see the test split.
    assert sorted(s for s in split_of if s[0] == "test") == [("test", "wanda", None)] * 2 + [("test", "wanda_select", "0.7")] * 2
    summary = (results / "tiny" / "selectivity_sweep_0.5_unstructured" / "summary.md").read_text()
    assert "tau0.7_top0.9_idf1_spiky1 **selected**" in summary
    # test: 19 + seed + 2 against 20 + seed -> +5 % and +4.76 %
    assert f"{50 * (21 / 20 - 1) + 50 * (22 / 21 - 1):+.2f}" in summary
    assert sweep_selectivity.main([  # resumed: nothing reruns
        "--model", "tiny", "--python", str(fake_python), "--results_dir", str(results), "--test_seeds", "0", "1",
        "--tau_percentile", "0.5", "0.6", "0.7", "--top_quantile", "0.9", "--idf_exp", "1", "--spiky_exp", "1",
        "--nsamples", "4", "--seqlen", "16", "--eval_limit", "2"]) == 0
    assert len(calls(tmp_path)) == len(runs)


def test_sigterm_stops_the_sweep_and_its_main_py(tmp_path, fake_python):
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    env = {**os.environ, "FAKE_SLEEP": str(pid_file), "PYTHONPATH": str(REPO)}
    sweep = subprocess.Popen([sys.executable, str(REPO / "scripts/sweep_selectivity.py"), "--model", "tiny", "--python",
                              str(fake_python), "--results_dir", str(tmp_path / "results"), "--tau_percentile", "0.6",
                              "--top_quantile", "0.9", "--idf_exp", "1", "--spiky_exp", "1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    child = int(pid_file.read_text())
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, err
    assert "Traceback" not in err and "sweep stopped (rerun to resume)" in err
    with pytest.raises(ProcessLookupError):  # the child main.py was stopped too, not orphaned
        os.kill(child, 0)


def test_beyond_wanda_table_columns_pairs_and_best(tmp_path: Path) -> None:
    import beyond_wanda_table as table

    assert table.split_label("u70_wanda_spiky_owl_dsnot") == ("u70", "wanda_spiky + owl + dsnot")
    assert table.split_label("u50_wanda_dsnot_samesign") == ("u50", "wanda + dsnot (same sign)")
    assert table.split_label("nm24_sparsegpt") == ("nm24", "sparsegpt")
    assert table.split_label("u70_admm_gradual") == ("u70", "wanda + admm_gradual")  # reconstruct.toml's labels
    assert table.split_label("u70_wanda_ramp_admm") == ("u70", "wanda + depth ramp + admm")
    assert table.split_label("nm24_ria_permute_admm") == ("nm24", "ria + permute + admm")
    # wanda 10, 12, 14; wanda + owl 9, 11, 13 (-10, -8.3, -7.1 %, p < 0.05); ria 11, 10, 15 (mixed signs);
    # sparsegpt 10, 12, 14 + 1 and 2 seeds only, so its cell says n=2.
    for label, values in {"u50_wanda": (10.0, 12.0, 14.0), "u50_wanda_owl": (9.0, 11.0, 13.0),
                          "u50_ria": (11.0, 10.0, 15.0), "u50_wanda_spiky": (9.0, 12.0, 12.6),
                          "u50_sparsegpt": (11.0, 13.0)}.items():
        for seed, ppl in enumerate(values):
            path = tmp_path / label / f"seed{seed}" / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"ppl_pruned": ppl}))
    text = table.tables(table.load(tmp_path))
    changes = [-10.0, -100.0 / 12, -100.0 / 14]
    p = report.paired_t_test(changes)
    assert p < 0.05
    assert "| wanda | 12.00 ± 2.00 |" in text and "| wanda + owl | 11.00 ± 2.00 |" in text
    assert f"| wanda + owl | {sum(changes) / 3:+.1f} ± {report.mean_std(changes)[1]:.1f} % better (p={p:.3f}) |" in text
    assert "- 50%: **wanda + owl** 11.00; vs wanda: " in text
    assert "| 50% | ria | 11.0000 | 10.0000 | 15.0000 |" in text
    # wanda_spiky 9, 12, 12.6 against wanda 10, 12, 14: -10, 0, -10 %, t = -2 with 2 d.o.f., p = 0.18.
    assert "| wanda_spiky vs wanda | -6.7 ± 5.8 % n.s. (p=0.18) |" in text
    assert "| sparsegpt | 12.00 ± 1.41 (n=2) |" in text
    # vs sparsegpt, paired on seeds 0 and 1: wanda 10/11, 12/13 -> -9.1, -7.7 %.
    vs_sparsegpt = text.split("Paired change vs sparsegpt")[1].split("\n\n")[1]
    assert f"| wanda | {(-100 / 11 - 100 / 13) / 2:+.1f} ± " in vs_sparsegpt
    # Several folders (one model each): one perplexity table, a column per model and sparsity (README's headline).
    other = tmp_path.parent / "other_model"
    for seed, ppl in enumerate((20.0, 22.0, 24.0)):
        path = other / "nm24_wanda" / f"seed{seed}" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"ppl_pruned": ppl, "model": "gemma3-270m"}))
    both = table.combined([tmp_path, other])
    assert both.splitlines()[0] == f"| method | {tmp_path.name} 50% | gemma3-270m 2:4 |"
    assert "| wanda | 12.00 ± 2.00 | 22.00 ± 2.00 |" in both and "| sparsegpt | 12.00 ± 1.41 (n=2) |  |" in both


def test_a_wrong_or_missing_field_is_named_with_its_file_and_skipped(tmp_path, capsys):
    # The faults one bad file used to turn into a traceback for the whole report (issue 21): each is named with its
    # file and field; the good runs are reported; an overflow main.py recorded is a result (inf), not a fault.
    root = tmp_path / "results"
    good = [fabricate(root, "wanda", seed, 10.0 + seed) for seed in range(2)]
    base = json.loads(good[0].read_text())
    bad = {"null_ppl": {"ppl_pruned": None}, "no_model": {"model": None}, "seed_text": {"seed": "abc"},
           "ratio_null": {"sparsity_ratio": None}, "nan_text": "NaN"}
    for name, change in bad.items():
        path = root / "bad" / name / "results.json"
        path.parent.mkdir(parents=True)
        fields = {**base, **change} if isinstance(change, dict) else change
        text = json.dumps({k: v for k, v in fields.items() if not (name == "no_model" and k == "model")}) \
            if isinstance(fields, dict) else '{"ppl_pruned": NaN}'
        path.write_text(text)
    odd = {"config_list": {"config": ["a"]}, "seconds_text": {"seconds": "x"}, "phase_text": {"seconds": {"prune": "x"}}}
    for i, (name, change) in enumerate(odd.items()):
        path = root / "odd" / name / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**base, **change, "seed": 10 + i}))
    overflow = root / "overflow" / "results.json"
    overflow.parent.mkdir(parents=True)
    overflow.write_text(json.dumps({**base, "prune_method": "magnitude", "ppl_pruned": None,
                                    "non_finite": ["ppl_pruned"]}))
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    expected = {"null_ppl": "'ppl_pruned' is null but not listed under 'non_finite'", "no_model": "'model' is missing",
                "seed_text": "'seed' is \"abc\", not an integer", "ratio_null": "'sparsity_ratio' is null, not a number",
                "nan_text": "is not valid JSON"}
    for name, message in expected.items():
        line = next(l for l in err.splitlines() if f"/bad/{name}/results.json" in l)
        assert line.startswith("warning: skipping ") and message in line, line
    for name, message in (("config_list", "'config' is [\"a\"], not a table; left blank"),
                          ("seconds_text", "'seconds' is \"x\", not a table; left blank"),
                          ("phase_text", "'seconds.prune' is \"x\", not a number; left blank")):
        assert any(f"/odd/{name}/results.json: {message}" in l for l in err.splitlines()), name
    assert "Traceback" not in err
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 6 and sorted(runs["seed"]) == [0, 0, 1, 10, 11, 12]
    assert runs.loc[runs["method"] == "magnitude", "ppl_pruned"].item() == math.inf
    assert "| magnitude | default | 0 | inf (overflowed) |" in (out / "report.md").read_text()
    assert "untested (perplexity overflowed)" in (out / "report.md").read_text()


def test_runs_table_is_one_row_per_run_with_settings_metrics_and_timings(fabricated, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(fabricated), "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 14 and pd.read_parquet(out / "runs.parquet").shape == runs.shape
    row = runs[(runs["method"] == "wanda") & (runs["seed"] == 2) & (runs["sparsity_ratio"] == 0.5)
               & (runs["sparsity_type"] == "unstructured")].iloc[0]
    assert (row["ppl_pruned"], row["seconds_prune"], row["seconds_total"], row["peak_rss_mb"]) == (14.0, 7.0, 120.0,
                                                                                                  1100.0)
    assert (row["nsamples"], row["seqlen"], row["eval_limit"], row["eval_split"]) == (32, 128, 4, "test")
    assert runs.loc[runs["setting"] == "sel_tau_percentile=0.7", "method"].tolist() == ["wanda_select"]
