"""Frame-folder videos (MMAction2's "rawframes"): one numbered image file per frame.

A manifest entry of a frame folder names it by a *frame source*, a path whose last component is the
file-name template of the frames and the number of the first one:
``<folder>/<template>@<start>``, e.g. ``brush_hair/April_09/img_{:05}.jpg@1`` (frame 0 of the video is
``img_00001.jpg``, frame ``i`` is ``template.format(start + i)``). Every reader of videos takes such a
path where it takes a video file (``video.read_frames``, ``probe_video``, ``count_frames`` and the
transcode stage dispatch on it), so finetune, evaluate, linear probe, retrieval and transcode read frame
folders and video files alike, frame-exact: frame ``i`` is always the pixels of one file.

Frames are decoded with ``cv2.imdecode`` (BGR, like OpenCV's video decoder) and swapped to RGB with
numpy, as ``read_frames`` does for videos. A file that is missing, does not decode, or is a truncated
JPEG/PNG (no end marker: libjpeg would silently fill the missing rows with grey) is an error naming
the file and the frame index.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from data_manifests.video import VideoDecodeError, VideoInfo
from pipeline.core.errors import ConfigError, DataError

# <template>@<start>: the template holds exactly one replacement field ({}, {:05}, {:06d}, ...).
_SOURCE = re.compile(r"^(?P<template>[^/{}]*\{[^{}/]*\}[^/{}]*)@(?P<start>\d+)$")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# The marker a complete file ends with (trailing padding tolerated): a cut JPEG still "decodes".
_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}
_TAIL = 64


@dataclass(frozen=True)
class FrameSource:
    """A parsed frame source: the folder, the file-name template and the number of frame 0's file."""

    folder: Path
    template: str
    start: int

    def file(self, index: int) -> Path:
        """The file of frame ``index`` (0-based)."""
        return self.folder / self.template.format(self.start + index)

    def __str__(self) -> str:
        return str(self.folder / f"{self.template}@{self.start}")


def check_template(template: str, where: str = "filename template") -> str:
    """``template`` when it names one file per frame number, else a ConfigError saying why."""
    bad = None
    if "/" in template or "\\" in template:
        bad = "must be a file name, without folders"
    elif template.count("{") != 1 or template.count("}") != 1:
        bad = "must hold exactly one {} field for the frame number, e.g. 'img_{:05}.jpg'"
    else:
        try:
            names = {template.format(n) for n in (1, 2, 10)}
        except (ValueError, IndexError, KeyError) as exc:
            bad = f"does not format a frame number ({exc})"
        else:
            if len(names) != 3:
                bad = "gives the same file name for different frame numbers"
    if bad is not None:
        raise ConfigError(f"{where} {template!r}: {bad}")
    return template


def frame_source(folder: str, template: str, start: int) -> str:
    """The manifest path of a frame folder (POSIX, relative to the dataset root)."""
    check_template(template)
    if start < 0:
        raise ConfigError(f"{folder}: first frame number {start} is negative")
    return f"{folder.rstrip('/')}/{template}@{start}"


def parse_source(path: str | os.PathLike) -> FrameSource | None:
    """The FrameSource that ``path`` names, or None when it is an ordinary (video) file path."""
    p = Path(path)
    m = _SOURCE.match(p.name)
    if m is None:
        return None
    return FrameSource(p.parent, m.group("template"), int(m.group("start")))


def is_frame_source(path: str | os.PathLike) -> bool:
    return parse_source(path) is not None


def _source(path: str | os.PathLike) -> FrameSource:
    src = parse_source(path)
    if src is None:
        raise DataError(f"{path}: not a frame source (expected <folder>/<template>@<first number>)")
    return src


def decode_frame(file: Path, index: int) -> np.ndarray:
    """Frame ``index`` from ``file`` as BGR uint8 (H, W, 3); VideoDecodeError naming the file when it
    is missing, cut short or not an image."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise VideoDecodeError(file, f"frame {index} is missing (no such file)", index=index) from None
    except OSError as exc:
        raise VideoDecodeError(file, f"frame {index} cannot be read ({exc.strerror})", index=index) from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise VideoDecodeError(file, f"frame {index} does not decode as an image", index=index)
    marker = _END_MARKERS.get(file.suffix.lower())
    if marker is not None and marker not in data[-_TAIL:]:
        raise VideoDecodeError(file, f"frame {index} is cut short (no end-of-image marker)", index=index)
    return img


def read_frame_folder(path: str | os.PathLike, indices: Sequence[int], *, bgr: bool = False) -> np.ndarray:
    """Frames ``indices`` (any order, duplicates allowed) of a frame source as uint8 (N, H, W, 3),
    RGB unless ``bgr``: the same contract as :func:`data_manifests.video.read_frames`."""
    src = _source(path)
    idx = [int(i) for i in indices]
    if any(i < 0 for i in idx):
        raise ValueError(f"{path}: frame index {min(idx)} is negative")
    cache: dict[int, np.ndarray] = {}
    out: np.ndarray | None = None
    for pos, i in enumerate(idx):
        if i not in cache:
            frame = decode_frame(src.file(i), i)
            if out is not None and frame.shape != out.shape[1:]:
                raise VideoDecodeError(src.file(i), f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, earlier "
                                                    f"frames are {out.shape[2]}x{out.shape[1]}", index=i)
            cache[i] = frame if bgr else frame[..., ::-1]
        if out is None:
            out = np.empty((len(idx), *cache[i].shape), np.uint8)
        out[pos] = cache[i]
    if out is None:
        first = decode_frame(src.file(0), 0)
        return np.empty((0, *first.shape), np.uint8)
    return out


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Every frame of a frame source in order (BGR), up to the first missing file; a file that is
    there but does not decode raises."""
    src = _source(path)
    i = 0
    while src.file(i).is_file():
        yield decode_frame(src.file(i), i)
        i += 1


@dataclass(frozen=True)
class FolderProbe:
    """What probing a frame folder found: ``info.frames`` consecutive frames decode from the first;
    ``error`` says why the next one does not (None: its file simply is not there, the normal end)."""

    info: VideoInfo
    error: str | None = None
    end: Path | None = None  # the first file that is not there (where the frames end)


def probe_frame_folder(path: str | os.PathLike, *, fps: float = 0.0) -> FolderProbe:
    """Decode frames 0, 1, ... until the first file that is not there (the count) or does not decode
    (``error``). A size change between frames is an error too. Raises VideoDecodeError when the
    folder itself is not there."""
    src = _source(path)
    if not src.folder.is_dir():
        raise VideoDecodeError(src.folder, "frame folder does not exist")
    n, size = 0, (0, 0)
    error = None
    while src.file(n).is_file():
        try:
            frame = decode_frame(src.file(n), n)
        except VideoDecodeError as exc:
            error = str(exc)
            break
        if n and (frame.shape[1], frame.shape[0]) != size:
            error = f"{src.file(n)}: frame {n} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is {size[0]}x{size[1]}"
            break
        size = (frame.shape[1], frame.shape[0])
        n += 1
    return FolderProbe(VideoInfo(frames=n, fps=fps, width=size[0], height=size[1]), error, src.file(n))


def source_bytes(path: str | os.PathLike) -> int:
    """Bytes of a frame source's files (what a transcoded copy is compared with)."""
    src = _source(path)
    total, i = 0, 0
    while src.file(i).is_file():
        total += src.file(i).stat().st_size
        i += 1
    return total


def list_frame_files(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root`` (sorted): their (relpath, size, mtime) define the frame set a
    rawframes manifest was built from (its stage fingerprint)."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        out += [Path(dirpath) / f for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(out)
