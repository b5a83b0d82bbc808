"""Supervised finetuning: f_l + h_h + h_c from pretraining → pooled features → Linear(num_classes).

Protocol: RSPNet's presets (``student.protocols``), SGD with a per-iteration schedule
(``student.optim``), AMP on GPU, DDP + DistributedSampler under torchrun (``batch_size`` is per
process), SyncBatchNorm on multi-GPU CUDA only.

Epoch selection (``cfg.select_on``):
  - ``"val"``: ``cfg.val_fraction`` of each class's train videos (chosen by ``seed``) are held out
    and never trained on; after every epoch the held-out videos are scored with a cheap view count
    (:data:`VAL_CLIPS` evenly spaced centre-crop clips, combined as the protocol's test does:
    logits averaged for the paper / RSPNet protocols, softmax for custom; video-level top-1) and
    the best epoch is kept (ties: the earlier epoch). An empty held-out set (tiny data or
    val_fraction 0) falls back to ``"last"`` and the summary says so. The default.
  - ``"test"``: the test-selected reporting mode, for comparing with RSPNet's published numbers:
    every train video is trained on and the epoch is chosen on the TEST split with the same cheap
    views (RSPNet's practice). Optimistic: summary, classifier.pt and metrics.json say so, and the
    results table (``pipeline.results``) puts its figures in their own "test-selected" columns,
    never in the default ones.
  - ``"last"``: every train video is trained on; the last epoch is kept.

Batches: ``batch_size`` clips per process; the ragged last batch of an epoch is dropped (tiny
batches upset BatchNorm) unless the data is so small that every rank has fewer than two batches.
The lr schedule is per iteration: cosine to lr/1000 (as RSPNet's pretraining), or ×0.1 at each
milestone epoch.

Deterministic mode (``cfg.deterministic``): seeds fixed, cuDNN deterministic and
``torch.use_deterministic_algorithms`` on CUDA; CPU kernels are already deterministic for a fixed
thread count.

Resume: ``checkpoints/last.pt`` (model, optimizer, scheduler, scaler, epoch, step within the epoch,
RNG states, selection state) is written after every epoch and when SIGTERM/SIGINT arrives
(``GracefulStop``, at a step boundary). A sample's augmentation is a function of (seed, epoch,
index) and the epoch's order a function of (seed, epoch), so a run resumed mid-epoch replays the
remaining batches exactly: on CPU in deterministic mode it ends with the same weights as an
uninterrupted run. The best epoch's weights live in ``checkpoints/best-eNNNN.pt`` (written before
``last.pt``, so a crash between the two never loses the recorded best).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from data_manifests.manifest import Manifest, VideoEntry, load_manifest
from pipeline.distributed import DistInfo, all_gather_objects, barrier, resolve_device
from pipeline.errors import UserError
from pipeline.lifetime import DieWithParent
from pipeline.progress import MetricsLog, Progress
from student.checkpointing import (GracefulStop, TrainingInterrupted, capture_rng, load_checkpoint, non_finite_loss,
                                   restore_rng, save_checkpoint)
from student.evaluate import check_gathered, gather_scores, rank_positions, score_videos, summarise
from student.finetune_data import TrainClips
from student.model import ClassifierModel, MultiTaskStudent, load_encoders
from student.optim import build_sgd, cosine_schedule, current_lr, multistep_schedule
from student.protocols import ProtocolError, resolve_protocol, view_aggregation

log = logging.getLogger("pipeline")

VAL_CLIPS = 2  # views per held-out video for epoch selection (cheap; the test protocol uses cfg.evaluate)
DEFAULT_CLIP_LEN = 16  # RSPNet's finetune clip length
COSINE_FINAL_RATIO = 1e-3  # cosine decays to lr/1000 (as in RSPNet's pretraining schedule)
MATCH_KEYS = ("backbone", "width", "split_after", "kd", "task_dependent")


class FinetuneError(UserError, RuntimeError):
    """Finetuning cannot start: bad inputs, mismatched pretraining, an unusable checkpoint."""


# --------------------------------------------------------------------------------------------
# Model construction and classifier files
# --------------------------------------------------------------------------------------------

def _student_kwargs(model_config: dict[str, Any], num_parts: int) -> dict[str, Any]:
    return dict(backbone=model_config["backbone"], width=float(model_config["width"]),
                split_after=int(model_config["split_after"]), num_parts=int(num_parts),
                parse_size=int(model_config.get("parse_size", 28)), kd=bool(model_config["kd"]),
                task_dependent=bool(model_config["task_dependent"]), proj_dim=int(model_config.get("proj_dim", 128)))


def read_pretrained_file(path: Path) -> dict[str, Any]:
    """A pretraining ``student.pt`` ({"model_config", "num_parts", "state_dict"}), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"pretrained student {path} does not exist (run `pipeline pretrain` first)")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("model_config"), dict) or "state_dict" not in ckpt:
        raise FinetuneError(f"{path} is not a pretrained student (expected keys model_config, num_parts, state_dict)")
    return ckpt


def read_pretrained(pretrain_dir: Path, model_cfg: Any) -> dict[str, Any]:
    """``pretrain_dir/student.pt`` after checking its model_config agrees with ``model_cfg``."""
    path = Path(pretrain_dir) / "student.pt"
    ckpt = read_pretrained_file(path)
    saved = ckpt["model_config"]
    ours = dataclasses.asdict(model_cfg)
    diff = [f"{k}: pretrained {saved.get(k)!r} vs config {ours.get(k)!r}" for k in MATCH_KEYS
            if saved.get(k) != ours[k]]
    if diff:
        raise FinetuneError(f"{path} was pretrained with a different model than [model] asks for: "
                            + "; ".join(diff) + ". Finetune with the pretraining run's model settings.")
    return ckpt


def build_classifier(model_cfg: Any, num_classes: int, pretrained: dict[str, Any] | None) -> ClassifierModel:
    """A ClassifierModel over a fresh student, with encoders loaded from ``pretrained`` when given."""
    cfg = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    student = MultiTaskStudent(**_student_kwargs(cfg, pretrained.get("num_parts", 7) if pretrained else 7))
    if pretrained is not None:
        try:
            load_encoders(student, pretrained)
        except ValueError as err:
            raise FinetuneError(f"pretrained student does not fit the model: {err}") from None
    return ClassifierModel(student, num_classes)


def load_classifier(path: Path, device: str | torch.device = "cpu") -> tuple[ClassifierModel, dict[str, Any]]:
    """(model in eval mode on ``device``, the file's metadata) from a ``classifier.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"classifier {path} does not exist (run `pipeline finetune` first)")
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model_config", "num_classes", "classes", "state_dict") if k not in ckpt]
    if missing:
        raise FinetuneError(f"{path} is not a finetuned classifier (missing {missing})")
    model = build_classifier(ckpt["model_config"], int(ckpt["num_classes"]), None)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise FinetuneError(f"{path}: weights do not fit the model described in the file: {err}") from None
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info.setdefault("clip_len", DEFAULT_CLIP_LEN)
    info.setdefault("input_size", ckpt["model_config"].get("input_size", 112))
    return model.to(device).eval(), info


def resolve_clip_len(clip_len: int | None, pretrained: dict[str, Any] | None,
                     pretrain_dir: Path | None) -> tuple[int, str]:
    """Explicit value > student.pt's ``clip_len`` > pretrain_dir/config.toml [clips] clip_len > 16."""
    if clip_len is not None:
        return int(clip_len), "argument"
    if pretrained is not None and "clip_len" in pretrained:
        return int(pretrained["clip_len"]), "student.pt"
    if pretrain_dir is not None and (Path(pretrain_dir) / "config.toml").is_file():
        with open(Path(pretrain_dir) / "config.toml", "rb") as fh:
            value = tomllib.load(fh).get("clips", {}).get("clip_len")
        if value:
            return int(value), "pretraining config.toml"
    return DEFAULT_CLIP_LEN, "RSPNet default"


# --------------------------------------------------------------------------------------------
# Data splits and batches
# --------------------------------------------------------------------------------------------

def stratified_holdout(entries: Sequence[VideoEntry], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions): per class, round(fraction · n) videos (keeping at
    least one for training) chosen by a generator seeded with (seed, label); manifest order kept."""
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        by_class.setdefault(e.label, []).append(i)
    held: set[int] = set()
    for label, idx in sorted(by_class.items()):
        k = min(int(math.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        if k > 0:
            rng = np.random.default_rng([seed, label + 1])
            held.update(int(i) for i in rng.choice(idx, size=k, replace=False))
    return [i for i in range(len(entries)) if i not in held], sorted(held)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, dist: DistInfo, drop_last: bool) -> list[list[int]]:
    """This rank's batches of epoch ``epoch``: DistributedSampler's order (seed + epoch), chunked."""
    sampler = DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


# --------------------------------------------------------------------------------------------
# Execution settings
# --------------------------------------------------------------------------------------------

def amp_dtype(setting: str, device: str) -> torch.dtype | None:
    if not device.startswith("cuda") or setting == "off":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: str) -> Iterator[None]:
    """Deterministic kernels for the duration of the run; the previous settings come back after.

    Only CUDA needs switching (cuDNN algorithm choice, atomics): the CPU kernels used here are
    deterministic for a fixed thread count, and ``torch.use_deterministic_algorithms`` costs a
    multi-second import of torch._inductor the first time it is called.
    """
    if not device.startswith("cuda"):
        yield
        return
    if not enabled:  # fixed clip shapes: let cuDNN time its kernels once and keep the fastest (as pretraining)
        prev_benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = prev_benchmark
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


class EpochItems(torch.utils.data.Dataset):
    """``(epoch, index)`` items of a dataset whose randomness follows its ``set_epoch``.

    Why: a persistent DataLoader worker keeps its own copy of the dataset, which never sees the
    main process's ``set_epoch``; carrying the epoch in every index lets finetuning keep one
    loader, and its workers, for the whole run instead of starting new workers every epoch.
    """

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, index = item
        self.base.set_epoch(int(epoch))
        return self.base[int(index)]


class EpochBatchSampler:
    """A batch sampler whose batches are replaced each epoch (it is iterated in the main process)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def set(self, epoch: int, batches: list[list[int]]) -> None:
        self.batches = [[(epoch, i) for i in batch] for batch in batches]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@contextlib.contextmanager
def _stop_workers_after(loader: DataLoader) -> Iterator[None]:
    """Persistent workers are stopped when the run ends, however it ends."""
    from student.pretrain_data import shutdown_workers

    try:
        yield
    finally:
        shutdown_workers(loader)


def _add_device_sums(sums: list[float], on_device: torch.Tensor) -> list[float]:
    """Fold the device-side (loss·n, correct) accumulators into the host sums (one sync) and reset them."""
    loss_n, correct = (float(v) for v in on_device.cpu())
    on_device.zero_()
    return [sums[0] + loss_n, sums[1] + correct, sums[2]]


def _all_reduce_sum(values: list[float], device: str) -> list[float]:
    if not (tdist.is_available() and tdist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def _best_path(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"best-e{epoch:04d}.pt"


def _classifier_record(model_cfg: Any, manifest: Manifest, state: dict[str, torch.Tensor],
                       **extra: Any) -> dict[str, Any]:
    return {"model_config": dataclasses.asdict(model_cfg), "num_classes": len(manifest.classes),
            "classes": list(manifest.classes), "state_dict": state, **extra}


def _select_score(model: torch.nn.Module, manifest: Manifest, entries: list[VideoEntry], *, clip_len: int,
                  input_size: int, device: str, workers: int, dist: DistInfo, aggregate: str = "softmax") -> float:
    """Video-level top-1 of ``entries`` with VAL_CLIPS centre-crop clips each (every rank gets it); the
    views are combined as the test protocol will combine them (``aggregate``)."""
    local = score_videos(model, manifest, entries, rank_positions(len(entries), dist.rank, dist.world_size),
                         clip_len=clip_len, input_size=input_size, clips=VAL_CLIPS, crops=1, chunk=VAL_CLIPS,
                         device=device, workers=workers, desc="select", progress=False, aggregate=aggregate)
    scores = check_gathered(gather_scores(local), entries, VAL_CLIPS)
    return float(summarise(scores, manifest.classes)[0]["video_top1"])


def finetune(manifest_dir: Path, pretrain_dir: Path | None, out_dir: Path, model: Any, cfg: Any, *,
             dist: DistInfo, clip_len: int | None = None, max_steps_per_epoch: int = 0,
             stop: GracefulStop | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Finetune on the manifest's "train" split; write classifier.pt, checkpoints/last.pt, metrics.jsonl.

    ``model`` is the ModelConfig, ``cfg`` the FinetuneConfig. Keyword extras (not in the config):
    ``clip_len`` (default: see :func:`resolve_clip_len`), ``max_steps_per_epoch`` (0: full
    epochs; for smoke runs), ``stop`` (an external GracefulStop) and ``stop_after_steps``
    (request a stop after that many optimizer steps in this call: how tests interrupt a run).
    Raises TrainingInterrupted after saving a checkpoint when stopped.
    """
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    manifest = load_manifest(manifest_dir)
    ckpt_dir = out_dir / "checkpoints"
    device = dist.device if cfg.device == "auto" else resolve_device(cfg.device, dist.local_rank)
    model_cfg = model

    # ---- inputs ----
    entries = manifest.by_split("train")
    bad = [e.id for e in entries if not 0 <= e.label < len(manifest.classes)]
    if not entries:
        raise FinetuneError(f"manifest {manifest_dir} has no 'train' videos to finetune on")
    if bad:
        raise FinetuneError(f"manifest {manifest_dir}: {len(bad)} train videos have no valid label (first: {bad[:3]})")
    from_scratch = pretrain_dir is None or cfg.from_scratch
    if pretrain_dir is None and not cfg.from_scratch:
        log.warning("finetune: no pretraining folder given; training from scratch")
    pretrained = None if from_scratch else read_pretrained(Path(pretrain_dir), model_cfg)
    clip_len, clip_len_from = resolve_clip_len(clip_len, pretrained, None if from_scratch else pretrain_dir)
    try:
        proto = resolve_protocol(cfg, model_cfg.backbone)
    except ProtocolError:
        if cfg.protocol not in ("auto", "paper", "rspnet") or manifest.dataset == cfg.dataset:
            raise
        proto = resolve_protocol(cfg, model_cfg.backbone, manifest.dataset)

    select_on, select_note = cfg.select_on, ""
    if select_on == "val":
        train_pos, val_pos = stratified_holdout(entries, cfg.val_fraction, cfg.seed)
        if not val_pos:
            select_on = "last"
            select_note = (f"no held-out videos (val_fraction {cfg.val_fraction} of {len(entries)} train videos "
                           f"rounds to 0 per class): fell back to the last epoch")
            log.warning("finetune: %s", select_note)
    else:
        train_pos, val_pos = list(range(len(entries))), []
    select_entries: list[VideoEntry] = [entries[i] for i in val_pos]
    if select_on == "test":
        select_entries = manifest.by_split("test")
        if not select_entries:
            raise FinetuneError(f"finetune.select_on = 'test' but manifest {manifest_dir} has no test videos")
        select_note = "epoch chosen on the TEST split (RSPNet's practice): the test accuracy is optimistic"
        log.warning("finetune: %s", select_note)
    train_entries = [entries[i] for i in train_pos]

    drop_last = len(train_entries) >= proto.batch_size * dist.world_size * 2
    spe = len(epoch_batches(len(train_entries), proto.batch_size, 0, cfg.seed, dist, drop_last))
    if max_steps_per_epoch:
        spe = min(spe, max_steps_per_epoch)
    total_steps = proto.epochs * spe
    dataset = TrainClips(manifest, train_entries, clip_len, model_cfg.input_size, cfg.crop_area, cfg.seed)

    with deterministic_mode(cfg.deterministic, device):
        torch.manual_seed(cfg.seed)
        net = build_classifier(model_cfg, len(manifest.classes), pretrained).to(device)
        optimizer = build_sgd(net, proto.lr, proto.momentum, proto.weight_decay)
        if proto.schedule == "cosine":
            scheduler = cosine_schedule(optimizer, total_steps, COSINE_FINAL_RATIO)
        else:
            scheduler = multistep_schedule(optimizer, [m * spe for m in proto.milestones], proto.gamma)
        dtype = amp_dtype(cfg.amp, device)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

        # ---- resume ----
        start_epoch, start_step, global_step = 0, 0, 0
        best: dict[str, Any] = {"epoch": None, "acc": None}
        history: list[dict[str, Any]] = []
        resumed_from = None
        last = ckpt_dir / "last.pt"
        if last.is_file():
            state = load_checkpoint(last)
            same_world = state.get("world_size") == dist.world_size
            if (state.get("protocol") != proto.to_dict() or state.get("num_train") != len(train_entries)
                    or (same_world and state.get("steps_per_epoch") != spe)):
                raise FinetuneError(f"{last} was written by a different finetuning setup (protocol, data or steps "
                                    f"per epoch); delete {ckpt_dir} to start over")
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):  # empty when written with amp off or bf16 (a disabled scaler): start afresh
                scaler.load_state_dict(state["scaler"])
            start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            best, history = dict(state["best"]), list(state["history"])
            restore_rng(state["rng"])
            if not same_world:
                # another process count: another per-rank batch order and steps per epoch. The current
                # epoch restarts from its first step and the schedule is re-placed on the new step grid.
                log.warning("finetune: resuming with %d processes instead of %d: epoch %d restarts from its "
                            "first step (not an exact continuation)", dist.world_size, state.get("world_size"),
                            start_epoch + 1)
                start_step, global_step = 0, start_epoch * spe
                scheduler = (cosine_schedule(optimizer, total_steps, COSINE_FINAL_RATIO) if proto.schedule == "cosine"
                             else multistep_schedule(optimizer, [m * spe for m in proto.milestones], proto.gamma))
                for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                    group["lr"] = group["initial_lr"] * factor(global_step)
                scheduler.last_epoch = global_step
                scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
            resumed_from = {"epoch": start_epoch + 1, "step": start_step}
            log.info("finetune: resuming at epoch %d step %d from %s", start_epoch + 1, start_step, last.name)
        if dist.is_main and ckpt_dir.is_dir():
            keep = _best_path(ckpt_dir, best["epoch"]).name if best["epoch"] else None
            for stray in ckpt_dir.glob("best-e*.pt"):
                if stray.name != keep:
                    stray.unlink()

        if dist.distributed:
            if device.startswith("cuda"):
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[torch.device(device).index]
                                                            if device.startswith("cuda") else None)
        else:
            ddp = net
        # the stop flag is all-reduced on the CPU every step: under NCCL that needs a gloo group
        stop_group = tdist.new_group(backend="gloo") if dist.distributed and device.startswith("cuda") else None
        metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=dist.is_main)
        stop_ctx = GracefulStop() if stop is None else contextlib.nullcontext(stop)
        steps_this_call = 0
        lr_used = current_lr(optimizer)
        resume_sums = [0.0, 0.0, 0.0]
        if resumed_from and start_step and len(state.get("epoch_sums", [])) == dist.world_size:
            resume_sums = list(state["epoch_sums"][dist.rank])

        def save_last(epoch: int, step_in_epoch: int, sums: list[float]) -> None:
            every_sums = all_gather_objects(list(sums))  # per rank: the partial epoch's loss/accuracy sums
            if dist.is_main:
                save_checkpoint(last, {
                    "kind": "finetune", "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": capture_rng(),
                    "best": best, "history": history, "protocol": proto.to_dict(), "num_train": len(train_entries),
                    "steps_per_epoch": spe, "world_size": dist.world_size, "epoch_sums": every_sums,
                    "model_config": dataclasses.asdict(model_cfg)})
            barrier()

        # One loader for the whole run (persistent workers); every index carries its epoch. Own generator:
        # creating a loader must not advance the global RNG (exact resume).
        epoch_sampler = EpochBatchSampler()
        loader = DataLoader(EpochItems(dataset), batch_sampler=epoch_sampler, num_workers=cfg.workers,
                            pin_memory=device.startswith("cuda"), persistent_workers=cfg.workers > 0,
                            worker_init_fn=DieWithParent() if cfg.workers else None,
                            generator=torch.Generator().manual_seed(cfg.seed * 1000))
        with stop_ctx as stopper, metrics, _stop_workers_after(loader):
            for epoch in range(start_epoch, proto.epochs):
                dataset.set_epoch(epoch)
                batches = epoch_batches(len(train_entries), proto.batch_size, epoch, cfg.seed, dist, drop_last)[:spe]
                first = start_step if epoch == start_epoch else 0
                epoch_sampler.set(epoch, batches[first:])
                ddp.train()
                # loss·n, correct, n of this rank's steps so far in the epoch (carried over a mid-epoch resume)
                sums = resume_sums if first else [0.0, 0.0, 0.0]
                on_device = torch.zeros(2, dtype=torch.float64, device=device)  # loss·n, correct: no per-step sync
                t0 = time.perf_counter()
                with Progress(len(batches), f"finetune epoch {epoch + 1}/{proto.epochs}", "step",
                              enabled=dist.is_main) as bar:
                    bar.n = first
                    for step, (x, y) in enumerate(loader, start=first):
                        x = x.to(device, non_blocking=True)
                        y = y.to(device, non_blocking=True)
                        with torch.autocast(device_type="cuda", dtype=dtype, enabled=dtype is not None):
                            logits = ddp(x)
                            loss = F.cross_entropy(logits.float(), y)
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                        lr_used = current_lr(optimizer)
                        scheduler.step()
                        global_step += 1
                        steps_this_call += 1
                        n = len(y)
                        on_device[0] += loss.detach().double() * n
                        on_device[1] += (logits.detach().argmax(1) == y).sum()
                        sums[2] += n
                        bar.update(1)
                        if (step + 1) % cfg.log_interval == 0:
                            loss_v = float(loss.detach())  # the only host sync of a step, every log_interval
                            bar.postfix = f"loss {loss_v:.3f} lr {lr_used:.2e}"
                            metrics.write(kind="step", epoch=epoch + 1, step=step + 1, global_step=global_step,
                                          loss=loss_v, lr=lr_used)
                        if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                            stopper.request("stop_after_steps")
                        if stopper.agreed(stop_group) and step + 1 < len(batches):
                            save_last(epoch, step + 1, _add_device_sums(sums, on_device))
                            raise TrainingInterrupted(stopper.signal_name, last, epoch + 1, step + 1)
                sums = _add_device_sums(sums, on_device)
                loss_sum, correct, count = _all_reduce_sum(sums, device)
                if not math.isfinite(loss_sum):  # all-reduced, so every rank stops here together
                    raise non_finite_loss("finetune", epoch, global_step, last)
                record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "global_step": global_step,
                                          "train_loss": loss_sum / max(count, 1),
                                          "train_top1": correct / max(count, 1), "lr": lr_used,
                                          "epoch_s": time.perf_counter() - t0}
                if select_on in ("val", "test"):
                    acc = _select_score(net, manifest, select_entries, clip_len=clip_len,
                                        input_size=model_cfg.input_size, device=device, workers=cfg.workers,
                                        dist=dist, aggregate=view_aggregation(proto.name))
                    record[f"{select_on}_top1"] = acc
                    if best["acc"] is None or acc > best["acc"]:
                        previous = best["epoch"]
                        best = {"epoch": epoch + 1, "acc": acc}
                        if dist.is_main:
                            save_checkpoint(_best_path(ckpt_dir, epoch + 1),
                                            {"state_dict": net.state_dict(), "epoch": epoch + 1, "acc": acc})
                        pending_delete = previous
                    else:
                        pending_delete = None
                else:
                    pending_delete = None
                history.append({k: v for k, v in record.items() if k != "kind"})
                metrics.write(**record)
                log.info("finetune epoch %d/%d: loss %.4f, train top-1 %.4f%s", epoch + 1, proto.epochs,
                         record["train_loss"], record["train_top1"],
                         (f", {select_on} top-1 {record[f'{select_on}_top1']:.4f}"
                          if f"{select_on}_top1" in record else ""))
                save_last(epoch + 1, 0, [0.0, 0.0, 0.0])
                if dist.is_main and pending_delete:
                    _best_path(ckpt_dir, pending_delete).unlink(missing_ok=True)
                if stopper.agreed(stop_group) and epoch + 1 < proto.epochs:
                    raise TrainingInterrupted(stopper.signal_name, last, epoch + 2, 0)

        # ---- the kept classifier ----
        if select_on == "last" or best["epoch"] is None:
            state_dict, sel_epoch, sel_acc = net.state_dict(), proto.epochs, None
        else:
            state_dict = load_checkpoint(_best_path(ckpt_dir, best["epoch"]))["state_dict"] if dist.is_main else {}
            sel_epoch, sel_acc = best["epoch"], best["acc"]
        summary = {
            "epochs": proto.epochs, "steps_per_epoch": spe, "global_steps": global_step,
            "selected_on": select_on, "selected_epoch": sel_epoch, "best_epoch": sel_epoch,
            "val_acc": sel_acc if select_on == "val" else None,
            "test_acc_used_for_selection": sel_acc if select_on == "test" else None,
            "selection_metric": (f"video-level top-1, {VAL_CLIPS} centre-crop clips per video, "
                                 f"{view_aggregation(proto.name)} averaged"
                                 if select_on in ("val", "test") else "none (last epoch)"),
            "select_note": select_note, "requested_select_on": cfg.select_on,
            "num_train": len(train_entries), "num_val": len(val_pos), "num_classes": len(manifest.classes),
            "protocol": proto.to_dict(), "from_scratch": from_scratch, "clip_len": clip_len,
            "clip_len_from": clip_len_from, "input_size": model_cfg.input_size, "world_size": dist.world_size,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "resumed_from": resumed_from,
        }
        if dist.is_main:
            save_checkpoint(out_dir / "classifier.pt", _classifier_record(
                model_cfg, manifest, state_dict, selected_epoch=sel_epoch, selected_on=select_on,
                selected_acc=sel_acc, select_note=select_note, clip_len=clip_len, input_size=model_cfg.input_size,
                protocol=proto.to_dict(), from_scratch=from_scratch))
        barrier()
        return summary
