"""Optional TensorBoard event files, written from the SAME records as ``metrics.jsonl``.

``pip install -e ".[tensorboard]"`` turns them on: every :class:`~pipeline.core.progress.MetricsLog`
then mirrors its records into ``<stage folder>/tensorboard/`` (losses, accuracies, learning rate,
clips/s, as ``<event>/<key>`` scalars), the evaluation stages add their final figures (top-1 /
top-5, R@k), and the teacher cache adds a strip of its first parsing maps as an image, so
``tensorboard --logdir WORK`` shows every run side by side. Without the package nothing changes
except one log line saying how to turn it on; ``PIPELINE_TENSORBOARD=0`` turns it off when installed.

A leaf module: it imports nothing of the project, and TensorBoard only when a writer is opened.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

ENV = "PIPELINE_TENSORBOARD"
SUBDIR = "tensorboard"
HINT = 'TensorBoard event files are off: pip install -e ".[tensorboard]" to write them beside metrics.jsonl'
# record keys that are positions or bookkeeping, never plotted
_NOT_SCALARS = {"time", "epoch", "step", "global_step", "shard", "world_size", "total_steps", "steps_per_epoch"}
_STEP_KEYS = ("global_step", "step", "shard", "epoch")
_hinted = False


def available() -> bool:
    """True when the ``tensorboard`` package (which torch's SummaryWriter needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def wanted() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


class TensorBoardWriter:
    """A SummaryWriter fed with metrics records (dicts), images and final scalars."""

    def __init__(self, log_dir: Path | str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._count = 0

    def record(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record → scalars ``<event or kind>/<key>`` at its step."""
        group = str(record.get("event") or record.get("kind") or "metrics")
        step = next((int(record[k]) for k in _STEP_KEYS if isinstance(record.get(k), (int, float))
                     and not isinstance(record.get(k), bool)), self._count)
        self._count += 1
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(f"{group}/{key}", float(value), step)
        # flushed per record (records are few): the event file is complete whenever stage.json hashes
        # it, even where a caller never closes its MetricsLog
        self._writer.flush()

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int = 0) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def image(self, tag: str, rgb: np.ndarray, step: int = 0) -> None:
        """An (H, W, 3) uint8 image."""
        self._writer.add_image(tag, np.ascontiguousarray(rgb), step, dataformats="HWC")

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def open_writer(log_dir: Path | str) -> TensorBoardWriter | None:
    """A writer for ``log_dir``, or None (package absent: one hint line per process; or turned off)."""
    global _hinted
    if not wanted():
        return None
    if not available():
        if not _hinted:
            log.info(HINT)
            _hinted = True
        return None
    return TensorBoardWriter(log_dir)


# The headline figures of each evaluation stage's summary.
_FINAL_KEYS = {"evaluate": ("video_top1", "video_top5", "clip_top1", "clip_top5", "mean_class_accuracy"),
               "linear-probe": ("top1", "top5", "train_top1")}


def log_final(out_dir: Path | str, kind: str, summary: Mapping[str, Any]) -> None:
    """Write a finished evaluation's headline figures (top-1 / top-5, R@k) into ``out_dir/tensorboard``."""
    values = {k: summary[k] for k in _FINAL_KEYS.get(kind, ()) if k in summary}
    values.update(summary.get("recall", {}) if kind == "retrieval" else {})
    if not values:
        return
    writer = open_writer(Path(out_dir) / SUBDIR)
    if writer is not None:
        writer.scalars(f"final/{kind}", values)
        writer.close()


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved palette (n, 3) uint8, as SCHP colours its label maps."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        out[i] = (r, g, b)
    return out


def map_strip(maps: np.ndarray) -> np.ndarray:
    """(N, C, H, W) soft maps → one (H, N·W, 3) uint8 strip of their argmax in the VOC palette."""
    labels = maps.argmax(axis=1)
    colours = voc_palette(maps.shape[1])[labels]  # (N, H, W, 3)
    return np.concatenate(list(colours), axis=1)


def log_teacher_maps(cache_dir: Path | str, count: int = 8) -> None:
    """The first ``count`` maps of the teacher cache's first shard as one image, in ``cache_dir/tensorboard``."""
    import h5py

    shards = sorted(Path(cache_dir).glob("shard-*.h5"))
    if not shards:
        return
    writer = open_writer(Path(cache_dir) / SUBDIR)
    if writer is None:
        return
    with h5py.File(shards[0], "r") as f:
        maps = np.asarray(f["maps"][:count], dtype=np.float32)
    if len(maps):
        writer.image("teacher/maps", map_strip(maps))
    writer.close()


def log_png_files(log_dir: Path | str, prefix: str, paths: list[Path]) -> None:
    """PNG pictures a command wrote (CAM strips) as TensorBoard images ``<prefix>/<file stem>``."""
    import cv2

    writer = open_writer(log_dir) if paths else None
    if writer is None:
        return
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            writer.image(f"{prefix}/{Path(path).stem}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    writer.close()


__all__ = ["ENV", "HINT", "SUBDIR", "TensorBoardWriter", "available", "log_final", "log_png_files",
           "log_teacher_maps", "map_strip", "open_writer", "voc_palette"]
