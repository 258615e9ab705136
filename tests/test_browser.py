"""End to end in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright).

The test starts the Streamlit server itself on a free localhost port, waits for it, and stops it.
Set ``VIT_EXPLAIN_SCREENSHOTS=docs/screenshots`` to write the page screenshots used by the README.
Every page must work offline: a test fails if the browser asks anything of a host other than the server.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
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
#: Page → (images, Plotly charts) of its main area once every map has arrived (the embedded model: 4
#: explainers, 4 heads; what-if: the map over the image and its raw grid).
EXPECTED = {
    "compare": (2 + 2 * 4, 0),
    "head_fusion": (2 * 3 + 4 + 2, 3),
    "distributions": (0, 5),
    "what_if": (2, 0),
    "evaluate": (0, 0),
    "reviews": (0, 0),
}
TITLES = {"compare": "Compare explainers", "head_fusion": "Head fusion",
          "distributions": "Attention distributions", "what_if": "What-if explorer",
          "evaluate": "Evaluate explainers", "reviews": "Review board"}
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
    with serving(folder, *options, port=port, **env) as (url, _):
        yield url


@contextlib.contextmanager
def serving(
    folder: Path, *options: str, port: int | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """As :func:`dashboard`; its base URL and the server's process."""
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
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, weight_dir: Path) -> Iterator[str]:
    """The dashboard served on 127.0.0.1 for this module (weight files allowed from ``weight_dir``)."""
    with dashboard(tmp_path_factory.mktemp("server"), VIT_EXPLAIN_WEIGHT_DIRS=str(weight_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def weight_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the operator allows visitors to pick weight files from (``VIT_EXPLAIN_WEIGHT_DIRS``)."""
    return tmp_path_factory.mktemp("weights")


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


@pytest.fixture
def open_page(server, browser):
    """``open_page(path, width, height)``: a new tab on the server at ``path``; after the test, no request
    of any tab may have gone anywhere but the server (the app must work offline)."""
    pages, elsewhere = [], []

    def opener(path: str, width: int = 1400, height: int = 1000):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("request", lambda request: None if request.url.startswith((server, "data:", "blob:"))
                else elsewhere.append(request.url))
        pages.append(page)
        page.goto(f"{server}{path}")
        return page

    yield opener
    for page in pages:
        page.close()
    assert elsewhere == [], f"the page asked other hosts: {elsewhere[:5]}"


#: True once the app is idle with at least ``images`` images of the main area loaded and ``charts`` Plotly
#: charts drawn (argument: ``[images, charts]``).
IDLE_SCRIPT = """([images, charts]) => {
    const main = document.querySelector('[data-testid=stMain]');
    const shown = [...main.querySelectorAll('[data-testid=stImage] img')];
    const drawn = main.querySelectorAll('.js-plotly-plot .main-svg').length > 0
        ? main.querySelectorAll('.js-plotly-plot').length : 0;
    return !document.querySelector('[data-testid=stStatusWidget]')
        && shown.length >= images && shown.every(img => img.complete && img.naturalWidth > 0)
        && drawn >= charts;
}"""


def wait_until_idle(page, images: int = 0, charts: int = 0) -> None:
    """Wait until the app has finished running and the main area shows at least ``images`` images, each
    loaded, and ``charts`` Plotly charts, each drawn (maps can arrive after the status widget is gone)."""
    page.locator("[data-testid=stMain] [data-testid=stImage] img, [data-testid=stMain] .js-plotly-plot, "
                 "[data-testid=stMain] [data-testid=stCode]").first.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function(IDLE_SCRIPT, arg=[images, charts], timeout=RENDER_TIMEOUT_MS)


FIRST_MAP = "[data-testid=stMain] [data-testid=stImage] img"


def first_map(page) -> str:
    return page.locator(FIRST_MAP).first.get_attribute("src")


def test_moving_a_slider_updates_the_map(open_page, tmp_path):
    page = open_page("/?page=what_if&explore=rollout")
    wait_until_idle(page, *EXPECTED["what_if"])
    assert page.locator("[data-testid=stException]").count() == 0
    before = first_map(page)
    slider = page.locator("[data-testid=stSlider]").filter(has_text="Discard ratio").get_by_role("slider")
    slider.focus()
    for _ in range(50):
        slider.press("ArrowRight")
    page.wait_for_function("([selector, src]) => !document.querySelector(selector).src.endsWith(src)",
                           arg=[FIRST_MAP, before], timeout=RENDER_TIMEOUT_MS)
    wait_until_idle(page, *EXPECTED["what_if"])
    assert first_map(page) != before
    assert float(dict(parse_qsl(urlsplit(page.url).query))["rollout.discard_ratio"]) > 0
    assert "Updated in" in page.locator("[data-testid=stAlertContentSuccess]").inner_text()
    shot = tmp_path / "what_if.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


def screenshot(page, tmp_path: Path, name: str, expected: tuple[int, int], start=None) -> None:
    """A full-height screenshot (from the ``start`` element down, if given) into ``$VIT_EXPLAIN_SCREENSHOTS``
    (the README's) or a temporary folder, once the page has drawn everything ``expected`` again."""
    height = min(max(900, page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")),
                 4000)
    page.set_viewport_size({"width": 1400, "height": height})
    wait_until_idle(page, *expected)
    page.wait_for_function("() => !document.querySelector('[data-testid=stMain] [data-testid=stSkeleton]')",
                           timeout=RENDER_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the resized charts settle
    folder = Path(os.environ.get("VIT_EXPLAIN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    top = 0 if start is None else max(0, start.bounding_box()["y"] - 16)
    clip = {"x": 0, "y": top, "width": 1400, "height": height - top}
    page.screenshot(path=str(folder / f"{name}.png"), clip=clip)
    assert (folder / f"{name}.png").stat().st_size > 10_000


def test_the_load_tests_protocol_client_receives_what_a_tab_shows(open_page, server):
    """``benchmarks/load_test.py --client protocol``: the same images, in the same order, as one Chromium
    tab receives for the same link (media URLs are content hashes: the same pictures)."""
    from benchmarks.streamlit_client import Session

    page = open_page("/?page=compare")
    wait_until_idle(page, *EXPECTED["compare"])
    shown = [urlsplit(src).path for src in page.locator(FIRST_MAP).evaluate_all("all => all.map(i => i.src)")]

    async def protocol() -> list[str]:
        async with Session(server, timeout=120) as session:
            await session.open("/?page=compare")
            return session.main_images()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # outside Playwright's event loop
        received = thread.submit(asyncio.run, protocol()).result(timeout=180)
    assert len(shown) >= EXPECTED["compare"][0]
    assert received == shown


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders(open_page, tmp_path, name):
    """Each page from a shared link, without an exception and with the link's state; a screenshot."""
    page = open_page(f"/?page={name}{PAGES[name]}", height=900)
    wait_until_idle(page, *EXPECTED[name])
    assert page.locator("[data-testid=stException]").count() == 0
    assert urlsplit(page.url).path.strip("/") in (name, "")
    assert set(parse_qsl(PAGES[name].lstrip("&"))) <= set(parse_qsl(urlsplit(page.url).query))
    wait_until_idle(page, *EXPECTED[name])
    screenshot(page, tmp_path, name, EXPECTED[name])


@pytest.mark.parametrize("name", PAGES)
def test_a_page_opens_at_its_own_path(open_page, name):
    """``/head_fusion`` as typed or bookmarked opens that page (not Compare), and the URL names it."""
    page = open_page(f"/{name}", height=900)
    wait_until_idle(page, *EXPECTED[name])
    page.get_by_role("heading", name=TITLES[name], exact=True).first.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert dict(parse_qsl(urlsplit(page.url).query))["page"] == name
    assert page.locator("[data-testid=stException]").count() == 0


def click_patch(page, row: int, column: int, grid: int = 8) -> None:
    """A mouse click at the centre of patch ``(row, column)`` of the Head fusion page's picker, whose plot
    area is the image (``grid`` × ``grid`` patches)."""
    picker = page.locator("[data-testid=stMain] .js-plotly-plot").first
    picker.scroll_into_view_if_needed()
    area = picker.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(area["x"] + (column + 0.5) / grid * area["width"],
                     area["y"] + (row + 0.5) / grid * area["height"])


def test_clicking_a_patch_shows_where_it_looks(open_page, tmp_path):
    """A real click on the picker (Plotly's point selection) chooses the patch: the URL and the rows follow,
    and a second click moves them on."""
    page = open_page("/head_fusion")
    wait_until_idle(page, *EXPECTED["head_fusion"])
    for (row, column), tokens in (((5, 2), 43), ((1, 6), 15)):
        click_patch(page, row, column)
        patch = str(row * 8 + column)
        page.wait_for_function("patch => new URLSearchParams(location.search).get('patch') === patch",
                               arg=patch, timeout=RENDER_TIMEOUT_MS)
        page.get_by_text(f"Shown: patch ({row}, {column}), token {tokens} of 65").wait_for(
            timeout=RENDER_TIMEOUT_MS)
        wait_until_idle(page, *EXPECTED["head_fusion"])
        text = page.locator("[data-testid=stMain]").inner_text()
        assert f"rollout row of the patch ({row}, {column})" in text
        title = page.locator("[data-testid=stMain] .gtitle").filter(has_text=f"Patch ({row}, {column}):")
        assert title.count() == 1  # the patch's attention rows, per layer and head
        assert page.locator("[data-testid=stException]").count() == 0
    click_patch(page, 5, 2)  # the README's picture: the patch of the first click again
    page.wait_for_function("() => new URLSearchParams(location.search).get('patch') === '42'",
                           timeout=RENDER_TIMEOUT_MS)
    page.get_by_text("Shown: patch (5, 2), token 43 of 65").wait_for(timeout=RENDER_TIMEOUT_MS)
    screenshot(page, tmp_path, "head_fusion_patch", EXPECTED["head_fusion"],
               start=page.get_by_text("Where does this patch look?"))


@pytest.fixture(scope="module")
def retrained(weight_dir: Path) -> str:
    """The embedded model with 5 % noise on its weights: the same classes, other maps."""
    import torch
    from safetensors.torch import load_file, save_file

    from explainers.models import EMBEDDED_DIR

    generator = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
             for k, v in load_file(str(EMBEDDED_DIR / "model.safetensors")).items()}
    path = weight_dir / "embedded-noisy.safetensors"
    save_file(state, str(path))
    return str(path)


def test_two_models_side_by_side(open_page, tmp_path, retrained):
    methods = "rollout,grad_rollout,raw_attention,gae"
    page = open_page(f"/?page=compare&model2=embedded&weights2={retrained}&image=gallery:digit-03"
                     f"&methods={methods}")
    wait_until_idle(page, 2 + 3 * 4)  # per method: A's map, B's map and their difference
    text = page.locator("[data-testid=stMain]").inner_text()
    assert "Both models explain the class" in text and "Agreement between the two models" in text
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.get_by_role("switch", name="Compare with a second model").is_checked()
    screenshot(page, tmp_path, "compare_two_models", (2 + 3 * 4, 0))


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


def test_a_headless_model_takes_a_reference_image(server, browser, weight_dir, tmp_path):
    """A headless Hugging Face backbone: the sidebar asks for a reference image, then explains similarity."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder = weight_dir / "dinov2-headless"  # an hf: folder visitors may open (VIT_EXPLAIN_WEIGHT_DIRS)

    torch.manual_seed(0)
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    transformers.Dinov2Model(transformers.Dinov2Config(**small, mlp_ratio=2)).save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop).save_pretrained(folder)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/?model=hf:{folder}")
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
