"""Masks and reconstructions of every baseline method against references written from the papers.

The references do not use the driver: they prune layer by layer, reading each layer's exact inputs from a
full-model forward (earlier layers already pruned), and compute the published formulas directly.
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig, prune_model
from lib.config import ConfigError
from lib.collectors import InputSquares
from lib.methods import METHODS
from lib.methods.wanda import magnitude_score, wanda_score
from lib.models import find_decoder_layers, find_linears
from lib.sparsity import check_sparsity, make_mask, make_variant_mask
from conftest import ARCHS, MORE_ARCHS

TYPES = ("unstructured", "2:4", "4:8")


def test_hand_worked_activations_reverse_magnitude():
    # |W| = [4, 3, 2, 1]; ||X_j|| = [0.1, 0.1, 10, 10] -> Wanda scores [0.4, 0.3, 20, 10].
    W = torch.tensor([[4.0, -3.0, 2.0, -1.0]])
    stats = {"scaler_row": torch.tensor([0.01, 0.01, 100.0, 100.0])}
    config = PruneConfig(prune_method="wanda", sparsity_ratio=0.5)
    assert make_mask(magnitude_score(W, stats, config), 0.5, group="row").tolist() == [[False, False, True, True]]
    assert make_mask(wanda_score(W, stats, config), 0.5, group="row").tolist() == [[True, True, False, False]]
    assert make_mask(wanda_score(W, stats, config), 0.5, 2, 4).tolist() == [[True, True, False, False]]


def test_mask_counts_are_exact():
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(0))
    assert (make_mask(scores, 0.3, group="row").sum(1) == int(64 * 0.3)).all()
    assert make_mask(scores, 0.3, group="layer").sum() == int(16 * 64 * 0.3)
    nm = make_mask(scores, 0.5, 2, 4)
    assert (nm.reshape(-1, 4).sum(1) == 2).all()
    # The kept entries of each group are the largest ones.
    kept_min = scores.reshape(-1, 4).masked_fill(nm.reshape(-1, 4), float("inf")).min(1).values
    pruned_max = scores.reshape(-1, 4).masked_fill(~nm.reshape(-1, 4), -float("inf")).max(1).values
    assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [2, 5, 1000])
def test_unstructured_masks_are_the_stable_sorts_lowest(dtype, levels) -> None:
    # Oracle: the first k of a stable argsort. Masks are found by a selection (kthvalue) and a tie fill instead;
    # quantized scores (few levels) make ties the rule, as in Q4 checkpoints; -0.0, inf and NaN (sorted last) too.
    gen = torch.Generator().manual_seed(levels)
    scores = (torch.randint(0, levels, (12, 40), generator=gen) - levels // 2).to(dtype)
    scores[0, :3] = torch.tensor([-0.0, 0.0, float("inf")], dtype=dtype)
    with_nan = scores.clone()
    with_nan[1, 5] = float("nan")
    for s in (scores, with_nan):
        for ratio in (0.0, 0.1, 0.5, 0.7, 0.975, 1.0):
            k = int(40 * ratio)
            expected = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.argsort(dim=1, stable=True)[:, :k], True)
            assert torch.equal(make_mask(s, ratio, group="row"), expected)
            k = int(s.numel() * ratio)
            flat = torch.zeros(s.numel(), dtype=torch.bool).scatter_(0, s.flatten().argsort(stable=True)[:k], True)
            assert torch.equal(make_mask(s, ratio, group="layer"), flat.reshape(s.shape))


def test_nm_needs_width_multiple_of_m():
    with pytest.raises(ConfigError, match="60 input columns.*multiple of 8"):
        make_mask(torch.rand(4, 60), 0.5, 4, 8)


def test_wrapped_gpt_is_batch_split_invariant():
    x = torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(1)) * 3
    config = PruneConfig()
    one = InputSquares(16, config)
    one.add_batch(x)
    split = InputSquares(16, config)
    split.add_batch(x[:1])
    split.add_batch(x[1:])
    exact = x.reshape(-1, 16).double().pow(2).sum(0) / 3
    torch.testing.assert_close(one.finalize()["scaler_row"], exact.float())
    torch.testing.assert_close(split.finalize()["scaler_row"], exact.float())


# ---------------------------------------------------------------- references from the papers

def exact_inputs(model, layer, calib_ids) -> dict[str, torch.Tensor]:
    """Every input row [tokens, in] of each linear in `layer`, from full-model forwards (batch 1, like Wanda)."""
    rows = {name: [] for name in find_linears(layer)}
    handles = [lin.register_forward_hook(lambda m, i, o, n=name: rows[n].append(i[0].reshape(-1, i[0].shape[-1])))
               for name, lin in find_linears(layer).items()]
    with torch.no_grad():
        for k in range(calib_ids.shape[0]):
            model(calib_ids[k:k + 1], use_cache=False)
    for h in handles:
        h.remove()
    return {name: torch.cat(r).float() for name, r in rows.items()}


def ref_nm_mask(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Wanda's N:M loop: for each group of M columns, the N lowest entries."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    for start in range(0, metric.shape[1], m):
        idx = torch.topk(metric[:, start:start + m], n, dim=1, largest=False)[1]
        mask.scatter_(1, start + idx, True)
    return mask


def ref_unstructured(metric: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
    """Prune the lowest floor(ratio * group) entries per row (Wanda) or per matrix (magnitude)."""
    if per_row:
        k = int(metric.shape[1] * ratio)
        idx = torch.sort(metric, dim=1)[1][:, :k]
        return torch.zeros_like(metric, dtype=torch.bool).scatter_(1, idx, True)
    k = int(metric.numel() * ratio)
    thresh = torch.sort(metric.flatten())[0][k]
    return metric < thresh


def ref_obs(W, H, ratio, n, m, block_score=None, fixed_mask=None, blocksize=128, percdamp=0.01):
    """SparseGPT without lazy batching: every column's error is applied to all later columns at once."""
    W = W.clone().double()
    H = H.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    block_score = block_score or (lambda Wc, d, s: Wc.pow(2) / d.pow(2))
    mask = torch.zeros_like(W, dtype=torch.bool) if fixed_mask is None else fixed_mask.clone()
    for i in range(W.shape[1]):
        if fixed_mask is None and n == 0 and i % blocksize == 0:
            cols = slice(i, min(i + blocksize, W.shape[1]))
            metric = block_score(W[:, cols], torch.diag(Hinv)[cols], i)
            mask[:, cols] = ref_unstructured(metric, ratio, per_row=False)
        if fixed_mask is None and n and i % m == 0:
            cols = slice(i, i + m)
            mask[:, cols] = ref_nm_mask(block_score(W[:, cols], torch.diag(Hinv)[cols], i), n, m)
        w = W[:, i].clone()
        q = torch.where(mask[:, i], torch.zeros_like(w), w)
        err = (w - q) / Hinv[i, i]
        W[:, i:] -= err.unsqueeze(1) * Hinv[i, i:].unsqueeze(0)
        W[:, i] = q
    return W.float(), mask


def reference_prune(model, calib_ids, method: str, ratio: float, n: int, m: int, blocksize: int) -> None:
    """Prune `model` in place with the reference definitions, layer by layer."""
    for layer in find_decoder_layers(model):
        inputs = exact_inputs(model, layer, calib_ids)
        for name, linear in find_linears(layer).items():
            W = linear.weight.data.float()
            X = inputs[name]
            norm = X.norm(dim=0)  # ||X_j||_2 over all tokens
            H = 2 * X.t() @ X / calib_ids.shape[0]
            wanda_metric = W.abs() * norm
            if method in ("magnitude", "wanda"):
                metric = W.abs() if method == "magnitude" else wanda_metric
                mask = ref_nm_mask(metric, n, m) if n else ref_unstructured(metric, ratio, method == "wanda")
                linear.weight.data[mask] = 0
                continue
            if method == "sparsegpt":
                new, _ = ref_obs(W, H, ratio, n, m, blocksize=blocksize)
            elif method.endswith("_seq"):
                metric = wanda_metric if "wanda" in method else W.abs()
                mask = ref_nm_mask(metric, n, m) if n else ref_unstructured(metric, ratio, "wanda" in method)
                new, _ = ref_obs(W, H, ratio, n, m, fixed_mask=mask, blocksize=blocksize)
            else:  # _iter: the same metric re-chosen on the updated weights of each block
                use_norm = "wanda" in method
                new, _ = ref_obs(W, H, ratio, n, m, blocksize=blocksize,
                                 block_score=lambda Wc, d, s: Wc.abs() * (norm[s:s + Wc.shape[1]] if use_norm else 1))
            linear.weight.data = new


BASELINES = ("magnitude", "wanda", "sparsegpt", "ablate_mag_seq", "ablate_wanda_seq", "ablate_mag_iter",
             "ablate_wanda_iter")


@pytest.mark.parametrize("sparsity_type", TYPES)
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_equals_reference(tiny_model, calib_ids, method, sparsity_type):
    n, m = (0, 0) if sparsity_type == "unstructured" else map(int, sparsity_type.split(":"))
    ours, ref = tiny_model("llama"), tiny_model("llama")
    prune_model(ours, calib_ids, PruneConfig(prune_method=method, sparsity_ratio=0.5, sparsity_type=sparsity_type,
                                             nsamples=calib_ids.shape[0], blocksize=32))
    reference_prune(ref, calib_ids, method, 0.5, n, m, blocksize=32)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a == 0, b == 0), f"{method} {sparsity_type}: masks differ at {name}"
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"{method}: weights differ at {name}")


def ref_variant_mask(metric: torch.Tensor, target: float) -> torch.Tensor:
    """Wanda's appendix alpha search, transcribed from the paper's code path."""
    sort_res = torch.sort(metric, dim=-1, stable=True)
    cum = torch.cumsum(sort_res[0], dim=1)
    total = metric.sum(dim=1)

    def given(alpha):
        keep = (cum <= (total * alpha).reshape(-1, 1)).sum(dim=1, keepdim=True)
        thres = torch.gather(sort_res[0], 1, keep - 1)
        mask = metric <= thres
        return mask, mask.float().mean().item()

    alpha, hist = 0.4, [0.0, 0.8]
    mask, cur = given(alpha)
    while abs(cur - target) > 0.001 and hist[1] - hist[0] >= 0.001:
        if cur > target:
            new, hist[1] = (alpha + hist[0]) / 2, alpha
        else:
            new, hist[0] = (alpha + hist[1]) / 2, alpha
        alpha = new
        mask, cur = given(alpha)
    return mask


def test_variant_matches_wanda_alpha_search():
    metric = torch.rand(64, 256, generator=torch.Generator().manual_seed(3)) ** 3
    ours = make_variant_mask(metric, 0.5)
    assert torch.equal(ours, ref_variant_mask(metric, 0.5))
    assert abs(ours.float().mean().item() - 0.5) < 0.01


def row_zero_counts_ok(model, method: str, config: PruneConfig) -> None:
    """The promised zero pattern: N per M group; floor(ratio*cols) per row (row methods); per layer otherwise."""
    entry = METHODS[method]
    for layer in find_decoder_layers(model):
        for name, linear in find_linears(layer).items():
            zeros = linear.weight == 0
            if config.prune_n:
                assert (zeros.reshape(-1, config.prune_m).sum(1) == config.prune_n).all(), name
            elif config.use_variant:
                assert abs(zeros.float().mean().item() - config.sparsity_ratio) < 0.02, name
            elif entry.score is not None and entry.group == "row":
                assert (zeros.sum(1) == int(zeros.shape[1] * config.sparsity_ratio)).all(), name
            else:
                assert abs(zeros.float().mean().item() - config.sparsity_ratio) < 0.01, name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sparsity_type", TYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_end_to_end(tiny_model, calib_ids, method, sparsity_type, arch):
    check_end_to_end(tiny_model(arch), calib_ids, method, sparsity_type)


def check_end_to_end(model, calib_ids: torch.Tensor, method: str, sparsity_type: str) -> None:
    """Prune 50% with one registered method: the promised zero pattern, embeddings and head intact, finite."""
    config = PruneConfig(prune_method=method, sparsity_ratio=0.5, sparsity_type=sparsity_type, nsamples=4)
    embeddings = model.get_input_embeddings().weight.clone()
    head = model.get_output_embeddings().weight.clone()
    report = prune_model(model, calib_ids, config)
    row_zero_counts_ok(model, method, config)
    assert abs(check_sparsity(model)[0] - 0.5) < 0.01
    assert len(report.layer_sparsity) == 2
    # Embeddings and the LM head are never pruned.
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert torch.equal(model.get_output_embeddings().weight, head)
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


@pytest.mark.parametrize("arch", MORE_ARCHS)
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "wanda_select", "neuronrank_fisher"])
def test_current_decoder_families(tiny_model, calib_ids, method, sparsity_type, arch):
    model = tiny_model(arch)
    config = PruneConfig(prune_method=method, sparsity_ratio=0.5, sparsity_type=sparsity_type, nsamples=4)
    prune_model(model, calib_ids, config)
    row_zero_counts_ok(model, method, config)
    assert abs(check_sparsity(model)[0] - 0.5) < 0.01
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].supports_variant))
def test_variant_runs_and_hits_target(tiny_model, calib_ids, method):
    model = tiny_model("llama")
    config = PruneConfig(prune_method=method, sparsity_ratio=0.5, use_variant=True, nsamples=4)
    prune_model(model, calib_ids, config)
    row_zero_counts_ok(model, method, config)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibration_batch_size_does_not_change_the_result(tiny_model, calib_ids, arch, method):
    masks = []
    for batch in (1, 3, 0):
        model = tiny_model(arch)
        prune_model(model, calib_ids, PruneConfig(prune_method=method, sparsity_ratio=0.5, nsamples=8,
                                                  calib_batch_size=batch))
        masks.append([p == 0 for p in model.parameters()])
    for other in masks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(masks[0], other))
