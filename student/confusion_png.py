"""The confusion matrix as CSV (with class names) and as a PNG drawn with OpenCV (no matplotlib)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np


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


def render_confusion(cm: np.ndarray, classes: Sequence[str], max_side: int = 1200) -> np.ndarray:
    """A BGR image: row-normalised matrix (viridis), class names when there is room for them."""
    c = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    cell = int(np.clip(max_side // max(c, 1), 2, 32))
    heat = cv2.resize((norm * 255).round().astype(np.uint8), (c * cell, c * cell), interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap(heat, cv2.COLORMAP_VIRIDIS)
    show_names = cell >= 10
    margin = 0
    if show_names:
        scale = min(0.4, cell / 30)
        margin = 8 + max(cv2.getTextSize(str(n), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in classes)
    img = np.full((c * cell + margin + 24, c * cell + margin + 8, 3), 255, np.uint8)
    img[margin:margin + c * cell, margin:margin + c * cell] = heat
    if show_names:
        for i, name in enumerate(classes):
            y = margin + i * cell + cell // 2 + 4
            cv2.putText(img, str(name), (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        # column names: drawn horizontally on a strip then rotated to run upwards
        strip = np.full((c * cell, margin, 3), 255, np.uint8)
        for j, name in enumerate(classes):
            text_w = cv2.getTextSize(str(name), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
            cv2.putText(strip, str(name), (margin - 4 - text_w, j * cell + cell // 2 + 4),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        img[:margin, margin:margin + c * cell] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.putText(img, "rows: true class, columns: predicted (row-normalised)", (4, img.shape[0] - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_confusion_png(path: Path, cm: np.ndarray, classes: Sequence[str]) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), render_confusion(cm, classes)):
        raise OSError(f"could not write the confusion matrix image {path}")
    return path
