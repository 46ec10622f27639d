"""SparseGPT (Frantar & Alistarh 2023): OBS reconstruction with lazy block updates, as in Wanda's sparsegpt.py.

Each column i, in order: zero the masked weights of column i and spread the error onto the columns to its
right through the inverse Hessian's Cholesky factor. The mask is chosen per block of `blocksize` columns
(unstructured: the lowest w^2 / [H^-1]_jj^2 over the whole block) or every M columns (N:M), on the weights
as updated so far. Counts are exact: floor(ratio * block size) per block, N per group of M.
"""
from __future__ import annotations

from typing import Callable

import torch

from lib.collectors import Collector, samples_and_rows
from lib.config import ConfigError, PruneConfig
from lib.registry import Method, register
from lib.sparsity import make_mask



class HessianCollector(Collector):
    """SparseGPT's layer Hessian H [in, in] = 2 X X^T / (number of calibration sequences)."""

    def __init__(self, in_features: int, config: PruneConfig) -> None:
        super().__init__(in_features, config)
        self.xxt = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        samples, rows = samples_and_rows(x)
        self.xxt = self.xxt.to(rows.device)
        self.xxt.addmm_(rows.t(), rows)
        self.nsamples += samples

    def finalize(self) -> dict[str, torch.Tensor]:
        return {"hessian": 2.0 * self.xxt / max(self.nsamples, 1)}


# (W columns [out, c], diag of H^-1 for them [c], first column index) -> scores [out, c], low = pruned.
BlockScore = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def obs_score(W_cols: torch.Tensor, hinv_diag: torch.Tensor, start: int) -> torch.Tensor:
    """SparseGPT's saliency w^2 / [H^-1]_jj^2 [out, c]."""
    return W_cols.pow(2) / hinv_diag.pow(2).unsqueeze(0)


def inverse_hessian_factor(H: torch.Tensor, W: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 [in, in]; dead inputs (H_jj = 0) get H_jj = 1 and W[:, j] = 0."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    H = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(H, upper=True)


def sparsegpt_reconstruct(W: torch.Tensor, H: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0,
                          blocksize: int = 128, percdamp: float = 0.01, mask: torch.Tensor | None = None,
                          block_score: BlockScore = obs_score) -> torch.Tensor:
    """W [out, in] float, H [in, in] -> reconstructed W [out, in] with the mask's weights at zero.

    mask: a fixed prune mask [out, in] (the 'seq' ablations); otherwise it is chosen per block with block_score.
    """
    W = W.clone().float()
    Hinv = inverse_hessian_factor(H.float().to(W.device), W, percdamp)
    ncols = W.shape[1]
    for i1 in range(0, ncols, blocksize):
        i2 = min(i1 + blocksize, ncols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        hinv_diag = torch.diag(Hinv1)
        if mask is not None:
            mask1 = mask[:, i1:i2]
        elif prune_n == 0:
            mask1 = make_mask(block_score(W1, hinv_diag, i1), sparsity, group="layer")
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if mask is None and prune_n and i % prune_m == 0:
                scores = block_score(W1[:, i:i + prune_m], hinv_diag[i:i + prune_m], i1 + i)
                mask1[:, i:i + prune_m] = make_mask(scores, sparsity, prune_n, prune_m)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def sparsegpt_update(W: torch.Tensor, stats: dict, config: PruneConfig) -> torch.Tensor:
    """Registry entry: SparseGPT with its own OBS saliency mask."""
    return sparsegpt_reconstruct(W, stats["hessian"], config.sparsity_ratio, config.prune_n, config.prune_m,
                                 config.blocksize, config.percdamp)


def check_blocksize(config: PruneConfig) -> None:
    """N:M groups must not straddle a block boundary."""
    if config.prune_m and config.blocksize % config.prune_m:
        raise ConfigError(f"blocksize {config.blocksize} must be a multiple of M={config.prune_m} "
                          f"for {config.sparsity_type}")

register(Method("sparsegpt", (HessianCollector,), update=sparsegpt_update, check=check_blocksize,
                help="OBS reconstruction, mask chosen per 128-column block"))
