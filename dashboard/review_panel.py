"""“Save to review board”: one call at the end of a page keeps its view, image, maps, scores and charts.

    review_panel.render(maps)                       # name → (gh, gw) map, as shown on the page
    review_panel.render(maps, second=maps_b, scores={"models agreement": rows})   # a two-model view

The snapshot holds the view's URL state (reopening a review sets it again), the image as the model saw
it, every map, their agreement and one-number summaries, a chart of the agreement, and the page's own
Plotly charts when it passes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go
import streamlit as st
import torch

from dashboard import auth, state
from dashboard.markup import escape
from explainers.attention_stats import MAP_SUMMARIES
from explainers.metrics.agreement import agreement_table
from explainers.registry import method_label
from explainers.reviews import ReviewStore, SecondModel, Snapshot, default_path
from explainers.reviews.export import png_bytes
from explainers.reviews.store import MAX_AUTHOR_CHARS, MAX_NOTES_CHARS


@st.cache_resource(show_spinner=False)
def _board(path: str) -> ReviewStore:
    return ReviewStore(path)


def board() -> ReviewStore:
    """The server's review board, shared by all sessions (it opens one connection per call)."""
    return _board(str(default_path()))


def agreement_chart(table: list[dict], methods: list[str]) -> go.Figure:
    """Spearman ρ between every pair of methods as a symmetric heatmap (1 on the diagonal)."""
    index = {m: i for i, m in enumerate(methods)}
    rho = [[1.0 if a == b else None for b in methods] for a in methods]
    for row in table:
        i, j = index[row["method A"]], index[row["method B"]]
        rho[i][j] = rho[j][i] = row["spearman"]
    labels = [method_label(m) for m in methods]
    heatmap = go.Heatmap(
        z=rho, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", texttemplate="%{z:.2f}"
    )
    title = "Agreement between methods (Spearman ρ)"
    return go.Figure(heatmap, layout={"title": title, "yaxis": {"autorange": "reversed", "automargin": True}})


def snapshot(
    maps: Mapping[str, torch.Tensor],
    author: str,
    notes: str,
    charts: Mapping[str, go.Figure] | None = None,
    *,
    second: Mapping[str, torch.Tensor] | None = None,
    scores: Mapping[str, list[dict]] | None = None,
    owner: str | None = None,
) -> Snapshot:
    """The current view and scene with these maps (``second``: the second model's, in a two-model view)
    and any extra ``scores`` tables, as the review board keeps them (``owner``: the signed-in
    identity saving it, if any)."""
    view, scene = state.view(), state.scene()
    batched = {method: relevance.detach().float().cpu()[None] for method, relevance in maps.items()}
    summaries = [
        {"method": method, **{name: float(summary(m)[0]) for name, summary in MAP_SUMMARIES.items()}}
        for method, m in batched.items()
    ]
    scores: dict[str, list[dict]] = {"map summaries": summaries, **(scores or {})}
    figures = dict(charts or {})
    if len(maps) >= 2:
        scores["agreement"] = agreement_table(batched, view.option("top_percent") / 100).to_dict("records")
        figures.setdefault("Agreement", agreement_chart(scores["agreement"], list(maps)))
    return Snapshot(
        author=author,
        notes=notes,
        model=scene.model.spec,
        device=scene.model.device,
        image_id=scene.image.ref,
        image=png_bytes(scene.analysis.display),
        state=view.to_query(),
        target=scene.target,
        target_name=scene.class_name(scene.target),
        methods=tuple(maps),
        params={method: state.explainer_params(method) for method in maps},
        maps={method: m[0].numpy() for method, m in batched.items()},
        scores=scores,
        charts={title: figure.to_json() for title, figure in figures.items()},
        owner=owner,
        second=None if second is None else second_model(second),
    )


def second_model(maps: Mapping[str, torch.Tensor]) -> SecondModel:
    """The second model's part of a review: its slot, class, view of the image and ``maps``."""
    scene = state.second_scene()
    assert scene is not None, "a second model's maps need a second model"
    return SecondModel(
        model=scene.model.spec,
        device=scene.model.device,
        target=scene.target,
        target_name=scene.class_name(scene.target),
        image=png_bytes(scene.analysis.display),
        maps={method: relevance.detach().float().cpu().numpy() for method, relevance in maps.items()},
    )


def render(
    maps: Mapping[str, torch.Tensor],
    charts: Mapping[str, go.Figure] | None = None,
    *,
    second: Mapping[str, torch.Tensor] | None = None,
    scores: Mapping[str, list[dict]] | None = None,
) -> None:
    """The “Save to review board” form: author, notes, and a button that stores the snapshot."""
    with st.expander("Save to review board", icon=":material/bookmark_add:"):
        if not maps:
            st.caption("Choose at least one explainer to save a review.")
            return
        if state.scene().headless:
            st.caption("Reviews record the class explained; this model has no classifier, so its maps cannot "
                       "be saved to the board.")
            return
        user = auth.identity()  # with sign-in, the author is who is signed in
        if user is None:
            author = st.text_input("Your name", key="review.author", max_chars=MAX_AUTHOR_CHARS,
                                   help=f"At most {MAX_AUTHOR_CHARS:,} characters.")
        else:
            author = user
            st.caption(f"Saved as {escape(user)}")
        with st.form("review.save", clear_on_submit=True, border=False):
            notes = st.text_area("Notes", placeholder="What should the team look at?", key="review.notes",
                                 max_chars=MAX_NOTES_CHARS, help=f"At most {MAX_NOTES_CHARS:,} characters.")
            saved = st.form_submit_button("Save to review board", icon=":material/save:")
        if saved:
            if not author.strip():
                st.error("Enter your name: every review on the board has an author.")
                return
            try:
                review_id = board().save(snapshot(maps, author, notes, charts, second=second, scores=scores,
                                                  owner=user))
            except ValueError as error:  # too long, or the board cannot be written (ReviewStoreError)
                st.error(escape(error))
                return
            st.success(f"Saved as review #{review_id}.")
            st.page_link("views/reviews.py", label="Open the review board", icon=":material/rate_review:")
