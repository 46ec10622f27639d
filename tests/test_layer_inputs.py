"""Each decoder layer gets the arguments the model's own forward gives it (oracle: the model's forward).

Sliding-window and full-attention layers get different masks (Gemma2/3, Qwen2 and Mistral with a window, any
config with layer_types), Gemma3's local and global layers different rotary tables; the calibration windows
here are longer than the attention window, so reusing one layer's arguments for all would show.

    python -m pytest -q tests/test_layer_inputs.py
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig, prune_model
from lib.models import find_decoder_layers
from check_layer_inputs import driver_differences  # scripts/
from lib.prune import capture_layer_inputs, to_device
from conftest import make_tiny_model
from test_methods import reference_prune

WINDOW = 8
SEQLEN = 40


def sliding_model(arch: str):
    """A 4-layer tiny model whose attention window (8) is shorter than the calibration windows (40)."""
    if arch == "gemma3":
        import transformers

        torch.manual_seed(0)
        config = transformers.Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=128, max_position_embeddings=256, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
            pad_token_id=0, bos_token_id=1, eos_token_id=1)
        return transformers.Gemma3ForCausalLM(config).eval()
    extra = {"gemma2": {"sliding_window": WINDOW},
             "mistral": {"sliding_window": WINDOW},
             "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2,
                       "layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]},
             }.get(arch, {})
    return make_tiny_model(arch, num_hidden_layers=4, **extra)


ARCHS = ["gemma3", "gemma2", "qwen2", "mistral", "llama", "opt", "neox", "falcon", "phi3"]


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_dense_propagation_equals_the_models_forward(arch):
    model = sliding_model(arch)
    ids = torch.randint(2, 128, (3, SEQLEN), generator=torch.Generator().manual_seed(0))
    differences = driver_differences(model, find_decoder_layers(model), ids)
    assert max(differences) < 1e-5, f"{arch}: relative differences per layer {differences}"


def test_layers_of_a_type_share_their_arguments():
    model = sliding_model("gemma3")
    layers = find_decoder_layers(model)
    _, layer_kwargs = capture_layer_inputs(model, layers, torch.randint(2, 128, (1, SEQLEN)))
    local, glob = layer_kwargs[0]["position_embeddings"][0], layer_kwargs[1]["position_embeddings"][0]
    assert not torch.equal(local, glob)  # local and global rotary tables differ
    assert layer_kwargs[2]["position_embeddings"][0] is local and layer_kwargs[3]["position_embeddings"][0] is glob


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_pruning_a_sliding_window_model_equals_the_reference(method):
    ids = torch.randint(2, 128, (4, SEQLEN), generator=torch.Generator().manual_seed(1))
    ours, ref = sliding_model("gemma3"), sliding_model("gemma3")
    prune_model(ours, ids, PruneConfig(prune_method=method, nsamples=4, blocksize=32))
    reference_prune(ref, ids, method, 0.5, 0, 0, blocksize=32)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a == 0, b == 0), f"{method}: masks differ at {name}"


def test_to_device_moves_nested_tensors_once():
    shared = torch.ones(1)
    moved = to_device([{"a": (shared, [torch.zeros(1)]), "b": 3}, {"a": (shared,)}], torch.device("meta"), memo := {})
    assert moved[0]["a"][0].device.type == "meta" and moved[0]["a"][1][0].device.type == "meta"
    assert moved[0]["b"] == 3 and moved[1]["a"][0] is moved[0]["a"][0] and len(memo) == 2


def test_the_layer_walk_keeps_no_autograd_graph(calib_ids):
    """A script that walks the layers itself, with autograd on (not through prune_model's no_grad), must not keep
    every layer's graph through the activation buffers (15.7 GiB by layer 10 of smollm2 with 128 windows)."""
    from lib.collectors import InputSquares
    from lib.models import find_linears
    from lib.prune import calibrate, layer_walk

    model = make_tiny_model("llama", num_hidden_layers=3)
    assert torch.is_grad_enabled()
    seen = 0
    for i, layer, inps, kwargs in layer_walk(model, find_decoder_layers(model), calib_ids, True, 4, None, False, "t"):
        assert not inps.requires_grad and inps.grad_fn is None, f"layer {i}'s inputs carry the graph before it"
        stats = calibrate(layer, find_linears(layer), inps, kwargs, calib_ids, (InputSquares,), PruneConfig(), {}, 4)
        assert not any(t.requires_grad for linear in stats.values() for t in linear.values())
        seen += 1
    assert seen == 3
