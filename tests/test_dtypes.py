"""Half-precision models (bfloat16, float16) prune end to end with every method: statistics are summed in
float32/float64 whatever the weights' dtype, the weights keep their dtype, and the pruned model stays finite.

    python -m pytest -q tests/test_dtypes.py
"""
from __future__ import annotations

import pytest
import torch

from lib import PruneConfig, prune_model
from lib.methods import METHODS
from lib.sparsity import check_sparsity


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_prunes_a_half_precision_model(tiny_model, calib_ids, method, dtype):
    model = tiny_model("llama").to(dtype)
    prune_model(model, calib_ids, PruneConfig(prune_method=method, sparsity_type="2:4", nsamples=4))
    assert all(p.dtype == dtype for p in model.parameters())
    assert abs(check_sparsity(model)[0] - 0.5) < 0.01
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits.float()).all()
