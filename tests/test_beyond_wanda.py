"""OWL layer ratios, DSnoT refinement, RIA and N:M channel permutation (RESULTS.md): oracles from the papers and
the authors' code, and every add-on combination end to end on the tiny families.

Run: .venv/bin/python -m pytest -q tests/test_beyond_wanda.py
"""
from __future__ import annotations

import json

import pytest
import torch

import main
from lib import PruneConfig, prune_model
from lib.config import ConfigError
from lib.layer_ratios import MAX_LAYER_RATIO, outlier_ratio, owl_ratios
from lib.methods import METHODS, find_method
from lib.methods.ria import relative_importance, ria_score
from lib.methods.selectivity import spiky_factor
from lib.methods.wanda import WrappedGPT, wanda_score
from lib.models import find_decoder_layers, find_linears
from lib.permute import fold_mlp, reallocation_index
from lib.prune import outlier_ratios
from lib.refine import DSnoTCollector, dsnot
from lib.sparsity import make_mask

# ---------------------------------------------------------------- OWL


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
    ours = outlier_ratios(model, layers, calib_ids, find_method(config), config, {}, 3)
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
    assert len(report.layer_ratios) == 2 and sum(report.layer_ratios) / 2 == pytest.approx(0.6, abs=1e-12)
    assert report.layer_ratios[0] != report.layer_ratios[1]
    for ratio, measured in zip(report.layer_ratios, report.layer_sparsity):
        assert ratio - 1 / 64 <= measured <= ratio + 1e-9  # floor(ratio * width) per row or block; widths >= 64


def test_owl_method_score_differs_from_wanda_score(tiny_model, calib_ids):
    reports = {}
    for source in ("wanda", "method"):
        config = PruneConfig(prune_method="magnitude", layer_ratios="owl", owl_score=source, owl_m=2.0, nsamples=8)
        reports[source] = prune_model(tiny_model("llama"), calib_ids, config).outlier_ratios
    assert reports["wanda"] != reports["method"]


# ---------------------------------------------------------------- DSnoT


def upstream_stats(X: torch.Tensor) -> dict[str, torch.Tensor]:
    """DSnoT's WrappedGPT.add_batch transcribed, one sequence X[s] [T, in] per call (as upstream feeds it)."""
    cols = X.shape[-1]
    scaler_row, sum_metric_row = torch.zeros(cols), torch.zeros(cols)
    var, nsamples, ntokens = torch.zeros(cols, 1), 0, 0
    for seq in X:
        inp = seq.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t().float()
        var_inp = torch.var(inp, dim=1, unbiased=False, keepdim=True)
        num_inp = inp.shape[1]
        var = var_inp if ntokens == 0 else (var * ntokens + var_inp * num_inp) / (ntokens + num_inp)
        ntokens += num_inp
        scaler_row *= nsamples / (nsamples + tmp)
        sum_metric_row *= nsamples / (nsamples + tmp)
        nsamples += tmp
        scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / nsamples
        sum_metric_row += torch.sum(inp, dim=1) / nsamples
    return {"scaler_row": scaler_row, "sum_metric_row": sum_metric_row, "var": var.flatten()}


def return_reorder_indice(input_tensor):
    """Upstream's helper, verbatim."""
    positive_tensor = input_tensor.clone()
    negative_tensor = input_tensor.clone()
    positive_mask = positive_tensor > 0
    negative_mask = negative_tensor < 0
    positive_indices = torch.arange(0, input_tensor.shape[1]).to(torch.float64).repeat(input_tensor.shape[0], 1)
    negative_indices = torch.arange(0, input_tensor.shape[1]).to(torch.float64).repeat(input_tensor.shape[0], 1)
    positive_indices[~positive_mask] = float("inf")
    negative_indices[~negative_mask] = float("inf")
    positive_value, _ = torch.sort(positive_indices, dim=1)
    negative_value, _ = torch.sort(negative_indices, dim=1)
    positive_value = torch.flip(positive_value, dims=[1])
    negative_value[negative_value == float("inf")] = 0
    positive_value[positive_value == float("inf")] = 0
    return (positive_value + negative_value).to(torch.int64)


def upstream_dsnot(W, stats, sparsity_ratio, prune_n, prune_m, max_cycle_time, update_threshold,
                   without_same_sign):
    """The published loop (zyxxmu/DSnoT lib/prune.py, prune_DSnoT with initial_method wanda), transcribed."""
    DSnoT_metric = W * stats["sum_metric_row"].reshape((1, -1))
    initial_metric = torch.abs(W) * torch.sqrt(stats["scaler_row"].reshape((1, -1)))
    weight_mask = torch.zeros_like(initial_metric) == 1
    rows = W.shape[0]
    if prune_n != 0:
        initial_prune_indices = torch.zeros((rows, 0), dtype=torch.int64)
        initial_res_indices = torch.zeros((rows, 0), dtype=torch.int64)
        for ii in range(initial_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = initial_metric[:, ii:(ii + prune_m)].float()
                _, tmp_all_indices = torch.sort(tmp, dim=1)
                tmp_all_indices += ii
                tmp_indices, tmp_res_indices = torch.split(tmp_all_indices, [prune_n, prune_m - prune_n], dim=1)
                initial_prune_indices = torch.cat((initial_prune_indices, tmp_indices), dim=1)
                initial_res_indices = torch.cat((initial_res_indices, tmp_res_indices), dim=1)
                weight_mask.scatter_(1, tmp_indices, True)
        metric_for_regrowing = DSnoT_metric.clone()
        metric_for_regrowing.scatter_(1, initial_res_indices, 0)
        reconstruction_error = torch.sum(metric_for_regrowing, dim=1, keepdim=True)
        initialize_error_sign = torch.sign(reconstruction_error)
        metric_for_regrowing /= torch.pow(stats["var"].reshape((1, -1)), 1)
        _, regrowing_indices_block = torch.sort(metric_for_regrowing, dim=1, stable=True)
        indice_indice_list_for_regrowing = torch.zeros((rows, 2), dtype=torch.long)
        indice_indice_list_for_regrowing[:, 1] = regrowing_indices_block.shape[-1] - 1
        update_num_for_regrowing = torch.ones((rows, 2), dtype=torch.long)
        update_num_for_regrowing[:, 1] = -1
        initial_metric.scatter_(1, initial_prune_indices, float("inf"))
        W_metric_max_value = torch.max(initial_metric, dim=1, keepdim=True)[0] + 1
        cycle_time = 1
        update_mask = torch.ones_like(reconstruction_error, dtype=torch.bool)
        while not (torch.all(update_mask == False) or cycle_time > max_cycle_time):  # noqa: E712
            cycle_time += 1
            which = (reconstruction_error > 0).int().to(torch.int64)
            pointer = torch.gather(indice_indice_list_for_regrowing, 1, which)
            regrowing_indice = torch.gather(regrowing_indices_block, 1, pointer.to(torch.int64))
            regrowing_metric = DSnoT_metric.gather(1, regrowing_indice.to(torch.int64))
            recover_block_start_indice = regrowing_indice - regrowing_indice % prune_m
            recover_block_indices = (torch.arange(0, prune_m).repeat(recover_block_start_indice.shape[1], 1)
                                     + recover_block_start_indice)
            pruning_block = torch.gather(initial_metric, 1, recover_block_indices.to(torch.int64))
            _, pruning_indice = torch.topk(pruning_block, 1, dim=1, largest=False)
            pruning_indice += recover_block_start_indice
            pruning_metric = DSnoT_metric.gather(1, pruning_indice.to(torch.int64))
            reconstruction_error_after = reconstruction_error + pruning_metric - regrowing_metric
            update_mask = (update_mask & (initialize_error_sign == torch.sign(reconstruction_error_after))
                           & (abs(reconstruction_error) > update_threshold))
            initial_metric.scatter_(1, pruning_indice, W_metric_max_value)
            weight_mask.scatter_(1, pruning_indice, update_mask)
            weight_mask.scatter_(1, regrowing_indice, ~update_mask)
            reconstruction_error += torch.where(update_mask, pruning_metric, torch.zeros_like(pruning_metric))
            reconstruction_error -= torch.where(update_mask, regrowing_metric, torch.zeros_like(regrowing_metric))
            indice_indice_list_for_regrowing.scatter_(
                1, which, pointer + update_num_for_regrowing.gather(1, which))
        return weight_mask
    _, sorted_initial_indice = torch.sort(initial_metric, dim=-1, stable=True)
    sparsity_num = int(initial_metric.shape[1] * sparsity_ratio)
    res_sparsity_num = sorted_initial_indice.shape[1] - sparsity_num
    initial_prune_indices, initial_res_indices = torch.split(sorted_initial_indice,
                                                             [sparsity_num, res_sparsity_num], dim=1)
    weight_mask.scatter_(1, initial_prune_indices, True)
    metric_for_regrowing = DSnoT_metric.clone()
    wanda_metric = torch.abs(W) * torch.sqrt(stats["scaler_row"].reshape((1, -1)))
    metric_for_regrowing.scatter_(1, initial_res_indices, 0)
    reconstruction_error = torch.sum(metric_for_regrowing, dim=1, keepdim=True)
    initialize_error_sign = torch.sign(reconstruction_error)
    metric_for_regrowing /= torch.pow(stats["var"].reshape((1, -1)), 1)
    _, regrowing_indices_block = torch.sort(metric_for_regrowing, dim=1, stable=True)
    wanda_metric.scatter_(1, initial_prune_indices, float("inf"))
    wanda_res_indices, _ = torch.split(torch.sort(wanda_metric, dim=1, stable=True)[1],
                                       [res_sparsity_num, sparsity_num], dim=1)
    reorder = return_reorder_indice(torch.gather(DSnoT_metric, 1, wanda_res_indices))
    pruning_indices_block = torch.gather(wanda_res_indices, 1, reorder)
    regrow_pointers = torch.zeros((rows, 2), dtype=torch.long)
    regrow_pointers[:, 1] = regrowing_indices_block.shape[-1] - 1
    regrow_steps = torch.ones((rows, 2), dtype=torch.long)
    regrow_steps[:, 1] = -1
    prune_pointers = torch.zeros((rows, 2), dtype=torch.long)
    prune_pointers[:, 1] = pruning_indices_block.shape[-1] - 1
    prune_steps = torch.ones((rows, 2), dtype=torch.long)
    prune_steps[:, 1] = -1
    update_mask = torch.ones_like(reconstruction_error, dtype=torch.bool)
    cycle_time = 0
    while not (torch.all(update_mask == False) or cycle_time >= max_cycle_time):  # noqa: E712
        cycle_time += 1
        which = (reconstruction_error > 0).int().to(torch.int64)
        pointer = torch.gather(regrow_pointers, 1, which)
        regrowing_indice = torch.gather(regrowing_indices_block, 1, pointer.to(torch.int64))
        regrowing_metric = DSnoT_metric.gather(1, regrowing_indice.to(torch.int64))
        regrow_pointers.scatter_(1, which, pointer + regrow_steps.gather(1, which))
        which = (reconstruction_error < 0).int().to(torch.int64)
        pointer = torch.gather(prune_pointers, 1, which)
        pruning_indice = torch.gather(pruning_indices_block, 1, pointer.to(torch.int64))
        pruning_metric = DSnoT_metric.gather(1, pruning_indice.to(torch.int64))
        prune_pointers.scatter_(1, which, pointer + prune_steps.gather(1, which))
        reconstruction_error_after = reconstruction_error + pruning_metric - regrowing_metric
        if without_same_sign:
            update_mask = update_mask & (abs(reconstruction_error) > update_threshold)
        else:
            update_mask = (update_mask & (abs(reconstruction_error) > update_threshold)
                           & (initialize_error_sign == torch.sign(reconstruction_error_after)))
        weight_mask.scatter_(1, pruning_indice, update_mask)
        weight_mask.scatter_(1, regrowing_indice, ~update_mask)
        reconstruction_error += torch.where(update_mask, pruning_metric, torch.zeros_like(pruning_metric))
        reconstruction_error -= torch.where(update_mask, regrowing_metric, torch.zeros_like(regrowing_metric))
    return weight_mask


def dsnot_layer(seed: int = 0, rows: int = 8, cols: int = 512):
    """A random layer and calibration inputs X [4 sequences, 16 tokens, cols] with channel means and scales."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    X = torch.randn(4, 16, cols, generator=g) * torch.rand(cols, generator=g).add(0.2) + torch.randn(cols, generator=g)
    return W, X


def ours_stats(X: torch.Tensor, batches=((0, 4),)) -> dict[str, torch.Tensor]:
    config = PruneConfig()
    collectors = [WrappedGPT(X.shape[-1], config), DSnoTCollector(X.shape[-1], config)]
    for a, b in batches:
        for c in collectors:
            c.add_batch(X[a:b])
    return {k: v for c in collectors for k, v in c.finalize().items()}


def test_dsnot_statistics_equal_upstream_and_ignore_batching():
    _, X = dsnot_layer()
    ref = upstream_stats(X)
    for batches in (((0, 4),), ((0, 1), (1, 4)), ((0, 3), (3, 4))):
        stats = ours_stats(X, batches)
        torch.testing.assert_close(stats["scaler_row"], ref["scaler_row"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["dsnot_sum_x"], ref["sum_metric_row"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["dsnot_var"], ref["var"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparsity_type,same_sign,threshold,cycles", [
    ("unstructured", False, 0.1, 50), ("unstructured", True, 0.1, 50), ("unstructured", False, 30.0, 50),
    ("unstructured", False, 0.1, 7), ("2:4", True, 0.1, 50), ("4:8", True, 0.1, 50), ("2:4", True, 20.0, 50)])
def test_dsnot_equals_the_published_loop(sparsity_type, same_sign, threshold, cycles):
    W, X = dsnot_layer(seed=3)
    ref_stats = upstream_stats(X)
    stats = ours_stats(X)
    n, m = (0, 0) if sparsity_type == "unstructured" else map(int, sparsity_type.split(":"))
    expected = upstream_dsnot(W, ref_stats, 0.5, n, m, cycles, threshold, without_same_sign=not same_sign)
    scores = wanda_score(W, stats, PruneConfig())
    initial = make_mask(scores, 0.5, n, m)
    ours, swaps = dsnot(W, scores, initial, stats["dsnot_sum_x"], stats["dsnot_var"], cycles, threshold,
                        same_sign, m)
    assert torch.equal(ours, expected)
    assert swaps > 0 and not torch.equal(ours, initial)
    assert torch.equal(ours.sum(1), initial.sum(1))
    if m:
        assert (ours.reshape(-1, m).sum(1) == n).all()


def test_dsnot_without_cycles_or_above_threshold_keeps_the_mask():
    W, X = dsnot_layer()
    stats = ours_stats(X)
    scores = wanda_score(W, stats, PruneConfig())
    initial = make_mask(scores, 0.5)
    for cycles, threshold in ((0, 0.1), (50, 1e9)):
        mask, swaps = dsnot(W, scores, initial, stats["dsnot_sum_x"], stats["dsnot_var"], cycles, threshold)
        assert torch.equal(mask, initial) and swaps == 0


def test_dsnot_same_sign_shrinks_the_error_without_crossing_zero():
    W, X = dsnot_layer(seed=5)
    stats = ours_stats(X)
    scores = wanda_score(W, stats, PruneConfig())
    initial = make_mask(scores, 0.5)
    d = W * stats["dsnot_sum_x"]
    before = d.masked_fill(~initial, 0).sum(1)
    mask, _ = dsnot(W, scores, initial, stats["dsnot_sum_x"], stats["dsnot_var"], 50, 0.0, same_sign=True)
    after = d.masked_fill(~mask, 0).sum(1)
    assert (after.abs() <= before.abs() + 1e-4).all() and (after.abs() < before.abs()).any()
    assert (torch.sign(after) == torch.sign(before)).all()


def test_dsnot_hand_case_picks_the_published_pair():
    # One row, in 4, half pruned. d = w * sum_x = [3, 1, -2, -0.5]; the mask prunes columns 0 and 1 (e = 4 > 0).
    # Regrow the pruned weight with the largest d / var (col 1: 1 / 0.1 = 10 beats col 0: 3 / 1), and prune the
    # kept weight with d < 0 of lowest score (col 3: 0.5 < 0.9).
    W = torch.tensor([[3.0, 1.0, -2.0, -0.5]])
    sum_x = torch.ones(4)
    var = torch.tensor([1.0, 0.1, 1.0, 1.0])
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.5]])
    initial = torch.tensor([[True, True, False, False]])
    mask, swaps = dsnot(W, scores, initial, sum_x, var, cycles=1, threshold=0.1)
    assert swaps == 1 and mask.tolist() == [[True, False, False, True]]


# ---------------------------------------------------------------- RIA


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


# ---------------------------------------------------------------- channel permutation


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
    monkeypatch.setattr("lib.permute.foldable_mlp", lambda linears: None)
    unfolded = tiny_model(arch)
    plain = prune_model(unfolded, calib_ids, config)
    with torch.no_grad():
        torch.testing.assert_close(folded(calib_ids).logits, unfolded(calib_ids).logits, atol=1e-5, rtol=1e-5)
    linears = sum(len(find_linears(layer)) for layer in find_decoder_layers(folded))
    assert len(report.folded_permutations) == 2 and len(report.permutations) == linears - 2
    for i, layer in enumerate(find_decoder_layers(folded)):
        for name, linear in find_linears(layer).items():
            key = f"layers.{i}.{name}"
            if key in report.folded_permutations:
                assert nm_in_order(linear.weight, None, 2, 4), key  # storage order
            else:
                assert nm_in_order(linear.weight, torch.tensor(report.permutations[key]), 2, 4), key
    for i, layer in enumerate(find_decoder_layers(unfolded)):
        for name, linear in find_linears(layer).items():
            assert nm_in_order(linear.weight, torch.tensor(plain.permutations[f"layers.{i}.{name}"]), 2, 4)
    # The permutation changes the choice: some linear is not N:M in storage order without it.
    assert any(not nm_in_order(lin.weight, None, 2, 4) for layer in find_decoder_layers(unfolded)
               for lin in find_linears(layer).values())


def test_permutation_keeps_more_score_than_direct_nm():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(64, 256, generator=g) * torch.rand(256, generator=g).pow(4)
    kept = lambda s: s.masked_fill(make_mask(s, 0.5, 2, 4), 0).sum()  # noqa: E731
    assert kept(scores[:, reallocation_index(scores, 4)]) > kept(scores)


# ---------------------------------------------------------------- every combination end to end

ADDONS = {
    "owl": dict(layer_ratios="owl"),
    "dsnot": dict(refine="dsnot", dsnot_skip="none"),
    "permute": dict(permute=True),
    "owl+dsnot": dict(layer_ratios="owl", refine="dsnot"),
    "permute+dsnot": dict(permute=True, refine="dsnot", dsnot_skip="none"),
}


def refusal(method: str, sparsity_type: str, addon: str) -> str | None:
    """The message fragment of the one-line error the combination must raise, or None when it is supported."""
    if "owl" in addon and sparsity_type != "unstructured":
        return "--layer_ratios owl gives each layer its own sparsity"
    if "dsnot" in addon and method == "sparsegpt":
        return "--refine dsnot refines a score method's mask"
    if "permute" in addon and sparsity_type == "unstructured":
        return "--permute reorders input channels"
    if "permute" in addon and method == "sparsegpt":
        return "--permute needs a per-weight score"
    return None


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["wanda", "wanda_spiky", "sparsegpt", "ria"])
@pytest.mark.parametrize("addon", sorted(ADDONS))
def test_every_addon_combination(tiny_model, calib_ids, addon, method, sparsity_type, arch):
    config = PruneConfig(prune_method=method, sparsity_type=sparsity_type, nsamples=4, **ADDONS[addon])
    model = tiny_model(arch)
    message = refusal(method, sparsity_type, addon)
    if message is not None:
        with pytest.raises(ConfigError, match=message.replace("-", "\\-")):
            prune_model(model, calib_ids, config)
        return
    report = prune_model(model, calib_ids, config)
    layers = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        for name, linear in find_linears(layer).items():
            key = f"layers.{i}.{name}"
            if config.prune_n:
                index = report.permutations.get(key)
                assert nm_in_order(linear.weight, None if index is None else torch.tensor(index), 2, 4), key
    if "owl" in addon:
        assert sum(report.layer_ratios) / len(layers) == pytest.approx(0.5, abs=1e-12)
        for ratio, measured in zip(report.layer_ratios, report.layer_sparsity):
            assert ratio - 1 / 64 <= measured <= ratio + 1e-9  # floor(ratio * width) per row or block; widths >= 64
    else:
        assert all(s == pytest.approx(0.5, abs=0.01) for s in report.layer_sparsity)
    if "dsnot" in addon:
        assert len(report.refine_swaps) == len(layers) and sum(report.refine_swaps) > 0
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


def test_addons_refuse_neuron_granularity():
    for extra, message in ((dict(layer_ratios="owl"), "removes whole neurons"),
                           (dict(refine="dsnot"), "removes whole neurons")):
        with pytest.raises(ConfigError, match=message):
            find_method(PruneConfig(prune_method="wanda", nr_granularity="neuron", **extra))
    with pytest.raises(ConfigError, match="--owl_score method needs a per-weight score"):
        find_method(PruneConfig(prune_method="sparsegpt", layer_ratios="owl", owl_score="method"))


# ---------------------------------------------------------------- the command line


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
    (["--layer_ratios", "owk"], "layer_ratios 'owk' is not one of"),
    (["--owl_m", "0"], "owl_m 0.0 must be > 0"),
])
def test_unsupported_combinations_are_one_line_errors(tmp_path, capsys, extra, message):
    # The checks run before anything is read: a missing model folder is never reached.
    assert main.main(["--model", str(tmp_path / "absent"), *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
