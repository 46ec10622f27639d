"""Every plug-in registered: importing this module imports the method families (`lib.methods`) and the add-ons
(`lib.addons`), each of which registers itself in `lib.registry`. Entry points and the driver import this."""
# Methods first: their settings sections come first in --help and results.json's config.
import lib.methods  # noqa: F401,I001
import lib.addons  # noqa: F401
from lib.registry import ADDONS, METHODS, Method, find_method, selected_addons, selector_choices

__all__ = ["ADDONS", "METHODS", "Method", "find_method", "selected_addons", "selector_choices"]
