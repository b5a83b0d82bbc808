"""The pipeline graph: which stages a config has, what each one's fingerprint is made of, and
how each is built (a thin adapter over the library function that does the work).

synthetic ─► manifest:<pretrain set> ─► teacher-cache ─► pretrain ─► finetune ─► evaluate
             manifest:<finetune set> ─────────────────────────────────┘    retrieval ◄┘
"""
from __future__ import annotations

import difflib
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import (ClipsConfig, Config, ConfigError, DatasetConfig, EvaluateConfig, FinetuneConfig,
                                  LinearProbeConfig, ModelConfig, PretrainConfig, RetrievalConfig, SyntheticConfig,
                                  TeacherConfig, TranscodeConfig, semantic_dict)
from pipeline.core.fingerprint import DigestCache, file_set_digest
from pipeline.core.tensorboard_log import log_final, log_teacher_maps
from pipeline.stage import BuildContext, BuildResult, Stage, StageError

log = logging.getLogger(__name__)

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


def resolve_path(value: str, upstream: dict[str, Path]) -> Path:
    """A config path: ``synthetic:<sub>`` lives in the synthetic stage's output."""
    if is_synthetic(value):
        return upstream["synthetic:default"] / value[len(SYNTHETIC_PREFIX):]
    return Path(value).expanduser().resolve()


def videos_dir(ctx: BuildContext, transcoded: bool) -> Path:
    """Where a student stage reads its videos: the transcoded copies when [transcode] is on."""
    return ctx.upstream_dir("transcode" if transcoded else "manifest")


# ----------------------------------------------------------------------------------------------
# The stage builders: thin adapters from a BuildContext to the library function that does the work.
# Each imports its library lazily, so `status` never imports torch models.
# ----------------------------------------------------------------------------------------------

def build_synthetic_stage(ctx: BuildContext, syn: SyntheticConfig) -> BuildResult:
    from data_manifests.synthetic import generate_synthetic, spec_from_config

    return BuildResult(generate_synthetic(ctx.out_dir, spec_from_config(syn), workers=syn.workers,
                                          progress=ctx.dist.is_main))


def build_manifest_stage(ctx: BuildContext, name: str, ds: DatasetConfig) -> BuildResult:
    from data_manifests.builders import build_manifest
    from data_manifests.manifest import write_manifest
    from pipeline.completeness import write_sources

    manifest, rejected = build_manifest(
        ds.kind, resolve_path(ds.root, ctx.upstream), [resolve_path(a, ctx.upstream) for a in ds.annotations],
        ds.split, min_frames=ds.min_frames, allow_missing=ds.allow_missing, workers=ds.workers,
        progress=ctx.dist.is_main, **manifest_class_options(ctx, name, ds))
    manifest.dataset = name
    if ctx.dist.is_main:
        write_manifest(ctx.out_dir, manifest, rejected, relative_to=ctx.work_dir)  # movable work dir
        # each listed video's sha256, so that --verify notices a source replaced at the same size and mtime
        write_sources(ctx.out_dir, manifest.root, [e.path for e in manifest.entries], workers=ds.workers)
    return BuildResult(manifest_summary(manifest, rejected))


def manifest_class_options(ctx: BuildContext, name: str, ds: DatasetConfig) -> dict[str, Any]:
    """build_manifest's class list (from datasets.<name>.classes or the parent's manifest) and, for
    frame folders, their file template, first number and frame rate."""
    from data_manifests.formats.rawframes import read_class_list
    from data_manifests.manifest import load_manifest

    out: dict[str, Any] = {}
    if ds.classes and ds.parent:
        raise StageError(f"datasets.{name}: give either classes (a class-list file) or parent, not both")
    if ds.classes:
        try:
            out["classes"] = read_class_list(resolve_path(ds.classes, ctx.upstream))
        except (OSError, ValueError) as exc:
            raise StageError(f"datasets.{name}.classes: {exc}") from None
    elif ds.parent:
        out["classes"] = load_manifest(ctx.upstream[f"manifest:{ds.parent}"]).classes
    if ds.kind == "rawframes":
        out["format_options"] = {"filename_tmpl": ds.filename_tmpl, "start_index": ds.start_index, "fps": ds.fps}
    elif ds.kind == "kinetics400" and ds.parent:
        out["format_options"] = {"default_split": "test"}  # Mimetics' list has no split column
    return out


def build_teacher_cache_stage(ctx: BuildContext, t: TeacherConfig, clips: ClipsConfig) -> BuildResult:
    from teacher.cache_stage import build_teacher_cache

    result = BuildResult.of_summary(build_teacher_cache(
        ctx.upstream_dir("manifest"), ctx.out_dir, t, clips, dist=ctx.dist, fingerprint=ctx.fingerprint,
        checkpoint_sha256=ctx.input_digest("checkpoint"),
        shard_index=ctx.options.shard_index, num_shards=ctx.options.num_shards))
    if ctx.dist.is_main and result.complete:  # optional TensorBoard image of the maps
        log_teacher_maps(ctx.out_dir)
    return result


def build_transcode_stage(ctx: BuildContext, tc: TranscodeConfig) -> BuildResult:
    from data_manifests.transcode import TranscodeSpec, build_transcode

    return BuildResult.of_summary(build_transcode(
        ctx.upstream_dir("manifest"), ctx.out_dir, TranscodeSpec(short_side=tc.short_side, codec=tc.codec),
        dist=ctx.dist, final_dir=ctx.stage.out_dir(ctx.work_dir), workers=tc.workers,
        shard_index=ctx.options.shard_index, num_shards=ctx.options.num_shards, progress=ctx.dist.is_main))


def build_pretrain_stage(ctx: BuildContext, m: ModelConfig, p: PretrainConfig, clips: ClipsConfig,
                         transcoded: bool, teacher: TeacherConfig | None = None) -> BuildResult:
    """``teacher``: the ``[teacher]`` config that built the cache (the held-out KD figures run it)."""
    from student.pretrain import pretrain

    cache = ctx.upstream_dir("teacher-cache") if m.kd else None
    return BuildResult(pretrain(videos_dir(ctx, transcoded), cache, ctx.out_dir, m, p, clips, dist=ctx.dist,
                                teacher_cfg=teacher if m.kd else None))


def build_finetune_stage(ctx: BuildContext, m: ModelConfig, f: FinetuneConfig, clip_len: int,
                         transcoded: bool) -> BuildResult:
    from student.finetune import finetune

    pre = None if f.from_scratch else ctx.upstream_dir("pretrain")
    return BuildResult(finetune(videos_dir(ctx, transcoded), pre, ctx.out_dir, m, f, dist=ctx.dist,
                                clip_len=clip_len))


def build_evaluate_stage(ctx: BuildContext, e: EvaluateConfig, manifest: Stage, transcoded: bool) -> BuildResult:
    """``manifest``: the finetune dataset's manifest stage (its synthetic part masks score human focus)."""
    from student.evaluate import evaluate

    summary = evaluate(videos_dir(ctx, transcoded), ctx.upstream_dir("finetune"), ctx.out_dir, e, dist=ctx.dist)
    if ctx.dist.is_main:  # synthetic data: how much of the CAM mass falls on the person (paper Fig. 3)
        summary.update(record_human_focus(manifest.out_dir(ctx.work_dir), ctx.upstream_dir("finetune"), ctx.out_dir))
        log_final(ctx.out_dir, "evaluate", summary)  # optional TensorBoard final top-1 / top-5
    return BuildResult(summary)


def build_retrieval_stage(ctx: BuildContext, cfg: RetrievalConfig, clip_len: int, transcoded: bool) -> BuildResult:
    from student.retrieval import retrieval

    summary = retrieval(videos_dir(ctx, transcoded), ctx.upstream_dir("pretrain"), ctx.out_dir, cfg,
                        dist=ctx.dist, clip_len=clip_len)
    if ctx.dist.is_main:
        log_final(ctx.out_dir, "retrieval", summary)
    return BuildResult(summary)


def build_linear_probe_stage(ctx: BuildContext, cfg: LinearProbeConfig, clip_len: int,
                             transcoded: bool) -> BuildResult:
    from student.linear_probe import linear_probe

    summary = linear_probe(videos_dir(ctx, transcoded), ctx.upstream_dir("pretrain"), ctx.out_dir, cfg,
                           dist=ctx.dist, clip_len=clip_len)
    if ctx.dist.is_main:
        log_final(ctx.out_dir, "linear-probe", summary)
    return BuildResult(summary)


def build_evaluate_test_set_stage(ctx: BuildContext, e: EvaluateConfig, test_set: str, manifest: str,
                                  finetune: str, in_distribution: str) -> BuildResult:
    """An out-of-context test set (student/out_of_context.py): ``manifest``, ``finetune`` and
    ``in_distribution`` are the upstream keys of its manifest, the classifier and its own evaluation."""
    from student.out_of_context import evaluate_test_set

    return BuildResult(evaluate_test_set(ctx.upstream[manifest], ctx.upstream[finetune], ctx.upstream[in_distribution],
                                         ctx.out_dir, e, dist=ctx.dist, test_set=test_set))


def build_linear_probe_test_set_stage(ctx: BuildContext, lp: LinearProbeConfig, test_set: str, clip_len: int,
                                      manifest: str, probe: str, pretrain: str) -> BuildResult:
    """The linear probe of ``probe`` (an upstream key) scored on an out-of-context test set."""
    from student.out_of_context import linear_probe_test_set

    return BuildResult(linear_probe_test_set(ctx.upstream[manifest], ctx.upstream[probe], ctx.upstream[pretrain],
                                             ctx.out_dir, lp, dist=ctx.dist, test_set=test_set, clip_len=clip_len))


class StageGraph:
    """Builds :class:`Stage` objects for a config, sharing upstream nodes (and their digests)."""

    def __init__(self, cfg: Config, work: Path) -> None:
        self.cfg = cfg
        self.work = work
        self.digests = DigestCache(work / ".cache" / "digests.json")
        self._nodes: dict[str, Stage] = {}

    def _memo(self, key: str, make: Callable[[], Stage]) -> Stage:
        if key not in self._nodes:
            self._nodes[key] = make()
        return self._nodes[key]

    def resolve(self, value: str, upstream: dict[str, Path]) -> Path:
        return resolve_path(value, upstream)

    # -- nodes ----------------------------------------------------------------------------

    def synthetic(self) -> Stage:
        return self._memo("synthetic", lambda: Stage(
            kind="synthetic", name="default", version=VERSIONS["synthetic"],
            semantic=semantic_dict(self.cfg.synthetic), upstream=[],
            build=partial(build_synthetic_stage, syn=self.cfg.synthetic),
            command="pipeline synthetic", code=CODE["synthetic"]))

    def manifest(self, name: str) -> Stage:
        ds = self.cfg.dataset(name)
        synthetic = (is_synthetic(ds.root) or any(is_synthetic(a) for a in ds.annotations)
                     or is_synthetic(ds.classes))
        upstream = [self.synthetic()] if synthetic else []
        if ds.parent:  # the class list comes from the parent dataset's manifest
            upstream.append(self.manifest(ds.parent))

        def inputs(up: dict[str, Path]) -> dict[str, str]:
            if synthetic:
                return {}  # the synthetic stage's fingerprint already covers its files
            from data_manifests.builders import annotation_files, list_input_files

            root = self.resolve(ds.root, up)
            if not root.is_dir():
                raise StageError(f"datasets.{name}.root: {root} is not a folder")
            files = annotation_files(ds.kind, [self.resolve(a, up) for a in ds.annotations], ds.split)
            if ds.classes:
                files.append(self.resolve(ds.classes, up))
            out = {f"annotation:{f.name}": self.digests.digest(f) for f in files}
            out["videos"] = file_set_digest(root, list_input_files(ds.kind, root))
            self.digests.save()
            return out

        return self._memo(f"manifest:{name}", lambda: Stage(
            kind="manifest", name=name, version=VERSIONS["manifest"],
            semantic=semantic_dict(ds), upstream=upstream, build=partial(build_manifest_stage, name=name, ds=ds),
            inputs=inputs, command=self._manifest_command(name), code=CODE["manifest"]))

    def _manifest_command(self, name: str) -> str:
        if "." in name and name not in self.cfg.datasets:  # a test set: built by the evaluate command
            dataset, test_set = name.split(".", 1)
            return f"pipeline evaluate --dataset {dataset} --test-set {test_set} --build-upstream"
        return f"pipeline manifest --dataset {name}"

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

        return self._memo("teacher-cache", lambda: Stage(
            kind="teacher-cache", name=name, version=VERSIONS["teacher-cache"],
            semantic={"teacher": semantic_dict(t), "clips": semantic_dict(clips)},
            upstream=[self.manifest(name)], build=partial(build_teacher_cache_stage, t=t, clips=clips),
            inputs=inputs, command="pipeline teacher-cache", parallel=True, code=CODE["teacher-cache"]))

    def transcode(self, name: str) -> Stage:
        """Small seek-friendly copies of dataset ``name`` (every frame index kept); its output is a
        manifest of the copies, which the student stages read instead of the original manifest."""
        tc = self.cfg.transcode
        return self._memo(f"transcode:{name}", lambda: Stage(
            kind="transcode", name=name, version=VERSIONS["transcode"], semantic=semantic_dict(tc),
            upstream=[self.manifest(name)], build=partial(build_transcode_stage, tc=tc),
            command=f"pipeline transcode --dataset {name}", parallel=True, code=CODE["transcode"]))

    def _videos(self, name: str) -> Stage:
        """Where the student reads dataset ``name``: the transcoded copies when [transcode] is on."""
        return self.transcode(name) if self.cfg.transcode.enabled else self.manifest(name)

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

        semantic: dict[str, Any] = {"model": semantic_dict(m), "pretrain": semantic_dict(p),
                                    "clips": semantic_dict(clips)}
        if not m.kd:
            semantic["teacher"] = None
        build = partial(build_pretrain_stage, m=m, p=p, clips=clips, transcoded=self.cfg.transcode.enabled,
                        teacher=self.cfg.teacher if m.kd else None)
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
        build = partial(build_finetune_stage, m=m, f=f, clip_len=self.cfg.clips.clip_len,
                        transcoded=self.cfg.transcode.enabled)
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
        build = partial(build_evaluate_stage, e=e, manifest=self.manifest(self.cfg.finetune.dataset),
                        transcoded=self.cfg.transcode.enabled)
        return self._memo("evaluate", lambda: Stage(
            kind="evaluate", name=ft.name, version=VERSIONS["evaluate"], semantic=semantic_dict(e),
            upstream=[self._videos(self.cfg.finetune.dataset), ft], build=build,
            command=f"pipeline evaluate --dataset {self.cfg.finetune.dataset}", parallel=True,
            code=CODE["evaluate"]))

    def retrieval(self) -> Stage:
        r = self.cfg.retrieval
        build = partial(build_retrieval_stage, cfg=r, clip_len=self.cfg.clips.clip_len,
                        transcoded=self.cfg.transcode.enabled)
        return self._frozen_student_stage("retrieval", "retrieval", r, build)

    def linear_probe(self) -> Stage:
        """Frozen-feature logistic regression on one dataset split (student/linear_probe.py)."""
        lp = self.cfg.linear_probe
        build = partial(build_linear_probe_stage, cfg=lp, clip_len=self.cfg.clips.clip_len,
                        transcoded=self.cfg.transcode.enabled)
        return self._frozen_student_stage("linear-probe", "linear_probe", lp, build)

    def _frozen_student_stage(self, kind: str, section: str, cfg: RetrievalConfig | LinearProbeConfig,
                              build: Callable[[BuildContext], BuildResult]) -> Stage:
        """A stage that evaluates the frozen pretrained student on one dataset split (retrieval, linear probe)."""
        name = f"{cfg.dataset}-split{self.cfg.dataset(cfg.dataset).split}"
        return self._memo(kind, lambda: Stage(
            kind=kind, name=name, version=VERSIONS[kind],
            semantic={section: semantic_dict(cfg), "clip_len": self.cfg.clips.clip_len},
            upstream=[self._videos(cfg.dataset), self.pretrain()], build=build,
            command=f"pipeline {kind} --dataset {cfg.dataset}", parallel=True, code=CODE[kind]))

    # -- out-of-context test sets (student/out_of_context.py) ---------------------------------

    def evaluate_test_set(self, test_set: str) -> Stage:
        """The finetuned classifier on test set ``test_set`` of the finetune dataset (same split),
        beside its in-distribution evaluation (an upstream, so the drop is always computed)."""
        e, dataset = self.cfg.evaluate, self.cfg.finetune.dataset
        self.cfg.test_set(dataset, test_set)  # a clear error for an unknown test set
        ft, ev, man = self.finetune(), self.evaluate(), self.manifest(f"{dataset}.{test_set}")
        build = partial(build_evaluate_test_set_stage, e=e, test_set=test_set, manifest=man.key, finetune=ft.key,
                        in_distribution=ev.key)
        return self._memo(f"evaluate-test-set:{test_set}", lambda: Stage(
            kind="evaluate", name=f"{ft.name}.{test_set}", version=VERSIONS["evaluate"],
            semantic={"evaluate": semantic_dict(e), "test_set": test_set}, upstream=[man, ft, ev], build=build,
            command=f"pipeline evaluate --dataset {dataset} --test-set {test_set}", parallel=True,
            code=("student.out_of_context",)))

    def linear_probe_test_set(self, test_set: str) -> Stage:
        """The linear probe of ``linear_probe.dataset`` on its test set ``test_set`` (Mimetics: the
        Kinetics-400 probe), restricted to the classes the test set covers."""
        lp, dataset = self.cfg.linear_probe, self.cfg.linear_probe.dataset
        self.cfg.test_set(dataset, test_set)
        probe, pre, man = self.linear_probe(), self.pretrain(), self.manifest(f"{dataset}.{test_set}")
        build = partial(build_linear_probe_test_set_stage, lp=lp, test_set=test_set, clip_len=self.cfg.clips.clip_len,
                        manifest=man.key, probe=probe.key, pretrain=pre.key)
        return self._memo(f"linear-probe-test-set:{test_set}", lambda: Stage(
            kind="linear-probe", name=f"{probe.name}.{test_set}", version=VERSIONS["linear-probe"],
            semantic={"linear_probe": semantic_dict(lp), "clip_len": self.cfg.clips.clip_len, "test_set": test_set},
            upstream=[man, probe, pre], build=build,
            command=f"pipeline linear-probe --dataset {dataset} --test-set {test_set}", parallel=True,
            code=("student.out_of_context",)))

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
            "evaluate": lambda: [self.evaluate()] + [self.evaluate_test_set(t) for t in self.cfg.evaluate.test_sets],
            "retrieval": lambda: [self.retrieval()],
            "linear-probe": lambda: [self.linear_probe()],
        }
        out: list[Stage] = []
        for name in self.cfg.run.stages:
            if name not in makers:
                close = difflib.get_close_matches(name, list(makers), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"run.stages: unknown stage {name!r}{hint}; known: {', '.join(makers)}")
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
