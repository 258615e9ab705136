"""Compare how Vision Transformers explain their decisions.

>>> import explainers
>>> maps = explainers.explain(model, images, "rollout", discard_ratio=0.9)   # (B, gh, gw)
>>> cap = explainers.capture(model, images, target=None)                    # the one forward/backward
>>> maps = explainers.compute(cap, "gae")                                   # milliseconds
"""

from . import progress
from .capture import Capture, capture
from .compute import compute, explain
from .layout import READOUTS, ModelDescription, TokenLayout, describe_model
from .models import LoadedModel, available_devices, load_model
from .registry import Explainer, Param, get_explainer, list_explainers, register
from .targets import SimilarityTarget

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
    "compute",
    "describe_model",
    "explain",
    "get_explainer",
    "list_explainers",
    "load_model",
    "progress",
    "register",
]
