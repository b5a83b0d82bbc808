"""Part-mask files that sit next to each synthetic video.

``<video path without extension>.parts.npz`` holds key ``masks``: uint8 (T, H, W) with
Pascal-Person-Part ids (0 background .. 6 lower legs), one per decodable frame. The zip is written
with a fixed timestamp so the same masks always give the same bytes (``np.savez_compressed``
stamps the current time into the archive, which would break byte-for-byte determinism).
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.files import atomic_path

MASK_SUFFIX = ".parts.npz"
MASK_KEY = "masks"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def mask_path_for(video_path: str | os.PathLike) -> Path:
    """``a/b/v_Wave_g01_c01.avi`` -> ``a/b/v_Wave_g01_c01.parts.npz``."""
    p = Path(video_path)
    return p.with_name(p.name[: len(p.name) - len(p.suffix)] + MASK_SUFFIX)


def save_part_masks(path: str | os.PathLike, masks: np.ndarray) -> Path:
    """Write ``masks`` (T, H, W) uint8 as a compressed, byte-deterministic ``.npz``, atomically."""
    masks = np.ascontiguousarray(masks)
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise ValueError(f"{path}: part masks must be uint8 (T, H, W), got {masks.dtype} {masks.shape}")
    path = Path(path)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, masks, allow_pickle=False)
    info = zipfile.ZipInfo(MASK_KEY + ".npy", date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                   compresslevel=6) as zf:
        zf.writestr(info, buf.getvalue())
    return path


def load_part_masks(video_path: str | os.PathLike, frames: Sequence[int]) -> np.ndarray:
    """Part masks of ``frames`` of a synthetic video: uint8 (len(frames), H, W).

    ``video_path`` is the video (its mask file is found next to it); indices may repeat and come
    in any order. Raises FileNotFoundError / ValueError / IndexError naming the mask file.
    """
    mpath = mask_path_for(video_path)
    if not mpath.is_file():
        raise FileNotFoundError(f"part-mask file {mpath} not found (expected next to video {video_path}; "
                                "only synthetic videos have one)")
    try:
        with np.load(mpath, allow_pickle=False) as npz:
            if MASK_KEY not in npz.files:
                raise ValueError(f"part-mask file {mpath} has no '{MASK_KEY}' array (keys: {npz.files})")
            masks = npz[MASK_KEY]
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"part-mask file {mpath} is unreadable: {exc}") from exc
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise ValueError(f"part-mask file {mpath}: expected uint8 (T, H, W), got {masks.dtype} {masks.shape}")
    idx = np.asarray(list(frames), dtype=np.int64)
    n = masks.shape[0]
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"part-mask file {mpath} has {n} frames; requested frame(s) out of range: "
                         f"{sorted(set(bad.tolist()))[:10]}")
    return masks[idx]
