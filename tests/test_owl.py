"""OWL layer ratios (lib/addons/owl.py): upstream's arithmetic by hand, and the dense pass read against
the dense model's exact inputs.

    python -m pytest -q tests/test_owl.py
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig, prune_model
from lib.addons.owl import MAX_LAYER_RATIO, OWL, outlier_ratio, owl_ratios
from lib.models import find_decoder_layers, find_linears
from lib.plugins import find_method
from lib.prune import dense_walk


def test_owl_ratios_worked_example():
    # Upstream's arithmetic by hand: D = [1, 2, 3, 5], lambda 0.08, target 0.7 -> density [.23, .27, .31, .39].
    ratios = owl_ratios([1.0, 2.0, 3.0, 5.0], 0.7, 0.08)
    assert ratios == pytest.approx([0.77, 0.73, 0.69, 0.61], abs=1e-12)
    assert sum(ratios) / 4 == pytest.approx(0.7, abs=1e-15)


@pytest.mark.parametrize("target", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_owl_ratios_keep_the_target_mean_and_stay_in_range(target):
    D = torch.rand(30, generator=torch.Generator().manual_seed(1)).tolist()
    ratios = owl_ratios(D, target, 0.08)
    assert sum(ratios) / len(ratios) == pytest.approx(target, abs=1e-12)
    assert all(0.0 <= r <= MAX_LAYER_RATIO < 1.0 for r in ratios)
    # More outliers, less pruning; the spread is 2 lambda unless the range forced it smaller.
    order = sorted(range(30), key=lambda l: D[l])
    assert all(ratios[a] >= ratios[b] for a, b in zip(order, order[1:]))
    spread = max(ratios) - min(ratios)
    assert spread == pytest.approx(0.16, abs=1e-12) if 0.16 <= target <= 0.83 else spread <= 0.16 + 1e-12


def test_owl_equal_outliers_give_uniform_ratios():
    assert owl_ratios([0.02, 0.02, 0.02], 0.6, 0.08) == [0.6, 0.6, 0.6]  # upstream divides by zero here


def test_outlier_ratio_pools_the_layer_before_the_mean():
    # [1 x 9, 100]: mean 10.9, threshold 5 * 10.9 = 54.5 -> one outlier in ten.
    one = torch.tensor([[1.0] * 9 + [100.0]])
    assert outlier_ratio(lambda: iter([one]), 5.0) == pytest.approx(0.1)
    # With a second linear of 10s the joint mean is 10.45 (threshold 52.25): 1 of 20. Per-linear means would
    # count 1 of 10 and 0 of 10 and average to 0.05 too, so make the second one larger: 40 entries of 10.
    big = torch.full((4, 10), 10.0)
    assert outlier_ratio(lambda: iter([one, big]), 5.0) == pytest.approx(1 / 50)
    assert outlier_ratio(lambda: iter([one, big]), 9.0) == pytest.approx(1 / 50)  # 9 * 10.18 = 91.6 < 100
    assert outlier_ratio(lambda: iter([one, big]), 10.0) == 0.0  # 101.8


def exact_inputs(model, layer, calib_ids) -> dict[str, torch.Tensor]:
    """Every input row [tokens, in] of each linear of `layer`, from full-model forwards."""
    rows = {name: [] for name in find_linears(layer)}
    handles = [lin.register_forward_hook(lambda m, i, o, n=name: rows[n].append(i[0].reshape(-1, i[0].shape[-1])))
               for name, lin in find_linears(layer).items()]
    with torch.no_grad():
        model(calib_ids, use_cache=False)
    for h in handles:
        h.remove()
    return {name: torch.cat(r).float() for name, r in rows.items()}


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_owl_prepass_reads_the_dense_model_and_changes_nothing(tiny_model, calib_ids, arch):
    model = tiny_model(arch)
    before = [p.clone() for p in model.parameters()]
    config = PruneConfig(layer_ratios="owl", owl_m=3.0, nsamples=8)
    layers = find_decoder_layers(model)
    owl = OWL(config)
    owl.ratios(dense_walk(model, layers, calib_ids, config, 3, None), find_method(config), {}, len(layers))
    ours = owl.outlier_ratios
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for layer, got in zip(layers, ours):
        inputs = exact_inputs(model, layer, calib_ids)
        scores = [lin.weight.abs() * inputs[name].norm(dim=0) for name, lin in find_linears(layer).items()]
        cat = torch.cat([s.flatten() for s in scores]).double()
        assert got == pytest.approx(int((cat > 3.0 * cat.mean()).sum()) / cat.numel(), abs=1e-9)


@pytest.mark.parametrize("method", ["wanda", "ria", "sparsegpt"])
def test_owl_prunes_each_layer_at_its_ratio(tiny_model, calib_ids, method):
    model = tiny_model("llama")
    config = PruneConfig(prune_method=method, sparsity_ratio=0.6, layer_ratios="owl", owl_lambda=0.1, nsamples=8)
    report = prune_model(model, calib_ids, config)
    ratios = report.results()["layer_ratios"]
    assert len(ratios) == 2 and sum(ratios) / 2 == pytest.approx(0.6, abs=1e-12)
    assert ratios[0] != ratios[1]
    for ratio, measured in zip(ratios, report.layer_sparsity):
        assert ratio - 1 / 64 <= measured <= ratio + 1e-9  # floor(ratio * width) per row or block; widths >= 64


def test_owl_method_score_differs_from_wanda_score(tiny_model, calib_ids):
    reports = {}
    for source in ("wanda", "method"):
        config = PruneConfig(prune_method="magnitude", layer_ratios="owl", owl_score=source, owl_m=2.0, nsamples=8)
        reports[source] = prune_model(tiny_model("llama"), calib_ids, config).results()["outlier_ratios"]
    assert reports["wanda"] != reports["method"]
