"""Frame-exact video reading with OpenCV (the only decoder in the environment).

Frame indices are the contract between the teacher cache and the student, so frame ``i`` must be
the same pixels for every caller. Container headers over-count (every HMDB51 clip claims one frame
more than decodes), timestamps can be non-monotonic (DivX packed B-frames) or variable (VFR), and
seeking is codec-dependent. We therefore decode forward from frame 0, ``grab()``-ing frames we skip
(no colour conversion) and ``retrieve()``-ing the ones we want, and stop right after the last wanted
index. Frame counts are counted by decoding, never read from the header.

The one exception is a source where every frame is a keyframe and frame ``i`` sits at index entry
``i`` (an intra-only codec in AVI, which is what the ``transcode`` stage writes): there the reader
jumps straight to the first frame of each wanted run (the nearest keyframe at or before it is the
frame itself) and decodes forward from there. Seeking was checked frame-exact against forward
decoding on every real clip's transcoded copy (tests/test_transcode.py); any other source keeps
forward decoding, whose cost grows with the largest index read.
"""
from __future__ import annotations

import math
import operator
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from pipeline.core.errors import DataError

# Extensions indexed as videos when scanning dataset folders (compared lower-case).
VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg",
                              ".flv", ".wmv", ".3gp", ".ogv", ".ts"})


class VideoDecodeError(DataError):
    """A video cannot be opened or a requested frame does not decode; names the file and the frame index
    (a DataError that keeps them as attributes: the teacher cache records the failed frame)."""

    def __init__(self, path: str | Path, what: str | None = None, index: int | None = None) -> None:
        # One-argument form: a DataLoader re-raises a worker's exception as ``type(message)``.
        self.path = Path(path) if what is not None else None
        self.index = index
        super().__init__(f"{path}: {what}" if what is not None else str(path))

    def __reduce__(self):
        return (type(self), (str(self),))


@dataclass(frozen=True)
class VideoInfo:
    """What a manifest records about a video: decodable frame count and OpenCV's fps/size."""

    frames: int
    fps: float
    width: int
    height: int


def _in_dataloader_worker() -> bool:
    # Only look at torch if the process already imported it: a process without torch cannot be a
    # DataLoader worker, and importing torch here would cost seconds in every probe worker.
    if "torch" not in sys.modules:
        return False
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - broken torch install
        return False
    return get_worker_info() is not None


def _decoder_threads(threads: int | None) -> int | None:
    """FFmpeg decoding threads for one capture: ``threads`` if given, 1 inside a DataLoader worker
    (N workers × one thread per core oversubscribes the machine), else FFmpeg's default.

    This is a per-capture setting on purpose. ``cv2.setNumThreads(1)`` in a forked DataLoader
    worker deadlocks when the parent had already started both OpenCV's and torch's thread pools
    (OpenCV joins pool threads that do not exist in the child; reproduced with OpenCV 5.0 and
    torch 2.14), so the reader never touches OpenCV's process-wide pool and never uses it either:
    the colour swap is numpy, not cv2.cvtColor.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return threads
    return 1 if _in_dataloader_worker() else None


@contextmanager
def open_video(path: str | Path, *, threads: int | None = None) -> Iterator[cv2.VideoCapture]:
    """An opened FFmpeg capture of ``path``, always released; VideoDecodeError if it will not open."""
    p = Path(path)
    if not p.is_file():
        if p.is_symlink() and not p.exists():
            raise VideoDecodeError(p, "a broken symbolic link (its target is missing, or the links loop)")
        raise VideoDecodeError(p, "file does not exist" if not p.exists() else "not a regular file")
    n = _decoder_threads(threads)
    params = [] if n is None else [cv2.CAP_PROP_N_THREADS, n]
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG, params)
    try:
        if not cap.isOpened():
            if not os.access(p, os.R_OK):  # FFmpeg says the same for both: tell the user which
                raise VideoDecodeError(p, "permission denied: this user cannot read the file (fix its "
                                          "permissions)")
            raise VideoDecodeError(p, "OpenCV/FFmpeg cannot open it as a video (corrupt, truncated, "
                                      "not a video or no video stream)")
        yield cap
    finally:
        cap.release()


def _is_frame_source(path: str | Path) -> bool:
    """True when ``path`` names a frame folder (``<folder>/<template>@<start>``), not a video file."""
    from data_manifests.frames import is_frame_source

    return is_frame_source(path)


def _check_indices(path: str | Path, indices: Sequence[int]) -> list[int]:
    out = []
    for i in indices:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"{path}: frame indices must be integers, got {i!r}") from None
        if i < 0:
            raise ValueError(f"{path}: frame index {i} is negative")
        out.append(i)
    return out


# Codecs (OpenCV FOURCC) in which every frame is a keyframe, and the containers whose index gives
# frame i directly (AVI: one index entry per frame, no timestamps to trust, no reordering).
INTRA_ONLY_FOURCCS = frozenset({"MJPG"})
SEEK_CONTAINERS = frozenset({".avi"})
# OpenCV's seek lands 16 frames before the target and decodes forward, so a shorter jump is
# cheaper as grab()s.
MIN_SEEK_GAP = 24


def fourcc_of(cap: cv2.VideoCapture) -> str:
    """The stream's FOURCC as text ('MJPG', 'h264', 'FMP4', ...), '' when OpenCV reports none."""
    code = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    return code.to_bytes(4, "little").decode("ascii", errors="replace").strip("\x00 ") if code else ""


def is_seekable(path: str | Path, cap: cv2.VideoCapture) -> bool:
    """True when every frame is a keyframe and the container indexes frames (an intra-only AVI):
    seeking to frame i then decodes exactly frame i. Everything else is read forward."""
    return Path(path).suffix.lower() in SEEK_CONTAINERS and fourcc_of(cap) in INTRA_ONLY_FOURCCS


def _seek(cap: cv2.VideoCapture, path: str | Path, target: int) -> None:
    """Jump so that the next grab() decodes frame ``target``; past the end is a VideoDecodeError."""
    cap.set(cv2.CAP_PROP_POS_FRAMES, target)
    landed = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
    if landed != target:
        raise VideoDecodeError(path, f"frame {target} does not decode (seeking stopped at frame {landed}; "
                                     f"the video has fewer frames)", index=target)


def read_frames(path: str | Path, indices: Sequence[int], *, bgr: bool = False,
                threads: int | None = None, seek: bool | None = None) -> np.ndarray:
    """Frames ``indices`` (any order, duplicates allowed) as uint8 (len(indices), H, W, 3), RGB unless ``bgr``.

    Decodes forward from frame 0 once, however the indices are ordered, and stops after the
    largest one; read the frames a caller needs in ONE call (cost grows with the largest index).
    In an intra-only AVI (:func:`is_seekable`; ``seek=None``) it jumps to each wanted run more
    than ``MIN_SEEK_GAP`` frames ahead instead; ``seek=False`` forces forward decoding (tests).
    Raises VideoDecodeError naming the file and the index when an index lies past the last
    decodable frame or does not decode.
    """
    if _is_frame_source(path):  # a frame folder (data_manifests/frames.py)
        from data_manifests.frames import read_frame_folder

        return read_frame_folder(path, _check_indices(path, indices), bgr=bgr)
    idx = _check_indices(path, indices)
    slots: dict[int, list[int]] = {}
    for pos, i in enumerate(idx):
        slots.setdefault(i, []).append(pos)
    wanted = sorted(slots)
    with open_video(path, threads=threads) as cap:
        if not wanted:
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            return np.empty((0, h, w, 3), np.uint8)
        jump = is_seekable(path, cap) if seek is None else bool(seek) and is_seekable(path, cap)
        out: np.ndarray | None = None
        pos = 0  # index of the next frame grab() would decode
        for target in wanted:
            if jump and target - pos > MIN_SEEK_GAP:
                _seek(cap, path, target)
                pos = target
            while pos <= target:
                if not cap.grab():
                    raise VideoDecodeError(path, f"frame {target} does not decode (only {pos} frames "
                                                 f"decode)", index=target)
                pos += 1
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                raise VideoDecodeError(path, f"frame {target} decoded but could not be retrieved",
                                       index=target)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise VideoDecodeError(path, f"frame {target} has shape {frame.shape}, expected (H, W, 3)",
                                       index=target)
            if out is None:
                out = np.empty((len(idx), *frame.shape), np.uint8)
            elif frame.shape != out.shape[1:]:
                raise VideoDecodeError(path, f"frame {target} is {frame.shape[1]}x{frame.shape[0]}, earlier "
                                             f"frames are {out.shape[2]}x{out.shape[1]} (size changes "
                                             f"mid-video)", index=target)
            first, *rest = slots[target]
            out[first] = frame if bgr else frame[..., ::-1]
            for p in rest:
                out[p] = out[first]
    assert out is not None
    return out


def count_frames(path: str | Path, *, threads: int | None = None) -> int:
    """Number of frames that actually decode (the header count can be wrong)."""
    if _is_frame_source(path):
        from data_manifests.frames import probe_frame_folder

        return probe_frame_folder(path).info.frames
    with open_video(path, threads=threads) as cap:
        n = 0
        while cap.grab():
            n += 1
        return n


def probe_video(path: str | Path, *, threads: int | None = None) -> VideoInfo:
    """Decodable frame count (by decoding), fps and frame size as delivered by :func:`read_frames`.

    A video that opens but decodes no frame gives ``frames=0`` (the caller decides); one that does
    not open raises VideoDecodeError. The size is taken from the first decoded frame when there is
    one (OpenCV applies rotation metadata, so it can differ from the stream header), and fps is 0.0
    when OpenCV reports none. A frame source (data_manifests/frames.py) counts its consecutive
    decodable frames and has fps 0.0.
    """
    if _is_frame_source(path):
        from data_manifests.frames import probe_frame_folder

        return probe_frame_folder(path).info
    with open_video(path, threads=threads) as cap:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if not math.isfinite(fps) or fps < 0:
            fps = 0.0
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = 0
        if cap.grab():
            n = 1
            ok, frame = cap.retrieve()
            if ok and frame is not None:
                height, width = int(frame.shape[0]), int(frame.shape[1])
            while cap.grab():
                n += 1
    return VideoInfo(frames=n, fps=fps, width=width, height=height)
