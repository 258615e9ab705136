"""A crowd on one dashboard: many sessions opening the same link at once, then moving a slider.

    python benchmarks/load_test.py [--client protocol|chromium] [--sessions 16] [--sliders 8] [--moves 3]
                                   [--browsers 2] [--link "/?page=compare"] [--profile py-spy.svg]

Run it alone on the machine (it measures CPU contention): ``flock /tmp/heavy.lock python benchmarks/...``.
It starts the dashboard itself on 127.0.0.1 (a fresh server: nothing cached, a temporary data folder, the
repository's ``.streamlit/config.toml``). Only loopback traffic; every wait has a timeout; the server is
stopped at the end. Two kinds of client, each session its own Streamlit session:

- ``--client chromium`` (the default): real headless Chromium pages (Debian's ``/usr/bin/chromium``,
  Playwright), tabs of ``--browsers`` browser processes. It measures what people see when the browsers
  run on the same cores as the server: on a 2-core machine, 16 browsers sharing the server's cores.
- ``--client protocol``: Streamlit's websocket protocol spoken by this process
  (``benchmarks/streamlit_client.py``: the messages the front end sends, every image fetched over HTTP as
  a browser does, nothing drawn), which costs the cores almost nothing. It measures the server's
  capacity: people whose browsers run on their own machines.

1. **Crowd**: ``--sessions`` sessions open ``--link`` at the same moment; for each, the time from the
   start to every expected map there (Chromium: the images of the main area loaded and the app idle, as
   the browser test waits for them; protocol: the run finished and every image it shows fetched).
2. **Sliders**: ``--sliders`` sessions on the what-if page (rollout); all at once, each moves the discard
   ratio slider one step (a → key press; protocol: the widget state it sends) ``--moves`` times; for each
   move, the time until the first map has changed (Chromium: its ``src``; protocol: its new image fetched).

For both phases the CPU seconds used by the server and by the clients (this script, and Chromium and
Playwright's driver) are read from ``/proc``: on a 2-core machine the clients compete with the server for
the same cores. ``--profile FILE`` runs the server under ``py-spy record`` (requirements-dev.txt) and
writes its flame graph (``.svg``) or speedscope profile (``.json``) there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, EXPECTED, IDLE_SCRIPT, serving  # noqa: E402

TIMEOUT_MS = 180_000
MAP = "[data-testid=stMain] [data-testid=stImage] img"
TICKS = os.sysconf("SC_CLK_TCK")
#: How often a page checks whether its maps are there (ms): every animation frame, the default, would
#: cost the browsers CPU time the server needs.
POLL_MS = 100


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds of these processes (the living ones), children waited for included."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / TICKS


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found


class Meter:
    """CPU seconds of the server's processes and of the clients: this process and everything else below
    it (the browsers)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def read(self) -> tuple[float, float]:
        server = descendants(self.server_pid)
        return cpu_seconds(server), cpu_seconds(descendants(os.getpid()) - server)


async def wait_idle(page, images: int) -> None:
    await page.locator(MAP).first.wait_for(timeout=TIMEOUT_MS)
    await page.wait_for_function(IDLE_SCRIPT, arg=[images, 0], timeout=TIMEOUT_MS, polling=POLL_MS)


async def open_and_wait(page, url: str, images: int, start: float) -> tuple[float, int]:
    """Open ``url``; the seconds from ``start`` until the app is idle with at least ``images`` images
    loaded, and how many it shows then."""
    await page.goto(url, timeout=TIMEOUT_MS)
    await wait_idle(page, images)
    if await page.locator("[data-testid=stException]").count():
        raise RuntimeError(f"an exception is shown on {url}")
    return time.perf_counter() - start, await page.locator(MAP).count()


async def move_slider(page, moves: int) -> list[float]:
    """Press → on the discard-ratio slider ``moves`` times, each after the previous map arrived."""
    slider = page.locator("[data-testid=stSlider]").filter(has_text="Discard ratio").get_by_role("slider")
    times = []
    for _ in range(moves):
        before = await page.locator(MAP).first.get_attribute("src")
        await slider.focus()
        start = time.perf_counter()
        await slider.press("ArrowRight")
        await page.wait_for_function("([selector, src]) => document.querySelector(selector).src !== src",
                                     arg=[MAP, before], timeout=TIMEOUT_MS, polling=POLL_MS)
        times.append(time.perf_counter() - start)
        await wait_idle(page, EXPECTED["what_if"][0])
    return times


def row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {min(values):.2f} | {statistics.median(values):.2f} | "
            f"{max(values):.2f} |")


WHAT_IF = "/?page=what_if&explore=rollout"
SLIDER = "Discard ratio"


class Phase:
    """Times of one phase, its wall-clock seconds and the CPU seconds of (server, clients)."""

    def __init__(self, meter: Meter) -> None:
        self.meter, self.cpu, self.start = meter, meter.read(), time.perf_counter()

    def end(self, times: list[float]) -> None:
        self.times, self.wall = times, time.perf_counter() - self.start
        self.used = [b - a for a, b in zip(self.cpu, self.meter.read(), strict=True)]


async def chromium_crowd(args: argparse.Namespace, url: str, meter: Meter) -> tuple[Phase, Phase, int]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browsers = [await driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                    for _ in range(args.browsers)]
        contexts = [await b.new_context(viewport={"width": 1400, "height": 1000}) for b in browsers]
        elsewhere: list[str] = []

        async def new_page(index: int):  # tabs of one browser window: each its own Streamlit session
            page = await contexts[index % len(contexts)].new_page()
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:"))
                    else elsewhere.append(r.url))
            return page

        pages = [await new_page(i) for i in range(args.sessions)]
        images = EXPECTED[args.page][0]
        crowd = Phase(meter)
        opened = await asyncio.gather(*(open_and_wait(p, f"{url}{args.link}", images, crowd.start)
                                        for p in pages))
        crowd.end([t for t, _ in opened])
        for page in pages:
            await page.close()

        pages = [await new_page(i) for i in range(args.sliders)]
        start = time.perf_counter()
        await asyncio.gather(*(open_and_wait(p, f"{url}{WHAT_IF}", EXPECTED["what_if"][0], start)
                               for p in pages))
        sliders = Phase(meter)
        moved = await asyncio.gather(*(move_slider(p, args.moves) for p in pages))
        sliders.end([t for ts in moved for t in ts])
        for browser in browsers:
            await browser.close()
        if elsewhere:
            raise RuntimeError(f"the pages asked other hosts than the server: {elsewhere[:5]}")
    return crowd, sliders, same_count([count for _, count in opened])


async def protocol_crowd(args: argparse.Namespace, url: str, meter: Meter) -> tuple[Phase, Phase, int]:
    from benchmarks.streamlit_client import Session

    async def open_session(stack: contextlib.AsyncExitStack, link: str, page: str, start: float):
        session = await stack.enter_async_context(Session(url, timeout=TIMEOUT_MS / 1000))
        await session.open(link)
        if len(session.main_images()) < EXPECTED[page][0]:
            raise RuntimeError(f"a session shows {len(session.main_images())} images of {link}")
        return session, time.perf_counter() - start

    async def move(session: Session) -> list[float]:
        return [await session.move_slider(SLIDER) for _ in range(args.moves)]

    async with contextlib.AsyncExitStack() as stack:
        crowd = Phase(meter)
        opened = await asyncio.gather(*(open_session(stack, args.link, args.page, crowd.start)
                                        for _ in range(args.sessions)))
        crowd.end([t for _, t in opened])
    async with contextlib.AsyncExitStack() as stack:
        start = time.perf_counter()
        opened_what_if = await asyncio.gather(*(open_session(stack, WHAT_IF, "what_if", start)
                                                for _ in range(args.sliders)))
        sliders = Phase(meter)
        moved = await asyncio.gather(*(move(session) for session, _ in opened_what_if))
        sliders.end([t for ts in moved for t in ts])
    return crowd, sliders, same_count([len(session.main_images()) for session, _ in opened])


def same_count(counts: list[int]) -> int:
    if len(set(counts)) != 1:
        raise RuntimeError(f"the sessions show different numbers of images: {sorted(set(counts))}")
    return counts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", choices=["chromium", "protocol"], default="chromium",
                        help="headless Chromium tabs, or Streamlit's websocket protocol from this process")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--sliders", type=int, default=8)
    parser.add_argument("--moves", type=int, default=3)
    parser.add_argument("--browsers", type=int, default=2, help="Chromium processes the pages share")
    parser.add_argument("--link", default="/?page=compare", help="the link every session opens")
    parser.add_argument("--page", default="compare", choices=sorted(EXPECTED),
                        help="the page the link opens (how many maps to wait for)")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph (.svg) or speedscope (.json)")
    args = parser.parse_args()
    if args.client == "chromium" and not CHROMIUM.exists():
        sys.exit(f"error: Debian's chromium is not at {CHROMIUM} (apt-get install chromium)")
    run = chromium_crowd if args.client == "chromium" else protocol_crowd
    with tempfile.TemporaryDirectory() as folder, serving(Path(folder)) as (url, process):
        spy = None
        if args.profile:
            fmt = "speedscope" if args.profile.suffix == ".json" else "flamegraph"
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(process.pid),
                                    "--format", fmt, "--output", str(args.profile), "--rate", "50",
                                    "--nonblocking"])
        try:
            crowd, sliders, images = asyncio.run(run(args, url, Meter(process.pid)))
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
    clients = (f"{args.browsers} Chromium processes, Playwright" if args.client == "chromium"
               else "Streamlit's websocket protocol from one Python process")
    print(f"Load test on {os.cpu_count()} CPU cores, clients: {clients}; fresh server (nothing cached when "
          "the crowd arrives)\n")
    print("| phase | n | min s | median s | max s |\n|---|---|---|---|---|")
    print(row(f"{args.sessions} sessions open `{args.link}` at once: seconds until all {images} images of "
              "the main area (maps, input, colour bar) are there", crowd.times))
    print(row(f"{args.sliders} sessions move a what-if slider at once ({args.moves} moves each): seconds "
              "from the move to the new map", sliders.times))
    for name, phase in (("Crowd", crowd), ("Sliders", sliders)):
        print(f"\n{name}: {phase.wall:.1f} s wall; CPU seconds: server {phase.used[0]:.1f}, clients "
              f"{phase.used[1]:.1f}", end="")
    print()


if __name__ == "__main__":
    main()
