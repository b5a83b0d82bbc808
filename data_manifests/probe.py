"""Probe many videos once, in parallel: decodable frame count, fps and size, or why not.

Decoding is the only trustworthy frame count, and it costs a full decode per video, so it runs
in joblib worker processes. Each worker decodes with ONE FFmpeg thread (a per-capture setting;
probing uses no OpenCV-pool function, so OpenCV's process-wide pool is left alone), so
``workers`` processes use ``workers`` cores instead of ``workers × cores`` threads.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2

from data_manifests.frames import is_frame_source, probe_frame_folder
from data_manifests.video import VideoDecodeError, VideoInfo, open_video, probe_video
from pipeline.core.progress import Progress


# Signatures of still-image files: FFmpeg opens these as one-frame "videos" whatever their extension.
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                    (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# A video is "truncated" when fewer than this fraction of the frames its container lists decode
# (and at least TRUNCATED_MIN_GAP fewer): headers over-count by a frame or two (every HMDB51 clip
# claims one more than decodes), a damaged middle loses hundreds.
TRUNCATED_FRACTION = 0.9
TRUNCATED_MIN_GAP = 3


@dataclass(frozen=True)
class ProbeResult:
    """``info`` when the video opened (``info.frames`` may be 0), else ``error`` says why not.

    ``reason`` is set when the file opened but must still be rejected ("not_a_video": a still
    image renamed to a video extension; "truncated": far fewer frames decode than the container
    lists), with ``error`` saying why.
    """

    info: VideoInfo | None
    error: str | None = None
    reason: str | None = None


def image_kind(path: str | Path) -> str | None:
    """"JPEG", "PNG", ... when the file starts like a still image, whatever its name says."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO or device would block the open; open_video rejects it by name
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for sig, kind in IMAGE_SIGNATURES if head.startswith(sig)), None)


def stated_frames(path: str | Path, threads: int | None = None) -> int:
    """The frame count the container states (0 when it states none or nonsense); never trusted as
    the real count, only compared with the decoded one."""
    with open_video(path, threads=threads) as cap:
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(n) if math.isfinite(n) and 0 < n < 1e9 else 0


def probe_frames(path: str | Path) -> ProbeResult:
    """Probe a frame folder (data_manifests/frames.py): ``info.frames`` consecutive frames decode;
    a frame file that is there but does not decode gives ``reason="bad_frames"``."""
    try:
        found = probe_frame_folder(path)
    except VideoDecodeError as exc:
        return ProbeResult(None, str(exc))
    if found.error is not None:
        return ProbeResult(found.info, found.error, reason="bad_frames")
    # where the frames end (a list that states more frames names this file as missing)
    return ProbeResult(found.info, f"{found.end}: frame {found.info.frames} is missing (no such file)")


def probe_one(path: str | Path, threads: int | None = None) -> ProbeResult:
    """Probe one video (or frame folder), turning decode failures into a ProbeResult instead of an exception."""
    if is_frame_source(path):
        return probe_frames(path)
    kind = image_kind(path)
    if kind is not None:
        return ProbeResult(None, f"{path}: a still {kind} image, not a video", reason="not_a_video")
    try:
        info = probe_video(path, threads=threads)
        stated = stated_frames(path, threads) if info.frames else 0
    except VideoDecodeError as exc:
        return ProbeResult(None, str(exc))
    except cv2.error as exc:
        return ProbeResult(None, f"{path}: OpenCV error: {str(exc).strip()}")
    if stated and info.frames < TRUNCATED_FRACTION * stated and stated - info.frames >= TRUNCATED_MIN_GAP:
        return ProbeResult(info, f"only {info.frames} of the {stated} frames its container lists decode "
                                 f"(damaged or truncated)", reason="truncated")
    return ProbeResult(info)


def _task(i: int, path: str, threads: int | None) -> tuple[int, ProbeResult]:
    return i, probe_one(path, threads)


def probe_videos(paths: Sequence[str | Path], *, workers: int = 2, progress: bool = True,
                 desc: str = "probe", threads: int | None = None) -> list[ProbeResult]:
    """ProbeResults in the order of ``paths``. ``workers`` <= 1 probes in this process, more uses that
    many joblib processes. ``threads``: FFmpeg threads per video; default FFmpeg's own choice in
    this process and 1 in worker processes."""
    results: list[ProbeResult | None] = [None] * len(paths)
    with Progress(len(paths), desc, "video", enabled=progress) as bar:
        if workers <= 1 or len(paths) <= 1:
            for i, p in enumerate(paths):
                results[i] = probe_one(p, threads)
                bar.update(1)
        else:
            from joblib import Parallel, delayed

            run = Parallel(n_jobs=workers, return_as="generator_unordered")
            per_worker = 1 if threads is None else threads
            for i, res in run(delayed(_task)(i, str(p), per_worker) for i, p in enumerate(paths)):
                results[i] = res
                bar.update(1)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
