"""Safe image reading: every mode to 8-bit RGB, EXIF orientation, size cap, broken files."""

import io

import numpy as np
import pytest
from PIL import Image

from explainers.images import content_hash, read_image, to_rgb


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixel(data: bytes, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    image = read_image(data)
    assert image.mode == "RGB"
    return image.getpixel(xy)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_supported_formats_round_trip(fmt):
    image = Image.new("RGB", (30, 20), (200, 100, 50))
    out = read_image(encode(image, fmt, **({"quality": 100} if fmt != "BMP" else {})))
    assert out.size == (30, 20)
    assert np.abs(np.asarray(out, dtype=int) - (200, 100, 50)).max() <= 3


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    data = encode(grey)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert [pixel(data, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_thirty_two_bit_mode_i_is_read_as_sixteen_bit_range():
    image = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32))
    assert image.mode == "I"
    assert [to_rgb(image).getpixel((x, 0))[0] for x in range(3)] == [0, 255, 255]


def test_cmyk_jpeg_becomes_rgb():
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    r, g, b = pixel(encode(red, "JPEG", quality=100))
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # fully transparent → white
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),  # half black over white
        (Image.new("LA", (4, 4), (0, 128)), (127, 127, 127)),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
    ],
)
def test_alpha_grey_and_bilevel_modes(image, expected):
    assert pixel(encode(image)) == expected


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert pixel(encode(palette)) == (10, 20, 30)
    palette.info["transparency"] = 0
    assert pixel(encode(palette)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    assert read_image(encode(image, "JPEG", exif=exif)).size == (20, 40)


def test_pixel_cap_is_checked_before_decoding():
    data = encode(Image.new("L", (300, 200)))
    assert read_image(data, max_pixels=60_000).size == (300, 200)
    with pytest.raises(ValueError, match=r"300×200 = 60,000 pixels; the limit is 59,999"):
        read_image(data, max_pixels=59_999)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global limit is left alone


def test_decompression_bomb_is_refused():
    bomb = encode(Image.new("1", (20_000, 10_000)))  # 200 Mpx in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="too large"):
        read_image(bomb)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image at all", "not an image"),
        (encode(Image.new("RGB", (4, 4)), "GIF"), "not an image in a supported format"),
    ],
)
def test_not_an_image(data, message):
    with pytest.raises(ValueError, match=message):
        read_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_truncated_and_corrupt_files_raise_value_errors(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    for cut in (len(data) * 3 // 4, len(data) // 2, 40, 12):
        with pytest.raises(ValueError):
            read_image(data[:cut])


def test_content_hash_is_short_and_stable():
    assert content_hash(b"abc") == "ba7816bf8f01cfea"
