"""``pipeline parse-image``: SCHP on one photo, written as an SCHP-style palette PNG.

OpenCV cannot write indexed (palette) PNGs and Pillow is not a dependency, so the PNG is encoded
here: 8-bit colour type 3, a 256-entry palette whose first C entries are the VOC palette and the
rest grey (i, i, i) as SCHP's Pillow output has, no filtering.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.core.errors import CheckpointError, DataError
from pipeline.core.files import atomic_write_bytes
from teacher.checkpoint import load_schp
from teacher.labels import check_label_set, input_size as default_input_size, palette
from teacher.preprocess import parse_to_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def schp_palette(num_classes: int) -> np.ndarray:
    """(256, 3) uint8: VOC colours for the classes, grey ramp after them (what SCHP's PNGs carry)."""
    pal = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    pal[:num_classes] = palette(num_classes)
    return pal


def write_palette_png(path: str | Path, labels: np.ndarray, pal: np.ndarray) -> None:
    """Write an (H, W) uint8 index map as an 8-bit palette PNG with palette ``pal`` (≤ 256 × 3 uint8)."""
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map must be (H, W) uint8, got {labels.dtype} {labels.shape}")
    pal = np.asarray(pal, dtype=np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= pal.shape[0] <= 256:
        raise ValueError(f"palette must be (n ≤ 256, 3) uint8, got {pal.shape}")
    h, w = labels.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), labels], axis=1)  # filter byte 0 per row
    png = (PNG_SIGNATURE
           + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + _chunk(b"PLTE", pal.tobytes())
           + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
           + _chunk(b"IEND", b""))
    atomic_write_bytes(path, png)


def _check_finite_weights(model: nn.Module, checkpoint: object) -> None:
    """A network with NaN/inf weights labels every pixel 0 (background): refuse instead of writing that PNG.

    Loading a checkpoint file already refuses non-finite tensors; this catches a network passed in
    directly (or weights damaged in memory) at the cost of one pass over its parameters.
    """
    bad = next((n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        where = "(in memory)" if isinstance(checkpoint, nn.Module) else checkpoint
        raise CheckpointError(f"SCHP checkpoint {where}: {bad} holds NaN or inf, so every pixel would be background; "
                              f"no PNG written")


def parse_image(image_path: str | Path, checkpoint: str | Path | nn.Module, labels: str, out_png: str | Path,
                device: str | torch.device = "cpu", input_size: int | None = None, flip: bool = False) -> np.ndarray:
    """Parse one image with SCHP and write the palette PNG at the image's resolution; returns (H, W) uint8 labels.

    ``checkpoint`` is a path or an already loaded network; ``input_size`` defaults to the label
    set's (473 LIP, 512 ATR / Pascal).
    """
    check_label_set(labels)
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{image_path}: not an image OpenCV can read (missing, empty, or another kind of file); "
                        f"give a JPEG, PNG, BMP or WebP photo")
    model = checkpoint if isinstance(checkpoint, nn.Module) else load_schp(checkpoint, labels, device)
    size = input_size or default_input_size(labels)
    _check_finite_weights(model, checkpoint)
    label_map = parse_to_labels(model, [image], size, flip=flip)[0].cpu().numpy()
    write_palette_png(out_png, label_map, schp_palette(cast(int, model.num_classes)))
    return label_map
