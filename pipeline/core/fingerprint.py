"""Content fingerprints: canonical JSON hashing and cached file digests.

A 267 MB checkpoint or a 10k-line annotation file is hashed once: its sha256 is cached under
the work directory keyed by (absolute path, size, mtime_ns), so ``pipeline status`` stays fast.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.files import atomic_write_text


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal objects give equal text in every process."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(canonical_json(obj))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class DigestCache:
    """sha256 of files, remembered by (path, size, mtime_ns) in a small JSON file."""

    def __init__(self, cache_file: Path | None) -> None:
        self.cache_file = cache_file
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if cache_file is not None and cache_file.exists():
            try:
                self._entries = json.loads(cache_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self._entries = {}

    def digest(self, path: str | Path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        key = str(p)
        hit = self._entries.get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        value = sha256_file(p)
        self._entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
        self._dirty = True
        return value

    def save(self) -> None:
        if self._dirty and self.cache_file is not None:
            try:
                atomic_write_text(self.cache_file, json.dumps(self._entries, sort_keys=True))
                self._dirty = False
            except OSError:
                pass  # a read-only work dir only costs re-hashing next time


def file_set_digest(root: Path, files: Iterable[Path]) -> str:
    """Digest of a set of files by (relative path, size, mtime): cheap, changes when any file does."""
    rows: list[list[Any]] = []
    for f in files:
        try:
            st = f.stat()
        except OSError as exc:  # a dangling link or a symlink loop: the build rejects it, it is still a row
            rows.append([str(f.relative_to(root)), -1, f"error {exc.errno}"])
            continue
        rows.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    rows.sort()
    return sha256_json(rows)
