"""UCF101 recognition splits: classInd.txt, trainlist0N.txt, testlist0N.txt (CRLF in the original).

``classInd.txt``: ``<1-based index> <ClassName>``; trainlist lines ``Class/v_Class_gXX_cYY.avi
<1-based label>``; testlist lines have no label. Labels are 0-based classInd order; video ids are
file stems. Videos are looked up under root/<Class>/ case-insensitively, because one class folder
is ``HandstandPushups`` while its file names (and some copies' folders) say ``HandStandPushups``.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Sequence

from data_manifests.formats.common import FileIndex, Listed, Listing, check_split, read_lines, single_folder

KIND = "ucf101"


def annotation_files(annotations: Sequence[Path], split: int) -> list[Path]:
    folder = single_folder(KIND, annotations)
    check_split(KIND, split)
    files = [folder / "classInd.txt", folder / f"trainlist0{split}.txt", folder / f"testlist0{split}.txt"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{KIND}: {f} not found (expected the official UCF101 split files)")
    return files


def _classes(path: Path) -> list[str]:
    pairs = []
    for n, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<index> <ClassName>', got {line!r}")
        pairs.append((int(parts[0]), parts[1]))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise ValueError(f"{path}: class indices are not 1..{len(pairs)}")
    return [c for _, c in pairs]


def parse(annotations: Sequence[Path], split: int, index: FileIndex,
          classes: Sequence[str] | None = None) -> Listing:
    class_file, train_file, test_file = annotation_files(annotations, split)
    names = _classes(class_file)
    if classes is not None and list(classes) != names:
        raise ValueError(f"{class_file}: the given class list differs from classInd.txt")
    lookup = {c.lower(): i for i, c in enumerate(names)}
    listing = Listing(classes=names, sources=[class_file, train_file, test_file])
    seen: dict[str, str] = {}
    for file, split_name in ((train_file, "train"), (test_file, "test")):
        for n, line in read_lines(file):
            parts = line.split()
            rel = PurePosixPath(parts[0].replace("\\", "/"))
            where = f"{file}:{n}"
            if len(rel.parts) != 2 or len(parts) > 2:
                raise ValueError(f"{where}: expected 'Class/video.avi [label]', got {line!r}")
            label = lookup.get(rel.parts[0].lower())
            if label is None:
                raise ValueError(f"{where}: class folder {rel.parts[0]!r} is not in {class_file.name}")
            if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
                raise ValueError(f"{where}: label {parts[1]!r} disagrees with {class_file.name} "
                                 f"({rel.parts[0]} is {label + 1})")
            vid = rel.stem
            if vid in seen:
                raise ValueError(f"{where}: {rel} is listed twice (first at {seen[vid]})")
            seen[vid] = where
            listing.items.append(Listed(id=vid, expected=rel.as_posix(), path=index.find(rel.as_posix()),
                                        label=label, split=split_name, source=where))
    return listing
