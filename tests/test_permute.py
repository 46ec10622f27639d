"""N:M channel permutation (lib/addons/permute.py): RIA's reallocation, folding into the MLP, and the
recorded order of the linears that do not fold.

    python -m pytest -q tests/test_permute.py
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig, prune_model
from lib.addons.permute import fold_mlp, reallocation_index
from lib.models import find_decoder_layers, find_linears
from lib.sparsity import make_mask


def test_reallocation_deals_sorted_channels_over_groups():
    scores = torch.tensor([[7.0, 0.0, 5.0, 2.0, 6.0, 1.0, 3.0, 4.0]])  # column sums, channel c has rank scores[c]
    index = reallocation_index(scores, 4)
    # Ranks 0..7 dealt as [0, 3, 4, 7 | 1, 2, 5, 6] (chunks [0,1], [2,3] reversed, [4,5], [6,7] reversed).
    assert scores[0, index].tolist() == [0.0, 3.0, 4.0, 7.0, 1.0, 2.0, 5.0, 6.0]
    assert sorted(index.tolist()) == list(range(8))


def test_folding_the_mlp_keeps_the_function(tiny_model, calib_ids):
    for arch in ("llama", "opt"):
        model = tiny_model(arch)
        with torch.no_grad():
            before = model(calib_ids[:2]).logits
            for layer in find_decoder_layers(model):
                linears = find_linears(layer)
                ups = [n for n in linears if n.endswith(("gate_proj", "up_proj", "fc1"))]
                down = next(n for n in linears if n.endswith(("down_proj", "fc2")))
                fold_mlp(linears, ups, down, torch.randperm(128, generator=torch.Generator().manual_seed(1)))
            torch.testing.assert_close(model(calib_ids[:2]).logits, before, atol=1e-5, rtol=1e-5)


def nm_in_order(weight: torch.Tensor, index: torch.Tensor | None, n: int, m: int) -> bool:
    zeros = (weight if index is None else weight[:, index]) == 0
    return bool((zeros.reshape(-1, m).sum(1) == n).all())


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", ["ria", "wanda"])
def test_folded_permutation_equals_unfolded(tiny_model, calib_ids, monkeypatch, arch, method):
    config = PruneConfig(prune_method=method, sparsity_type="2:4", permute=True, nsamples=8)
    folded = tiny_model(arch)
    report = prune_model(folded, calib_ids, config)
    monkeypatch.setattr("lib.addons.permute.foldable_mlp", lambda linears: None)
    unfolded = tiny_model(arch)
    plain = prune_model(unfolded, calib_ids, config).results()
    folded_orders, orders = report.results()["folded_permutations"], report.results()["permutations"]
    with torch.no_grad():
        torch.testing.assert_close(folded(calib_ids).logits, unfolded(calib_ids).logits, atol=1e-5, rtol=1e-5)
    linears = sum(len(find_linears(layer)) for layer in find_decoder_layers(folded))
    assert len(folded_orders) == 2 and len(orders) == linears - 2
    for i, layer in enumerate(find_decoder_layers(folded)):
        for name, linear in find_linears(layer).items():
            key = f"layers.{i}.{name}"
            if key in folded_orders:
                assert nm_in_order(linear.weight, None, 2, 4), key  # storage order
            else:
                assert nm_in_order(linear.weight, torch.tensor(orders[key]), 2, 4), key
    for i, layer in enumerate(find_decoder_layers(unfolded)):
        for name, linear in find_linears(layer).items():
            assert nm_in_order(linear.weight, torch.tensor(plain["permutations"][f"layers.{i}.{name}"]), 2, 4)
    # The permutation changes the choice: some linear is not N:M in storage order without it.
    assert any(not nm_in_order(lin.weight, None, 2, 4) for layer in find_decoder_layers(unfolded)
               for lin in find_linears(layer).values())


def test_permutation_keeps_more_score_than_direct_nm():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(64, 256, generator=g) * torch.rand(256, generator=g).pow(4)
    kept = lambda s: s.masked_fill(make_mask(s, 0.5, 2, 4), 0).sum()  # noqa: E731
    assert kept(scores[:, reallocation_index(scores, 4)]) > kept(scores)
