"""Every module in this package is an explainer: importing the package registers them all.

Plugins in other packages are loaded from the ``explainers.methods`` entry-point group.
"""

import importlib
import pkgutil
from importlib.metadata import entry_points

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

for _plugin in entry_points(group="explainers.methods"):
    _plugin.load()
