"""The explainer registry: one decorator declares a method, its label, its needs and its parameters.

The declarations are the single source of truth for parameter names, types, ranges, defaults and help:
validation, the dashboard's controls, the URL state and the command line are all built from them.

Adding a method is one new file in ``explainers/methods/`` (imported automatically), or, for a plugin
living in another package, a module that calls :func:`register` and is named in that package's
``explainers.methods`` entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .capture import Capture

#: ``fn(capture, **params) -> (B, N)`` relevance of every token as seen from the CLS token.
ExplainerFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Param:
    """One explainer parameter.

    Attributes:
        name: keyword name, the same in the library, the dashboard, URLs and the CLI.
        kind: ``float``, ``int`` or ``str``.
        default: value used when the caller gives none (``None`` only when ``optional``).
        help: one line, shown next to the control.
        choices: allowed values of a ``str`` parameter.
        low: smallest allowed value (inclusive).
        high: largest allowed value: a number, or the name of a capture dimension (``"num_layers"``,
            ``"num_heads"``) meaning ``dimension - 1``.
        high_exclusive: ``high`` itself is not allowed (e.g. ``discard_ratio < 1``).
        negative_index: ints may count from the end like Python indices (``-1`` is the last).
        optional: ``None`` is a valid value (e.g. no single head: fuse them instead).
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | str | None = None
    high_exclusive: bool = False
    negative_index: bool = False
    optional: bool = False

    def bounds(self, dims: Mapping[str, int]) -> tuple[float | None, float | None]:
        """``(low, high)`` for a model with these ``dims``, ``high`` inclusive unless ``high_exclusive``."""
        high = dims[self.high] - 1 if isinstance(self.high, str) else self.high
        return self.low, high

    def describe(self, dims: Mapping[str, int]) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low, high = self.bounds(dims)
        if high is None:
            text = "any number" if low is None else f"≥ {low}"
        elif low is None:
            text = f"{'<' if self.high_exclusive else '≤'} {high}"
        else:
            text = f"in [{low}, {high}{')' if self.high_exclusive else ']'}"
        if self.negative_index:
            text += f" (or -{high + 1}..-1 counting from the end)"
        return text + (" or None" if self.optional else "")

    def validate(self, value: Any, dims: Mapping[str, int]) -> Any:
        """The value normalised (negative index resolved), or a ``ValueError`` naming the valid range."""
        if value is None and self.optional:
            return None
        error = ValueError(f"{self.name} must be {self.describe(dims)}; got {value!r}")
        if self.kind is str:
            if value not in (self.choices or ()):
                raise error
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error
        if self.kind is int:
            if float(value) != int(value):
                raise error
            value = int(value)
        value = self.kind(value)
        low, high = self.bounds(dims)
        if self.negative_index and high is not None and -(high + 1) <= value < 0:
            value += high + 1
        if (
            value != value  # NaN
            or (low is not None and value < low)
            or (high is not None and (value >= high if self.high_exclusive else value > high))
        ):
            raise error
        return value


@dataclass(frozen=True)
class Cost:
    """What a method needs from the model besides reading the capture, per image.

    Every method needs the capture's one forward pass (stopped at the last attention map when it reads
    nothing else) and, with ``needs_gradients``, its one backward pass from the target logit. On top:

    Attributes:
        layer_backwards: one partial backward per block, from the target score read at that block's
            tokens back to its attention (``capture(layer_gradients=True)``; LeGrad).
        lrp_passes: relevance (LRP) passes from the target back through the whole model, made by the
            capture after its forward pass (``capture(relevance=True)``, which also keeps the activations
            the rules read; LRP family). A method with one reads ``capture.relevance``.
        max_flows: one maximum flow per token through the layered attention graph (``L·N²`` edges);
            this is the one cost that grows faster than a forward pass (about ``N³L``).
    """

    layer_backwards: bool = False
    lrp_passes: int = 0
    max_flows: bool = False

    #: Rough time of one max-flow per graph edge on a 2-core CPU (SciPy's Dinic; deit_tiny: 197 flows on
    #: 12·197² edges in about 3.4 s), for a first estimate before a method has been timed on a model.
    SECONDS_PER_FLOW_EDGE = 3.7e-8

    def describe(self, needs_gradients: bool, dims: Mapping[str, int]) -> str:
        """The passes in words for a model with these ``dims`` (``num_layers``, ``num_tokens``)."""
        whole = needs_gradients or self.layer_backwards or self.lrp_passes  # reads the output
        parts = ["forward" if whole else "forward to the last attention"]
        if needs_gradients:
            parts.append("backward")
        if self.layer_backwards:
            parts.append(f"{dims['num_layers']} partial backwards (one per block)")
        if self.lrp_passes:
            parts.append(f"{self.lrp_passes} LRP pass" + ("es" if self.lrp_passes > 1 else ""))
        if self.max_flows:
            n = dims["num_tokens"]
            parts.append(f"{n} max-flows on {dims['num_layers']}·{n}² edges")
        return " + ".join(parts)

    def estimate_seconds(self, dims: Mapping[str, int]) -> float:
        """A first guess of the time per image beyond the shared capture, from
        :attr:`SECONDS_PER_FLOW_EDGE`; measure to know.

        The capture already holds the per-layer readouts and the LRP relevance when asked for them, so only
        the max-flows add to it (the other methods' maths after the capture take milliseconds)."""
        if not self.max_flows:
            return 0.0
        n = dims["num_tokens"]
        return self.SECONDS_PER_FLOW_EDGE * n * dims["num_layers"] * n * n


@dataclass(frozen=True)
class Explainer:
    """A registered method: call it on a :class:`Capture` to get ``(B, gh, gw)`` maps."""

    name: str
    label: str
    fn: ExplainerFn
    needs_gradients: bool
    params: tuple[Param, ...]
    reference: str
    cost: Cost = Cost()

    @property
    def needs_relevance(self) -> bool:
        """The method reads ``capture.relevance`` (its cost declares an LRP pass)."""
        return self.cost.lrp_passes > 0

    @property
    def description(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.split("\n\n")[0].replace("\n", " ")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, params: Mapping[str, Any], dims: Mapping[str, int]) -> dict[str, Any]:
        """All parameters with defaults filled in and values checked, or a ``ValueError``."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise ValueError(f"{self.name} has no parameter {unknown[0]!r}; its parameters are: {valid}")
        return {name: p.validate(params.get(name, p.default), dims) for name, p in known.items()}

    def __call__(self, capture: Capture, **params: Any) -> torch.Tensor:
        """Maps ``(B, gh, gw)``, float32, finite and non-negative, on the capture's device."""
        values = self.validate(params, capture.dims)
        if self.needs_gradients and capture.gradients is None:
            raise ValueError(
                f"{self.name} needs gradients but this capture has none: capture with gradients=True"
            )
        if self.cost.layer_backwards and capture.layer_gradients is None:
            raise ValueError(
                f"{self.name} needs per-layer readout gradients but this capture has none: capture with "
                "layer_gradients=True"
            )
        if self.needs_relevance and capture.relevance is None:
            raise ValueError(
                f"{self.name} needs LRP relevance but this capture has none: capture with relevance=True"
            )
        relevance = self.fn(capture, **values)
        return capture.layout.to_grid(relevance.float())


_REGISTRY: dict[str, Explainer] = {}


def register(
    name: str,
    *,
    label: str,
    needs_gradients: bool,
    params: tuple[Param, ...] = (),
    reference: str = "",
    cost: Cost = Cost(),
) -> Callable[[ExplainerFn], ExplainerFn]:
    """Class-free registration: ``@register("rollout", label=..., needs_gradients=False, params=(...))``.

    The decorated function takes the capture and the declared parameters as keywords and returns the
    ``(B, N)`` relevance of every token from the class token's point of view (prefix tokens included;
    the registry cuts them off and lays the patches on the grid).

    ``needs_gradients=True``: the method reads ``capture.gradients`` (taken for ``capture.targets``).
    ``needs_gradients=False`` and nothing in ``cost``: it reads only ``capture.attentions`` and
    ``capture.layout``, so :func:`explainers.explain` stops the forward pass at the last attention map
    and gives it a capture without logits.

    ``cost``: the passes the method needs besides the forward (and, with ``needs_gradients``, backward)
    pass (:class:`Cost`; the default: none). With ``cost.layer_backwards`` the method reads
    ``capture.layer_gradients``; with ``cost.lrp_passes`` it reads ``capture.relevance`` (LRP, see
    :mod:`explainers.relevance`); the capture computes each only when asked (``layer_gradients=True``,
    ``relevance=True``).
    """

    def decorate(fn: ExplainerFn) -> ExplainerFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"an explainer named {name!r} is already registered")
        _REGISTRY[name] = Explainer(name, label, fn, needs_gradients, tuple(params), reference, cost)
        return fn

    return decorate


def _load_methods() -> None:
    from . import methods  # noqa: F401  (importing the package registers every method file)


def list_explainers() -> list[str]:
    """Names of all registered explainers, in registration order."""
    _load_methods()
    return list(_REGISTRY)


def method_label(name: str) -> str:
    """The registered label of a method, or its name if no such method is registered here."""
    _load_methods()
    return _REGISTRY[name].label if name in _REGISTRY else name


def capture_options(methods: Iterable[str]) -> dict[str, bool]:
    """The :func:`~explainers.capture` flags that give every one of ``methods`` what it reads."""
    explainers = [get_explainer(name) for name in methods]
    return {
        "gradients": any(e.needs_gradients for e in explainers),
        "layer_gradients": any(e.cost.layer_backwards for e in explainers),
        "relevance": any(e.needs_relevance for e in explainers),
    }


def get_explainer(name: str) -> Explainer:
    """The explainer registered as ``name``, or a ``ValueError`` listing the valid names."""
    _load_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
