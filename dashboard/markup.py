"""User text inside Streamlit's Markdown, shown as the characters typed: never an image, a link, HTML,
a colour or icon directive, or LaTeX.

Streamlit renders Markdown in ``st.markdown``, captions, headers and messages, and a Markdown image
(``![t](http://host/p.png)``) makes every viewer's browser fetch that address. CommonMark lets a
backslash escape any ASCII punctuation character, so escaping all of them leaves nothing for the
parser to interpret (and Streamlit's ``:name[…]``, ``:material/…:`` and ``$…$`` extensions are
punctuation too); the text reads the same.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape(text: object) -> str:
    """``text`` as Markdown that renders as exactly that text."""
    return _PUNCTUATION.sub(r"\\\1", str(text))
