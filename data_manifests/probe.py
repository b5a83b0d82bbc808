"""Probe many videos once, in parallel: decodable frame count, fps and size, or why not.

Decoding is the only trustworthy frame count, and it costs a full decode per video, so it runs
in joblib worker processes. Each worker decodes with ONE FFmpeg thread (a per-capture setting;
probing uses no OpenCV-pool function, so OpenCV's process-wide pool is left alone), so
``workers`` processes use ``workers`` cores instead of ``workers × cores`` threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2

from data_manifests.video import VideoDecodeError, VideoInfo, probe_video
from pipeline.progress import Progress


@dataclass(frozen=True)
class ProbeResult:
    """``info`` when the video opened (``info.frames`` may be 0), else ``error`` says why not."""

    info: VideoInfo | None
    error: str | None = None


def probe_one(path: str | Path, threads: int | None = None) -> ProbeResult:
    """Probe one video, turning decode failures into a ProbeResult instead of an exception."""
    try:
        return ProbeResult(probe_video(path, threads=threads))
    except VideoDecodeError as exc:
        return ProbeResult(None, str(exc))
    except cv2.error as exc:
        return ProbeResult(None, f"{path}: OpenCV error: {str(exc).strip()}")


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
