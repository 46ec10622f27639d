"""The add-ons together (lib/addons, lib/registry.py): every combination with the score methods end to end on
the tiny families, the refusals, and the command line.

    python -m pytest -q tests/test_addons.py
"""
from __future__ import annotations

import json

import pytest
import torch

import main
from lib import PruneConfig, prune_model
from lib.config import ConfigError
from lib.models import find_decoder_layers, find_linears
from lib.plugins import find_method
from lib.prune import needs_calibration
from test_permute import nm_in_order


COMBINATIONS = {
    "owl": dict(layer_ratios="owl"),
    "dsnot": dict(refine="dsnot", dsnot_skip="none"),
    "permute": dict(permute=True),
    "owl+dsnot": dict(layer_ratios="owl", refine="dsnot"),
    "permute+dsnot": dict(permute=True, refine="dsnot", dsnot_skip="none"),
    "admm": dict(reconstruct="admm"),
    "admm_gradual": dict(reconstruct="admm_gradual"),
    "depth_ramp": dict(layer_ratios="depth_ramp"),
    "permute+admm": dict(permute=True, reconstruct="admm"),
    "depth_ramp+dsnot+admm": dict(layer_ratios="depth_ramp", refine="dsnot", reconstruct="admm"),
    "owl+admm_gradual": dict(layer_ratios="owl", reconstruct="admm_gradual"),
}


def refusal(method: str, sparsity_type: str, addon: str) -> str | None:
    """The message fragment of the one-line error the combination must raise, or None when it is supported."""
    if "owl" in addon and sparsity_type != "unstructured":
        return "--layer_ratios owl gives each layer its own sparsity"
    if "depth_ramp" in addon and sparsity_type != "unstructured":
        return "--layer_ratios depth_ramp gives each layer its own sparsity"
    if "dsnot" in addon and method == "sparsegpt":
        return "--refine dsnot refines a score method's mask"
    if "permute" in addon and sparsity_type == "unstructured":
        return "--permute reorders input channels"
    if "permute" in addon and method == "sparsegpt":
        return "--permute needs a per-weight score"
    if "admm" in addon and method == "sparsegpt":  # the kinds check in lib.registry.KINDS' order: reconstruction last
        return "'sparsegpt' reconstructs the weights itself"
    return None


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["wanda", "wanda_spiky", "sparsegpt", "ria"])
@pytest.mark.parametrize("addon", sorted(COMBINATIONS))
def test_every_addon_combination(tiny_model, calib_ids, addon, method, sparsity_type, arch):
    config = PruneConfig(prune_method=method, sparsity_type=sparsity_type, nsamples=4, **COMBINATIONS[addon])
    model = tiny_model(arch)
    message = refusal(method, sparsity_type, addon)
    if message is not None:
        with pytest.raises(ConfigError, match=message.replace("-", "\\-")):
            prune_model(model, calib_ids, config)
        return
    report = prune_model(model, calib_ids, config)
    results = report.results()
    layers = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        for name, linear in find_linears(layer).items():
            key = f"layers.{i}.{name}"
            if config.prune_n:
                index = results.get("permutations", {}).get(key)
                assert nm_in_order(linear.weight, None if index is None else torch.tensor(index), 2, 4), key
    if "owl" in addon or "depth_ramp" in addon:
        assert sum(results["layer_ratios"]) / len(layers) == pytest.approx(0.5, abs=1e-12)
        for ratio, measured in zip(results["layer_ratios"], report.layer_sparsity):
            assert ratio - 1 / 64 <= measured <= ratio + 1e-9  # floor(ratio * width) per row or block; widths >= 64
    else:
        assert all(s == pytest.approx(0.5, abs=0.01) for s in report.layer_sparsity)
    if "dsnot" in addon:
        assert len(results["refine_swaps"]) == len(layers) and sum(results["refine_swaps"]) > 0
    if "admm" in addon:
        assert results["reconstructed_linears"] == sum(len(find_linears(layer)) for layer in layers)
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


def test_addons_refuse_neuron_granularity():
    for extra, message in ((dict(layer_ratios="owl"), "removes whole neurons"),
                           (dict(refine="dsnot"), "removes whole neurons")):
        with pytest.raises(ConfigError, match=message):
            find_method(PruneConfig(prune_method="wanda", nr_granularity="neuron", **extra))
    with pytest.raises(ConfigError, match="--owl_score method needs a per-weight score"):
        find_method(PruneConfig(prune_method="sparsegpt", layer_ratios="owl", owl_score="method"))


def test_cli_selectivity_owl_dsnot_is_one_command(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main.main([str(a) for a in (
        "--model", tiny_model_dir("llama"), "--prune_method", "wanda_spiky", "--layer_ratios", "owl", "--refine",
        "dsnot", "--sparsity_ratio", 0.6, "--nsamples", 4, "--seqlen", 32, "--eval_limit", 2, "--data_dir",
        data_dir, "--save", out, "--no_dense_eval")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["layer_ratios"]) == 2 and sum(results["layer_ratios"]) / 2 == pytest.approx(0.6)
    assert len(results["outlier_ratios"]) == 2 and len(results["refine_swaps"]) == 2
    assert results["config"]["layer_ratios"] == "owl" and results["config"]["refine"] == "dsnot"


def test_cli_records_permutations(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    assert main.main([str(a) for a in (
        "--model", tiny_model_dir("opt"), "--prune_method", "ria", "--sparsity_type", "2:4", "--permute",
        "--nsamples", 4, "--seqlen", 32, "--eval_limit", 2, "--data_dir", data_dir, "--save", out,
        "--no_dense_eval")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["folded_permutations"]) == ["layers.0.fc2", "layers.1.fc2"]
    assert "layers.1.self_attn.q_proj" in results["permutations"]
    assert sorted(results["permutations"]["layers.1.self_attn.q_proj"]) == list(range(64))


@pytest.mark.parametrize("extra,message", [
    (["--layer_ratios", "owl", "--sparsity_type", "2:4"], "--layer_ratios owl gives each layer its own sparsity"),
    (["--permute"], "--permute reorders input channels so N:M groups"),
    (["--prune_method", "sparsegpt", "--refine", "dsnot"], "'sparsegpt' reconstructs the weights"),
    (["--layer_ratios", "owk"], "unknown layer_ratios 'owk' (did you mean 'owl'?)"),
    (["--owl_m", "0"], "owl_m 0.0 must be > 0"),
])
def test_unsupported_combinations_are_one_line_errors(tmp_path, capsys, extra, message):
    # The checks run before anything is read: a missing model folder is never reached.
    assert main.main(["--model", str(tmp_path / "absent"), *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_depth_ramp_default_step_is_half_the_largest_and_needs_no_calibration(tiny_model, calib_ids):
    # 2 layers at 0.5: beta < min(2 * 0.5, 2 * 0.5) / 1 = 1, so the default is 0.5 and the ratios 0.25, 0.75.
    config = PruneConfig(prune_method="magnitude", layer_ratios="depth_ramp")
    assert not needs_calibration(find_method(config), config)
    report = prune_model(tiny_model("llama"), calib_ids, config)
    assert report.results() == {"layer_ratios": [0.25, 0.75], "ramp_beta": 0.5}
    assert report.layer_sparsity == pytest.approx([0.25, 0.75], abs=1 / 64)
