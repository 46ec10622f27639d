"""Wanda-style one-shot pruning: a single layer-walk driver and a registry of scoring methods.

Notebook use (no CLI):
    from lib import PruneConfig, prune_model
    report = prune_model(model, calib_ids, PruneConfig(prune_method="wanda", sparsity_ratio=0.5))
"""
from lib.config import ConfigError, PruneConfig

__all__ = ["ConfigError", "PruneConfig", "prune_model"]


def __getattr__(name: str):
    # prune_model on first use: the driver imports the model helpers (transformers), which a config does not need.
    if name == "prune_model":
        from lib.prune import prune_model

        return prune_model
    raise AttributeError(f"module 'lib' has no attribute '{name}'")
