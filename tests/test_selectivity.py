"""Selectivity (wanda_idf / wanda_spiky / wanda_select): streamed statistics against the exact computation,
batch-split invariance, a hand-built example where the factors overturn Wanda's choice, and every method
end to end on tiny models.

    python -m pytest -q tests/test_selectivity.py
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.config import ConfigError, PruneConfig
from lib.methods.selectivity import N_BINS, Scratch, InputAbsHistogram, bin_edges
from lib.methods import METHODS
from lib.methods.wanda import wanda_score
from lib.prune import prune_model
from lib.methods.selectivity import idf, idf_factor, spikiness_ratio, spiky_factor, summarize
from lib.sparsity import check_sparsity, make_mask
from conftest import make_tiny_model as tiny_model

VOCAB = 128
SEL_METHODS = ["wanda_idf", "wanda_spiky", "wanda_select"]


def calib_ids(nsamples: int = 4, seqlen: int = 32) -> torch.Tensor:
    """Random calibration ids [nsamples, seqlen]."""
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(1))


def heavy_tailed(tokens: int = 3000, channels: int = 96, seed: int = 0) -> torch.Tensor:
    """x [tokens, channels]: Student-t of 1.2 to 6 degrees of freedom at scales spread over ~4 decades, plus
    rare-spike channels, ReLU channels (exact zeros, some zero on over 90% of tokens) and one dead channel."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    scale = torch.exp(2.0 * torch.randn(channels, generator=gen))
    x = torch.distributions.StudentT(torch.linspace(1.2, 6.0, channels)).sample((tokens,)) * scale
    spikes = torch.rand(tokens, 16, generator=gen) < 0.03
    x[:, :16] = 0.01 * torch.randn(tokens, 16, generator=gen) + spikes * 5.0 * torch.randn(tokens, 16, generator=gen)
    x[:, 16:24] = torch.relu(torch.randn(tokens, 8, generator=gen) - 0.5)
    x[:, 24:26] = torch.relu(torch.randn(tokens, 2, generator=gen) - 2.0)
    x[:, 26] = 0.0
    return x


def exact(x: torch.Tensor, config: PruneConfig) -> dict[str, torch.Tensor]:
    """The oracle: every statistic from all tokens at once with torch.quantile, float64."""
    a = x.double().abs()
    tau = torch.quantile(a.flatten(), config.sel_tau_percentile)
    active_rate = (a > tau).double().mean(0)
    q = torch.quantile(a, config.sel_top_quantile, dim=0)
    top_mean = torch.stack([a[a[:, j] >= q[j], j].mean() for j in range(a.shape[1])])
    mean_abs = a.mean(0)
    return {"tau": tau, "active_rate": active_rate, "mean_abs": mean_abs, "top_mean": top_mean,
            "scaler_row": x.double().pow(2).sum(0),
            "idf": torch.log(1 / active_rate).clamp(0, config.sel_idf_clip_max),
            "spikiness": (top_mean / (mean_abs + 1e-10)).clamp(1, config.sel_spiky_clip_max)}


def collect(x: torch.Tensor, config: PruneConfig, batches: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Feed x [tokens, in] to a InputAbsHistogram, one [1, n, in] sequence per entry of `batches`."""
    collector = InputAbsHistogram(x.shape[1], config)
    for chunk in x.split(batches or [x.shape[0]]):
        collector.add_batch(chunk.unsqueeze(0))
    return with_factors(collector.finalize(), config)


def with_factors(stats: dict, config: PruneConfig) -> dict[str, torch.Tensor]:
    """The collector's statistics plus the unexponentiated IDF and R the scores use."""
    return {**stats, "idf": idf(stats, config), "spikiness": spikiness_ratio(stats, config)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tau_percentile,top_quantile", [(0.6, 0.9), (0.3, 0.75), (0.95, 0.99)])
def test_statistics_match_exact_quantiles(seed, tau_percentile, top_quantile):
    config = PruneConfig(prune_method="wanda_select", sel_tau_percentile=tau_percentile,
                         sel_top_quantile=top_quantile)
    x = heavy_tailed(seed=seed)
    got, want = collect(x, config, [700] * 4 + [200]), exact(x, config)
    assert got["scaler_row"].double() == pytest.approx(want["scaler_row"] / 5, rel=1e-5)  # Wanda: / sequences
    assert float(got["tau"]) == pytest.approx(float(want["tau"]), rel=0.02)
    assert (got["active_rate"].double() - want["active_rate"]).abs().max() <= 0.01
    assert got["mean_abs"].double() == pytest.approx(want["mean_abs"], rel=1e-5, abs=1e-12)
    live = want["mean_abs"] > 0
    rel = (got["top_mean"].double()[live] - want["top_mean"][live]).abs() / want["top_mean"][live]
    assert rel.max() <= 0.02
    assert float(got["top_mean"][~live].abs().max()) == 0.0
    # IDF within what 0.01 of active rate implies; R within what 2% on mu_top implies.
    p = want["active_rate"]
    idf_lo = torch.log(1 / (p + 0.01)).clamp(0, config.sel_idf_clip_max)
    idf_hi = torch.log(1 / (p - 0.01).clamp(min=0)).clamp(0, config.sel_idf_clip_max)
    idf = got["idf"].double()
    assert bool(((idf >= idf_lo - 1e-6) & (idf <= idf_hi + 1e-6)).all())
    assert got["spikiness"].double() == pytest.approx(want["spikiness"], rel=0.021)


def test_zero_heavy_layer_puts_tau_at_zero_and_counts_every_nonzero_as_active():
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(2000, 32, generator=gen) - 0.8)  # ~79% exact zeros: tau = 0
    config = PruneConfig(prune_method="wanda_idf")
    got, want = collect(x, config, [500] * 4), exact(x, config)
    assert float(got["tau"]) == float(want["tau"]) == 0.0
    torch.testing.assert_close(got["active_rate"].double(), want["active_rate"], rtol=0, atol=1e-7)
    assert got["top_mean"].double() == pytest.approx(want["top_mean"], rel=0.02)


def test_result_does_not_depend_on_batching():
    x, config = heavy_tailed(tokens=1200, channels=40, seed=2), PruneConfig(prune_method="wanda_select")
    one = collect(x, config)
    collector = InputAbsHistogram(x.shape[1], config)
    collector.add_batch(x[:1].unsqueeze(0))  # one token
    collector.add_batch(x[1:500].reshape(1, 499, -1))  # 3-D [1, seq, in]
    collector.add_batch(x[500:1200])  # 2-D [tokens, in]: counts as one sequence, like InputSquares
    uneven = with_factors(collector.finalize(), config)
    for name in ("tau", "active_rate", "mean_abs", "top_mean", "idf", "spikiness"):
        torch.testing.assert_close(uneven[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(uneven["scaler_row"] * 3, one["scaler_row"], rtol=1e-5, atol=1e-7)  # 3 sequences vs 1


def test_collectors_sharing_one_scratch_buffer_equal_collectors_without():
    # As in the driver: several linears' collectors take turns on one Scratch, with inputs of different widths.
    config = PruneConfig(prune_method="wanda_select")
    xs = [heavy_tailed(tokens=600, channels=c, seed=c) for c in (40, 32, 48)]
    scratch = Scratch()
    shared = [InputAbsHistogram(x.shape[1], config, scratch=scratch) for x in xs]
    for chunk in range(0, 600, 200):
        for collector, x in zip(shared, xs):
            collector.add_batch(x[chunk:chunk + 200].unsqueeze(0))
    for collector, x in zip(shared, xs):
        alone = collect(x, config)
        stats = collector.finalize()
        for name in ("tau", "active_rate", "mean_abs", "top_mean", "scaler_row"):
            torch.testing.assert_close(stats[name], alone[name] if name != "scaler_row" else alone[name] / 3,
                                       rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(xs[0], xs[0].abs())  # the inputs themselves are untouched


def test_memory_does_not_grow_with_tokens():
    config = PruneConfig(prune_method="wanda_idf")
    collector = InputAbsHistogram(24, config)
    for _ in range(5):
        collector.add_batch(torch.randn(1, 256, 24))
    state = [t for t in vars(collector).values() if isinstance(t, torch.Tensor)]
    per_channel = sum(t.numel() for t in state if t.shape[0] in (24, 24 * N_BINS)) / 24
    assert per_channel <= 1000, per_channel
    before = [t.shape for t in state]
    collector.add_batch(torch.randn(1, 4096, 24))
    assert [t.shape for t in vars(collector).values() if isinstance(t, torch.Tensor)] == before


def test_bins_are_contiguous_and_cover_every_float():
    lo, hi = bin_edges()
    assert torch.equal(lo[1:], hi[:-1]) and lo[0] == 0 and math.isinf(hi[-1])
    assert float((hi[1:-1] / lo[1:-1]).max()) <= 1 + 1 / 16 + 1e-12  # 16 bins per octave
    # Every bin index the bit trick produces holds values inside the bin's edges.
    values = torch.cat([torch.tensor([0.0, 1e-30, 2.0**-16, 0.5, 1.0, 2.0**14, 3e38]),
                        torch.logspace(-6, 5, 997)]).float()
    collector = InputAbsHistogram(1, PruneConfig(prune_method="wanda_idf"))
    for v in values:
        collector.add_batch(v.reshape(1, 1))
        k = int(collector.counts.nonzero().squeeze())
        assert lo[k] <= v.double() < hi[k] or (k == 0 and v < 2.0**-16), (float(v), k)
        collector.counts.zero_()


def test_values_beyond_the_bin_range():
    # Channel 0 lies entirely in the open top bin (>= 2**14), channel 1 entirely below 2**-16 (a point mass at 0
    # for the thresholds), channel 2 is constant: the channel maximum bounds the estimates.
    gen = torch.Generator().manual_seed(5)
    x = torch.stack([2e4 + 3e4 * torch.rand(1000, generator=gen), 1e-6 * torch.rand(1000, generator=gen),
                     torch.full((1000,), 1.03), torch.randn(1000, generator=gen)], dim=1)
    config = PruneConfig(prune_method="wanda_select")
    got, want = collect(x, config), exact(x, config)
    assert got["top_mean"][[0, 2, 3]].double() == pytest.approx(want["top_mean"][[0, 2, 3]], rel=0.02)
    assert got["mean_abs"].double() == pytest.approx(want["mean_abs"], rel=1e-5)
    assert float(got["active_rate"][0]) == 1.0 and float(got["active_rate"][1]) == 0.0
    assert float(got["spikiness"][1]) == 1.0  # quantile "0": every token counts as top, R = 1
    assert float(got["spikiness"][2]) == pytest.approx(1.0, abs=1e-6)


def test_layer_wide_tau_separates_channels():
    # With each channel's own 60th percentile every active rate is 0.4 and IDF is the constant log 2.5;
    # the layer-wide threshold keeps the scale differences.
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 1, 8)
    stats = collect(x, PruneConfig(prune_method="wanda_idf"))
    assert float(stats["active_rate"].mean()) == pytest.approx(0.4, abs=0.005)
    assert float(stats["idf"][0]) > 2.0 and float(stats["idf"][-1]) < 0.2
    assert bool((stats["idf"][1:] <= stats["idf"][:-1]).all())


def hand_built() -> torch.Tensor:
    """x [1000, 4]: ch0 dense (|x| ~ 1 on every token), ch1 a specialist (~2 on 20% of tokens, ~0 elsewhere),
    ch2 big and sometimes active (~7 on 30%), ch3 tiny. Wanda's norms: 1.0, 0.9, 3.8, 0.006."""
    gen = torch.Generator().manual_seed(0)
    u = lambda lo, hi, n=1000: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    on1, on2 = torch.arange(1000) % 5 == 0, torch.arange(1000) % 10 < 3
    return torch.stack([u(0.9, 1.1), torch.where(on1, u(1.8, 2.2), u(0, 0.005)),
                        torch.where(on2, u(6.0, 8.0), u(0, 0.005)), u(0, 0.01)], dim=1)


def test_factors_overturn_wanda_in_the_expected_direction():
    x = hand_built()
    stats = collect(x, PruneConfig(prune_method="wanda_select"), [250] * 4)
    # tau lies among the near-zero values (60% of all |x| are below 0.01), so the dense channel is active on
    # every token (IDF 0) and the specialist on 20% (IDF log 5); the specialist's top 10% is ~5x its mean.
    assert float(stats["tau"]) < 0.01
    assert float(stats["idf"][0]) == 0.0
    assert float(stats["idf"][1]) == pytest.approx(math.log(5), abs=0.05)
    assert float(stats["spikiness"][0]) == pytest.approx(1.09, abs=0.02)
    assert float(stats["spikiness"][1]) == pytest.approx(5.0, rel=0.05)
    W = torch.ones(2, 4)
    pruned = {}
    for method in ["wanda"] + SEL_METHODS:
        config = PruneConfig(prune_method=method)
        scores = METHODS[method].score(W, stats, config)
        pruned[method] = make_mask(scores, 0.5)[0].nonzero().flatten().tolist()
    assert pruned["wanda"] == [1, 3]  # the specialist's norm (0.9) is below the dense channel's (1.0)
    assert pruned["wanda_idf"] == pruned["wanda_spiky"] == pruned["wanda_select"] == [0, 3]


@pytest.mark.parametrize("method", SEL_METHODS)
def test_exponent_zero_is_wanda_and_exponents_move_continuously(method):
    x = heavy_tailed(tokens=500, channels=32)
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    stats = collect(x, PruneConfig(prune_method=method))
    zero = PruneConfig(prune_method=method, sel_idf_exp=0.0, sel_spiky_exp=0.0)
    torch.testing.assert_close(METHODS[method].score(W, stats, zero), wanda_score(W, stats, zero))
    half = PruneConfig(prune_method=method, sel_idf_exp=0.5, sel_spiky_exp=0.5)
    full = PruneConfig(prune_method=method)
    factor = {"wanda_idf": idf_factor(stats, full), "wanda_spiky": spiky_factor(stats, full),
              "wanda_select": idf_factor(stats, full) * spiky_factor(stats, full)}[method]
    torch.testing.assert_close(METHODS[method].score(W, stats, half), wanda_score(W, stats, half) * factor.sqrt())


def test_clip_limits_and_summary():
    x = hand_built()
    config = PruneConfig(prune_method="wanda_select", sel_idf_clip_max=1.0, sel_spiky_clip_max=2.0)
    stats = collect(x, config)
    assert float(idf_factor(stats, config).max()) <= 1.0 and float(spiky_factor(stats, config).max()) <= 2.0
    assert float(spiky_factor(stats, config).min()) >= 1.0
    summary = summarize(stats, config)
    assert summary["idf_zero_channels"] == 1 and summary["channels"] == 4
    assert summary["spikiness"]["max"] == pytest.approx(2.0)
    assert summary["tau"] == pytest.approx(float(stats["tau"]), rel=1e-5)


def test_idf_floor_spares_the_always_on_channel():
    # IDF 0 scores the dense channel's weights 0 however large they are, so its whole column goes; with a floor
    # of 1 a large weight on it (row 1: 3 x norm 1.0 = 3.0) outranks the specialist's (1 x 0.9 x log 5 = 1.45).
    stats = collect(hand_built(), PruneConfig(prune_method="wanda_idf"))
    W = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 1.0]])
    for clip_min, expected in [(0.0, [[0, 3], [0, 3]]), (1.0, [[0, 3], [1, 3]])]:
        config = PruneConfig(prune_method="wanda_idf", sel_idf_clip_min=clip_min)
        assert float(idf_factor(stats, config).min()) == pytest.approx(clip_min)
        mask = make_mask(METHODS["wanda_idf"].score(W, stats, config), 0.5)
        assert [row.nonzero().flatten().tolist() for row in mask] == expected
    with pytest.raises(ConfigError, match="sel_idf_clip_min 11"):
        PruneConfig(prune_method="wanda_idf", sel_idf_clip_min=11.0)


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5])
def test_quantile_flags_outside_open_unit_interval_are_rejected(value):
    with pytest.raises(ConfigError, match="sel_tau_percentile"):
        PruneConfig(prune_method="wanda_idf", sel_tau_percentile=value)
    with pytest.raises(ConfigError, match="sel_top_quantile"):
        PruneConfig(prune_method="wanda_idf", sel_top_quantile=value)


@pytest.mark.parametrize("variant", [False, True], ids=["plain", "variant"])
@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("method", SEL_METHODS)
def test_end_to_end(method, sparsity_type, arch, variant):
    model = tiny_model(arch)
    config = PruneConfig(prune_method=method, sparsity_ratio=0.5, sparsity_type=sparsity_type, nsamples=4,
                         use_variant=variant)
    report = prune_model(model, calib_ids(), config, record_stats=True)
    sparsity, per_layer = check_sparsity(model)
    if variant and sparsity_type == "unstructured":
        assert sparsity == pytest.approx(0.5, abs=0.01)  # the alpha search stops within its tolerance
    else:
        assert sparsity == pytest.approx(0.5, abs=1e-9)
    assert len(per_layer) == 2
    if config.prune_m:
        for layer in model.model.decoder.layers if arch == "opt" else model.model.layers:
            for linear in (m for m in layer.modules() if isinstance(m, nn.Linear)):
                zeros = (linear.weight == 0).reshape(-1, config.prune_m).sum(1)
                assert bool((zeros == config.prune_n).all())
    assert len(report.layer_stats) == 2 * (6 if arch == "opt" else 7)
    first = next(iter(report.layer_stats.values()))
    assert set(first) >= {"tau", "idf_zero_channels", "idf", "spikiness"}
    assert torch.isfinite(model(calib_ids()[:1]).logits).all()
