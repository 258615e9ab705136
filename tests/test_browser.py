"""End to end in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright).

The test starts the Streamlit server itself on a free localhost port, waits for it, and stops it.
Set ``VIT_EXPLAIN_SCREENSHOTS=docs/screenshots`` to write the page screenshots used by the README.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: Page → the rest of the link opened in the browser (the what-if page with non-default parameters).
PAGES = {
    "compare": "",
    "head_fusion": "",
    "distributions": "",
    "what_if": "&rollout.discard_ratio=0.8&rollout.head_fusion=max",
    "evaluate": "",
    "reviews": "",
}
START_TIMEOUT_S, RENDER_TIMEOUT_MS = 120, 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                       "/usr/bin/chromium (.ci/run installs it: apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard served on 127.0.0.1 for this module; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "VIT_EXPLAIN_DATA_DIR": str(tmp_path_factory.mktemp("data"))}
    command = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Streamlit server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def wait_until_idle(page) -> None:
    """Wait for the first image or chart of the main area (or the link at the end of a page that has
    neither), then for the app to finish running."""
    page.locator("[data-testid=stMain] [data-testid=stImage] img, [data-testid=stMain] .js-plotly-plot, "
                 "[data-testid=stMain] [data-testid=stCode]").first.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')",
                           timeout=RENDER_TIMEOUT_MS)


FIRST_MAP = "[data-testid=stMain] [data-testid=stImage] img"


def first_map(page) -> str:
    return page.locator(FIRST_MAP).first.get_attribute("src")


def test_moving_a_slider_updates_the_map(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/?page=what_if&explore=rollout")
    wait_until_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    before = first_map(page)
    slider = page.locator("[data-testid=stSlider]").filter(has_text="Discard ratio").get_by_role("slider")
    slider.focus()
    for _ in range(50):
        slider.press("ArrowRight")
    page.wait_for_function("([selector, src]) => !document.querySelector(selector).src.endsWith(src)",
                           arg=[FIRST_MAP, before], timeout=RENDER_TIMEOUT_MS)
    wait_until_idle(page)
    assert first_map(page) != before
    assert float(dict(parse_qsl(urlsplit(page.url).query))["rollout.discard_ratio"]) > 0
    assert "Updated in" in page.locator("[data-testid=stAlertContentSuccess]").inner_text()
    shot = tmp_path / "what_if.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    page.close()


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders(server, browser, tmp_path, name):
    """Each page from a shared link, without an exception and with the link's state; a screenshot."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{server}/?page={name}{PAGES[name]}")
    wait_until_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert urlsplit(page.url).path.strip("/") in (name, "")
    assert set(parse_qsl(PAGES[name].lstrip("&"))) <= set(parse_qsl(urlsplit(page.url).query))
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max(900, height), 4000)})
    wait_until_idle(page)
    folder = Path(os.environ.get("VIT_EXPLAIN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").stat().st_size > 10_000
    page.close()


def test_a_headless_model_takes_a_reference_image(server, browser, tmp_path):
    """A headless Hugging Face backbone: the sidebar asks for a reference image, then explains similarity."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    transformers.Dinov2Model(transformers.Dinov2Config(**small, mlp_ratio=2)).save_pretrained(tmp_path)
    crop = {"height": 32, "width": 32}
    transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop).save_pretrained(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/?model=hf:{tmp_path}")
    wait_until_idle(page)
    sidebar = page.locator("[data-testid=stSidebar]")
    assert "headless" in sidebar.inner_text() and "Reference image" in sidebar.inner_text()
    reference = page.locator("[data-testid=stSelectbox]").filter(has_text="Explain the similarity to")
    reference.click()
    page.get_by_role("option").nth(2).click()
    page.get_by_text("Cosine similarity of the embeddings").wait_for(timeout=RENDER_TIMEOUT_MS)
    wait_until_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert dict(parse_qsl(urlsplit(page.url).query))["reference"].startswith("gallery:")
    assert "find this image like" in page.locator("[data-testid=stMain]").inner_text()
    folder = Path(os.environ.get("VIT_EXPLAIN_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(folder / "headless_reference.png"), full_page=True)
    page.close()
