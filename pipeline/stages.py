"""The pipeline graph: which stages a config has, what each one's fingerprint is made of, and
how each is built (a thin adapter over the library function that does the work).

synthetic ─► manifest:<pretrain set> ─► teacher-cache ─► pretrain ─► finetune ─► evaluate
             manifest:<finetune set> ─────────────────────────────────┘    retrieval ◄┘
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, ConfigError, semantic_dict
from pipeline.core.fingerprint import DigestCache, file_set_digest
from pipeline.stage import BuildContext, Stage, StageError
from pipeline.core.tensorboard_log import log_final, log_teacher_maps

log = logging.getLogger("pipeline")

SYNTHETIC_PREFIX = "synthetic:"

# The entry modules of each stage's build: their source, and that of the project modules they
# import, enter the stage's fingerprint (pipeline/core/code_digest.py), so new code rebuilds its stage.
CODE = {"synthetic": ("data_manifests.synthetic.generate",), "manifest": ("data_manifests.builders",),
        "teacher-cache": ("teacher.cache_stage",), "pretrain": ("student.pretrain",),
        "finetune": ("student.finetune",), "evaluate": ("student.evaluate", "student.human_focus"),
        "retrieval": ("student.retrieval",),
        "transcode": ("data_manifests.transcode",), "linear-probe": ("student.linear_probe",)}

# Bumped by hand when a stage's output changes meaning for the same inputs.
VERSIONS = {"synthetic": 2, "manifest": 1, "teacher-cache": 1, "pretrain": 1, "finetune": 1,
            "evaluate": 1, "retrieval": 1, "transcode": 1, "linear-probe": 1}


def is_synthetic(value: str) -> bool:
    return value.startswith(SYNTHETIC_PREFIX)


class StageGraph:
    """Builds :class:`Stage` objects for a config, sharing upstream nodes (and their digests)."""

    def __init__(self, cfg: Config, work: Path) -> None:
        self.cfg = cfg
        self.work = work
        self.digests = DigestCache(work / ".cache" / "digests.json")
        self._nodes: dict[str, Stage] = {}

    def _memo(self, key: str, make) -> Stage:
        if key not in self._nodes:
            self._nodes[key] = make()
        return self._nodes[key]

    # -- path resolution ------------------------------------------------------------------

    def resolve(self, value: str, upstream: dict[str, Path]) -> Path:
        """A config path: ``synthetic:<sub>`` lives in the synthetic stage's output."""
        if is_synthetic(value):
            return upstream["synthetic:default"] / value[len(SYNTHETIC_PREFIX):]
        return Path(value).expanduser().resolve()

    # -- nodes ----------------------------------------------------------------------------

    def synthetic(self) -> Stage:
        def build(ctx: BuildContext) -> dict[str, Any]:
            from data_manifests.synthetic import generate_synthetic, spec_from_config

            return generate_synthetic(ctx.out_dir, spec_from_config(self.cfg.synthetic),
                                      workers=self.cfg.synthetic.workers, progress=ctx.dist.is_main)

        return self._memo("synthetic", lambda: Stage(
            kind="synthetic", name="default", version=VERSIONS["synthetic"],
            semantic=semantic_dict(self.cfg.synthetic), upstream=[], build=build,
            command="pipeline synthetic", code=CODE["synthetic"]))

    def manifest(self, name: str) -> Stage:
        ds = self.cfg.dataset(name)
        synthetic = is_synthetic(ds.root) or any(is_synthetic(a) for a in ds.annotations)
        upstream = [self.synthetic()] if synthetic else []

        def inputs(up: dict[str, Path]) -> dict[str, str]:
            if synthetic:
                return {}  # the synthetic stage's fingerprint already covers its files
            from data_manifests.builders import annotation_files, list_video_files

            root = self.resolve(ds.root, up)
            if not root.is_dir():
                raise StageError(f"datasets.{name}.root: {root} is not a folder")
            files = annotation_files(ds.kind, [self.resolve(a, up) for a in ds.annotations], ds.split)
            out = {f"annotation:{f.name}": self.digests.digest(f) for f in files}
            out["videos"] = file_set_digest(root, list_video_files(root))
            self.digests.save()
            return out

        def build(ctx: BuildContext) -> dict[str, Any]:
            from data_manifests.builders import build_manifest
            from data_manifests.manifest import write_manifest

            manifest, rejected = build_manifest(
                ds.kind, self.resolve(ds.root, ctx.upstream),
                [self.resolve(a, ctx.upstream) for a in ds.annotations], ds.split,
                min_frames=ds.min_frames, allow_missing=ds.allow_missing, workers=ds.workers,
                progress=ctx.dist.is_main)
            manifest.dataset = name
            if ctx.dist.is_main:
                write_manifest(ctx.out_dir, manifest, rejected, relative_to=ctx.work_dir)  # movable work dir
            return manifest_summary(manifest, rejected)

        return self._memo(f"manifest:{name}", lambda: Stage(
            kind="manifest", name=name, version=VERSIONS["manifest"],
            semantic=semantic_dict(ds), upstream=upstream, build=build, inputs=inputs,
            command=f"pipeline manifest --dataset {name}", code=CODE["manifest"]))

    def teacher_cache(self) -> Stage:
        t, clips = self.cfg.teacher, self.cfg.clips
        name = self.cfg.pretrain.dataset

        def inputs(up: dict[str, Path]) -> dict[str, str]:
            if t.backend != "schp":
                return {}
            if not t.checkpoint:
                raise StageError("teacher.checkpoint is not set: name the SCHP checkpoint file "
                                 "(--checkpoint PATH or teacher.checkpoint in the config)")
            path = Path(t.checkpoint).expanduser()
            if not path.is_file():
                raise StageError(f"teacher.checkpoint: {path} does not exist")
            digest = self.digests.digest(path)
            self.digests.save()
            return {"checkpoint": digest}

        def build(ctx: BuildContext) -> dict[str, Any]:
            from teacher.cache_stage import build_teacher_cache

            comps = ctx.stage.components(self.work)
            summary = build_teacher_cache(
                ctx.upstream_dir("manifest"), ctx.out_dir, t, clips, dist=ctx.dist,
                fingerprint=ctx.stage.fingerprint(self.work),
                checkpoint_sha256=comps["inputs"].get("checkpoint", ""),
                shard_index=ctx.options.get("shard_index"), num_shards=ctx.options.get("num_shards"))
            if ctx.dist.is_main and summary.get("complete", True):  # optional TensorBoard image of the maps
                log_teacher_maps(ctx.out_dir)
            return summary

        return self._memo("teacher-cache", lambda: Stage(
            kind="teacher-cache", name=name, version=VERSIONS["teacher-cache"],
            semantic={"teacher": semantic_dict(t), "clips": semantic_dict(clips)},
            upstream=[self.manifest(name)], build=build, inputs=inputs,
            command="pipeline teacher-cache", parallel=True,
            code=CODE["teacher-cache"]))

    def transcode(self, name: str) -> Stage:
        """Small seek-friendly copies of dataset ``name`` (every frame index kept); its output is a
        manifest of the copies, which the student stages read instead of the original manifest."""
        tc = self.cfg.transcode

        def build(ctx: BuildContext) -> dict[str, Any]:
            from data_manifests.transcode import TranscodeSpec, build_transcode

            return build_transcode(ctx.upstream_dir("manifest"), ctx.out_dir,
                                   TranscodeSpec(short_side=tc.short_side, codec=tc.codec), dist=ctx.dist,
                                   final_dir=ctx.stage.out_dir(self.work), workers=tc.workers,
                                   shard_index=ctx.options.get("shard_index"), num_shards=ctx.options.get("num_shards"),
                                   progress=ctx.dist.is_main)

        return self._memo(f"transcode:{name}", lambda: Stage(
            kind="transcode", name=name, version=VERSIONS["transcode"], semantic=semantic_dict(tc),
            upstream=[self.manifest(name)], build=build, command=f"pipeline transcode --dataset {name}",
            parallel=True, code=CODE["transcode"]))

    def _videos(self, name: str) -> Stage:
        """Where the student reads dataset ``name``: the transcoded copies when [transcode] is on."""
        return self.transcode(name) if self.cfg.transcode.enabled else self.manifest(name)

    def _videos_dir(self, ctx: BuildContext) -> Path:
        return ctx.upstream_dir("transcode" if self.cfg.transcode.enabled else "manifest")

    def pretrain(self) -> Stage:
        p, m, clips = self.cfg.pretrain, self.cfg.model, self.cfg.clips
        upstream = [self._videos(p.dataset)] + ([self.teacher_cache()] if m.kd else [])

        def inputs(up: dict[str, Path]) -> dict[str, str]:
            if not p.init_from:
                return {}
            path = Path(p.init_from).expanduser()
            if not path.is_file():
                raise StageError(f"pretrain.init_from: {path} does not exist")
            digest = self.digests.digest(path)
            self.digests.save()
            return {"init_from": digest}

        def build(ctx: BuildContext) -> dict[str, Any]:
            from student.pretrain import pretrain

            cache = ctx.upstream_dir("teacher-cache") if m.kd else None
            return pretrain(self._videos_dir(ctx), cache, ctx.out_dir, m, p, clips, dist=ctx.dist,
                            teacher_cfg=self.cfg.teacher if m.kd else None)

        semantic = {"model": semantic_dict(m), "pretrain": semantic_dict(p), "clips": semantic_dict(clips)}
        if not m.kd:
            semantic["teacher"] = None
        return self._memo("pretrain", lambda: Stage(
            kind="pretrain", name=p.dataset, version=VERSIONS["pretrain"], semantic=semantic,
            upstream=upstream, build=build, inputs=inputs, command="pipeline pretrain", parallel=True,
            code=CODE["pretrain"]))

    def _finetune_name(self) -> str:
        f = self.cfg.finetune
        return f"{f.dataset}-split{self.cfg.dataset(f.dataset).split}"

    def finetune(self) -> Stage:
        f, m = self.cfg.finetune, self.cfg.model
        upstream = [self._videos(f.dataset)] + ([] if f.from_scratch else [self.pretrain()])

        def build(ctx: BuildContext) -> dict[str, Any]:
            from student.finetune import finetune

            pre = None if f.from_scratch else ctx.upstream_dir("pretrain")
            return finetune(self._videos_dir(ctx), pre, ctx.out_dir, m, f, dist=ctx.dist,
                            clip_len=self.cfg.clips.clip_len)

        name = self._finetune_name() + ("-scratch" if f.from_scratch else "")
        return self._memo("finetune", lambda: Stage(
            kind="finetune", name=name, version=VERSIONS["finetune"],
            semantic={"finetune": semantic_dict(f), "model": semantic_dict(m), "clip_len": self.cfg.clips.clip_len},
            upstream=upstream, build=build,
            command=f"pipeline finetune --dataset {f.dataset}"
                    + (" --from-scratch" if f.from_scratch else ""), parallel=True, code=CODE["finetune"]))

    def evaluate(self) -> Stage:
        e = self.cfg.evaluate
        ft = self.finetune()

        def build(ctx: BuildContext) -> dict[str, Any]:
            from student.evaluate import evaluate

            summary = evaluate(self._videos_dir(ctx), ctx.upstream_dir("finetune"), ctx.out_dir, e,
                               dist=ctx.dist)
            if ctx.dist.is_main:  # synthetic data: how much of the CAM mass falls on the person (paper Fig. 3)
                summary.update(record_human_focus(self.manifest(self.cfg.finetune.dataset).out_dir(self.work),
                                                  ctx.upstream_dir("finetune"), ctx.out_dir))
                log_final(ctx.out_dir, "evaluate", summary)  # optional TensorBoard final top-1 / top-5
            return summary

        return self._memo("evaluate", lambda: Stage(
            kind="evaluate", name=ft.name, version=VERSIONS["evaluate"], semantic=semantic_dict(e),
            upstream=[self._videos(self.cfg.finetune.dataset), ft], build=build,
            command=f"pipeline evaluate --dataset {self.cfg.finetune.dataset}", parallel=True,
            code=CODE["evaluate"]))

    def retrieval(self) -> Stage:
        return self._frozen_student_stage("retrieval", "retrieval", self.cfg.retrieval, "student.retrieval")

    def linear_probe(self) -> Stage:
        """Frozen-feature logistic regression on one dataset split (student/linear_probe.py)."""
        return self._frozen_student_stage("linear-probe", "linear_probe", self.cfg.linear_probe,
                                          "student.linear_probe")

    def _frozen_student_stage(self, kind: str, section: str, cfg: Any, module: str) -> Stage:
        """A stage that evaluates the frozen pretrained student on one dataset split (retrieval, linear
        probe) with ``module.<section>(videos_dir, pretrain_dir, out_dir, cfg, dist=, clip_len=)``,
        imported only when the stage is built (``status`` never imports torch models)."""

        def build(ctx: BuildContext) -> dict[str, Any]:
            run = getattr(importlib.import_module(module), section)
            summary = run(self._videos_dir(ctx), ctx.upstream_dir("pretrain"), ctx.out_dir, cfg,
                          dist=ctx.dist, clip_len=self.cfg.clips.clip_len)
            if ctx.dist.is_main:
                log_final(ctx.out_dir, kind, summary)
            return summary

        name = f"{cfg.dataset}-split{self.cfg.dataset(cfg.dataset).split}"
        return self._memo(kind, lambda: Stage(
            kind=kind, name=name, version=VERSIONS[kind],
            semantic={section: semantic_dict(cfg), "clip_len": self.cfg.clips.clip_len},
            upstream=[self._videos(cfg.dataset), self.pretrain()], build=build,
            command=f"pipeline {kind} --dataset {cfg.dataset}", parallel=True, code=CODE[kind]))

    # -- the whole run --------------------------------------------------------------------

    def run_stages(self) -> list[Stage]:
        """The stages ``pipeline run`` builds, in dependency order, each once."""
        makers = {
            "synthetic": lambda: [self.synthetic()] if self._uses_synthetic() else [],
            "manifest": lambda: [self.manifest(n) for n in self._datasets_used()],
            "transcode": lambda: ([self.transcode(n) for n in self._datasets_used()]
                                  if self.cfg.transcode.enabled else []),
            "teacher-cache": lambda: [self.teacher_cache()] if self.cfg.model.kd else [],
            "pretrain": lambda: [self.pretrain()],
            "finetune": lambda: [self.finetune()],
            "evaluate": lambda: [self.evaluate()],
            "retrieval": lambda: [self.retrieval()],
            "linear-probe": lambda: [self.linear_probe()],
        }
        out: list[Stage] = []
        for name in self.cfg.run.stages:
            if name not in makers:
                raise ConfigError(f"run.stages: unknown stage {name!r}; known: {', '.join(makers)}")
            for st in makers[name]():
                if st not in out:
                    out.append(st)
        return out

    def _datasets_used(self) -> list[str]:
        names = [self.cfg.pretrain.dataset, self.cfg.finetune.dataset]
        if "retrieval" in self.cfg.run.stages:
            names.append(self.cfg.retrieval.dataset)
        if "linear-probe" in self.cfg.run.stages:
            names.append(self.cfg.linear_probe.dataset)
        return list(dict.fromkeys(names))

    def _uses_synthetic(self) -> bool:
        for n in self._datasets_used():
            ds = self.cfg.dataset(n)
            if is_synthetic(ds.root) or any(is_synthetic(a) for a in ds.annotations):
                return True
        return False


def manifest_summary(manifest: Any, rejected: list[dict]) -> dict[str, Any]:
    per_split: dict[str, int] = {}
    for e in manifest.entries:
        per_split[e.split] = per_split.get(e.split, 0) + 1
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {"videos": len(manifest.entries), "classes": len(manifest.classes), "per_split": per_split,
            "rejected": len(rejected), "rejected_by_reason": reasons}


def record_human_focus(manifest_dir: Path, finetune_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Add the human-focus score to the evaluate stage's metrics.json (synthetic data only; {} otherwise)."""
    import json

    from student.human_focus import human_focus_of_split

    focus = human_focus_of_split(manifest_dir, finetune_dir / "classifier.pt")
    if focus is None:
        return {}
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    metrics.update(focus)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")
    return focus
