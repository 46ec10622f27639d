"""The ADMM add-ons through the driver (lib/addons/admm.py): --reconstruct admm is lib.reconstruct.admm_update of
the dense weights with the final mask (oracle: the function, itself checked against exact least squares in
tests/test_reconstruct.py), also where --permute folds its order into the MLP; --reconstruct admm_gradual's masks
are exact per row and per N:M group at each layer's sparsity; refusals are one line; results.json records them.

    python -m pytest -q tests/test_admm.py
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

import main
from lib import PruneConfig, prune_model
from lib.addons.permute import foldable_mlp
from lib.collectors import InputHessian
from lib.config import ConfigError
from lib.models import find_decoder_layers, find_linears
from lib.plugins import METHODS, find_method
from lib.prune import calibrate, capture_layer_inputs
from lib.reconstruct import admm_system_from_stats, admm_update
from test_permute import nm_in_order


def first_layer_hessians(dense, calib_ids: torch.Tensor, config: PruneConfig) -> dict[str, dict]:
    """{linear: {'hessian': H}} of the dense model's first decoder layer (whose inputs pruning does not change)."""
    layers = find_decoder_layers(dense)
    with torch.no_grad():
        inps, kwargs = capture_layer_inputs(dense, layers, calib_ids)
        return calibrate(layers[0], find_linears(layers[0]), inps, kwargs[0], calib_ids, (InputHessian,), config, {},
                         calib_ids.shape[0])


def unfolded(weights: dict[str, torch.Tensor], linears: dict, index: list[int] | None) -> dict[str, torch.Tensor]:
    """The first layer's weights in the order calibration saw: a folded permutation's rows / columns put back."""
    if index is None:
        return weights
    ups, down = foldable_mlp(linears)
    inverse = torch.argsort(torch.tensor(index))
    return {name: W[inverse] if name in ups else W[:, inverse] if name == down else W for name, W in weights.items()}


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("extra", [dict(prune_method="wanda"), dict(prune_method="wanda_spiky", sparsity_ratio=0.6),
                                   dict(prune_method="ria", sparsity_type="2:4", permute=True)],
                         ids=["wanda", "wanda_spiky", "ria+permute"])
def test_admm_addon_is_admm_update_of_the_dense_weights(tiny_model, calib_ids, arch, extra):
    config = PruneConfig(nsamples=calib_ids.shape[0], reconstruct="admm", admm_iterations=10, **extra)
    dense = tiny_model(arch)
    model = copy.deepcopy(dense)
    results = prune_model(model, calib_ids, config).results()
    stats = first_layer_hessians(dense, calib_ids, config)
    linears = find_linears(find_decoder_layers(model)[0])
    folded = [index for key, index in results.get("folded_permutations", {}).items() if key.startswith("layers.0.")]
    pruned = unfolded({name: lin.weight.data for name, lin in linears.items()}, linears, (folded or [None])[0])
    for name, W0 in ((n, lin.weight.data) for n, lin in find_linears(find_decoder_layers(dense)[0]).items()):
        mask = pruned[name] == 0
        expected = admm_update(W0, mask, admm_system_from_stats(stats[name], 0.1, 1.0), 10)
        torch.testing.assert_close(pruned[name], expected, msg=name)
        assert not torch.equal(expected, W0 * ~mask), f"{name}: ADMM left the masked weights as they were"
    if config.prune_n:
        assert folded, "the MLP's permutation should fold"
        for i, layer in enumerate(find_decoder_layers(model)):
            for name, linear in find_linears(layer).items():
                index = results["permutations"].get(f"layers.{i}.{name}")
                assert nm_in_order(linear.weight, None if index is None else torch.tensor(index), 2, 4), name


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("extra", [dict(sparsity_ratio=0.6), dict(sparsity_type="2:4"),
                                   dict(sparsity_ratio=0.7, layer_ratios="depth_ramp", ramp_beta=0.2)],
                         ids=["60%", "2:4", "depth_ramp"])
def test_gradual_masks_are_exact_at_each_layers_sparsity(tiny_model, calib_ids, arch, extra):
    config = PruneConfig(prune_method="wanda_spiky", nsamples=8, reconstruct="admm_gradual", **extra)
    model = tiny_model(arch)
    report = prune_model(model, calib_ids, config)
    ratios = report.results().get("layer_ratios") or [config.sparsity_ratio] * 2
    assert ratios == pytest.approx([0.6, 0.8] if config.layer_ratios == "depth_ramp" else [config.sparsity_ratio] * 2)
    for ratio, layer in zip(ratios, find_decoder_layers(model)):
        for name, linear in find_linears(layer).items():
            zeros = linear.weight == 0
            if config.prune_n:
                assert nm_in_order(linear.weight, None, 2, 4) and int(zeros.sum()) * 2 == zeros.numel(), name
            else:
                assert (zeros.sum(dim=1) == int(ratio * linear.in_features)).all(), name
    assert report.results()["reconstructed_linears"] == 2 * len(find_linears(find_decoder_layers(model)[0]))


@pytest.mark.parametrize("extra,message", [
    (dict(prune_method="sparsegpt", reconstruct="admm"), "'sparsegpt' reconstructs the weights itself"),
    (dict(prune_method="ablate_wanda_seq", reconstruct="admm_gradual"), "'ablate_wanda_seq' reconstructs"),
    (dict(prune_method="wanda", nr_granularity="neuron", reconstruct="admm"), "removes whole neurons"),
    (dict(prune_method="wanda", use_variant=True, reconstruct="admm_gradual"), "so --use_variant cannot change it"),
    (dict(prune_method="wanda", refine="dsnot", reconstruct="admm_gradual"), "so --refine dsnot cannot change it"),
    (dict(prune_method="ria", sparsity_type="2:4", permute=True, reconstruct="admm_gradual"),
     "so --permute cannot change it"),
])
def test_refused_combinations(extra, message):
    with pytest.raises(ConfigError, match=message):
        find_method(PruneConfig(**extra))


def test_prune_steps_above_iterations_only_matter_for_the_gradual_mode():
    PruneConfig(reconstruct="admm", admm_iterations=10)  # admm_prune_steps (15) is the gradual mode's
    with pytest.raises(ConfigError, match="admm_prune_steps 15 must be at most admm_iterations 10"):
        PruneConfig(reconstruct="admm_gradual", admm_iterations=10)


def test_cli_records_the_reconstruction(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    assert main.main([str(a) for a in (
        "--model", tiny_model_dir("opt"), "--prune_method", "wanda", "--reconstruct", "admm", "--layer_ratios",
        "depth_ramp", "--ramp_beta", 0.1, "--sparsity_ratio", 0.6, "--admm_iterations", 5, "--nsamples", 4,
        "--seqlen", 32, "--eval_limit", 2, "--data_dir", data_dir, "--save", out, "--no_dense_eval")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["layer_ratios"] == pytest.approx([0.55, 0.65]) and results["ramp_beta"] == 0.1
    assert results["reconstructed_linears"] == 12  # q, k, v, out, fc1, fc2 x 2 layers
    assert {k: results["config"][k] for k in ("reconstruct", "admm_iterations", "admm_damp", "admm_rho")} == \
        {"reconstruct": "admm", "admm_iterations": 5, "admm_damp": 0.1, "admm_rho": 1.0}


@pytest.mark.parametrize("reconstruct", ["admm", "admm_gradual"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_score_method_composes(tiny_model, calib_ids, method, reconstruct):
    config = PruneConfig(prune_method=method, nsamples=8, reconstruct=reconstruct, admm_iterations=4,
                         admm_prune_steps=3)
    model = tiny_model("llama")
    if METHODS[method].score is None:
        with pytest.raises(ConfigError, match=f"'{method}' reconstructs the weights itself"):
            prune_model(model, calib_ids, config)
        return
    report = prune_model(model, calib_ids, config)
    assert report.layer_sparsity == pytest.approx([0.5, 0.5], abs=1 / 64)
    assert report.results()["reconstructed_linears"] == 14
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


@pytest.mark.parametrize("extra", [dict(prune_method="sparsegpt"), dict(prune_method="wanda", reconstruct="admm"),
                                   dict(prune_method="wanda", reconstruct="admm_gradual", sparsity_type="2:4")],
                         ids=["sparsegpt", "admm", "admm_gradual"])
def test_a_solvers_cache_lives_only_while_its_input_is_pruned(tiny_model, calib_ids, monkeypatch, extra):
    """q/k/v share one [in, in] factor, gate/up another: each is dropped after the last linear reading its input,
    so when a linear starts no other input's factor is alive (70B: down_proj's phase holds no 8192-wide ones)."""
    import lib.prune

    keys = ("hessian_factor", "admm_system")
    layer_stats, alive = [], []
    compress, prune_linear = lib.prune.compress, lib.prune.prune_linear

    def spy_compress(layer, linears, stats, *args, **kwargs):
        layer_stats.append(stats)
        compress(layer, linears, stats, *args, **kwargs)

    def spy_prune_linear(name, linear, stats, *args, **kwargs):
        others = {id(s) for s in layer_stats[-1].values() if s is not stats and any(k in s for k in keys)}
        alive.append((name, len(others)))
        prune_linear(name, linear, stats, *args, **kwargs)
        assert any(k in stats for k in keys), f"{name}: its input's factor was not cached"

    monkeypatch.setattr(lib.prune, "compress", spy_compress)
    monkeypatch.setattr(lib.prune, "prune_linear", spy_prune_linear)
    prune_model(tiny_model("llama"), calib_ids, PruneConfig(nsamples=calib_ids.shape[0], **extra))
    assert len(alive) == 2 * 7 and all(n == 0 for _, n in alive), alive
    assert not any(k in s for stats in layer_stats for s in stats.values() for k in keys)  # none after the layer
    shared = layer_stats[0]
    assert shared["self_attn.q_proj"] is shared["self_attn.v_proj"]  # the premise: shared statistics
    assert shared["mlp.gate_proj"] is shared["mlp.up_proj"]
