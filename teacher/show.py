"""``pipeline teacher-show``: look at what the teacher said about one clip.

Writes a PNG with the clip's anchor frame on the left and the same frame with the cached map's
argmax as a palette overlay on the right, plus a legend of the parts present. The map is
upsampled to the frame (bilinear, pixel centres) before the argmax, exactly the geometry the
student's targets use, so a misaligned cache is visible at a glance.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from teacher.cache_reader import TeacherCache
from teacher.labels import palette


def overlay_map(frame_rgb: np.ndarray, probs: np.ndarray, alpha: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(overlay RGB uint8, label map) for a frame and its full-frame map (C, h, w)."""
    h, w = frame_rgb.shape[:2]
    up = F.interpolate(torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))[None], size=(h, w),
                       mode="bilinear", align_corners=False)[0]
    labels = up.argmax(0).numpy().astype(np.int64)
    colours = palette(probs.shape[0])[labels].astype(np.float32)
    blend = frame_rgb.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((labels > 0)[..., None], blend, frame_rgb.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), labels


def _legend(names: list[str], present: list[int], width: int) -> np.ndarray:
    pal = palette(len(names))
    row_h = 18
    rows = max(1, -(-len(present) // 3))
    strip = np.full((rows * row_h + 6, width, 3), 255, np.uint8)
    col_w = max(1, width // 3)
    for k, c in enumerate(present):
        y, x = 4 + (k // 3) * row_h, 4 + (k % 3) * col_w
        strip[y:y + 12, x:x + 12] = pal[c]
        cv2.putText(strip, names[c], (x + 16, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def show_clip(cache_dir: str | Path, manifest_dir: str | Path, clip_id: str, out_path: str | Path, *,
              alpha: float = 0.6) -> Path:
    """Write ``out_path`` (PNG): the anchor frame of ``clip_id`` beside its cached map as an overlay."""
    from data_manifests.clip_plan import parse_clip_id
    from data_manifests.manifest import load_manifest
    from data_manifests.video import read_frames

    cache = TeacherCache(cache_dir)
    if not cache.has(clip_id):
        some = cache.clip_ids()[:5]
        raise KeyError(f"teacher cache {cache_dir} has no valid map for clip {clip_id!r} "
                       f"(clip ids look like {some}; failed clips are listed in failed.jsonl)")
    video_id, frame = parse_clip_id(clip_id)
    manifest = load_manifest(manifest_dir)
    entry = next((e for e in manifest.entries if e.id == video_id), None)
    if entry is None:
        raise KeyError(f"manifest {manifest_dir} has no video {video_id!r} (from clip {clip_id!r})")
    rgb = read_frames(manifest.abspath(entry), [frame])[0]
    probs = cache.map(clip_id)
    over, labels = overlay_map(rgb, probs, alpha)
    names = cache.labels
    present = [int(c) for c in np.unique(labels)]
    panel = np.concatenate([rgb, np.full((rgb.shape[0], 4, 3), 255, np.uint8), over], axis=1)
    image = np.concatenate([panel, _legend(names, present, panel.shape[1])], axis=0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out_path} (is the extension .png?)")
    cache.close()
    return out_path
