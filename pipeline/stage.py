"""The stage engine: fingerprints, done/stale/missing, atomic builds, resumable partial state.

A stage's output lives in ``WORK/<kind>/<name>/<fp12>/``. It is built in
``WORK/<kind>/<name>/<fp12>.partial/`` (kept across crashes so long stages can resume from
their own state), ``stage.json`` is written last into it, and the folder is then renamed into
place. ``stage.json`` in the final folder is the only "done" marker.

``stage.json`` also lists every output file with its size (and the sha256 of each file that is not
HDF5; HDF5 files carry a fletcher32 checksum per chunk). ``status`` checks that the files are
there with those sizes; ``status --verify`` reads every byte. A stage whose output is damaged is
not done: the next build moves the folder back to ``.partial`` without the damaged files, so the
stage's own resume logic rebuilds only what is gone (a teacher cache rebuilds just the missing
shards). One build per stage at a time: a lock file beside the output holds the builder's PID.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline import completeness
from pipeline.core import distributed
from pipeline.core.code_digest import code_digests
from pipeline.core.config import Config, dump_toml
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import StageError
from pipeline.core.files import atomic_write_text
from pipeline.core.fingerprint import canonical_json, sha256_file, sha256_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class BuildOptions:
    """Command-line execution options of one build; they never enter the fingerprint.

    ``shard_index``/``num_shards``: a job-array task builds only shards i, i+n, ... of a sharded stage
    (teacher cache, transcode); both ``None`` for a whole build.
    """

    shard_index: int | None = None
    num_shards: int | None = None

    @property
    def sharded(self) -> bool:
        return self.num_shards is not None


@dataclass
class BuildResult:
    """What a stage's build returns: the summary recorded in ``stage.json``, and whether the stage is
    finished (``complete=False``: one shard of a job array is done, the stage is not; ``message`` says why)."""

    summary: dict[str, Any]
    complete: bool = True
    message: str = ""

    @classmethod
    def of_summary(cls, summary: dict[str, Any]) -> "BuildResult":
        """A library summary that carries its own ``complete``/``message`` (sharded stages)."""
        return cls(summary, complete=bool(summary.get("complete", True)), message=str(summary.get("message", "")))


@dataclass
class BuildContext:
    """What a stage's build function gets: where to write, its upstream outputs, the config."""

    stage: "Stage"
    out_dir: Path  # the .partial folder; survives a crash so the build can resume
    work_dir: Path
    config: Config
    dist: DistInfo
    upstream: dict[str, Path]  # upstream key ("manifest:hmdb51") -> its finished folder
    options: BuildOptions = field(default_factory=BuildOptions)
    fingerprint: str = ""  # the stage's fingerprint (the output folder's name is its first 12 characters)
    input_digests: dict[str, str] = field(default_factory=dict)  # the external inputs' digests, by name

    def input_digest(self, name: str) -> str:
        """The digest of external input ``name`` (e.g. ``"checkpoint"``), as in the fingerprint; "" if none."""
        return self.input_digests.get(name, "")

    def upstream_dir(self, kind: str) -> Path:
        for key, path in self.upstream.items():
            if key.split(":", 1)[0] == kind:
                return path
        raise StageError(f"stage {self.stage.key} has no upstream {kind!r}")


@dataclass
class Stage:
    """One node of the pipeline graph.

    ``semantic`` is the part of the config that changes the output; ``inputs`` computes digests
    of external inputs (files named in the config) once upstream outputs exist.
    """

    kind: str
    name: str
    version: int
    semantic: dict[str, Any]
    upstream: list["Stage"]
    build: Callable[[BuildContext], BuildResult]
    inputs: Callable[[dict[str, Path]], dict[str, str]] = lambda up: {}
    command: str = ""  # the CLI command that builds it, for messages
    parallel: bool = False  # True: every rank runs build (it splits the work); else rank 0 alone
    code: tuple[str, ...] = ()  # entry modules whose source (and imports') enters the fingerprint
    _components: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def upstream_dirs(self, work: Path) -> dict[str, Path]:
        return {u.key: u.out_dir(work) for u in self.upstream}

    def components(self, work: Path) -> dict[str, Any]:
        """Everything the fingerprint is made of (cached: the inputs are hashed once)."""
        if self._components is None:
            self._components = {
                "stage": self.kind,
                "version": self.version,
                "config": self.semantic,
                "upstream": {u.key: u.fingerprint(work) for u in self.upstream},
                "inputs": self.inputs(self.upstream_dirs(work)),
                "code": code_digests(self.code) if self.code else {},
            }
        return self._components

    def fingerprint(self, work: Path) -> str:
        return sha256_json(self.components(work))

    def out_dir(self, work: Path) -> Path:
        return work / self.kind / self.name / self.fingerprint(work)[:12]

    def partial_dir(self, work: Path) -> Path:
        return work / self.kind / self.name / (self.fingerprint(work)[:12] + ".partial")

    def is_done(self, work: Path) -> bool:
        return (self.out_dir(work) / STAGE_FILE).is_file()


# ----------------------------------------------------------------------------------------------
# Output integrity: what stage.json records about the files, and checks against it
# ----------------------------------------------------------------------------------------------

OUTPUTS_KEY = "outputs"
_HDF5_SUFFIXES = (".h5", ".hdf5")
# Videos are hashed too (bit flips in a copy must not pass --verify); the cost is measured by
# bench/input_hash.py and stated in docs/reliability.md.
_UNHASHED_SUFFIXES = _HDF5_SUFFIXES
# A file whose mtime changed but not its size is re-hashed by the cheap check when it is this small
# (a hand-edited manifest label); bigger ones are left to --verify.
_REHASH_BYTES = 64 << 20


def _output_files(folder: Path) -> list[Path]:
    """Every file of a stage folder except ``stage.json`` itself, sorted (relative paths)."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name != STAGE_FILE)


def record_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"size": n, "mtime_ns": t, "sha256": hex}}``; HDF5 files get no sha256 (their chunks
    carry fletcher32 checksums, checked by reading them, which costs no extra pass at build time)."""
    out: dict[str, dict[str, Any]] = {}
    for rel in _output_files(folder):
        path = folder / rel
        st = path.stat()
        entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if path.suffix.lower() not in _UNHASHED_SUFFIXES:
            entry["sha256"] = sha256_file(path)
        out[rel.as_posix()] = entry
    return out


def check_outputs(folder: Path, record: dict[str, Any]) -> list[tuple[str, str]]:
    """Cheap check (one ``stat`` per file): ``[(relpath, problem)]`` for files gone or resized; a small
    file whose mtime changed is re-hashed (an edit that kept the size, e.g. a manifest label)."""
    problems = []
    for rel, entry in sorted((record.get(OUTPUTS_KEY) or {}).items()):
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            problems.append((rel, "missing"))
            continue
        if st.st_size != entry.get("size"):
            problems.append((rel, f"size {st.st_size} bytes, {entry.get('size')} when built"))
        elif entry.get("mtime_ns") not in (None, st.st_mtime_ns) and "sha256" in entry \
                and st.st_size <= _REHASH_BYTES and sha256_file(path) != entry["sha256"]:
            problems.append((rel, "content changed since it was built (same size, sha256 differs)"))
    return problems


def _verify_hdf5(path: Path, block: int = 64) -> str | None:
    """Read every dataset of an HDF5 file so HDF5 checks each chunk's fletcher32 checksum."""
    import h5py
    import numpy as np

    def read(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape and obj.size:
            for start in range(0, obj.shape[0], block):
                np.asarray(obj[start:start + block])
        elif isinstance(obj, h5py.Dataset):
            obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(read)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"checksum mismatch or unreadable HDF5 ({first})"
    return None


def verify_outputs(folder: Path, record: dict[str, Any]) -> list[tuple[str, str]]:
    """Full check: sizes, then every byte (sha256, or every HDF5 chunk's fletcher32)."""
    problems = check_outputs(folder, record)
    bad = {rel for rel, _ in problems}
    videos: dict[str, dict[str, Any]] = {}
    for rel, entry in sorted((record.get(OUTPUTS_KEY) or {}).items()):
        if rel in bad:
            continue
        path = folder / rel
        if path.suffix.lower() in _HDF5_SUFFIXES:
            why = _verify_hdf5(path)
            if why:
                problems.append((rel, why))
        elif "sha256" in entry and sha256_file(path) != entry["sha256"]:
            problems.append((rel, "checksum mismatch (sha256 differs from the one recorded at build time)"))
        elif completeness.is_video(path):
            videos[rel] = entry
    return problems + completeness.verify_videos(folder, videos)


def _remove_damaged(out: Path, partial: Path, damaged: list[str]) -> None:
    """Turn a damaged (or ``stage.json``-less) output folder back into the stage's ``.partial`` folder,
    without the damaged files, so the stage's own resume logic rebuilds only what is gone."""
    root = out.resolve()
    for rel in damaged:
        path = (out / rel).resolve()
        if path.is_relative_to(root) and path != root:  # a hand-edited stage.json must not reach outside
            path.unlink(missing_ok=True)
    (out / STAGE_FILE).unlink(missing_ok=True)
    if partial.exists():
        shutil.rmtree(partial)
    out.rename(partial)


def demote_damaged(stage: "Stage", work: Path, problems: list[tuple[str, str]]) -> Path:
    """Mark a finished stage as not done because of ``problems``; returns its ``.partial`` folder."""
    out, partial = stage.out_dir(work), stage.partial_dir(work)
    with stage_lock(stage, work):
        _remove_damaged(out, partial, [rel for rel, _ in problems])
    log.warning("%s: %d damaged file(s) removed (first: %s: %s); the next run rebuilds only those",
                stage.key, len(problems), problems[0][0], problems[0][1])
    return partial


def verify_stage(stage: "Stage", work: Path, *, repair: bool = True) -> list[tuple[str, str]]:
    """``status --verify``: every byte of a finished stage against stage.json; with ``repair``, a
    damaged stage is moved back to ``.partial`` so that the next run rebuilds only its damaged files."""
    out = stage.out_dir(work)
    record = read_record(out)
    problems = verify_outputs(out, record)
    changed = completeness.verify_sources(out)  # inputs whose content changed: the whole stage is stale
    if changed and repair:
        demote_damaged(stage, work, [(completeness.SOURCES_FILE, changed[0][1])])  # rebuilt whole
    elif problems and repair:
        demote_damaged(stage, work, problems)
    return changed + problems


# ----------------------------------------------------------------------------------------------
# One builder per stage
# ----------------------------------------------------------------------------------------------

def lock_path(stage: "Stage", work: Path) -> Path:
    """Beside the output folders, never inside one (a lock file must not become an output)."""
    return work / stage.kind / stage.name / f".{stage.fingerprint(work)[:12]}.lock"


@contextmanager
def stage_lock(stage: "Stage", work: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the stage's build lock (``flock``: released by the kernel even on SIGKILL).

    ``shared``: job-array shards of one stage build side by side, but never beside a full build.
    """
    path = lock_path(stage, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise StageError(f"stage {stage.key} is being built by PID {pid} (lock {path}); wait for it to "
                             f"finish or stop that process, then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Status
# ----------------------------------------------------------------------------------------------

@dataclass
class StageStatus:
    stage: Stage
    state: str  # "done" | "damaged" | "stale" | "missing"
    reasons: list[str]
    path: Path | None


def _latest_record(folder: Path) -> dict[str, Any] | None:
    """The newest finished output of a stage, whatever its fingerprint."""
    best: tuple[float, dict] | None = None
    if not folder.is_dir():
        return None
    for child in folder.iterdir():
        sj = child / STAGE_FILE
        if child.is_dir() and not child.name.endswith(".partial") and sj.is_file():
            try:
                rec = json.loads(sj.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            mt = sj.stat().st_mtime
            if best is None or mt > best[0]:
                best = (mt, rec)
    return best[1] if best else None


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if canonical_json(old.get(k)) != canonical_json(new.get(k)):
                out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")]


def explain_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a previous output no longer matches: named config keys, upstreams and inputs."""
    reasons = []
    if old.get("version") != new.get("version"):
        reasons.append(f"stage version {old.get('version')} -> {new.get('version')}")
    for key in _diff_keys(old.get("config", {}), new.get("config", {})):
        o = _dig(old.get("config", {}), key)
        n = _dig(new.get("config", {}), key)
        reasons.append(f"config {key}: {canonical_json(o)} -> {canonical_json(n)}")
    for key in sorted(set(old.get("upstream", {})) | set(new.get("upstream", {}))):
        if old.get("upstream", {}).get(key) != new.get("upstream", {}).get(key):
            reasons.append(f"upstream {key} changed")
    for key in sorted(set(old.get("inputs", {})) | set(new.get("inputs", {}))):
        if old.get("inputs", {}).get(key) != new.get("inputs", {}).get(key):
            reasons.append(f"input {key} changed")
    old_code, new_code = old.get("code", {}), new.get("code", {})
    code = [f"code {path} {'added' if path not in old_code else 'removed' if path not in new_code else 'changed'}"
            for path in sorted(set(old_code) | set(new_code)) if old_code.get(path) != new_code.get(path)]
    if len(code) > 4:  # e.g. an output built before code entered fingerprints: name a few, count the rest
        code = code[:3] + [f"and {len(code) - 3} more source files"]
    reasons += code
    return reasons or ["fingerprint changed"]


def _dig(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _damage(out: Path) -> list[tuple[str, str]]:
    """The cheap integrity check of a finished folder (an unreadable stage.json is damage too)."""
    try:
        record = read_record(out)
    except (OSError, ValueError) as exc:
        return [(STAGE_FILE, f"unreadable ({exc})")]
    return check_outputs(out, record)


def stage_status(stage: Stage, work: Path) -> StageStatus:
    """done, stale (naming what changed since the last finished output), partial or missing."""
    try:
        out = stage.out_dir(work)
    except (OSError, StageError) as exc:
        return StageStatus(stage, "missing", [f"cannot fingerprint yet: {exc}"], None)
    if (out / STAGE_FILE).is_file():
        problems = _damage(out)
        if not problems:
            return StageStatus(stage, "done", [], out)
        return StageStatus(stage, "damaged", [f"{rel}: {why}" for rel, why in problems[:5]]
                           + [f"{len(problems)} damaged file(s); the next run rebuilds only those"], out)
    reasons = []
    prev = _latest_record(work / stage.kind / stage.name)
    if prev is not None:
        reasons = explain_change(prev.get("components", {}), stage.components(work))
    if stage.partial_dir(work).is_dir():
        reasons.append("a run stopped part-way; the next run resumes it")
    return StageStatus(stage, "stale" if prev is not None else "missing", reasons, out)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "numpy", "h5py", "cv2", "torchvision"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    from pipeline import __version__
    out["pipeline"] = __version__
    return out


def _ensure_upstream(stage: Stage, work: Path, config: Config, dist: DistInfo, build_upstream: bool,
                     dry_run: bool, options: BuildOptions) -> None:
    """Every upstream done, building missing ones first when ``build_upstream``."""
    for up in stage.upstream:
        st = stage_status(up, work)
        # rank 0 decides: on several nodes each rank's view of a shared file system may lag
        state, reasons = distributed.broadcast_object((st.state, st.reasons))
        if state != "done":
            if not build_upstream:
                why = f" ({'; '.join(reasons)})" if reasons else ""
                raise StageError(
                    f"{stage.key} needs {up.key}, which is {state}{why}. "
                    f"Build it first with `{up.command}`, or pass --build-upstream.")
            if dry_run:
                log.info("would build %s (%s)", up.key, state)
                _preflight(up, config)
                continue
            run_stage(up, work, config, dist=dist, force=False, build_upstream=True, options=options)


def _preflight(stage: Stage, config: Config) -> None:
    """A dry run reports what the build would fail on that the config already shows (pipeline/preflight.py)."""
    from pipeline.preflight import check

    check(stage.key, stage.kind, config)


def _is_done(out: Path) -> bool:
    return (out / STAGE_FILE).is_file() and not _damage(out)


def _lock_all_ranks(stage: Stage, work: Path, dist: DistInfo, stack: ExitStack, shared: bool) -> None:
    """Rank 0 takes the stage lock; a refusal is raised on every rank (none may wait at a barrier)."""
    refusal = None
    if dist.is_main:
        try:
            stack.enter_context(stage_lock(stage, work, shared=shared))
        except (StageError, OSError) as exc:
            refusal = exc
    message = distributed.broadcast_object(None if refusal is None else str(refusal))
    if refusal is not None:
        raise refusal
    if message is not None:
        raise StageError(message)


def _prepare_partial(stage: Stage, work: Path, config: Config, force: bool) -> Path:
    """The ``.partial`` folder to build in: a damaged or ``stage.json``-less output becomes it
    (minus the damaged files), so the build resumes instead of failing on "Directory not empty"."""
    out, partial = stage.out_dir(work), stage.partial_dir(work)
    if out.exists() and not force and not _is_done(out):
        problems = _damage(out) if (out / STAGE_FILE).is_file() else []
        why = f"{len(problems)} damaged file(s), e.g. {problems[0][0]}: {problems[0][1]}" if problems else \
            "no stage.json (an unfinished or interrupted output)"
        log.warning("%s: %s; resuming from the rest of %s", stage.key, why, out)
        _remove_damaged(out, partial, [rel for rel, _ in problems])
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial / "config.toml", dump_toml(config))
    return partial


def _finish(stage: Stage, work: Path, partial: Path, summary: dict[str, Any], elapsed: float,
            dist: DistInfo) -> Path:
    """Mark a stage done: record its outputs (sizes, checksums) in stage.json, then rename the folder
    into place. The one place where a finished build's outputs are looked at before stage.json exists."""
    out = stage.out_dir(work)
    outputs = completeness.outputs_or_fail(stage.key, partial, record_outputs)
    record = {
        "stage": stage.kind,
        "name": stage.name,
        "fingerprint": stage.fingerprint(work),
        "components": stage.components(work),
        "summary": summary,
        "timings": {"build_s": round(elapsed, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "versions": _versions(),
        "world_size": dist.world_size,
        OUTPUTS_KEY: outputs,
    }
    if out.exists():  # --force, or a leftover folder without stage.json
        trash = out.with_name(out.name + f".old-{os.getpid()}")
        out.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    atomic_write_text(partial / STAGE_FILE, json.dumps(record, indent=2, sort_keys=True, default=str))
    partial.rename(out)
    log.info("%s done in %.1f s -> %s", stage.key, elapsed, out)
    return out


def run_stage(stage: Stage, work: Path, config: Config, *, dist: DistInfo | None = None,
              force: bool = False, build_upstream: bool = False, dry_run: bool = False,
              options: BuildOptions | None = None) -> Path | None:
    """Build ``stage`` unless its output is done (and intact); return its folder.

    Upstream stages must be done, unless ``build_upstream`` (then they are built first). Under
    torchrun every rank calls this: rank 0 decides and holds the stage's lock, every rank builds (a
    build splits its own work across ranks), rank 0 writes ``stage.json`` and renames the folder
    into place.
    """
    dist = dist or distributed.current()
    options = options or BuildOptions()
    _ensure_upstream(stage, work, config, dist, build_upstream, dry_run, options)
    out = stage.out_dir(work)
    fingerprints = distributed.all_gather_objects(stage.fingerprint(work))
    if len(set(fingerprints)) != 1:
        raise StageError(f"{stage.key}: ranks disagree on the fingerprint ({', '.join(f[:12] for f in fingerprints)}); "
                         "every rank must see the same config, files and checkpoints")
    if distributed.broadcast_object(_is_done(out)) and not force:
        log.info("%s is up to date (%s)", stage.key, out)
        return out
    if dry_run:
        st = stage_status(stage, work)
        log.info("would build %s (%s%s)", stage.key, st.state, f": {'; '.join(st.reasons)}" if st.reasons else "")
        _preflight(stage, config)
        return None

    with ExitStack() as stack:
        _lock_all_ranks(stage, work, dist, stack, shared=options.sharded)
        # The lock's previous holder may have just finished this very stage.
        if distributed.broadcast_object(_is_done(out)) and not force:
            log.info("%s was finished by another process (%s)", stage.key, out)
            return out
        partial = stage.partial_dir(work)
        if dist.is_main:
            _prepare_partial(stage, work, config, force)
        distributed.barrier()

        log.info("building %s -> %s", stage.key, out)
        ctx = BuildContext(stage=stage, out_dir=partial, work_dir=work, config=config, dist=dist,
                           upstream=stage.upstream_dirs(work), options=options,
                           fingerprint=stage.fingerprint(work), input_digests=dict(stage.components(work)["inputs"]))
        t0 = time.time()
        result = BuildResult({})
        if stage.parallel or dist.is_main:
            result = stage.build(ctx)
        # a rank-0-only stage (manifest probing: hours) or a rank with more shards keeps the others
        # waiting: a long-timeout gloo group, not the 30-minute default one (pipeline/core/distributed.py)
        result = distributed.broadcast_after_wait(result)
        elapsed = time.time() - t0

        if not result.complete:
            log.info("%s: part of the work is done (%s); the stage is finished by a run over all shards",
                     stage.key, result.message)
            return None
        refused: str | None = None
        if dist.is_main:
            try:
                _finish(stage, work, partial, result.summary, elapsed, dist)
            except StageError as exc:  # outputs refused at mark-done (pipeline/completeness.py)
                refused = str(exc)
        refused = distributed.broadcast_object(refused)  # every rank fails alike, none waits at a barrier
        if refused is not None:
            raise StageError(refused)
    return out


def read_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
