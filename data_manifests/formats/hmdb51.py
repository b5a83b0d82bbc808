"""HMDB51 splits: 153 files ``<class>_test_split<N>.txt`` with lines ``<video>.avi <0|1|2> ``.

1 = train, 2 = test, 0 = not used in that split (kept in the manifest as "unused", so they can
still serve e.g. as unlabelled pre-training videos). Class names contain underscores, so the
class is the file name minus ``_test_split<N>.txt``; labels index the sorted class names.
Videos live at root/<class>/<video>.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Sequence

from data_manifests.formats.common import FileIndex, Listed, Listing, check_split, read_lines, single_folder

KIND = "hmdb51"
FLAGS = {"0": "unused", "1": "train", "2": "test"}


def _suffix(split: int) -> str:
    return f"_test_split{split}.txt"


def annotation_files(annotations: Sequence[Path], split: int) -> list[Path]:
    folder = single_folder(KIND, annotations)
    suffix = _suffix(check_split(KIND, split))
    files = sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
    if not files:
        raise FileNotFoundError(f"{KIND}: no '*{suffix}' files in {folder}")
    return files


def parse(annotations: Sequence[Path], split: int, index: FileIndex,
          classes: Sequence[str] | None = None) -> Listing:
    files = annotation_files(annotations, split)
    suffix = _suffix(split)
    by_class = {f.name[: -len(suffix)]: f for f in files}
    names = sorted(by_class)
    if classes is not None and sorted(classes) != names:
        raise ValueError(f"{KIND}: the given class list differs from the split files' classes")
    listing = Listing(classes=names, sources=files)
    seen: dict[str, str] = {}
    for label, cls in enumerate(names):
        file = by_class[cls]
        for n, line in read_lines(file):
            parts = line.split()
            where = f"{file}:{n}"
            if len(parts) != 2 or parts[1] not in FLAGS:
                raise ValueError(f"{where}: expected '<video>.avi <0|1|2>', got {line!r}")
            vid = PurePosixPath(parts[0]).stem
            if vid in seen:
                raise ValueError(f"{where}: {parts[0]} is listed twice (first at {seen[vid]})")
            seen[vid] = where
            rel = f"{cls}/{parts[0]}"
            listing.items.append(Listed(id=vid, expected=rel, path=index.find(rel), label=label,
                                        split=FLAGS[parts[1]], source=where))
    return listing
