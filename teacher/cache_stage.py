"""The teacher-cache stage: the teacher on every anchor frame of the clip plan, into verified HDF5 shards.

Work splits by shard: shard ``i`` holds plan clips ``[i*S, (i+1)*S)``; under torchrun rank ``r`` of
``W`` takes the shards ``r, r+W, …`` (of those its job owns, with ``--shard-index i --num-shards
n`` a job owns ``i, i+n, …``). Each shard is streamed batch by batch into a temporary file,
verified, and renamed; a rerun skips finished shards (cheap check) and removes stale temporary
files, so a crash costs at most the shards in flight. When every shard exists, a final pass
verifies them all (split across ranks), rank 0 writes ``failed.jsonl`` from the shards' own
failure records, and the call reports ``complete=True``.

DataLoader workers decode while the teacher runs. One item is one video's anchors within one
shard, read with a single forward decode (reading them one clip at a time would decode the
video from frame 0 once per anchor). Inference batches are fixed blocks of ``batch_size``
consecutive rows of a shard, so a shard's maps do not depend on how the work was split or resumed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pipeline.core import distributed
from pipeline.core.config import ClipsConfig, TeacherConfig
from pipeline.core.distributed import DistInfo, job_share
from pipeline.core.errors import TeacherCacheError
from pipeline.core.files import atomic_write_text
from pipeline.core.lifetime import DieWithParent, stop_loader_workers
from pipeline.core.progress import MetricsLog, Progress
from pipeline.core.runtime import stage_device
from teacher.backends import TeacherBackend, backend_labels, input_loader, make_backend
from teacher.cache_format import (ShardMeta, ShardWriter, finalize_shard, num_shards as count_shards, shard_failures,
                                  shard_is_current, shard_name, shard_range, temp_name, verify_shard)

log = logging.getLogger(__name__)

FAILED_FILE = "failed.jsonl"
METRICS_FILE = "metrics.jsonl"


def assigned_shards(total_shards: int, dist: DistInfo, shard_index: int | None = None,
                    num_shards: int | None = None) -> list[int]:
    """The shards this process builds: the job's share (``i, i+n, …``), then round-robin over ranks."""
    return job_share(total_shards, dist, shard_index, num_shards)


@dataclass(frozen=True)
class _Group:
    """One video's consecutive anchors inside one shard: rows ``row0 .. row0+len(frames)-1``."""

    shard: int
    row0: int
    video: int
    frames: tuple[int, ...]


class _AnchorInputs(Dataset):
    """Teacher inputs per group, fetched in DataLoader workers; a failure becomes a per-clip error."""

    def __init__(self, groups: list[_Group], paths: list[str], loader: Callable) -> None:
        self.groups, self.paths, self.loader = groups, paths, loader

    def __len__(self) -> int:
        return len(self.groups)

    def _one(self, path: str, frames: Sequence[int]) -> tuple[list[np.ndarray | None], list[str]]:
        try:
            arr = self.loader(Path(path), list(frames))
            if len(arr) != len(frames):
                raise ValueError(f"{path}: loader returned {len(arr)} inputs for {len(frames)} frames")
            if arr.ndim < 3 or min(arr.shape[1:3]) < 2:
                raise ValueError(f"{path}: decoded input of shape {arr.shape[1:]} is too small for the teacher")
            return [np.ascontiguousarray(a) for a in arr], [""] * len(frames)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded per clip; the job goes on
            return [None] * len(frames), [f"{type(exc).__name__}: {exc}"] * len(frames)

    def __getitem__(self, i: int) -> tuple[_Group, list[np.ndarray | None], list[str]]:
        g = self.groups[i]
        inputs, errors = self._one(self.paths[g.video], g.frames)
        if inputs[0] is None and len(g.frames) > 1:  # find which anchors fail (e.g. a truncated video)
            inputs, errors = [], []
            for f in g.frames:
                x, e = self._one(self.paths[g.video], [f])
                inputs += x
                errors += e
        return g, inputs, errors


def _identity(item: Any) -> Any:
    return item


class _ShardBuilder:
    """Streams rows of the shards being built into their temporary files, in fixed row blocks."""

    def __init__(self, out_dir: Path, meta: ShardMeta, plan_ids: list[str], plan_frames: list[int],
                 shard_size: int, batch_size: int, on_done: Callable[[int, int, int, float], None]) -> None:
        self.out_dir, self.meta = out_dir, meta
        self.ids, self.frames = plan_ids, plan_frames
        self.shard_size, self.batch_size = shard_size, batch_size
        self.on_done = on_done
        self.shard: int | None = None
        self.writer: ShardWriter | None = None
        self.pending: list[tuple[int, np.ndarray | None, str]] = []
        self.backend: TeacherBackend | None = None
        self.failed = 0

    def _open(self, shard: int) -> None:
        start, stop = shard_range(shard, self.shard_size, len(self.ids))
        self.shard, self.start, self.stop = shard, start, stop
        self.failed, self.t0 = 0, time.perf_counter()
        self.writer = ShardWriter(self.out_dir / temp_name(shard), self.meta, self.ids[start:stop],
                                  self.frames[start:stop], shard_index=shard, first_clip=start)

    def add(self, shard: int, row: int, x: np.ndarray | None, error: str) -> int:
        """Queue one row; returns the number of rows written by the flush it triggered (0 if none)."""
        if self.shard != shard:
            if self.writer is not None:
                raise RuntimeError(f"shard {self.shard} incomplete when shard {shard} began")
            self._open(shard)
        self.pending.append((row, x, error))
        n = self.stop - self.start
        if len(self.pending) == self.batch_size or row == n - 1:
            return self._flush()
        return 0

    def _flush(self) -> int:
        rows = self.pending
        self.pending = []
        ok = [i for i, (_, x, _) in enumerate(rows) if x is not None]
        c, s = self.meta.num_classes, self.meta.map_size
        maps = np.zeros((len(rows), c, s, s), np.float32)
        valid = np.zeros(len(rows), bool)
        errors = [e for _, _, e in rows]
        if ok:  # a teacher error here is systemic (config, device), not a bad clip: let it propagate
            maps[ok] = self.backend.maps([rows[i][1] for i in ok]).numpy()
            valid[ok] = True
        self.failed += int((~valid).sum())
        self.writer.write(rows[0][0], maps, valid, errors)
        if rows[-1][0] == self.stop - self.start - 1:
            self._finish()
        return len(rows)

    def _finish(self) -> None:
        shard = self.shard
        self.writer.close()
        self.writer, self.shard = None, None
        finalize_shard(self.out_dir / temp_name(shard), self.out_dir / shard_name(shard),
                       expected_ids=self.ids[self.start:self.stop], fingerprint=self.meta.fingerprint)
        self.on_done(shard, self.stop - self.start, self.failed, time.perf_counter() - self.t0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _groups(plan: Sequence, shards: list[int], shard_size: int) -> list[_Group]:
    out = []
    for s in shards:
        start, stop = shard_range(s, shard_size, len(plan))
        k = start
        while k < stop:
            v = plan[k].video_index
            j = k
            while j < stop and plan[j].video_index == v:
                j += 1
            out.append(_Group(s, k - start, v, tuple(plan[i].frame for i in range(k, j))))
            k = j
    return out


@dataclass
class _CachePlan:
    """What every step of a build needs: the manifest, the clip plan, and the shards' layout and metadata."""

    manifest: Any
    plan: list
    ids: list[str]
    frames: list[int]
    size: int
    total: int
    meta: ShardMeta
    label_set: str

    def shard_ids(self, s: int) -> list[str]:
        a, b = shard_range(s, self.size, len(self.plan))
        return self.ids[a:b]


def _load_plan(manifest_dir: Path, teacher: TeacherConfig, clips: ClipsConfig, fingerprint: str,
               checkpoint_sha256: str) -> _CachePlan:
    from data_manifests.clip_plan import build_clip_plan
    from data_manifests.manifest import load_manifest

    manifest = load_manifest(manifest_dir)
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    if not plan:
        raise TeacherCacheError(f"teacher-cache: the clip plan is empty: manifest {manifest_dir} has no usable "
                                f"videos in splits {list(clips.splits)}")
    label_set, labels = backend_labels(teacher.backend, teacher.labels)
    meta = ShardMeta(fingerprint=fingerprint, teacher=teacher.backend, label_set=label_set, labels=tuple(labels),
                     map_size=teacher.map_size, checkpoint_sha256=checkpoint_sha256)
    return _CachePlan(manifest=manifest, plan=plan, ids=[c.clip_id for c in plan], frames=[int(c.frame) for c in plan],
                      size=teacher.shard_size, total=count_shards(len(plan), teacher.shard_size), meta=meta,
                      label_set=label_set)


def _shards_to_build(out_dir: Path, cp: _CachePlan, mine: list[int]) -> list[int]:
    """This process's shards that are missing or not current (stale temporary files are removed)."""
    todo: list[int] = []
    for s in mine:
        tmp, final = out_dir / temp_name(s), out_dir / shard_name(s)
        if tmp.exists():
            log.info("teacher-cache: removing stale temporary shard %s", tmp.name)
            tmp.unlink()
        if final.exists():
            if shard_is_current(final, cp.meta.fingerprint, cp.shard_ids(s)):
                continue
            log.warning("teacher-cache: %s does not match this cache's fingerprint/clip plan; rebuilding it",
                        final.name)
            final.unlink()
        todo.append(s)
    return todo


@dataclass
class _BuildResult:
    computed: int = 0
    failed: int = 0
    seconds: float = 0.0
    built: set[int] = field(default_factory=set)


def _feed(builder: _ShardBuilder, batches: Any, res: _BuildResult, bar: Progress, shards: int) -> None:
    """Hand every decoded anchor input to the shard builder, counting the clips whose maps it wrote."""
    for g, inputs, errors in batches:
        for k, (x, e) in enumerate(zip(inputs, errors)):
            done = builder.add(g.shard, g.row0 + k, x, e)
            if done:
                res.computed += done
                bar.update(done, postfix=f"shard {len(res.built)}/{shards} failed {res.failed}")


def _build_shards(out_dir: Path, cp: _CachePlan, todo: list[int], teacher: TeacherConfig, clips: ClipsConfig,
                  dist: DistInfo, metrics: MetricsLog, checkpoint_sha256: str) -> _BuildResult:
    """Decode (workers) and run the teacher (this process) over the rows of ``todo``, shard by shard."""
    res = _BuildResult()

    def on_done(shard: int, n: int, failed: int, seconds: float) -> None:
        res.built.add(shard)
        res.failed += failed
        metrics.write(event="shard", shard=shard, clips=n, failed=failed, seconds=round(seconds, 3),
                      clips_per_s=round(n / max(seconds, 1e-9), 3), rank=dist.rank)

    groups = _groups(cp.plan, todo, cp.size)
    paths = [str(cp.manifest.abspath(e)) for e in cp.manifest.entries]
    workers = teacher.workers
    prefetch = max(2, -(-teacher.batch_size // max(1, workers * clips.anchors_per_video)))  # ≥ one batch ahead
    loader = DataLoader(_AnchorInputs(groups, paths, input_loader(teacher.backend)), batch_size=None,
                        shuffle=False, num_workers=workers, collate_fn=_identity,
                        prefetch_factor=prefetch if workers else None,
                        worker_init_fn=DieWithParent() if workers else None)
    builder = _ShardBuilder(out_dir, cp.meta, cp.ids, cp.frames, cp.size, teacher.batch_size, on_done)
    n_todo = sum(b - a for a, b in (shard_range(s, cp.size, len(cp.plan)) for s in todo))
    it = iter(loader)  # workers start decoding while the model loads
    try:
        builder.backend = make_backend(teacher.backend, checkpoint=teacher.checkpoint, labels=teacher.labels,
                                       map_size=teacher.map_size, input_size=teacher.input_size,
                                       device=stage_device(teacher.device, dist), amp=teacher.amp,
                                       flip=teacher.flip_test, softness=teacher.softness,
                                       sha256=checkpoint_sha256 or None)
        t0 = time.perf_counter()  # throughput excludes loading the model
        with Progress(n_todo, "teacher-cache", "clip", enabled=dist.is_main) as bar:
            _feed(builder, it, res, bar, len(todo))
    finally:
        builder.close()
        stop_loader_workers(it)  # after an error a worker may be stuck handing over a batch: never wait on it
        del it
    res.seconds = time.perf_counter() - t0
    return res


def _final_pass(out_dir: Path, cp: _CachePlan, dist: DistInfo, built: set[int]) -> list[dict]:
    """Every shard fully verified (except those this rank verified moments ago), split across ranks;
    returns the failure records of all shards. A bad shard is removed and the call fails."""
    problems, failures = [], []
    for s in range(cp.total)[dist.rank::dist.world_size]:
        path = out_dir / shard_name(s)
        try:
            verify_shard(path, expected_ids=cp.shard_ids(s), fingerprint=cp.meta.fingerprint, full=s not in built)
            for rec in shard_failures(path):
                entry = cp.manifest.entries[cp.plan[s * cp.size + rec["row"]].video_index]
                failures.append({"clip_id": rec["clip_id"], "video_id": entry.id, "path": entry.path,
                                 "frame": rec["frame"], "shard": s, "error": rec["error"]})
        except TeacherCacheError as exc:
            problems.append(str(exc))
            path.unlink(missing_ok=True)
    results = distributed.all_gather_objects((problems, failures))
    problems = [p for r in results for p in r[0]]
    if problems:
        raise TeacherCacheError(f"teacher-cache: {len(problems)} shard(s) failed verification and were removed; "
                                f"rerun teacher-cache to rebuild them. First: {problems[0]}")
    return sorted((f for r in results for f in r[1]), key=lambda f: (f["shard"], f["clip_id"]))


def build_teacher_cache(manifest_dir: Path, out_dir: Path, teacher: TeacherConfig, clips: ClipsConfig, *,
                        dist: DistInfo, fingerprint: str, checkpoint_sha256: str = "",
                        shard_index: int | None = None, num_shards: int | None = None) -> dict:
    """Build (or finish) the teacher cache in ``out_dir``; returns a JSON-able summary.

    ``complete`` is False when this call owned only some shards (job arrays) and others are still
    missing; the call that finds every shard present verifies them all and writes ``failed.jsonl``.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cp = _load_plan(manifest_dir, teacher, clips, fingerprint, checkpoint_sha256)
    mine = assigned_shards(cp.total, dist, shard_index, num_shards)
    todo = _shards_to_build(out_dir, cp, mine)
    log.info("teacher-cache: %d clips in %d shards; this process owns %d, %d to build",
             len(cp.plan), cp.total, len(mine), len(todo))

    metrics = MetricsLog(out_dir / METRICS_FILE, enabled=dist.is_main)
    res = _build_shards(out_dir, cp, todo, teacher, clips, dist, metrics, checkpoint_sha256) if todo else _BuildResult()
    distributed.barrier()
    gathered = distributed.all_gather_objects((res.computed, res.seconds, sorted(res.built)))
    computed_all = sum(g[0] for g in gathered)
    t_all = max(g[1] for g in gathered)
    summary: dict[str, Any] = {
        "clips": len(cp.plan), "shards": cp.total, "teacher": teacher.backend, "labels": cp.label_set,
        "num_classes": cp.meta.num_classes, "map_size": teacher.map_size,
        "shards_built": sum(len(g[2]) for g in gathered), "clips_computed": computed_all,
        "clips_per_s": round(computed_all / t_all, 3) if t_all > 0 else 0.0,
    }
    missing = [s for s in range(cp.total) if not (out_dir / shard_name(s)).exists()]
    if missing:
        summary.update(complete=False, shards_missing=len(missing), failed=res.failed,
                       seconds=round(time.perf_counter() - t_start, 3))
        log.info("teacher-cache: %d of %d shards still missing (e.g. %s); run the remaining shard jobs, then "
                 "teacher-cache once more to finish", len(missing), cp.total, shard_name(missing[0]))
        metrics.write(event="summary", **summary)
        metrics.close()
        return summary

    failures = _final_pass(out_dir, cp, dist, res.built)
    if dist.is_main:
        atomic_write_text(out_dir / FAILED_FILE, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
        for tmp in out_dir.glob(".shard-*.h5.tmp"):
            tmp.unlink(missing_ok=True)
    distributed.barrier()
    summary.update(complete=True, failed=len(failures), valid_clips=len(cp.plan) - len(failures),
                   seconds=round(time.perf_counter() - t_start, 3))
    metrics.write(event="summary", **summary)
    metrics.close()
    return summary
