"""Read untrusted image files safely and turn every kind of image into 8-bit sRGB.

``read_image(data)`` accepts PNG, JPEG, WebP and BMP bytes and returns an RGB :class:`PIL.Image.Image`,
or raises a ``ValueError`` whose message can be shown to a user as is:

- the pixel count is checked from the header, before any pixel is decoded (no decompression bomb);
  the limit is an argument of each call, Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left alone;
- a truncated or corrupt file, or one that is not an image at all, is reported as such;
- the EXIF orientation is applied, so the image stands the way the camera showed it;
- 16-bit greyscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255 (not clipped at 255);
- transparency (RGBA, LA, PA, palette with a transparent colour) is composited on white;
- CMYK, palette, greyscale and 1-bit images are converted to RGB, through the embedded ICC profile
  when there is one.

``reduce(image)`` shrinks an image to what the models and the overlays need (a server keeps that in
memory, not a 40-megapixel original).
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

#: Formats accepted from users (Pillow format names).
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
#: File extensions of those formats, for upload widgets.
EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp")
#: Default pixel cap: 40 megapixels (a 40 MP RGBA image decodes to 160 MB).
MAX_PIXELS = 40_000_000
#: What :func:`reduce` keeps: a shorter side of at most 1024 px (every timm ViT resizes the shorter side
#: to at most ~600 px before its centre crop) and at most 4 megapixels (12 MB as RGB) for long strips.
REDUCED_SIDE, REDUCED_PIXELS = 1024, 4_000_000

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_SRGB = ImageCms.createProfile("sRGB")


def content_hash(data: bytes) -> str:
    """Short content address of some bytes: the first 16 hex digits of their SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image, or raise a ``ValueError`` saying what is wrong.

    Args:
        data: the content of a PNG, JPEG, WebP or BMP file.
        max_pixels: refuse images with more pixels than this (checked before decoding).
    """
    if not data:
        raise ValueError("The file is empty.")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ValueError(f"This file is not an image in a supported format ({', '.join(FORMATS)}).") from None
    except Image.DecompressionBombError:
        raise _too_large(None, max_pixels) from None
    except _DECODE_ERRORS as error:
        raise ValueError(f"The image header cannot be read ({error}); the file may be corrupt.") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large((width, height), max_pixels)
    if width == 0 or height == 0:
        raise ValueError(f"The image has no pixels ({width}×{height}).")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as error:
        raise ValueError(
            f"The {image.format} image cannot be decoded ({error}): the file is truncated or corrupt."
        ) from None
    return to_rgb(image)


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> ValueError:
    found = f" is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels;" if size else " is too large;"
    return ValueError(f"The image{found} the limit is {max_pixels:,} pixels. Please upload a smaller image.")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: 16-bit scaled, transparency on white, colour managed to sRGB."""
    profile = image.info.get("icc_profile")
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    if profile and image.mode in ("L", "RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken or mismatched profile: fall back to Pillow's plain conversion
    return image.convert("RGB")


def reduce(image: Image.Image, *, side: int = REDUCED_SIDE, pixels: int = REDUCED_PIXELS) -> Image.Image:
    """``image`` scaled down, aspect ratio kept, so that its shorter side is at most ``side`` and it has
    at most ``pixels`` pixels (Lanczos, after a box reduction for large factors); smaller images are
    returned as they are."""
    width, height = image.size
    scale = min(1.0, side / min(width, height), (pixels / (width * height)) ** 0.5)
    if scale == 1.0:
        return image
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
