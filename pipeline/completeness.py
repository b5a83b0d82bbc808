"""What a stage's output must satisfy before it may be marked done, and the video part of ``--verify``.

A build function returning without an exception is not proof of a complete output: a copy can be
left empty by a full disk, a crash can leave a zero-byte file where a resumed build sees "exists".
So when a stage is marked done (``stage.json`` written) its folder is checked as a property of the
files, not of the attempts: every data file (video, HDF5, checkpoint) is non-empty, every video
opens and decodes its first frame, and every video a manifest in the folder lists is there.

Videos also get a recorded frame count (the container's, cheap to read) that ``status --verify``
compares with a full decode (:func:`data_manifests.video.count_frames`), beside the sha256 of every byte.
"""
from __future__ import annotations

import errno
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import cv2

from data_manifests.video import VIDEO_EXTENSIONS, VideoDecodeError, count_frames, open_video
from pipeline.core.errors import StageError
from pipeline.core.files import atomic_write_text

# Files that hold data: an empty one is always a failed write (text listings such as failed.jsonl
# may legitimately be empty).
DATA_SUFFIXES = frozenset({".h5", ".hdf5", ".pt", ".pth", ".npz", ".npy"}) | VIDEO_EXTENSIONS
_STAGE_FILE = "stage.json"


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def container_frames(path: Path) -> int:
    """The frame count the container states; raises VideoDecodeError when the first frame does not
    decode (an empty, truncated or foreign file)."""
    with open_video(path, threads=1) as cap:
        if not cap.grab():
            raise VideoDecodeError(path, "its first frame does not decode")
        return max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))


def _video_problem(folder: Path, rel: str) -> tuple[str, int | None, str | None]:
    path = folder / rel
    try:
        if path.stat().st_size == 0:
            return rel, None, "empty (0 bytes)"
        return rel, container_frames(path), None
    except (OSError, VideoDecodeError, cv2.error) as exc:
        return rel, None, f"not a decodable video ({str(exc).strip().splitlines()[0]})"


def _listed_videos(folder: Path) -> list[str]:
    """Videos that a manifest inside ``folder`` lists under a root inside ``folder`` (the transcode
    stage's copies), relative to ``folder``."""
    meta, listing = folder / "meta.json", folder / "manifest.jsonl"
    if not (meta.is_file() and listing.is_file()):
        return []
    try:
        root = Path(str(json.loads(meta.read_text(encoding="utf-8")).get("root", "")))
        rows = [json.loads(line) for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    if root.is_absolute() or ".." in root.parts:
        return []
    return [(root / str(r.get("path", ""))).as_posix() for r in rows if not Path(str(r.get("path", ""))).is_absolute()]


def check_outputs(folder: Path, *, workers: int | None = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """``(problems, frames)``: ``[(relpath, why)]`` for every output that makes ``folder`` incomplete,
    and the container frame count of each video (recorded in stage.json for ``--verify``)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != _STAGE_FILE)
    present = set(files)
    problems = [(rel, "listed in the folder's manifest but missing") for rel in _listed_videos(folder)
                if rel not in present]
    videos = [rel for rel in files if is_video(Path(rel)) and not Path(rel).name.startswith(".")]
    for rel in files:
        if not is_video(Path(rel)) and Path(rel).suffix.lower() in DATA_SUFFIXES and \
                (folder / rel).stat().st_size == 0:
            problems.append((rel, "empty (0 bytes)"))
    frames: dict[str, int] = {}
    # OpenCV releases the GIL while it decodes: threads make 240k opens a matter of minutes
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for rel, n, why in pool.map(lambda r: _video_problem(folder, r), videos):
            if why:
                problems.append((rel, why))
            elif n is not None:
                frames[rel] = n
    return sorted(problems), frames


def verify_video(path: Path, entry: dict[str, Any]) -> str | None:
    """``--verify`` for one video: decode every frame and compare with the count recorded at build time."""
    try:
        n = count_frames(path, threads=1)  # every frame decoded: what a reader gets
    except (OSError, VideoDecodeError, cv2.error) as exc:
        return f"not a decodable video ({str(exc).strip().splitlines()[0]})"
    want = entry.get("frames")
    if want and n != want:
        return f"decodes {n} frames, {want} when built"
    return None


def verify_videos(folder: Path, entries: dict[str, dict[str, Any]],
                  workers: int | None = None) -> list[tuple[str, str]]:
    """:func:`verify_video` over ``{relpath: outputs entry}``, in threads (OpenCV decodes without the GIL)."""
    def one(rel: str) -> tuple[str, str | None]:
        return rel, verify_video(folder / rel, entries[rel])

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return [(rel, why) for rel, why in pool.map(one, sorted(entries)) if why]


def outputs_or_fail(key: str, folder: Path,
                    record: Callable[[Path], dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The ``outputs`` record of a stage about to be marked done (``record(folder)`` plus each video's
    frame count), or a StageError: the stage is not marked done. The bad files are removed first, so
    that the stage's own resume logic (which skips what exists) rebuilds them on the next run."""
    problems, frames = check_outputs(folder)
    if problems:
        for rel, _ in problems:
            (folder / rel).unlink(missing_ok=True)
        rel, why = problems[0]
        raise StageError(
            f"{key}: not marked done: {len(problems)} output file(s) incomplete (first: {folder / rel}: {why}); "
            f"they were removed: rerun the same command to rebuild them")
    outputs = record(folder)
    for rel, n in frames.items():
        if rel in outputs:
            outputs[rel]["frames"] = n
    return outputs


# ----------------------------------------------------------------------------------------------
# Input videos: a content hash where (size, mtime) is not enough
# ----------------------------------------------------------------------------------------------

SOURCES_FILE = "sources.jsonl"


def _sha256(path: Path) -> str:
    from pipeline.core.fingerprint import sha256_file

    return sha256_file(path)


def _source_files(path: Path) -> list[Path]:
    """The files of one listed source: the video itself, or a frame folder's consecutive frame files
    (a frame source, data_manifests/frames.py); FileNotFoundError when a frame folder has none."""
    from data_manifests.frames import parse_source

    src = parse_source(path)
    if src is None:
        return [path]
    files: list[Path] = []
    while src.file(len(files)).is_file():
        files.append(src.file(len(files)))
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no frame files", str(path))
    return files


def _source_row(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a listed source; a frame folder's sha256 covers each frame file's name and bytes."""
    files = _source_files(path)
    if len(files) == 1 and files[0] == path:
        return path.stat().st_size, _sha256(path)
    from pipeline.core.fingerprint import sha256_json

    return sum(f.stat().st_size for f in files), sha256_json([[f.name, _sha256(f)] for f in files])


def write_sources(folder: Path, root: Path, relpaths: list[str], *, workers: int = 4) -> None:
    """``sources.jsonl`` in a manifest folder: (path, size, sha256) of every video (or frame folder) it lists, so that
    ``--verify`` notices a video replaced by another of the same name, size and mtime. hashlib
    releases the GIL on large blocks: threads overlap reading and hashing."""
    def row(rel: str) -> dict[str, Any]:
        size, digest = _source_row(root / rel)
        return {"path": rel, "size": size, "sha256": digest}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(row, relpaths))
    atomic_write_text(folder / SOURCES_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def verify_sources(folder: Path) -> list[tuple[str, str]]:
    """``[(source, why)]`` for each video of ``sources.jsonl`` whose bytes changed (or that is gone)."""
    listing = folder / SOURCES_FILE
    if not listing.is_file():
        return []
    from data_manifests.manifest import load_manifest

    root = load_manifest(folder).root
    problems = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        path = root / rec["path"]
        try:
            digest = _source_row(path)[1]
        except OSError as exc:
            problems.append((f"source {path}", f"unreadable ({exc.strerror})"))
            continue
        if digest != rec["sha256"]:
            problems.append((f"source {path}", "content changed since the manifest was built (sha256 differs, "
                                               "whatever its size and mtime); the manifest is rebuilt"))
    return problems
