"""The teacher cache's on-disk format: one HDF5 file per shard of the clip plan.

Shard ``i`` holds clips ``[i*S, (i+1)*S)`` of the clip plan. Layout of ``shard-00000.h5``:

- ``maps``     (N, C, H, W) float16 softmax probabilities in frame coordinates (the whole frame),
               one map per chunk, lzf + fletcher32 (a flipped bit is a read error, not a bad target);
- ``clip_ids`` (N,) utf-8 strings ``"{video_id}@{frame}"``;
- ``frames``   (N,) int64 anchor frame indices;
- ``valid``    (N,) bool: False where the anchor frame could not be decoded (its map is zeros);
- ``errors``   (N,) utf-8 strings: why a row is invalid ("" for valid rows), so a shard carries its
               own failure list and ``failed.jsonl`` can always be rebuilt from the shards;
- attributes: format_version, fingerprint, teacher (backend name), label_set, labels,
  checkpoint_sha256, map_size, shard_index, first_clip (plan index of row 0).

A shard is written under a temporary name (``.shard-00000.h5.tmp``), verified, then renamed:
a file named ``shard-*.h5`` is complete by construction, and a ``.tmp`` is never read.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from pipeline.core.errors import DiskFullError, TeacherCacheError, disk_full_error, is_disk_full
from pipeline.core.files import replace_durably

FORMAT_VERSION = 1
SUM_TOLERANCE = 1e-2  # per-pixel |sum_c p - 1| allowed for a valid row (float16 storage)
SHARD_GLOB = "shard-*.h5"
_STR = h5py.string_dtype("utf-8")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def temp_name(index: int) -> str:
    """The name a shard is written under before it is verified (hidden, never globbed as a shard)."""
    return f".{shard_name(index)}.tmp"


def num_shards(total_clips: int, shard_size: int) -> int:
    return (total_clips + shard_size - 1) // shard_size


def shard_range(index: int, shard_size: int, total_clips: int) -> tuple[int, int]:
    """Plan indices ``[start, stop)`` held by shard ``index``."""
    start = index * shard_size
    return start, min(start + shard_size, total_clips)


@dataclass(frozen=True)
class ShardMeta:
    """What every shard of one cache records about how its maps were made."""

    fingerprint: str
    teacher: str
    label_set: str
    labels: tuple[str, ...]
    map_size: int
    checkpoint_sha256: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _attr_str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_meta(f: h5py.File) -> ShardMeta:
    """The :class:`ShardMeta` stored in an open shard's attributes."""
    a = f.attrs
    try:
        return ShardMeta(
            fingerprint=_attr_str(a["fingerprint"]),
            teacher=_attr_str(a["teacher"]),
            label_set=_attr_str(a["label_set"]),
            labels=tuple(_attr_str(x) for x in a["labels"]),
            map_size=int(a["map_size"]),
            checkpoint_sha256=_attr_str(a["checkpoint_sha256"]),
        )
    except KeyError as exc:
        raise TeacherCacheError(f"teacher-cache shard {f.filename}: missing attribute {exc}") from None


def read_ids(f: h5py.File) -> list[str]:
    return [s for s in f["clip_ids"].asstr()[...]]


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A full disk or a file-size limit (EFBIG once SIGXFSZ is ignored) becomes one line naming the shard."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc, "writing a teacher-cache shard") from None
        raise


def _check_room(path: Path, nbytes: int) -> None:
    """Refuse before writing when a shard cannot fit under the file-size limit or in the free space.

    HDF5 does not survive a write that fails half-way (HDF5 2.0 segfaults on EFBIG inside its write
    path), so the predictable cases, ``ulimit -f`` and a nearly full disk, are caught up front.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise DiskFullError(f"{path}: no space left for this shard: it needs up to {nbytes} bytes but the "
                            f"file-size limit (`ulimit -f`) is {soft} bytes; raise the limit (or lower "
                            f"teacher.shard_size), then rerun the same command to resume")
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise DiskFullError(f"{path}: no space left on device: this shard needs up to {nbytes} bytes and "
                            f"{free} are free; free space, then rerun the same command to resume")


def shard_bytes_bound(n: int, num_classes: int, map_size: int) -> int:
    """An upper bound on a shard's file size: maps uncompressed (+3% for incompressible lzf blocks,
    + a checksum per chunk), ids and per-row records, and HDF5's own metadata."""
    maps = n * (num_classes * map_size * map_size * 2 * 103 // 100 + 64)
    return maps + n * 256 + (1 << 16)


class ShardWriter:
    """Create a shard with all its rows' ids up front, then stream maps into it batch by batch.

    Rows never written stay invalid (zeros, ``valid`` False, error "not written"), so a writer
    that stops early leaves a shard that fails verification rather than one that looks fine.
    """

    def __init__(self, path: str | Path, meta: ShardMeta, clip_ids: Sequence[str], frames: Sequence[int],
                 *, shard_index: int = 0, first_clip: int = 0) -> None:
        self.path = Path(path)
        self.meta = meta
        n = self.n = len(clip_ids)
        if len(frames) != n:
            raise ValueError(f"{self.path}: {n} clip ids but {len(frames)} frames")
        self._f: h5py.File | None = None
        _check_room(self.path, shard_bytes_bound(n, meta.num_classes, meta.map_size))
        with _disk_errors(self.path):
            self._f = h5py.File(self.path, "w")
            self._create(clip_ids, frames, shard_index, first_clip)

    def _create(self, clip_ids: Sequence[str], frames: Sequence[int], shard_index: int, first_clip: int) -> None:
        meta, n = self.meta, len(clip_ids)
        c, s = meta.num_classes, meta.map_size
        f = self._f
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = meta.fingerprint
        f.attrs["teacher"] = meta.teacher
        f.attrs["label_set"] = meta.label_set
        f.attrs.create("labels", list(meta.labels), dtype=_STR)
        f.attrs["map_size"] = int(s)
        f.attrs["checkpoint_sha256"] = meta.checkpoint_sha256
        f.attrs["shard_index"] = int(shard_index)
        f.attrs["first_clip"] = int(first_clip)
        f.create_dataset("maps", shape=(n, c, s, s), dtype=np.float16, chunks=(1, c, s, s) if n else None,
                         compression="lzf" if n else None, fletcher32=bool(n), fillvalue=0)
        f.create_dataset("clip_ids", data=np.array(list(clip_ids), dtype=object), dtype=_STR)
        f.create_dataset("frames", data=np.asarray(frames, dtype=np.int64).reshape(n))
        f.create_dataset("valid", data=np.zeros(n, dtype=bool))
        f.create_dataset("errors", data=np.array(["not written"] * n, dtype=object), dtype=_STR)

    def write(self, start: int, maps: np.ndarray, valid: Sequence[bool] | np.ndarray | None = None,
              errors: Sequence[str] | None = None) -> None:
        """Rows ``[start, start+len(maps))``: maps (k, C, H, W) probabilities; invalid rows stored as zeros."""
        maps = np.asarray(maps)
        k = len(maps)
        if start < 0 or start + k > self.n:
            raise IndexError(f"{self.path}: rows [{start}, {start + k}) outside [0, {self.n})")
        want = (self.meta.num_classes, self.meta.map_size, self.meta.map_size)
        if maps.shape[1:] != want:
            raise ValueError(f"{self.path}: maps of shape {maps.shape[1:]} but the shard holds {want}")
        valid = np.ones(k, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        errors = [""] * k if errors is None else list(errors)
        out = maps.astype(np.float16, copy=True)
        out[~valid] = 0
        with _disk_errors(self.path):
            self._f["maps"][start:start + k] = out
            self._f["valid"][start:start + k] = valid
            self._f["errors"][start:start + k] = np.array(
                ["" if v else (e or "unknown error") for v, e in zip(valid, errors)], dtype=object)

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            with _disk_errors(self.path):
                f.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shard(path: str | Path, meta: ShardMeta, clip_ids: Sequence[str], frames: Sequence[int],
                maps: np.ndarray, valid: Sequence[bool] | None = None, errors: Sequence[str] | None = None,
                *, shard_index: int = 0, first_clip: int = 0) -> None:
    """Write a whole shard in one call (small shards, tests)."""
    with ShardWriter(path, meta, clip_ids, frames, shard_index=shard_index, first_clip=first_clip) as w:
        if len(clip_ids):
            w.write(0, maps, valid, errors)


def verify_shard(path: str | Path, *, expected_ids: Sequence[str] | None = None,
                 fingerprint: str | None = None, full: bool = True, block: int = 64) -> None:
    """Raise :class:`TeacherCacheError` naming the file unless the shard is sound.

    Cheap checks (``full=False``): it opens, has every dataset and attribute, the fingerprint and the
    ids match, shapes agree. Full: every map is read (fletcher32 checked by HDF5), finite, in
    [0, 1], and each valid row's per-pixel class sum is within ``SUM_TOLERANCE`` of 1; invalid rows
    are all zeros. Maps are read ``block`` rows at a time so memory stays flat.
    """
    path = Path(path)
    name = f"teacher-cache shard {path}"
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise TeacherCacheError(f"{name}: cannot be opened as HDF5 ({exc})") from None
    with f:
        for key in ("maps", "clip_ids", "frames", "valid", "errors"):
            if key not in f:
                raise TeacherCacheError(f"{name}: dataset {key!r} is missing")
        meta = read_meta(f)
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise TeacherCacheError(f"{name}: format_version {version}, this code reads {FORMAT_VERSION}")
        if fingerprint is not None and meta.fingerprint != fingerprint:
            raise TeacherCacheError(f"{name}: fingerprint {meta.fingerprint[:12]}… does not match the cache's "
                                    f"{fingerprint[:12]}… (written for other inputs)")
        maps = f["maps"]
        n = len(f["clip_ids"])
        want = (n, meta.num_classes, meta.map_size, meta.map_size)
        if maps.shape != want:
            raise TeacherCacheError(f"{name}: maps have shape {maps.shape}, expected {want} "
                                    f"({n} clips, {meta.num_classes} labels, map size {meta.map_size})")
        if maps.dtype != np.float16:
            raise TeacherCacheError(f"{name}: maps are {maps.dtype}, expected float16")
        for key in ("frames", "valid", "errors"):
            if f[key].shape != (n,):
                raise TeacherCacheError(f"{name}: {key} has shape {f[key].shape}, expected ({n},)")
        if expected_ids is not None:
            ids = read_ids(f)
            expected = list(expected_ids)
            if ids != expected:
                if len(ids) != len(expected):
                    detail = f"{len(ids)} clip ids, the clip plan has {len(expected)}"
                else:
                    i = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
                    detail = f"row {i} is {ids[i]!r}, the clip plan has {expected[i]!r}"
                raise TeacherCacheError(f"{name}: clip ids do not match the clip plan: {detail}")
        if not full:
            return
        valid = f["valid"][...].astype(bool)
        for start in range(0, n, block):
            try:
                chunk = maps[start:start + block].astype(np.float32)
            except OSError as exc:  # fletcher32 mismatch or a damaged chunk
                raise TeacherCacheError(f"{name}: rows {start}..{min(start + block, n) - 1} cannot be read "
                                        f"(checksum or compression error: {exc})") from None
            v = valid[start:start + len(chunk)]
            bad = ~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if bad.any():
                raise TeacherCacheError(f"{name}: row {start + int(np.argmax(bad))} has non-finite values (NaN/inf)")
            lo, hi = float(chunk.min(initial=0.0)), float(chunk.max(initial=0.0))
            if lo < -1e-3 or hi > 1 + SUM_TOLERANCE:
                raise TeacherCacheError(f"{name}: probabilities outside [0, 1] (min {lo:.4g}, max {hi:.4g}) "
                                        f"in rows {start}..{start + len(chunk) - 1}")
            if v.any():
                err = np.abs(chunk[v].sum(axis=1) - 1.0).reshape(int(v.sum()), -1).max(axis=1)
                if (err > SUM_TOLERANCE).any():
                    j = int(np.argmax(err > SUM_TOLERANCE))
                    row = start + int(np.flatnonzero(v)[j])
                    raise TeacherCacheError(
                        f"{name}: row {row} ({_attr_str(f['clip_ids'][row])}) is not a probability map: "
                        f"per-pixel class sums differ from 1 by up to {err[j]:.4g} (tolerance {SUM_TOLERANCE})")
            if (~v).any() and np.abs(chunk[~v]).max(initial=0.0) != 0:
                row = start + int(np.flatnonzero(~v)[0])
                raise TeacherCacheError(f"{name}: row {row} is marked invalid but its map is not zero")


def shard_is_current(path: str | Path, fingerprint: str, expected_ids: Sequence[str]) -> bool:
    """Cheap "is this finished shard still good?" for reruns: attributes, shapes and ids, no maps read."""
    try:
        verify_shard(path, expected_ids=expected_ids, fingerprint=fingerprint, full=False)
    except TeacherCacheError:
        return False
    return True


def finalize_shard(tmp: str | Path, final: str | Path, *, expected_ids: Sequence[str], fingerprint: str) -> None:
    """Fully verify a freshly written temporary shard, then rename it into place atomically."""
    verify_shard(tmp, expected_ids=expected_ids, fingerprint=fingerprint, full=True)
    replace_durably(tmp, final)  # the data must be on disk before the name says "complete"


def shard_failures(path: str | Path) -> list[dict]:
    """The invalid rows of a finished shard: ``[{"clip_id", "frame", "row", "error"}]``."""
    with h5py.File(path, "r") as f:
        valid = f["valid"][...].astype(bool)
        if valid.all():
            return []
        rows = np.flatnonzero(~valid)
        ids = f["clip_ids"].asstr()[...]
        frames = f["frames"][...]
        errors = f["errors"].asstr()[...]
        return [{"clip_id": str(ids[r]), "frame": int(frames[r]), "row": int(r), "error": str(errors[r])}
                for r in rows]
