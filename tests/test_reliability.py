"""What a run leaves behind when things go wrong after the checks: non-finite weights, losses and perplexities,
failed or interrupted saves, Ctrl-C (a real SIGINT to a real process on a tiny model), and batch scripts that
must neither skip a damaged results.json nor carry on after Ctrl-C.

Run: .venv/bin/python -m pytest -q tests/test_reliability.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import main
from conftest import make_tiny_model, make_tokenizer
from lib.checks import NonFiniteError, check_finite_stats, json_safe
from lib.config import ConfigError
from lib.runinfo import MARKER, save_model_atomic

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--nsamples", "2", "--seqlen", "32", "--eval_limit", "2"]


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{constant} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_nan_weight_row_stops_the_run_naming_layer_and_linear(data_dir, tmp_path, capsys, method):
    model = make_tiny_model("llama")
    model.model.layers[1].self_attn.v_proj.weight.data[5] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    make_tokenizer().save_pretrained(tmp_path / "nan")
    code = main.main([str(a) for a in ["--model", tmp_path / "nan", "--data_dir", data_dir, "--prune_method", method,
                                       *QUICK, "--save", tmp_path / "out"]])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 3 and len(err) == 1  # the model's numbers failed, not the flags
    assert "layer 1 linear 'self_attn.v_proj'" in err[0] and "row 5" in err[0]
    assert not (tmp_path / "out").exists()


def test_non_finite_statistics_name_layer_and_linear():
    with pytest.raises(NonFiniteError, match=r"layer 3 linear 'mlp.down_proj': statistic 'scaler_row'"):
        check_finite_stats(3, "mlp.down_proj", {"scaler_row": torch.tensor([1.0, float("inf")]), "n": 4})
    check_finite_stats(0, "q", {"scaler_row": torch.ones(3), "counts": torch.ones(3, dtype=torch.long)})


def test_results_json_is_strict_and_names_what_was_not_finite(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """A destroyed model's perplexity can overflow to inf: recorded as null, listed under non_finite."""
    real = main.eval_ppl
    calls = []

    def overflowing(*args, **kwargs):
        calls.append(1)
        return float("inf") if len(calls) == 2 else real(*args, **kwargs)

    monkeypatch.setattr(main, "eval_ppl", overflowing)
    assert main.main([str(a) for a in ["--model", tiny_model_dir("llama"), "--data_dir", data_dir, *QUICK,
                                       "--save", tmp_path / "out"]]) == 0
    results = strict_json(tmp_path / "out" / "results.json")
    assert results["ppl_pruned"] is None and results["ppl_dense"] > 1
    assert results["non_finite"] == ["ppl_pruned", "eval_datasets.wikitext2.ppl_pruned"]  # every copy is named
    assert json_safe({"a": [1.0, float("nan")], "b": {"c": float("-inf")}}) == ({"a": [1.0, None], "b": {"c": None}},
                                                                                 ["a[1]", "b.c"])
    assert (tmp_path / "out" / "results.json").stat().st_mode & 0o044 == 0o044  # readable by others, not 0600


class FakeModel:
    def __init__(self, name: str, fail: BaseException | None = None):
        self.name, self.fail = name, fail

    def save_pretrained(self, folder):
        (Path(folder) / "model.safetensors").write_text(self.name)
        if self.fail:
            raise self.fail


class FakeTokenizer:
    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_model_save_keeps_the_earlier_model_and_leaves_no_half_folder(tmp_path, failure):
    target = tmp_path / "model"
    save_model_atomic(FakeModel("first").save_pretrained, FakeTokenizer(), target)
    (target / "results.json").write_text("{}")  # an earlier run's results beside its model
    with pytest.raises(type(failure) if isinstance(failure, KeyboardInterrupt) else ConfigError):
        save_model_atomic(FakeModel("second", fail=failure).save_pretrained, FakeTokenizer(), target)
    assert (target / "model.safetensors").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no hidden temporary folders left
    save_model_atomic(FakeModel("third").save_pretrained, FakeTokenizer(), target)
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "model.safetensors", "tokenizer.json"]  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_report_names_an_unreadable_results_json_and_reports_the_rest(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import report

    good = {"model": "m", "prune_method": "wanda", "sparsity_type": "unstructured", "sparsity_ratio": 0.5,
            "seed": 0, "ppl_pruned": 10.0, "ppl_dense": 5.0, "config": {}}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(good))
    for name, text in (("b", '{"prune_method": "wan'), ("c", ""), ("d", "{}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    runs = report.load_runs(report.find_results([tmp_path]))
    err = capsys.readouterr().err
    assert [r["prune_method"] for r in runs] == ["wanda"]
    for name in "bcd":
        assert str(tmp_path / name / "results.json") in err


def test_a_non_finite_training_loss_stops_lora_before_saving(tmp_path):
    from lora_ft.lora_utils import LoraSettings, TrainSettings, attach_lora, train_lora

    model = attach_lora(make_tiny_model("llama"), LoraSettings())
    blocks = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.fill_(float("nan"))
            break
    with pytest.raises(NonFiniteError, match=r"training loss is nan at step 1/2; lower --learning_rate"):
        train_lora(model, blocks, TrainSettings(learning_rate=1e-3, max_steps=2, logging_steps=0))
