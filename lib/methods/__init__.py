"""The method families. Importing this package imports every module in it, and each registers its methods in
`lib.registry.METHODS`: a new family is one module dropped here, no other file touched.
"""
import importlib
import pkgutil

from lib.registry import METHODS, Method, find_method, register

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "find_method", "register"]
