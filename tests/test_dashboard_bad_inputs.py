"""Bad uploads give a clear message on the page and the session goes on; odd images are converted."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.dashboard_apptest import images, messages, open_app, problems


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def digit_like(mode: str) -> Image.Image:
    grey = np.zeros((64, 64), np.uint8)
    grey[20:44, 28:36] = 255
    rgb = Image.fromarray(grey).convert("RGB")
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(200)
        return rgba
    return rgb.convert(mode)


PNG = encode(digit_like("RGB"))
BAD = {
    "corrupt.png": (PNG[:40] + bytes(200) + PNG[240:], "corrupt"),
    "truncated.png": (PNG[: len(PNG) // 2], "truncated"),
    "notes.png": (b"these are my notes, not a picture", "not an image"),
    "bomb.png": (encode(Image.new("1", (20_000, 10_000))), "too large"),
    "empty.png": (b"", "empty"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_uploads_say_why_and_the_session_goes_on(name, data_dir):
    data, expected = BAD[name]
    app = open_app()
    before = images(app)
    app.file_uploader(key="w.upload").upload(name, data, "image/png").run()
    assert not problems(app)
    assert expected in messages(app) and name in messages(app)
    assert images(app) == before  # still showing the previous image
    assert not app.query_params["image"].startswith("upload:")
    assert not data_dir.exists() or not any(data_dir.iterdir())
    app.slider(key="o.opacity").set_value(0.8).run()  # and the session goes on
    assert not problems(app)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("I;16", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("LA", "PNG"),
     ("RGB", "WEBP"), ("RGB", "BMP")],
)
def test_every_kind_of_image_is_converted(mode, fmt, data_dir):
    data = encode(digit_like(mode), fmt)
    app = open_app()
    app.file_uploader(key="w.upload").upload(f"digit.{fmt.lower()}", data).run()
    assert not problems(app) and not messages(app)
    ref = app.query_params["image"]
    assert ref.startswith("upload:")
    assert (data_dir / "uploads" / ref.split(":")[1]).read_bytes() == data
    image = app.session_state["_scene"].image.image
    assert image.mode == "RGB" and image.size == (64, 64)
    assert np.asarray(image)[30, 30].min() > 200  # the stroke stayed bright (16-bit scaled, not clipped)


def test_exif_orientation_is_honoured(data_dir):
    wide = Image.new("RGB", (80, 40), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    app = open_app()
    app.file_uploader(key="w.upload").upload("phone.jpg", encode(wide, "JPEG", exif=exif)).run()
    assert not problems(app)
    assert app.session_state["_scene"].image.image.size == (40, 80)


def test_an_upload_that_cannot_be_kept_is_reported(data_dir):
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("a file where the upload folder should be")
    app = open_app()
    app.file_uploader(key="w.upload").upload("digit.png", PNG).run()
    assert not problems(app)
    assert "cannot be kept" in messages(app)
    assert not app.query_params["image"].startswith("upload:")
