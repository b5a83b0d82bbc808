"""Frame folders with MMAction2's rawframe list files (SCUBA / SCUFO releases, rawframe copies of
UCF101 / HMDB51).

A list file has one video per line: ``<folder> <num_frames> <label>``, or with a start offset
``<folder> <offset> <num_frames> <label>`` (MMAction2's ``with_offset``). ``folder`` is relative to
the dataset root and holds the frames as ``template.format(start_index + offset + i)`` for frame
``i`` (MMAction2's ``filename_tmpl``, default ``img_{:05}.jpg``, and ``start_index``, default 1).
Labels are 0-based indices into the class list, which comes from a class-list file (one name per
line, or ``<1-based index> <name>`` as UCF101's classInd.txt) or from the parent dataset (a SCUBA
test list uses the labels of the dataset it was cut from). A ``{split}`` in a list file's name is
replaced by the split number. The split of a list's videos is "train" when its file name says
train, else "test" (MMAction2 calls UCF101/HMDB51's test lists "val"). Video ids are the folders'
last components and must be unique.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Sequence

from data_manifests.formats.common import FileIndex, Listed, Listing, read_lines
from data_manifests.frames import check_template, frame_source

KIND = "rawframes"
DEFAULT_TEMPLATE = "img_{:05}.jpg"


def annotation_files(annotations: Sequence[Path], split: int = 1) -> list[Path]:
    """The list files, ``{split}`` in a name replaced by the split number."""
    if not annotations:
        raise ValueError(f"{KIND}: name the list file(s) ('<folder> <num_frames> <label>' per line)")
    files = [Path(str(a).replace("{split}", str(split))) for a in annotations]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{KIND}: list file {f} not found")
    return files


def read_class_list(path: Path) -> list[str]:
    """Class names, index = label: one name per line, or ``<1-based index> <name>`` (classInd.txt)."""
    if not path.is_file():
        raise FileNotFoundError(f"{KIND}: class list {path} not found")
    lines = read_lines(path)
    pairs = [line.split(maxsplit=1) for _, line in lines]
    if pairs and all(len(p) == 2 and p[0].isdigit() for p in pairs):
        numbered = sorted((int(p[0]), p[1].strip()) for p in pairs)
        first = numbered[0][0]
        if [i for i, _ in numbered] != list(range(first, first + len(numbered))) or first not in (0, 1):
            raise ValueError(f"{path}: class indices are not 0..{len(numbered) - 1} or 1..{len(numbered)}")
        names = [name for _, name in numbered]
    else:
        names = [line for _, line in lines]
    if not names:
        raise ValueError(f"{path}: the class list is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: the class list names a class twice")
    return names


def split_of(path: Path) -> str:
    """"train" for a train list, "test" for every other list (test, val, a SCUBA background list)."""
    return "train" if "train" in path.name.lower() else "test"


def _number(text: str, what: str, where: str, line: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{where}: {what} {text!r} is not a non-negative integer in {line!r}")
    return int(text)


def parse(annotations: Sequence[Path], split: int, index: FileIndex, classes: Sequence[str] | None = None, *,
          filename_tmpl: str = DEFAULT_TEMPLATE, start_index: int = 1, fps: float = 0.0) -> Listing:
    files = annotation_files(annotations, split)
    if classes is None:
        raise ValueError(f"{KIND}: labels need class names: set the dataset's class list (classes = FILE) "
                         f"or parent dataset (parent = NAME)")
    check_template(filename_tmpl, f"{KIND}: filename_tmpl")
    names = list(classes)
    listing = Listing(classes=names, sources=files)
    seen: dict[str, str] = {}
    for file in files:
        for n, line in read_lines(file):
            where = f"{file}:{n}"
            parts = line.split()
            if len(parts) not in (3, 4):
                raise ValueError(f"{where}: expected '<folder> <num_frames> <label>' or "
                                 f"'<folder> <offset> <num_frames> <label>', got {line!r}")
            folder = PurePosixPath(parts[0].replace("\\", "/").strip("/"))
            offset = _number(parts[1], "offset", where, line) if len(parts) == 4 else 0
            frames = _number(parts[-2], "frame count", where, line)
            label = _number(parts[-1], "label", where, line)
            if label >= len(names):
                raise ValueError(f"{where}: label {label} is outside the {len(names)} classes (0..{len(names) - 1})")
            vid = folder.name
            if vid in seen:
                raise ValueError(f"{where}: video {vid!r} is listed twice (first at {seen[vid]})")
            seen[vid] = where
            source = frame_source(folder.as_posix(), filename_tmpl, start_index + offset)
            present = (index.root / folder).is_dir()
            listing.items.append(Listed(id=vid, expected=folder.as_posix(), path=source if present else None,
                                        label=label, split=split_of(file), source=where, frames=frames, fps=fps))
    return listing
