"""Oracles for lib/reconstruct.py (ADMM update, gradual ADMM) and lib/depth_ramp.py (ATP's layer ratios).

Run: .venv/bin/python -m pytest -q tests/test_reconstruct.py
The ADMM oracle is the exact masked least-squares solution, solved row by row in float64:
w'_K = H_KK^-1 (H w)_K on the kept columns K, with the damped Hessian H + damp * diag(H) the method minimises.
"""
from __future__ import annotations

import logging

import pytest
import torch

from lib.config import PruneConfig
from lib.depth_ramp import depth_ramp_limit, depth_ramp_ratios
from lib.collectors import InputHessian
from lib.reconstruct import (admm_system, admm_system_from_stats, admm_update, cubic_fraction, gradual_admm,
                             relative_layer_error, row_objective, scheduled_mask)
from lib.sparsity import make_mask


def layer_problem(out: int = 16, width: int = 32, tokens: int = 256, seed: int = 0):
    """A weight [out, in] and calibration inputs X [tokens, in] with uneven channel scales and correlations."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, width, generator=gen) * (0.2 + 3 * torch.rand(width, generator=gen))
    X[:, : width // 4] += 2 * torch.randn(tokens, 1, generator=gen)  # a shared direction: off-diagonal H
    return torch.randn(out, width, generator=gen), X


def exact_masked_fit(W: torch.Tensor, mask: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Oracle: per row, the kept weights minimising (w - w') H (w - w')^T with w' = 0 on the mask (float64)."""
    Wd, Hd = W.double(), H.double()
    fit = torch.zeros_like(Wd)
    for i in range(W.shape[0]):
        kept = (~mask[i]).nonzero().flatten()
        fit[i, kept] = torch.linalg.solve(Hd[kept][:, kept], (Hd @ Wd[i])[kept])
    return fit


def wanda_mask(W: torch.Tensor, H: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    return make_mask(W.abs() * H.diagonal().sqrt(), sparsity, n, m)


@pytest.mark.parametrize("damp", [0.0, 0.1])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_admm_reaches_exact_masked_least_squares(damp, sparsity):
    """100 iterations: the weights are the exact optimum to 1e-4 (relative); 20 (the default): the layer
    objective is within 1e-3 (relative) of the optimum's. Both for the damped objective the method states."""
    W, X = layer_problem()
    H = X.T @ X
    mask = wanda_mask(W, H, sparsity)
    optimum = exact_masked_fit(W, mask, H + damp * torch.diag(H.diagonal()))
    fit = admm_update(W, mask, admm_system(H.clone(), damp), iterations=100)
    assert ((fit.double() - optimum).norm() / optimum.norm()).item() < 1e-4
    default = admm_update(W, mask, admm_system(H.clone(), damp))
    best = relative_layer_error(W, optimum.float(), H + damp * torch.diag(H.diagonal()))
    reached = relative_layer_error(W, default, H + damp * torch.diag(H.diagonal()))
    assert best <= reached < best * (1 + 1e-3)
    assert (default[mask] == 0).all()


@pytest.mark.parametrize("iterations", [1, 2, 5, 20])
def test_admm_never_worse_than_masked_weights(iterations, caplog):
    """Per row, the undamped layer objective after the update is at most the masked original weights', also
    where few iterations leave ADMM short of the optimum (few tokens, strongly correlated inputs, 90% random
    masks: some rows there fall back to the masked weights, which the log reports)."""
    caplog.set_level(logging.INFO, logger="lib.reconstruct")
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        X = torch.randn(64, 32, generator=gen) * (0.05 + 5 * torch.rand(32, generator=gen))
        X[:, :16] += 3 * torch.randn(64, 1, generator=gen)
        W = torch.randn(16, 32, generator=gen)
        H = X.T @ X
        for mask in (make_mask(torch.rand(16, 32, generator=gen), 0.9), wanda_mask(W, H, 0.5, 2, 4)):
            fit = admm_update(W, mask, admm_system(H.clone()), iterations=iterations)
            assert (row_objective(W - fit, H) <= row_objective(W * mask, H) * (1 + 1e-5)).all()
            assert (fit[mask] == 0).all()
    if iterations < 5:
        assert "rows kept the masked original weights" in caplog.text


def test_admm_keeps_dtype_mask_and_dead_inputs_finite():
    """A bfloat16 weight comes back bfloat16, zero on the mask; an input no token reached gives no NaN."""
    W, X = layer_problem()
    X[:, 3] = 0
    H = X.T @ X
    mask = wanda_mask(W, H, 0.5)
    fit = admm_update(W.bfloat16(), mask, admm_system(H.clone()))
    assert fit.dtype == torch.bfloat16 and torch.isfinite(fit.float()).all()
    assert (fit[mask] == 0).all()
    with pytest.raises(ValueError, match="mask shape"):
        admm_update(W, mask[:, :8], admm_system(H.clone()))


def score_of(H: torch.Tensor, factor: torch.Tensor | None = None):
    """Wanda's score |W| * ||X_j|| (times per-channel factors), as a method hands it to gradual_admm."""
    norm = H.diagonal().sqrt() * (1 if factor is None else factor)
    return lambda V: V.abs() * norm.unsqueeze(0)


@pytest.mark.parametrize("target", [("row", 0.5), ("row", 0.7), ("layer", 0.6), ("2:4", None), ("4:8", None)])
def test_gradual_admm_hits_exact_target(target):
    """Per row floor(s * in) pruned; per layer floor(s * numel); N:M exactly N in every group of M; W' = 0 there."""
    group, sparsity = target
    W, X = layer_problem(out=12, width=40)
    H = X.T @ X
    n, m = (int(group[0]), int(group[2])) if ":" in group else (0, 0)
    fit, mask = gradual_admm(W, admm_system(H.clone()), sparsity if sparsity else n / m, score_of(H), n, m,
                             "layer" if group == "layer" else "row")
    assert (fit[mask] == 0).all()
    if n:
        assert (mask.reshape(-1, m).sum(dim=1) == n).all()
    elif group == "row":
        assert (mask.sum(dim=1) == int(40 * sparsity)).all()
    else:
        assert int(mask.sum()) == int(mask.numel() * sparsity)
    assert relative_layer_error(W, fit, H) < relative_layer_error(W, W * ~mask, H)


def test_gradual_admm_mask_follows_per_channel_factors():
    """Selectivity-style factors [in] enter the mask choice: a channel with a huge factor is never pruned, one
    with a tiny factor always, and without factors both are pruned in some rows and kept in others."""
    W, X = layer_problem(out=16, width=32)
    H = X.T @ X
    _, plain = gradual_admm(W, admm_system(H.clone()), 0.5, score_of(H))
    protected, doomed = 5, 9
    assert 0 < plain[:, protected].sum() < 16 and 0 < plain[:, doomed].sum() < 16
    factor = torch.ones(32)
    factor[protected], factor[doomed] = 1e6, 1e-6
    fit, mask = gradual_admm(W, admm_system(H.clone()), 0.5, score_of(H, factor))
    assert not mask[:, protected].any() and mask[:, doomed].all()
    assert (mask.sum(dim=1) == 16).all()


def test_cubic_schedule_reaches_target_and_grows():
    """The cubic schedule prunes more at every step and exactly the target at the last one (N:M included)."""
    scores = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    fractions = [cubic_fraction(t, 15) for t in range(15)]
    assert fractions[-1] == 1.0 and all(a < b for a, b in zip(fractions, fractions[1:]))
    for n, m, sparsity in ((0, 0, 0.75), (2, 4, 0.5)):
        masks = [scheduled_mask(scores, sparsity, f, n, m) for f in fractions]
        counts = [int(mk.sum()) for mk in masks]
        assert all(a <= b for a, b in zip(counts, counts[1:])) and counts[0] < counts[-1]
        assert torch.equal(masks[-1], make_mask(scores, sparsity, n, m))


def test_nm_schedule_prunes_the_lowest_candidates_first_ties_by_position():
    """An intermediate N:M step prunes the lowest-scoring floor(f * count) of the final N:M mask's weights over the
    layer, ties broken by position: the stable argsort's first ones (oracle), on quantized scores full of ties."""
    scores = torch.randint(0, 4, (6, 16), generator=torch.Generator().manual_seed(2)).float()
    candidates = make_mask(scores, 0.5, 2, 4)
    for fraction in (0.1, 0.35, 0.8):
        count = int(fraction * int(candidates.sum()))
        order = scores.masked_fill(~candidates, float("inf")).flatten().argsort(stable=True)[:count]
        expected = torch.zeros(scores.numel(), dtype=torch.bool).scatter_(0, order, True).reshape(scores.shape)
        assert torch.equal(scheduled_mask(scores, 0.5, fraction, 2, 4), expected)


def test_admm_does_not_depend_on_calibration_batching():
    """SparseGPT's collector fed the same tokens in uneven batches or at once gives the same update, bit for
    bit (integer-valued activations make every float32 sum exact)."""
    gen = torch.Generator().manual_seed(3)
    X = torch.randint(-3, 4, (6, 20, 32), generator=gen).float()  # [sequences, tokens, in]
    W = torch.randn(16, 32, generator=gen)
    config = PruneConfig()
    results = []
    for cuts in ([6], [1, 3, 2], [2, 2, 2]):
        collector = InputHessian(32, config)
        for chunk in torch.split(X, cuts):
            collector.add_batch(chunk)
        stats = collector.finalize()
        mask = make_mask(W.abs() * stats["hessian"].diagonal().sqrt(), 0.5)
        results.append((mask, admm_update(W, mask, admm_system_from_stats(stats))))
    for mask, fit in results[1:]:
        assert torch.equal(mask, results[0][0]) and torch.equal(fit, results[0][1])


def test_admm_system_is_built_once_per_input():
    """Linears reading one input (q/k/v) share stats: one system, the Hessian handed over, not copied."""
    _, X = layer_problem()
    stats = {"hessian": X.T @ X}
    first = admm_system_from_stats(stats)
    assert "hessian" not in stats and admm_system_from_stats(stats) is first
    assert torch.allclose(first.hessian_times(torch.eye(32)).diagonal(), torch.full((32,), 1.0 + first.damp),
                          atol=1e-5)


@pytest.mark.parametrize("layers,target", [(30, 0.5), (32, 0.7), (24, 0.2), (2, 0.9), (80, 0.7)])
def test_depth_ramp_mean_monotone_bounded(layers, target):
    """ATP Eq. 10 at several steps up to the largest allowed: mean = target, increasing by beta, each in [0, 1)."""
    limit, inclusive = depth_ramp_limit(layers, target)
    for beta in (0.0, limit / 3, limit * 0.999, limit if inclusive else limit * (1 - 1e-9)):
        ratios = depth_ramp_ratios(layers, target, beta)
        assert len(ratios) == layers
        assert abs(sum(ratios) / layers - target) < 1e-12
        assert all(0.0 <= r < 1.0 for r in ratios)
        steps = [b - a for a, b in zip(ratios, ratios[1:])]
        assert all(abs(s - beta) < 1e-12 for s in steps)


def test_depth_ramp_range_matches_the_paper_and_refuses_outside():
    """The paper's worked ranges: 32 layers at 70% -> beta <= 0.019 (2 * 0.3 / 31); beyond it, a clear error."""
    limit, inclusive = depth_ramp_limit(32, 0.7)
    assert limit == pytest.approx(0.6 / 31) and not inclusive
    assert depth_ramp_ratios(1, 0.6, 0.5) == [0.6]
    with pytest.raises(ValueError, match=r"beta 0.0194 is outside \[0, 0.0193548\)"):
        depth_ramp_ratios(32, 0.7, 0.0194)
    with pytest.raises(ValueError, match="beta -0.001"):
        depth_ramp_ratios(32, 0.7, -0.001)
    with pytest.raises(ValueError, match=r"outside \[0, 0.2\]"):
        depth_ramp_ratios(2, 0.1, 0.21)


def score_methods():
    from lib.methods import METHODS

    return sorted(name for name, m in METHODS.items() if m.score is not None)


@pytest.mark.parametrize("name", score_methods())
def test_gradual_admm_takes_every_registered_score(name):
    """Any registered per-weight score (selectivity, RIA, ...) chooses gradual ADMM's mask through the method's
    own collectors' statistics: 'spikiness + ADMM' is a configuration; the target is exact per row."""
    from lib.methods import METHODS

    method = METHODS[name]
    config = PruneConfig(prune_method=name)
    W, X = layer_problem(out=16, width=32)
    token_ids = torch.randint(0, 50, (4, 64), generator=torch.Generator().manual_seed(0))
    context = method.prepare(token_ids, config) if method.prepare is not None else {}
    stats: dict = {}
    for cls in method.collectors:
        collector = cls(32, config, **context)
        collector.add_batch(X.reshape(4, -1, 32), token_ids)
        stats.update(collector.finalize())
    H = X.T @ X
    fit, mask = gradual_admm(W, admm_system(H.clone()), 0.5, lambda V: method.score(V, stats, config))
    assert (mask.sum(dim=1) == 16).all() and (fit[mask] == 0).all()
    assert relative_layer_error(W, fit, H) < relative_layer_error(W, W * ~mask, H)
