"""Wanda-style one-shot pruning: a single layer-walk driver and a registry of scoring methods.

Notebook use (no CLI):
    from lib import PruneConfig, prune_model
    report = prune_model(model, calib_ids, PruneConfig(prune_method="wanda", sparsity_ratio=0.5))
"""
from lib.config import ConfigError, PruneConfig
from lib.prune import prune_model

__all__ = ["ConfigError", "PruneConfig", "prune_model"]
