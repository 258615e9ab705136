"""Widgets bound to the view: controls built from ``Param`` declarations, kept in step with the URL."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import streamlit as st
import torch
from PIL import Image

from dashboard import state
from explainers import Param, get_explainer, progress
from explainers.render import draw_box, grid_map, overlay

T = TypeVar("T")
_REPORTED = "_reported"
_MISSING = object()
#: Resolution of float sliders: this many steps between the bounds.
FLOAT_STEPS = 100


def controlled(widget: Callable[..., T], key: str, value: Any, **kwargs: Any) -> T:
    """``widget(key=key, **kwargs)`` showing ``value``; returns what the user chose.

    The widget keeps its own state from run to run (a stable widget for Streamlit) and is set to
    ``value`` only on its first appearance or when the view changed elsewhere since the widget last
    reported (an opened link, a fallback, a button, a page switch).
    """
    reported = st.session_state.setdefault(_REPORTED, {})
    if key not in st.session_state or reported.get(key, _MISSING) != value:
        st.session_state[key] = value
    result = widget(key=key, **kwargs)
    reported[key] = result
    return result


def newly_reported(key: str, value: Any) -> bool:
    """True when an event widget (a chart selection) reports ``value`` for the first time: the view then
    follows it once, and a selection left on the chart never overrides a view changed elsewhere since."""
    reported = st.session_state.setdefault(_REPORTED, {})
    new = key in reported and reported[key] != value
    reported[key] = value
    return new


def label_of(param: Param) -> str:
    return param.name.replace("_", " ").capitalize()


def param_control(
    param: Param,
    value: Any,
    dims: Mapping[str, int],
    *,
    key: str,
    label: str | None = None,
    format_func: Callable[[Any], str] = str,
    container: Any = st,
) -> Any:
    """One control for a declared parameter: a select for choices and optional values, a slider for a
    bounded number (:data:`FLOAT_STEPS` steps for floats; a value beyond the last step before an exclusive
    bound shows as that step), a number input otherwise. ``value`` must be valid for ``dims``."""
    low, high = param.bounds(dims)
    common = {"label": label or label_of(param), "help": param.help}
    if param.kind is str:
        return controlled(container.selectbox, key, value, options=param.choices, format_func=format_func,
                          **common)
    if param.optional:
        options = [None, *range(int(low), int(high) + 1)]
        return controlled(container.selectbox, key, value, options=options,
                          format_func=lambda v: "none" if v is None else format_func(v), **common)
    value = param.validate(value, dims)  # negative indices shown as the index they stand for
    if low is None or high is None:
        return controlled(container.number_input, key, value, min_value=low, max_value=high, **common)
    if low == high:
        container.caption(f"{common['label']}: {low} (the only possible value)")
        return param.kind(low)
    if param.kind is int:
        return controlled(container.slider, key, value, min_value=int(low), max_value=int(high), step=1,
                          **common)
    step = (high - low) / FLOAT_STEPS
    top = high - step if param.high_exclusive else high
    value = round(min(max(value, low), top), 6)
    return controlled(container.slider, key, value, min_value=float(low), max_value=float(top), step=step,
                      **common)


def explainer_controls(method: str, *, container: Any = st) -> dict[str, Any]:
    """A control for every parameter of ``method``; the view follows them. Returns the validated values."""
    view, dims = state.view(), state.scene().dims
    current = view.explainer_params(method)
    for param in get_explainer(method).params:
        chosen = param_control(param, current[param.name], dims, key=f"p.{method}.{param.name}",
                               container=container)
        view = view.with_param(method, param.name, chosen, dims)
    state.commit(view)
    return state.explainer_params(method)


def option_control(
    name: str, *, label: str | None = None, format_func: Callable[[Any], str] = str, container: Any = st
) -> Any:
    """A control for one of :data:`state.OPTIONS`; the view follows it. Returns the validated value."""
    view, dims = state.view(), state.scene().dims
    param = state.OPTIONS[name]
    chosen = param_control(param, view.option(name), dims, key=f"o.{name}", label=label,
                           format_func=format_func, container=container)
    state.commit(view.with_option(name, chosen, dims))
    return param.validate(chosen, dims)


def cost_text(method: str) -> str:
    """The passes ``method`` needs on the current model and its expected time per image."""
    scene = state.scene()
    dims = {**scene.dims, "num_tokens": scene.capture.layout.num_tokens}
    explainer = get_explainer(method)
    seconds = state.expected_seconds(method)
    timing = f"{seconds:.1f} s" if seconds >= 0.1 else f"{max(seconds * 1000, 0.1):.1f} ms"
    passes = explainer.cost.describe(explainer.needs_gradients, dims)
    return f"Cost: {passes} · about {timing} per image after the shared capture"


def method_map(
    method: str, container: Any = st, for_scene: state.Scene | None = None, **overrides: Any
) -> torch.Tensor | None:
    """The map of ``method`` for the current view, at once for a fast method; a slow one (see
    :func:`state.waits_for_request`) waits for its button and then shows a progress bar while it runs.
    ``None`` while it waits."""
    if state.waits_for_request(method, for_scene=for_scene, **overrides):
        slot = container.empty()
        request = slot.container()
        seconds = state.expected_seconds(method, for_scene)
        request.info(f"{get_explainer(method).label} takes about {seconds:.0f} s on this model, so it runs "
                     "when you ask.", icon=":material/hourglass_top:")
        if not request.button("Compute", key=f"run.{method}", icon=":material/play_arrow:"):
            return None
        slot.empty()
        bar = container.progress(0.0, text="Computing…")
        with progress.reporting(lambda fraction: bar.progress(fraction, text=f"Computing… {fraction:.0%}")):
            relevance = state.compute_maps([method], for_scene=for_scene, **overrides)[method]
        bar.empty()
        return relevance
    return state.compute_maps([method], for_scene=for_scene, **overrides)[method]


def overlay_image(relevance: torch.Tensor, *, box: bool = True) -> np.ndarray:
    """The map over the model's view of the image with the display options, and the true box if known."""
    view, analysis = state.view(), state.scene().analysis
    image = overlay(analysis.display, relevance, opacity=view.option("opacity"),
                    colormap=view.option("colormap"))
    return _with_box(image) if box else image


def picture(kind: str, relevance: torch.Tensor | None = None) -> bytes:
    """``overlay_image(relevance)`` (``kind="overlay"``), ``grid_image(relevance)`` (``"grid"``) or
    ``input_image()`` (``"input"``) as the JPEG bytes ``st.image`` would make of the array, drawn and
    encoded once for every session showing the same map with the same options (kept in
    :attr:`state.Caches.pictures`)."""
    view = state.view()
    key = (kind, state.scene().analysis.key, view.option("opacity"), view.option("colormap"),
           None if relevance is None else _digest(relevance))
    draw = {"overlay": lambda: overlay_image(relevance), "grid": lambda: grid_image(relevance),
            "input": input_image}[kind]

    def encode() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(draw()).save(buffer, "JPEG", quality=100)  # Streamlit's own encoding of an array
        return buffer.getvalue()

    return state.caches().pictures.get_or_compute(key, encode)


def _digest(relevance: torch.Tensor) -> tuple:
    values = relevance.detach().float().cpu().contiguous().numpy()
    return values.shape, hashlib.blake2b(values.tobytes(), digest_size=16).hexdigest()


def input_image() -> np.ndarray:
    """The image as the model sees it (after its preprocessing), with the true box if known."""
    return _with_box(state.scene().analysis.display)


def _with_box(image: np.ndarray) -> np.ndarray:
    box = state.scene().analysis.box
    return image if box is None else draw_box(image, box, thickness=max(1, image.shape[0] // 112))


def grid_image(relevance: torch.Tensor) -> np.ndarray:
    """The raw ``(gh, gw)`` map, one flat cell per patch, about as large as the displayed image."""
    cell = max(1, state.scene().analysis.display.shape[0] // relevance.shape[0])
    return grid_map(relevance, colormap=state.view().option("colormap"), cell=cell)


def share_link(container: Any = st) -> None:
    """The link that reopens this view (copy button on hover), at the end of every page."""
    container.caption("Link to this view: open it in any browser to get exactly this view.")
    container.code(state.link(), language=None, wrap_lines=True)
