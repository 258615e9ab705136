"""End to end in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright).

The test starts the Streamlit server itself on a free localhost port, waits for it, and stops it.
Set ``VIT_EXPLAIN_SCREENSHOTS=docs/screenshots`` to write the page screenshots used by the README.
"""

from __future__ import annotations

import base64
import contextlib
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


@contextlib.contextmanager
def dashboard(folder: Path, *options: str, port: int | None = None, **env: str) -> Iterator[str]:
    """The dashboard served on 127.0.0.1 (``port``, or a free one) from the repository root (its
    ``.streamlit/config.toml``), with its data and log in ``folder``, more Streamlit ``options`` and
    ``env``; its base URL."""
    port = port or free_port()
    log = folder / "streamlit.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIT_EXPLAIN_DATA_DIR": str(folder / "data"), **env}
    command = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), *options]
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard served on 127.0.0.1 for this module; its base URL."""
    with dashboard(tmp_path_factory.mktemp("server")) as url:
        yield url


@contextlib.contextmanager
def chromium():
    """Debian's headless Chromium under Playwright."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


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


def test_the_server_refuses_an_upload_request_over_the_limit(server, browser, tmp_path):
    """An upload request enlarged past the limit after the browser's own check (as a modified client would
    send it) is refused by the server itself: ``server.maxUploadSize`` in ``.streamlit/config.toml``."""
    small = tmp_path / "small.png"
    small.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/")
    wait_until_idle(page)

    def enlarge(route) -> None:
        request = route.request
        if request.method != "PUT":
            route.continue_()
            return
        boundary = request.headers["content-type"].split("boundary=")[1]
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()
        route.continue_(post_data=head + bytes(26 * 2**20) + f"\r\n--{boundary}--\r\n".encode())

    page.route("**/_stcore/upload_file/**", enlarge)
    uploader = page.locator("[data-testid=stFileUploader]").filter(has_text="Upload an image")
    with page.expect_response(lambda r: "/_stcore/upload_file/" in r.url and r.request.method == "PUT",
                              timeout=RENDER_TIMEOUT_MS) as response:
        uploader.locator("input[type=file]").set_input_files(str(small))
    assert response.value.status == 413
    page.close()
