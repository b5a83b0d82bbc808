"""Pretraining samples (RSPNet pairs + KD target), an offset-capable distributed sampler, the loader.

One item is one video: two different anchors A (query) and B (key), a random speed s for the
query and positive key and another speed s' for the negative key:
``query = window(A, s)``, ``key_pos = window(B, s)``, ``key_neg = window(B, s')``. The three
clips' frames are decoded with ONE ``read_frames`` call. Query and key get independent
augmentations; key_pos and key_neg share the key's (same window, same crop/flip/colour), so
they differ only in playback speed. The teacher map of anchor A is cut with the query's crop box
and flip, at the decoder's resolution.

Every random choice of an item comes from ``numpy.random.default_rng([seed, epoch, index])``:
an item is the same whatever the worker count, the rank layout or a resume. The sampler yields
``(epoch, index)`` pairs so that persistent workers (whose dataset copies never see
``set_epoch``) still know the epoch.
"""
from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_manifests.clip_plan import Clip, clip_indices
from data_manifests.manifest import Manifest
from data_manifests.video import read_frames
from pipeline.config import ClipsConfig, ModelConfig
from student.transforms import ClipAugment

FrameReader = Callable[..., np.ndarray]


@dataclass(frozen=True)
class VideoAnchors:
    """The anchors of one video in the clip plan, sorted, with their clip ids."""

    video_index: int
    frames: tuple[int, ...]
    clip_ids: tuple[str, ...]


@dataclass(frozen=True)
class PairChoice:
    """The random sampling decisions of one item (everything except augmentation)."""

    query_anchor: int
    key_anchor: int
    speed: int
    neg_speed: int


def group_plan(plan: Sequence[Clip]) -> list[VideoAnchors]:
    """Clips grouped by video, in first-appearance order (the plan is in manifest order)."""
    order: list[int] = []
    by_video: dict[int, dict[int, str]] = {}
    for clip in plan:
        if clip.video_index not in by_video:
            by_video[clip.video_index] = {}
            order.append(clip.video_index)
        by_video[clip.video_index][clip.frame] = clip.clip_id
    out = []
    for vi in order:
        frames = tuple(sorted(by_video[vi]))
        out.append(VideoAnchors(vi, frames, tuple(by_video[vi][f] for f in frames)))
    return out


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class PretrainClipDataset(Dataset):
    """Indexable by video; ``ds[(epoch, i)]`` (or ``ds[i]`` at ``set_epoch``'s epoch) is one RSPNet sample.

    ``cache`` is a :class:`teacher.cache_reader.TeacherCache` (or anything with
    ``.target(clip_id, box, flip, size)``), required when ``model_cfg.kd``; ``None`` otherwise.
    ``reader`` and ``augment`` default to the real decoder and the RSPNet augmentation; tests
    pass fakes / geometry-only augmentation.
    """

    def __init__(self, manifest: Manifest, plan: Sequence[Clip], cache: Any | None, model_cfg: ModelConfig,
                 clips_cfg: ClipsConfig, crop_area: Sequence[float] = (0.4, 1.0), seed: int = 0, *,
                 reader: FrameReader = read_frames, augment: ClipAugment | None = None) -> None:
        speeds = sorted(set(int(s) for s in clips_cfg.speeds))
        if len(speeds) < 2:
            raise ValueError(f"pretraining needs at least two distinct clips.speeds for the relative-speed task, "
                             f"got {list(clips_cfg.speeds)}")
        if model_cfg.kd and cache is None:
            raise ValueError("model.kd is on but no teacher cache was given (build the teacher-cache stage, "
                             "or set model.kd = false)")
        self.manifest = manifest
        self.videos = group_plan(plan)
        if not self.videos:
            raise ValueError(f"the clip plan of dataset {manifest.dataset!r} is empty: no videos to pretrain on")
        self.cache = cache if model_cfg.kd else None
        self.clip_len = int(clips_cfg.clip_len)
        self.speeds = speeds
        self.parse_size = int(model_cfg.parse_size)
        self.augment = augment or ClipAugment(model_cfg.input_size, area=tuple(crop_area))
        self.seed = int(seed)
        self.reader = reader
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (the sampler passes it explicitly instead)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def choose(self, index: int, rng: np.random.Generator) -> PairChoice:
        """Two different anchors (the same one only for a single-anchor video) and the two speeds."""
        anchors = self.videos[index].frames
        if len(anchors) > 1:
            qa, ka = rng.choice(len(anchors), size=2, replace=False)
        else:
            qa = ka = 0
        speed = self.speeds[int(rng.integers(len(self.speeds)))]
        others = [s for s in self.speeds if s != speed]
        neg = others[int(rng.integers(len(others)))]
        return PairChoice(anchors[int(qa)], anchors[int(ka)], int(speed), int(neg))

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (self.epoch, int(item))
        video = self.videos[index]
        entry = self.manifest.entries[video.video_index]
        rng = item_rng(self.seed, epoch, index)
        choice = self.choose(index, rng)
        n = int(entry.frames)
        idx_q = clip_indices(choice.query_anchor, n, self.clip_len, choice.speed)
        idx_p = clip_indices(choice.key_anchor, n, self.clip_len, choice.speed)
        idx_n = clip_indices(choice.key_anchor, n, self.clip_len, choice.neg_speed)
        wanted = sorted(set(idx_q) | set(idx_p) | set(idx_n))
        frames = self.reader(self.manifest.abspath(entry), wanted)
        if frames.shape[0] != len(wanted):
            raise RuntimeError(f"{self.manifest.abspath(entry)}: asked for {len(wanted)} frames, got {frames.shape[0]}")
        row = {f: i for i, f in enumerate(wanted)}

        def take(indices: Sequence[int]) -> np.ndarray:
            return frames[[row[f] for f in indices]]

        h, w = frames.shape[1:3]
        q = self.augment.apply(take(idx_q), self.augment.sample(h, w, rng))
        key_params = self.augment.sample(h, w, rng)
        kp = self.augment.apply(take(idx_p), key_params)
        kn = self.augment.apply(take(idx_n), key_params)
        if self.cache is not None:
            clip_id = video.clip_ids[video.frames.index(choice.query_anchor)]
            target = self.cache.target(clip_id, q.box, q.flip, (self.parse_size, self.parse_size))
        else:
            target = torch.empty(0)
        return {
            "query": q.clip, "key_pos": kp.clip, "key_neg": kn.clip, "target": target,
            "speed": choice.speed, "neg_speed": choice.neg_speed, "video_index": video.video_index,
            "anchors": torch.tensor([choice.query_anchor, choice.key_anchor]),
            "query_box": torch.tensor(q.box, dtype=torch.float64), "query_flip": q.flip,
        }


class EpochSampler(Sampler):
    """DistributedSampler semantics that yield ``(epoch, index)`` and can start mid-epoch.

    Each epoch: a permutation from ``torch.Generator().manual_seed(seed + epoch)`` (identical on
    every rank), padded by wrapping to a multiple of ``world_size``, then every
    ``world_size``-th index from ``rank``. ``set_epoch(epoch, start)`` skips the first ``start``
    of this rank's samples: a resumed run sees exactly the batches it had not trained on.
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("EpochSampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.num_samples = math.ceil(size / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside this rank's {self.num_samples} samples")
        self.epoch = int(epoch)
        self.start = int(start)

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch`` (before the start offset)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[:total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self.rank_indices(epoch)[self.start:]:
            yield (epoch, i)

    def __len__(self) -> int:
        return self.num_samples - self.start


def worker_init(worker_id: int) -> None:
    """One thread per worker (workers are the parallelism); SIGINT/SIGTERM left to the main process.

    Ctrl-C and cluster schedulers signal the whole process group; a worker that died of it would
    make the main process fail on its next batch instead of saving a checkpoint at the step
    boundary (``GracefulStop``). The main process shuts the workers down when it exits.
    OpenCV's thread count is left alone: ``cv2.setNumThreads`` in a forked worker can deadlock
    when the parent already started OpenCV's pool (see data_manifests/video.py).
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now, through the loader's own done-event protocol.

    Workers ignore SIGTERM (see :func:`worker_init`), so they must not be left for
    multiprocessing's exit handler, which stops children with SIGTERM and then waits for them:
    after an exception in the training loop that wait would never end.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def build_pretrain_loader(dataset: PretrainClipDataset, batch_size: int, workers: int, *, rank: int = 0,
                          world_size: int = 1, seed: int = 0, pin_memory: bool = False) -> tuple[DataLoader, EpochSampler]:
    """The loader and its sampler; call ``sampler.set_epoch(epoch, start)`` before each ``iter(loader)``."""
    sampler = EpochSampler(len(dataset), rank=rank, world_size=world_size, seed=seed)
    if sampler.num_samples < batch_size:
        raise ValueError(f"{len(dataset)} videos over {world_size} process(es) give {sampler.num_samples} per "
                         f"process, fewer than one batch of {batch_size}: lower pretrain.batch_size")
    # A private generator: creating an iterator must not consume the global torch RNG (exact resume).
    generator = torch.Generator().manual_seed(int(seed) * 1009 + rank)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0,
                        worker_init_fn=worker_init if workers > 0 else None, generator=generator,
                        prefetch_factor=2 if workers > 0 else None)
    return loader, sampler


def steps_per_epoch(sampler: EpochSampler, batch_size: int) -> int:
    """Full batches in one epoch on this rank (drop_last)."""
    return sampler.num_samples // batch_size
