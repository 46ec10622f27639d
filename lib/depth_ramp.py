"""Depth-ramp layer sparsities (ATP: Huang et al. ICML 2025, "Determining Layer-wise Sparsity for Large Language
Models Through a Theoretical Perspective", Eq. 10): an arithmetic progression increasing with depth.

s_i = S - beta (L - 1) / 2 + beta i for decoder layers i = 0 .. L-1: mean S (the target), common difference
beta (the one parameter, the paper's symbol), so earlier layers, whose reconstruction error every later layer
inherits, are pruned less. The paper allows 0 < beta <= min(2S / (L-1), 2(1-S) / (L-1)) and picks beta by a grid
search (step 0.002) on WikiText-2 perplexity; here beta = 0 (uniform) is allowed too, and the upper end is
strict on the 1 - S side so that the deepest layer keeps a weight (every ratio in [0, 1)).
"""
from __future__ import annotations


def depth_ramp_limit(num_layers: int, target: float) -> tuple[float, bool]:
    """(largest beta, whether it is allowed itself): min(2S / (L-1), 2(1-S) / (L-1)); the 1-S bound is strict."""
    if num_layers < 2:
        return float("inf"), True
    low_side, high_side = 2 * target / (num_layers - 1), 2 * (1 - target) / (num_layers - 1)
    return (low_side, True) if low_side < high_side else (high_side, False)


def depth_ramp_ratios(num_layers: int, target: float, beta: float) -> list[float]:
    """Per-decoder-layer sparsities [num_layers], mean `target`, increasing by `beta` per layer, each in [0, 1).

    Raises ValueError naming beta and the accepted range when a ratio would leave [0, 1).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers {num_layers} must be >= 1")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} must be in [0, 1)")
    limit, inclusive = depth_ramp_limit(num_layers, target)
    if not (0.0 <= beta <= limit if inclusive else 0.0 <= beta < limit):
        bracket = "]" if inclusive else ")"
        raise ValueError(f"depth-ramp beta {beta} is outside [0, {limit:.6g}{bracket} for {num_layers} layers "
                         f"at sparsity {target}: every layer's sparsity must stay in [0, 1)")
    first = target - beta * (num_layers - 1) / 2
    # max(0, .) only absorbs rounding at beta = 2S / (L-1), where the first ratio is 0 exactly in real numbers.
    return [max(0.0, first + beta * i) for i in range(num_layers)]
