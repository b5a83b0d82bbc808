"""Reading teacher targets: clip id → cached map, cut with the clip's crop box and flip.

:class:`TeacherCache` is built in the main process and handed to DataLoader workers. It keeps
only paths until the first map is read; HDF5 files are opened per process (keyed by pid), so a
handle is never shared across fork, and pickling drops them. The clip-id index is a sorted
fixed-width byte array (no per-id Python objects), so millions of clips cost tens of MB that
forked workers share copy-on-write.

Alignment convention (defined here; DESIGN.md §5 requires it, tests/test_cache_reader.py
``test_frame_crop_and_map_crop_agree`` checks it): ``box = (x0, y0, x1, y1)`` in normalised frame coordinates
with the pixel-edge convention (pixel column ``c`` of a ``W``-wide image spans ``[c/W, (c+1)/W]``).
Output pixel ``(i, j)`` of an ``h × w`` target samples the map at the normalised point
``x = x0 + (j + 0.5)/w · (x1 - x0)``, ``y = y0 + (i + 0.5)/h · (y1 - y0)`` — the centre of the
output pixel — i.e. map pixel coordinate ``x·W_map - 0.5``, bilinearly. That is exactly what an
image crop-and-resize with half-pixel centres (OpenCV ``resize``, ``F.interpolate(...,
align_corners=False)``, torchvision's ``resized_crop``) does to the frame, so targets and
pixels stay aligned. ``flip`` mirrors the target after cropping and, for label sets with
left/right parts, swaps those channels: a mirrored left arm looks like a right arm, which is what
the teacher would say about the mirrored clip (SCHP's own flip test does the same swap).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import TeacherCacheError
from teacher.cache_format import SHARD_GLOB, ShardMeta, read_meta

Box = tuple[float, float, float, float]


def lr_swap_permutation(labels: Sequence[str]) -> list[int]:
    """Channel order of a mirrored map: ``Left-X`` ↔ ``Right-X`` swapped, others fixed."""
    perm = list(range(len(labels)))
    index = {name: i for i, name in enumerate(labels)}
    for i, name in enumerate(labels):
        if name.startswith("Left-") and ("Right-" + name[len("Left-"):]) in index:
            j = index["Right-" + name[len("Left-"):]]
            perm[i], perm[j] = j, i
    return perm


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resample_boxes(maps: torch.Tensor, boxes: torch.Tensor | Sequence[Box], size: int | Sequence[int],
                   flips: torch.Tensor | Sequence[bool] | None = None,
                   perm: Sequence[int] | None = None, renormalise: bool = True) -> torch.Tensor:
    """Cut each map (B, C, H, W) with its box, resample to ``size`` = (h, w), flip, renormalise.

    Works on any device; ``boxes`` (B, 4) normalised (x0, y0, x1, y1), pixel-edge convention.
    Points outside the frame take the nearest edge value.
    """
    maps = maps.float()
    b = maps.shape[0]
    h, w = _size_hw(size)
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=maps.device).reshape(b, 4)
    x0, y0, x1, y1 = boxes.unbind(1)
    u = (torch.arange(w, device=maps.device, dtype=torch.float32) + 0.5) / w  # output pixel centres in [0, 1]
    v = (torch.arange(h, device=maps.device, dtype=torch.float32) + 0.5) / h
    xs = x0[:, None] + u[None] * (x1 - x0)[:, None]  # (B, w) normalised frame x
    ys = y0[:, None] + v[None] * (y1 - y0)[:, None]  # (B, h)
    # grid_sample(align_corners=False): grid g ↦ pixel ((g+1)·W - 1)/2 = x·W - 0.5 for g = 2x - 1.
    grid = torch.stack(torch.broadcast_tensors((2 * xs - 1)[:, None, :], (2 * ys - 1)[:, :, None]), dim=-1)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if flips is not None:
        flips = torch.as_tensor(flips, dtype=torch.bool, device=maps.device).reshape(b)
        if bool(flips.any()):
            mirrored = out.flip(-1)
            if perm is not None and list(perm) != list(range(out.shape[1])):
                mirrored = mirrored[:, list(perm)]
            out = torch.where(flips[:, None, None, None], mirrored, out)
    if renormalise:
        out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return out


class TeacherCache:
    """Lazy, fork-safe, picklable access to a teacher-cache folder of ``shard-*.h5`` files."""

    def __init__(self, cache_dir: str | Path, *, swap_lr: bool = True, max_open: int = 64) -> None:
        self.cache_dir = Path(cache_dir)
        self.paths = sorted(self.cache_dir.glob(SHARD_GLOB))  # temp files start with "." and never match
        if not self.paths:
            raise TeacherCacheError(f"teacher cache {self.cache_dir}: no {SHARD_GLOB} files "
                                    f"(run `pipeline teacher-cache` first)")
        self.swap_lr = swap_lr
        self.max_open = max(1, max_open)
        self._meta = None
        self._keys: np.ndarray | None = None  # sorted utf-8 ids, fixed width
        self._loc: np.ndarray | None = None   # (n, 2) int32: shard, row
        self._perm: list[int] | None = None   # channel order of a mirrored map
        self._pid: int | None = None
        self._files: OrderedDict[int, h5py.File] = OrderedDict()  # this process's open shards, LRU order

    # -- pickling / fork safety ------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        state["_pid"] = None
        return state

    def _file(self, shard: int) -> h5py.File:
        pid = os.getpid()
        if self._pid != pid:  # first access in this process (or after fork): never reuse a parent's handle
            self._files = OrderedDict()
            self._pid = pid
        f = self._files.get(shard)
        if f is None:
            if len(self._files) >= self.max_open:  # thousands of shards × workers would exhaust file descriptors
                self._files.popitem(last=False)[1].close()
            f = self._files[shard] = h5py.File(self.paths[shard], "r")
        else:
            self._files.move_to_end(shard)
        return f

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files = OrderedDict()

    # -- metadata and index ----------------------------------------------------------------------
    @property
    def meta(self) -> ShardMeta:
        """The shards' :class:`~teacher.cache_format.ShardMeta` (checked equal across shards)."""
        if self._meta is None:
            self._build_index()
        return self._meta

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def map_size(self) -> int:
        return self.meta.map_size

    def _build_index(self) -> None:
        keys, locs, meta = [], [], None
        for s, path in enumerate(self.paths):
            try:
                f = h5py.File(path, "r")  # short-lived: nothing stays open in this process
            except OSError as exc:
                raise TeacherCacheError(f"teacher-cache shard {path}: cannot be opened as HDF5 ({exc}); run "
                                        f"`pipeline status --verify`, then `pipeline run` rebuilds it") from None
            with f:
                m = read_meta(f)
                if meta is None:
                    meta = m
                elif (m.fingerprint, m.labels, m.map_size) != (meta.fingerprint, meta.labels, meta.map_size):
                    raise TeacherCacheError(
                        f"teacher cache {self.cache_dir}: {path.name} was written with a different fingerprint, "
                        f"label set or map size than {self.paths[0].name}; rebuild the cache")
                ids = f["clip_ids"][...]
                valid = f["valid"][...].astype(bool)
            rows = np.flatnonzero(valid)
            keys.append(np.asarray(ids[rows], dtype=bytes))
            locs.append(np.stack([np.full(len(rows), s, np.int32), rows.astype(np.int32)], axis=1))
        key_arr = np.concatenate(keys) if keys else np.zeros(0, dtype="S1")
        loc_arr = np.concatenate(locs) if locs else np.zeros((0, 2), np.int32)
        order = np.argsort(key_arr, kind="stable")
        self._keys, self._loc, self._meta = key_arr[order], loc_arr[order], meta
        self._perm = lr_swap_permutation(meta.labels) if self.swap_lr else None

    def _locate(self, clip_id: str) -> tuple[int, int] | None:
        if self._keys is None:
            self._build_index()
        key = clip_id.encode("utf-8")
        i = int(np.searchsorted(self._keys, key))
        if i < len(self._keys) and self._keys[i] == key:
            s, r = self._loc[i]
            return int(s), int(r)
        return None

    def __len__(self) -> int:
        if self._keys is None:
            self._build_index()
        return len(self._keys)

    def clip_ids(self) -> list[str]:
        """Every clip with a valid map, sorted."""
        if self._keys is None:
            self._build_index()
        return [k.decode("utf-8") for k in self._keys]

    def has(self, clip_id: str) -> bool:
        """True when the clip has a valid map (clips whose frame failed to decode are absent)."""
        return self._locate(clip_id) is not None

    def __contains__(self, clip_id: str) -> bool:
        return self.has(clip_id)

    # -- maps and targets ------------------------------------------------------------------------
    def map(self, clip_id: str) -> np.ndarray:
        """The full-frame map of a clip, float32 (C, H, W)."""
        loc = self._locate(clip_id)
        if loc is None:
            raise KeyError(f"teacher cache {self.cache_dir}: no valid map for clip {clip_id!r}")
        s, r = loc
        try:
            return self._file(s)["maps"][r].astype(np.float32)
        except (OSError, KeyError) as exc:  # fletcher32 mismatch, a damaged chunk, a shard deleted or replaced
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            what = "is missing" if not self.paths[s].exists() else f"checksum mismatch in row {r} ({first})"
            raise TeacherCacheError(f"teacher-cache shard {self.paths[s]}: {what}; run `pipeline status --verify` "
                                    f"to find damaged shards, then `pipeline run` rebuilds only those") from None

    def target(self, clip_id: str, box: Box, flip: bool, size: int | tuple[int, int]) -> torch.Tensor:
        """The teacher target for a clip cropped with ``box``, mirrored if ``flip``, at ``size`` = (h, w).

        float32 (C, h, w), each pixel a probability distribution.
        """
        m = torch.from_numpy(self.map(clip_id))[None]
        return resample_boxes(m, [box], size, [flip], self._perm)[0]

    def targets(self, clip_ids: Sequence[str], boxes: Sequence[Box], flips: Sequence[bool],
                size: int | tuple[int, int]) -> torch.Tensor:
        """Batched :meth:`target`: (B, C, h, w)."""
        maps = torch.from_numpy(np.stack([self.map(c) for c in clip_ids]))
        return resample_boxes(maps, boxes, size, flips, self._perm)
