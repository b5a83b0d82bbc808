"""Supervised finetuning: f_l + h_h + h_c from pretraining → pooled features → Linear(num_classes).

Protocol: RSPNet's presets (``student.protocols``), SGD with a per-iteration schedule
(``student.optim``), ``finetune.amp`` / ``device`` / ``deterministic`` with the meaning they have in
every stage (``pipeline.core.runtime``), DDP + DistributedSampler under torchrun (``batch_size`` is per
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
``torch.use_deterministic_algorithms``, as in every stage (``pipeline.core.runtime.deterministic_mode``).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from data_manifests.manifest import Manifest, VideoEntry, load_manifest
from pipeline.core.config import FinetuneConfig, ModelConfig
from pipeline.core.distributed import DistInfo, all_gather_objects, barrier
from pipeline.core.lifetime import DieWithParent
from pipeline.core.progress import MetricsLog, Progress
from pipeline.core.runtime import (all_reduce_sum, autocast, deterministic_mode, resolve_amp, stage_device,
                              stop_flag_group, wrap_ddp)
from student.artifacts import (  # noqa: F401  (load_classifier, read_pretrained_file: re-exported)
    TrainingError, build_classifier, classifier_record, load_classifier, read_pretrained, read_pretrained_file,
    resolve_clip_len)
from student.checkpointing import (GracefulStop, TrainingInterrupted, capture_rng, load_checkpoint, non_finite_loss,
                                   restore_rng, save_checkpoint)
from student.evaluate import check_gathered, gather_scores, rank_positions, score_videos, summarise
from student.finetune_data import TrainClips
from student.optim import build_sgd, cosine_schedule, current_lr, multistep_schedule
from pipeline.core.errors import ConfigError
from student.protocols import resolve_protocol, view_aggregation

log = logging.getLogger(__name__)

VAL_CLIPS = 2  # views per held-out video for epoch selection (cheap; the test protocol uses cfg.evaluate)
COSINE_FINAL_RATIO = 1e-3  # cosine decays to lr/1000 (as in RSPNet's pretraining schedule)


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
    sampler: DistributedSampler[int] = DistributedSampler(  # a range is a map-style dataset (len, getitem)
        range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
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
    """``finetune.amp`` → autocast dtype (None: float32): :func:`pipeline.core.runtime.resolve_amp`."""
    return resolve_amp(setting, device, key="finetune.amp")


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


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def _best_path(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"best-e{epoch:04d}.pt"


def _select_score(model: torch.nn.Module, manifest: Manifest, entries: list[VideoEntry], *, clip_len: int,
                  input_size: int, device: str, workers: int, dist: DistInfo, aggregate: str = "softmax") -> float:
    """Video-level top-1 of ``entries`` with VAL_CLIPS centre-crop clips each (every rank gets it); the
    views are combined as the test protocol will combine them (``aggregate``)."""
    local = score_videos(model, manifest, entries, rank_positions(len(entries), dist.rank, dist.world_size),
                         clip_len=clip_len, input_size=input_size, clips=VAL_CLIPS, crops=1, chunk=VAL_CLIPS,
                         device=device, workers=workers, desc="select", progress=False, aggregate=aggregate)
    scores = check_gathered(gather_scores(local), entries, VAL_CLIPS)
    return float(summarise(scores, manifest.classes)[0]["video_top1"])


def finetune(manifest_dir: Path, pretrain_dir: Path | None, out_dir: Path, model_cfg: ModelConfig,
             cfg: FinetuneConfig, *,
             dist: DistInfo, clip_len: int | None = None, max_steps_per_epoch: int = 0,
             stop: GracefulStop | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Finetune on the manifest's "train" split; write classifier.pt, checkpoints/last.pt, metrics.jsonl.

    Keyword extras (not in the config):
    ``clip_len`` (default: see :func:`resolve_clip_len`), ``max_steps_per_epoch`` (0: full
    epochs; for smoke runs), ``stop`` (an external GracefulStop) and ``stop_after_steps``
    (request a stop after that many optimizer steps in this call: how tests interrupt a run).
    Raises TrainingInterrupted after saving a checkpoint when stopped.
    """
    device = stage_device(cfg.device, dist)
    plan = _plan(Path(manifest_dir), pretrain_dir, model_cfg, cfg, dist, clip_len, max_steps_per_epoch)
    with deterministic_mode(cfg.deterministic, device):
        run = _FinetuneRun(plan, model_cfg, cfg, dist, device, Path(out_dir))
        run.train(stop, stop_after_steps)
        return run.finish()


@dataclass
class _Plan:
    """What a finetuning run trains on and how, decided before any model exists."""

    manifest: Manifest
    train_entries: list[VideoEntry]
    num_val: int
    select_on: str  # "val", "test" or "last" (after falling back)
    select_note: str
    select_entries: list[VideoEntry]  # scored after every epoch to choose one
    pretrained: dict[str, Any] | None
    from_scratch: bool
    clip_len: int
    clip_len_from: str
    proto: Any  # student.protocols.Protocol
    drop_last: bool
    spe: int  # steps per epoch
    dataset: TrainClips


def _train_entries(manifest: Manifest, manifest_dir: Path) -> list[VideoEntry]:
    entries = manifest.by_split("train")
    bad = [e.id for e in entries if not 0 <= e.label < len(manifest.classes)]
    if not entries:
        raise TrainingError(f"manifest {manifest_dir} has no 'train' videos to finetune on")
    if bad:
        raise TrainingError(f"manifest {manifest_dir}: {len(bad)} train videos have no valid label (first: {bad[:3]})")
    return entries


def _protocol(cfg: FinetuneConfig, model_cfg: ModelConfig, manifest: Manifest) -> Any:
    """The protocol for the config; a paper preset named for another dataset falls back to this manifest's."""
    try:
        return resolve_protocol(cfg, model_cfg.backbone)
    except ConfigError:
        if cfg.protocol not in ("auto", "paper", "rspnet") or manifest.dataset == cfg.dataset:
            raise
        return resolve_protocol(cfg, model_cfg.backbone, manifest.dataset)


def _select_split(entries: list[VideoEntry], manifest: Manifest, manifest_dir: Path,
                  cfg: FinetuneConfig) -> tuple[list[int], list[int], str, str, list[VideoEntry]]:
    """(train positions, held-out positions, select_on, note, videos scored per epoch) for ``cfg.select_on``."""
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
            raise TrainingError(f"finetune.select_on = 'test' but manifest {manifest_dir} has no test videos")
        select_note = "epoch chosen on the TEST split (RSPNet's practice): the test accuracy is optimistic"
        log.warning("finetune: %s", select_note)
    return train_pos, val_pos, select_on, select_note, select_entries


def _plan(manifest_dir: Path, pretrain_dir: Path | None, model_cfg: ModelConfig, cfg: FinetuneConfig, dist: DistInfo,
          clip_len: int | None, max_steps_per_epoch: int) -> _Plan:
    manifest = load_manifest(manifest_dir)
    entries = _train_entries(manifest, manifest_dir)
    from_scratch = pretrain_dir is None or cfg.from_scratch
    if pretrain_dir is None and not cfg.from_scratch:
        log.warning("finetune: no pretraining folder given; training from scratch")
    pretrained = None if from_scratch or pretrain_dir is None else read_pretrained(Path(pretrain_dir), model_cfg)
    clip_len, clip_len_from = resolve_clip_len(clip_len, pretrained, None if from_scratch else pretrain_dir)
    proto = _protocol(cfg, model_cfg, manifest)
    train_pos, val_pos, select_on, select_note, select_entries = _select_split(entries, manifest, manifest_dir, cfg)
    train_entries = [entries[i] for i in train_pos]
    drop_last = len(train_entries) >= proto.batch_size * dist.world_size * 2
    spe = len(epoch_batches(len(train_entries), proto.batch_size, 0, cfg.seed, dist, drop_last))
    if max_steps_per_epoch:
        spe = min(spe, max_steps_per_epoch)
    dataset = TrainClips(manifest, train_entries, clip_len, model_cfg.input_size, cfg.crop_area, cfg.seed)
    return _Plan(manifest, train_entries, len(val_pos), select_on, select_note, select_entries, pretrained,
                 from_scratch, clip_len, clip_len_from, proto, drop_last, spe, dataset)


class EpochSelector:
    """Epoch selection (``cfg.select_on``, module docstring): scores the selection videos after each epoch,
    keeps the best epoch's weights in ``checkpoints/best-eNNNN.pt`` (ties: the earlier epoch), and says
    which weights classifier.pt gets. Its state (``best``) travels in ``last.pt``."""

    def __init__(self, plan: _Plan, model_cfg: ModelConfig, cfg: FinetuneConfig, dist: DistInfo, device: str,
                 ckpt_dir: Path) -> None:
        self.plan, self.model_cfg, self.cfg, self.dist, self.device = plan, model_cfg, cfg, dist, device
        self.ckpt_dir = ckpt_dir
        self.best: dict[str, Any] = {"epoch": None, "acc": None}

    @property
    def active(self) -> bool:
        """False for ``select_on = "last"`` (also after falling back to it): no per-epoch scoring."""
        return self.plan.select_on in ("val", "test")

    def prune_stray_bests(self) -> None:
        """Delete best-e*.pt files other than the recorded best (left by a crash between the two writes)."""
        if self.dist.is_main and self.ckpt_dir.is_dir():
            keep = _best_path(self.ckpt_dir, self.best["epoch"]).name if self.best["epoch"] else None
            for stray in self.ckpt_dir.glob("best-e*.pt"):
                if stray.name != keep:
                    stray.unlink()

    def select(self, net: torch.nn.Module, epoch: int, record: dict[str, Any]) -> int | None:
        """Score the selection videos; keep a new best epoch's weights. The old best's epoch to delete, if any."""
        plan = self.plan
        acc = _select_score(net, plan.manifest, plan.select_entries, clip_len=plan.clip_len,
                            input_size=self.model_cfg.input_size, device=self.device, workers=self.cfg.workers,
                            dist=self.dist, aggregate=view_aggregation(plan.proto.name))
        record[f"{plan.select_on}_top1"] = acc
        if not (self.best["acc"] is None or acc > self.best["acc"]):
            return None
        previous = self.best["epoch"]
        self.best = {"epoch": epoch + 1, "acc": acc}
        if self.dist.is_main:
            save_checkpoint(_best_path(self.ckpt_dir, epoch + 1),
                            {"state_dict": net.state_dict(), "epoch": epoch + 1, "acc": acc})
        return previous

    def delete_best(self, epoch: int | None) -> None:
        """Remove a superseded best (after last.pt no longer names it)."""
        if self.dist.is_main and epoch:
            _best_path(self.ckpt_dir, epoch).unlink(missing_ok=True)

    def chosen(self, net: torch.nn.Module) -> tuple[dict[str, Any], int, float | None]:
        """(state_dict, epoch, selection accuracy) of the weights classifier.pt gets; the state_dict is
        read on rank 0 only (the others get {})."""
        plan, best = self.plan, self.best
        if plan.select_on == "last" or best["epoch"] is None:
            return net.state_dict(), plan.proto.epochs, None
        state_dict = load_checkpoint(_best_path(self.ckpt_dir, best["epoch"]))["state_dict"] if self.dist.is_main \
            else {}
        return state_dict, best["epoch"], best["acc"]

    def summary(self, sel_epoch: int, sel_acc: float | None) -> dict[str, Any]:
        """The selection's part of the stage summary."""
        plan = self.plan
        return {
            "selected_on": plan.select_on, "selected_epoch": sel_epoch, "best_epoch": sel_epoch,
            "val_acc": sel_acc if plan.select_on == "val" else None,
            "test_acc_used_for_selection": sel_acc if plan.select_on == "test" else None,
            "selection_metric": (f"video-level top-1, {VAL_CLIPS} centre-crop clips per video, "
                                 f"{view_aggregation(plan.proto.name)} averaged"
                                 if self.active else "none (last epoch)"),
            "select_note": plan.select_note, "requested_select_on": self.cfg.select_on, "num_val": plan.num_val,
        }


class _FinetuneRun:
    """One finetuning run from its resume point: epochs of steps, checkpoints, classifier.pt (the loop;
    :class:`EpochSelector` chooses the epoch)."""

    def __init__(self, plan: _Plan, model_cfg: ModelConfig, cfg: FinetuneConfig, dist: DistInfo, device: str,
                 out_dir: Path) -> None:
        self.plan, self.model_cfg, self.cfg, self.dist, self.device = plan, model_cfg, cfg, dist, device
        self.out_dir, self.ckpt_dir = out_dir, out_dir / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"
        self.total_steps = plan.proto.epochs * plan.spe
        torch.manual_seed(cfg.seed)
        self.net = build_classifier(model_cfg, len(plan.manifest.classes), plan.pretrained).to(device)
        self.optimizer = build_sgd(self.net, plan.proto.lr, plan.proto.momentum, plan.proto.weight_decay)
        self.scheduler = self._schedule()
        self.dtype = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.selector = EpochSelector(plan, model_cfg, cfg, dist, device, self.ckpt_dir)
        self.history: list[dict[str, Any]] = []
        self.resumed_from: dict[str, int] | None = None
        self.resume_sums = [0.0, 0.0, 0.0]
        if self.last.is_file():
            self._resume(load_checkpoint(self.last))
        self.selector.prune_stray_bests()
        self.ddp = self._wrap()
        # the stop flag is all-reduced on the CPU every step: under NCCL that needs a gloo group
        self.stop_group = stop_flag_group(dist, device)
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=dist.is_main)
        self.steps_this_call = 0
        self.lr_used = current_lr(self.optimizer)
        # One loader for the whole run (persistent workers); every index carries its epoch. Own generator:
        # creating a loader must not advance the global RNG (exact resume).
        self.epoch_sampler = EpochBatchSampler()
        self.loader = DataLoader(EpochItems(plan.dataset), batch_sampler=self.epoch_sampler,
                                 num_workers=cfg.workers, pin_memory=device.startswith("cuda"),
                                 persistent_workers=cfg.workers > 0,
                                 worker_init_fn=DieWithParent() if cfg.workers else None,
                                 generator=torch.Generator().manual_seed(cfg.seed * 1000))

    def _schedule(self) -> Any:
        proto, spe = self.plan.proto, self.plan.spe
        if proto.schedule == "cosine":
            return cosine_schedule(self.optimizer, self.total_steps, COSINE_FINAL_RATIO)
        return multistep_schedule(self.optimizer, [m * spe for m in proto.milestones], proto.gamma)

    def _resume(self, state: dict[str, Any]) -> None:
        """Continue from ``last.pt``: exactly with the same process count, else from the epoch's first step."""
        plan, dist = self.plan, self.dist
        same_world = state.get("world_size") == dist.world_size
        if (state.get("protocol") != plan.proto.to_dict() or state.get("num_train") != len(plan.train_entries)
                or (same_world and state.get("steps_per_epoch") != plan.spe)):
            raise TrainingError(f"{self.last} was written by a different finetuning setup (protocol, data or steps "
                                f"per epoch); delete {self.ckpt_dir} to start over")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty when written with amp off or bf16 (a disabled scaler): start afresh
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.start_step = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.selector.best, self.history = dict(state["best"]), list(state["history"])
        restore_rng(state["rng"])
        if not same_world:
            self._replace_schedule(state.get("world_size"))
        self.resumed_from = {"epoch": self.start_epoch + 1, "step": self.start_step}
        log.info("finetune: resuming at epoch %d step %d from %s", self.start_epoch + 1, self.start_step,
                 self.last.name)
        if self.start_step and len(state.get("epoch_sums", [])) == dist.world_size:
            self.resume_sums = list(state["epoch_sums"][dist.rank])

    def _replace_schedule(self, old_world: Any) -> None:
        """Another process count: another per-rank batch order and steps per epoch. The current epoch
        restarts from its first step and the schedule is re-placed on the new step grid."""
        log.warning("finetune: resuming with %d processes instead of %d: epoch %d restarts from its "
                    "first step (not an exact continuation)", self.dist.world_size, old_world, self.start_epoch + 1)
        self.start_step, self.global_step = 0, self.start_epoch * self.plan.spe
        self.scheduler = self._schedule()
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["lr"] = group["initial_lr"] * factor(self.global_step)
        self.scheduler.last_epoch = self.global_step
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _wrap(self) -> torch.nn.Module:
        if self.dist.distributed and self.device.startswith("cuda"):
            self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        return wrap_ddp(self.net, self.dist, self.device)

    def save_last(self, epoch: int, step_in_epoch: int, sums: list[float]) -> None:
        every_sums = all_gather_objects(list(sums))  # per rank: the partial epoch's loss/accuracy sums
        if self.dist.is_main:
            plan = self.plan
            save_checkpoint(self.last, {
                "kind": "finetune", "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": capture_rng(),
                "best": self.selector.best, "history": self.history, "protocol": plan.proto.to_dict(),
                "num_train": len(plan.train_entries), "steps_per_epoch": plan.spe,
                "world_size": self.dist.world_size, "epoch_sums": every_sums,
                "model_config": dataclasses.asdict(self.model_cfg)})
        barrier()

    def train(self, stop: GracefulStop | None, stop_after_steps: int | None) -> None:
        stop_ctx = GracefulStop() if stop is None else contextlib.nullcontext(stop)
        with stop_ctx as stopper, self.metrics, _stop_workers_after(self.loader):
            for epoch in range(self.start_epoch, self.plan.proto.epochs):
                t0 = time.perf_counter()
                sums = self.train_epoch(epoch, stopper, stop_after_steps)
                self.end_epoch(epoch, sums, t0, stopper)

    def train_epoch(self, epoch: int, stopper: GracefulStop, stop_after_steps: int | None) -> list[float]:
        """This rank's steps of ``epoch`` from its resume point; (loss·n, correct, n) summed over them."""
        plan, dist = self.plan, self.dist
        plan.dataset.set_epoch(epoch)
        batches = epoch_batches(len(plan.train_entries), plan.proto.batch_size, epoch, self.cfg.seed, dist,
                                plan.drop_last)[:plan.spe]
        first = self.start_step if epoch == self.start_epoch else 0
        self.epoch_sampler.set(epoch, batches[first:])
        self.ddp.train()
        # loss·n, correct, n of this rank's steps so far in the epoch (carried over a mid-epoch resume)
        sums = self.resume_sums if first else [0.0, 0.0, 0.0]
        on_device = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss·n, correct: no per-step sync
        with Progress(len(batches), f"finetune epoch {epoch + 1}/{plan.proto.epochs}", "step",
                      enabled=dist.is_main) as bar:
            bar.n = first
            for step, (x, y) in enumerate(self.loader, start=first):
                loss = self.train_step(x, y, on_device)
                sums[2] += len(y)
                bar.update(1)
                if (step + 1) % self.cfg.log_interval == 0:
                    loss_v = float(loss.detach())  # the only host sync of a step, every log_interval
                    bar.postfix = f"loss {loss_v:.3f} lr {self.lr_used:.2e}"
                    self.metrics.write(kind="step", epoch=epoch + 1, step=step + 1, global_step=self.global_step,
                                       loss=loss_v, lr=self.lr_used)
                if stop_after_steps is not None and self.steps_this_call >= stop_after_steps:
                    stopper.request("stop_after_steps")
                if stopper.agreed(self.stop_group) and step + 1 < len(batches):
                    self.save_last(epoch, step + 1, _add_device_sums(sums, on_device))
                    raise TrainingInterrupted(stopper.signal_name, self.last, epoch + 1, step + 1)
        return _add_device_sums(sums, on_device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, on_device: torch.Tensor) -> torch.Tensor:
        """One optimizer step; adds loss·n and the correct count to ``on_device``; returns the loss."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            logits = self.ddp(x)
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_used = current_lr(self.optimizer)
        self.scheduler.step()
        self.global_step += 1
        self.steps_this_call += 1
        on_device[0] += loss.detach().double() * len(y)
        on_device[1] += (logits.detach().argmax(1) == y).sum()
        return loss

    def end_epoch(self, epoch: int, sums: list[float], t0: float, stopper: GracefulStop) -> None:
        """Rank totals, epoch selection, the metrics record, last.pt; stops here when a stop is agreed."""
        plan = self.plan
        loss_sum, correct, count = all_reduce_sum(sums, self.device)
        if not math.isfinite(loss_sum):  # all-reduced, so every rank stops here together
            raise non_finite_loss("finetune", epoch, self.global_step, self.last)
        record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "global_step": self.global_step,
                                  "train_loss": loss_sum / max(count, 1),
                                  "train_top1": correct / max(count, 1), "lr": self.lr_used,
                                  "epoch_s": time.perf_counter() - t0}
        pending_delete = self.selector.select(self.net, epoch, record) if self.selector.active else None
        self.history.append({k: v for k, v in record.items() if k != "kind"})
        self.metrics.write(**record)
        selected = record.get(f"{plan.select_on}_top1")
        log.info("finetune epoch %d/%d: loss %.4f, train top-1 %.4f%s", epoch + 1, plan.proto.epochs,
                 record["train_loss"], record["train_top1"],
                 f", {plan.select_on} top-1 {selected:.4f}" if selected is not None else "")
        self.save_last(epoch + 1, 0, [0.0, 0.0, 0.0])
        self.selector.delete_best(pending_delete)
        if stopper.agreed(self.stop_group) and epoch + 1 < plan.proto.epochs:
            raise TrainingInterrupted(stopper.signal_name, self.last, epoch + 2, 0)

    def finish(self) -> dict[str, Any]:
        """Write classifier.pt (the selected epoch's weights; rank 0) and return the stage summary."""
        plan, dist = self.plan, self.dist
        state_dict, sel_epoch, sel_acc = self.selector.chosen(self.net)
        summary = self._summary(sel_epoch, sel_acc)
        if dist.is_main:
            save_checkpoint(self.out_dir / "classifier.pt", classifier_record(
                self.model_cfg, plan.manifest, state_dict, selected_epoch=sel_epoch, selected_on=plan.select_on,
                selected_acc=sel_acc, select_note=plan.select_note, clip_len=plan.clip_len,
                input_size=self.model_cfg.input_size, protocol=plan.proto.to_dict(), from_scratch=plan.from_scratch))
        barrier()
        return summary

    def _summary(self, sel_epoch: int, sel_acc: float | None) -> dict[str, Any]:
        plan, proto = self.plan, self.plan.proto
        return {
            "epochs": proto.epochs, "steps_per_epoch": plan.spe, "global_steps": self.global_step,
            **self.selector.summary(sel_epoch, sel_acc), "num_train": len(plan.train_entries),
            "num_classes": len(plan.manifest.classes), "protocol": proto.to_dict(),
            "from_scratch": plan.from_scratch, "clip_len": plan.clip_len, "clip_len_from": plan.clip_len_from,
            "input_size": self.model_cfg.input_size, "world_size": self.dist.world_size,
            "final_train_loss": self.history[-1]["train_loss"] if self.history else None,
            "resumed_from": self.resumed_from,
        }
