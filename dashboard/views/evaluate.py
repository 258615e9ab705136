"""Evaluate: score explainers on a set of images with :mod:`explainers.evaluate` (the loop of the command
line): perturbation curves, localisation, sanity check and agreement, as Plotly charts, a mean ± std table
and a CSV download. A run can be stopped at any time and continued later; rows done are kept.

Or open a results file written by ``python -m explainers evaluate`` (CSV, or Parquet: one file or the
folder of parts), uploaded or by its path on the server: the same tables and charts, with Chefer et al.'s
figure, paired bootstrap intervals and the metrics' agreement on the ranking (:mod:`explainers.statistics`).
A file is read once (:func:`explainers.results.read_results`) and kept per (path, modification time, size)
or per content hash; the bootstrap is cached per file and score."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import state, widgets
from explainers import list_explainers
from explainers.evaluate import (
    KEY_COLUMNS,
    METRICS,
    TARGETS,
    Evaluation,
    Sample,
    cluttered_samples,
    curve_means,
    sanity_means,
    summary,
    summary_table,
    to_sample,
)
from explainers.images import EXTENSIONS, content_hash, read_image
from explainers.metrics.perturbation import BASELINES, CURVES
from explainers.metrics.sanity import SANITY_THRESHOLD, fails_sanity
from explainers.models import LoadedModel
from explainers.registry import method_label
from explainers.results import read_results
from explainers.reviews.export import safe_csv
from explainers.statistics import (
    CHEFER_LABEL,
    chefer_table,
    paired_bootstrap,
    ranking_agreement,
    score_directions,
)

ROWS, SIGNATURE, TOTAL, SKIPPED = "ev.rows", "ev.signature", "ev.total", "ev.skipped"
#: Parameter expanders per row under the method picker.
PARAMETER_COLUMNS = 5
SOURCES = {"digits": "Generated cluttered digits", "gallery": "Gallery", "uploads": "Uploaded images"}
METRIC_LABELS = {
    "perturbation": "Perturbation curves",
    "localisation": "Localisation (images with ground truth)",
    "sanity": "Sanity check (cascading randomisation)",
    "agreement": "Agreement between methods",
}
MEASURES = {"probability": "target-class probability", "top1": "top-1 correct"}
ARROWS = {True: "↑", False: "↓"}
MAX_DIGITS = 2000
MODES = {"run": "Run an evaluation here", "open": "Open a results file"}
RESAMPLES = 1000

SampleSource = Callable[[list[tuple[str, str]]], list[Sample]]


def image_set(model: LoadedModel) -> tuple[SampleSource, str]:
    """The controls choosing the images; a function building their samples when the run starts."""
    source = st.radio("Images", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="ev.source")
    if source == "digits":
        left, right = st.columns(2)
        count = int(left.number_input("Number of digits", 1, MAX_DIGITS, 50, key="ev.count"))
        seed = int(right.number_input("Seed", 0, 2**31 - 1, 0, key="ev.seed"))
        described = f"{count} held-out digits, seed {seed}"
        return lambda skipped: list(cluttered_samples(model, count, seed)), described
    if source == "gallery":
        items = list(state.gallery().values())
        known = sum(item.mask is not None for item in items)
        st.caption(f"{len(items)} images; localisation is scored on the {known} with ground truth.")
        return lambda skipped: [to_sample(model, i.id, i.image, i.label, i.mask) for i in items], "gallery"
    files = st.file_uploader("Images to evaluate", type=list(EXTENSIONS), accept_multiple_files=True,
                             key="ev.uploads", help="PNG, JPEG, WebP or BMP; unreadable files are skipped.")

    def read(skipped: list[tuple[str, str]]) -> list[Sample]:
        samples = []
        for upload in files:
            data = upload.getvalue()
            try:
                samples.append(to_sample(model, f"{upload.name}#{content_hash(data)[:8]}", read_image(data)))
            except ValueError as error:
                skipped.append((upload.name, str(error)))
        return samples

    return read, f"{len(files)} uploaded image(s)"


def settings(model: LoadedModel) -> Evaluation | None:
    """Explainers (with their parameters, shared with the other pages) and metric settings."""
    view = state.view()
    methods = widgets.controlled(st.multiselect, "ev.methods", view.shown_methods(), label="Explainers",
                                 options=list_explainers(), format_func=method_label)
    state.commit(replace(state.view(), methods=None if methods == list_explainers() else tuple(methods)))
    if methods:
        for start in range(0, len(methods), PARAMETER_COLUMNS):  # rows of expanders, readable widths
            row = methods[start : start + PARAMETER_COLUMNS]
            for column, method in zip(st.columns(PARAMETER_COLUMNS), row, strict=False):
                with column.expander(method_label(method)):
                    widgets.explainer_controls(method)
    left, middle, right = st.columns(3)
    metrics = left.multiselect("Metrics", METRICS, default=list(METRICS), format_func=METRIC_LABELS.get,
                               key="ev.metrics")
    baseline = middle.selectbox("Removed pixels become", BASELINES, key="ev.baseline",
                                help="black, the mean colour of the model's training data, a blurred copy, "
                                "or road: noisy linear imputation from the kept neighbours (Rong et al.)")
    target = right.selectbox("Class explained", TARGETS, key="ev.target",
                             help="the model's prediction, or the true label (images with a label only)")
    left, middle, right = st.columns(3)
    top = left.slider("Top region for IoU (% of the patches)", 1, 100, 10, key="ev.top")
    step = middle.select_slider("Perturbation step (% of patches)", [1, 2, 5, 10], value=10, key="ev.step")
    batch = right.select_slider("Batch size", [1, 2, 4, 8, 16, 32, 64], value=32, key="ev.batch")
    try:
        return Evaluation(model, {m: state.explainer_params(m) for m in methods}, metrics=metrics,
                          baseline=baseline, target=target, topk=top / 100, step=step, batch_size=batch)
    except ValueError as error:
        st.warning(str(error))
        return None


def run(evaluation: Evaluation, samples: list[Sample], done: set[tuple[str, ...]]) -> None:
    """Evaluate, keeping each row in the session as it comes; a Stop click ends the run between rows."""
    rows: list[dict] = st.session_state[ROWS]
    finished = {row["image_id"] for row in rows}
    st.button("Stop", icon=":material/stop:", help="Rows done so far are kept; Continue picks up from there.")
    bar = st.progress(len(finished) / max(len(samples), 1), text="Starting…")
    for row in evaluation.run(samples, done):
        rows.append(row)
        finished.add(row["image_id"])
        bar.progress(len(finished) / len(samples), text=f"{len(finished)} / {len(samples)} images")
    bar.empty()


def results(frame: pd.DataFrame, token: str | None = None) -> None:
    """Tables and charts of result rows; ``token`` names an opened file (its statistics are cached by it
    and it is not offered for download again), ``None`` a run made on this page."""
    st.subheader("Scores (mean ± std over images)")
    st.dataframe(summary_table(frame))
    if token is None:
        st.download_button("Download every row as CSV", safe_csv(frame), file_name="evaluation.csv",
                           mime="text/csv", icon=":material/download:")
    statistics(frame, token)
    curves = curve_means(frame)
    if len(curves):
        st.subheader("Perturbation curves")
        measure = st.radio("Measure", list(MEASURES), format_func=MEASURES.get, horizontal=True, key="ev.m")
        titles = {name: f"{curve.label} {ARROWS[curve.higher_is_better]}" for name, curve in CURVES.items()}
        shown = curves[curves["measure"] == measure].assign(curve=lambda f: f["curve"].map(titles))
        figure = px.line(shown, x="fraction", y="mean", color="method", facet_col="curve", markers=True,
                         hover_data={"std": ":.3f", "n": True},
                         labels={"fraction": "share of patches switched", "mean": measure})
        figure.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
        st.plotly_chart(figure, width="stretch")
    sanity = sanity_means(frame)
    if len(sanity) and (sanity["blocks"] > 0).any():
        st.subheader("Sanity check: rank correlation with the trained model's map")
        figure = px.line(sanity, x="blocks", y="mean", color="method", markers=True,
                         hover_data={"std": ":.3f"},
                         labels={"blocks": "blocks randomised, from the top", "mean": "Spearman ρ"})
        for level in (SANITY_THRESHOLD, -SANITY_THRESHOLD):
            figure.add_hline(y=level, line_dash="dot", line_color="grey")
        st.caption(f"A method fails when its mean |ρ| with every block random is {SANITY_THRESHOLD} or more: "
                   "its map still ranks the patches as before (or in reverse), whatever the weights.")
        st.plotly_chart(figure, width="stretch")
        groups = frame.groupby("method", sort=False)["sanity_abs_rho"]
        failed = [m for m, rho in groups if fails_sanity(rho.to_numpy())]
        verdict = ", ".join(failed) if failed else "none: every method's maps change with the weights"
        st.markdown(f"**Fail the sanity check:** {verdict}")
    scores = summary(frame)
    if len(scores):
        st.subheader("Scores per method")
        scores["label"] += " " + scores["higher_is_better"].map(ARROWS)
        rows = -(-scores["label"].nunique() // 3)
        figure = px.bar(scores, x="method", y="mean", error_y="std", color="method", facet_col="label",
                        facet_col_wrap=3, facet_row_spacing=0.4 / rows, height=280 * rows)
        figure.update_yaxes(matches=None, showticklabels=True)
        figure.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
        st.plotly_chart(figure, width="stretch")
    agreement = [c for c in frame.columns if c.startswith("spearman_vs_")]
    if agreement:
        st.subheader("Agreement: mean Spearman ρ between methods' maps")
        matrix = frame.groupby("method", sort=False)[agreement].mean()
        matrix.columns = [c.removeprefix("spearman_vs_") for c in agreement]
        matrix = matrix.loc[:, list(matrix.index)].fillna(1.0)
        st.plotly_chart(px.imshow(matrix, text_auto=".2f", zmin=-1, zmax=1, color_continuous_scale="RdBu"),
                        width="stretch")


def statistics(frame: pd.DataFrame, token: str | None) -> None:
    """Chefer et al.'s table, paired differences with bootstrap intervals, ranking agreement."""
    chefer = chefer_table(frame)
    if len(chefer):
        st.subheader(CHEFER_LABEL)
        st.dataframe(chefer.round(2), hide_index=True)
        st.caption("Top-1 accuracy on the perturbed images, averaged over the images at 0 %, 10 %, … 90 % of "
                   "the patches removed; area under that curve by the trapezoid rule, ×100. Positive: most "
                   "relevant first (lower is better); negative: least relevant first (higher is better).")
    scores = score_directions(frame)
    if frame["method"].nunique() < 2 or not scores:
        return
    st.subheader("Differences between methods (paired bootstrap, 95 %)")
    score = st.selectbox("Score", list(scores), key="ev.diff",
                         format_func=lambda c: f"{scores[c][0]} {ARROWS[scores[c][1]]}")
    if token:
        table = _differences(token, score, frame)
    else:
        table = paired_bootstrap(frame, score, resamples=RESAMPLES)
    st.dataframe(table, hide_index=True)
    st.caption(f"Mean difference a − b over the images scored by both, and its 95 % interval from "
               f"{RESAMPLES} resamples of the images; 'better' names a method only when the interval "
               "excludes 0.")
    agreement = ranking_agreement(frame)
    if len(agreement) >= 2:
        st.subheader("Do the metrics rank the methods alike? (Kendall's τ-b)")
        st.plotly_chart(px.imshow(agreement, text_auto=".2f", zmin=-1, zmax=1, color_continuous_scale="RdBu"),
                        width="stretch")


@st.cache_data(max_entries=32, show_spinner="Bootstrapping…")
def _differences(token: str, score: str, _frame: pd.DataFrame) -> pd.DataFrame:
    return paired_bootstrap(_frame, score, resamples=RESAMPLES)


def _stamp(path: Path) -> tuple[float, int]:
    """Latest modification time and total size of a file, or of the files in a folder (Parquet parts)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    return max((s.st_mtime for s in stats), default=0.0), sum(s.st_size for s in stats)


def _read_upload(suffix: str, data: bytes) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"results{suffix}"
        path.write_bytes(data)
        return read_results(path)


def _results(token: str, read: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The results file ``token`` names, read once for all sessions (:attr:`state.Caches.results`)."""
    with st.spinner("Reading the results…"):
        return state.caches().results.get_or_compute(token, read)


def opened() -> None:
    """The results of a file made by the command line (or by a Ray run), uploaded or on the server."""
    st.caption("A results file of `python -m explainers evaluate --out …`: a CSV, or Parquet (one file, or "
               "the folder of part files). Files too large to upload open by their path on the server.")
    left, right = st.columns(2)
    upload = left.file_uploader("Upload a results file", type=["csv", "parquet"], key="ev.file")
    typed = right.text_input("…or its path on the server", key="ev.path", placeholder="results/eval.parquet")
    try:
        if upload is not None:
            data = upload.getvalue()
            token = content_hash(data)
            suffix = Path(upload.name).suffix.lower()
            frame = _results(f"{token}{suffix}", lambda: _read_upload(suffix, data))
        elif typed.strip():
            path = Path(typed.strip()).expanduser()
            if not path.exists():
                raise ValueError(f"{path} does not exist on the server")
            stamp = _stamp(path)
            token = f"{path.resolve()}@{stamp}"
            frame = _results(token, lambda: read_results(path))
        else:
            st.info("Upload a results file or type its path.")
            return
    except (ValueError, OSError) as error:
        st.error(f"Cannot open these results: {error}")
        return
    if frame.empty:
        st.warning("The file holds no rows yet.")
        return
    settings = frame[["method", "params", "baseline", "target_mode"]].drop_duplicates("method")
    st.markdown(f"**{len(frame):,} rows**, {frame['image_id'].nunique():,} images, {len(settings)} methods.")
    st.dataframe(settings, hide_index=True)
    results(frame, token)


def main() -> None:
    model = state.scene().model
    st.header("Evaluate explainers")
    if state.scene().headless:
        st.info("The evaluation measures how a class probability changes as patches are removed; this model "
                "has no classifier (headless), so there is nothing to evaluate. Choose a classifier in the "
                "sidebar.")
        return
    if st.radio("Results", list(MODES), format_func=MODES.get, horizontal=True, key="ev.mode") == "open":
        opened()
        return
    st.caption(f"{model.spec} · every score is computed per image and method, then averaged over the images. "
               "↑: higher is better, ↓: lower is better.")
    build, described = image_set(model)
    evaluation = settings(model)
    if evaluation is None:
        return
    signature = (model.spec, model.device, model.weights, described, tuple(evaluation.columns),
                 tuple(evaluation.key("", m) for m in evaluation.methods))
    rows = st.session_state.setdefault(ROWS, [])
    resumable = bool(rows) and st.session_state.get(SIGNATURE) == signature and (
        len({r["image_id"] for r in rows}) < st.session_state.get(TOTAL, 0))
    left, right, _ = st.columns([1, 1, 4])
    start = left.button("Run", type="primary", icon=":material/play_arrow:")
    resume = right.button("Continue", icon=":material/resume:", disabled=not resumable)
    if start or resume:
        skipped: list[tuple[str, str]] = []
        with st.spinner("Preparing the images…"):
            samples = build(skipped)
        if start:
            st.session_state[ROWS], st.session_state[SIGNATURE] = [], signature
        st.session_state[TOTAL], st.session_state[SKIPPED] = len(samples), skipped
        done = {tuple(row[c] for c in KEY_COLUMNS) for row in st.session_state[ROWS]}
        run(evaluation, samples, done)
        st.rerun()  # redraw the buttons for the finished run
    for name, reason in st.session_state.get(SKIPPED, []):
        st.warning(f"Skipped {name}: {reason}")
    rows = st.session_state[ROWS]
    if not rows:
        st.info("Choose explainers, metrics and images, then Run.")
        return
    images = len({row["image_id"] for row in rows})
    if images < st.session_state.get(TOTAL, 0):
        st.warning(f"Stopped after {images} of {st.session_state[TOTAL]} images: the scores cover those; "
                   "Continue to evaluate the rest.")
    results(pd.DataFrame(rows))


main()
widgets.share_link()
