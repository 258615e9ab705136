"""One Streamlit session spoken over the websocket protocol, as the browser's front end speaks it.

What Streamlit's front end (``streamlit/static``, ``WebsocketConnection`` and ``App.sendRerunBackMsg``)
does on opening a link, and what this client does: ask ``/_stcore/health`` (which sets the
``_streamlit_xsrf`` cookie) and ``/_stcore/host-config``; open ``ws://HOST/_stcore/stream`` with the
subprotocols ``["streamlit", <xsrf cookie>]``, the page's ``Origin`` and the cookie; send a ``BackMsg``
``rerun_script`` with the link's query string (without ``?``), the page name from its path, the cached
message hashes and the client's context; read ``ForwardMsg``s (a ``ref_hash`` is answered from the
client's cache of ``cacheable`` messages, as the front end does) until a run finishes successfully (a
run ended early for a rerun, as ``?page=`` causes, is followed by the next). Every image element's media
URL is fetched over HTTP as soon as its delta arrives, as the browser's ``<img>`` does (the page's
JavaScript and CSS bundles are not: a browser's cache holds them).

A slider move is the ``rerun_script`` the front end sends on a widget change: the current query string
and page, with the widget states. This client sends the states of the page's sliders (the moved one at
its new value); Streamlit keeps every other widget's last value when a rerun's states omit it.
Only what the tests and ``benchmarks/load_test.py`` need is read: images, sliders, exceptions.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.RootContainer_pb2 import MAIN
from streamlit.proto.Slider_pb2 import Slider

XSRF_COOKIE = "_streamlit_xsrf"
#: Media fetches of all sessions run on these threads (urllib blocks); enough that no fetch waits for one.
FETCHERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="media")


class Session:
    """A Streamlit session on the server at ``base`` (``http://127.0.0.1:PORT``). Use as
    ``async with Session(base) as session: await session.open(link)``; every wait ends after ``timeout``
    seconds with ``TimeoutError``."""

    def __init__(self, base: str, timeout: float = 180.0) -> None:
        self.base, self.timeout = base.rstrip("/"), timeout
        self.cookie = ""
        self.query = ""
        self.page_hash = ""
        self.page_name = ""
        #: Delta path → media URLs of the image elements the last run showed (path[0] 0: main area).
        self.images: dict[tuple[int, ...], list[str]] = {}
        #: Slider label → the slider element of the last run.
        self.sliders: dict[str, Slider] = {}
        #: Widget id → the slider's value as the front end holds it (the server's, when it sets one).
        self.values: dict[str, list[float]] = {}
        #: URL → ``time.perf_counter()`` when its body had arrived (each fetched once, as a browser cache).
        self.fetched: dict[str, float] = {}
        self._fetches: dict[str, asyncio.Future] = {}
        self._cache: dict[str, ForwardMsg] = {}
        self._exceptions: list[str] = []
        self._socket = None

    def _get(self, path: str) -> tuple[bytes, str]:
        request = urllib.request.Request(f"{self.base}{path}", headers={"Cookie": self.cookie} if self.cookie
                                         else {})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}")
            return response.read(), "; ".join(response.headers.get_all("Set-Cookie") or [])

    async def __aenter__(self) -> Session:
        loop = asyncio.get_running_loop()
        _, cookies = await loop.run_in_executor(FETCHERS, self._get, "/_stcore/health")
        xsrf = SimpleCookie(cookies).get(XSRF_COOKIE)
        self.cookie = f"{XSRF_COOKIE}={xsrf.value}" if xsrf else ""
        await loop.run_in_executor(FETCHERS, self._get, "/_stcore/host-config")
        tokens = [xsrf.value if xsrf else "PLACEHOLDER_AUTH_TOKEN"]
        self._socket = await asyncio.wait_for(websockets.connect(
            f"ws{self.base.removeprefix('http')}/_stcore/stream", subprotocols=["streamlit", *tokens],
            origin=self.base, additional_headers={"Cookie": self.cookie} if self.cookie else None,
            max_size=None, open_timeout=self.timeout), self.timeout)
        return self

    async def __aexit__(self, *_) -> None:
        await self._socket.close()

    def main_images(self) -> list[str]:
        """The main area's image URLs of the last run, in page order."""
        return [url for path in sorted(self.images) if path[0] == MAIN for url in self.images[path]]

    async def open(self, link: str) -> None:
        """Open ``link`` (``/?page=compare``, ``/what_if?...``) as a page load does; returns once the run has
        finished and every image it shows is fetched."""
        parts = urlsplit(link)
        self.query, self.page_name = parts.query, parts.path.strip("/")
        await self._rerun({})

    async def move_slider(self, label: str, steps: int = 1) -> float:
        """Move the slider ``label`` by ``steps`` steps (→ key presses); the seconds from sending the move
        until the first map of the main area has changed and its new image is fetched."""
        slider = self.sliders[label]
        self.values[slider.id] = [round(min(slider.max, v + steps * slider.step), 12)
                                  for v in self.values[slider.id]]
        states = {s.id: self.values[s.id] for s in self.sliders.values()}
        before = self.main_images()[0]
        start = time.perf_counter()
        await self._rerun(states)
        after = self.main_images()[0]
        if after == before:
            raise RuntimeError(f"moving {label!r} did not change the first map")
        return self.fetched[after] - start

    async def _rerun(self, states: dict[str, list[float]]) -> None:
        message = BackMsg()
        rerun = message.rerun_script
        rerun.query_string, rerun.page_script_hash = self.query, self.page_hash
        rerun.page_name = self.page_name
        rerun.cached_message_hashes.extend(self._cache)
        rerun.context_info.timezone, rerun.context_info.locale = "UTC", "en-US"
        rerun.context_info.url = f"{self.base}/{self.page_name}" + (f"?{self.query}" if self.query else "")
        for widget, values in states.items():
            state = rerun.widget_states.widgets.add()
            state.id = widget
            state.double_array_value.data.extend(values)
        await self._socket.send(message.SerializeToString())
        await asyncio.wait_for(self._read_run(), self.timeout)
        if self._exceptions:
            raise RuntimeError(f"the page shows an exception: {self._exceptions[0][:300]}")
        await asyncio.wait_for(asyncio.gather(*(self._fetches[u] for urls in self.images.values()
                                                for u in urls)), self.timeout)

    async def _read_run(self) -> None:
        while True:
            message = ForwardMsg()
            message.ParseFromString(await self._socket.recv())
            if message.WhichOneof("type") == "ref_hash":
                cached = ForwardMsg()
                cached.CopyFrom(self._cache[message.ref_hash])
                cached.metadata.CopyFrom(message.metadata)
                message = cached
            elif message.metadata.cacheable:
                self._cache[message.hash] = message
            kind = message.WhichOneof("type")
            if kind == "new_session":  # a run starts: what the page shows is what this run sends
                self.page_hash = message.new_session.page_script_hash
                self.images, self.sliders, self._exceptions = {}, {}, []
            elif kind == "page_info_changed":
                self.query = message.page_info_changed.query_string
            elif kind == "delta":
                self._delta(message)
            elif kind == "script_finished":
                if message.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                    return
                if message.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                    raise RuntimeError("the app's script did not compile")

    def _delta(self, message: ForwardMsg) -> None:
        path = tuple(message.metadata.delta_path)
        for known in [p for p in self.images if p[:len(path)] == path]:  # replaced by this element
            del self.images[known]
        if message.delta.WhichOneof("type") != "new_element":
            return
        element = message.delta.new_element
        kind = element.WhichOneof("type")
        if kind == "imgs":
            self.images[path] = [image.url for image in element.imgs.imgs]
            for url in self.images[path]:
                if url not in self._fetches:
                    self._fetches[url] = asyncio.ensure_future(self._fetch(url))
        elif kind == "slider":
            slider = self.sliders[element.slider.label] = element.slider
            if slider.set_value or slider.id not in self.values:
                self.values[slider.id] = list(slider.value if slider.set_value else slider.default)
        elif kind == "exception":
            self._exceptions.append(f"{element.exception.type}: {element.exception.message}")

    async def _fetch(self, url: str) -> None:
        if not url.startswith("/"):  # a data: URL is in the page already
            self.fetched[url] = time.perf_counter()
            return
        body, _ = await asyncio.get_running_loop().run_in_executor(FETCHERS, self._get, url)
        if not body:
            raise RuntimeError(f"{url} is empty")
        self.fetched[url] = time.perf_counter()
