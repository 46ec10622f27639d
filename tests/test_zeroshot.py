"""Zero-shot through the real lm-eval 0.4 on a tiny in-process model and a task the test writes itself; no network."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

from _zs_helpers import TINY_ITEMS, byte_tokenizer, magnitude_prune_, tiny_llama, write_local_task
from lib.zeroshot import (DATA_TOKEN, DEFAULT_TASKS, _materialise_local_tasks, eval_zero_shot, format_zero_shot_table,
                          plan_tasks)

SHARED = Path(os.environ.get("WANDA_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub is off for every test here: a task without local data must be skipped, never fetched."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_llama(len(tokenizer))


def expected_acc(model, tokenizer, items: list[dict]) -> float:
    """Oracle: argmax over choices of sum log p(' ' + choice | 'Question: q\\nAnswer:'), as lm-eval scores acc."""
    correct = 0
    for item in items:
        context = tokenizer(f"Question: {item['question']}\nAnswer:")["input_ids"]
        scores = []
        for choice in item["choices"]:
            continuation = tokenizer(" " + choice)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = model(ids).logits.log_softmax(-1)[0, :-1]
            targets = ids[0, 1:]
            token_lp = logprobs.gather(1, targets[:, None])[:, 0]
            scores.append(token_lp[-len(continuation):].sum().item())
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return correct / len(items)


def test_local_task_runs_through_real_lm_eval(model, tokenizer, tmp_path):
    write_local_task(tmp_path)
    results = eval_zero_shot(model, tokenizer, ["tinyqa"], limit=None, batch_size=2, data_dir=tmp_path)
    row = results["tinyqa"]
    assert row["task"] == "tinyqa_local"
    assert row["n"] == len(TINY_ITEMS)
    assert row["acc"] == pytest.approx(expected_acc(model, tokenizer, TINY_ITEMS))
    assert row["acc_norm"] is not None and row["acc_stderr"] is not None
    table = format_zero_shot_table(results)
    assert "tinyqa_local" in table and f"{row['acc']:.4f}" in table


def test_pruned_model_is_the_one_evaluated_and_limit_caps_items(model, tokenizer, tmp_path):
    """The in-memory weights are what lm-eval scores: pruning in place changes the answer to match the oracle."""
    write_local_task(tmp_path)
    magnitude_prune_(model, 0.5)
    results = eval_zero_shot(model, tokenizer, ["tinyqa"], limit=3, batch_size=1, data_dir=tmp_path)
    assert results["tinyqa"]["n"] == 3
    assert results["tinyqa"]["acc"] == pytest.approx(expected_acc(model, tokenizer, TINY_ITEMS[:3]))


def test_task_without_local_data_or_hub_is_skipped_with_one_warning(model, tokenizer, tmp_path, caplog):
    write_local_task(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lib.zeroshot"):
        results = eval_zero_shot(model, tokenizer, ["hellaswag", "tinyqa"], limit=2, batch_size=2, data_dir=tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lib.zeroshot" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'hellaswag'" in warnings[0] and str(tmp_path) in warnings[0]
    assert "skipped" in results["hellaswag"]
    assert results["tinyqa"]["n"] == 2
    assert list(results) == ["hellaswag", "tinyqa"]
    assert "skipped" in format_zero_shot_table(results)


def test_a_plan_made_before_pruning_keeps_to_one_warning(model, tokenizer, tmp_path, caplog):
    # main.py plans (and warns) before the model loads, then hands the plan over: no second warning.
    write_local_task(tmp_path)
    plan = plan_tasks(["hellaswag", "tinyqa"], tmp_path)
    assert list(plan.skipped) == ["hellaswag"] and plan.local == {"tinyqa": "tinyqa_local"}
    with caplog.at_level(logging.WARNING, logger="lib.zeroshot"):
        results = eval_zero_shot(model, tokenizer, ["hellaswag", "tinyqa"], limit=2, batch_size=2, data_dir=tmp_path,
                                 plan=plan)
    assert not [r for r in caplog.records if r.name == "lib.zeroshot" and r.levelno == logging.WARNING]
    assert "skipped" in results["hellaswag"] and results["tinyqa"]["n"] == 2


def test_task_whose_data_fails_to_load_is_skipped_not_fatal(model, tokenizer, tmp_path, caplog):
    write_local_task(tmp_path)
    write_local_task(tmp_path, name="broken", with_data=False)
    with caplog.at_level(logging.WARNING, logger="lib.zeroshot"):
        results = eval_zero_shot(model, tokenizer, ["broken", "tinyqa"], limit=2, batch_size=2, data_dir=tmp_path)
    assert "skipped" in results["broken"] and "broken_local" in results["broken"]["skipped"]
    assert any("'broken'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert results["tinyqa"]["n"] == 2


def test_nothing_loadable_returns_only_skips(model, tokenizer):
    results = eval_zero_shot(model, tokenizer, ["hellaswag"], limit=2, batch_size=1, data_dir=None)
    assert set(results) == {"hellaswag"} and "skipped" in results["hellaswag"]


def test_standard_names_map_to_local_twins(tmp_path):
    write_local_task(tmp_path, name="boolq")
    write_local_task(tmp_path, name="rte")
    plan = plan_tasks(["boolq", "rte_local", "hellaswag", "boolq"], tmp_path)
    assert plan.local == {"boolq": "boolq_local", "rte": "rte_local"}
    assert list(plan.skipped) == ["hellaswag"] and plan.hub == []
    # The folder may also be given as the zeroshot/ folder itself.
    assert plan_tasks(["boolq"], tmp_path / "zeroshot").local == {"boolq": "boolq_local"}


def test_with_hub_unmapped_names_go_to_the_hub(tmp_path, monkeypatch):
    """No request is made here: planning only decides, and with the hub on the standard name is kept."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import lib.zeroshot
    monkeypatch.setattr(lib.zeroshot, "hub_offline", lambda: False)
    write_local_task(tmp_path, name="boolq")
    plan = plan_tasks(["boolq", "hellaswag"], tmp_path)
    assert plan.local == {"boolq": "boolq_local"} and plan.hub == ["hellaswag"] and not plan.skipped
    assert plan_tasks(["boolq"], None).hub == ["boolq"]


@pytest.mark.skipif(not (SHARED / "zeroshot" / "tasks").is_dir(), reason="shared zero-shot data not present")
def test_shared_folder_maps_six_default_tasks_and_rewrites_the_token(tmp_path):
    plan = plan_tasks(list(DEFAULT_TASKS), SHARED)
    assert set(plan.local) == set(DEFAULT_TASKS) - {"hellaswag"}
    assert list(plan.skipped) == ["hellaswag"]
    _materialise_local_tasks(plan.zeroshot_dir, tmp_path)
    for yaml in tmp_path.glob("*.yaml"):
        config = "".join(line for line in yaml.read_text().splitlines(True) if not line.lstrip().startswith("#"))
        assert DATA_TOKEN not in config
        data_files = re.findall(r":\s*(/\S+\.jsonl)", config)
        assert len(data_files) == 1 and Path(data_files[0]).is_file()
        assert Path(data_files[0]).parent.parent == plan.zeroshot_dir
    assert (tmp_path / "zeroshot_local_utils.py").is_file()


@pytest.mark.skipif(not (SHARED / "zeroshot" / "tasks").is_dir(), reason="shared zero-shot data not present")
def test_shared_winogrande_with_function_hooks_runs(model, tokenizer):
    results = eval_zero_shot(model, tokenizer, ["winogrande"], limit=2, batch_size=2, data_dir=SHARED)
    assert results["winogrande"]["n"] == 2 and results["winogrande"]["task"] == "winogrande_local"
