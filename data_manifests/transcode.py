"""Small, seek-friendly copies of a dataset's videos that keep every frame index (the ``transcode`` stage).

Decoding is the pretraining loader's wall: one item decodes three windows of a 340×256 Kinetics
clip forward from frame 0. The student never needs more than ~128 pixels on the short side (it
trains on 112² crops), so a one-time copy at short side ``S`` in an intra-only format (MJPEG in
AVI: every frame a keyframe, so :func:`data_manifests.video.read_frames` jumps straight to a
window) makes every later epoch cheaper.

The contract is the teacher cache's: frame ``i`` of the copy is frame ``i`` of the source. So the
copy is made by decoding every frame of the source in order with the project's reader (never by
timestamps) and writing exactly that many frames; the written file is decoded again and its count
checked before it is renamed into place. Chosen by measurement (bench/loader.py ``--real``,
bench/results/loader.json): FFmpeg's MJPEG through ``cv2.VideoWriter`` needs no new dependency,
and the intra-only property is decidable from the file alone (its FOURCC), which a GOP codec's
keyframe spacing is not. OpenCV's MPEG-4 part 2 writer makes files half the size, as fast to read
if seeked, but it ignores the requested keyframe interval (a fixed GOP of 12), so the reader
cannot tell such a file from a one-keyframe source and decodes it forward (about 1.6× the MJPEG
read time per item on the Kinetics clips); it stays available (``codec = "mp4v"``) for users short
of disk.

Output, in the stage folder: ``videos/<source path>.avi`` (one per video, written to a temporary
name, verified, renamed: a non-empty file means done), ``failed/<index>.json`` per video that
could not be copied (unreadable, or changed since the manifest), and, once every video is copied,
a manifest of the copies (``manifest.jsonl``/``meta.json``, root ``videos`` relative to the stage
folder so a copied work directory reads its own copies; same ids, order, labels, splits and frame
counts, so the clip plan and the teacher cache keys are unchanged) plus ``transcode.json``.
A failed video is not "done": the stage fails (one line naming the first failure and
``failed.jsonl``), is never marked done, and the next run retries every failed video. A full
disk stops the stage at once, naming the copy being written.
Work splits by video like the teacher cache: job ``i`` of ``n`` owns videos ``i, i+n, …`` and
rank ``r`` of ``W`` every ``W``-th of those; a rerun skips finished videos.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import cv2
import numpy as np

from data_manifests.manifest import Manifest, VideoEntry, load_manifest, load_rejected, write_manifest
from data_manifests.frames import decode_frame, is_frame_source, iter_frames, parse_source, source_bytes
from data_manifests.video import VideoDecodeError, count_frames, open_video
from pipeline.core.distributed import DistInfo, job_share
from pipeline.core.errors import DiskFullError, StageError, disk_full_error, is_disk_full
from pipeline.core.files import atomic_write_text
from pipeline.core.progress import Progress

log = logging.getLogger(__name__)

# codec name (config transcode.codec) -> (FOURCC, container suffix). mjpeg: every frame a keyframe, read
# by seeking; mp4v (MPEG-4 part 2, GOP 12): about half the bytes, read forward like any GOP source.
FORMATS = {"mjpeg": ("MJPG", ".avi"), "mp4v": ("mp4v", ".avi")}
VIDEOS_DIR = "videos"
FAILED_DIR = "failed"
FAILED_FILE = "failed.jsonl"
SUMMARY_FILE = "transcode.json"
PARTIAL_MARK = ".partial"


class TranscodeError(RuntimeError):
    """One video could not be copied frame-exactly; names the file and what went wrong."""


@dataclass(frozen=True)
class TranscodeSpec:
    """What a copy looks like: short side in pixels (never upscaled) and the codec."""

    short_side: int = 128
    codec: str = "mjpeg"

    def __post_init__(self) -> None:
        if self.codec not in FORMATS:
            raise ValueError(f"transcode.codec: {self.codec!r} is not one of {', '.join(FORMATS)}")
        if self.short_side < 16:
            raise ValueError(f"transcode.short_side: {self.short_side} is below 16 pixels")


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) of the copy: the short side scaled to ``short_side`` (never up), both even
    (4:2:0 chroma needs even sizes), the aspect ratio kept to within one pixel."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def copy_relpath(entry: VideoEntry, codec: str) -> str:
    """Where the copy of ``entry`` lives under ``videos/``: its source path plus the container
    suffix (unique because source paths are); sources outside the root get a folder of their own."""
    path = PurePosixPath(entry.path.replace("\\", "/"))
    if is_frame_source(path):  # a frame folder: its copy is named after the folder
        path = path.parent
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    if not parts or ".." in parts or PurePosixPath(entry.path).is_absolute():
        parts = ["_by_id", entry.id.replace("/", "_")]
    return "/".join(parts) + FORMATS[codec][1]


def _partial_path(dst: Path) -> Path:
    # The suffix must stay the container's: FFmpeg picks the muxer from it.
    return dst.with_name(f".{dst.stem}{PARTIAL_MARK}{dst.suffix}")


def _out_of_space(path: Path) -> bool:
    """True when ``path``'s filesystem is (nearly) full or the file reached ``ulimit -f``: FFmpeg's
    writer fails silently there, so a failed copy is checked for this before it is called corrupt."""
    import resource

    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return True
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return limit != resource.RLIM_INFINITY and path.is_file() and path.stat().st_size >= limit - (1 << 15)
    except OSError:
        return False


def _open_writer(tmp: Path, frame: np.ndarray, spec: TranscodeSpec,
                 rate: float) -> tuple[cv2.VideoWriter, tuple[int, int]]:
    """The copy's writer, sized from the first frame (``output_size``: short side, aspect kept)."""
    size = output_size(frame.shape[1], frame.shape[0], spec.short_side)
    writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*FORMATS[spec.codec][0]), rate, size)
    if not writer.isOpened():
        writer.release()
        raise TranscodeError(f"{tmp}: OpenCV/FFmpeg cannot write {spec.codec} to it")
    return writer, size


def _rate_of(src: Path, threads: int | None) -> float:
    """The source's frame rate for the copy's header (25 when it states none: frames are read by index)."""
    rate = 0.0
    if not is_frame_source(src):
        with open_video(src, threads=threads) as cap:
            rate = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    return rate if 0 < rate <= 1000 else 25.0


def _source_frames(src: Path, threads: int | None, expected: int | None) -> Iterator[np.ndarray]:
    """Every frame of ``src`` in order (BGR): a video's decodable frames, or a frame folder's listed
    ``expected`` frames (all of them; later files are not part of the video)."""
    source = parse_source(src)
    if source is not None:
        if expected is None:
            yield from iter_frames(src)
        else:
            for i in range(expected):
                yield decode_frame(source.file(i), i)
        return
    with open_video(src, threads=threads) as cap:
        n = 0
        while cap.grab():
            ok, frame = cap.retrieve()
            if not ok or frame is None or frame.ndim != 3:
                raise TranscodeError(f"{src}: frame {n} decoded but could not be retrieved")
            yield frame
            n += 1


def transcode_video(src: str | Path, dst: str | Path, spec: TranscodeSpec, *, expected_frames: int | None = None,
                    fps: float = 0.0, threads: int | None = 1) -> dict[str, Any]:
    """Copy every decodable frame of ``src``, in order, resized with INTER_AREA, into ``dst`` (atomic).

    Raises TranscodeError (or VideoDecodeError) when the source does not decode ``expected_frames``
    frames or the written file does not decode back to the same count; ``dst`` is then untouched.
    """
    src, dst = Path(src), Path(dst)
    tmp = _partial_path(dst)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer: cv2.VideoWriter | None = None
    n, size = 0, (0, 0)
    try:
        rate = fps if 0 < fps <= 1000 else 0.0
        for frame in _source_frames(src, threads, expected_frames):
            if rate <= 0:
                rate = _rate_of(src, threads)
            if writer is None:
                writer, size = _open_writer(tmp, frame, spec, rate)
            if (frame.shape[1], frame.shape[0]) != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            writer.write(np.ascontiguousarray(frame))
            n += 1
        if writer is None:
            raise TranscodeError(f"{src}: no frame decodes")
        writer.release()
        writer = None
        if expected_frames is not None and n != expected_frames:
            raise TranscodeError(f"{src}: {n} frames decode, the manifest says {expected_frames} (changed or "
                                 f"damaged since the manifest was built? rebuild the manifest)")
        back = count_frames(tmp, threads=1)
        if back != n:
            raise TranscodeError(f"{tmp}: the copy decodes {back} frames, {n} were written")
        nbytes = tmp.stat().st_size
        os.replace(tmp, dst)
    except (TranscodeError, VideoDecodeError, cv2.error, OSError) as exc:
        if isinstance(exc, DiskFullError):
            raise
        if is_disk_full(exc) or _out_of_space(tmp):
            raise disk_full_error(dst, exc, "writing this transcoded copy") from exc
        raise
    finally:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
    return {"frames": n, "width": size[0], "height": size[1], "bytes": nbytes,
            "source_bytes": source_bytes(src) if is_frame_source(src) else src.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 4)}


def assigned_videos(total: int, dist: DistInfo, shard_index: int | None = None,
                    num_shards: int | None = None) -> list[int]:
    """The manifest indices this process copies: the job's share (``i, i+n, …``), then every
    ``world_size``-th of those from ``rank`` (the teacher cache's split, by video)."""
    return job_share(total, dist, shard_index, num_shards)


def _failed_path(out_dir: Path, index: int) -> Path:
    return out_dir / FAILED_DIR / f"{index:08d}.json"


def _has_copy(out_dir: Path, entry: VideoEntry, codec: str) -> bool:
    """A finished copy: present and non-empty (a zero-byte file left by a crash or a full disk is not)."""
    try:
        return (out_dir / VIDEOS_DIR / copy_relpath(entry, codec)).stat().st_size > 0
    except OSError:
        return False


def _is_finished(out_dir: Path, index: int, entry: VideoEntry, codec: str) -> bool:
    return _has_copy(out_dir, entry, codec) or _failed_path(out_dir, index).is_file()


def _clear_failures(out_dir: Path, mine: list[int]) -> int:
    """Forget this process's earlier failures so that they are retried (space freed, permission fixed)."""
    n = 0
    for i in mine:
        path = _failed_path(out_dir, i)
        if path.is_file():
            path.unlink(missing_ok=True)
            n += 1
    return n


def _copy_task(index: int, src: str, dst: str, spec: TranscodeSpec, frames: int, fps: float, entry_id: str,
               rel: str, out_dir: str, in_worker: bool) -> dict[str, Any]:
    """Copy one video; any failure is written as ``failed/<index>.json`` and returned, never raised."""
    if in_worker:
        cv2.setNumThreads(1)  # a fresh joblib (loky) process: the workers are the parallelism
    try:
        rec = transcode_video(src, dst, spec, expected_frames=frames, fps=fps, threads=1)
        return {"index": index, "ok": True, **rec}
    except DiskFullError:
        raise  # every later copy would fail too: stop now, naming the file
    except (TranscodeError, VideoDecodeError, cv2.error, OSError) as exc:
        err = {"index": index, "id": entry_id, "path": rel, "error": f"{type(exc).__name__}: {str(exc).strip()}"}
        atomic_write_text(_failed_path(Path(out_dir), index), json.dumps(err, sort_keys=True) + "\n")
        return {"index": index, "ok": False, "error": err["error"]}


def _run_copies(manifest: Manifest, todo: list[int], out_dir: Path, spec: TranscodeSpec, workers: int,
                progress: bool) -> list[dict[str, Any]]:
    """Copy the ``todo`` videos (``workers`` joblib processes, or this one when <= 1)."""
    def args(i: int, in_worker: bool) -> tuple:
        e = manifest.entries[i]
        dst = out_dir / VIDEOS_DIR / copy_relpath(e, spec.codec)
        return (i, str(manifest.abspath(e)), str(dst), spec, e.frames, e.fps, e.id, e.path, str(out_dir), in_worker)

    done: list[dict[str, Any]] = []
    failed = 0
    with Progress(len(todo), "transcode", "video", enabled=progress) as bar:
        if workers <= 1 or len(todo) <= 1:
            results = (_copy_task(*args(i, False)) for i in todo)
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=workers, return_as="generator_unordered")(
                delayed(_copy_task)(*args(i, True)) for i in todo)
        for rec in results:
            done.append(rec)
            failed += not rec["ok"]
            bar.update(1, postfix=f"failed {failed}")
    return done


def failure_records(out_dir: Path, total: int) -> list[dict]:
    """The ``failed/<index>.json`` records present, in manifest order."""
    return [json.loads(_failed_path(out_dir, i).read_text(encoding="utf-8")) for i in range(total)
            if _failed_path(out_dir, i).is_file()]


def copies_manifest(manifest: Manifest, out_dir: Path, spec: TranscodeSpec) -> Manifest:
    """The manifest of the copies, rooted at ``out_dir/videos`` (every video copied)."""
    entries = []
    for e in manifest.entries:
        w, h = output_size(e.width, e.height, spec.short_side)
        entries.append(replace(e, path=copy_relpath(e, spec.codec), width=w, height=h))
    return Manifest(manifest.dataset, Path(out_dir) / VIDEOS_DIR, list(manifest.classes), entries)


def _fail_incomplete(out_dir: Path, failures: list[dict], total: int, is_main: bool) -> None:
    """Some videos failed: write failed.jsonl (for the user) and refuse to finish the stage."""
    listing = out_dir / FAILED_FILE
    if is_main:
        atomic_write_text(listing, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    first = failures[0]
    raise StageError(
        f"transcode: {len(failures)} of {total} videos could not be copied, so the stage is not done "
        f"(first: {first['path']}: {first['error']}; all in {listing}). Fix the cause and rerun the same "
        f"command: it retries only those; a source that stays unreadable must leave the manifest "
        f"(rebuild it with `pipeline manifest --force`)")


def _finish(manifest_dir: Path, manifest: Manifest, out_dir: Path, spec: TranscodeSpec,
            summary: dict[str, Any]) -> dict[str, Any]:
    """Every video is copied: write the copies' manifest (root relative: relocatable) and transcode.json."""
    copies = copies_manifest(manifest, out_dir, spec)
    write_manifest(out_dir, copies, load_rejected(manifest_dir), relative_to=out_dir)
    atomic_write_text(out_dir / FAILED_FILE, "")
    for tmp in (out_dir / VIDEOS_DIR).rglob(f"*{PARTIAL_MARK}*"):
        tmp.unlink(missing_ok=True)
    ok = list(manifest.entries)
    copy_bytes = sum((out_dir / VIDEOS_DIR / c.path).stat().st_size for c in copies.entries)
    src_bytes = sum(source_bytes(p) if is_frame_source(p) else p.stat().st_size
                    for p in (manifest.abspath(e) for e in ok) if is_frame_source(p) or p.is_file())
    hours = sum(e.frames / e.fps for e in ok if e.fps > 0) / 3600
    summary.update(complete=True, failed=0, copied=len(ok), bytes=copy_bytes, source_bytes=src_bytes,
                   bytes_per_video=round(copy_bytes / max(1, len(ok))),
                   bytes_per_hour=round(copy_bytes / hours) if hours > 0 else None,
                   size_ratio_to_source=round(copy_bytes / src_bytes, 3) if src_bytes else None)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps({"spec": asdict(spec), **summary}, indent=1,
                                                         sort_keys=True) + "\n")
    return summary


def build_transcode(manifest_dir: Path, out_dir: Path, spec: TranscodeSpec, *, dist: DistInfo,
                    final_dir: Path | None = None, workers: int = 1, shard_index: int | None = None,
                    num_shards: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Copy this process's share of the manifest's videos into ``out_dir``; returns a JSON-able summary.

    ``final_dir`` (where ``out_dir`` will be renamed to) is accepted for compatibility; the copies'
    root is recorded relative to the stage folder. ``complete`` is False while other jobs' videos
    are missing; the call that finds every video copied (on rank 0; the caller synchronises ranks)
    writes the manifest. Raises a StageError (every rank) when some videos failed.
    """
    from pipeline.core import distributed

    out_dir = Path(out_dir)
    manifest = load_manifest(manifest_dir)
    mine = assigned_videos(len(manifest.entries), dist, shard_index, num_shards)
    retried = _clear_failures(out_dir, mine)
    todo = [i for i in mine if not _is_finished(out_dir, i, manifest.entries[i], spec.codec)]
    log.info("transcode: %d videos; this process owns %d, %d to copy (%d earlier failures retried)",
             len(manifest.entries), len(mine), len(todo), retried)
    t0 = time.perf_counter()
    done = _run_copies(manifest, todo, out_dir, spec, workers, progress and dist.is_main)
    seconds = time.perf_counter() - t0
    gathered = distributed.all_gather_objects((len(done), sum(r.get("frames", 0) for r in done), seconds))
    distributed.barrier()
    copied_now = sum(g[0] for g in gathered)
    t_all = max(g[2] for g in gathered)
    summary: dict[str, Any] = {
        "videos": len(manifest.entries), "copied_now": copied_now, "frames_now": sum(g[1] for g in gathered),
        "seconds_now": round(t_all, 3), "videos_per_s": round(copied_now / t_all, 3) if t_all > 0 else 0.0,
        "short_side": spec.short_side, "codec": spec.codec,
    }
    missing = [i for i, e in enumerate(manifest.entries) if not _is_finished(out_dir, i, e, spec.codec)]
    if missing:
        log.info("transcode: %d of %d videos still missing (e.g. %s); run the remaining jobs, then transcode "
                 "once more to finish", len(missing), len(manifest.entries), manifest.entries[missing[0]].path)
        summary.update(complete=False, videos_missing=len(missing))
        return summary
    failures = failure_records(out_dir, len(manifest.entries))
    if failures:
        _fail_incomplete(out_dir, failures, len(manifest.entries), dist.is_main)
    if dist.is_main:
        summary = _finish(Path(manifest_dir), manifest, out_dir, spec, summary)
    return summary
