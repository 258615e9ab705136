"""Review board: the saved reviews, filtered; open one to reopen its view, comment, export or delete it."""

from functools import partial

import pandas as pd
import plotly.io as pio
import streamlit as st

from dashboard import auth, review_panel, state, widgets
from dashboard.markup import escape
from explainers.registry import method_label
from explainers.reviews import Review, ReviewStore, ReviewSummary
from explainers.reviews.export import FORMATS, export_files, overlays, params_text, second_tiles
from explainers.reviews.store import MAX_AUTHOR_CHARS, MAX_COMMENT_CHARS, MAX_NOTES_CHARS, ReviewStoreError

ALL = "All"
#: Filter (a column of the board) → label.
FILTERS = {"model": "Model", "image_id": "Image", "method": "Method", "author": "Author"}
MIME = {"png": "image/png", "csv": "text/csv", "html": "text/html", "zip": "application/zip"}
COLUMNS = 5


def filters(board: ReviewStore) -> dict[str, str]:
    """One select per filter, offering the values present on the board; the filters that are set."""
    chosen = {}
    for column, (name, label) in zip(st.columns(len(FILTERS)), FILTERS.items(), strict=True):
        describe = method_label if name == "method" else str
        value = column.selectbox(label, [ALL, *board.distinct(name)], key=f"r.filter.{name}",
                                 format_func=lambda v, describe=describe: v if v == ALL else describe(v))
        if value != ALL:
            chosen[name] = value
    return chosen


def when(created_at: str) -> str:
    """An ISO UTC time to the minute: ``2025-01-31 14:05``."""
    return created_at[:16].replace("T", " ")


def shorten(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters (a board saved before the limits may hold longer text)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters not shown)"


def summary_label(summary: ReviewSummary) -> str:
    return f"#{summary.id} · {summary.target_name} · {summary.author} · {when(summary.created_at)}"


def board_table(summaries: list[ReviewSummary]) -> None:
    rows = [
        {
            "#": s.id,
            "Saved (UTC)": when(s.created_at),
            "Author": s.author,
            "Model": s.model,
            "Image": s.image_id,
            "Class": f"{s.target} {s.target_name}",
            "Methods": ", ".join(method_label(m) for m in s.methods),
            "Comments": s.num_comments,
            "Notes": s.notes,
        }
        for s in summaries
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def reopen(review: Review) -> None:
    """Make the review's view the current one (problems with it are reported there) and go to its page."""
    view, problems = state.ViewState.from_query(review.snapshot.state)
    for problem in problems:
        state.notify(problem)
    state.commit(view)
    st.switch_page(f"views/{view.page}.py")


def maps(review: Review) -> None:
    snapshot = review.snapshot
    pictures = [("Image", snapshot.image_id, snapshot.image)]
    pictures += [
        (method_label(m), params_text(snapshot.params.get(m, {})), picture)
        for m, picture in overlays(review).items()
    ]
    pictures += second_tiles(review)
    for start in range(0, len(pictures), COLUMNS):
        row = pictures[start : start + COLUMNS]
        for column, (title, caption, picture) in zip(st.columns(COLUMNS), row, strict=False):
            column.markdown(f"**{escape(title)}**")
            column.image(picture, caption=caption, width="stretch")


def comments(board: ReviewStore, review: Review) -> None:
    st.subheader(f"Comments ({len(review.comments)})")
    for comment in review.comments:
        with st.chat_message("user", avatar=":material/person:"):
            st.markdown(f"**{escape(comment.author)}** · {when(comment.created_at)} UTC")
            st.text(shorten(comment.text, MAX_COMMENT_CHARS))
    user = auth.identity()  # with sign-in, comments are signed by who is signed in
    with st.form(f"r.comment.{review.id}", clear_on_submit=True):
        author = user or st.text_input("Your name", key="r.comment.author", max_chars=MAX_AUTHOR_CHARS,
                                       help=f"At most {MAX_AUTHOR_CHARS:,} characters.")
        text = st.text_area("Comment", key="r.comment.text", max_chars=MAX_COMMENT_CHARS,
                            help=f"At most {MAX_COMMENT_CHARS:,} characters.")
        if st.form_submit_button("Add comment", icon=":material/add_comment:"):
            try:
                board.add_comment(review.id, author, text)
            except (ValueError, KeyError) as error:
                st.error(escape(error.args[0]))
            else:
                st.rerun()


def delete(board: ReviewStore, review: Review) -> None:
    with st.expander("Delete this review", icon=":material/delete:"):
        if not auth.may_delete(review.snapshot.owner):
            st.caption("Only the person who saved this review, or an admin, can delete it.")
            return
        sure = st.checkbox(f"Yes, delete review #{review.id} and its comments for everyone",
                           key="r.delete.sure")
        if st.button("Delete", type="primary", disabled=not sure, key="r.delete"):
            owner = None if not auth.enabled() or auth.is_admin() else auth.identity()
            try:
                board.delete(review.id, owner=owner)
            except ReviewStoreError as error:
                st.error(escape(error))
                return
            state.commit(state.view().with_option("review", None, state.scene().dims))
            st.session_state.pop("r.delete.sure", None)
            st.rerun()


def downloads(review: Review) -> None:
    for column, kind in zip(st.columns(len(FORMATS)), FORMATS, strict=True):
        name = f"review-{review.id}.{kind}"
        column.download_button(kind.upper(), data=partial(_export, review, kind), file_name=name,
                               mime=MIME[kind], icon=":material/download:", key=f"r.download.{kind}",
                               on_click="ignore", width="stretch")


def _export(review: Review, kind: str) -> bytes:
    return export_files(review, [kind])[f"review-{review.id}.{kind}"]


def show(board: ReviewStore, review: Review) -> None:
    snapshot = review.snapshot
    st.subheader(f"Review #{review.id}: {escape(snapshot.target_name)}")
    st.caption(escape(f"{snapshot.model} on {snapshot.device} · image {snapshot.image_id} · class "
                      f"{snapshot.target} · saved by {snapshot.author} on {when(review.created_at)} UTC"))
    if snapshot.second is not None:
        second = snapshot.second
        st.caption(escape(f"Compared with model B: {second.model} on {second.device}, class "
                          f"{second.target} {second.target_name}"))
    if st.button("Reopen this view", type="primary", icon=":material/open_in_browser:", key="r.reopen"):
        reopen(review)
    if snapshot.notes:
        st.markdown("**Notes**")
        st.text(shorten(snapshot.notes, MAX_NOTES_CHARS))
    maps(review)
    for name, rows in snapshot.scores.items():
        st.markdown(f"**{escape(name.capitalize())}**")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    for title, figure in snapshot.charts.items():
        st.plotly_chart(pio.from_json(figure), key=f"r.chart.{title}")
    st.markdown("**Export**")
    downloads(review)
    comments(board, review)
    delete(board, review)


def main() -> None:
    st.header("Review board")
    try:
        board = review_panel.board()
        summaries = board.find(**filters(board))
    except ReviewStoreError as error:  # damaged, locked, unreadable: say so, never a traceback
        st.error(escape(error))
        widgets.share_link()
        return
    if not summaries:
        st.info("No review matches. Save one from the Compare page with “Save to review board”.")
        widgets.share_link()
        return
    board_table(summaries)
    view = state.view()
    ids = [s.id for s in summaries]
    current = view.option("review")
    if current not in ids:
        if current is not None:
            st.warning(f"Review #{current} is not on this board (deleted, or filtered out): showing the "
                       "latest one.")
        current = ids[0]
    by_id = {s.id: s for s in summaries}
    chosen = widgets.controlled(st.selectbox, "r.review", current, label="Open review", options=ids,
                                format_func=lambda i: summary_label(by_id[i]))
    state.commit(view.with_option("review", chosen, state.scene().dims))
    try:
        review = board.get(chosen)
    except (KeyError, ReviewStoreError) as error:  # deleted by someone else since the list was read; damaged
        st.warning(escape(error.args[0]))
    else:
        show(board, review)
    widgets.share_link()


main()
