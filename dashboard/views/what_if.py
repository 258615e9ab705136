"""What-if explorer: every parameter of one explainer on a control; the map follows from the cached
capture, without a forward pass."""

import time

import streamlit as st

from dashboard import state, widgets
from explainers import get_explainer
from explainers.metrics.agreement import spearman, top_k_iou
from explainers.registry import method_label


@st.fragment
def explore(method: str) -> None:
    """Controls and map; a change reruns only this fragment, and never the model."""
    scene = state.scene()
    controls, result = st.columns([1, 2], gap="large")
    with controls:
        params = widgets.explainer_controls(method)
    with result:
        if state.expected_seconds(method) > state.SLOW_SECONDS:  # computed once, on request, then kept
            st.caption(widgets.cost_text(method))
            relevance = widgets.method_map(method)
            if relevance is None:
                return
            timing, elapsed = None, state.expected_seconds(method)
        else:
            timing, start = st.empty(), time.perf_counter()
            try:
                relevance = state.compute_maps([method], **params)[method]
            except ValueError as error:
                st.error(str(error))
                return
        over, grid = st.columns(2)
        over.image(widgets.picture("overlay", relevance), caption="over the image", width="stretch")
        grid.image(widgets.picture("grid", relevance), caption="raw grid map", width="stretch")
        if timing is not None:
            elapsed = time.perf_counter() - start
            timing.success(f"Updated in {elapsed * 1000:.1f} ms from the cached capture, without a forward "
                           f"pass (the capture itself took {scene.analysis.seconds * 1000:.0f} ms).",
                           icon=":material/bolt:")
        else:
            st.caption(f"Computed in {elapsed:.1f} s from the cached capture, without a forward pass.")
        defaults = state.explainer_params(method, **get_explainer(method).defaults())
        same = params == defaults
        default = relevance if same else state.compute_maps([method], **defaults)[method]
        rho, iou = st.columns(2)
        rho.metric("Spearman ρ with the defaults", f"{spearman(relevance[None], default[None])[0]:.3f}")
        iou.metric("Top-10% IoU with the defaults", f"{top_k_iou(relevance[None], default[None])[0]:.2f}")
    widgets.share_link()


def main() -> None:
    st.header("What-if explorer")
    method = widgets.option_control("explore", label="Explainer", format_func=method_label)
    explainer = get_explainer(method)
    st.markdown(f"**{explainer.label}**: {explainer.description}")
    st.caption(f"Reference: {explainer.reference}")
    explore(method)


main()
