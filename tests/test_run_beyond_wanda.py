"""scripts/run_beyond_wanda.py: the batch runner loads once and restores the dense weights between runs.

    python -m pytest -q tests/test_run_beyond_wanda.py
"""
from __future__ import annotations

import json

import main


def test_batch_runner_restores_dense_weights_between_runs(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    # scripts/run_beyond_wanda.py loads once and restores the dense weights before each run: a run after two
    # others (one folding permutations into the MLP) must equal the same run in a fresh process state.
    import run_beyond_wanda

    model = tiny_model_dir("llama")
    common = ["--model", model, "--nsamples", 4, "--seqlen", 32, "--eval_limit", 2, "--data_dir", data_dir,
              "--no_dense_eval", "--seed", 1]
    runs = [["--prune_method", "ria", "--sparsity_type", "2:4", "--permute"],
            ["--prune_method", "wanda", "--sparsity_ratio", 0.7, "--layer_ratios", "owl", "--refine", "dsnot"],
            ["--prune_method", "wanda", "--sparsity_ratio", 0.5]]
    alone = tmp_path / "alone"
    assert main.main([str(a) for a in [*common, *runs[-1], "--save", alone]]) == 0
    monkeypatch.setattr(main, "load_with_store", run_beyond_wanda.load_once())
    for name in ("load_wikitext2_rows", "load_calibration_texts", "load_tokenizer", "load_config", "wikitext2_ids"):
        monkeypatch.setattr(main, name, getattr(main, name))  # undone after the test, like load_with_store
    run_beyond_wanda.cache_data()
    for i, extra in enumerate(runs):
        assert main.main([str(a) for a in [*common, *extra, "--save", tmp_path / f"batch{i}"]]) == 0
    batch, single = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "batch2", alone))
    assert batch["ppl_pruned"] == single["ppl_pruned"] and batch["layer_sparsity"] == single["layer_sparsity"]
