"""Wanda's ablations: SparseGPT's reconstruction with magnitude or Wanda masks.

seq:  the mask is chosen once on the original weights (magnitude per layer, Wanda per row), then fixed
      while the reconstruction updates the kept weights.
iter: the mask is re-chosen per block of `blocksize` columns on the weights as updated so far, with the
      block as the comparison group (as SparseGPT chooses its own), N per M for N:M.
"""
from __future__ import annotations

from functools import partial

import torch

from lib.config import PruneConfig
from lib.collectors import InputHessian, InputSquares
from lib.methods.sparsegpt import check_blocksize, sparsegpt_reconstruct
from lib.methods.wanda import magnitude_score, wanda_score
from lib.registry import Method, register
from lib.sparsity import make_mask


def _block_score(W_cols: torch.Tensor, hinv_diag: torch.Tensor, start: int, use_wanda: bool,
                 scaler_row: torch.Tensor | None) -> torch.Tensor:
    """|W| or |W| * ||X|| on a slice of columns [out, c] starting at column `start`."""
    if not use_wanda:
        return W_cols.abs()
    return W_cols.abs() * scaler_row[start:start + W_cols.shape[1]].to(W_cols.device).sqrt().unsqueeze(0)


def _ablate(W: torch.Tensor, stats: dict, config: PruneConfig, use_wanda: bool, iterative: bool) -> torch.Tensor:
    """Reconstruction with a magnitude/Wanda mask, fixed (seq) or re-chosen per block (iter)."""
    common = dict(sparsity=config.sparsity_ratio, prune_n=config.prune_n, prune_m=config.prune_m,
                  blocksize=config.blocksize, percdamp=config.percdamp)
    if iterative:
        score = partial(_block_score, use_wanda=use_wanda, scaler_row=stats.get("scaler_row"))
        return sparsegpt_reconstruct(W, stats, block_score=score, **common)
    scores = wanda_score(W, stats, config) if use_wanda else magnitude_score(W, stats, config)
    mask = make_mask(scores, config.sparsity_ratio, config.prune_n, config.prune_m,
                     group="row" if use_wanda else "layer")
    return sparsegpt_reconstruct(W, stats, mask=mask, **common)


for _name, _wanda, _iter in [("ablate_mag_seq", False, False), ("ablate_wanda_seq", True, False),
                             ("ablate_mag_iter", False, True), ("ablate_wanda_iter", True, True)]:
    register(Method(_name, (InputHessian, InputSquares) if _wanda else (InputHessian,),
                    update=partial(_ablate, use_wanda=_wanda, iterative=_iter), check=check_blocksize,
                    help=f"SparseGPT reconstruction, {'wanda' if _wanda else 'magnitude'} mask "
                         f"{'re-chosen per block' if _iter else 'fixed'}"))
