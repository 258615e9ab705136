"""Head fusion: the explainers that fuse heads, with the mean, max and min; then every head of a layer."""

import streamlit as st

from dashboard import state, widgets
from explainers import get_explainer, list_explainers
from explainers.params import HEAD, HEAD_FUSION, LAYER
from explainers.registry import method_label

HEADS_PER_ROW = 6
IMAGE_PX = 260


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


def main() -> None:
    st.header("Head fusion")
    try:
        fusion_grid()
        heads_of_layer()
    except ValueError as error:
        st.error(str(error))
    widgets.share_link()


main()
