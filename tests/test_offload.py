"""Onloading (--offload cpu | disk): layers visit the execution device one at a time, and nothing changes:
the same masks, weights and perplexity as the model held in memory, and a saved model that reloads equal.

    python -m pytest -q tests/test_offload.py
"""
from __future__ import annotations

import json

import pytest
import torch

import main
from lib import PruneConfig, prune_model
from lib.eval import eval_ppl
from lib.models import find_decoder_layers
from lib.offload import load_with_store

METHODS = ["wanda", "sparsegpt", "wanda_spiky"]


def layer_weights(store) -> list[dict[str, torch.Tensor]]:
    """Every decoder layer's tensors, on CPU, read through the store (so layers on disk are read back)."""
    weights = []
    for index in range(len(store.layers)):
        layer = store.onload(index)
        weights.append({k: v.detach().clone().cpu() for k, v in layer.state_dict().items()})
        store.offload(index)
    return weights


@pytest.mark.parametrize("arch", ["llama", "opt", "gemma2"])
@pytest.mark.parametrize("mode", ["cpu", "disk"])
@pytest.mark.parametrize("method", METHODS)
def test_onloaded_pruning_equals_in_memory(tiny_model_dir, calib_ids, tmp_path, arch, mode, method):
    folder = tiny_model_dir(arch)
    config = PruneConfig(prune_method=method, nsamples=8, blocksize=32)
    ref, _, ref_store = load_with_store(str(folder), "llm_weights", "float32", None, "none", None)
    model, _, store = load_with_store(str(folder), "llm_weights", "float32", None, mode, str(tmp_path / "off"))
    assert store.mode == mode
    if mode == "disk":
        assert all(p.device.type == "meta" for p in find_decoder_layers(model).parameters())
    ref_report = prune_model(ref, calib_ids, config)
    report = prune_model(model, calib_ids, config, store=store)
    assert report.layer_sparsity == ref_report.layer_sparsity
    for ours, theirs in zip(layer_weights(store), layer_weights(ref_store)):
        for name in theirs:
            assert torch.equal(ours[name], theirs[name]), f"{mode} {method}: {name} differs"
    ids = torch.randint(0, 128, (1, 96), generator=torch.Generator().manual_seed(3))
    with store.streaming():
        ppl = eval_ppl(model, ids, 32)
    assert ppl == eval_ppl(ref, ids, 32)


def test_cli_offload_disk_saves_the_pruned_model(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir("llama")
    common = ["--model", str(folder), "--prune_method", "sparsegpt", "--sparsity_type", "2:4", "--nsamples", "4",
              "--seqlen", "32", "--eval_limit", "2", "--data_dir", str(data_dir)]
    assert main.main(common + ["--offload", "none", "--save", str(tmp_path / "a"), "--save_model",
                               str(tmp_path / "ma")]) == 0
    assert main.main(common + ["--offload", "disk", "--offload_dir", str(tmp_path / "layers"), "--save",
                               str(tmp_path / "b"), "--save_model", str(tmp_path / "mb")]) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    assert (a["ppl_dense"], a["ppl_pruned"], a["measured_sparsity"]) == \
           (b["ppl_dense"], b["ppl_pruned"], b["measured_sparsity"])
    dense_in_memory = AutoModelForCausalLM.from_pretrained(tmp_path / "ma").state_dict()
    from_disk = AutoModelForCausalLM.from_pretrained(tmp_path / "mb").state_dict()
    assert dense_in_memory.keys() == from_disk.keys()
    for name, tensor in dense_in_memory.items():
        assert torch.equal(tensor, from_disk[name]), name


def test_auto_offload_picks_by_size_on_the_cpu(monkeypatch):
    import lib.offload

    monkeypatch.setattr(lib.offload, "available_ram_bytes", lambda: 10 * 2**30)
    cpu = torch.device("cpu")
    assert lib.offload.choose_mode("auto", 2 * 2**30, cpu) == "none"
    assert lib.offload.choose_mode("auto", 9 * 2**30, cpu) == "disk"
    assert lib.offload.choose_mode("cpu", 9 * 2**30, cpu) == "cpu"


@pytest.mark.parametrize("extra", [{"layer_ratios": "owl"}, {"refine": "dsnot"},
                                   {"sparsity_type": "2:4", "permute": True}], ids=["owl", "dsnot", "permute"])
def test_add_ons_onloaded_from_disk_equal_in_memory(tiny_model_dir, calib_ids, tmp_path, extra):
    folder = tiny_model_dir("llama")
    config = PruneConfig(prune_method="wanda", nsamples=8, **extra)
    ref, _, ref_store = load_with_store(str(folder), "llm_weights", "float32", None, "none", None)
    model, _, store = load_with_store(str(folder), "llm_weights", "float32", None, "disk", str(tmp_path / "off"))
    assert prune_model(model, calib_ids, config, store=store).layer_sparsity == \
        prune_model(ref, calib_ids, config).layer_sparsity
    for ours, theirs in zip(layer_weights(store), layer_weights(ref_store)):
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


@pytest.mark.parametrize("mode", ["cpu", "disk"])
@pytest.mark.parametrize("extra", [{"reconstruct": "admm"}, {"reconstruct": "admm_gradual", "prune_method": "ria"},
                                   {"sparsity_type": "2:4", "permute": True, "reconstruct": "admm"},
                                   {"layer_ratios": "depth_ramp", "reconstruct": "admm", "sparsity_ratio": 0.7}],
                         ids=["admm", "admm_gradual", "permute+admm", "depth_ramp+admm"])
def test_reconstruction_onloaded_equals_in_memory(tiny_model_dir, calib_ids, tmp_path, extra, mode):
    folder = tiny_model_dir("llama")
    config = PruneConfig(**{"prune_method": "wanda", "nsamples": 8, **extra})
    ref, _, ref_store = load_with_store(str(folder), "llm_weights", "float32", None, "none", None)
    model, _, store = load_with_store(str(folder), "llm_weights", "float32", None, mode, str(tmp_path / "off"))
    report, ref_report = prune_model(model, calib_ids, config, store=store), prune_model(ref, calib_ids, config)
    assert report.layer_sparsity == ref_report.layer_sparsity and report.results() == ref_report.results()
    assert report.results()["reconstructed_linears"] == 14  # 7 linears x 2 layers
    for ours, theirs in zip(layer_weights(store), layer_weights(ref_store)):
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
