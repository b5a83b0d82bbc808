"""The manifest: one record per usable video, the class list, and what was rejected and why.

On disk (a folder): ``manifest.jsonl`` (one VideoEntry per line), ``meta.json`` (dataset, root,
classes with index = label, counts) and ``rejected.jsonl`` ({"id", "path", "reason", "detail"}).
Every file is written to a temporary name and renamed, so a reader never sees half a manifest;
``meta.json`` is written last.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.errors import DataError
from pipeline.core.files import atomic_write_text

SPLITS = ("train", "val", "test", "unused")
REJECT_REASONS = ("missing", "undecodable", "zero_frames", "too_short", "not_a_video")
MANIFEST_FILE = "manifest.jsonl"
META_FILE = "meta.json"
REJECTED_FILE = "rejected.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class VideoEntry:
    """One usable video; ``path`` is relative to the dataset root, ``label`` is -1 when unknown."""

    id: str
    path: str
    label: int
    split: str
    frames: int
    fps: float
    width: int
    height: int


_ENTRY_KEYS = tuple(f.name for f in fields(VideoEntry))


@dataclass
class Manifest:
    """A dataset's usable videos in a fixed order (clip plans index into ``entries``)."""

    dataset: str
    root: Path
    classes: list[str]
    entries: list[VideoEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.validate()

    def validate(self) -> None:
        """Unique ids, known splits, labels in range, positive frame counts."""
        seen: dict[str, str] = {}
        n = len(self.classes)
        if len(set(self.classes)) != n:
            dup = [c for c, k in Counter(self.classes).items() if k > 1]
            raise ValueError(f"manifest {self.dataset}: duplicate class names {dup[:5]}")
        for e in self.entries:
            if e.id in seen:
                raise ValueError(f"manifest {self.dataset}: video id {e.id!r} is used by both "
                                 f"{seen[e.id]} and {e.path}")
            seen[e.id] = e.path
            if e.split not in SPLITS:
                raise ValueError(f"manifest {self.dataset}: {e.path} has split {e.split!r}, not one of {SPLITS}")
            if not (e.label == -1 or 0 <= e.label < n):
                raise ValueError(f"manifest {self.dataset}: {e.path} has label {e.label}, "
                                 f"outside -1..{n - 1} ({n} classes)")
            if e.frames < 1:
                raise ValueError(f"manifest {self.dataset}: {e.path} has {e.frames} frames")

    def abspath(self, entry: VideoEntry) -> Path:
        return self.root / entry.path

    def by_split(self, *splits: str) -> list[VideoEntry]:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
        return [e for e in self.entries if e.split in splits]

    def counts(self) -> dict[str, int]:
        """Videos per split (every split named, zeros included)."""
        c = Counter(e.split for e in self.entries)
        return {s: c.get(s, 0) for s in SPLITS}


def _jsonl(records: Iterable[dict[str, Any]]) -> str:
    # ensure_ascii keeps undecodable file-name bytes (surrogate escapes) round-trippable.
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records)


def _recorded_root(root: Path, out_dir: Path, relative_to: str | Path | None) -> str:
    """The dataset root as meta.json records it: relative to the manifest folder when both lie inside
    ``relative_to`` (a work directory), so a moved or copied work directory reads its own videos."""
    if relative_to is not None:
        base = Path(relative_to).resolve()
        root_abs, out_abs = root.resolve(), out_dir.resolve()
        if root_abs.is_relative_to(base) and out_abs.is_relative_to(base):
            return Path(os.path.relpath(root_abs, out_abs)).as_posix()
    return str(root)


def write_manifest(out_dir: str | Path, manifest: Manifest, rejected: list[dict], *,
                   relative_to: str | Path | None = None) -> None:
    """Write manifest.jsonl, rejected.jsonl, then meta.json into ``out_dir`` (each atomically).

    ``relative_to``: a work directory; a root inside it is recorded relative to ``out_dir`` (which
    must then keep its depth: a stage's ``.partial`` folder and its final folder are siblings).
    """
    manifest.validate()
    for r in rejected:
        if r.get("reason") not in REJECT_REASONS or "id" not in r or "path" not in r:
            raise ValueError(f"rejected record {r!r} needs id, path and a reason in {REJECT_REASONS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST_FILE, _jsonl(asdict(e) for e in manifest.entries), newline="\n")
    atomic_write_text(out / REJECTED_FILE, _jsonl(rejected), newline="\n")
    reasons = Counter(r["reason"] for r in rejected)
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": manifest.dataset,
        "root": _recorded_root(manifest.root, out, relative_to),
        "classes": list(manifest.classes),
        "counts": {
            "videos": len(manifest.entries),
            "classes": len(manifest.classes),
            "per_split": manifest.counts(),
            "rejected": len(rejected),
            "rejected_per_reason": {k: reasons.get(k, 0) for k in REJECT_REASONS},
        },
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1, ensure_ascii=True) + "\n", newline="\n")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            records.append(rec)
    return records


def load_manifest(directory: str | Path, *, root: str | Path | None = None) -> Manifest:
    """Read a manifest folder; ``root`` overrides the recorded dataset root (moved datasets)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no manifest here (meta.json missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for key in ("dataset", "root", "classes"):
        if key not in meta:
            raise DataError(f"{meta_path}: key {key!r} missing")
    path = d / MANIFEST_FILE
    entries = []
    for n, rec in enumerate(_read_jsonl(path), 1):
        missing = [k for k in _ENTRY_KEYS if k not in rec]
        if missing:
            raise DataError(f"{path}: record {n} lacks {missing}")
        try:
            entries.append(VideoEntry(id=str(rec["id"]), path=str(rec["path"]), label=int(rec["label"]),
                                      split=str(rec["split"]), frames=int(rec["frames"]),
                                      fps=float(rec["fps"]), width=int(rec["width"]),
                                      height=int(rec["height"])))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: record {n} has a bad value ({exc})") from None
    try:
        recorded = Path(str(meta["root"]))
        recorded = recorded if recorded.is_absolute() else d / recorded  # relative: to this folder
        return Manifest(dataset=str(meta["dataset"]), root=Path(root) if root is not None else recorded,
                        classes=[str(c) for c in meta["classes"]], entries=entries)
    except ValueError as exc:
        raise DataError(f"{d}: {exc}") from None


def load_rejected(directory: str | Path) -> list[dict]:
    """The rejected.jsonl records of a manifest folder."""
    return _read_jsonl(Path(directory) / REJECTED_FILE)
