"""PNG writing for images that are arrays (BGR, as OpenCV draws them: CAM comparisons, parsing maps).

Charts are matplotlib figures (pipeline/core/plotting.py, pipeline/figures.py); this module only
keeps the atomic writer for arrays that are already pictures.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.files import atomic_write_bytes


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write ``image`` (BGR) as PNG through a temporary name, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return path
