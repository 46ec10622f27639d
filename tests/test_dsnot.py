"""DSnoT mask refinement (lib/addons/dsnot.py) against the authors' published loop, transcribed.

    python -m pytest -q tests/test_dsnot.py
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig
from lib.addons.dsnot import InputMeanVariance, dsnot
from lib.collectors import InputSquares
from lib.methods.wanda import wanda_score
from lib.sparsity import make_mask


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
    collectors = [InputSquares(X.shape[-1], config), InputMeanVariance(X.shape[-1], config)]
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
