"""SparseGPT (Frantar & Alistarh 2023): OBS reconstruction with lazy block updates, as in Wanda's sparsegpt.py.

Each column i, in order: zero the masked weights of column i and spread the error onto the columns to its
right through the inverse Hessian's Cholesky factor. The mask is chosen per block of `blocksize` columns
(unstructured: the lowest w^2 / [H^-1]_jj^2 over the whole block) or every M columns (N:M), on the weights
as updated so far. Counts are exact: floor(ratio * block size) per block, N per group of M.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from lib.collectors import InputHessian
from lib.config import ConfigError, PruneConfig, Settings, register_settings, setting
from lib.errors import RunError
from lib.registry import Method, register
from lib.sparsity import make_mask



@register_settings
@dataclass(frozen=True)
class SparseGPTSettings(Settings):
    """SparseGPT's reconstruction settings, read by sparsegpt and the ablate_* methods."""

    group: ClassVar[str] = "SparseGPT reconstruction (sparsegpt, ablate_*)"
    blocksize: int = setting(128, "columns per lazy update block (N:M: a multiple of M; at most the widest "
                                  "linear)", bounds="positive")
    # 0 leaves a rank-deficient Hessian without dampening (Cholesky fails); above 1 the damping outweighs the data
    # and SparseGPT degenerates to magnitude pruning.
    percdamp: float = setting(0.01, "dampening, as a fraction of the mean of diag(H)", bounds="(0, 1]",
                              note="SparseGPT's default is 0.01")

    def check_layer(self, linears: dict) -> None:
        """--blocksize no wider than the widest linear (or the default): a larger value is a typo, and values in
        the millions allocate [out, blocksize] buffers. The default stays valid on models narrower than it."""
        name, widest = max(((n, lin.in_features) for n, lin in linears.items()), key=lambda x: x[1])
        limit = max(widest, type(self).__dataclass_fields__["blocksize"].default)
        if self.blocksize > limit:
            raise ConfigError(f"blocksize {self.blocksize} exceeds the widest linear ('{name}', {widest} input "
                              f"columns); use --blocksize <= {limit}")


# (W columns [out, c], diag of H^-1 for them [c], first column index) -> scores [out, c], low = pruned.
BlockScore = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def obs_score(W_cols: torch.Tensor, hinv_diag: torch.Tensor, start: int) -> torch.Tensor:
    """SparseGPT's saliency w^2 / [H^-1]_jj^2 [out, c]."""
    return W_cols.pow(2) / hinv_diag.pow(2).unsqueeze(0)


def inverse_hessian_factor(stats: dict, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (upper Cholesky factor of (H + damp I)^-1 [in, in], dead inputs [in] bool), from stats['hessian'].

    Dead inputs (H_jj = 0) get H_jj = 1 (their weights are zeroed by the caller). Computed once per input and
    kept in stats, which linears reading the same input (q/k/v, gate/up) share: H is damped in place and
    dropped, so the layer's peak is about two [in, in] matrices, not one per linear plus copies.
    """
    if "hessian_factor" not in stats:
        H = stats.pop("hessian").float()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        damp = percdamp * torch.mean(torch.diag(H))
        H.diagonal().add_(damp)
        try:
            lower = torch.linalg.cholesky(H)
        except torch.linalg.LinAlgError as err:
            raise RunError(f"SparseGPT: a layer's Hessian is not positive definite even with percdamp {percdamp} "
                           f"({str(err).splitlines()[0][:80]}); raise --percdamp or --nsamples") from err
        del H
        inverse = torch.cholesky_inverse(lower)
        del lower
        stats["hessian_factor"], stats["hessian_dead"] = torch.linalg.cholesky(inverse, upper=True), dead
    return stats["hessian_factor"], stats["hessian_dead"]


def sparsegpt_reconstruct(W: torch.Tensor, stats: dict, sparsity: float, prune_n: int = 0, prune_m: int = 0,
                          blocksize: int = 128, percdamp: float = 0.01, mask: torch.Tensor | None = None,
                          block_score: BlockScore = obs_score) -> torch.Tensor:
    """W [out, in] float, stats with the input's Hessian -> reconstructed W [out, in], the mask's weights at zero.

    mask: a fixed prune mask [out, in] (the 'seq' ablations); otherwise it is chosen per block with block_score.
    """
    W = W.clone().float()
    Hinv, dead = inverse_hessian_factor(stats, percdamp)
    Hinv, dead = Hinv.to(W.device), dead.to(W.device)
    W[:, dead] = 0
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
    return sparsegpt_reconstruct(W, stats, config.sparsity_ratio, config.prune_n, config.prune_m,
                                 config.blocksize, config.percdamp)


def check_blocksize(config: PruneConfig) -> None:
    """N:M groups must not straddle a block boundary."""
    if config.prune_m and config.blocksize % config.prune_m:
        raise ConfigError(f"blocksize {config.blocksize} must be a multiple of M={config.prune_m} "
                          f"for {config.sparsity_type}")

register(Method("sparsegpt", (InputHessian,), update=sparsegpt_update, check=check_blocksize,
                caches=("hessian_factor", "hessian_dead"),
                help="OBS reconstruction, mask chosen per 128-column block"))
