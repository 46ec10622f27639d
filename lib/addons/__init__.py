"""The add-ons (layer-ratio policies, column orders, mask refiners, weight reconstructions). Importing this package
imports every module in it, and each registers its add-on in `lib.registry.ADDONS`: a new add-on is one module
dropped here, no other file touched.
"""
import importlib
import pkgutil

from lib.registry import ADDONS, register_addon

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ADDONS", "register_addon"]
