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
are averaged over ranks before every checkpoint, so the saved model is rank-independent.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data_manifests.clip_plan import build_clip_plan
from data_manifests.manifest import load_manifest
from pipeline.config import ClipsConfig, ModelConfig, PretrainConfig
from pipeline.distributed import DistInfo, all_gather_objects, barrier, resolve_device
from pipeline.progress import MetricsLog, Progress
from student.checkpointing import (CheckpointError, GracefulStop, TrainingInterrupted, capture_rng,
                                   load_checkpoint, non_finite_loss, restore_rng, save_checkpoint)
from student.optim import build_sgd, cosine_schedule, current_lr, scaled_lr
from student.pretrain_data import (PretrainClipDataset, build_pretrain_loader, clips_with_maps, shutdown_workers,
                                  steps_per_epoch)
from student.gpu_augment import batch_clips
from student.moco import trimmed_queue_size
from student.pretrain_model import PretrainModel

log = logging.getLogger("pipeline.pretrain")

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
    """The autocast dtype for ``pretrain.amp`` on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        if amp == "fp16":
            raise ValueError("pretrain.amp = 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
        return torch.bfloat16
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if amp == "fp16" else torch.bfloat16


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


def build_pretrain_model(model: ModelConfig, cfg: PretrainConfig, num_parts: int,
                         global_batch: int | None = None) -> PretrainModel:
    """The pretraining model; the queue is trimmed to a multiple of ``global_batch`` (default: one
    process's batch), as RSPNet requires."""
    return PretrainModel(backbone=model.backbone, width=model.width, split_after=model.split_after,
                         num_parts=max(num_parts, 1), parse_size=model.parse_size, kd=model.kd,
                         task_dependent=model.task_dependent, proj_dim=model.proj_dim,
                         queue_size=trimmed_queue_size(cfg.queue_size, global_batch or cfg.batch_size),
                         momentum=cfg.moco_momentum,
                         tau=cfg.temperature, margin=cfg.margin, lambda_kd=cfg.lambda_kd, lambda_m=cfg.lambda_m,
                         lambda_a=cfg.lambda_a, exclude_same_video=cfg.exclude_same_video)


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
        raise FileNotFoundError(f"pretrain.init_from: {p} does not exist")
    try:
        load_encoders(pm.student, p)
    except Exception as exc:  # noqa: BLE001 - any unusable file: one error naming it and the key
        raise CheckpointError(f"pretrain.init_from: {p} cannot be used ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    s = pm.student
    momentum_update((s.f_l, s.h_c, s.g_m, s.g_a), pm.key_encoder.parts(), 0.0)  # θ_k ← θ_q


def _bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var"))]


def average_bn_stats(module: nn.Module) -> None:
    """Average BN running statistics over ranks (see the module docstring)."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return
    world = tdist.get_world_size()
    with torch.no_grad():
        for b in _bn_buffers(module):
            tdist.all_reduce(b, op=tdist.ReduceOp.SUM)
            b.div_(world)


def _config_dict(model: ModelConfig, cfg: PretrainConfig, clips: ClipsConfig) -> dict[str, Any]:
    return {"model": dataclasses.asdict(model), "pretrain": dataclasses.asdict(cfg), "clips": dataclasses.asdict(clips)}


_RESUME_KEYS = ("model", "clips")
_RESUME_PRETRAIN_SEMANTIC = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lambda_kd", "lambda_m",
                             "lambda_a", "queue_size", "exclude_same_video", "moco_momentum", "temperature", "margin",
                             "crop_area", "seed", "max_steps_per_epoch")


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
# The loop
# --------------------------------------------------------------------------------------------

def pretrain(manifest_dir: Path, cache_dir: Path | None, out_dir: Path, model: ModelConfig, cfg: PretrainConfig,
             clips: ClipsConfig, *, dist: DistInfo, on_step: Callable[[StepInfo], None] | None = None) -> dict:
    """Pretrain the multi-task student; write checkpoints/last.pt, student.pt and metrics.jsonl into ``out_dir``.

    Every rank calls this (``dist`` says which); rank 0 writes files. Raises
    :class:`~student.checkpointing.TrainingInterrupted` after saving a checkpoint when SIGTERM or
    SIGINT arrives. ``on_step`` is called after every optimizer step (tests use it).
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    device = torch.device(dist.device if cfg.device == "auto" else resolve_device(cfg.device, dist.local_rank))

    prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the current device is the one whose RNG state checkpoints carry
    try:
        return _run(manifest_dir, cache_dir, out_dir, ckpt_path, model, cfg, clips, dist, device, on_step)
    finally:
        torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


def _run(manifest_dir: Path, cache_dir: Path | None, out_dir: Path, ckpt_path: Path, model: ModelConfig,
         cfg: PretrainConfig, clips: ClipsConfig, dist: DistInfo, device: torch.device,
         on_step: Callable[[StepInfo], None] | None) -> dict:
    rank, world = dist.rank, dist.world_size

    # ---- data ---------------------------------------------------------------------------------
    manifest = load_manifest(manifest_dir)
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    cache = None
    label_names: list[str] = []
    dropped = 0
    if model.kd:
        if cache_dir is None:
            raise ValueError("model.kd is on but no teacher cache was given (run `pipeline teacher-cache`, "
                             "or set model.kd = false)")
        from teacher.cache_reader import TeacherCache

        cache = TeacherCache(cache_dir)
        label_names = cache.labels
        kept = clips_with_maps(plan, cache, cfg.max_missing_maps)  # refuses when a shard is gone
        dropped = len(plan) - len(kept)
        if not kept:
            raise ValueError(f"teacher cache {cache_dir} has no map for any clip of the {manifest.dataset} clip plan "
                             f"({len(plan)} clips): was it built from this manifest and clip settings?")
        if dropped and dist.is_main:
            log.warning("pretrain: %d of %d clips have no teacher map (their frames failed to decode in the "
                        "teacher-cache stage; see its failed.jsonl) and are skipped", dropped, len(plan))
        plan = kept
    num_parts = len(label_names)
    dataset = PretrainClipDataset(manifest, plan, cache, model, clips, crop_area=cfg.crop_area, seed=cfg.seed,
                                  augment_device=cfg.augment_device)
    loader, sampler = build_pretrain_loader(dataset, cfg.batch_size, cfg.workers, rank=rank, world_size=world,
                                            seed=cfg.seed, pin_memory=device.type == "cuda")
    spe = steps_per_epoch(sampler, cfg.batch_size)
    if cfg.max_steps_per_epoch > 0:
        spe = min(spe, cfg.max_steps_per_epoch)
    total_steps = spe * cfg.epochs

    # ---- model, optimizer, schedule -------------------------------------------------------------
    seed_all(cfg.seed)  # identical initial weights and queue on every rank
    global_batch = cfg.batch_size * world
    pm = build_pretrain_model(model, cfg, num_parts, global_batch)
    if dist.is_main:
        warn_queue_size(pm.queue.size, len(dataset), cfg.exclude_same_video)
    if cfg.init_from:
        init_from_checkpoint(pm, cfg.init_from)
    pm.to(device)
    base_lr = scaled_lr(cfg.lr, global_batch)
    optimizer = build_sgd(pm.student, base_lr, cfg.momentum, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, total_steps)
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    memory_format = clip_memory_format(device, dtype)
    to_memory_format(pm, memory_format)
    seed_all(cfg.seed + rank)  # per-rank training stream (shuffle-BN permutations, ...)

    config = _config_dict(model, cfg, clips)
    start_epoch, start_step, global_step = 0, 0, 0
    resumed_from = None
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(state, ckpt_path, config, world, spe)
        pm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        global_step = int(state["global_step"])
        restore_rng(state["rng"][rank])
        resumed_from = {"epoch": start_epoch, "step_in_epoch": start_step, "global_step": global_step}
        if dist.is_main:
            log.info("pretrain: resuming from %s at epoch %d, step %d", ckpt_path.name, start_epoch, start_step)

    net: nn.Module = pm
    if dist.distributed:
        net = DistributedDataParallel(pm, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
    stop_group = tdist.new_group(backend="gloo") if dist.distributed and device.type == "cuda" else None

    def save(epoch: int, step_in_epoch: int) -> None:
        if step_in_epoch >= spe:
            epoch, step_in_epoch = epoch + 1, 0
        average_bn_stats(pm)
        rngs = all_gather_objects(capture_rng())
        if dist.is_main:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "kind": "pretrain", "model": pm.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                "global_step": global_step, "steps_per_epoch": spe, "world_size": world, "rng": rngs,
                "config": config, "num_parts": num_parts, "label_names": label_names,
            })
        barrier()

    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=dist.is_main)
    bar = Progress(total_steps - global_step, "pretrain", "step", enabled=dist.is_main)
    window = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=device)
    epoch_sum = torch.zeros_like(window)
    window_steps, epoch_steps = 0, 0
    t_window = t_start = time.perf_counter()
    steps_run = 0
    last_epoch_means: dict[str, float] = {}
    if dist.is_main:
        metrics.write(event="start", epoch=start_epoch, step=global_step, total_steps=total_steps,
                      steps_per_epoch=spe, videos=len(dataset), clips_skipped=dropped, world_size=world,
                      global_batch=global_batch, lr=base_lr, device=str(device), queue_size=pm.queue.size,
                      amp=str(dtype).replace("torch.", "") if dtype else "off", resumed=resumed_from is not None)

    net.train()
    try:
        with GracefulStop() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                first = start_step if epoch == start_epoch else 0
                sampler.set_epoch(epoch, start=first * cfg.batch_size)
                batches = iter(loader)
                epoch_sum.zero_()
                epoch_steps = 0
                for step in range(first, spe):
                    batch = next(batches)
                    query, key_pos, key_neg = batch_clips(batch, device, cfg.augment_device, memory_format)
                    target = batch["target"].to(device, non_blocking=True) if model.kd else None
                    with autocast():
                        out = net(query, key_pos, key_neg, target, batch["video_index"].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(out["loss"]).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    global_step += 1
                    steps_run += 1
                    with torch.no_grad():
                        vec = torch.stack([out[k].detach().double() for k in METRIC_KEYS])
                    window += vec
                    epoch_sum += vec
                    window_steps += 1
                    epoch_steps += 1

                    if global_step % cfg.log_interval == 0 or step + 1 == spe:
                        means = _reduce_mean(window / window_steps)
                        if not all(math.isfinite(v) for v in means):  # agreed: means are all-reduced
                            raise non_finite_loss("pretrain", epoch, global_step, ckpt_path)
                        now = time.perf_counter()
                        rate = window_steps * global_batch / max(now - t_window, 1e-9)
                        lr_now = current_lr(optimizer)
                        record = {k: round(v, 6) for k, v in zip(METRIC_KEYS, means)}
                        if dist.is_main:
                            metrics.write(event="step", epoch=epoch, step=global_step, lr=lr_now,
                                          clips_per_s=round(rate, 3), **record)
                        bar.update(window_steps, postfix=f"ep {epoch} loss {record['loss']:.3f} "
                                                         f"kd {record['loss_kd']:.3f} rsp {record['loss_rsp']:.3f} "
                                                         f"avid {record['loss_avid']:.3f} lr {lr_now:.2e} "
                                                         f"{rate:.1f} clip/s")
                        window.zero_()
                        window_steps, t_window = 0, now

                    if on_step is not None:
                        on_step(StepInfo(epoch, step + 1, global_step, pm, stop))
                    if stop.agreed(stop_group):
                        if window_steps:
                            bar.update(window_steps)
                        save(epoch, step + 1)
                        if dist.is_main:
                            metrics.write(event="interrupted", epoch=epoch, step=global_step, signal=stop.signal_name)
                        raise TrainingInterrupted(stop.signal_name, ckpt_path, epoch, global_step)
                if epoch_steps:
                    last_epoch_means = dict(zip(METRIC_KEYS, _reduce_mean(epoch_sum / epoch_steps)))
                    if dist.is_main:
                        metrics.write(event="epoch", epoch=epoch, step=global_step, lr=current_lr(optimizer),
                                      **{k: round(v, 6) for k, v in last_epoch_means.items()})
                save(epoch, spe)
    finally:
        bar.close()
        metrics.close()
        shutdown_workers(loader)

    elapsed = time.perf_counter() - t_start
    clips_per_s = steps_run * global_batch / elapsed if steps_run else 0.0
    student_path = out_dir / "student.pt"
    if dist.is_main:
        save_checkpoint(student_path, {
            "model_config": dataclasses.asdict(model), "num_parts": num_parts, "label_names": label_names,
            "state_dict": pm.student.state_dict(), "epochs": cfg.epochs, "global_step": global_step,
        })
    barrier()
    return {
        "epochs": cfg.epochs, "steps": global_step, "steps_per_epoch": spe, "steps_this_run": steps_run,
        "videos": len(dataset), "clips": len(plan), "clips_skipped": dropped, "world_size": world,
        "global_batch": global_batch, "lr": base_lr, "device": device.type,
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "clips_per_s": round(clips_per_s, 3), "final": {k: round(v, 6) for k, v in last_epoch_means.items()},
        "resumed_from": resumed_from, "num_parts": num_parts, "label_names": label_names,
    }


def _reduce_mean(vec: torch.Tensor) -> list[float]:
    """Average a metric vector over ranks (one all-reduce at log time), as floats."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        vec = vec.clone()
        tdist.all_reduce(vec, op=tdist.ReduceOp.SUM)
        vec /= tdist.get_world_size()
    return [float(v) for v in vec.cpu()]

