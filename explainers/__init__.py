"""Compare how Vision Transformers explain their decisions.

>>> import explainers
>>> maps = explainers.explain(model, images, "rollout", discard_ratio=0.9)   # (B, gh, gw)
>>> cap = explainers.capture(model, images, target=None)                    # the one forward/backward
>>> maps = explainers.compute(cap, "gae")                                   # milliseconds

The public names are imported on first use (PEP 562), so that ``import explainers`` and the command
line's ``--help`` do not wait for torch and timm.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import progress
    from .capture import Capture, capture
    from .compute import compute, explain
    from .layout import READOUTS, ModelDescription, TokenLayout, describe_model
    from .models import LoadedModel, available_devices, load_model
    from .registry import Explainer, Param, capture_options, get_explainer, list_explainers, register
    from .targets import SimilarityTarget

#: Public name → the submodule defining it (``progress`` is a submodule itself).
_SOURCES = {
    "progress": "",
    "Capture": "capture", "capture": "capture",
    "compute": "compute", "explain": "compute",
    "READOUTS": "layout", "ModelDescription": "layout", "TokenLayout": "layout", "describe_model": "layout",
    "LoadedModel": "models", "available_devices": "models", "load_model": "models",
    "Explainer": "registry", "Param": "registry", "capture_options": "registry", "get_explainer": "registry",
    "list_explainers": "registry", "register": "registry",
    "SimilarityTarget": "targets",
}

__all__ = [
    "READOUTS",
    "Capture",
    "Explainer",
    "LoadedModel",
    "ModelDescription",
    "Param",
    "SimilarityTarget",
    "TokenLayout",
    "available_devices",
    "capture",
    "capture_options",
    "compute",
    "describe_model",
    "explain",
    "get_explainer",
    "list_explainers",
    "load_model",
    "progress",
    "register",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = _SOURCES[name]
    value = importlib.import_module(f".{source or name}", __name__)
    if source:
        value = getattr(value, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``explainers.capture`` and ``explainers.compute`` stay the functions: importing the submodules of
    the same names (as the library does internally) must not replace them with the modules."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _SOURCES.get(name) == name:
            return  # the submodule stays in sys.modules; the public name is resolved by __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
