"""Open the dashboard in Streamlit's AppTest; shared by the ``test_dashboard_*.py`` files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import explainers

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
TIMEOUT_S = 120


def open_app(**query: str) -> AppTest:
    """A fresh session of the app opened with this URL query, after its first run."""
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.query_params.update(query)
    return app.run()


def problems(app: AppTest) -> list[str]:
    """Exceptions shown anywhere in the app (there must be none, whatever the input)."""
    return [str(e.value) for e in app.exception]


def messages(app: AppTest) -> str:
    """All error and warning texts, main area and sidebar, as they read on the page (Markdown escapes
    removed)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", "\n".join(str(e.value) for e in [*app.error, *app.warning]))


def images(app: AppTest) -> list[str]:
    """URLs of the images in the main area; a URL changes exactly when the image's bytes do."""
    return [url for image in app.main.image for url in image.value]


def plotly_specs(app: AppTest) -> list[str]:
    return [chart.proto.spec for chart in app.main.get("plotly_chart")]


def link(app: AppTest) -> str:
    """The shared link shown on the page."""
    return next(code.value for code in app.main.code if "?" in code.value)


def count_captures(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every forward pass the dashboard makes (``explainers.capture``) appends to the list."""
    calls: list[int] = []
    original = explainers.capture

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(explainers, "capture", counting)
    return calls
