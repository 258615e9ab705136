"""Attention distributions (Plotly): entropy per head, CLS attention per layer, attention distance against
depth, the rollout built up block by block, and what the discard ratio does to a map."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
import torch

import explainers
from dashboard import state, widgets
from explainers import Capture, attention_stats
from explainers.registry import method_label

ROLLOUT = "rollout"
RATIOS = np.round(np.linspace(0.0, 0.95, 20), 2)
CHART_PX = 400
PANELS_PER_ROW, PANEL_PX = 6, 210
SUMMARY_LABELS = {
    "entropy": "normalised entropy of the map",
    "top_mass": "share of relevance in the top 10% of patches",
    "gini": "Gini coefficient of the map",
}


@st.fragment
def entropy_heatmap() -> None:
    st.subheader("Attention entropy per layer and head")
    query = widgets.option_control("entropy", label="Rows", format_func={
        "all": "mean over every query token", "cls": "the CLS token's row"}.get)
    entropy = attention_stats.attention_entropy(state.scene().capture, query=query)[0].cpu().numpy()
    figure = px.imshow(entropy, text_auto=".2f", aspect="auto", color_continuous_scale="Viridis",
                       labels={"x": "head", "y": "layer", "color": "entropy (nats)"})
    figure.update_xaxes(dtick=1).update_yaxes(dtick=1).update_layout(height=CHART_PX)
    st.plotly_chart(figure, width="stretch")


@st.fragment
def cls_distribution() -> None:
    st.subheader("The CLS token's attention to the patches, per layer")
    chart = widgets.option_control("chart", label="Chart")
    capture = state.scene().capture
    values = attention_stats.cls_attention(capture)[0].cpu().numpy()  # (L, H, P)
    layers, heads, patches = values.shape
    axis = "log₁₀ attention"
    frame = pd.DataFrame({
        "layer": np.repeat(np.arange(layers), heads * patches),
        axis: np.log10(np.maximum(values.reshape(-1), np.finfo(np.float32).tiny)),
    })
    uniform = np.log10(1 / capture.layout.num_tokens)
    if chart == "violin":
        figure = px.violin(frame, x="layer", y=axis, box=True, points=False)
        figure.update_xaxes(dtick=1).add_hline(y=uniform, line_dash="dot", annotation_text="uniform")
    else:
        figure = px.histogram(frame, x=axis, facet_col="layer", facet_col_wrap=min(layers, 6), nbins=40)
        figure.add_vline(x=uniform, line_dash="dot")
    st.caption(f"All {heads} heads pooled, {patches} patches each, on a log scale; the dotted line is "
               f"uniform attention over the {capture.layout.num_tokens} tokens.")
    st.plotly_chart(figure, width="stretch")


def attention_distance() -> None:
    st.subheader("Mean attention distance per head against depth")
    scene = state.scene()
    distance = attention_stats.mean_attention_distance(scene.capture, scene.patch_size)[0].cpu().numpy()
    layers, heads = distance.shape
    frame = pd.DataFrame({
        "layer": np.repeat(np.arange(layers), heads),
        "head": np.tile(np.arange(heads), layers).astype(str),
        "distance (px)": distance.reshape(-1),
    })
    figure = px.scatter(frame, x="layer", y="distance (px)", color="head")
    figure.update_traces(marker_size=9).update_xaxes(dtick=1).update_layout(height=CHART_PX)
    st.caption("As in Dosovitskiy et al. 2021, Fig. 7: the distance between query and key patches in input "
               "pixels, weighted by the attention (patch tokens only).")
    st.plotly_chart(figure, width="stretch")


@st.cache_data(max_entries=16, show_spinner=False)
def rollout_stops(key: tuple, params: tuple, _capture: Capture) -> list[torch.Tensor]:
    """Rollout maps after each block from ``start_layer`` on (cached per analysis and parameters)."""
    values = dict(params)
    return [explainers.compute(_capture.upto(stop), ROLLOUT, **values)[0].cpu()
            for stop in range(values["start_layer"] + 1, _capture.num_layers + 1)]


@st.cache_data(max_entries=16, show_spinner=False)
def sweep(key: tuple, method: str, params: tuple, summary: str, _capture: Capture) -> list[float]:
    """``summary`` of the map for every ratio of :data:`RATIOS` (cached per analysis and parameters)."""
    summarise, values = attention_stats.MAP_SUMMARIES[summary], dict(params)
    return [float(summarise(explainers.compute(_capture, method, **{**values, "discard_ratio": ratio}))[0])
            for ratio in RATIOS.tolist()]


def rollout_by_layer() -> None:
    st.subheader("Rollout built up block by block")
    scene = state.scene()
    params = state.explainer_params(ROLLOUT)
    stops = range(params["start_layer"] + 1, scene.capture.num_layers + 1)
    maps = rollout_stops(scene.analysis.key, tuple(params.items()), scene.capture)
    images = np.stack([widgets.overlay_image(relevance) for relevance in maps])
    figure = px.imshow(images, facet_col=0, facet_col_wrap=PANELS_PER_ROW, facet_col_spacing=0.01,
                       facet_row_spacing=0.06)
    for annotation, stop in zip(figure.layout.annotations, stops, strict=True):
        annotation.text = f"blocks {params['start_layer']}–{stop - 1}"
    rows = -(-len(images) // PANELS_PER_ROW)
    figure.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    figure.update_layout(height=40 + PANEL_PX * rows, margin={"l": 0, "r": 0, "t": 30, "b": 0})
    settings = ", ".join(f"{k}={v}" for k, v in params.items())
    st.caption(f"Attention rollout with its current parameters ({settings}), stopped after each block.")
    st.plotly_chart(figure, width="stretch")


@st.fragment
def discard_sweep() -> None:
    st.subheader("How the discard ratio changes the map")
    left, right = st.columns(2)
    with left:
        method = widgets.option_control("sweep", label="Explainer", format_func=method_label)
    with right:
        summary = widgets.option_control("summary", label="Summary", format_func=SUMMARY_LABELS.get)
    scene, params = state.scene(), state.explainer_params(method)
    values = sweep(scene.analysis.key, method, tuple(params.items()), summary, scene.capture)
    figure = px.line(x=RATIOS, y=values, markers=True,
                     labels={"x": "discard ratio", "y": SUMMARY_LABELS[summary]})
    figure.add_vline(x=params["discard_ratio"], line_dash="dot",
                     annotation_text="current")
    st.plotly_chart(figure, width="stretch")


def main() -> None:
    st.header("Attention distributions")
    try:
        left, right = st.columns(2, gap="large")
        with left:
            entropy_heatmap()
        with right:
            attention_distance()
        cls_distribution()
        rollout_by_layer()
        discard_sweep()
    except ValueError as error:
        st.error(str(error))
    widgets.share_link()


main()
