"""Weight reconstruction for any mask by ADMM, and gradual ADMM pruning (Boza 2024, "Fast and Effective Weight
Update for Pruned Large Language Models"; the authors' code is fmfi-compbio/admm-pruning `lib/admm.py`).

For one linear with weight W [out, in] and calibration inputs X [tokens, in], both modes minimise the layer
objective ||X W^T - X W'^T||^2 over W' with W' = 0 where the mask prunes, row by row, through the Hessian
H = X^T X only (any positive multiple: SparseGPT's collector gives 2 X^T X / n_sequences). As upstream:
  - the problem is normalised: column j of W is scaled by d_j = sqrt(H_jj) and H by 1/(d_i d_j), so the
    normalised Hessian has unit diagonal and |W_ij| d_j is Wanda's score up to a constant;
  - it is damped by admm_damp times the normalised Hessian's mean diagonal (upstream's percdamp, 0.1), which
    in W's coordinates adds admm_damp * H_jj to H_jj (each input channel damped by its own energy);
  - ADMM splits W' into W (fit) and Z (masked), with penalty rho (1): Z = mask(W + U); U += W - Z;
    W = (H W0 + rho (Z - U)) (H + rho I)^-1, one inverse per input, and the result is the last Z.
The gradual mode re-selects the mask from the method's score of W + U during the first prune_steps iterations,
pruning s * (1 - (1 - t / prune_steps)^3) at step t = 1 .. prune_steps (upstream's cubic schedule), so the
last step prunes exactly the target.

Differences from upstream (RESULTS.md): masks use this project's mask function (True = pruned; per row, per
layer or N:M with any N, M; upstream hard-codes 2:4 and, in its default unstructured mode, prunes the full
target at every step: its cubic schedule is only on the per-output path); the score is the method's own
(so selectivity or RIA factors choose the mask), upstream's is |W + U| normalised; inputs no token ever reached
(H_jj = 0) are scaled by 1, not 1e-8; and rows where the last Z is worse on the undamped objective than the
masked original weights keep the masked original (ADMM after few iterations is not a descent guarantee).
Memory per linear: two [in, in] float32 matrices (the damped system's Cholesky factor and its inverse) and five
[out, in] float32 matrices, on the weight's device (RESULTS.md, "Reconstruction memory at 70B").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from lib.sparsity import lowest_k, make_mask

logger = logging.getLogger(__name__)

# (W + U [out, in] in W's coordinates) -> scores [out, in], low = pruned: the method's score.
MaskScore = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AdmmSystem:
    """One input's normalised, damped system; shared by the linears reading that input (q/k/v, gate/up).

    scale [in]: d_j = sqrt(H_jj) (1 for dead inputs); factor [in, in]: lower Cholesky factor L of
    A = D^-1 H D^-1 + (damp + rho) I; inverse [in, in]: A^-1; damp: the damping added to the normalised
    diagonal; rho: ADMM's penalty. The damped normalised Hessian is L L^T - rho I, so no third [in, in] matrix.
    """

    scale: torch.Tensor
    factor: torch.Tensor
    inverse: torch.Tensor
    damp: float
    rho: float

    def hessian_times(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [r, in] -> rows (D^-1 H D^-1 + damp I) [r, in] (normalised, damped Hessian; it is symmetric)."""
        return (rows @ self.factor) @ self.factor.T - self.rho * rows

    def row_objective(self, delta: torch.Tensor) -> torch.Tensor:
        """Per row i of normalised delta [out, in]: delta_i (D^-1 H D^-1) delta_i^T [out], undamped."""
        return (delta @ self.factor).pow_(2).sum(dim=1) - (self.rho + self.damp) * delta.pow(2).sum(dim=1)


def admm_system(hessian: torch.Tensor, admm_damp: float = 0.1, rho: float = 1.0) -> AdmmSystem:
    """H [in, in] (any positive multiple of X^T X, float32) -> the normalised, damped system.

    H is normalised in place and dropped after its Cholesky factor is taken: a caller that keeps no reference
    to it (admm_system_from_stats) has at most two [in, in] float32 matrices alive at any time.
    """
    if not admm_damp >= 0 or not rho > 0:
        raise ValueError(f"admm_damp {admm_damp} must be >= 0 and rho {rho} > 0")
    H = hessian if hessian.dtype == torch.float32 else hessian.float()
    del hessian
    diag = H.diagonal()
    scale = diag.sqrt()
    scale[diag <= 0] = 1.0
    H.div_(scale.unsqueeze(0)).div_(scale.unsqueeze(1))
    damp = admm_damp * float(H.diagonal().mean())
    H.diagonal().add_(damp + rho)
    factor = torch.linalg.cholesky(H)
    del H, diag
    return AdmmSystem(scale, factor, torch.cholesky_inverse(factor), damp, rho)


def admm_system_from_stats(stats: dict, admm_damp: float = 0.1, rho: float = 1.0) -> AdmmSystem:
    """The AdmmSystem of stats['hessian'] (lib.collectors.InputHessian, SparseGPT's), built once and cached in stats.

    Linears reading the same input (q/k/v, gate/up) share stats, so they share one system; the Hessian is
    popped (it becomes the system's), as sparsegpt.inverse_hessian_factor does.
    """
    if "admm_system" not in stats:
        stats["admm_system"] = admm_system(stats.pop("hessian"), admm_damp, rho)
    return stats["admm_system"]


def row_objective(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per row i: delta_i H delta_i^T [out], for delta [out, in] and H [in, in]."""
    return ((delta @ hessian) * delta).sum(dim=1)


def relative_layer_error(W: torch.Tensor, W_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||X W^T - X W_new^T||^2 / ||X W^T||^2 from H = c X^T X [in, in]; W, W_new [out, in]. In float64."""
    H = hessian.double()
    return float(row_objective((W - W_new).double(), H).sum() / row_objective(W.double(), H).sum())


def _iterate(W0n: torch.Tensor, system: AdmmSystem, keep: torch.Tensor | None, iterations: int,
             select: Callable[[int, torch.Tensor], torch.Tensor | None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM on normalised weights W0n [out, in] -> (Z [out, in], keep [out, in] bool, True = kept).

    select(step, W + U) -> keep, when given, replaces the mask at that step (None: keep the current one).
    Four [out, in] float32 buffers besides W0n: the fit target, W, U, and V (W + U, then Z, then the update).
    """
    target = system.hessian_times(W0n)
    W, U, V = W0n.clone(), torch.zeros_like(W0n), torch.empty_like(W0n)
    for step in range(iterations):
        torch.add(W, U, out=V)
        chosen = select(step, V) if select is not None else None
        if chosen is not None:
            keep = chosen
        Z = V.mul_(keep)
        U.add_(W).sub_(Z)
        torch.matmul(Z.sub_(U).mul_(system.rho).add_(target), system.inverse, out=W)
    del target
    return torch.add(W, U, out=V).mul_(keep), keep


def _unnormalise(Zn: torch.Tensor, W0n: torch.Tensor, keep: torch.Tensor, system: AdmmSystem,
                 dtype: torch.dtype) -> torch.Tensor:
    """Z [out, in] normalised -> W' in W's coordinates and dtype; rows worse than the masked W0 keep that."""
    worse = system.row_objective(Zn - W0n) > system.row_objective(W0n * ~keep)
    if worse.any():
        logger.info("ADMM: %d of %d rows kept the masked original weights (lower layer objective)",
                    int(worse.sum()), worse.numel())
        Zn[worse] = W0n[worse] * keep[worse]
    return Zn.div_(system.scale.unsqueeze(0)).to(dtype)


def admm_update(W: torch.Tensor, mask: torch.Tensor, system: AdmmSystem, iterations: int = 20) -> torch.Tensor:
    """Re-fit the kept weights of W [out, in] for a fixed mask [out, in] (True = pruned) -> W' [out, in].

    W' is zero where mask is True, in W's dtype; per row its layer objective is never above the masked W's.
    """
    if mask.shape != W.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight's {tuple(W.shape)}")
    W0n = W.float() * system.scale.unsqueeze(0)
    Zn, keep = _iterate(W0n, system, ~mask, iterations, None)
    return _unnormalise(Zn, W0n, keep, system, W.dtype)


def cubic_fraction(step: int, prune_steps: int) -> float:
    """Share of the target pruned at step (0-based) of prune_steps: 1 - (1 - (step + 1) / prune_steps)^3."""
    return 1.0 - (1.0 - (step + 1) / prune_steps) ** 3


def scheduled_mask(scores: torch.Tensor, sparsity: float, fraction: float, prune_n: int = 0, prune_m: int = 0,
                   group: str = "row") -> torch.Tensor:
    """scores [out, in] -> mask [out, in] (True = pruned) holding `fraction` of the target's pruned weights.

    Unstructured: the mask function at sparsity * fraction (per row or per layer). N:M: the lowest-scoring
    floor(fraction * count) of the N:M mask's weights over the whole layer (upstream's order), so fraction 1
    is exactly N of every M.
    """
    if not prune_n:
        return make_mask(scores, sparsity * fraction, group=group)
    candidates = make_mask(scores, sparsity, prune_n, prune_m)
    if fraction >= 1.0:
        return candidates
    count = int(fraction * int(candidates.sum()))
    return lowest_k(scores.masked_fill(~candidates, float("inf")).reshape(1, -1), count).reshape(scores.shape)


def gradual_admm(W: torch.Tensor, system: AdmmSystem, sparsity: float, score: MaskScore, prune_n: int = 0,
                 prune_m: int = 0, group: str = "row", iterations: int = 20,
                 prune_steps: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradual ADMM pruning of W [out, in] -> (W' [out, in] in W's dtype, mask [out, in], True = pruned).

    score(W + U) [out, in] (W's coordinates, low = pruned) chooses the mask at each of the first prune_steps
    iterations, on the cubic schedule; the mask of the last of them is the result's, exact per row / layer /
    N:M group as the mask function makes it.
    """
    if not 1 <= prune_steps <= iterations:
        raise ValueError(f"prune_steps {prune_steps} must be in [1, iterations={iterations}]")
    scale = system.scale.unsqueeze(0)

    def select(step: int, V: torch.Tensor) -> torch.Tensor | None:
        if step >= prune_steps:
            return None
        scores = score(V / scale)
        return ~scheduled_mask(scores, sparsity, cubic_fraction(step, prune_steps), prune_n, prune_m, group)

    W0n = W.float() * scale
    Zn, keep = _iterate(W0n, system, None, iterations, select)
    return _unnormalise(Zn, W0n, keep, system, W.dtype), ~keep
