"""Entry point: ``streamlit run dashboard/app.py``. Navigation and the shared sidebar, nothing else.

The pages live in ``views/``, not ``pages/``: Streamlit would treat a ``pages/`` folder as an old-style
multipage app and could run a page without this script (and its sidebar) around it.
"""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `dashboard`

import streamlit as st

from dashboard import auth, sidebar, state
from dashboard.markup import escape

ICONS = {
    "compare": ":material/compare:",
    "head_fusion": ":material/view_module:",
    "distributions": ":material/bar_chart:",
    "what_if": ":material/tune:",
    "evaluate": ":material/analytics:",
    "reviews": ":material/rate_review:",
}

# A local file: a material icon as page icon makes the browser fetch it from fonts.gstatic.com (offline: no).
ICON = Path(__file__).with_name("icon.png")
st.set_page_config(page_title="ViT explainers", page_icon=str(ICON), layout="wide")
auth.require()  # when the server configures sign-in, nothing below runs for a visitor who is not signed in
pages = {
    key: st.Page(f"views/{key}.py", title=title, icon=ICONS[key], url_path=key, default=key == "compare")
    for key, title in state.PAGES.items()
}
page = st.navigation(list(pages.values()), position="top")
key = next(k for k, p in pages.items() if p.url_path == page.url_path)
linked = "page" in st.query_params  # a shared link names its page in the query; a page's own path does not
if state.first_run() and linked and state.view().page != key:
    st.switch_page(pages[state.view().page])
state.commit(replace(state.view(), page=key))
sidebar.render()
with st.sidebar:
    auth.account()
for kind, message in state.take_notices():  # they quote links and file names: shown as plain text
    (st.error if kind == "error" else st.warning)(escape(message))
page.run()
