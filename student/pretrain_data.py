"""Pretraining samples (RSPNet pairs + KD target), an offset-capable distributed sampler, the loader.

One item is one video: an anchor A (the query clip is centred on it, because its teacher map is
cached), a key window at a random start W (keys need no teacher map, so they are drawn as RSPNet
draws them), a speed s for the query and positive key and another speed s' for the negative key:
``query = centred(A, s)``, ``key_pos = window(W, s)``, ``key_neg = window(W, s')``. The three
clips' frames are decoded with ONE ``read_frames`` call. The sampler assigns the query speed so
that every batch holds exactly as many queries at each speed as the batch size allows (half and
half for two speeds), as RSPNet's batches do. Query and key get independent
augmentations (with ``shared_colour``: independent geometry, one colour draw); key_pos and
key_neg share the key's (same window, same crop/flip/colour), so they differ only in playback
speed. With ``shared_colour`` and ``avid_own_colour``, the item also carries the A-VID key: key_pos's
window and crop with the key's own colour draw (the one ``shared_colour`` replaced), so that
appearance discrimination cannot match colours while RSP keeps the shared draw. The teacher map of
anchor A is cut with the query's crop box and flip, at the decoder's resolution.

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

from data_manifests.clip_plan import Clip, clip_indices, window_indices
from data_manifests.manifest import Manifest
from data_manifests.video import read_frames
from pipeline.core.config import ClipsConfig, ModelConfig
from pipeline.core.errors import TeacherCacheError, TrainingError
from pipeline.core.lifetime import die_with_parent
from student.transforms import ClipAugment, colour_vector, with_colour_of

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
    key_start: int
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
                 reader: FrameReader = read_frames, augment: ClipAugment | None = None,
                 augment_device: str = "cpu", shared_colour: bool = False, avid_own_colour: bool = False) -> None:
        speeds = sorted(set(int(s) for s in clips_cfg.speeds))
        if len(speeds) < 2:
            raise TrainingError(f"pretraining needs at least two distinct clips.speeds for the relative-speed "
                                f"task, got {list(clips_cfg.speeds)}")
        if model_cfg.kd and cache is None:
            raise TrainingError("model.kd is on but no teacher cache was given (build the teacher-cache stage, "
                                "or set model.kd = false)")
        self.manifest = manifest
        self.videos = group_plan(plan)
        if not self.videos:
            raise TrainingError(f"the clip plan of dataset {manifest.dataset!r} is empty: no videos to pretrain on")
        self.cache = cache if model_cfg.kd else None
        self.clip_len = int(clips_cfg.clip_len)
        self.speeds = speeds
        self.parse_size = int(model_cfg.parse_size)
        self.augment = augment or ClipAugment(model_cfg.input_size, area=tuple(crop_area))
        if augment_device not in ("cpu", "gpu"):
            raise TrainingError(f"pretrain.augment_device: {augment_device!r} is not one of 'cpu', 'gpu'")
        self.augment_device = augment_device  # "gpu": uint8 clips + colour parameters (student/gpu_augment.py)
        self.shared_colour = bool(shared_colour)  # keys take the query's colour draw (pretrain.shared_colour)
        # the A-VID key keeps the key's own colour draw (pretrain.avid_own_colour; only differs with shared_colour)
        self.avid_key = bool(avid_own_colour) and self.shared_colour
        self.seed = int(seed)
        self.reader = reader
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (the sampler passes it explicitly instead)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def choose(self, index: int, rng: np.random.Generator, speed_slot: int | None = None) -> PairChoice:
        """The query's anchor, the key window's start (uniform over the starts whose window at the
        fastest speed fits in the video), the query speed (``speeds[speed_slot]`` when the sampler
        assigns it, else random) and another speed for the negative key."""
        anchors = self.videos[index].frames
        qa = int(rng.integers(len(anchors)))
        n = int(self.manifest.entries[self.videos[index].video_index].frames)
        key_start = int(rng.integers(max(n - self.clip_len * self.speeds[-1], 0) + 1))
        if speed_slot is None:
            speed_slot = int(rng.integers(len(self.speeds)))
        speed = self.speeds[speed_slot % len(self.speeds)]
        others = [s for s in self.speeds if s != speed]
        neg = others[int(rng.integers(len(others)))]
        return PairChoice(anchors[qa], key_start, int(speed), int(neg))

    def __getitem__(self, item: int | tuple[int, ...]) -> dict[str, Any]:
        """``(epoch, index)`` or ``(epoch, index, speed_slot)`` (from :class:`EpochSampler`), or a plain index."""
        if isinstance(item, (tuple, list)):
            epoch, index = int(item[0]), int(item[1])
            slot = int(item[2]) if len(item) > 2 else None
        else:
            epoch, index, slot = self.epoch, int(item), None
        video = self.videos[index]
        entry = self.manifest.entries[video.video_index]
        rng = item_rng(self.seed, epoch, index)
        choice = self.choose(index, rng, slot)
        n = int(entry.frames)
        idx_q = clip_indices(choice.query_anchor, n, self.clip_len, choice.speed)
        idx_p = window_indices(choice.key_start, n, self.clip_len, choice.speed)
        idx_n = window_indices(choice.key_start, n, self.clip_len, choice.neg_speed)
        wanted = sorted(set(idx_q) | set(idx_p) | set(idx_n))
        frames = self.reader(self.manifest.abspath(entry), wanted)
        if frames.shape[0] != len(wanted):
            raise RuntimeError(f"{self.manifest.abspath(entry)}: asked for {len(wanted)} frames, got {frames.shape[0]}")
        row = {f: i for i, f in enumerate(wanted)}

        def take(indices: Sequence[int]) -> np.ndarray:
            return frames[[row[f] for f in indices]]

        h, w = frames.shape[1:3]
        q_params = self.augment.sample(h, w, rng)
        key_params = self.augment.sample(h, w, rng)  # drawn either way: the item's random stream stays the same
        avid_params = key_params  # the key's own colour draw
        if self.shared_colour:
            key_params = with_colour_of(key_params, q_params)
        finish = self.augment.geometry if self.augment_device == "gpu" else self.augment.apply
        q = finish(take(idx_q), q_params)
        kn = finish(take(idx_n), key_params)
        avid_key: dict[str, Any] = {}
        if self.avid_key and self.augment_device == "cpu":  # one crop of the key window, two colour draws
            kp_crop = self.augment.geometry(take(idx_p), key_params)
            kp = self.augment.finish(kp_crop, key_params)
            avid_key = {"key_avid": self.augment.finish(kp_crop, avid_params).clip}
        else:
            kp = finish(take(idx_p), key_params)
            if self.avid_key:  # gpu: key_pos's uint8 crop is coloured again on the device with this draw
                avid_key = {"avid_colour": colour_vector(avid_params)}
        if self.cache is not None:
            clip_id = video.clip_ids[video.frames.index(choice.query_anchor)]
            target = self.cache.target(clip_id, q.box, q.flip, (self.parse_size, self.parse_size))
        else:
            target = torch.empty(0)
        return {
            "query": q.clip, "key_pos": kp.clip, "key_neg": kn.clip, "target": target,
            "speed": choice.speed, "neg_speed": choice.neg_speed, "video_index": video.video_index,
            "query_anchor": choice.query_anchor, "key_start": choice.key_start,
            "query_box": torch.tensor(q.box, dtype=torch.float64), "query_flip": q.flip,
            **({"query_colour": colour_vector(q_params), "key_colour": colour_vector(key_params)}
               if self.augment_device == "gpu" else {}),
            **avid_key,
        }


class EpochSampler(Sampler):
    """DistributedSampler semantics that yield ``(epoch, index)`` and can start mid-epoch.

    Each epoch: a permutation from ``torch.Generator().manual_seed(seed + epoch)`` (identical on
    every rank), padded by wrapping to a multiple of ``world_size``, then every
    ``world_size``-th index from ``rank``. ``set_epoch(epoch, start)`` skips the first ``start``
    of this rank's samples: a resumed run sees exactly the batches it had not trained on.

    With ``num_speeds`` and ``batch_size`` it yields ``(epoch, index, speed_slot)``: within each
    batch of this rank the slots are balanced (each speed ``batch_size / num_speeds`` times, when
    it divides) and randomly placed, from a generator of (seed, epoch, rank, batch).
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 batch_size: int = 0, num_speeds: int = 0) -> None:
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
        if num_speeds and batch_size < 1:
            raise ValueError("EpochSampler: speed slots need the batch size")
        self.batch_size = int(batch_size)
        self.num_speeds = int(num_speeds)

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

    def speed_slots(self, epoch: int) -> list[int]:
        """The query-speed slot of each of this rank's samples in ``epoch``, balanced within each batch."""
        slots: list[int] = []
        for b in range(math.ceil(self.num_samples / self.batch_size)):
            balanced = np.arange(self.batch_size) % self.num_speeds
            rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), self.rank, b, 0x5EED])
            slots += [int(v) for v in rng.permutation(balanced)]
        return slots[:self.num_samples]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        epoch = self.epoch
        indices = self.rank_indices(epoch)
        if not self.num_speeds:
            for i in indices[self.start:]:
                yield (epoch, i)
            return
        slots = self.speed_slots(epoch)
        for p in range(self.start, len(indices)):
            yield (epoch, indices[p], slots[p])

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
    die_with_parent()  # SIGKILL of the main process must not leave workers behind
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
                          world_size: int = 1, seed: int = 0,
                          pin_memory: bool = False) -> tuple[DataLoader, EpochSampler]:
    """The loader and its sampler; call ``sampler.set_epoch(epoch, start)`` before each ``iter(loader)``."""
    sampler = EpochSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, batch_size=batch_size,
                           num_speeds=len(dataset.speeds))
    if sampler.num_samples < batch_size:
        raise TrainingError(f"{len(dataset)} videos over {world_size} process(es) give {sampler.num_samples} "
                            f"per process, fewer than one batch of {batch_size}: lower pretrain.batch_size")
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


def clips_with_maps(plan: Sequence[Clip], cache: Any, max_missing: float) -> list[Clip]:
    """The clips of ``plan`` that have a teacher map; refuses when more than ``max_missing`` of them do not.

    A few clips without a map are frames that failed to decode (the cache's ``failed.jsonl``); many
    mean a shard is gone or belongs to another cache, and training on the rest would silently drop
    those videos, so the error names the first missing shard and the key that allows going on.
    """
    kept = [c for c in plan if cache.has(c.clip_id)]
    missing = len(plan) - len(kept)
    if missing and missing > max_missing * len(plan):
        first = next(i for i, c in enumerate(plan) if not cache.has(c.clip_id))
        raise TeacherCacheError(f"teacher cache {cache.cache_dir}: {missing} of {len(plan)} clips "
                                f"({100 * missing / len(plan):.1f}%, more than pretrain.max_missing_maps = "
                                f"{max_missing:g}) have no map; {_missing_shard(cache, first)}. Rebuild it with "
                                f"`pipeline teacher-cache` (or raise pretrain.max_missing_maps to train without them)")
    return kept


def _missing_shard(cache: Any, plan_index: int) -> str:
    """Where the first clip without a map should have been: a missing shard file, or a failed decode."""
    from teacher.cache_format import shard_name

    paths = list(getattr(cache, "paths", []))
    if not paths:
        return "the cache has no shard files"
    import h5py

    with h5py.File(paths[0], "r") as f:
        rows = max(1, len(f["clip_ids"]))
    want = cache.cache_dir / shard_name(plan_index // rows)
    if not want.exists():
        return f"shard {want.name} is missing (clip {plan_index} of the plan)"
    return f"e.g. clip {plan_index} of the plan, in {want.name}, failed to decode (see failed.jsonl)"
