"""Head fusion: the explainers that fuse heads, with the mean, max and min; every head of a layer; and where
one patch looks (click it): its attention row per layer and head and its rollout row, next to the class
token's."""

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import convert_colors_to_same_type

from dashboard import state, widgets
from explainers import get_explainer, list_explainers
from explainers.params import HEAD, HEAD_FUSION, LAYER
from explainers.registry import method_label
from explainers.render import draw_box
from explainers.token_rows import attention_rows, patch_token, rollout_row

HEADS_PER_ROW = 6
IMAGE_PX = 260
PICKER_PX, PANEL_PX = 380, 110
PICKER_KEY = "h.patch_picker"
#: Plotly's Inferno written as rgb(): Streamlit's chart frontend rewrites the colours #000001 to #000010
#: anywhere in a figure (its theme's placeholders, even with ``theme=None``), and Inferno starts at #000004.
INFERNO = convert_colors_to_same_type(px.colors.sequential.Inferno, "rgb")[0]


def declares(method: str, *params: str) -> bool:
    return set(params) <= {p.name for p in get_explainer(method).params}


def fusion_grid() -> None:
    st.subheader("Fusing the heads")
    st.caption("Each row uses the explainer's current parameters (set them on the Compare or What-if page); "
               "only the fusion changes from column to column.")
    fusions = HEAD_FUSION.choices
    header = st.columns([1, *[2] * len(fusions)])
    for column, fusion in zip(header[1:], fusions, strict=True):
        column.markdown(f"**{fusion}** over heads")
    for method in (m for m in list_explainers() if declares(m, HEAD_FUSION.name)):
        row = st.columns([1, *[2] * len(fusions)])
        row[0].markdown(f"**{method_label(method)}**")
        for column, fusion in zip(row[1:], fusions, strict=True):
            relevance = state.compute_maps([method], head_fusion=fusion, head=None)[method]
            column.image(widgets.overlay_image(relevance), caption=f"{method} · {fusion}", width=IMAGE_PX)


def heads_of_layer() -> None:
    st.subheader("Every head on its own")
    method = next(m for m in list_explainers() if declares(m, LAYER.name, HEAD.name))
    with st.columns([1, 2])[0]:
        layer = widgets.option_control("layer", label="Layer")
    st.caption(f"{method_label(method)} of layer {layer}, one map per head.")
    heads = range(state.scene().dims["num_heads"])
    for start in range(0, len(heads), HEADS_PER_ROW):
        row = heads[start : start + HEADS_PER_ROW]
        for column, head in zip(st.columns(HEADS_PER_ROW), row, strict=False):
            relevance = state.compute_maps([method], layer=layer, head=head)[method]
            column.image(widgets.overlay_image(relevance), caption=f"head {head}", width="stretch")


def chosen_patch() -> tuple[int, int]:
    """``(row, column)`` of the patch in the view (the centre one until a patch is clicked)."""
    capture = state.scene().capture
    grid_h, grid_w = capture.layout.grid
    patch = state.view().option("patch")
    if patch is not None and patch >= grid_h * grid_w:
        st.warning(f"Patch {patch} is not in this model's {grid_h}×{grid_w} grid: the centre is shown.")
        patch = None
    if patch is None:
        return grid_h // 2, grid_w // 2
    return divmod(patch, grid_w)


def on_patch_click(selection: dict) -> None:
    """A newly clicked patch becomes the view's patch: the picker's point ``i`` is patch ``i`` (row-major).

    The point's index, not its ``customdata``: the browser reports a row of a NumPy ``customdata`` as a
    typed array, which reaches Python as ``{"0": …, "1": …}``.
    """
    points = selection.get("selection", {}).get("points", [])
    if widgets.newly_reported(PICKER_KEY, [p.get("point_index") for p in points]) and points:
        patch = int(points[0]["point_index"])
        state.commit(state.view().with_option("patch", patch, state.scene().dims))
        st.rerun()


def patch_picker(row: int, column: int) -> None:
    """The image as the model sees it, one clickable point per patch; the chosen patch outlined."""
    scene = state.scene()
    image = scene.analysis.display
    grid_h, grid_w = scene.capture.layout.grid
    cell_h, cell_w = image.shape[0] / grid_h, image.shape[1] / grid_w
    x0, y0 = round(column * cell_w), round(row * cell_h)
    box = (x0, y0, round((column + 1) * cell_w), round((row + 1) * cell_h))
    figure = px.imshow(draw_box(image, box, color=(255, 64, 255), thickness=max(1, image.shape[0] // 96)))
    rows, columns = np.divmod(np.arange(grid_h * grid_w), grid_w)
    figure.add_trace(go.Scatter(
        x=(columns + 0.5) * cell_w, y=(rows + 0.5) * cell_h, mode="markers",
        customdata=np.stack([rows, columns], axis=1),
        hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<extra></extra>",
        marker={"symbol": "square", "size": 0.8 * PICKER_PX / max(grid_h, grid_w), "opacity": 0.12,
                "color": "white", "line": {"width": 0}},
        selected={"marker": {"opacity": 0.35}}, unselected={"marker": {"opacity": 0.12}},
    ))
    figure.update_traces(hoverinfo="skip", hovertemplate=None, selector={"type": "image"})  # clicks: points
    # The plot area is the image: no autorange padding for the markers, so a patch is where it looks.
    figure.update_xaxes(visible=False, range=[0, image.shape[1]], autorange=False)
    figure.update_yaxes(visible=False, range=[image.shape[0], 0], autorange=False)
    figure.update_layout(width=PICKER_PX, height=PICKER_PX, margin={"l": 0, "r": 0, "t": 0, "b": 0},
                         showlegend=False, dragmode=False)
    selection = st.plotly_chart(figure, key=PICKER_KEY, on_select="rerun", selection_mode="points",
                                width="content", config={"displayModeBar": False})
    on_patch_click(selection)


def rows_figure(rows: np.ndarray, title: str) -> go.Figure:
    """``(L, H, gh, gw)`` attention rows as a layers × heads grid of small heatmaps."""
    layers, heads = rows.shape[:2]
    figure = px.imshow(rows.reshape(layers * heads, *rows.shape[2:]), facet_col=0, facet_col_wrap=heads,
                       facet_row_spacing=0.02, facet_col_spacing=0.01, color_continuous_scale=INFERNO,
                       title=title)
    for annotation in figure.layout.annotations:
        layer, head = divmod(int(annotation.text.split("=")[-1]), heads)
        annotation.text = f"L{layer} h{head}"
        annotation.font.size = 10
    figure.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    figure.update_layout(height=60 + PANEL_PX * layers, margin={"l": 0, "r": 0, "t": 60, "b": 0},
                         coloraxis_colorbar={"title": "attention"})
    return figure


def patch_view() -> None:
    st.subheader("Where does this patch look?")
    scene = state.scene()
    capture, layout = scene.capture, scene.capture.layout
    row, column = chosen_patch()
    token = patch_token(layout, row, column)
    params = state.explainer_params("rollout")
    picker, flows = st.columns([1, 2], gap="large")
    with picker:
        st.caption(f"Click a patch. Shown: patch ({row}, {column}), token {token} of {layout.num_tokens}.")
        patch_picker(row, column)
    with flows:
        settings = ", ".join(f"{k}={v}" for k, v in params.items())
        st.caption(f"Rollout rows (the rollout's current parameters: {settings}): how much of each patch "
                   "flows into the token through all the blocks.")
        left, right = st.columns(2)
        for cell, index, name in ((left, token, f"patch ({row}, {column})"),
                                  (right, layout.cls_index, "class token")):
            picture = widgets.overlay_image(rollout_row(capture, index, **params)[0])
            cell.image(picture, caption=f"rollout row of the {name}", width="stretch")
    st.caption("Attention rows, one panel per layer (rows) and head (columns): what the token attends to in "
               "one step, over the patches (prefix tokens left out); each panel on the same colour scale.")
    left, right = st.columns(2)
    tokens = ((left, token, f"Patch ({row}, {column})"), (right, layout.cls_index, "Class token"))
    for cell, index, name in tokens:
        rows = attention_rows(capture, index)[0].cpu().numpy()
        figure = rows_figure(rows, f"{name}: attention per layer and head")
        cell.plotly_chart(figure, width="stretch", theme=None)  # the Inferno scale as it is (no theme)


def main() -> None:
    st.header("Head fusion")
    try:
        fusion_grid()
        heads_of_layer()
        patch_view()
    except ValueError as error:
        st.error(str(error))
    widgets.share_link()


main()
