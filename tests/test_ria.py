"""RIA (lib/methods/ria.py): the score against its formula, its comparison group, and its selectivity variants.

    python -m pytest -q tests/test_ria.py
"""
from __future__ import annotations

import torch

from lib import PruneConfig, prune_model
from lib.methods.ria import relative_importance, ria_score
from lib.methods.selectivity import spiky_factor
from lib.models import find_decoder_layers
from lib.plugins import METHODS


def test_ria_score_equals_the_formula():
    W = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    stats = {"scaler_row": torch.tensor([4.0, 16.0])}
    expected = torch.tensor([[0.8250, 2.0000], [1.6667, 2.4762]])
    torch.testing.assert_close(ria_score(W, stats, PruneConfig(prune_method="ria")), expected, atol=1e-4, rtol=0)
    # a = 0 is relative importance alone; a uniform activation norm only scales it.
    torch.testing.assert_close(ria_score(W, stats, PruneConfig(prune_method="ria", ria_alpha=0.0)),
                               relative_importance(W).float())
    flat = {"scaler_row": torch.full((2,), 9.0)}
    torch.testing.assert_close(ria_score(W, flat, PruneConfig(prune_method="ria")),
                               relative_importance(W).float() * 3.0 ** 0.5)


def test_ria_compares_per_layer_or_per_row(tiny_model, calib_ids):
    counts = {}
    for group in ("layer", "row"):
        model = tiny_model("llama")
        prune_model(model, calib_ids, PruneConfig(prune_method="ria", ria_group=group, nsamples=8))
        q = find_decoder_layers(model)[0].self_attn.q_proj.weight
        counts[group] = (q == 0).sum(1)
    assert (counts["row"] == 32).all() and not (counts["layer"] == 32).all()
    assert counts["layer"].sum() == 64 * 32


def test_ria_selectivity_is_the_ria_score_times_the_factor():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 8, generator=g)
    stats = {"scaler_row": torch.rand(8, generator=g) + 0.1, "top_mean": torch.rand(8, generator=g) + 1,
             "mean_abs": torch.rand(8, generator=g) + 0.1}
    config = PruneConfig(prune_method="ria_spiky")
    expected = ria_score(W, stats, config) * spiky_factor(stats, config).unsqueeze(0)
    torch.testing.assert_close(METHODS["ria_spiky"].score(W, stats, config), expected)
    assert METHODS["ria_spiky"].mask_group(config) == "layer"
