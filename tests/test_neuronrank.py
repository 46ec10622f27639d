"""NeuronRank: class statistics against hand-worked and exact oracles, scores, neuron removal, shrink + reload.

    python -m pytest -q tests/test_neuronrank.py
"""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from lib.config import ConfigError, PruneConfig
from lib.collectors import InputSquares
from lib.methods import METHODS, find_method
from lib.methods.wanda import wanda_score
from lib.models import find_decoder_layers, find_linears
from lib.methods.neuronrank import InputClassMoments, neuronrank_score, top_token_classes
from lib.structured import find_mlp, prune_neurons, score_channel_importance
from lib.prune import prune_model
from lib.sparsity import check_sparsity, make_mask
from conftest import MORE_ARCHS, make_tiny_model

VOCAB = 128
NR_METHODS = ["neuronrank", "neuronrank_fisher"]
NEURON_METHODS = sorted(name for name, method in METHODS.items() if method.prune_layer is not None)


def tiny_model(arch: str, kv_heads: int = 2) -> nn.Module:
    """conftest's tiny model; LLaMA with kv_heads key/value heads."""
    return make_tiny_model(arch, **({"num_key_value_heads": kv_heads} if arch == "llama" else {}))


def calib_ids(nsamples: int = 4, seqlen: int = 16) -> torch.Tensor:
    """Random calibration ids [nsamples, seqlen] with a skewed distribution, so top-K classes matter."""
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(nsamples, seqlen, generator=gen).pow(2) * VOCAB).long()


def collect(x: torch.Tensor, ids: torch.Tensor, class_ids: torch.Tensor, batches: list[slice]) -> dict:
    """Feed x [samples, seq, in] and ids [samples, seq] to a InputClassMoments in the given sequence batches."""
    collector = InputClassMoments(x.shape[-1], PruneConfig(prune_method="neuronrank"), class_ids=class_ids)
    for batch in batches:
        collector.add_batch(x[batch], ids[batch])
    return collector.finalize()


def exact_stats(x: torch.Tensor, ids: torch.Tensor, class_ids: torch.Tensor) -> dict:
    """The oracle: every statistic computed on all tokens at once, classes by explicit loop, float64."""
    x = x.double()
    rows, flat = x.reshape(-1, x.shape[-1]), ids.reshape(-1)
    out = {"nr_var": rows.var(0, unbiased=False), "nr_mean": rows.mean(0),
           "nr_sample_mean_var": x.mean(1).var(0, unbiased=False), "scaler_row": rows.pow(2).sum(0) / x.shape[0]}
    members = [rows[flat == c] for c in class_ids.tolist() if (flat == c).any()]
    classified = torch.cat(members)
    overall = classified.mean(0)
    out["nr_between"] = sum(len(m) * (m.mean(0) - overall).pow(2) for m in members) / len(classified)
    out["nr_within"] = sum((m - m.mean(0)).pow(2).sum(0) for m in members) / len(classified)
    return out


def test_top_token_classes_by_frequency_then_lower_id():
    ids = torch.tensor([[5, 5, 3, 3, 7, 1, 9, 9, 9]])
    assert top_token_classes(ids, 1).tolist() == [9]
    assert top_token_classes(ids, 3).tolist() == [3, 5, 9]
    assert top_token_classes(ids, 4).tolist() == [1, 3, 5, 9]  # 1 and 7 tie once; the lower id wins
    assert top_token_classes(ids, 100).tolist() == [1, 3, 5, 7, 9]
    assert top_token_classes(ids, 0).numel() == 0


def test_hand_worked_example_and_unclassified_tokens_stay_out():
    # Class 10: values 1, 3 (mean 2); class 20: values 5, 7 (mean 6); mean over classified tokens 4.
    # B = (2*(2-4)^2 + 2*(6-4)^2) / 4 = 4;  W = (1+1+1+1) / 4 = 1;  J = 4.  Token id 99 is outside K=2.
    x = torch.tensor([[[1.0], [3.0], [5.0], [7.0], [100.0]]])
    ids = torch.tensor([[10, 10, 20, 20, 99]])
    stats = collect(x, ids, torch.tensor([10, 20]), [slice(0, 1)])
    assert stats["nr_between"].item() == pytest.approx(4.0)
    assert stats["nr_within"].item() == pytest.approx(1.0)
    assert stats["nr_fisher"].item() == pytest.approx(4.0, rel=1e-5)
    assert stats["nr_class_tokens"].item() == 4
    values = torch.tensor([1.0, 3.0, 5.0, 7.0, 100.0], dtype=torch.float64)
    assert stats["nr_var"].item() == pytest.approx(values.var(unbiased=False).item(), rel=1e-6)


def test_fisher_is_high_for_a_class_channel_and_near_zero_for_noise():
    gen = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 8, (20, 200), generator=gen)
    class_means = torch.randn(8, generator=gen) * 3
    x = torch.stack([class_means[classes] + 0.1 * torch.randn(20, 200, generator=gen),  # mean set by the class
                     torch.randn(20, 200, generator=gen),  # noise
                     torch.zeros(20, 200)], dim=-1)  # dead channel
    stats = collect(x, classes, torch.arange(8), [slice(0, 20)])
    assert stats["nr_fisher"][0] > 100
    assert stats["nr_fisher"][1] < 0.01
    assert stats["nr_fisher"][2] == 0
    # Every token is classified here, so B + W is the token variance (law of total variance).
    torch.testing.assert_close(stats["nr_between"] + stats["nr_within"], stats["nr_var"], rtol=1e-5, atol=1e-6)


def test_streaming_in_uneven_batches_equals_exact():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 23, 6, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 50.0]) + 2.0
    ids = torch.randint(0, 12, (5, 23), generator=gen)
    class_ids = top_token_classes(ids, 5)
    uneven = collect(x, ids, class_ids, [slice(0, 1), slice(1, 4), slice(4, 5)])
    one_shot = collect(x, ids, class_ids, [slice(0, 5)])
    oracle = exact_stats(x, ids, class_ids)
    for name, expected in oracle.items():
        torch.testing.assert_close(uneven[name].double(), expected, rtol=1e-5, atol=1e-6, msg=name)
        # Batches are summed in float32 before the float64 totals: a split moves results by float32 round-off.
        torch.testing.assert_close(uneven[name], one_shot[name], rtol=1e-5, atol=1e-6, msg=name)
    wanda = InputSquares(6, PruneConfig())
    wanda.add_batch(x)
    torch.testing.assert_close(uneven["scaler_row"], wanda.finalize()["scaler_row"])


def test_factor_reverses_wandas_choice():
    # Equal activation norms: Wanda prunes the two smallest weights (columns 0, 1). Columns 0, 1 vary with the
    # token class and columns 2, 3 do not, so NeuronRank keeps 0, 1 and prunes 2, 3 instead.
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    stats = {"scaler_row": torch.ones(4), "nr_var": torch.tensor([5.0, 5.0, 0.01, 0.01]),
             "nr_between": torch.tensor([5.0, 5.0, 0.0, 0.0]), "nr_fisher": torch.tensor([8.0, 8.0, 0.0, 0.0])}
    for method in NR_METHODS:
        config = PruneConfig(prune_method=method)
        assert make_mask(wanda_score(W, stats, config), 0.5).tolist() == [[True, True, False, False]]
        assert make_mask(neuronrank_score(W, stats, config, factor=_factor(method)), 0.5).tolist() == \
            [[False, False, True, True]]
        # gamma = 0 is plain Wanda.
        flat = PruneConfig(prune_method=method, nr_exp=0.0)
        torch.testing.assert_close(neuronrank_score(W, stats, flat, factor=_factor(method)), wanda_score(W, stats, flat))


def _factor(method: str):
    from lib.methods.neuronrank import fisher_factor, variance_factor

    return fisher_factor if method == "neuronrank_fisher" else variance_factor


def test_neuron_importance_oracle():
    # One MLP 4 -> 8 -> 4; neuron importance = f_j^gamma * ||W_down[:, j]|| * ||X_j||.
    torch.manual_seed(0)
    block = nn.Module()
    block.mlp = nn.Module()
    block.mlp.up = nn.Linear(4, 8)
    block.mlp.down = nn.Linear(8, 4)
    linears = find_linears(block)
    f = torch.rand(8) + 0.1
    scaler = torch.rand(8) + 0.1
    stats = {"mlp.down": {"scaler_row": scaler, "nr_var": f, "nr_between": torch.zeros(8)}, "mlp.up": {}}
    config = PruneConfig(prune_method="neuronrank", nr_granularity="neuron", sparsity_ratio=0.5, nr_exp=2.0)
    expected = f.pow(2) * block.mlp.down.weight.norm(dim=0) * scaler.sqrt()
    dropped = sorted(expected.argsort()[:4].tolist())
    from lib.methods.neuronrank import neuronrank_score, variance_factor

    score = partial(neuronrank_score, factor=variance_factor)
    with torch.no_grad():
        prune_neurons(block, linears, stats, config,
                      importance=partial(score_channel_importance, score=score))
    zero_rows = (block.mlp.up.weight == 0).all(1).nonzero().flatten().tolist()
    zero_cols = (block.mlp.down.weight == 0).all(0).nonzero().flatten().tolist()
    assert zero_rows == zero_cols == dropped
    assert (block.mlp.up.bias[dropped] == 0).all()


def test_wanda_score_gives_its_column_factor_for_neurons():
    stats = {"scaler_row": torch.tensor([4.0, 9.0, 1.0])}
    got = score_channel_importance(stats, PruneConfig(), score=wanda_score)
    torch.testing.assert_close(got, torch.tensor([2.0, 3.0, 1.0]))


@pytest.mark.parametrize("arch", ["llama", "opt", "neox"])
def test_find_mlp_by_structure(arch):
    expected = {"llama": (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"), "opt": (["fc1"], "fc2"),
                "neox": (["mlp.dense_h_to_4h"], "mlp.dense_4h_to_h")}[arch]
    model = tiny_model(arch, kv_heads=4)  # square k/v projections must not look like an MLP
    ups, down = find_mlp(find_linears(find_decoder_layers(model)[0]))
    assert (sorted(ups), down) == expected


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", NR_METHODS)
@pytest.mark.parametrize("setting", ["weight_unstructured", "weight_2:4", "weight_variant", "neuron", "neuron_shrink"])
def test_end_to_end(method, setting, arch):
    model = tiny_model(arch)
    granularity, _, kind = setting.partition("_")
    kwargs = dict(prune_method=method, nsamples=4, nr_granularity=granularity, neuronrank_max_classes=16)
    if kind == "2:4":
        kwargs.update(sparsity_type="2:4", sparsity_ratio=0.5)
    elif granularity == "neuron":
        kwargs.update(sparsity_ratio=0.25, shrink=kind == "shrink")
    else:
        kwargs.update(sparsity_ratio=0.5, use_variant=kind == "variant")
    report = prune_model(model, calib_ids(), PruneConfig(**kwargs))
    layers = find_decoder_layers(model)
    if kind == "2:4":
        for linear in find_linears(layers[0]).values():
            assert ((linear.weight == 0).reshape(-1, 4).sum(1) >= 2).all()
    elif kind == "unstructured":
        assert check_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)
    elif kind == "variant":
        assert check_sparsity(model)[0] == pytest.approx(0.5, abs=0.01)
    else:
        for layer in layers:
            ups, down = find_mlp(find_linears(layer))
            down_weight = find_linears(layer)[down].weight
            if kind == "shrink":
                assert down_weight.shape[1] == 96
            else:
                assert (down_weight == 0).all(0).sum().item() == 32
        # MLP neurons removed: 32 of 128 in each of 2 or 3 linears, against all of the layer's weights.
        assert 0 < report.sparsity < 0.25
    with torch.no_grad():
        logits = model(calib_ids()[:1]).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["llama", "opt", "neox"])
@pytest.mark.parametrize("method", NR_METHODS)
def test_shrunk_model_reloads_smaller_with_the_masked_models_logits(method, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    masked, shrunk = tiny_model(arch), tiny_model(arch)
    dense_params = sum(p.numel() for p in masked.parameters())
    common = dict(prune_method=method, nsamples=4, sparsity_ratio=0.25, nr_granularity="neuron",
                  neuronrank_max_classes=16)
    masked_report = prune_model(masked, calib_ids(), PruneConfig(**common))
    shrunk_report = prune_model(shrunk, calib_ids(), PruneConfig(**common, shrink=True))
    assert shrunk_report.layer_sparsity == pytest.approx(masked_report.layer_sparsity)
    shrunk.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ups, down = find_mlp(find_linears(find_decoder_layers(reloaded)[0]))
    layer = find_linears(find_decoder_layers(reloaded)[1])
    assert layer[down].weight.shape == (64, 96)
    assert all(layer[name].weight.shape == (96, 64) for name in ups)
    per_neuron = 64 * (len(ups) + 1) + (len(ups) if layer[ups[0]].bias is not None else 0)
    assert sum(p.numel() for p in reloaded.parameters()) == dense_params - 2 * 32 * per_neuron
    ids = calib_ids()[:2]
    with torch.no_grad():
        expected = masked(ids).logits
        torch.testing.assert_close(shrunk(ids).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", NEURON_METHODS)
def test_every_neuron_method_shrinks_to_its_masked_model(method, arch):
    masked, shrunk = tiny_model(arch), tiny_model(arch)
    common = dict(prune_method=method, nsamples=4, sparsity_ratio=0.25, nr_granularity="neuron")
    masked_report = prune_model(masked, calib_ids(), PruneConfig(**common))
    shrunk_report = prune_model(shrunk, calib_ids(), PruneConfig(**common, shrink=True))
    assert shrunk_report.layer_sparsity == pytest.approx(masked_report.layer_sparsity)
    for layer in find_decoder_layers(masked):
        ups, down = find_mlp(find_linears(layer))
        assert (find_linears(layer)[down].weight == 0).all(0).sum().item() == 32
    ids = calib_ids()[:2]
    with torch.no_grad():
        torch.testing.assert_close(shrunk(ids).logits, masked(ids).logits, rtol=1e-4, atol=1e-5)


def test_wanda_neurons_are_neuronrank_with_exponent_zero():
    by_wanda, by_neuronrank = tiny_model("llama"), tiny_model("llama")
    common = dict(nsamples=4, sparsity_ratio=0.25, nr_granularity="neuron")
    prune_model(by_wanda, calib_ids(), PruneConfig(prune_method="wanda", **common))
    prune_model(by_neuronrank, calib_ids(), PruneConfig(prune_method="neuronrank", nr_exp=0.0, **common))
    for a, b in zip(by_wanda.parameters(), by_neuronrank.parameters()):
        assert torch.equal(a == 0, b == 0)


def test_shrink_does_not_touch_the_model_it_was_copied_from():
    model = tiny_model("llama")
    original = copy.deepcopy(model)
    prune_model(model, calib_ids(), PruneConfig(prune_method="neuronrank", nsamples=4, sparsity_ratio=0.5,
                                                nr_granularity="neuron", shrink=True))
    assert model.config.intermediate_size == 64
    assert original.config.intermediate_size == 128


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune_method="neuronrank_fisher", neuronrank_max_classes=0), "--neuronrank_max_classes 0 gives fewer than 2"),
    (dict(prune_method="neuronrank", nr_granularity="neuron", sparsity_type="2:4"), "sparsity_type 2:4"),
    (dict(prune_method="neuronrank", nr_granularity="neuron", use_variant=True), "drop --use_variant"),
    (dict(prune_method="magnitude", nr_granularity="neuron"), "not 'magnitude'"),
    (dict(prune_method="neuronrank", shrink=True), "--shrink"),
    (dict(prune_method="neuronrank", nr_exp=-1.0), "nr_exp -1.0"),
])
def test_settings_neuronrank_cannot_honour(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        find_method(PruneConfig(**kwargs))
    assert "\n" not in str(err.value)


def test_neuronrank_without_classes_is_the_variance_factor():
    model = tiny_model("llama")
    report = prune_model(model, calib_ids(), PruneConfig(prune_method="neuronrank", nsamples=4,
                                                          neuronrank_max_classes=0), record_stats=True)
    stats = report.layer_stats["layers.0.mlp.down_proj"]
    assert stats["nr_class_tokens"] == 0 and stats["nr_between"] == 0
    assert check_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("arch", [a for a in MORE_ARCHS if a != "phi3"])
def test_shrink_on_current_decoder_families_reloads_with_the_masked_logits(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    masked, shrunk = make_tiny_model(arch), make_tiny_model(arch)
    common = dict(prune_method="neuronrank", nsamples=4, sparsity_ratio=0.25, nr_granularity="neuron",
                  neuronrank_max_classes=16)
    prune_model(masked, calib_ids(), PruneConfig(**common))
    prune_model(shrunk, calib_ids(), PruneConfig(**common, shrink=True))
    shrunk.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ups, down = find_mlp(find_linears(find_decoder_layers(reloaded)[0]))
    width = find_linears(find_decoder_layers(masked)[0])[down].in_features
    assert find_linears(find_decoder_layers(reloaded)[0])[down].in_features == width - width // 4
    ids = calib_ids()[:2]
    with torch.no_grad():
        expected = masked(ids).logits
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_fused_gate_up_is_a_clear_error_at_neuron_granularity():
    # Phi-3 fuses gate and up into one linear: the neuron j of gate and of up are rows j and j + width of it.
    with pytest.raises(ConfigError, match="exactly one MLP per decoder layer"):
        prune_model(make_tiny_model("phi3"), calib_ids(), PruneConfig(prune_method="wanda", nsamples=4,
                                                                         sparsity_ratio=0.25, nr_granularity="neuron"))
