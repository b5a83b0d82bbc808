"""The confusion matrix as CSV (with class names) and as a matplotlib figure (PNG + SVG)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.core.plotting import new_figure, save_figure


def write_confusion_csv(path: Path, cm: np.ndarray, classes: Sequence[str]) -> Path:
    """Rows = true class, columns = predicted class; first row/column hold the class names."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, cm):
            w.writerow([name, *[int(v) for v in row]])
    return path


def read_confusion_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    classes = rows[0][1:]
    return classes, np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)


def confusion_figure(cm: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalised matrix (share of each true class predicted as each class) with a colour bar.

    Class names label the axes up to 40 classes; beyond that the ticks are class indices, as the
    names would overlap. Cells carry their count when the matrix is small enough to read them.
    """
    c = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = float(np.clip(2.5 + 0.22 * c, 4.0, 16.0))
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label("share of the true class's videos")
    if c <= 40:
        ax.set_xticks(range(c), [str(n) for n in classes], rotation=90)
        ax.set_yticks(range(c), [str(n) for n in classes])
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="black" if norm[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix: {int(cm.sum())} videos, {c} classes"
                 + ("; numbers are video counts" if c <= 20 else ""))
    return fig


def write_confusion_png(path: Path, cm: np.ndarray, classes: Sequence[str]) -> Path:
    """``path`` (PNG) and the same figure as SVG beside it; returns the PNG's path."""
    return save_figure(confusion_figure(cm, classes), Path(path))[0]
