"""A plain class-folder tree: root/<class>/<video>; classes sorted, every video in split "train".

The class is the first folder under the root (videos deeper inside it still belong to it);
files directly in the root have no class and are ignored. Video ids are file stems and must be
unique across classes.
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Sequence

from data_manifests.formats.common import FileIndex, Listed, Listing

KIND = "folder"
log = logging.getLogger(__name__)


def annotation_files(annotations: Sequence[Path], split: int = 1) -> list[Path]:
    if annotations:
        raise ValueError(f"{KIND}: a class-folder dataset takes no annotation files, got "
                         f"{', '.join(map(str, annotations))}")
    return []


def parse(annotations: Sequence[Path], split: int, index: FileIndex,
          classes: Sequence[str] | None = None) -> Listing:
    annotation_files(annotations)
    files = [PurePosixPath(f) for f in index.files]
    loose = [f for f in files if len(f.parts) < 2]
    if loose:
        log.warning("%s: %d video(s) directly in %s have no class folder and are ignored (e.g. %s)",
                    KIND, len(loose), index.root, loose[0])
    files = [f for f in files if len(f.parts) >= 2]
    names = sorted({f.parts[0] for f in files}) if classes is None else list(classes)
    lookup = {c: i for i, c in enumerate(names)}
    listing = Listing(classes=names)
    seen: dict[str, str] = {}
    for f in files:
        if f.parts[0] not in lookup:
            continue  # a folder outside the given class list
        if f.stem in seen:
            raise ValueError(f"{KIND}: video id {f.stem!r} is used by both {seen[f.stem]} and {f} under "
                             f"{index.root}; ids (file stems) must be unique")
        seen[f.stem] = f.as_posix()
        listing.items.append(Listed(id=f.stem, expected=f.as_posix(), path=f.as_posix(),
                                    label=lookup[f.parts[0]], split="train", source=str(index.root / f)))
    return listing
