"""Attention distributions (Plotly): entropy per head, CLS attention per layer, attention distance against
depth, the rollout built up block by block, and what the discard ratio does to a map. With a second model,
the entropy and attention-distance charts overlay both models, one colour each."""

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


def models() -> list[tuple[str, state.Scene]]:
    """``(name, scene)`` of each model of the view: one, or A and B."""
    second = state.second_scene()
    if second is None:
        return [("", state.scene())]
    return [(f"A: {state.scene().label}", state.scene()), (f"B: {second.label}", second)]


def per_head(values: np.ndarray, value: str, model: str) -> pd.DataFrame:
    """A ``(L, H)`` statistic as one row per layer and head."""
    layers, heads = values.shape
    return pd.DataFrame({
        "layer": np.repeat(np.arange(layers), heads),
        "head": np.tile(np.arange(heads), layers),
        value: values.reshape(-1),
        "model": model,
    })


@st.fragment
def entropy_heatmap() -> None:
    st.subheader("Attention entropy per layer and head")
    query = widgets.option_control("entropy", label="Rows", format_func={
        "all": "mean over every query token", "cls": "the CLS token's row"}.get)
    if state.second_scene() is not None:
        entropy_of_both(query)
        return
    entropy = attention_stats.attention_entropy(state.scene().capture, query=query)[0].cpu().numpy()
    figure = px.imshow(entropy, text_auto=".2f", aspect="auto", color_continuous_scale="Viridis",
                       labels={"x": "head", "y": "layer", "color": "entropy (nats)"})
    figure.update_xaxes(dtick=1).update_yaxes(dtick=1).update_layout(height=CHART_PX)
    st.plotly_chart(figure, width="stretch")


def entropy_of_both(query: str) -> None:
    """Both models' entropy per layer and head, divided by log N (1: uniform) since N may differ."""
    value = "entropy / log N"
    frames = []
    for name, scene in models():
        entropy = attention_stats.attention_entropy(scene.capture, query=query)[0].cpu().numpy()
        frames.append(per_head(entropy / np.log(scene.capture.layout.num_tokens), value, name))
    figure = px.strip(pd.concat(frames), x="layer", y=value, color="model", hover_data=["head"])
    figure.update_xaxes(dtick=1).update_layout(height=CHART_PX, legend={"orientation": "h", "y": -0.2})
    st.caption("One point per head; entropy divided by that of uniform attention over the model's N tokens, "
               "so that models with different token counts compare.")
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
    value = "distance (px)"
    distance = attention_stats.mean_attention_distance
    distances = {name: distance(s.capture, s.patch_size)[0] for name, s in models()}
    frames = [per_head(values.cpu().numpy(), value, name) for name, values in distances.items()]
    frame = pd.concat(frames).astype({"head": str})
    if len(frames) == 1:
        figure = px.scatter(frame, x="layer", y=value, color="head")
    else:
        figure = px.scatter(frame, x="layer", y=value, color="model", hover_data=["head"])
        figure.update_layout(legend={"orientation": "h", "y": -0.2})
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
