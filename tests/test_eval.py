"""Perplexity with the output head applied a chunk of positions at a time equals the direct computation on every
tiny family (soft-capped Gemma2 logits included), and a family whose forward changes its logits in an unknown way
falls back to the whole logits."""
from __future__ import annotations

import logging

import pytest
import torch

import lib.eval
from conftest import ARCHS, MORE_ARCHS, direct_ppl, make_tiny_model
from lib.eval import eval_ppl, head_parts

SEQLEN = 24


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(7, 128, (1, 5 * SEQLEN + 3), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_chunked_head_equals_the_direct_computation(arch, ids, monkeypatch, caplog):
    model = make_tiny_model(arch, **({"final_logit_softcapping": 2.0} if arch == "gemma2" else {}))
    assert head_parts(model) is not None
    monkeypatch.setattr(lib.eval, "HEAD_CHUNK_LOGITS", 7 * 128)  # 7 positions a chunk: chunks cross windows
    with caplog.at_level(logging.WARNING, logger="lib.eval"):
        for bos_id in (None, 1):
            expected = direct_ppl(model, ids[0].tolist(), SEQLEN, 5, bos_id)
            assert eval_ppl(model, ids, SEQLEN, batch_size=2, bos_id=bos_id) == pytest.approx(expected, rel=1e-5)
    assert not caplog.records  # the chunked head was used, not the fallback


def test_unknown_logit_transform_falls_back_to_whole_logits(ids, caplog):
    model = make_tiny_model("llama")
    expected = direct_ppl(model, ids[0].tolist(), SEQLEN, 5, None)
    model.config.logit_scale = 3.0  # Llama's forward ignores it; finish_logits would not: the check must notice
    with caplog.at_level(logging.WARNING, logger="lib.eval"):
        assert eval_ppl(model, ids, SEQLEN, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert "evaluating with whole logits" in caplog.text
