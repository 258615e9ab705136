"""Exports of a saved review to bring to a meeting: a PNG grid, the scores as CSV, an HTML report, a zip.

The HTML report is self-contained: images are ``data:`` URIs and plotly.js is inlined once, so the file
opens offline. Every piece of user text (notes, comments, names) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.io as pio
from PIL import Image, ImageDraw, ImageFont

from ..images import read_image
from ..names import FORMATS
from ..registry import method_label
from ..render import DEFAULT_COLORMAP, DEFAULT_OPACITY, colorbar, overlay
from .store import Review

TILE = 224  # pixels per tile side in the PNG grid
GRID_COLUMNS = 4
_PAD = 8
_FONT = 13


def display_settings(review: Review) -> tuple[float, str]:
    """``(opacity, colormap)`` of the saved view (its URL state), or the defaults."""
    state = review.snapshot.state
    return float(state.get("opacity", DEFAULT_OPACITY)), str(state.get("colormap", DEFAULT_COLORMAP))


def params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items()) or "defaults"


def image_array(review: Review) -> np.ndarray:
    """The reviewed image, ``uint8 (H, W, 3)`` RGB."""
    return np.asarray(read_image(review.snapshot.image))


def overlays(review: Review) -> dict[str, np.ndarray]:
    """Per method, its map over the image with the view's opacity and colormap."""
    opacity, colormap = display_settings(review)
    image = image_array(review)
    return {
        name: overlay(image, m, opacity=opacity, colormap=colormap)
        for name, m in review.snapshot.maps.items()
    }


def second_tiles(review: Review) -> list[tuple[str, str, np.ndarray]]:
    """``(title, caption, picture)`` of a two-model review's second model: its view of the image, then its
    map over it per method (none for a review of one model)."""
    second = review.snapshot.second
    if second is None:
        return []
    opacity, colormap = display_settings(review)
    image = np.asarray(read_image(second.image))
    tiles = [("Image, model B", f"{second.model} · class {second.target} {second.target_name}", image)]
    return tiles + [(f"{method_label(name)} · B", second.model, overlay(image, m, opacity=opacity,
                                                                       colormap=colormap))
                    for name, m in second.maps.items()]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans where the system has it (it has every glyph of the labels), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", _FONT)
    except OSError:
        return ImageFont.load_default(size=_FONT)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def grid_image(review: Review) -> np.ndarray:
    """The image and every method's overlay side by side, each labelled with its method and parameters.

    ``GRID_COLUMNS`` tiles a row, a title line above (review, model, target), the colour scale below.
    """
    snapshot = review.snapshot
    font = _font()
    tiles = [("Image", snapshot.image_id, image_array(review))]
    tiles += [
        (method_label(name), params_text(snapshot.params.get(name, {})), picture)
        for name, picture in overlays(review).items()
    ]
    tiles += second_tiles(review)
    captions = [[title, *_wrap(subtitle, font, TILE)] for title, subtitle, _ in tiles]
    line = _FONT + 4
    caption_height = line * max(len(c) for c in captions)
    columns = min(len(tiles), GRID_COLUMNS)
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = TILE + _PAD, caption_height + TILE + _PAD
    header, footer = line + _PAD, line + _PAD
    canvas = Image.new("RGB", (columns * cell_w + _PAD, header + rows * cell_h + footer + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    title = f"Review #{review.id} · {snapshot.model} · class {snapshot.target} {snapshot.target_name}"
    if snapshot.second is not None:
        title += f" · B: {snapshot.second.model}"
    draw.text((_PAD, _PAD), title, fill="black", font=font)
    for index, ((_, _, picture), caption) in enumerate(zip(tiles, captions, strict=True)):
        x = _PAD + (index % columns) * cell_w
        y = header + (index // columns) * cell_h
        for number, text in enumerate(caption):
            draw.text((x, y + number * line), text, fill="black" if number == 0 else "dimgray", font=font)
        canvas.paste(
            Image.fromarray(picture).resize((TILE, TILE), Image.Resampling.BILINEAR), (x, y + caption_height)
        )
    _, colormap = display_settings(review)
    y = header + rows * cell_h
    draw.text((_PAD, y), "low", fill="black", font=font)
    canvas.paste(Image.fromarray(colorbar(colormap, width=TILE, height=_FONT)), (_PAD + 36, y + 2))
    legend = "high relevance (each map scaled to its own range)"
    draw.text((_PAD + 44 + TILE, y), legend, fill="black", font=font)
    return np.asarray(canvas)


def grid_png(review: Review) -> bytes:
    return png_bytes(grid_image(review))


def scores_frame(review: Review) -> pd.DataFrame:
    """All score tables in one frame, a ``table`` column first naming the table of each row."""
    frames = [pd.DataFrame(rows).assign(table=name) for name, rows in review.snapshot.scores.items() if rows]
    if not frames:
        return pd.DataFrame(columns=["table"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["table", *(c for c in frame.columns if c != "table")]]


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell that a spreadsheet would run as a formula prefixed with ``'``
    (shown as text); numbers, negative ones included, are left as they are."""
    out = frame.copy()
    for name, column in frame.items():
        risky = column.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS)).astype(bool)
        if risky.any():
            out[name] = column.astype(object).mask(risky, "'" + column.astype(str))
    return out


def scores_csv(review: Review) -> str:
    # CRLF rows (RFC 4180): a cell holding a CR or an LF is then quoted.
    return neutralise_cells(scores_frame(review)).to_csv(index=False, lineterminator="\r\n")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in rows.items()
    )
    return f"<table>{cells}</table>"


def _figure(png: bytes, title: str, caption: str) -> str:
    return (
        f'<figure><img src="{_data_uri(png)}" alt="{html.escape(title)}" width="{TILE}" height="{TILE}">'
        f"<figcaption><b>{html.escape(title)}</b><br>{caption}</figcaption></figure>"
    )


def chart_html(charts: Mapping[str, str]) -> list[str]:
    """Each chart as an HTML fragment; plotly.js is inlined in the first one only."""
    return [
        f"<h3>{html.escape(title)}</h3>"
        + pio.from_json(figure).to_html(full_html=False, include_plotlyjs=index == 0, default_height="420px")
        for index, (title, figure) in enumerate(charts.items())
    ]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: .5rem 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { text-align: left; background: #f4f4f4; } .notes { white-space: pre-wrap; }
.maps { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; max-width: 240px; }
"""


def html_report(review: Review) -> str:
    """A self-contained HTML page: the view's facts, notes, maps with parameters, scores, charts, comments."""
    snapshot = review.snapshot
    title = f"Review #{review.id}: {snapshot.target_name} ({snapshot.model})"
    facts = {
        "Model": snapshot.model,
        "Device": snapshot.device,
        "Image": snapshot.image_id,
        "Target class": f"{snapshot.target} {snapshot.target_name}",
        "Author": snapshot.author,
        "Saved (UTC)": review.created_at,
    }
    figures = [_figure(png_bytes(image_array(review)), "Image", html.escape(snapshot.image_id))]
    figures += [
        _figure(png_bytes(picture), method_label(name), _table(snapshot.params.get(name, {})))
        for name, picture in overlays(review).items()
    ]
    figures += [_figure(png_bytes(picture), title, html.escape(caption))
                for title, caption, picture in second_tiles(review)]
    if snapshot.second is not None:
        facts["Model B"] = f"{snapshot.second.model} on {snapshot.second.device}"
        facts["Class explained by B"] = f"{snapshot.second.target} {snapshot.second.target_name}"
    opacity, colormap = display_settings(review)
    scores = "".join(
        f"<h3>{html.escape(name)}</h3>"
        + pd.DataFrame(rows).to_html(index=False, na_rep="n/a", float_format="%.4g")
        for name, rows in snapshot.scores.items()
    )
    comments = "".join(
        f"<li><b>{html.escape(c.author)}</b> <small>{html.escape(c.created_at)}</small>"
        f'<div class="notes">{html.escape(c.text)}</div></li>'
        for c in review.comments
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        _table(facts),
        f'<h2>Notes</h2><div class="notes">{html.escape(snapshot.notes) or "<i>none</i>"}</div>',
        f"<h2>Maps</h2><p>Overlay opacity {opacity}, colormap {html.escape(colormap)}; each map is scaled "
        f'to its own range.</p><div class="maps">{"".join(figures)}</div>',
        "<h2>Scores</h2>" + (scores or "<p><i>none saved</i></p>"),
        "<h2>Charts</h2>" + ("".join(chart_html(snapshot.charts)) or "<p><i>none saved</i></p>"),
        f"<h2>Comments</h2><ul>{comments}</ul>" if comments else "<h2>Comments</h2><p><i>none</i></p>",
        "<h2>View state</h2>" + _table(snapshot.state),
    ]
    body = "\n".join(sections)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def export_files(review: Review, formats: Iterable[str] = FORMATS) -> dict[str, bytes]:
    """File name → content for each of ``formats``; ``zip`` holds the PNG, the CSV and the HTML."""
    formats = list(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
    makers = {
        "png": grid_png,
        "csv": lambda r: scores_csv(r).encode(),
        "html": lambda r: html_report(r).encode(),
    }
    needed = makers.keys() if "zip" in formats else formats
    parts = {f"review-{review.id}.{kind}": makers[kind](review) for kind in makers if kind in needed}
    files = {name: data for name, data in parts.items() if Path(name).suffix[1:] in formats}
    if "zip" in formats:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in parts.items():
                archive.writestr(name, data)
        files[f"review-{review.id}.zip"] = buffer.getvalue()
    return files


def write_exports(review: Review, out_dir: str | Path, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write :func:`export_files` into ``out_dir`` (created if needed); returns the paths written."""
    files = export_files(review, formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths
