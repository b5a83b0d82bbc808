"""The prepared GPU check: every GPU path of the pipeline measured in one run of at most ~8 minutes.

For the day a GPU is available for minutes, not hours. Sections, in order of importance (each one's
wall time is recorded; a section that would start after ``--budget-s`` is skipped and listed):

1. ``amp_parity``: the same pretraining steps from the same seed on the same batches in fp32 and
   in bf16; both loss curves and their final difference (is our mixed-precision default safe?).
2. ``pretrain``: samples/s for full-width C3D and R(2+1)D at 16×112², batch 32, bf16 +
   channels_last_3d: the GPU alone (tensors already on the device) and with the real loader
   (real clips, N workers, ``augment_device`` gpu and cpu); the ratio names the bottleneck; peak memory.
3. ``teacher``: teacher-cache anchor frames/s end to end (decode included, the real stage) for SCHP
   with random LIP weights, fp32 / bf16 / bf16+channels-last / fp16+channels-last × batch sizes, GPU
   utilisation and peak memory; bf16 and fp16 map agreement with fp32 (argmax %, max |Δp|).
4. ``ddp``: one-process process-group initialisation (``cpu:gloo,cuda:nccl``) and a few DDP steps.
5. ``finetune`` steps/s and ``evaluate`` views/s of the classifier under autocast.

``--smoke`` runs the same code on the CPU at toy sizes (tests/test_gpu_check.py), so the script
cannot rot before a GPU arrives. Writes ``bench/results/gpu_check.json`` (``--out``) and prints a table.

    python bench/gpu_check.py            # on the GPU machine
    python bench/gpu_check.py --smoke --out /tmp/gpu_check_smoke.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses: the real run's, or the smoke run's toy ones."""

    device: str
    width: float = 1.0
    clip_len: int = 16
    input_size: int = 112
    parse_size: int = 28
    batch: int = 32
    warmup_steps: int = 3
    timed_steps: int = 10
    parity_steps: int = 50
    parity_pool: int = 8  # distinct batches cycled through the parity run
    loader_workers: int = 16
    real_videos: int | None = None  # Kinetics clips for the loader (None: all of them)
    teacher_input: int = 473
    teacher_batches: tuple[int, ...] = (32, 64, 128)
    teacher_anchors: int = 8
    teacher_videos: int | None = None
    teacher_repeat: int = 8  # the clip list repeated, so every batch size fills a few batches
    finetune_batch: int = 16
    eval_batch: int = 64
    queue: int = 16384


FULL = Sizes(device="cuda:0")
SMOKE = Sizes(device="cpu", width=0.125, clip_len=8, input_size=32, parse_size=8, batch=2, warmup_steps=1,
              timed_steps=2, parity_steps=3, parity_pool=1, loader_workers=0, real_videos=2, teacher_input=65,
              teacher_batches=(2,), teacher_anchors=1, teacher_videos=2, teacher_repeat=1, finetune_batch=2,
              eval_batch=2, queue=64)


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------

def bf16_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def model_config(sz: Sizes, backbone: str):
    from pipeline.core.config import ModelConfig

    return ModelConfig(backbone=backbone, width=sz.width, input_size=sz.input_size, parse_size=sz.parse_size)


def pretrain_model(sz: Sizes, backbone: str, device: torch.device, memory_format: torch.memory_format,
                   num_parts: int = 20, seed: int = 0):
    """A PretrainModel as the pretrain stage builds it, on ``device`` in ``memory_format``."""
    from pipeline.core.config import PretrainConfig
    from student.pretrain import build_pretrain_model, to_memory_format

    torch.manual_seed(seed)
    cfg = PretrainConfig(batch_size=sz.batch, queue_size=sz.queue)
    pm = build_pretrain_model(model_config(sz, backbone), cfg, num_parts).to(device)
    to_memory_format(pm, memory_format)
    return pm


class Trainer:
    """One pretraining step exactly as student/pretrain.py runs it (autocast, scaler, SGD, schedule-free)."""

    def __init__(self, pm: Any, device: torch.device, dtype: torch.dtype | None, lr: float = 0.05) -> None:
        from student.optim import build_sgd

        self.pm, self.device, self.dtype = pm, device, dtype
        self.optimizer = build_sgd(pm.student, lr, 0.9, 1e-4)
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
        pm.train()

    def step(self, q: torch.Tensor, kp: torch.Tensor, kn: torch.Tensor, target: torch.Tensor | None,
             net: Any = None) -> dict[str, torch.Tensor]:
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with ctx:
            out = (net or self.pm)(q, kp, kn, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out


def device_batch(sz: Sizes, device: torch.device, memory_format: torch.memory_format, num_parts: int = 20,
                 seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random normalised clips and a soft target already on the device ("the GPU alone")."""
    g = torch.Generator().manual_seed(seed)
    shape = (sz.batch, 3, sz.clip_len, sz.input_size, sz.input_size)
    clips = [torch.randn(shape, generator=g).to(device).contiguous(memory_format=memory_format) for _ in range(3)]
    target = torch.softmax(torch.randn(sz.batch, num_parts, sz.parse_size, sz.parse_size, generator=g), 1)
    return (*clips, target.to(device))


def timed_steps(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call after ``warmup`` untimed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    common.sync()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    common.sync()
    return (time.perf_counter() - t) / steps


# ------------------------------------------------------------------------------------------------
# Real clips: manifest, a flat teacher cache stand-in, the real loader
# ------------------------------------------------------------------------------------------------

class FlatCache:
    """The teacher-cache reader's ``target`` over one fixed random map (the same resampling cost)."""

    def __init__(self, num_parts: int = 20, size: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.map = torch.softmax(torch.randn(1, num_parts, size, size, generator=g), 1)
        self.labels = [f"p{i}" for i in range(num_parts)]

    def target(self, clip_id: str, box: Any, flip: bool, size: Any) -> torch.Tensor:
        from teacher.cache_reader import resample_boxes

        return resample_boxes(self.map, [box], size, [flip])[0]


def real_manifest(work: Path, datasets: tuple[str, ...], limit: int | None, min_items: int = 1) -> Path:
    """A manifest over the real clips of ``datasets`` (``limit`` of them), listed as often as it takes to
    hold ``min_items`` videos (the shared folder holds a handful; the loader needs several batches)."""
    from data_manifests.manifest import load_manifest, write_manifest

    root = common.SHARED / "videos"
    videos = [p for p in common.real_clips() if p.relative_to(root).parts[0] in datasets][:limit]
    if not videos:
        raise SystemExit(f"gpu_check: no {'/'.join(datasets)} clips under {root}; set PIPELINE_SHARED_DATA")
    base = work / f"manifest-{'-'.join(datasets)}-{len(videos)}"
    if not (base / "manifest.jsonl").is_file():
        common.manifest_of(videos, root, base)
    repeat = -(-min_items // len(videos))
    if repeat == 1:
        return base
    out = work / f"{base.name}x{repeat}"
    m = load_manifest(base)
    entries = [dataclasses.replace(e, id=f"{e.id}_r{r}") for r in range(repeat) for e in m.entries]
    write_manifest(out, dataclasses.replace(m, entries=entries), [])
    return out


def real_loader(sz: Sizes, manifest_dir: Path, augment_device: str, workers: int, seed: int = 0):
    """The pretraining dataset and loader over real clips (kd targets from :class:`FlatCache`)."""
    from data_manifests.clip_plan import build_clip_plan
    from data_manifests.manifest import load_manifest
    from pipeline.core.config import ClipsConfig
    from student.pretrain_data import PretrainClipDataset, build_pretrain_loader

    manifest = load_manifest(manifest_dir)
    clips = ClipsConfig(clip_len=sz.clip_len, speeds=[1, 2], splits=["train"])
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    ds = PretrainClipDataset(manifest, plan, FlatCache(), model_config(sz, "c3d"), clips, seed=seed,
                             augment_device=augment_device)
    loader, sampler = build_pretrain_loader(ds, sz.batch, workers, seed=seed, pin_memory=torch.cuda.is_available())
    return loader, sampler


def cycle_batches(loader: Any, sampler: Any):
    """Batches forever, epoch after epoch (the sampler restarts each time)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------

def parity_pool(sz: Sizes, manifest_dir: Path) -> list[dict[str, Any]]:
    """``parity_pool`` real-loader batches (uint8 + colour parameters), kept on the host."""
    loader, sampler = real_loader(sz, manifest_dir, "gpu", sz.loader_workers)
    batches = cycle_batches(loader, sampler)
    pool = [next(batches) for _ in range(sz.parity_pool)]
    from student.pretrain_data import shutdown_workers

    shutdown_workers(loader)
    return pool


def amp_parity(sz: Sizes, device: torch.device, manifest_dir: Path) -> dict[str, Any]:
    """The same steps, seed and batches in fp32 and bf16 (+ channels_last_3d on CUDA): both loss curves."""
    from student.gpu_augment import batch_clips
    from student.pretrain import clip_memory_format

    pool = parity_pool(sz, manifest_dir)
    curves: dict[str, dict[str, list[float]]] = {}
    for name, dtype in (("fp32", None), ("bf16", bf16_dtype(device))):
        fmt = clip_memory_format(device, dtype)
        pm = pretrain_model(sz, "c3d", device, fmt, seed=0)
        trainer = Trainer(pm, device, dtype)
        torch.manual_seed(1)  # the shuffle-BN permutations: the same stream in both runs
        outs = []
        for i in range(sz.parity_steps):
            batch = pool[i % len(pool)]
            q, kp, kn = batch_clips(batch, device, "gpu", fmt)
            out = trainer.step(q, kp, kn, batch["target"].to(device))
            outs.append(torch.stack([out[k].detach().float() for k in ("loss", "loss_kd", "loss_rsp", "loss_avid")]))
        values = torch.stack(outs).cpu().tolist()
        curves[name] = {k: [round(v[j], 5) for v in values] for j, k in enumerate(("loss", "kd", "rsp", "avid"))}
        del pm, trainer
    last = max(1, sz.parity_steps // 5)
    diff = {k: round(abs(np.mean(curves["bf16"][k][-last:]) - np.mean(curves["fp32"][k][-last:])), 5)
            for k in curves["fp32"]}
    rel = round(diff["loss"] / max(abs(float(np.mean(curves["fp32"]["loss"][-last:]))), 1e-9), 5)
    return {"steps": sz.parity_steps, "distinct_batches": len(pool), "curves": curves,
            f"abs_diff_mean_last_{last}_steps": diff, "rel_diff_loss": rel,
            "first_loss": {k: v["loss"][0] for k, v in curves.items()},
            "final_loss": {k: v["loss"][-1] for k, v in curves.items()}}


def pretrain_gpu_alone(sz: Sizes, device: torch.device, backbone: str) -> dict[str, Any]:
    """samples/s of full training steps on tensors already on the device, bf16 + channels_last_3d."""
    from student.pretrain import clip_memory_format

    dtype = bf16_dtype(device)
    fmt = clip_memory_format(device, dtype)
    reset_peak(device)
    pm = pretrain_model(sz, backbone, device, fmt)
    trainer = Trainer(pm, device, dtype)
    q, kp, kn, target = device_batch(sz, device, fmt)
    s = timed_steps(lambda: trainer.step(q, kp, kn, target), sz.warmup_steps, sz.timed_steps, device)
    return {"samples_per_s": round(sz.batch / s, 2), "step_s": round(s, 4), "peak_memory_mb": peak_memory_mb(device),
            "memory_format": str(fmt).replace("torch.", ""), "amp": "bf16"}


def pretrain_with_loader(sz: Sizes, device: torch.device, backbone: str, manifest_dir: Path,
                         augment_device: str) -> dict[str, Any]:
    """samples/s of the same steps fed by the real loader over real clips (``loader_workers`` workers)."""
    from student.gpu_augment import batch_clips
    from student.pretrain import clip_memory_format
    from student.pretrain_data import shutdown_workers

    dtype = bf16_dtype(device)
    fmt = clip_memory_format(device, dtype)
    pm = pretrain_model(sz, backbone, device, fmt)
    trainer = Trainer(pm, device, dtype)
    loader, sampler = real_loader(sz, manifest_dir, augment_device, sz.loader_workers)
    batches = cycle_batches(loader, sampler)

    def step() -> None:
        batch = next(batches)
        q, kp, kn = batch_clips(batch, device, augment_device, fmt)
        trainer.step(q, kp, kn, batch["target"].to(device, non_blocking=True))

    sampler_util = common.GpuSampler() if device.type == "cuda" else None
    try:
        with sampler_util or nullcontext():
            s = timed_steps(step, sz.warmup_steps + 1, sz.timed_steps, device)
    finally:
        shutdown_workers(loader)
    out = {"samples_per_s": round(sz.batch / s, 2), "workers": sz.loader_workers, "augment_device": augment_device}
    if sampler_util is not None:
        out["gpu_utilisation"] = sampler_util.summary()
    return out


def pretrain_section(sz: Sizes, device: torch.device, manifest_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backbone in ("c3d", "r2plus1d"):
        alone = pretrain_gpu_alone(sz, device, backbone)
        row: dict[str, Any] = {"gpu_alone": alone}
        for aug in ("gpu", "cpu"):
            fed = pretrain_with_loader(sz, device, backbone, manifest_dir, aug)
            fed["ratio_to_gpu_alone"] = common.ratio(fed["samples_per_s"], alone["samples_per_s"])
            row[f"loader_augment_{aug}"] = fed
        best = max(row["loader_augment_gpu"]["ratio_to_gpu_alone"], row["loader_augment_cpu"]["ratio_to_gpu_alone"])
        row["bottleneck"] = "loader (CPU)" if best < 0.9 else "GPU"
        out[backbone] = row
    return out


def teacher_variants(sz: Sizes, device: torch.device) -> list[tuple[str, str, bool, int]]:
    """(name, teacher.amp, channels_last, batch): fp32 and bf16 at one batch size, the fast layouts at all."""
    mid = sz.teacher_batches[len(sz.teacher_batches) // 2]
    out = [("fp32", "off", False, mid), ("bf16", "bf16", False, mid)]
    out += [("bf16_cl", "bf16", True, b) for b in sz.teacher_batches]
    if device.type == "cuda":
        out += [("fp16_cl", "fp16", True, b) for b in sz.teacher_batches]
    return out


def run_teacher_cache(sz: Sizes, device: torch.device, manifest_dir: Path, out: Path, ckpt: Path, digest: str,
                      amp: str, channels_last: bool, batch: int) -> dict[str, Any]:
    """The real teacher-cache stage on the real clips' anchor frames; the model's layout forced as asked."""
    from pipeline.core.config import ClipsConfig, TeacherConfig
    from pipeline.core.distributed import DistInfo
    from teacher import cache_stage

    cfg = TeacherConfig(backend="schp", checkpoint=str(ckpt), labels="lip", input_size=sz.teacher_input, map_size=64,
                        batch_size=batch, workers=sz.loader_workers, device=str(device), amp=amp)
    clips = ClipsConfig(anchors_per_video=sz.teacher_anchors, clip_len=16, speeds=[1, 2], splits=["train"])
    original = cache_stage.make_backend

    def with_layout(*a: Any, **kw: Any) -> Any:
        backend = original(*a, **kw)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        backend.model = backend.model.to(memory_format=fmt)
        return backend

    cache_stage.make_backend = with_layout
    shutil.rmtree(out, ignore_errors=True)
    reset_peak(device)
    sampler = common.GpuSampler()
    try:
        with sampler:
            t = time.perf_counter()
            summary = cache_stage.build_teacher_cache(manifest_dir, out, cfg, clips, dist=DistInfo(device=str(device)),
                                                      fingerprint="gpu_check", checkpoint_sha256=digest)
            seconds = time.perf_counter() - t
    finally:
        cache_stage.make_backend = original
    return {"frames": summary["clips"], "seconds": round(seconds, 2),
            "frames_per_s": round(summary["clips"] / seconds, 2),
            "stage_frames_per_s": summary.get("clips_per_s"), "batch": batch, "peak_memory_mb": peak_memory_mb(device),
            "gpu_utilisation": sampler.summary(), "failed": summary.get("failed")}


def map_agreement(a: Path, b: Path) -> dict[str, Any]:
    """Argmax agreement (%) and max |Δp| between two caches of the same clips."""
    from teacher.cache_reader import TeacherCache

    ca, cb = TeacherCache(a), TeacherCache(b)
    agree, dmax = [], 0.0
    for cid in ca.clip_ids():
        x, y = ca.map(cid), cb.map(cid)
        agree.append(float((x.argmax(0) == y.argmax(0)).mean()))
        dmax = max(dmax, float(np.abs(x - y).max()))
    return {"argmax_agreement_pct": round(100 * float(np.mean(agree)), 3), "max_abs_prob_diff": round(dmax, 5),
            "maps": len(agree)}


def teacher_section(sz: Sizes, device: torch.device, work: Path) -> dict[str, Any]:
    from pipeline.core.fingerprint import sha256_file

    ckpt = common.random_schp_checkpoint(common.work_dir("schp") / "random_lip20_seed0.pth")
    digest = sha256_file(ckpt)
    n = len(common.real_clips()[:sz.teacher_videos] if sz.teacher_videos else common.real_clips())
    manifest_dir = real_manifest(work, common.REAL_CLIP_DIRS, sz.teacher_videos, n * sz.teacher_repeat)
    runs: dict[str, Any] = {}
    first: dict[str, Path] = {}
    for name, amp, cl, batch in teacher_variants(sz, device):
        out = work / f"teacher-{name}-b{batch}"
        runs[f"{name}_b{batch}"] = run_teacher_cache(sz, device, manifest_dir, out, ckpt, digest, amp, cl, batch)
        first.setdefault(name, out)
    agreement = {name: map_agreement(first["fp32"], path) for name, path in first.items() if name != "fp32"}
    return {"input_size": sz.teacher_input, "anchors_per_video": sz.teacher_anchors, "runs": runs,
            "agreement_with_fp32": agreement}


def ddp_section(sz: Sizes, device: torch.device) -> dict[str, Any]:
    """A one-process group as torchrun would make it (``cpu:gloo,cuda:nccl``) and a few DDP pretraining steps."""
    import socket

    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.core.distributed import process_group_backend
    from student.pretrain import clip_memory_format

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = process_group_backend()
    t = time.perf_counter()
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    init_s = time.perf_counter() - t
    try:
        dtype = bf16_dtype(device)
        fmt = clip_memory_format(device, dtype)
        pm = pretrain_model(sz, "c3d", device, fmt)
        net = DistributedDataParallel(pm, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
        trainer = Trainer(pm, device, dtype)
        q, kp, kn, target = device_batch(sz, device, fmt)
        s = timed_steps(lambda: trainer.step(q, kp, kn, target, net=net), 1, max(2, sz.timed_steps // 2), device)
        flag = torch.zeros(1)
        tdist.all_reduce(flag)  # the CPU stop flag of the training loops, on the same group
    finally:
        tdist.destroy_process_group()
    return {"backend": backend, "init_s": round(init_s, 3), "ddp_samples_per_s": round(sz.batch / s, 2)}


def classifier(sz: Sizes, device: torch.device, fmt: torch.memory_format):
    from student.finetune import build_classifier
    from student.pretrain import to_memory_format

    net = build_classifier(model_config(sz, "c3d"), 101, None).to(device)
    to_memory_format(net, fmt)
    return net


def finetune_eval_section(sz: Sizes, device: torch.device) -> dict[str, Any]:
    """Finetuning steps/s (SGD, bf16 autocast) and evaluation views/s (no_grad, bf16 autocast),
    C3D on UCF101's 101 classes."""
    import torch.nn.functional as F

    from student.optim import build_sgd
    from student.pretrain import clip_memory_format

    dtype = bf16_dtype(device)
    fmt = clip_memory_format(device, dtype)
    net = classifier(sz, device, fmt)
    opt = build_sgd(net, 0.01, 0.9, 5e-4)
    g = torch.Generator().manual_seed(0)
    shape = (sz.finetune_batch, 3, sz.clip_len, sz.input_size, sz.input_size)
    x = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, 101, (sz.finetune_batch,), generator=g).to(device)

    def ft_step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    net.train()
    reset_peak(device)
    ft_s = timed_steps(ft_step, sz.warmup_steps, sz.timed_steps, device)
    ft_mem = peak_memory_mb(device)
    net.eval()
    xe = torch.randn((sz.eval_batch, *shape[1:]), generator=g).to(device).contiguous(memory_format=fmt)

    def eval_batch() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            net(xe).float().softmax(1)

    ev_s = timed_steps(eval_batch, sz.warmup_steps, sz.timed_steps, device)
    return {"finetune_steps_per_s": round(1 / ft_s, 2), "finetune_batch": sz.finetune_batch,
            "finetune_peak_memory_mb": ft_mem, "eval_views_per_s": round(sz.eval_batch / ev_s, 1),
            "eval_batch": sz.eval_batch}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def run_sections(sections: list[tuple[str, Callable[[], dict[str, Any]]]], budget_s: float) -> dict[str, Any]:
    """Run each section in order, recording its seconds; after ``budget_s`` the rest are skipped.

    A failing section is recorded (type, message) and the others still run: minutes on a GPU are scarce.
    """
    import traceback

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for name, fn in sections:
        if time.perf_counter() - t0 > budget_s:
            out[name] = {"skipped": f"time budget of {budget_s:.0f} s spent"}
            continue
        t = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001 - recorded and reported; the exit code says it failed
            traceback.print_exc()
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"[gpu_check] {name} done in {out[name]['seconds']} s", flush=True)
    return out


def table_rows(fig: dict[str, Any]) -> list[dict[str, Any]]:
    """One printable row per measured figure."""
    rows: list[dict[str, Any]] = []
    par = fig.get("amp_parity", {})
    if "rel_diff_loss" in par:
        rows.append({"check": "amp parity (loss, fp32 vs bf16)", "value": par["rel_diff_loss"],
                     "unit": "relative diff", "note": f"final {par['final_loss']}"})
    for bb, row in fig.get("pretrain", {}).items():
        if not isinstance(row, dict) or "gpu_alone" not in row:
            continue
        rows.append({"check": f"pretrain {bb} GPU alone", "value": row["gpu_alone"]["samples_per_s"],
                     "unit": "samples/s", "note": f"peak {row['gpu_alone']['peak_memory_mb']} MB"})
        for aug in ("gpu", "cpu"):
            r = row[f"loader_augment_{aug}"]
            rows.append({"check": f"pretrain {bb} + loader (augment {aug})", "value": r["samples_per_s"],
                         "unit": "samples/s",
                         "note": f"{r['ratio_to_gpu_alone']} of GPU alone, {r['workers']} workers"})
    for key, r in fig.get("teacher", {}).get("runs", {}).items():
        util = (r.get("gpu_utilisation") or {}).get("mean_pct")
        rows.append({"check": f"teacher {key}", "value": r["frames_per_s"], "unit": "frames/s",
                     "note": f"peak {r['peak_memory_mb']} MB, GPU {util} %"})
    for key, a in fig.get("teacher", {}).get("agreement_with_fp32", {}).items():
        rows.append({"check": f"teacher {key} vs fp32", "value": a["max_abs_prob_diff"], "unit": "max |dp|",
                     "note": f"argmax {a['argmax_agreement_pct']} %"})
    ddp = fig.get("ddp", {})
    if "ddp_samples_per_s" in ddp:
        rows.append({"check": f"DDP ({ddp['backend']})", "value": ddp["ddp_samples_per_s"], "unit": "samples/s",
                     "note": f"init {ddp['init_s']} s"})
    fe = fig.get("finetune_evaluate", {})
    if "finetune_steps_per_s" in fe:
        rows.append({"check": "finetune", "value": fe["finetune_steps_per_s"], "unit": "steps/s",
                     "note": f"batch {fe['finetune_batch']}"})
        rows.append({"check": "evaluate", "value": fe["eval_views_per_s"], "unit": "views/s",
                     "note": f"batch {fe['eval_batch']}"})
    for name, sec in fig.items():
        if isinstance(sec, dict) and ("error" in sec or "skipped" in sec):
            rows.append({"check": name, "value": None, "unit": "", "note": sec.get("error") or sec.get("skipped")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU at toy sizes (tests)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu_check.json; "
                                                           "smoke: bench/results/gpu_check_smoke.json)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip the sections that would start after this")
    ap.add_argument("--workers", type=int, default=None, help="loader / decode workers (default: 16, capped by CPUs)")
    ap.add_argument("--sections", nargs="+", default=None,
                    choices=["amp_parity", "pretrain", "teacher", "ddp", "finetune_evaluate"])
    args = ap.parse_args(argv)

    if args.smoke:
        sz = SMOKE
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    else:
        sz = dataclasses.replace(FULL, loader_workers=min(FULL.loader_workers, max(1, (os.cpu_count() or 2) - 1)))
        torch.backends.cudnn.benchmark = True  # as pretraining sets it
    if args.workers is not None:
        sz = dataclasses.replace(sz, loader_workers=args.workers)
    device = torch.device(sz.device)
    work = common.work_dir("gpu_check-smoke" if args.smoke else "gpu_check")
    bench = common.Bench("gpu_check", "the GPU paths: amp parity, pretraining, teacher cache, DDP, finetune, eval",
                         dataclasses.asdict(sz) | {"smoke": args.smoke})
    # the loader's cost on Kinetics clips (340×256, ~300 frames), repeated to hold several batches
    manifest = real_manifest(work, ("kinetics400",), sz.real_videos, 8 * sz.batch)
    sections = [("amp_parity", lambda: amp_parity(sz, device, manifest)),
                ("pretrain", lambda: pretrain_section(sz, device, manifest)),
                ("teacher", lambda: teacher_section(sz, device, work)),
                ("ddp", lambda: ddp_section(sz, device)),
                ("finetune_evaluate", lambda: finetune_eval_section(sz, device))]
    if args.sections:
        sections = [s for s in sections if s[0] in args.sections]
    figures = run_sections(sections, args.budget_s)
    common.print_table(table_rows(figures), title="\nGPU check" + (" (SMOKE: CPU, toy sizes)" if args.smoke else ""))
    out = args.out or common.RESULTS / ("gpu_check_smoke.json" if args.smoke else "gpu_check.json")
    notes = ["smoke run: CPU, toy sizes; the figures only show that the code runs"] if args.smoke else []
    bench.write(figures, out, notes)
    failed = [k for k, v in figures.items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
