"""A crowd on one dashboard: many browser sessions opening the same link at once, then moving a slider.

    python benchmarks/load_test.py [--sessions 16] [--sliders 8] [--moves 3] [--browsers 2]
                                   [--link "/?page=compare"] [--profile py-spy.svg]

Run it alone on the machine (it measures CPU contention): ``flock /tmp/heavy.lock python benchmarks/...``.
It starts the dashboard itself on 127.0.0.1 (a fresh server: nothing cached, a temporary data folder, the
repository's ``.streamlit/config.toml``), and drives real headless Chromium pages (Debian's
``/usr/bin/chromium``, Playwright): tabs of ``--browsers`` browser processes, each tab its own Streamlit
session. Only loopback traffic; every wait has a timeout; the server is stopped at the end.

1. **Crowd**: ``--sessions`` pages open ``--link`` at the same moment; for each, the time from the start
   to every expected map drawn (the images of the main area loaded and the app idle, as the browser
   test waits for them).
2. **Sliders**: ``--sliders`` pages on the what-if page (rollout); all at once, each moves the discard
   ratio slider (a key press) ``--moves`` times; for each move, the time from the key press to the map's
   image changing in that page.

For both phases the CPU seconds used by the server and by the browsers (Chromium and Playwright's driver)
are read from ``/proc``: on a 2-core machine the browsers compete with the server for the same cores.
``--profile FILE`` runs the server under ``py-spy record`` (requirements-dev.txt) and writes its
flame graph (``.svg``) or speedscope profile (``.json``) there.
"""

from __future__ import annotations

import argparse
import asyncio
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
    """CPU seconds of the server's processes and of everything else below this one (the browsers)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def read(self) -> tuple[float, float]:
        server = descendants(self.server_pid)
        browsers = descendants(os.getpid()) - server - {os.getpid()}
        return cpu_seconds(server), cpu_seconds(browsers)


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
    return (f"| {name} | {len(values)} | {min(values):.1f} | {statistics.median(values):.1f} | "
            f"{max(values):.1f} |")


async def crowd(args: argparse.Namespace, url: str, meter: Meter) -> list[str]:
    from playwright.async_api import async_playwright

    lines = []
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
        cpu = meter.read()
        start = time.perf_counter()
        opened = await asyncio.gather(*(open_and_wait(p, f"{url}{args.link}", images, start) for p in pages))
        wall = time.perf_counter() - start
        used = [b - a for a, b in zip(cpu, meter.read(), strict=True)]
        counts = {count for _, count in opened}
        if len(counts) != 1:
            raise RuntimeError(f"the sessions show different numbers of images: {sorted(counts)}")
        lines.append(row(f"{args.sessions} sessions open `{args.link}` at once: seconds until all "
                         f"{counts.pop()} images (maps, input, colour bar) are shown",
                         [t for t, _ in opened]))
        lines.append(f"\nCrowd: {wall:.1f} s wall; CPU seconds: server {used[0]:.1f}, browsers "
                     f"{used[1]:.1f} ({args.browsers} Chromium processes + Playwright's driver)")
        for page in pages:
            await page.close()

        pages = [await new_page(i) for i in range(args.sliders)]
        link = f"{url}/?page=what_if&explore=rollout"
        start = time.perf_counter()
        await asyncio.gather(*(open_and_wait(p, link, EXPECTED["what_if"][0], start) for p in pages))
        cpu = meter.read()
        start = time.perf_counter()
        moved = await asyncio.gather(*(move_slider(p, args.moves) for p in pages))
        wall = time.perf_counter() - start
        used = [b - a for a, b in zip(cpu, meter.read(), strict=True)]
        lines.insert(1, row(f"{args.sliders} sessions move a what-if slider at once ({args.moves} moves "
                            "each): seconds from key press to the new map", [t for ts in moved for t in ts]))
        lines.append(f"Sliders: {wall:.1f} s wall; CPU seconds: server {used[0]:.1f}, browsers {used[1]:.1f}")
        for browser in browsers:
            await browser.close()
        if elsewhere:
            raise RuntimeError(f"the pages asked other hosts than the server: {elsewhere[:5]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--sliders", type=int, default=8)
    parser.add_argument("--moves", type=int, default=3)
    parser.add_argument("--browsers", type=int, default=2, help="Chromium processes the pages share")
    parser.add_argument("--link", default="/?page=compare", help="the link every session opens")
    parser.add_argument("--page", default="compare", choices=sorted(EXPECTED),
                        help="the page the link opens (how many maps to wait for)")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph (.svg) or speedscope (.json)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"error: Debian's chromium is not at {CHROMIUM} (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder, serving(Path(folder)) as (url, process):
        spy = None
        if args.profile:
            fmt = "speedscope" if args.profile.suffix == ".json" else "flamegraph"
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(process.pid),
                                    "--format", fmt, "--output", str(args.profile), "--rate", "50",
                                    "--nonblocking"])
        try:
            lines = asyncio.run(crowd(args, url, Meter(process.pid)))
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
    print(f"Load test on {os.cpu_count()} CPU cores, {args.browsers} Chromium processes, fresh server "
          "(nothing cached when the crowd arrives)\n")
    print("| phase | n | min s | median s | max s |\n|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
