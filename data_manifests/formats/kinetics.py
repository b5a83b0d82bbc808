"""Kinetics-400 annotation CSVs: ``label,youtube_id,time_start,time_end,split[,is_cc]``.

Labels with spaces are double-quoted; the test CSV has no label column (label -1). Classes are
the sorted unique labels of the given CSVs unless a class list is given (a ``.txt`` among the
annotations, one name per line, or the ``classes`` argument). Downloads name files
``<youtube_id>_<start:06d>_<end:06d>.<ext>`` or just ``<youtube_id>.<ext>``, in any folder layout,
so files are found by stem anywhere under the root. The video id is always the segment name
``<youtube_id>_<start:06d>_<end:06d>``, whatever the file is called.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

from data_manifests.formats.common import FileIndex, Listed, Listing, read_lines

KIND = "kinetics400"
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validate": "val",
               "validation": "val", "test": "test", "testing": "test"}
log = logging.getLogger(__name__)


def _expand(annotations: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(CSV files, class-list files) named by ``annotations`` (folders contribute their *.csv)."""
    csvs: list[Path] = []
    lists: list[Path] = []
    for a in annotations:
        if a.is_dir():
            found = sorted(p for p in a.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            if not found:
                raise FileNotFoundError(f"{KIND}: no .csv files in {a}")
            csvs += found
        elif not a.is_file():
            raise FileNotFoundError(f"{KIND}: annotation file {a} not found")
        elif a.suffix.lower() == ".txt":
            lists.append(a)
        else:
            csvs.append(a)
    if not csvs:
        raise ValueError(f"{KIND}: annotations must name at least one Kinetics CSV (or a folder of them)")
    if len(lists) > 1:
        raise ValueError(f"{KIND}: more than one class list given: {', '.join(map(str, lists))}")
    return csvs, lists


def annotation_files(annotations: Sequence[Path], split: int = 1) -> list[Path]:
    csvs, lists = _expand(annotations)
    return csvs + lists


def _split_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    for key in ("validate", "val", "train", "test"):
        if key in stem:
            return SPLIT_NAMES[key]
    return None


def _seconds(value: str, where: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{where}: time {value!r} is not a number") from None


def _rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    need = {"youtube_id", "time_start", "time_end"}
    if not need <= set(header):
        raise ValueError(f"{path}: header {header} lacks {sorted(need - set(header))} "
                         f"(expected label,youtube_id,time_start,time_end,split)")
    # line numbers: header is line 1
    rows = [(f"{path}:{n}", row) for n, row in enumerate(reader, 2)]
    for where, row in rows:  # a short row leaves its last columns None: name that, not a column's value
        absent = [h for h in header if row.get(h) is None and h in need | {"label", "split"}]
        if absent:
            given = sum(v is not None for k, v in row.items() if k is not None)
            raise ValueError(f"{where}: the row has {given} field(s), the header {len(header)} "
                             f"({','.join(header)}); missing: {', '.join(absent)}")
    return rows


def parse(annotations: Sequence[Path], split: int, index: FileIndex,
          classes: Sequence[str] | None = None, *, default_split: str | None = None) -> Listing:
    """``default_split``: the split of rows that name none (Mimetics' list: "test")."""
    csvs, lists = _expand(annotations)
    if lists:
        if classes is not None:
            raise ValueError(f"{KIND}: a class list was given twice (argument and {lists[0]})")
        classes = [line for _, line in read_lines(lists[0])]
    rows = [r for f in csvs for r in _rows(f)]
    if classes is None:
        names = sorted({(row.get("label") or "").strip() for _, row in rows} - {""})
    else:
        names = list(classes)
    lookup = {c: i for i, c in enumerate(names)}
    if len(lookup) != len(names):
        raise ValueError(f"{KIND}: the class list has duplicate names")
    listing = Listing(classes=names, sources=csvs + lists)
    seen: set[str] = set()
    duplicates = 0
    for where, row in rows:
        label_name = (row.get("label") or "").strip()
        if label_name and label_name not in lookup:
            raise ValueError(f"{where}: label {label_name!r} is not in the class list")
        raw_split = (row.get("split") or "").strip().lower()
        split_name = SPLIT_NAMES.get(raw_split) if raw_split else (
            _split_from_name(Path(where.rsplit(":", 1)[0])) or default_split)
        if split_name is None:
            raise ValueError(f"{where}: split {raw_split!r} is not train/val/test (and the file name does "
                             f"not say which)")
        ytid = (row.get("youtube_id") or "").strip()
        if not ytid:
            raise ValueError(f"{where}: empty youtube_id")
        start, end = _seconds(row["time_start"], where), _seconds(row["time_end"], where)
        vid = f"{ytid}_{start:06d}_{end:06d}"
        if vid in seen:
            duplicates += 1
            continue
        seen.add(vid)
        listing.items.append(Listed(id=vid, expected=f"{vid}.mp4", path=index.by_stem([vid, ytid]),
                                    label=lookup[label_name] if label_name else -1, split=split_name,
                                    source=where))
    if duplicates:
        log.warning("%s: %d duplicate rows (same youtube_id and segment) skipped", KIND, duplicates)
    return listing
