"""The names the command line offers and checks, defined without importing torch.

``python -m explainers --help`` and every usage error answer before torch, timm and pandas are imported
(seconds), so the parser's choices live here; the modules that use them import them from here.
"""

from __future__ import annotations

import ast
import pkgutil
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
    """The registered explainers' names in registration order (:func:`explainers.list_explainers`).

    Read from the ``register("name", …)`` calls of the modules of ``explainers/methods/`` (in the order
    :mod:`explainers.methods` imports them) without importing them. Where that cannot be exact (an
    installed plugin, a sub-package, a name that is not a literal), the registry itself answers.
    """
    names: list[str] = []
    for module in sorted(pkgutil.iter_modules([str(METHODS_DIR)]), key=lambda m: m.name):
        if module.ispkg:
            return _registered()
        tree = ast.parse((METHODS_DIR / f"{module.name}.py").read_text(encoding="utf-8"))
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", getattr(node.func, "attr", None)) == "register"]
        for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
            first = call.args[0] if call.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                return _registered()
            names.append(first.value)
    return _registered() if entry_points(group=PLUGIN_GROUP) else names


def _registered() -> list[str]:
    from .registry import list_explainers

    return list_explainers()
