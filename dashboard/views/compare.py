"""Compare: every explainer side by side on the chosen image and class, and how much they agree."""

from dataclasses import replace

import streamlit as st
import torch

from dashboard import review_panel, state, widgets
from explainers import get_explainer, list_explainers
from explainers.metrics.agreement import agreement_table
from explainers.registry import method_label
from explainers.render import colorbar

COLUMNS = 4


def method_row(methods: list[str]) -> dict[str, torch.Tensor]:
    """One row of the grid: label, reference and parameters, then map over the image, then raw map."""
    cells = st.columns(COLUMNS)
    params = {}
    for cell, method in zip(cells, methods, strict=False):
        explainer = get_explainer(method)
        with cell:
            st.markdown(f"**{explainer.label}**")
            st.caption(explainer.reference, help=explainer.description)
            with st.expander("Parameters"):
                params[method] = widgets.explainer_controls(method)
    maps = {}
    for cell, method in zip(cells, methods, strict=False):
        try:
            maps[method] = state.compute_maps([method])[method]
        except ValueError as error:
            cell.error(str(error))
    overlays, grids = st.columns(COLUMNS), st.columns(COLUMNS)
    for index, method in enumerate(methods):
        if method not in maps:
            continue
        relevance = maps[method]
        overlays[index].image(widgets.overlay_image(relevance), caption="over the image", width="stretch")
        size = "×".join(str(n) for n in relevance.shape)
        grids[index].image(widgets.grid_image(relevance), caption=f"raw {size} map", width="stretch")
        grids[index].caption(", ".join(f"{k}={v}" for k, v in params[method].items()) or "no parameters")
    return maps


def agreement(maps: dict[str, torch.Tensor]) -> None:
    st.subheader("Agreement between methods")
    slider, _ = st.columns([1, 2])
    with slider:
        top = widgets.option_control("top_percent", label="Top region (% of the patches)")
    maps = {method_label(m): relevance[None] for m, relevance in maps.items()}
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


def question(scene: state.Scene) -> None:
    """What the maps answer: why this class, or (headless model) why this similarity to the reference."""
    if scene.headless and scene.reference is None:
        st.info(f"**{scene.model.spec}** has no classifier (a headless backbone): rollout and raw attention "
                "show where it attends. Choose a reference image in the sidebar and the gradient methods "
                "explain why the two images are alike (the cosine similarity of their embeddings).")
    elif scene.headless:
        st.markdown(f"Why does **{scene.model.spec}** find this image like **{scene.reference.title}** "
                    f"(cosine similarity {scene.analysis.similarity:.3f})? Every explainer answers from the "
                    "same forward and backward pass.")
    else:
        probability = scene.analysis.probabilities[scene.target]
        st.markdown(f"Why does **{scene.model.spec}** see **{scene.class_name(scene.target)}** "
                    f"(p = {probability:.1%})? Every explainer answers from the same forward and backward "
                    "pass.")


def main() -> None:
    scene, view = state.scene(), state.view()
    st.header("Compare explainers")
    picture, summary = st.columns([1, 3], gap="large")
    truth = " · green: ground-truth box" if scene.analysis.box else ""
    picture.image(widgets.input_image(), caption=f"{scene.image.title}{truth}", width="stretch")
    with summary:
        question(scene)
        methods = widgets.controlled(st.multiselect, "c.methods", view.shown_methods(), label="Explainers",
                                     options=list_explainers(), format_func=method_label)
        state.commit(replace(state.view(), methods=None if methods == list_explainers() else tuple(methods)))
        legend, _ = st.columns([2, 3])
        legend.image(colorbar(view.option("colormap"), height=10), width="stretch",
                     caption="low → high relevance; each map scaled to its own range")
    maps = {}
    for start in range(0, len(methods), COLUMNS):
        with st.container(border=True):
            maps.update(method_row(methods[start : start + COLUMNS]))
    if len(maps) >= 2:
        agreement(maps)
    review_panel.render(maps)
    widgets.share_link()


main()
