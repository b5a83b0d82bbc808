"""The stage engine: fingerprints, done/stale/missing, atomic builds, resumable partial state.

A stage's output lives in ``WORK/<kind>/<name>/<fp12>/``. It is built in
``WORK/<kind>/<name>/<fp12>.partial/`` (kept across crashes so long stages can resume from
their own state), ``stage.json`` is written last into it, and the folder is then renamed into
place. ``stage.json`` in the final folder is the only "done" marker.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline import distributed
from pipeline.config import Config, dump_toml
from pipeline.distributed import DistInfo
from pipeline.fingerprint import atomic_write_text, canonical_json, sha256_json

log = logging.getLogger("pipeline")

STAGE_FILE = "stage.json"


class StageError(RuntimeError):
    """A stage cannot run: an upstream is missing or stale, or its inputs are unusable."""


@dataclass
class BuildContext:
    """What a stage's build function gets: where to write, its upstream outputs, the config."""

    stage: "Stage"
    out_dir: Path  # the .partial folder; survives a crash so the build can resume
    work_dir: Path
    config: Config
    dist: DistInfo
    upstream: dict[str, Path]  # upstream key ("manifest:hmdb51") -> its finished folder
    options: dict[str, Any] = field(default_factory=dict)  # command-line execution options

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
    build: Callable[[BuildContext], dict[str, Any]]
    inputs: Callable[[dict[str, Path]], dict[str, str]] = lambda up: {}
    command: str = ""  # the CLI command that builds it, for messages
    parallel: bool = False  # True: every rank runs build (it splits the work); else rank 0 alone
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
# Status
# ----------------------------------------------------------------------------------------------

@dataclass
class StageStatus:
    stage: Stage
    state: str  # "done" | "stale" | "missing" | "partial"
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
    return reasons or ["fingerprint changed"]


def _dig(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def stage_status(stage: Stage, work: Path) -> StageStatus:
    """done, stale (naming what changed since the last finished output), partial or missing."""
    try:
        out = stage.out_dir(work)
    except (OSError, StageError) as exc:
        return StageStatus(stage, "missing", [f"cannot fingerprint yet: {exc}"], None)
    if (out / STAGE_FILE).is_file():
        return StageStatus(stage, "done", [], out)
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


def run_stage(stage: Stage, work: Path, config: Config, *, dist: DistInfo | None = None,
              force: bool = False, build_upstream: bool = False, dry_run: bool = False,
              options: dict[str, Any] | None = None, _top: bool = True) -> Path | None:
    """Build ``stage`` unless its output is done; return its folder.

    Upstream stages must be done, unless ``build_upstream`` (then they are built first). Under
    torchrun every rank calls this: rank 0 decides, every rank builds (a build splits its own
    work across ranks), rank 0 writes ``stage.json`` and renames the folder into place.
    """
    dist = dist or distributed.current()
    for up in stage.upstream:
        st = stage_status(up, work)
        if st.state != "done":
            if not build_upstream:
                why = f" ({'; '.join(st.reasons)})" if st.reasons else ""
                raise StageError(
                    f"{stage.key} needs {up.key}, which is {st.state}{why}. "
                    f"Build it first with `{up.command}`, or pass --build-upstream.")
            if dry_run:
                log.info("would build %s (%s)", up.key, st.state)
                continue
            run_stage(up, work, config, dist=dist, force=False, build_upstream=True, options=options, _top=False)

    out = stage.out_dir(work)
    fingerprints = distributed.all_gather_objects(stage.fingerprint(work))
    if len(set(fingerprints)) != 1:
        raise StageError(f"{stage.key}: ranks disagree on the fingerprint ({', '.join(f[:12] for f in fingerprints)}); "
                         "every rank must see the same config, files and checkpoints")
    done = distributed.broadcast_object((out / STAGE_FILE).is_file())
    if done and not force:
        log.info("%s is up to date (%s)", stage.key, out)
        return out
    if dry_run:
        st = stage_status(stage, work)
        log.info("would build %s (%s%s)", stage.key, st.state, f": {'; '.join(st.reasons)}" if st.reasons else "")
        return None

    partial = stage.partial_dir(work)
    if dist.is_main:
        if force and partial.exists() and options and options.get("restart"):
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(partial / "config.toml", dump_toml(config))
    distributed.barrier()

    log.info("building %s -> %s", stage.key, out)
    ctx = BuildContext(stage=stage, out_dir=partial, work_dir=work, config=config, dist=dist,
                       upstream=stage.upstream_dirs(work), options=dict(options or {}))
    t0 = time.time()
    summary: dict[str, Any] = {}
    if stage.parallel or dist.is_main:
        summary = stage.build(ctx) or {}
    summary = distributed.broadcast_object(summary)
    elapsed = time.time() - t0

    if summary.get("complete", True) is False:
        log.info("%s: part of the work is done (%s); the stage is finished by a run over all shards",
                 stage.key, summary.get("message", ""))
        return None
    if dist.is_main:
        record = {
            "stage": stage.kind,
            "name": stage.name,
            "fingerprint": stage.fingerprint(work),
            "components": stage.components(work),
            "summary": summary,
            "timings": {"build_s": round(elapsed, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
            "versions": _versions(),
            "world_size": dist.world_size,
        }
        if out.exists() and force:
            trash = out.with_name(out.name + f".old-{os.getpid()}")
            out.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        atomic_write_text(partial / STAGE_FILE, json.dumps(record, indent=2, sort_keys=True, default=str))
        partial.rename(out)
        log.info("%s done in %.1f s -> %s", stage.key, elapsed, out)
    distributed.barrier()
    return out


def read_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
