"""Compare: every explainer side by side on the chosen image and class, and how much they agree; with a
second model, both models' maps in aligned rows, their agreement per method and the difference."""

from dataclasses import replace

import numpy as np
import streamlit as st
import torch

from dashboard import review_panel, state, widgets
from dashboard.markup import escape
from dashboard.state import Scene
from explainers import get_explainer, list_explainers
from explainers.alignment import common_pixels, difference, unit_range
from explainers.metrics.agreement import agreement_table, paired_table
from explainers.registry import method_label
from explainers.render import colorbar, diverging_overlay, draw_box, overlay

COLUMNS = 4


def method_header(methods: list[str]) -> dict[str, dict]:
    """Label, reference and parameter controls of each method of a row; their validated values."""
    params = {}
    for cell, method in zip(st.columns(COLUMNS), methods, strict=False):
        explainer = get_explainer(method)
        with cell:
            st.markdown(f"**{explainer.label}**")
            st.caption(explainer.reference, help=explainer.description)
            st.caption(widgets.cost_text(method))
            with st.expander("Parameters"):
                params[method] = widgets.explainer_controls(method)
    return params


def row_maps(methods: list[str], scene: Scene | None = None) -> tuple[dict[str, torch.Tensor], list]:
    """The maps of a row for one scene (each failure shown in its own cell), and the row's cells."""
    cells = st.columns(COLUMNS)
    maps = {}
    for cell, method in zip(cells, methods, strict=False):
        try:
            relevance = widgets.method_map(method, container=cell, for_scene=scene)
        except ValueError as error:
            cell.error(str(error))
            continue
        if relevance is not None:
            maps[method] = relevance
    return maps, cells


def method_row(methods: list[str]) -> dict[str, torch.Tensor]:
    """One row of the grid: label, reference and parameters, then map over the image, then raw map."""
    params = method_header(methods)
    maps, _ = row_maps(methods)
    overlays, grids = st.columns(COLUMNS), st.columns(COLUMNS)
    for index, method in enumerate(methods):
        if method not in maps:
            continue
        relevance = maps[method]
        overlays[index].image(widgets.picture("overlay", relevance), caption="over the image",
                              width="stretch")
        size = "×".join(str(n) for n in relevance.shape)
        grids[index].image(widgets.picture("grid", relevance), caption=f"raw {size} map", width="stretch")
        grids[index].caption(", ".join(f"{k}={v}" for k, v in params[method].items()) or "no parameters")
    return maps


def agreement(maps: dict[str, torch.Tensor], top: int) -> None:
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
    name = escape(scene.model.spec)
    if scene.headless and scene.reference is None:
        st.info(f"**{name}** has no classifier (a headless backbone): rollout and raw attention "
                "show where it attends. Choose a reference image in the sidebar and the gradient methods "
                "explain why the two images are alike (the cosine similarity of their embeddings).")
    elif scene.headless:
        st.markdown(f"Why does **{name}** find this image like **{escape(scene.reference.title)}** "
                    f"(cosine similarity {scene.analysis.similarity:.3f})? Every explainer answers from the "
                    "same forward and backward pass.")
    else:
        probability = scene.analysis.probabilities[scene.target]
        st.markdown(f"Why does **{name}** see **{escape(scene.class_name(scene.target))}** "
                    f"(p = {probability:.1%})? Every explainer answers from the same forward and backward "
                    "pass.")


def explained(scene: Scene) -> str:
    """What a scene's maps explain, as Markdown: its class, or a headless model's similarity."""
    if not scene.headless:
        return (f"**{escape(scene.class_name(scene.target))}** "
                f"(p = {scene.analysis.probabilities[scene.target]:.1%})")
    if scene.analysis.similarity is None:
        return "no score (no classifier and no reference image: attention only)"
    return (f"the similarity to **{escape(scene.reference.title)}** "
            f"(cosine {scene.analysis.similarity:.3f})")


def on_grid(scene: Scene, maps: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Each map of ``scene`` on the image's own pixel grid, scaled to [0, 1] (NaN where it saw nothing)."""
    return {method: unit_range(scene.on_image_grid(relevance)) for method, relevance in maps.items()}


def image_with_box(scene: Scene) -> np.ndarray:
    """The image on its comparison grid, with the ground-truth box where known."""
    image = state.image_on_grid(scene.image)
    if scene.image.box is None:
        return image
    factor = image.shape[1] / scene.image.image.size[0]
    box = [round(v * factor) for v in scene.image.box]
    return draw_box(image, box, thickness=max(1, image.shape[0] // 112))


def two_model_row(methods: list[str], first: Scene, second: Scene) -> tuple[list[dict], list[dict]]:
    """A row of methods for both models on the image's pixel grid, then the difference.

    Returns both models' maps, and both on the image grid.
    """
    view = state.view()
    method_header(methods)
    picture = image_with_box(first)
    grids, own = [], []
    for name, scene in (("A", first), ("B", second)):
        maps, cells = row_maps(methods, scene)
        grid = on_grid(scene, maps)
        for cell, method in zip(cells, methods, strict=False):
            if method in grid:
                size = "×".join(str(n) for n in maps[method].shape)
                cell.image(overlay(picture, grid[method], opacity=view.option("opacity"),
                                   colormap=view.option("colormap")),
                           caption=f"{name}: {scene.label} · {size} map", width="stretch")
        grids.append(grid)
        own.append(maps)
    for cell, method in zip(st.columns(COLUMNS), methods, strict=False):
        if method in grids[0] and method in grids[1]:
            cell.image(diverging_overlay(picture, difference(grids[0][method], grids[1][method])),
                       caption="B − A: red where B is higher, blue where A is", width="stretch")
    return own, grids


def top_percent(top: int | None) -> int:
    """The slider of the top region, under the first agreement table's title (once per page)."""
    if top is not None:
        return top
    slider, _ = st.columns([1, 2])
    with slider:
        return widgets.option_control("top_percent", label="Top region (%)")


def cross_model_agreement(first: dict[str, np.ndarray], second: dict[str, np.ndarray], top: int) -> list:
    """The table of each method's agreement between the two models; its rows."""
    pairs = {m: common_pixels(first[m], second[m]) for m in first if m in second}
    table = paired_table({method_label(m): a for m, (a, _) in pairs.items()},
                         {method_label(m): b for m, (_, b) in pairs.items()}, top / 100)
    st.caption("Each method's map of model A against its map of model B, compared pixel by pixel on the "
               "image's own grid where both models see it.")
    st.dataframe(table.rename(columns={"method": "Method"}), hide_index=True, column_config={
        "spearman": st.column_config.NumberColumn(
            "Spearman ρ", format="%.3f", help="Rank correlation of the two maps over the pixels (-1 … 1)."),
        "iou": st.column_config.ProgressColumn(
            f"IoU of the top {top}%", format="%.2f", min_value=0.0, max_value=1.0,
            help="Overlap of the most relevant pixels of both maps (0 … 1)."),
    })
    return table.to_dict("records")


def two_models(methods: list[str], first: Scene, second: Scene) -> tuple[list[dict], list[dict]]:
    """Every method for both models in aligned rows with the difference; both models' maps, and both on
    the image grid."""
    target_a, target_b = explained(first), explained(second)
    if first.headless or second.headless:
        st.info(f"Model A explains {target_a}; model B explains {target_b}.", icon=":material/link:")
    elif second.class_name(second.target) == first.class_name(first.target):
        st.info(f"Both models explain the class {target_a} (A) and {target_b} (B).", icon=":material/link:")
    else:
        missing = escape(first.class_name(first.target))
        st.warning(f"Model B has no class “{missing}”: each model explains its own prediction, {target_a} "
                   f"for A and {target_b} for B.")
    maps, grids = [{}, {}], [{}, {}]
    for start in range(0, len(methods), COLUMNS):
        with st.container(border=True):
            own, grid = two_model_row(methods[start : start + COLUMNS], first, second)
            for index in (0, 1):
                maps[index].update(own[index])
                grids[index].update(grid[index])
    return maps, grids


def main() -> None:
    scene, view = state.scene(), state.view()
    second = state.second_scene()
    st.header("Compare explainers")
    picture, summary = st.columns([1, 3], gap="large")
    truth = " · green: ground-truth box" if scene.analysis.box else ""
    picture.image(widgets.picture("input"), caption=f"{scene.image.title}{truth}", width="stretch")
    with summary:
        question(scene)
        methods = widgets.controlled(st.multiselect, "c.methods", view.shown_methods(), label="Explainers",
                                     options=list_explainers(), format_func=method_label)
        state.commit(replace(state.view(), methods=None if methods == list_explainers() else tuple(methods)))
        legend, _ = st.columns([2, 3])
        legend.image(colorbar(view.option("colormap"), height=10), width="stretch",
                     caption="low → high relevance; each map scaled to its own range")
    maps, maps_b, grids, scores = {}, None, ({}, {}), {}
    if second is not None:
        st.markdown(f"**A**: {scene.label} · **B**: {second.label}. Both maps of a method are drawn on the "
                    "image's own pixel grid, whatever each model's input size and patch grid.")
        (maps, maps_b), grids = two_models(methods, scene, second)
    else:
        for start in range(0, len(methods), COLUMNS):
            with st.container(border=True):
                maps.update(method_row(methods[start : start + COLUMNS]))
    top = None
    if any(m in grids[1] for m in grids[0]):
        st.subheader("Agreement between the two models")
        top = top_percent(top)
        scores["models agreement"] = cross_model_agreement(*grids, top)
    if len(maps) >= 2:
        st.subheader("Agreement between methods" + (" (model A)" if second else ""))
        agreement(maps, top_percent(top))
    if maps_b is not None:
        maps_b = {m: relevance for m, relevance in maps_b.items() if m in maps}
    review_panel.render(maps, second=maps_b, scores=scores)
    widgets.share_link()


main()
