"""Build a Manifest from a dataset's official annotations and its video tree.

One pass: parse the annotations (formats/), find every listed video on disk (one walk of the
root), refuse to go on when many are missing (almost always a wrong root), probe each present
video once in parallel (frames counted by decoding), and sort videos into usable entries and
rejected records. A bad video never stops the run; it is rejected with its reason.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Sequence

from data_manifests.formats import folder, hmdb51, kinetics, rawframes, ucf101
from data_manifests.formats.common import FileIndex, Listing
from data_manifests.manifest import REJECT_REASONS, SPLITS, Manifest, VideoEntry
from data_manifests.probe import ProbeResult, probe_videos
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

FORMATS: dict[str, ModuleType] = {"ucf101": ucf101, "hmdb51": hmdb51, "kinetics400": kinetics, "folder": folder,
                                  "rawframes": rawframes}
ALIASES = {"kinetics": "kinetics400", "k400": "kinetics400", "ucf": "ucf101", "hmdb": "hmdb51"}
Annotations = str | os.PathLike | Sequence[str | os.PathLike] | None


_ALWAYS_SHOWN = ("missing", "undecodable", "zero_frames", "too_short")  # others: only when they occur
_PARSE_ERRORS = (ValueError, KeyError, OSError, UnicodeDecodeError)
_HMDB51_SPLIT_FILE = re.compile(r"^(.+)_test_split[123]\.txt$")


def _annotation_error(kind: str, exc: BaseException) -> DataError:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return DataError(text if text.startswith(kind) or "/" in text.split(":")[0] else f"{kind}: {text}")


def _kind(kind: str) -> str:
    k = ALIASES.get(kind.lower(), kind.lower())
    if k not in FORMATS:
        raise DataError(f"unknown dataset kind {kind!r}; choose one of {', '.join(FORMATS)}")
    return k


def _paths(annotations: Annotations) -> list[Path]:
    if annotations is None:
        return []
    if isinstance(annotations, (str, os.PathLike)):
        return [Path(annotations)]
    return [Path(a) for a in annotations]


def annotation_files(kind: str, annotations: Annotations, split: int = 1) -> list[Path]:
    """The exact annotation files whose content defines the manifest (for the stage fingerprint)."""
    k = _kind(kind)
    try:
        return FORMATS[k].annotation_files(_paths(annotations), split)
    except _PARSE_ERRORS as exc:
        raise _annotation_error(k, exc) from exc


def list_video_files(root: str | os.PathLike) -> list[Path]:
    """Every video file under ``root`` (any depth, sorted): their (relpath, size, mtime) define
    which videos a build can find."""
    root = Path(root)
    return [root / f for f in FileIndex(root).files]


def list_input_files(kind: str, root: str | os.PathLike) -> list[Path]:
    """The files whose (relpath, size, mtime) define what a build of ``kind`` can find: the video
    files, or for frame folders (rawframes) the image files."""
    if _kind(kind) == "rawframes":
        from data_manifests.frames import list_frame_files

        return list_frame_files(root)
    return list_video_files(root)


def _check_missing(kind: str, root: Path, listing: Listing, allow_missing: bool,
                   max_missing_fraction: float) -> None:
    missing = [item for item in listing.items if item.path is None]
    n = len(listing.items)
    if not missing or allow_missing or len(missing) <= max_missing_fraction * n:
        return
    example = missing[0]
    raise DataError(
        f"{kind}: {len(missing)} of {n} videos listed by the annotations ({100 * len(missing) / n:.1f}%, "
        f"more than {100 * max_missing_fraction:g}%) are not under the dataset root {root}; "
        f"e.g. {example.expected} (listed at {example.source}). Is --root right? It must be the folder "
        f"that holds the videos. To build from the videos that are there, pass --allow-missing "
        f"(allow_missing=True).")


def _check_hmdb51_classes(annotations: list[Path], split: int, listing: Listing) -> None:
    """HMDB51 has one split file per class: a deleted file silently drops the class and shifts every
    later label. A class that the other splits' files list without this split's file is an error
    naming the missing file. (A class folder under the root without any split file is allowed: a
    subset of the split files is a legitimate smaller dataset.)"""
    folder = annotations[0]
    others = {m.group(1) for p in folder.iterdir() if (m := _HMDB51_SPLIT_FILE.match(p.name)) and p.is_file()}
    lost = sorted(others - set(listing.classes))
    if lost:
        raise DataError(
            f"hmdb51: {folder / (lost[0] + f'_test_split{split}.txt')} is missing ({len(lost)} class(es), e.g. "
            f"{lost[0]!r}, have files for other splits but not split {split}); without it the class is dropped "
            f"and every later label shifts. Restore the official split files")


def _rejection(res: ProbeResult, min_frames: int, path: Path) -> tuple[str | None, str]:
    """(reject reason, detail) of one probed video, (None, "") when it is usable.

    A video whose container lists far more frames than decode is kept with the frames that do
    decode (they are the video's first frames, exact), but a warning names it.
    """
    info = res.info
    if res.reason == "truncated":
        log.warning("%s: %s; kept with its %d decodable frames", path, res.error, info.frames if info else 0)
    elif res.reason is not None:
        return res.reason, res.error or ""
    if info is None:
        return "undecodable", res.error or ""
    if info.frames == 0:
        return "zero_frames", "opens, but no frame decodes"
    if info.frames < min_frames:
        return "too_short", f"{info.frames} decodable frames < min_frames={min_frames}"
    return None, ""


def _listed_count_rejection(res: ProbeResult, listed: int, min_frames: int) -> tuple[str | None, str, int]:
    """(reject reason, detail, frames to record) of a frame folder whose list states ``listed`` frames:
    all of them must be there and decode; frames beyond them are not used."""
    info = res.info
    if info is None:
        return "missing", res.error or "", 0
    if info.frames < listed:
        why = res.error or f"frame {info.frames} is missing"
        return "bad_frames", f"{why}; the list says {listed} frames, the first {info.frames} are usable", 0
    if listed == 0:
        return "zero_frames", "the list says 0 frames", 0
    if listed < min_frames:
        return "too_short", f"{listed} frames < min_frames={min_frames}", 0
    return None, "", listed


def build_manifest(kind: str, root: str | os.PathLike, annotations: Annotations = None, split: int = 1, *,
                   min_frames: int = 0, allow_missing: bool = False, workers: int = 2,
                   progress: bool = True, classes: Sequence[str] | None = None,
                   max_missing_fraction: float = 0.01,
                   format_options: dict | None = None) -> tuple[Manifest, list[dict]]:
    """(manifest of usable videos, rejected records) for dataset ``kind`` under ``root``.

    ``annotations``: ucf101/hmdb51 the folder of official split files; kinetics400 one or more
    CSVs (or a folder of them, optionally with a .txt class list); folder: none. ``split`` picks
    the official split (1-3) for ucf101/hmdb51. Rejected records are
    ``{"id", "path", "reason", "detail"}`` with reason in missing|undecodable|zero_frames|too_short.
    Raises DataError when more than ``max_missing_fraction`` of the listed videos are not
    found, unless ``allow_missing``. rawframes: ``annotations`` are list files, ``classes`` the class
    names, ``format_options`` its filename_tmpl / start_index / fps (formats/rawframes.py); a folder
    whose listed frames are not all there and decodable is rejected as "bad_frames".
    """
    k = _kind(kind)
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise DataError(f"{k}: dataset root {root_path} is not a folder")
    if min_frames < 0:
        raise ValueError(f"min_frames must be >= 0, got {min_frames}")
    index = FileIndex(root_path)
    if index.unlisted:  # an unreadable sub-folder costs its own videos, not the whole manifest
        log.warning("%s: %d folder(s) under %s could not be read; their videos are not indexed (first: %s)",
                    k, len(index.unlisted), root_path, index.unlisted[0])
    try:
        listing = FORMATS[k].parse(_paths(annotations), split, index, classes, **(format_options or {}))
    except _PARSE_ERRORS as exc:
        raise _annotation_error(k, exc) from exc
    if not listing.items:
        named = ", ".join(str(f) for f in getattr(listing, "sources", [])) or "the annotations"
        raise DataError(f"{k}: {named} list(s) no videos (empty, or a header only); "
                        f"name the official annotation files")
    if k == "hmdb51":
        _check_hmdb51_classes(_paths(annotations), split, listing)
    _check_missing(k, root_path, listing, allow_missing, max_missing_fraction)

    present = [item for item in listing.items if item.path is not None]
    results = iter(probe_videos([root_path / item.path for item in present], workers=workers,
                                progress=progress, desc=f"probe {k}"))
    entries: list[VideoEntry] = []
    rejected: list[dict] = []
    for item in listing.items:
        if item.path is None:
            rejected.append({"id": item.id, "path": item.expected, "reason": "missing",
                             "detail": f"listed at {item.source}; not found under {root_path}"})
            continue
        res = next(results)
        info = res.info
        if item.frames is not None:
            reason, detail, frames = _listed_count_rejection(res, item.frames, min_frames)
        else:
            reason, detail = _rejection(res, min_frames, root_path / item.path)
            frames = info.frames if info is not None else 0
        if reason is not None:
            rejected.append({"id": item.id, "path": item.path, "reason": reason, "detail": detail})
            continue
        assert info is not None
        entries.append(VideoEntry(id=item.id, path=item.path, label=item.label, split=item.split,
                                  frames=frames, fps=info.fps or item.fps, width=info.width, height=info.height))
    if not entries:
        reasons = Counter(r["reason"] for r in rejected)
        raise DataError(f"{k}: no usable video under {root_path} ({len(listing.items)} listed; rejected: "
                         f"{dict(reasons) or 'none'})")
    return Manifest(dataset=k, root=root_path, classes=list(listing.classes), entries=entries), rejected


def summary(manifest: Manifest, rejected: Sequence[dict]) -> list[str]:
    """Printable lines: usable videos per split and rejected videos per reason."""
    per_split = manifest.counts()
    reasons = Counter(r["reason"] for r in rejected)
    lines = [f"{manifest.dataset}: {len(manifest.entries)} usable videos, {len(manifest.classes)} classes, "
             f"root {manifest.root}",
             "  usable:   " + ", ".join(f"{s} {per_split[s]}" for s in SPLITS),
             f"  rejected: {len(rejected)} (" + ", ".join(f"{r} {reasons.get(r, 0)}" for r in REJECT_REASONS
                                                          if r in _ALWAYS_SHOWN or reasons.get(r)) + ")"]
    for r in REJECT_REASONS:
        examples = [x for x in rejected if x["reason"] == r][:3]
        for x in examples:
            lines.append(f"    {r}: {x['path']}" + (f" ({x['detail']})" if r != "missing" and x.get("detail") else ""))
    return lines
