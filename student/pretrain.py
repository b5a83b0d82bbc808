"""`pipeline pretrain`: the multi-task pretraining loop (paper §3, RSPNet recipe + KD).

One function, :func:`pretrain`, called by every rank under torchrun (the caller has already
joined the process group). It resumes from ``out_dir/checkpoints/last.pt`` when present and
continues exactly: the sampler order is a function of (seed, epoch), every item a function of
(seed, epoch, index), a mid-epoch resume starts the sampler at the first batch not yet trained
on, and the checkpoint carries model (student, key encoder, queue), optimizer, schedule, scaler
and every rank's RNG states.

Why ``broadcast_buffers=False`` in DDP: the only buffers that could drift between ranks are BN
running statistics, which never enter a training loss (BN uses batch statistics in train mode
and the key encoder copies the query encoder's buffers each step); the MoCo queue is identical
on every rank by construction (each rank enqueues the same gathered keys). Broadcasting all
buffers would resend the whole queue (K×128 floats) every step. Instead the running statistics
are averaged over ranks into every checkpoint, so the saved model is rank-independent, while each
rank trains on with its own statistics (also saved, per rank, and restored on resume: averaging the
live statistics at a checkpoint made a resumed torchrun run differ from an uninterrupted one).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn

from data_manifests.clip_plan import build_clip_plan
from data_manifests.manifest import load_manifest
from pipeline.core.config import ClipsConfig, ModelConfig, PretrainConfig, slow_phase_problem
from pipeline.core.distributed import DistInfo, all_gather_objects, barrier, is_distributed
from pipeline.core.errors import CheckpointError, TrainingError
from pipeline.core.progress import MetricsLog, Progress
from pipeline.core.runtime import (all_reduce_mean, autocast, deterministic_mode, resolve_amp, stage_device,
                              stop_flag_group, wrap_ddp)
from student.checkpointing import (GracefulStop, TrainingInterrupted, capture_rng, load_checkpoint, non_finite_loss,
                                   restore_rng, save_checkpoint)
from student.optim import build_adamw, build_sgd, cosine_schedule, current_lr, phased_cosine_schedule, scaled_lr
from student.pretrain_data import (PretrainClipDataset, build_pretrain_loader, clips_with_maps, shutdown_workers,
                                  steps_per_epoch)
from student.gpu_augment import avid_key_clip, batch_clips
from student.moco import trimmed_queue_size
from student.pretrain_model import PretrainModel
from student.pretext_eval import (FIGURES, HeldoutSet, build_heldout_set, describe, evaluate_pretext, heldout_entries,
                                  paired_gain, teacher_for_heldout)
from student.transforms import ClipAugment

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
METRIC_KEYS = ("loss", "loss_kd", "loss_rsp", "loss_avid", "acc_rsp", "acc_avid_pos", "acc_avid_neg")


@dataclass(frozen=True)
class StepInfo:
    """What an ``on_step`` hook sees after each optimizer step (tests, debugging)."""

    epoch: int
    step_in_epoch: int  # steps done in this epoch, after this one
    global_step: int
    model: PretrainModel  # unwrapped (no DDP)
    stop: GracefulStop


# --------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------

def seed_all(seed: int) -> None:
    """Python, numpy and torch (all devices) global generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``pretrain.amp`` on ``device`` (None: full precision); one meaning in
    every stage (:func:`pipeline.core.runtime.resolve_amp`)."""
    return resolve_amp(amp, device, key="pretrain.amp")


def clip_memory_format(device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """channels_last_3d (NDHWC) for half-precision 3D convolutions on CUDA, where cuDNN's fast kernels want it."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.channels_last_3d
    return torch.contiguous_format


def to_memory_format(module: nn.Module, memory_format: torch.memory_format) -> None:
    """Put the 5-D weights (Conv3d) in ``memory_format``; ``Module.to`` would fail on the KD head's Conv2d."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dim() == 5:
                t.data = t.data.contiguous(memory_format=memory_format)


def build_pretrain_model(model_cfg: ModelConfig, cfg: PretrainConfig, num_parts: int,
                         global_batch: int | None = None) -> PretrainModel:
    """The pretraining model; the queue is trimmed to a multiple of ``global_batch`` (default: one
    process's batch), as RSPNet requires."""
    m = model_cfg
    return PretrainModel(backbone=m.backbone, width=m.width, split_after=m.split_after,
                         num_parts=max(num_parts, 1), parse_size=m.parse_size, kd=m.kd,
                         task_dependent=m.task_dependent, proj_dim=m.proj_dim,
                         queue_size=trimmed_queue_size(cfg.queue_size, global_batch or cfg.batch_size),
                         momentum=cfg.moco_momentum,
                         tau=cfg.temperature, margin=cfg.margin, lambda_kd=cfg.lambda_kd, lambda_m=cfg.lambda_m,
                         lambda_a=cfg.lambda_a, exclude_same_video=cfg.exclude_same_video,
                         decoder_upscale=m.decoder_upscale, avid_projection=cfg.avid_projection)


def warn_queue_size(queue_size: int, videos: int, exclude_same_video: bool) -> None:
    """A queue not well below the number of videos holds keys of a query's own video among its
    negatives (several copies once it exceeds it): say so, and what to do."""
    if queue_size * 2 <= videos:
        return
    fix = ("same-video keys are left out of the negatives (pretrain.exclude_same_video), but fewer distinct "
           "negatives remain" if exclude_same_video else "set pretrain.exclude_same_video = true or lower it")
    log.warning("pretrain.queue_size = %d is not well below the %d pretraining videos: each query meets about %.1f "
                "keys of its own video in the queue; %s", queue_size, videos, queue_size / max(videos, 1), fix)


def init_from_checkpoint(pm: PretrainModel, path: str) -> None:
    """``pretrain.init_from``: load encoders (RSPNet release or our layout), then reset the key encoder to them."""
    from student.model import load_encoders
    from student.moco import momentum_update

    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"pretrain.init_from: {p} does not exist; point it at a student.pt or an "
                              f"RSPNet checkpoint, or set it to \"\" to start from random weights")
    try:
        load_encoders(pm.student, p)
    except Exception as exc:  # noqa: BLE001 - any unusable file: one error naming it and the key
        raise CheckpointError(f"pretrain.init_from: {p} cannot be used ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    s = pm.student
    momentum_update((s.f_l, s.h_c, s.g_m, s.g_a), pm.key_encoder.parts(), 0.0)  # θ_k ← θ_q


def _bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var"))]


def _set_bn_buffers(module: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, v in zip(_bn_buffers(module), values, strict=True):
            b.copy_(v)


def average_bn_stats(module: nn.Module) -> None:
    """Average BN running statistics over ranks (see the module docstring)."""
    if not is_distributed() or tdist.get_world_size() == 1:
        return
    world = tdist.get_world_size()
    with torch.no_grad():
        for b in _bn_buffers(module):
            tdist.all_reduce(b, op=tdist.ReduceOp.SUM)
            b.div_(world)


def _config_dict(model_cfg: ModelConfig, cfg: PretrainConfig, clips: ClipsConfig) -> dict[str, Any]:
    return {"model": dataclasses.asdict(model_cfg), "pretrain": dataclasses.asdict(cfg),
            "clips": dataclasses.asdict(clips)}


_RESUME_KEYS = ("model", "clips")
_RESUME_PRETRAIN_SEMANTIC = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "slow_modules",
                             "slow_lr_ratio", "lambda_kd", "lambda_m", "lambda_a", "queue_size", "exclude_same_video",
                             "moco_momentum", "temperature", "margin", "crop_area", "seed", "max_steps_per_epoch",
                             "jitter", "jitter_p", "grayscale_p", "shared_colour", "avid_own_colour",
                             "avid_projection", "avid_start_epoch")


def _check_resumable(state: dict[str, Any], path: Path, config: dict[str, Any], world: int, spe: int) -> None:
    """A checkpoint from a different configuration or process layout cannot continue exactly: refuse clearly."""
    if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != "pretrain":
        raise CheckpointError(f"{path} is not a pretraining checkpoint (format {state.get('format')}, kind "
                              f"{state.get('kind')!r}); delete it to start over")
    old = state.get("config", {})
    diffs = [f"{sec}" for sec in _RESUME_KEYS if old.get(sec) != config[sec]]
    diffs += [f"pretrain.{k}" for k in _RESUME_PRETRAIN_SEMANTIC
              if old.get("pretrain", {}).get(k) != config["pretrain"][k]]
    if diffs:
        raise CheckpointError(f"{path} was written with a different configuration ({', '.join(diffs)}); "
                              f"delete it to start over")
    if state.get("world_size") != world or state.get("steps_per_epoch") != spe:
        raise CheckpointError(
            f"{path} was written by {state.get('world_size')} process(es) with {state.get('steps_per_epoch')} "
            f"steps per epoch; this run has {world} process(es) and {spe} steps per epoch. Resume with the "
            f"same number of processes (exact continuation needs the same global batch), or delete it to start over")


# --------------------------------------------------------------------------------------------
# The loop: set-up (data, model), resume, one epoch at a time, save
# --------------------------------------------------------------------------------------------

def pretrain(manifest_dir: Path, cache_dir: Path | None, out_dir: Path, model_cfg: ModelConfig, cfg: PretrainConfig,
             clips: ClipsConfig, *, dist: DistInfo, on_step: Callable[[StepInfo], None] | None = None,
             teacher_cfg: Any | None = None, teacher: Any | None = None) -> dict:
    """Pretrain the multi-task student; write checkpoints/last.pt, student.pt and metrics.jsonl into ``out_dir``.

    Every rank calls this (``dist`` says which); rank 0 writes files. Raises
    :class:`~student.checkpointing.TrainingInterrupted` after saving a checkpoint when SIGTERM or
    SIGINT arrives. ``on_step`` is called after every optimizer step (tests use it).

    Rank 0 also measures the pretext tasks on held-out videos (``pretrain.heldout_videos``, see
    :mod:`student.pretext_eval`): before the first step and at the end (and every ``heldout_every``
    epochs); the KD figures need the teacher: a backend (``teacher``) or the ``[teacher]`` config
    that built the cache (``teacher_cfg``).
    """
    out_dir = Path(out_dir)
    device = torch.device(stage_device(cfg.device, dist))
    with deterministic_mode(cfg.deterministic, device):
        if device.type == "cuda":
            torch.cuda.set_device(device)  # the current device is the one whose RNG state checkpoints carry
        data = _load_data(manifest_dir, cache_dir, model_cfg, cfg, clips, dist, device)
        net = _build(model_cfg, cfg, data, dist, device)
        heldout = _heldout_set(data, model_cfg, cfg, clips, dist, device, teacher_cfg, teacher)
        loop = _Loop(data, net, model_cfg, cfg, dist, device, out_dir, _config_dict(model_cfg, cfg, clips), on_step,
                     heldout)
        loop.run()
        return loop.finish()


def _heldout_set(data: "_Data", model_cfg: ModelConfig, cfg: PretrainConfig, clips: ClipsConfig, dist: DistInfo,
                 device: torch.device, teacher_cfg: Any | None, teacher: Any | None) -> HeldoutSet | None:
    """The held-out items (rank 0 only; None when off or when the manifest holds no held-out video)."""
    if not dist.is_main or cfg.heldout_videos <= 0:
        return None
    entries = heldout_entries(data.manifest, clips.splits, cfg.heldout_videos)
    if not entries:
        log.warning("pretrain: no held-out videos (every video of %s is in clips.splits = %s): the pretext tasks "
                    "are not measured on unseen videos", data.manifest.dataset, list(clips.splits))
        return None
    if model_cfg.kd and teacher is None and teacher_cfg is not None:
        teacher = teacher_for_heldout(teacher_cfg, str(device))
    t0 = time.perf_counter()
    hs = build_heldout_set(data.manifest, entries, clip_len=clips.clip_len, speeds=clips.speeds,
                           input_size=model_cfg.input_size, crop_area=cfg.crop_area,
                           teacher=teacher if model_cfg.kd else None, views=cfg.heldout_views)
    log.info("pretrain: %d held-out videos (%d views each) prepared in %.1f s", len(hs), hs.views,
             time.perf_counter() - t0)
    return hs


@dataclass
class _Data:
    """The clip plan, its dataset and loader, and the step counts they give."""

    manifest: Any
    plan: list
    dataset: PretrainClipDataset
    loader: Any
    sampler: Any
    spe: int  # steps per epoch
    total_steps: int
    label_names: list[str]
    dropped: int  # clips of the plan without a teacher map


def _with_teacher_maps(plan: list, cache_dir: Path | None, cfg: PretrainConfig, dist: DistInfo,
                       dataset_name: str) -> tuple[list, Any, list[str], int]:
    """(clips that have a teacher map, the cache, its label names, clips dropped) for ``model.kd``."""
    if cache_dir is None:
        raise TrainingError("model.kd is on but no teacher cache was given (run `pipeline teacher-cache`, "
                            "or set model.kd = false)")
    from teacher.cache_reader import TeacherCache

    cache = TeacherCache(cache_dir)
    kept = clips_with_maps(plan, cache, cfg.max_missing_maps)  # refuses when a shard is gone
    dropped = len(plan) - len(kept)
    if not kept:
        raise TrainingError(f"teacher cache {cache_dir} has no map for any clip of the {dataset_name} clip plan "
                         f"({len(plan)} clips): was it built from this manifest and clip settings?")
    if dropped and dist.is_main:
        log.warning("pretrain: %d of %d clips have no teacher map (their frames failed to decode in the "
                    "teacher-cache stage; see its failed.jsonl) and are skipped", dropped, len(plan))
    return kept, cache, cache.labels, dropped


def _load_data(manifest_dir: Path, cache_dir: Path | None, model_cfg: ModelConfig, cfg: PretrainConfig,
               clips: ClipsConfig, dist: DistInfo, device: torch.device) -> _Data:
    manifest = load_manifest(manifest_dir)
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    cache, dropped = None, 0
    label_names: list[str] = []
    if model_cfg.kd:
        plan, cache, label_names, dropped = _with_teacher_maps(plan, cache_dir, cfg, dist, manifest.dataset)
    augment = ClipAugment(model_cfg.input_size, area=tuple(cfg.crop_area), jitter=tuple(cfg.jitter),
                          jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p)
    dataset = PretrainClipDataset(manifest, plan, cache, model_cfg, clips, crop_area=cfg.crop_area, seed=cfg.seed,
                                  augment=augment, augment_device=cfg.augment_device,
                                  shared_colour=cfg.shared_colour, avid_own_colour=cfg.avid_own_colour)
    loader, sampler = build_pretrain_loader(dataset, cfg.batch_size, cfg.workers, rank=dist.rank,
                                            world_size=dist.world_size, seed=cfg.seed,
                                            pin_memory=device.type == "cuda")
    spe = steps_per_epoch(sampler, cfg.batch_size)
    if cfg.max_steps_per_epoch > 0:
        spe = min(spe, cfg.max_steps_per_epoch)
    return _Data(manifest, plan, dataset, loader, sampler, spe, spe * cfg.epochs, label_names, dropped)


@dataclass
class _Net:
    """The model and everything that updates it."""

    pm: PretrainModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast dtype; None: float32
    memory_format: torch.memory_format
    base_lr: float
    global_batch: int


def _build(model_cfg: ModelConfig, cfg: PretrainConfig, data: _Data, dist: DistInfo, device: torch.device) -> _Net:
    seed_all(cfg.seed)  # identical initial weights and queue on every rank
    global_batch = cfg.batch_size * dist.world_size
    pm = build_pretrain_model(model_cfg, cfg, len(data.label_names), global_batch)
    if dist.is_main:
        warn_queue_size(pm.queue.size, len(data.dataset), cfg.exclude_same_video)
    if cfg.init_from:
        init_from_checkpoint(pm, cfg.init_from)
    pm.to(device)
    if cfg.optimizer == "adamw":
        base_lr = cfg.lr
        optimizer: torch.optim.Optimizer = build_adamw(pm.student, base_lr, cfg.weight_decay, cfg.slow_modules,
                                                       cfg.slow_lr_ratio)
    else:
        base_lr = scaled_lr(cfg.lr, global_batch)
        optimizer = build_sgd(pm.student, base_lr, cfg.momentum, cfg.weight_decay, cfg.slow_modules,
                              cfg.slow_lr_ratio)
    if cfg.avid_start_epoch and cfg.slow_modules:  # the slow group at the full rate until A-VID starts
        if (problem := slow_phase_problem(cfg)) is not None:
            raise ValueError(problem)
        scheduler = phased_cosine_schedule(optimizer, data.total_steps, cfg.avid_start_epoch * data.spe,
                                           1.0 / cfg.slow_lr_ratio)
    else:
        scheduler = cosine_schedule(optimizer, data.total_steps)
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    memory_format = clip_memory_format(device, dtype)
    to_memory_format(pm, memory_format)
    seed_all(cfg.seed + dist.rank)  # per-rank training stream (shuffle-BN permutations, ...)
    return _Net(pm, optimizer, scheduler, scaler, dtype, memory_format, base_lr, global_batch)


def _maybe_resume(net: _Net, ckpt_path: Path, config: dict[str, Any], dist: DistInfo,
                  spe: int) -> tuple[int, int, int, dict[str, int] | None]:
    """(epoch, step in epoch, global step, resumed_from) after loading ``ckpt_path`` if it exists."""
    if not ckpt_path.is_file():
        return 0, 0, 0, None
    state = load_checkpoint(ckpt_path, map_location="cpu")
    _check_resumable(state, ckpt_path, config, dist.world_size, spe)
    net.pm.load_state_dict(state["model"])
    net.optimizer.load_state_dict(state["optimizer"])
    net.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        net.scaler.load_state_dict(state["scaler"])
    epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
    global_step = int(state["global_step"])
    restore_rng(state["rng"][dist.rank])
    if state.get("bn_stats_per_rank"):  # the rank's own BN statistics, as an uninterrupted run has them
        _set_bn_buffers(net.pm, state["bn_stats_per_rank"][dist.rank])
    if dist.is_main:
        log.info("pretrain: resuming from %s at epoch %d, step %d", ckpt_path.name, epoch, step)
    return epoch, step, global_step, {"epoch": epoch, "step_in_epoch": step, "global_step": global_step}


class MetricWindow:
    """Sums of :data:`METRIC_KEYS` over the current log window and the current epoch, kept on the
    device (no host sync per step) and averaged over ranks only when logged."""

    def __init__(self, device: torch.device) -> None:
        self.window = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=device)
        self.epoch = torch.zeros_like(self.window)
        self.window_steps = self.epoch_steps = 0
        self.t_window = time.perf_counter()

    def add(self, out: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            vec = torch.stack([out[k].detach().double() for k in METRIC_KEYS])
        self.window += vec
        self.epoch += vec
        self.window_steps += 1
        self.epoch_steps += 1

    def new_epoch(self) -> None:
        self.epoch.zero_()
        self.epoch_steps = 0

    def window_means(self) -> list[float]:
        return all_reduce_mean(self.window / self.window_steps)

    def epoch_means(self) -> dict[str, float]:
        return dict(zip(METRIC_KEYS, all_reduce_mean(self.epoch / self.epoch_steps)))

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the window's time, so its clips/s counts training only."""
        self.t_window += seconds

    def reset_window(self, now: float) -> None:
        self.window.zero_()
        self.window_steps, self.t_window = 0, now


def _previous_heldout(path: Path) -> list[dict[str, Any]]:
    """The ``heldout`` records an interrupted run already wrote (a resumed run keeps them)."""
    import json

    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "heldout"]


def _figures(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures of a ``heldout`` record (without event and time), for the stage summary."""
    if record is None:
        return None
    return {k: record[k] for k in ("epoch", "step", *FIGURES) if k in record}


def _amp_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype else "off"


class _Loop:
    """One pretraining run from its resume point: epochs of steps, metrics, checkpoints, student.pt."""

    def __init__(self, data: _Data, net: _Net, model_cfg: ModelConfig, cfg: PretrainConfig, dist: DistInfo,
                 device: torch.device, out_dir: Path, config: dict[str, Any],
                 on_step: Callable[[StepInfo], None] | None, heldout: HeldoutSet | None = None) -> None:
        self.data, self.net, self.model_cfg, self.cfg = data, net, model_cfg, cfg
        self.heldout = heldout
        self.heldout_records: list[dict[str, Any]] = []
        self.dist, self.device = dist, device
        self.out_dir, self.config, self.on_step = out_dir, config, on_step
        self.ckpt_path = out_dir / "checkpoints" / "last.pt"
        # DDP first: its set-up broadcasts rank 0's buffers, which would overwrite the rank-local BN
        # statistics that a resume restores (issue #21: the source of the 1e-7 torchrun resume gap).
        self.ddp = wrap_ddp(net.pm, dist, device, broadcast_buffers=False)
        self.start_epoch, self.start_step, self.global_step, self.resumed_from = _maybe_resume(
            net, self.ckpt_path, config, dist, data.spe)
        self.stop_group = stop_flag_group(dist, device)
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=dist.is_main)
        self.bar = Progress(data.total_steps - self.global_step, "pretrain", "step", enabled=dist.is_main)
        self.sums = MetricWindow(device)
        self.t_start = self.sums.t_window
        self.steps_run = 0
        self.last_epoch_means: dict[str, float] = {}

    def save(self, epoch: int, step_in_epoch: int) -> None:
        """checkpoints/last.pt (rank 0), with every rank's RNG states and rank-averaged BN statistics."""
        if step_in_epoch >= self.data.spe:
            epoch, step_in_epoch = epoch + 1, 0
        net = self.net
        own = [b.detach().clone() for b in _bn_buffers(net.pm)]
        average_bn_stats(net.pm)
        rngs = all_gather_objects(capture_rng())
        bn_per_rank = all_gather_objects([b.cpu() for b in own]) if self.dist.distributed else None
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, {
                "format": CHECKPOINT_FORMAT, "kind": "pretrain", "model": net.pm.state_dict(),
                "optimizer": net.optimizer.state_dict(), "scheduler": net.scheduler.state_dict(),
                "scaler": net.scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                "global_step": self.global_step, "steps_per_epoch": self.data.spe,
                "world_size": self.dist.world_size, "rng": rngs, "bn_stats_per_rank": bn_per_rank,
                "config": self.config,
                "num_parts": len(self.data.label_names), "label_names": self.data.label_names,
            })
        _set_bn_buffers(net.pm, own)  # training goes on with this rank's own statistics, saved or not
        barrier()

    def run(self) -> None:
        data, dist = self.data, self.dist
        if dist.is_main:
            self.metrics.write(event="start", epoch=self.start_epoch, step=self.global_step,
                               total_steps=data.total_steps, steps_per_epoch=data.spe, videos=len(data.dataset),
                               clips_skipped=data.dropped, world_size=dist.world_size,
                               global_batch=self.net.global_batch, lr=self.net.base_lr, device=str(self.device),
                               queue_size=self.net.pm.queue.size, amp=_amp_name(self.net.dtype),
                               resumed=self.resumed_from is not None)
        self.ddp.train()
        self.heldout_records = _previous_heldout(self.out_dir / "metrics.jsonl") if self.resumed_from else []
        if self.global_step == 0:
            self.evaluate_heldout(0)  # the untrained network (this seed's initialisation)
        try:
            with GracefulStop() as stop:
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    self.net.pm.lambda_a = self.cfg.lambda_a if epoch >= self.cfg.avid_start_epoch else 0.0
                    self.train_epoch(epoch, self.start_step if epoch == self.start_epoch else 0, stop)
                    self.end_epoch(epoch)
                    every = self.cfg.heldout_every
                    if every and (epoch + 1) % every == 0 and epoch + 1 < self.cfg.epochs:
                        self.evaluate_heldout(epoch + 1)
        finally:
            self.bar.close()
            self.metrics.close()
            shutdown_workers(data.loader)

    def train_epoch(self, epoch: int, first: int, stop: GracefulStop) -> None:
        """Steps ``first`` .. steps_per_epoch - 1 of ``epoch``; saves and raises when a stop is agreed."""
        self.data.sampler.set_epoch(epoch, start=first * self.cfg.batch_size)
        batches = iter(self.data.loader)
        self.sums.new_epoch()
        for step in range(first, self.data.spe):
            self.sums.add(self.train_step(next(batches)))
            if self.global_step % self.cfg.log_interval == 0 or step + 1 == self.data.spe:
                self.log_window(epoch)
            if self.on_step is not None:
                self.on_step(StepInfo(epoch, step + 1, self.global_step, self.net.pm, stop))
            if stop.agreed(self.stop_group):
                self.interrupt(epoch, step + 1, stop)

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; the model's outputs (losses and accuracies)."""
        net, device = self.net, self.device
        query, key_pos, key_neg = batch_clips(batch, device, self.cfg.augment_device, net.memory_format)
        key_avid = avid_key_clip(batch, device, self.cfg.augment_device, net.memory_format)
        target = batch["target"].to(device, non_blocking=True) if self.model_cfg.kd else None
        with autocast(device, net.dtype):
            out = self.ddp(query, key_pos, key_neg, target, batch["video_index"].to(device), key_avid)
        net.optimizer.zero_grad(set_to_none=True)
        net.scaler.scale(out["loss"]).backward()
        net.scaler.step(net.optimizer)
        net.scaler.update()
        net.scheduler.step()
        self.global_step += 1
        self.steps_run += 1
        return out

    def log_window(self, epoch: int) -> None:
        """Rank-averaged means of the window: a non-finite loss stops every rank; else a metrics record."""
        means = self.sums.window_means()
        if not all(math.isfinite(v) for v in means):  # agreed: means are all-reduced
            raise non_finite_loss("pretrain", epoch, self.global_step, self.ckpt_path)
        now = time.perf_counter()
        rate = self.sums.window_steps * self.net.global_batch / max(now - self.sums.t_window, 1e-9)
        lr_now = current_lr(self.net.optimizer)
        record = {k: round(v, 6) for k, v in zip(METRIC_KEYS, means)}
        if self.dist.is_main:
            self.metrics.write(event="step", epoch=epoch, step=self.global_step, lr=lr_now,
                               clips_per_s=round(rate, 3), **record)
        self.bar.update(self.sums.window_steps, postfix=f"ep {epoch} loss {record['loss']:.3f} "
                                                        f"kd {record['loss_kd']:.3f} rsp {record['loss_rsp']:.3f} "
                                                        f"avid {record['loss_avid']:.3f} lr {lr_now:.2e} "
                                                        f"{rate:.1f} clip/s")
        self.sums.reset_window(now)

    def evaluate_heldout(self, epochs_done: int) -> None:
        """Rank 0: the held-out figures of the student now, as a ``heldout`` record of metrics.jsonl."""
        if self.heldout is None:
            return
        if self.heldout_records and self.heldout_records[-1]["step"] == self.global_step:
            return  # already measured at this step (a resumed run)
        t0 = time.perf_counter()
        fig = evaluate_pretext(self.net.pm.student, self.heldout, self.device,
                               autocast=lambda: autocast(self.device, self.net.dtype))
        record = {"event": "heldout", "epoch": epochs_done, "step": self.global_step, **fig}
        self.heldout_records.append(record)
        self.metrics.write(**record)
        spent = time.perf_counter() - t0
        log.info("pretrain: held-out at step %d (%s): %s (%.1f s)", self.global_step,
                 "untrained" if self.global_step == 0 else f"{epochs_done} epochs", describe(fig), spent)
        # training rates and the ETA count training only (an evaluation is not a slow step)
        self.bar.exclude(spent)
        self.sums.exclude(spent)
        self.t_start += spent

    def interrupt(self, epoch: int, step_in_epoch: int, stop: GracefulStop) -> None:
        """Save at this step boundary, record why, and raise TrainingInterrupted."""
        if self.sums.window_steps:
            self.bar.update(self.sums.window_steps)
        self.save(epoch, step_in_epoch)
        if self.dist.is_main:
            self.metrics.write(event="interrupted", epoch=epoch, step=self.global_step, signal=stop.signal_name)
        raise TrainingInterrupted(stop.signal_name, self.ckpt_path, epoch, self.global_step)

    def end_epoch(self, epoch: int) -> None:
        if self.sums.epoch_steps:
            self.last_epoch_means = self.sums.epoch_means()
            if self.dist.is_main:
                self.metrics.write(event="epoch", epoch=epoch, step=self.global_step,
                                   lr=current_lr(self.net.optimizer),
                                   **{k: round(v, 6) for k, v in self.last_epoch_means.items()})
        self.save(epoch, self.data.spe)

    def finish(self) -> dict[str, Any]:
        """Write student.pt (rank 0) and return the stage summary."""
        data, net, dist = self.data, self.net, self.dist
        elapsed = time.perf_counter() - self.t_start
        clips_per_s = self.steps_run * net.global_batch / elapsed if self.steps_run else 0.0
        num_parts = len(data.label_names)
        average_bn_stats(net.pm)  # training is over: the saved student is rank-independent
        if dist.is_main and self.heldout is not None:
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", enabled=True)
            try:
                self.evaluate_heldout(self.cfg.epochs)
            finally:
                self.metrics.close()
        first = next((r for r in self.heldout_records if r["step"] == 0), None)
        last = self.heldout_records[-1] if self.heldout_records and self.heldout_records[-1]["step"] else None
        if dist.is_main:
            save_checkpoint(self.out_dir / "student.pt", {
                "model_config": dataclasses.asdict(self.model_cfg), "num_parts": num_parts,
                "label_names": data.label_names, "state_dict": net.pm.student.state_dict(),
                "epochs": self.cfg.epochs, "global_step": self.global_step,
            })
        barrier()
        return {
            "epochs": self.cfg.epochs, "steps": self.global_step, "steps_per_epoch": data.spe,
            "steps_this_run": self.steps_run, "videos": len(data.dataset), "clips": len(data.plan),
            "clips_skipped": data.dropped, "world_size": dist.world_size, "global_batch": net.global_batch,
            "lr": net.base_lr, "device": self.device.type, "amp": _amp_name(net.dtype),
            "clips_per_s": round(clips_per_s, 3),
            "final": {k: round(v, 6) for k, v in self.last_epoch_means.items()},
            "resumed_from": self.resumed_from, "num_parts": num_parts, "label_names": data.label_names,
            # on held-out videos (student/pretext_eval.py): the trained student and the untrained network
            "heldout": _figures(last), "heldout_untrained": _figures(first),
            "heldout_gain": paired_gain(last, first),  # trained − untrained, paired by held-out view, 95 % interval
        }

