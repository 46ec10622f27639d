"""Named evaluation protocols: the calibration and evaluation sizes a table was measured with, defined once.

    python main.py --protocol quick ...        # flags given on the command line still override the protocol

A protocol is plain data: setting names (fields of RunConfig / PruneConfig) and the values it gives them.
The Makefile, the experiment grids, the benchmarks and the docs name a protocol instead of copying its numbers.
"""
from __future__ import annotations

from typing import Any

PROTOCOLS: dict[str, dict[str, Any]] = {
    # make run: a minute or two on 2 CPU cores for the embedded model.
    "quick": {"nsamples": 32, "seqlen": 512, "eval_limit": 16, "eval_batch_size": 4, "bos": "auto"},
    # The method comparisons in RESULTS.md: many runs x seeds on a CPU.
    "experiment": {"nsamples": 16, "seqlen": 256, "eval_limit": 32, "eval_batch_size": 8, "bos": "auto"},
    # Wanda's paper: 128 C4 windows of min(2048, model maximum) tokens, the whole WikiText-2 test split, each
    # text tokenised once as it is (no BOS per window beyond the tokenizer's own at the start of a text).
    "wanda": {"nsamples": 128, "seqlen": None, "eval_limit": None, "calib_dataset": "c4", "eval_split": "test",
              "bos": "never"},
}


def protocol_settings(name: str | None) -> dict[str, Any]:
    """The settings of protocol `name` ({} for None); a ValueError naming the choices for an unknown name."""
    if name is None:
        return {}
    if name not in PROTOCOLS:
        raise ValueError(f"protocol '{name}' is not one of {sorted(PROTOCOLS)}")
    return dict(PROTOCOLS[name])
