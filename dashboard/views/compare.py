"""Compare: every explainer side by side on the chosen image and class, and how much they agree."""

from dataclasses import replace

import streamlit as st
import torch

from dashboard import review_panel, state, widgets
from explainers import get_explainer, list_explainers
from explainers.metrics.agreement import agreement_table
from explainers.render import colorbar

COLUMNS = 4


def method_card(method: str) -> torch.Tensor | None:
    """Label, reference, parameters, map over the image and raw grid map of one explainer; its map."""
    explainer = get_explainer(method)
    with st.container(border=True):
        st.markdown(f"**{explainer.label}**")
        st.caption(explainer.reference, help=explainer.description)
        with st.expander("Parameters"):
            params = widgets.explainer_controls(method)
        try:
            relevance = state.compute_maps([method])[method]
        except ValueError as error:
            st.error(str(error))
            return None
        st.image(widgets.overlay_image(relevance), caption="over the image", width="stretch")
        st.image(widgets.grid_image(relevance), caption=f"raw {relevance.shape[0]}×{relevance.shape[1]} map",
                 width="stretch")
        st.caption(", ".join(f"{k}={v}" for k, v in params.items()) or "no parameters")
    return relevance


def agreement(maps: dict[str, torch.Tensor]) -> None:
    st.subheader("Agreement between methods")
    top = widgets.option_control("top_percent", label="Top region (% of the patches)")
    maps = {widgets.method_label(m): relevance[None] for m, relevance in maps.items()}
    table = agreement_table(maps, top / 100).rename(columns={"method A": "Method", "method B": "vs"})
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "spearman": st.column_config.NumberColumn(
                "Spearman ρ", format="%.3f", help="Rank correlation of all patches (-1 … 1)."),
            "iou": st.column_config.ProgressColumn(
                f"IoU of the top {top}%", format="%.2f", min_value=0.0, max_value=1.0,
                help="Overlap of the most relevant patches of both maps (0 … 1)."),
        },
    )


def main() -> None:
    scene, view = state.scene(), state.view()
    st.header("Compare explainers")
    probability = scene.analysis.probabilities[scene.target]
    st.caption(f"{scene.image.title} · {scene.model.spec} · explaining **{scene.class_name(scene.target)}** "
               f"(p = {probability:.1%})" + (" · green box: ground truth" if scene.analysis.box else ""))
    methods = widgets.controlled(st.multiselect, "c.methods", view.shown_methods(), label="Explainers",
                                 options=list_explainers(), format_func=widgets.method_label)
    state.commit(replace(state.view(), methods=None if methods == list_explainers() else tuple(methods)))
    legend, _ = st.columns([1, 3])
    legend.image(colorbar(view.option("colormap"), height=10), width="stretch",
                 caption="low → high relevance (each map scaled to its own range)")
    maps = {}
    for start in range(0, len(methods), COLUMNS):
        for column, method in zip(st.columns(COLUMNS), methods[start : start + COLUMNS], strict=False):
            with column:
                relevance = method_card(method)
            if relevance is not None:
                maps[method] = relevance
    if len(maps) >= 2:
        agreement(maps)
    review_panel.render(maps)
    widgets.share_link()


main()
