"""The load test's protocol client (``benchmarks/streamlit_client.py``) against a live dashboard: sessions
opened over Streamlit's websocket protocol receive every map of the page, and a slider move a new one."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from benchmarks.streamlit_client import Session
from tests.test_browser import EXPECTED, serving


async def crowd(url: str) -> tuple[list[list[str]], list[str], list[str]]:
    """Two sessions open Compare at once; then one opens the what-if page and moves its slider."""
    async def compare() -> list[str]:
        async with Session(url, timeout=120) as session:
            await session.open("/?page=compare")
            assert set(session.main_images()) <= set(session.fetched)
            return session.main_images()

    both = await asyncio.gather(compare(), compare())
    async with Session(url, timeout=120) as session:
        await session.open("/?page=what_if&explore=rollout")
        before = session.main_images()
        seconds = await session.move_slider("Discard ratio")
        assert 0 < seconds < 60
        return list(both), before, session.main_images()


def test_protocol_sessions_receive_every_map(tmp_path: Path):
    with serving(tmp_path) as (url, _):
        (first, second), before, after = asyncio.run(crowd(url))
        # At least the images the browser test waits for on Compare (tests/test_browser.py).
        assert len(first) >= EXPECTED["compare"][0]
        assert first == second  # the same link, the same pictures (media URLs are content hashes)
        assert all(url.startswith("/media/") for url in first)
        with urllib.request.urlopen(f"{url}{first[0]}", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("image/")
        assert len(before) == len(after) == EXPECTED["what_if"][0]
        assert after[0] != before[0]  # the map over the image changed
