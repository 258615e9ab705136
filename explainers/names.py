"""The names the command line offers and checks, defined without importing torch.

``python -m explainers --help`` and every usage error answer before torch, timm and pandas are imported
(seconds), so the parser's choices live here; the modules that use them import them from here.
"""

from __future__ import annotations

import ast
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

#: Scores :class:`explainers.evaluate.Evaluation` can compute.
METRICS: tuple[str, ...] = ("perturbation", "localisation", "sanity", "agreement")
#: The class an evaluation explains: the model's prediction or the image's label.
TARGETS: tuple[str, ...] = ("predicted", "label")
#: What removed pixels become in the perturbation curves (:mod:`explainers.metrics.perturbation`).
BASELINES: tuple[str, ...] = ("black", "mean", "blur", "road")
#: The exports of a saved review (:mod:`explainers.reviews.export`).
FORMATS: tuple[str, ...] = ("png", "csv", "html", "zip")
#: The review board's file in the data folder (:mod:`explainers.reviews.store`).
DB_NAME = "reviews.sqlite3"
#: Ray ``address`` meaning "start a local Ray instance for this run" (:mod:`explainers.distributed`).
LOCAL = "local"

METHODS_DIR = Path(__file__).with_name("methods")
PLUGIN_GROUP = "explainers.methods"


def method_names() -> list[str]:
    """The registered explainers' names in registration order, as :func:`explainers.list_explainers`.

    In a fresh process without plugins (``python -m explainers --help``) they are read from the method
    files (:func:`declared_method_names`) without importing torch; otherwise the registry answers.
    """
    if "explainers.registry" not in sys.modules and not entry_points(group=PLUGIN_GROUP):
        declared = declared_method_names()
        if declared is not None:
            return declared
    from .registry import list_explainers

    return list_explainers()


def declared_method_names() -> list[str] | None:
    """The names of the ``register("name", …)`` calls in the modules of ``explainers/methods/``, in the
    order :mod:`explainers.methods` imports them (what registering them gives), read without importing
    them; ``None`` where the files do not say it literally (a sub-package, a name computed at run time)."""
    names: list[str] = []
    for module in sorted(pkgutil.iter_modules([str(METHODS_DIR)]), key=lambda m: m.name):
        if module.ispkg:
            return None
        tree = ast.parse((METHODS_DIR / f"{module.name}.py").read_text(encoding="utf-8"))
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", getattr(node.func, "attr", None)) == "register"]
        for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
            first = call.args[0] if call.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                return None
            names.append(first.value)
    return names
