"""Does the driver feed every decoder layer what the model's own forward feeds it? (a check on a real model)

    WANDA_DATA_DIR=../shared/data .venv/bin/python scripts/investigations/check_layer_inputs.py --model gemma3-270m --seqlen 600

Propagates WikiText-2 test windows layer by layer exactly as the pruning driver does (capture, then each layer
with its own recorded arguments) and compares every layer's output with the same layer's output inside the
model's forward: relative L2 difference per layer. On Gemma 3 (sliding-window layers with a 512-token window and
local rotary tables, full-attention layers every sixth) windows longer than 512 tokens exercise both masks.
"""
from __future__ import annotations

import argparse

import torch

from lib.prune import capture_layer_inputs, hidden_of, propagate


@torch.no_grad()
def forward_with_hooks(model, ids: torch.Tensor, handles: list) -> None:
    """The model's own forward over each row of ids [n, seqlen], one at a time, then remove the hooks' handles."""
    try:
        for row in ids:
            model(row[None], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def model_layer_outputs(model, layers, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's output [n, seqlen, hidden] inside the model's own forward (the oracle)."""
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    forward_with_hooks(model, ids, [layer.register_forward_hook(lambda m, a, o, i=i: outputs[i].append(hidden_of(o)))
                                    for i, layer in enumerate(layers)])
    return [torch.cat(out) for out in outputs]


@torch.no_grad()
def driver_differences(model, layers, ids: torch.Tensor, batch: int = 2) -> list[float]:
    """Relative L2 difference, per layer, between the driver's dense propagation and the model's forward."""
    want = model_layer_outputs(model, layers, ids)
    inps, layer_kwargs = capture_layer_inputs(model, layers, ids)
    outs = torch.empty_like(inps)
    differences = []
    for i, layer in enumerate(layers):
        propagate(layer, inps, outs, layer_kwargs[i], batch)
        inps, outs = outs, inps
        differences.append(((inps.float() - want[i].float()).norm() / want[i].float().norm()).item())
    return differences


def main() -> None:
    from lib.data import get_wikitext2_test_ids, resolve_data_dir
    from lib.models import find_decoder_layers, load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seqlen", type=int, default=600)
    p.add_argument("--windows", type=int, default=2)
    args = p.parse_args()
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    ids = get_wikitext2_test_ids(tokenizer, resolve_data_dir(None))[0, :args.windows * args.seqlen]
    layers = find_decoder_layers(model)
    types = getattr(model.config, "layer_types", None) or ["-"] * len(layers)
    print(f"# {args.model}: {len(layers)} layers, {args.windows} WikiText-2 test windows of {args.seqlen} tokens")
    for i, (diff, kind) in enumerate(zip(driver_differences(model, layers, ids.reshape(args.windows, -1)), types)):
        print(f"layer {i:>2} {kind:<18} relative difference {diff:.2e}")


if __name__ == "__main__":
    main()
