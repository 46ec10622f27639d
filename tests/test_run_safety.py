"""What a real run on a tiny model does when a cluster stops it, the disk fills, an output points at an input,
the config disagrees with the weights, or a setting cannot mean what it says (issue 21). Real processes get real
signals; a full disk is safetensors' own error class raised at the write; everything else is real runs of
main.py and lora_ft on tiny in-process models.

Run: .venv/bin/python -m pytest -q tests/test_run_safety.py
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import main
from conftest import make_tiny_model, make_tokenizer
from lib.config import ConfigError, PruneConfig
from lib.runinfo import MARKER, remove_stale_temps, save_model_atomic, write_atomic_all

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--nsamples", "2", "--seqlen", "32", "--eval_limit", "2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_main(argv: list, capsys) -> tuple[int, list[str]]:
    """main.main in-process -> (exit status, the stderr lines that start with 'error')."""
    capsys.readouterr()
    code = main.main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]


def never_load(monkeypatch):
    """Make loading the model fail the test: the check must come before it."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(main, "load_with_store", load)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- signals -----------------------------------------------------------------------------------------------------

STALLED = """
import sys, time
sys.path.insert(0, {repo!r})
import main
import lib.runinfo
real = {target}
def stalled(*args, **kwargs):
    {before}
    print("READY", flush=True)
    time.sleep(60)
{patch} = stalled
sys.exit(main.main(sys.argv[1:]))
"""


def start_stalled(tmp_path: Path, argv: list, target: str, patch: str, before: str = "pass", **popen):
    script = tmp_path / "stalled.py"
    script.write_text(STALLED.format(repo=str(REPO), target=target, patch=patch, before=before))
    proc = subprocess.Popen([sys.executable, str(script), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV, **popen)
    for line in proc.stdout:
        if "READY" in line:
            return proc
    raise AssertionError(proc.stderr.read())


def test_sigterm_during_evaluation_is_one_line_exit_143_and_nothing_written(tiny_model_dir, data_dir, tmp_path):
    out, model_out = tmp_path / "out", tmp_path / "m"
    proc = start_stalled(tmp_path, ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                                    "--save", out, "--save_model", model_out], "main.eval_ppl", "main.eval_ppl")
    proc.send_signal(signal.SIGTERM)  # what Slurm sends on preemption and at the time limit
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM) during dense evaluation; nothing written"
    assert not out.exists() and not model_out.exists()


def test_ctrl_c_during_evaluation_is_one_line_exit_130_and_nothing_written(tiny_model_dir, data_dir, tmp_path):
    """A real SIGINT to a real process, during the dense evaluation of a tiny model."""
    out, model_out = tmp_path / "out", tmp_path / "m"
    proc = start_stalled(tmp_path, ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                                    "--save", out, "--save_model", model_out], "main.eval_ppl", "main.eval_ppl")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted during dense evaluation; nothing written"
    assert not out.exists() and not model_out.exists()


def test_sigterm_during_the_model_save_removes_its_temporary_folders(tiny_model_dir, data_dir, tmp_path):
    """The save is stopped after it wrote part of the model into its hidden temporary folder."""
    before = "(args[1] / 'model.safetensors').write_bytes(b'x' * 1000)"
    proc = start_stalled(tmp_path, ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                                    "--no_dense_eval", "--save_model", tmp_path / "m"],
                         "lib.offload.LayerStore.save_pretrained", "lib.offload.LayerStore.save_pretrained", before)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM) during save; nothing written"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m")) == []


def test_ctrl_c_reaches_a_background_run_whose_shell_ignored_sigint(tiny_model_dir, data_dir, tmp_path):
    """`cmd &` in a script starts cmd with SIGINT ignored; the run must still stop on it (LoRA training did not)."""
    proc = start_stalled(tmp_path, ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK],
                         "main.eval_ppl", "main.eval_ppl",
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted during dense evaluation; nothing written"


LORA_TRAINING = """
import sys, time
sys.path.insert(0, {repo!r})
from lib.cli import run_cli
from lora_ft import finetune_lm
def stalled(*args, **kwargs):
    print("READY", flush=True)
    time.sleep(60)
finetune_lm.train_lora = stalled
sys.exit(run_cli(lambda: finetune_lm.main(sys.argv[1:]), finetune_lm.PROGRESS))
"""


@pytest.mark.parametrize("signum,status,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_lora_training_stops_on_sigterm_and_ctrl_c(tiny_model_dir, data_dir, tmp_path, signum, status, word):
    script = tmp_path / "lora.py"
    script.write_text(LORA_TRAINING.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), "--model", str(tiny_model_dir("llama")), "--data_dir",
                             str(data_dir), "--output_dir", str(tmp_path / "adapter"), "--max_train_samples", "4",
                             "--block_size", "32", "--max_steps", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for line in proc.stdout:
        if "READY" in line:
            break
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == f"{word} during training; nothing written"
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("script", ["lora_ft/finetune_lm.py", "lora_ft/evaluate_ppl.py", "main.py"])
def test_a_signal_during_the_imports_is_one_line(script):
    proc = subprocess.Popen([sys.executable, str(REPO / script), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    time.sleep(0.5)  # the imports of torch and transformers take seconds
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted during startup; nothing written"]


def test_a_rerun_removes_what_a_killed_save_left_and_keeps_a_running_ones(tmp_path):
    host = socket.gethostname()
    killed = tmp_path / f".m.saving.{host}-{dead_pid()}.abc"
    running = tmp_path / f".m.old.{host}-{os.getppid()}.abc"  # a live process: maybe still writing
    elsewhere = tmp_path / f".m.saving.otherhost-{dead_pid()}.abc"  # another node of a shared file system
    for folder in (killed, running, elsewhere):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    save_model_atomic(lambda folder: (folder / "model.safetensors").write_text("new"), None, tmp_path / "m")
    assert not killed.exists() and running.exists() and elsewhere.exists()
    assert (tmp_path / "m" / "model.safetensors").read_text() == "new"


def test_a_killed_gguf_conversion_is_removed_by_the_next(tmp_path):
    target = tmp_path / "cache" / "model"
    target.parent.mkdir()
    left = target.parent / f".model.converting.{socket.gethostname()}-{dead_pid()}.x"
    left.mkdir()
    assert remove_stale_temps(target) == [left] and not left.exists()


def offload_leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith("wanda-offload-")]


def test_onloading_removes_its_temporary_folder_after_success_and_failure(tiny_model_dir, data_dir, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = tiny_model_dir("llama")
    code, err = run_main(["--model", model, "--data_dir", data_dir, *QUICK, "--offload", "disk"], capsys)
    assert code == 0, err
    assert offload_leftovers(tmp_path) == []
    monkeypatch.setattr(main, "eval_ppl", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main.main([str(a) for a in ["--model", model, "--data_dir", data_dir, *QUICK, "--offload", "disk"]]) == 130
    assert offload_leftovers(tmp_path) == []
    stale = tmp_path / f"wanda-offload-{socket.gethostname()}-{dead_pid()}.x"  # a SIGKILLed run's
    stale.mkdir()
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_main(["--model", model, "--data_dir", data_dir, *QUICK, "--offload", "disk"], capsys)[0] == 0
    assert offload_leftovers(tmp_path) == []


def test_a_checkpoint_removed_during_onloading_is_one_line_naming_it(tiny_model_dir, tmp_path):
    from lib.offload import load_layered

    folder = tiny_model_dir("llama")
    model, store = load_layered(folder, torch.float32, torch.device("cpu"), tmp_path / "offload")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"layer 0's weights '.*model.safetensors' can no longer be read"):
        store.onload(0)


# --- full disks ----------------------------------------------------------------------------------------------------

def full_disk(tensors, filename, metadata=None):
    """safetensors' save_file on a full disk: it writes part of the file, then raises its own SafetensorError
    (not an OSError), with this message."""
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"x" * 100)
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


def test_a_full_disk_during_the_model_save_is_one_line_and_leaves_nothing(tiny_model_dir, data_dir, tmp_path,
                                                                          monkeypatch, capsys):
    import transformers.modeling_utils

    model = tiny_model_dir("llama")
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    code, err = run_main(["--model", model, "--data_dir", data_dir, *QUICK, "--save",
                          tmp_path / "out", "--save_model", tmp_path / "m"], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"'{tmp_path / 'm'}'" in err[0] and "No space left on device" in err[0] and "GiB free" in err[0]
    assert not (tmp_path / "out" / "results.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m")) == []


def test_a_full_disk_while_offloading_a_pruned_layer_names_the_file(tiny_model_dir, tmp_path, monkeypatch):
    import safetensors.torch

    from lib import offload

    model, store = offload.load_layered(tiny_model_dir("llama"), torch.float32, torch.device("cpu"),
                                        tmp_path / "offload")
    store.onload(0)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(ConfigError, match=r"a pruned layer .* to '.*layer_0000.safetensors' \(No space left on "
                                          r"device: needs about 0.00 GiB"):
        store.offload(0, changed=True)


def test_free_space_is_checked_before_the_model_loads(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    import lib.runinfo

    never_load(monkeypatch)
    monkeypatch.setattr(lib.runinfo, "free_bytes", lambda path: 1000)
    code, err = run_main(["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                          "--save_model", tmp_path / "m", "--offload", "disk"], capsys)
    assert code == 2 and len(err) == 1
    assert "not enough disk space: --save_model" in err[0] and "--offload_dir" in err[0]
    assert "0.00 GiB free" in err[0]


def test_results_and_log_are_written_both_or_neither(tmp_path):
    (tmp_path / "log.txt").write_text("earlier")
    (tmp_path / "blocked").write_text("a file where a folder must go")
    with pytest.raises(OSError):
        write_atomic_all({tmp_path / "log.txt": "new", tmp_path / "blocked" / "results.json": "{}"})
    assert (tmp_path / "log.txt").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "log.txt"]


# --- outputs never eat inputs --------------------------------------------------------------------------------------

def test_save_model_never_replaces_what_it_did_not_write(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    never_load(monkeypatch)
    model = tiny_model_dir("llama")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text("{}")
    (notes / "NOTES.md").write_text("mine")
    for target, named in ((notes, "holds files this tool did not write"), (model, "is the --model folder"),
                          (tmp_path, "holds the --model folder"), (model / "sub", "lies inside the --model folder")):
        code, err = run_main(["--model", model, "--data_dir", data_dir, *QUICK, "--save_model", target], capsys)
        assert code == 2 and len(err) == 1 and named in err[0], err
    assert (notes / "NOTES.md").read_text() == "mine" and not (model / "sub").exists()
    (model / MARKER).write_text("{}")  # even a folder this tool wrote, when it is the model being read
    assert "is the --model folder" in run_main(["--model", model, "--data_dir", data_dir, *QUICK,
                                                "--save_model", model], capsys)[1][0]


def test_save_model_replaces_an_earlier_save_of_its_own(tiny_model_dir, data_dir, tmp_path, capsys):
    argv = ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK, "--no_dense_eval",
            "--save_model", tmp_path / "m"]
    assert run_main(argv, capsys)[0] == 0
    record = json.loads((tmp_path / "m" / MARKER).read_text())
    assert record["written_by"] == "main.py --save_model" and record["config"]["prune_method"] == "wanda"
    assert run_main(argv + ["--prune_method", "magnitude"], capsys)[0] == 0
    assert json.loads((tmp_path / "m" / MARKER).read_text())["config"]["prune_method"] == "magnitude"


def test_two_runs_of_different_settings_into_one_save_are_kept_apart(tiny_model_dir, data_dir, tmp_path, capsys):
    argv = ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK, "--no_dense_eval",
            "--save", tmp_path / "out"]
    assert run_main(argv, capsys)[0] == 0
    assert run_main(argv, capsys)[0] == 0  # the same run again replaces its own results
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["log_wanda.txt", "results.json"]
    assert run_main(argv + ["--prune_method", "magnitude"], capsys)[0] == 0
    kept = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("results.2")]
    assert len(kept) == 1 and json.loads(kept[0].read_text())["prune_method"] == "wanda"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["prune_method"] == "magnitude"


def test_lora_outputs_never_replace_the_model_they_read(tiny_model_dir, data_dir, tmp_path):
    from lora_ft import evaluate_ppl, finetune_lm
    from lora_ft.lora_utils import LoraSettings, attach_lora

    model = tiny_model_dir("llama")
    with pytest.raises(ConfigError, match="--output_dir .* lies inside the --model folder"):
        finetune_lm.main(["--model", str(model), "--data_dir", str(data_dir), "--output_dir", str(model / "lora")])
    adapter = tmp_path / "adapter"
    attach_lora(make_tiny_model("llama"), LoraSettings()).save_pretrained(adapter)
    with pytest.raises(ConfigError, match="--save_merged .* is the base model folder"):
        evaluate_ppl.main(["--model", str(model), "--lora_weights", str(adapter), "--data_dir", str(data_dir),
                           "--merge_masked", "--save_merged", str(model)])
    assert not (model / "lora").exists() and not (model / MARKER).exists()


def test_finetune_writes_its_adapter_whole_with_the_marker(tiny_model_dir, data_dir, tmp_path):
    from lora_ft import finetune_lm

    argv = ["--model", str(tiny_model_dir("llama")), "--data_dir", str(data_dir), "--output_dir",
            str(tmp_path / "adapter"), "--max_train_samples", "4", "--block_size", "32", "--max_steps", "1"]
    finetune_lm.main(argv)
    assert {MARKER, "adapter_config.json", "train_log.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    finetune_lm.main(argv)  # its own earlier adapter is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files this tool did not write"):
        finetune_lm.main(argv[:4] + ["--output_dir", str(tmp_path / "other")] + argv[6:])


# --- configs that disagree with their weights --------------------------------------------------------------------

def edited_model(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes,message", [
    ({"num_hidden_layers": 3}, "config.json says num_hidden_layers 3 but the weights hold 2 decoder layers"),
    ({"num_hidden_layers": 1}, "config.json says num_hidden_layers 1 but the weights hold 2 decoder layers"),
    ({"intermediate_size": 96}, "config.json's intermediate_size 96 give 'layers.0.mlp.gate_proj.weight' shape "
                                "[96, 64], the weights have [128, 64]"),
    ({"hidden_size": 32}, "config.json's hidden_size 32 give 'embed_tokens.weight' shape [128, 32], the weights "
                          "have [128, 64]"),
    ({"num_attention_heads": 8}, "config.json's head_dim 16, num_attention_heads 8 give "
                                 "'layers.0.self_attn.q_proj.weight' shape [128, 64], the weights have [64, 64]"),
])
def test_a_config_that_disagrees_with_its_weights_is_refused_before_loading(tiny_model_dir, data_dir, monkeypatch,
                                                                            capsys, changes, message):
    never_load(monkeypatch)
    model = edited_model(tiny_model_dir("llama"), **changes)
    code, err = run_main(["--model", model, "--data_dir", data_dir, *QUICK], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_missing_tensor_is_named(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from lib.models import check_weights_match

    folder = tiny_model_dir("llama")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    with pytest.raises(ConfigError, match=r"no tensor 'layers.1.mlp.up_proj.weight' \(and 0 more\)"):
        check_weights_match(skeleton, folder)


def test_an_all_zero_checkpoint_stops_with_one_line(tmp_path, data_dir, capsys):
    model = make_tiny_model("llama")
    for layer in model.model.layers:
        for p in layer.parameters():
            p.data.zero_()
    model.save_pretrained(tmp_path / "zero")
    make_tokenizer().save_pretrained(tmp_path / "zero")
    code, err = run_main(["--model", tmp_path / "zero", "--data_dir", data_dir, *QUICK, "--save", tmp_path / "o"],
                         capsys)
    assert code == 3 and len(err) == 1 and "every decoder linear weight of the model is zero" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_dense_perplexity_far_above_the_vocabulary_stops(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(main, "eval_ppl", lambda *a, **k: 1000.0)  # vocabulary 128: a uniform guess scores 128
    code, err = run_main(["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK], capsys)
    assert code == 3 and len(err) == 1
    assert "dense perplexity 1000.0 is more than 2x the vocabulary size 128" in err[0]


# --- settings mean what they say ---------------------------------------------------------------------------------

def test_neuronrank_statistics_do_not_depend_on_the_calibration_batch():
    """Tokens of one class with nearly the same large activation (layer 0: same token, same embedding): the
    within-class variance is ~1e-10 of x^2, which running sums of x and x^2 lose to float32 rounding differently
    for each batching. Oracle: the exact float64 computation on all tokens."""
    from lib.methods.neuronrank import InputClassMoments

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (8, 16), generator=gen)
    centres = 10 + torch.randn(4, 32, generator=gen)
    x = (centres[ids] + 1e-4 * torch.randn(8, 16, 32, generator=gen)).float()
    config = PruneConfig(prune_method="neuronrank_fisher", neuronrank_max_classes=4)
    found = []
    for batch in (1, 3, 8):
        collector = InputClassMoments(32, config, torch.arange(4))
        for start in range(0, 8, batch):
            collector.add_batch(x[start:start + batch], ids[start:start + batch])
        found.append(collector.finalize())
    rows, flat = x.double().reshape(-1, 32), ids.reshape(-1)
    within = sum((rows[flat == c] - rows[flat == c].mean(0)).pow(2).sum(0) for c in range(4)) / rows.shape[0]
    # What running float32 sums of x and x^2 give: the cancellation leaves mostly rounding.
    naive = sum(rows[flat == c].float().pow(2).sum(0) - rows[flat == c].float().sum(0).pow(2) / (flat == c).sum()
                for c in range(4)) / rows.shape[0]
    assert ((naive.double() - within).abs() / within).max() > 0.1
    for stats in found:
        torch.testing.assert_close(stats["nr_within"].double(), within, rtol=1e-2, atol=0)
        torch.testing.assert_close(stats["nr_var"].double(), rows.var(0, unbiased=False), rtol=1e-5, atol=0)
        torch.testing.assert_close(stats["nr_fisher"], found[0]["nr_fisher"], rtol=1e-3, atol=0)


def _methods():
    from lib.methods import METHODS
    return sorted(METHODS)


@pytest.mark.parametrize("method", _methods())
def test_every_method_prunes_the_same_weights_for_any_calibration_batch(method):
    """--calib_batch_size 1, 3 and automatic (all 8 sequences at once) give the same mask, end to end."""
    from lib.prune import prune_model

    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    masks = []
    for batch in (1, 3, 0):
        model = make_tiny_model("llama")
        prune_model(model, calib, PruneConfig(prune_method=method, nsamples=8, calib_batch_size=batch))
        masks.append([p == 0 for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2])
    for other in masks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(masks[0], other))


@pytest.mark.parametrize("method", _methods())
def test_every_statistic_is_bitwise_the_same_for_any_calibration_batch(method):
    """The collectors see one sequence at a time, so their float32 sums run in the same order for every
    --calib_batch_size: the statistics are equal bit for bit (SparseGPT's OBS updates amplify any last-bit
    difference into a different mask on real models)."""
    from lib.methods import METHODS
    from lib.prune import CalibrationHooks

    config = PruneConfig(prune_method=method, nsamples=8, neuronrank_max_classes=8)
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    x, ids = 3 + torch.randn(8, 32, 16, generator=gen), torch.randint(0, 12, (8, 32), generator=gen)
    context = METHODS[method].prepare(ids, config) if METHODS[method].prepare else {}
    found = []
    for batch in (1, 3, 8):
        with CalibrationHooks({"fc": linear}, METHODS[method].collectors, config, context) as hooks:
            for start in range(0, 8, batch):
                hooks.next_batch(ids[start:start + batch])
                linear(x[start:start + batch])
        found.append(hooks.finalize()["fc"])
    for stats in found[1:]:
        assert stats.keys() == found[0].keys()
        for name, value in stats.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(found[0][name])), name


def test_one_neuronrank_class_and_one_token_windows_are_refused():
    with pytest.raises(ConfigError, match="neuronrank_max_classes 1 must be 0 \\(no classes\\) or >= 2"):
        PruneConfig(prune_method="neuronrank", neuronrank_max_classes=1)
    from lib.config import RunConfig

    with pytest.raises(ConfigError, match="seqlen 1 must be at least 2 tokens"):
        RunConfig(seqlen=1)


def test_a_sparsity_that_misses_the_request_is_reported(tiny_model_dir, data_dir, tmp_path, capsys):
    code = main.main([str(a) for a in ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                                       "--no_dense_eval", "--sparsity_ratio", "0.99", "--use_variant", "--save",
                                       tmp_path / "out"]])
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == 0 and results["sparsity_ratio"] == 0.99
    miss = results["measured_sparsity"] - 0.99
    assert (f"misses the requested 0.99 by {miss:+.4f} (tolerance 0.005)" in out) == (abs(miss) > 0.005)


def test_an_unknown_zero_shot_task_is_refused_before_loading(tiny_model_dir, data_dir, monkeypatch, capsys):
    import lib.zeroshot

    never_load(monkeypatch)
    monkeypatch.setattr(lib.zeroshot, "hub_offline", lambda: False)  # as if the hub were reachable
    code, err = run_main(["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK, "--eval_zero_shot",
                          "--tasks", "piqa,nosuchtask"], capsys)
    assert code == 2 and len(err) == 1 and "zero-shot task 'nosuchtask' is not an lm-eval task" in err[0], err


def test_a_zero_shot_task_that_cannot_load_fails_the_run_after_saving(tiny_model_dir, data_dir, tmp_path, capsys):
    from _zs_helpers import write_local_task

    write_local_task(data_dir)
    write_local_task(data_dir, name="broken", with_data=False)
    code, err = run_main(["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK, "--no_dense_eval",
                          "--eval_zero_shot", "--tasks", "broken,tinyqa", "--zs_limit", "2", "--save",
                          tmp_path / "out"], capsys)
    assert code == 3 and len(err) == 1 and "1 task(s) not evaluated, first 'broken'" in err[0], err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "skipped" in results["zero_shot"]["broken"] and results["zero_shot"]["tinyqa"]["n"] == 2
