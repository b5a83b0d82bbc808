"""Matplotlib figures saved as a PNG with a vector copy (SVG) beside it, without pyplot's global state.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, so no GUI
backend is ever touched (headless GPU servers, DataLoader workers) and no figure leaks between
calls. :func:`save_figure` writes ``<stem>.png`` and ``<stem>.svg`` through temporary names, so a
reader never sees half a file.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.files import atomic_write_bytes

DPI = 150
VECTOR = "svg"
STYLE: dict[str, Any] = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"}


def new_figure(width_in: float, height_in: float) -> Figure:
    """An empty Agg-backed figure with the project's style (small fonts, no top/right spines)."""
    import matplotlib

    matplotlib.rcParams.update(STYLE)  # type: ignore[arg-type]  # rcParams' keys are a Literal
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: Path | str) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (``stem`` without suffix, or with one that is replaced)."""
    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix in (".png", ".svg", ".pdf") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("png", VECTOR):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI)
        path = stem.with_name(stem.name + "." + fmt)
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def no_data(ax: Any, what: str) -> None:
    """Mark an axes that has nothing to draw (a stage that logged no such records)."""
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


__all__ = ["DPI", "VECTOR", "new_figure", "no_data", "save_figure"]
