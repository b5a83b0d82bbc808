"""What every format parser shares: the listing it returns and a one-pass index of the video tree."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from data_manifests.video import VIDEO_EXTENSIONS

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Listed:
    """One video named by the annotations. ``path`` (relative, POSIX) is None when it is not on disk;
    ``expected`` is what the annotations say it should be called (used in rejected.jsonl)."""

    id: str
    expected: str
    path: str | None
    label: int
    split: str
    source: str  # annotation file (and line) that listed it, for error messages
    frames: int | None = None  # the frame count the list states (frame folders), checked against the probe
    fps: float = 0.0  # the rate to record when the files carry none (frame folders)


@dataclass
class Listing:
    classes: list[str]
    items: list[Listed] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)  # annotation files read


class FileIndex:
    """Every video file under ``root`` (any depth, symlinked folders followed once), indexed by
    relative path, case-insensitive relative path, case-insensitive file name, and stem."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        files: list[str] = []
        seen_dirs: set[tuple[int, int]] = set()
        self.unlisted: list[str] = []  # folders that could not be read ("path: reason"), warned about

        def skipped(exc: OSError) -> None:
            self.unlisted.append(f"{exc.filename}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True, onerror=skipped):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                    files.append((rel_dir / name).as_posix())
        self.files = sorted(files)
        self._exact = set(self.files)
        self._lower: dict[str, list[str]] = defaultdict(list)
        self._name: dict[str, list[str]] = defaultdict(list)
        self._stem: dict[str, list[str]] = defaultdict(list)
        for f in self.files:
            p = PurePosixPath(f)
            self._lower[f.lower()].append(f)
            self._name[p.name.lower()].append(f)
            self._stem[p.stem].append(f)

    def find(self, relpath: str) -> str | None:
        """The file the annotations call ``relpath``: exact, else case-insensitive (UCF101's
        HandstandPushups/HandStandPushups), else the unique file of that name anywhere (flat trees)."""
        rel = PurePosixPath(relpath.replace("\\", "/")).as_posix()
        if rel in self._exact:
            return rel
        for table, key in ((self._lower, rel.lower()), (self._name, PurePosixPath(rel).name.lower())):
            hits = table.get(key, [])
            if len(hits) == 1:
                return hits[0]
        return None

    def by_stem(self, stems: Sequence[str]) -> str | None:
        """First file (sorted order) whose stem is one of ``stems``, tried in that order."""
        for s in stems:
            hits = self._stem.get(s)
            if hits:
                return hits[0]
        return None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty stripped lines with 1-based numbers; CRLF/LF, BOM and undecodable bytes tolerated
    (bytes that are not UTF-8 become surrogate escapes, i.e. they match file names on disk)."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def single_folder(kind: str, annotations: Sequence[Path]) -> Path:
    """The one annotation folder that UCF101 / HMDB51 take."""
    if len(annotations) != 1 or not annotations[0].is_dir():
        got = ", ".join(str(a) for a in annotations) or "nothing"
        raise ValueError(f"{kind}: annotations must be one folder holding the official split files, "
                         f"got {got}")
    return annotations[0]


def check_split(kind: str, split: int) -> int:
    if split not in (1, 2, 3):
        raise ValueError(f"{kind}: split must be 1, 2 or 3, got {split!r}")
    return split
