"""Line charts and image grids as PNG-ready BGR arrays, drawn with OpenCV (no plotting dependency).

Small and deliberate: one panel is a set of named (x, y) series on shared axes with ticks, a
legend and optional horizontal reference lines (e.g. chance level); panels are tiled into a grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.core.files import atomic_write_bytes

COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127)]  # BGR: tab10
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Panel:
    """One chart: ``series`` name -> (xs, ys); ``hlines`` name -> y (dashed, grey)."""

    title: str
    xlabel: str = "step"
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    hlines: dict[str, float] = field(default_factory=dict)
    ylim: tuple[float, float] | None = None


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}".rstrip("0")


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.38, colour=(40, 40, 40)) -> None:
    cv2.putText(img, s, org, FONT, scale, colour, 1, cv2.LINE_AA)


def draw_panel(panel: Panel, width: int = 420, height: int = 280) -> np.ndarray:
    """The panel as a (height, width, 3) uint8 BGR image."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 48, 12, 24, 52
    pw, ph = width - left - right, height - top - bottom
    xs_all = [float(x) for xs, _ in panel.series.values() for x in xs]
    ys_all = [float(y) for _, ys in panel.series.values() for y in ys if math.isfinite(float(y))]
    ys_all += list(panel.hlines.values())
    _text(img, panel.title, (left, 16), 0.45, (0, 0, 0))
    if not xs_all or not ys_all:
        _text(img, "no data", (left + pw // 3, top + ph // 2))
        return img
    x0, x1 = min(xs_all), max(xs_all)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = panel.ylim if panel.ylim else (min(ys_all), max(ys_all))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = (y0, y1) if panel.ylim else (y0 - pad, y1 + pad)

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(round(left + (x - x0) / (x1 - x0) * pw)), int(round(top + (1 - (y - y0) / (y1 - y0)) * ph)))

    cv2.rectangle(img, (left, top), (left + pw, top + ph), (160, 160, 160), 1)
    for ty in _nice_ticks(y0, y1):
        p = px(x0, ty)
        cv2.line(img, (left, p[1]), (left + pw, p[1]), (235, 235, 235), 1)
        _text(img, _fmt(ty), (2, p[1] + 4), 0.33)
    for tx in _nice_ticks(x0, x1):
        p = px(tx, y0)
        _text(img, _fmt(tx), (p[0] - 8, top + ph + 14), 0.33)
    _text(img, panel.xlabel, (left + pw // 2 - 15, top + ph + 28), 0.36)
    for name, yv in panel.hlines.items():
        a, b = px(x0, yv), px(x1, yv)
        for dash in range(a[0], b[0], 8):
            cv2.line(img, (dash, a[1]), (min(dash + 4, b[0]), a[1]), (120, 120, 120), 1)
        _text(img, name, (b[0] - 8 * len(name) - 2, a[1] - 3), 0.32, (110, 110, 110))
    legend_x = left
    for i, (name, (xs, ys)) in enumerate(panel.series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [px(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        elif pts:
            cv2.circle(img, pts[0], 3, colour, -1)
        ly = height - 8
        cv2.line(img, (legend_x, ly - 4), (legend_x + 14, ly - 4), colour, 2)
        _text(img, name, (legend_x + 17, ly), 0.34)
        legend_x += 24 + 7 * len(name)
    return img


def tile(images: Sequence[np.ndarray], cols: int, background: int = 255) -> np.ndarray:
    """Images (any sizes) on a grid, ``cols`` per row, each cell the size of the largest image."""
    if not images:
        raise ValueError("tile: no images")
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * h, cols * w, 3), background, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * h:r * h + im.shape[0], c * w:c * w + im.shape[1]] = im
    return out


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write ``image`` (BGR) as PNG through a temporary name, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return path
