"""Pretraining augmentation and samples: crop boxes mark the right pixels, exact frame indices,
KD targets aligned with the query's pixels, determinism across worker counts, the sampler."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, default_collate

from data_manifests.clip_plan import Clip, anchor_frames, clip_indices
from data_manifests.manifest import Manifest, VideoEntry
from pipeline.core.config import ClipsConfig, ModelConfig
from pipeline.core.errors import TrainingError
from student.pretrain_data import EpochSampler, PretrainClipDataset, build_pretrain_loader, item_rng
from student.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipAugment, ClipAugParams, CropBox, sample_crop

H, W = 48, 64  # frame size of the synthetic "videos"
X_STEP, Y_STEP = 4, 5  # R = 4·x, G = 5·y: pixel values encode their own coordinates


def coord_frames(frame_ids: list[int]) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3): R = 4x, G = 5y, B = the frame index."""
    ys, xs = np.mgrid[0:H, 0:W]
    out = np.empty((len(frame_ids), H, W, 3), np.uint8)
    for i, f in enumerate(frame_ids):
        out[i, ..., 0] = xs * X_STEP
        out[i, ..., 1] = ys * Y_STEP
        out[i, ..., 2] = f
    return out


def denorm(clip: torch.Tensor) -> torch.Tensor:
    """(3, T, h, w) normalised → 0..255 float."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (clip * std + mean) * 255.0


def geometry_only(size: int) -> ClipAugment:
    return ClipAugment(size, jitter_p=0.0, grayscale_p=0.0)


def params(crop: CropBox, flip: bool) -> ClipAugParams:
    return ClipAugParams(crop=crop, flip=flip, jitter_order=(), brightness=1, contrast=1, saturation=1, hue=0,
                         grayscale=False)


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop,size", [(CropBox(5, 7, 30, 40), 32), (CropBox(0, 20, 24, 18), 32),
                                       (CropBox(10, 0, 38, 64), 16)])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_box_marks_the_cropped_pixels(crop: CropBox, size: int, flip: bool) -> None:
    aug = geometry_only(size)
    out = aug.apply(coord_frames([3, 9]), params(crop, flip))
    assert out.clip.shape == (3, 2, size, size)
    assert out.flip is flip
    assert out.box == (crop.left / W, crop.top / H, (crop.left + crop.width) / W, (crop.top + crop.height) / H)
    px = denorm(out.clip)
    x = px[0] / X_STEP  # decoded frame column (pixel-centre coordinate) of every output pixel
    y = px[1] / Y_STEP
    # Output pixel j's centre sits at normalised x0 + (j + 0.5)/size · (x1 - x0) (half-pixel centres).
    j = torch.arange(size, dtype=torch.float32)
    exp_x = (out.box[0] + (j + 0.5) / size * (out.box[2] - out.box[0])) * W - 0.5
    exp_y = (out.box[1] + (j + 0.5) / size * (out.box[3] - out.box[1])) * H - 0.5
    exp_x = exp_x.clamp(0, W - 1)
    exp_y = exp_y.clamp(0, H - 1)
    if flip:
        exp_x = exp_x.flip(0)
    tol = 0.5 + 0.5 * max(crop.width, crop.height) / size  # interpolation + area averaging + uint8 rounding
    assert torch.allclose(x.mean(dim=(0, 1)), exp_x, atol=tol)
    assert torch.allclose(y.mean(dim=(0, 2)), exp_y, atol=tol)
    # Every pixel lies inside the box (pixel centres of the crop's columns/rows).
    assert x.min() >= crop.left - 0.5 and x.max() <= crop.left + crop.width - 0.5
    assert y.min() >= crop.top - 0.5 and y.max() <= crop.top + crop.height - 0.5
    # The same geometry on every frame; the frame channel keeps each frame's own index.
    assert torch.allclose(px[:2, 0], px[:2, 1], atol=1e-3)
    assert torch.round(px[2, 0]).unique().tolist() == [3] and torch.round(px[2, 1]).unique().tolist() == [9]


def test_colour_and_grayscale_are_identical_over_frames() -> None:
    aug = ClipAugment(24, jitter_p=1.0, grayscale_p=0.5)
    rng = np.random.default_rng(7)
    frame = np.random.default_rng(0).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    frames = np.repeat(frame, 5, axis=0)
    seen_gray = False
    for _ in range(8):
        p = aug.sample(H, W, rng)
        out = aug.apply(frames, p).clip
        for t in range(1, 5):
            assert torch.equal(out[:, 0], out[:, t])
        seen_gray |= p.grayscale
        if p.grayscale:
            px = denorm(out)
            assert torch.allclose(px[0], px[1], atol=1e-3) and torch.allclose(px[1], px[2], atol=1e-3)
    assert seen_gray


def test_colour_ops_match_torchvision() -> None:
    TF = pytest.importorskip("torchvision.transforms.v2.functional")
    from student import transforms as T

    x = torch.rand(4, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    x[0, :, :3] = x[0, :1, :3]  # some gray pixels (zero saturation: hue undefined)
    x[1, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    for f in (0.6, 1.0, 1.4):
        assert torch.allclose(T.adjust_brightness(x, f), TF.adjust_brightness(x, f), atol=1e-6)
        assert torch.allclose(T.adjust_contrast(x, f), TF.adjust_contrast(x, f), atol=1e-6)
        assert torch.allclose(T.adjust_saturation(x, f), TF.adjust_saturation(x, f), atol=1e-6)
    for h in (-0.4, -0.1, 0.25, 0.4):
        assert torch.allclose(T.adjust_hue(x, h), TF.adjust_hue(x, h), atol=1e-5)
    assert torch.allclose(T.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_sample_crop_follows_area_and_aspect_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        c = sample_crop(H, W, (0.4, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= c.top and c.top + c.height <= H and 0 <= c.left and c.left + c.width <= W
        area = c.height * c.width / (H * W)
        assert 0.4 - 0.05 <= area <= 1.0
        assert 3 / 4 - 0.06 <= c.width / c.height <= 4 / 3 + 0.06


def test_augmentation_is_a_function_of_the_generator() -> None:
    aug = ClipAugment(16)
    frames = np.random.default_rng(1).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    a = aug(frames, np.random.default_rng(5))
    b = aug(frames, np.random.default_rng(5))
    assert torch.equal(a.clip, b.clip) and a.box == b.box and a.flip == b.flip


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------

class FakeReader:
    """Stands in for read_frames: coordinate-encoded frames; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, path: Path, indices: list[int], *, bgr: bool = False) -> np.ndarray:
        self.calls.append((Path(path).name, list(indices)))
        return coord_frames(list(indices))


class XCache:
    """A teacher cache whose class-0 probability is the normalised x of the frame (uses the real resampler)."""

    num_classes = 2
    labels = ["x", "1-x"]

    def __init__(self, map_size: int = 32) -> None:
        xs = (torch.arange(map_size, dtype=torch.float32) + 0.5) / map_size
        p0 = xs.view(1, map_size).expand(map_size, map_size)
        self.map = torch.stack([p0, 1 - p0])[None]
        self.calls: list[tuple] = []

    def target(self, clip_id: str, box, flip: bool, size) -> torch.Tensor:
        from teacher.cache_reader import resample_boxes

        self.calls.append((clip_id, tuple(box), bool(flip), tuple(size)))
        return resample_boxes(self.map, [box], size, [flip])[0]


def make_manifest(frames_per_video: list[int], root: Path = Path("/nonexistent")) -> Manifest:
    entries = [VideoEntry(id=f"v{i}", path=f"v{i}.avi", label=0, split="train", frames=n, fps=25.0,
                          width=W, height=H) for i, n in enumerate(frames_per_video)]
    return Manifest(dataset="toy", root=root, classes=["a"], entries=entries)


def make_plan(manifest: Manifest, anchors: int, span: int) -> list[Clip]:
    return [Clip(f"{e.id}@{f}", i, f) for i, e in enumerate(manifest.entries)
            for f in anchor_frames(e.frames, anchors, span)]


MODEL = ModelConfig(backbone="c3d", width=0.125, input_size=32, parse_size=8, kd=True)
CLIPS = ClipsConfig(anchors_per_video=4, clip_len=4, speeds=[1, 2])


def toy_dataset(kd: bool = True, frames=(40, 60, 6, 33, 50, 45), seed: int = 3):
    manifest = make_manifest(list(frames))
    plan = make_plan(manifest, CLIPS.anchors_per_video, CLIPS.span)
    reader = FakeReader()
    cache = XCache() if kd else None
    model = dataclasses.replace(MODEL, kd=kd)
    ds = PretrainClipDataset(manifest, plan, cache, model, CLIPS, crop_area=(0.4, 1.0), seed=seed,
                             reader=reader, augment=geometry_only(MODEL.input_size))
    return ds, manifest, plan, reader, cache


def frame_ids(clip: torch.Tensor) -> list[int]:
    """Decode the frame index of every frame of a clip (B channel, geometry-only augmentation)."""
    b = denorm(clip)[2]
    ids = torch.round(b.mean(dim=(1, 2)))
    assert torch.allclose(b, ids.view(-1, 1, 1), atol=1e-2)
    return [int(i) for i in ids]


def test_items_use_exact_clip_indices_and_one_decode_per_video() -> None:
    ds, manifest, plan, reader, _ = toy_dataset()
    assert len(ds) == len(manifest.entries)
    speeds_seen = set()
    for epoch in (0, 1):
        for i in range(len(ds)):
            reader.calls.clear()
            item = ds[(epoch, i)]
            entry = manifest.entries[i]
            n = entry.frames
            qa, ks = item["query_anchor"], item["key_start"]
            s, s2 = item["speed"], item["neg_speed"]
            anchors = anchor_frames(n, CLIPS.anchors_per_video, CLIPS.span)
            assert qa in anchors  # the query is centred on an anchor (its teacher map is cached)
            # the key window starts anywhere its fastest-speed clip fits (RSPNet), not at an anchor
            assert 0 <= ks <= max(n - CLIPS.clip_len * max(CLIPS.speeds), 0)
            assert {s, s2} == {1, 2}
            speeds_seen.add(s)
            q = clip_indices(qa, n, CLIPS.clip_len, s)
            kp = [min(ks + s * i, n - 1) for i in range(CLIPS.clip_len)]
            kn = [min(ks + s2 * i, n - 1) for i in range(CLIPS.clip_len)]
            assert frame_ids(item["query"]) == q
            assert frame_ids(item["key_pos"]) == kp
            assert frame_ids(item["key_neg"]) == kn
            assert len(reader.calls) == 1
            assert reader.calls[0] == (entry.path, sorted(set(q) | set(kp) | set(kn)))
            assert item["video_index"] == i
    assert speeds_seen == {1, 2}


def test_key_pos_and_key_neg_share_the_key_augmentation() -> None:
    ds, *_ = toy_dataset()
    for i in range(len(ds)):
        item = ds[(0, i)]
        kp, kn = denorm(item["key_pos"]), denorm(item["key_neg"])
        # Same crop/flip: identical coordinate channels; only the frame channel differs.
        assert torch.allclose(kp[:2], kn[:2], atol=1e-3)


def test_target_is_cut_with_the_query_box_and_flip() -> None:
    ds, manifest, plan, _, cache = toy_dataset()
    p = MODEL.parse_size
    flips = set()
    for i in range(len(ds)):
        cache.calls.clear()
        item = ds[(2, i)]
        qa = int(item["query_anchor"])
        box = tuple(item["query_box"].tolist())
        flip = bool(item["query_flip"])
        flips.add(flip)
        assert cache.calls == [(f"{manifest.entries[i].id}@{qa}", box, flip, (p, p))]
        target = item["target"]
        assert target.shape == (2, p, p)
        # Alignment: the target's x (class-0 probability) matches the query's decoded pixel x,
        # averaged over the query pixels that fall into each target column.
        qx = (denorm(item["query"])[0] / X_STEP + 0.5) / W  # normalised x of each query pixel
        cols = qx.mean(dim=(0, 1)).view(p, -1).mean(dim=1)  # input_size → parse_size columns
        assert torch.allclose(target[0].mean(dim=0), cols, atol=1.0 / W + 1.0 / 32)
    assert flips == {False, True}


def test_kd_off_gives_empty_targets_and_needs_no_cache() -> None:
    ds, *_ = toy_dataset(kd=False)
    assert ds[(0, 0)]["target"].numel() == 0
    with pytest.raises(TrainingError, match="teacher cache"):
        PretrainClipDataset(make_manifest([40]), make_plan(make_manifest([40]), 4, 8), None, MODEL, CLIPS)


def test_single_speed_is_rejected() -> None:
    m = make_manifest([40])
    with pytest.raises(TrainingError, match="speeds"):
        PretrainClipDataset(m, make_plan(m, 4, 8), None, ModelConfig(kd=False), ClipsConfig(speeds=[2, 2]))


def batches(loader, sampler, epoch: int) -> list[dict]:
    sampler.set_epoch(epoch)
    return list(loader)


def test_items_are_identical_with_0_and_2_workers() -> None:
    ds, *_ = toy_dataset(seed=11)
    l0, s0 = build_pretrain_loader(ds, batch_size=2, workers=0, seed=11)
    l2, s2 = build_pretrain_loader(ds, batch_size=2, workers=2, seed=11)
    for epoch in (0, 1):
        a, b = batches(l0, s0, epoch), batches(l2, s2, epoch)
        assert len(a) == len(b) == len(ds) // 2
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k
    # A different epoch draws different samples (same videos, new anchors / crops).
    e0, e1 = batches(l0, s0, 0), batches(l0, s0, 1)
    assert not all(torch.equal(x["query"], y["query"]) for x, y in zip(e0, e1))


def test_item_rng_depends_on_seed_epoch_index() -> None:
    draw = lambda *a: item_rng(*a).integers(1 << 30, size=4).tolist()  # noqa: E731
    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert len({tuple(draw(*k)) for k in [(0, 1, 2), (0, 2, 1), (1, 1, 2), (0, 1, 3)]}) == 4


# ---------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,world", [(10, 1), (10, 3), (7, 2)])
def test_epoch_sampler_matches_distributed_sampler_and_resumes_at_an_offset(size: int, world: int) -> None:
    data = list(range(size))
    for rank in range(world):
        ours = EpochSampler(size, rank=rank, world_size=world, seed=5)
        ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            full = list(ours)
            assert [i for _, i in full] == list(ref) and all(e == epoch for e, _ in full)
            assert len(ours) == len(ref) == math.ceil(size / world)
            ours.set_epoch(epoch, start=2)
            assert list(ours) == full[2:] and len(ours) == len(full) - 2
    # Every video is seen once per epoch over all ranks (plus wrap-around padding).
    seen = [i for r in range(world) for _, i in EpochSampler(size, rank=r, world_size=world, seed=5)]
    assert set(seen) == set(range(size)) and len(seen) == math.ceil(size / world) * world


def test_loader_rejects_a_dataset_smaller_than_a_batch() -> None:
    ds, *_ = toy_dataset()
    with pytest.raises(TrainingError, match="batch"):
        build_pretrain_loader(ds, batch_size=8, workers=0)


def test_key_windows_cover_random_starts_not_only_anchors() -> None:
    ds, manifest, *_ = toy_dataset(frames=(60,))
    starts = {ds[(e, 0)]["key_start"] for e in range(60)}
    anchors = set(anchor_frames(60, CLIPS.anchors_per_video, CLIPS.span))
    assert len(starts) > 2 * len(anchors)  # 53 possible starts; an anchor-only draw would give at most 4
    assert min(starts) == 0 or min(starts) < 5 and max(starts) > 45


def test_sampler_balances_query_speeds_in_every_batch_and_resumes_exactly() -> None:
    from student.pretrain_data import EpochSampler

    for world in (1, 2):
        for rank in range(world):
            sampler = EpochSampler(37, rank=rank, world_size=world, seed=5, batch_size=6, num_speeds=2)
            for epoch in (0, 3):
                sampler.set_epoch(epoch)
                items = list(sampler)
                full_batches = len(items) // 6
                for b in range(full_batches):
                    slots = [it[2] for it in items[b * 6:(b + 1) * 6]]
                    assert sorted(slots) == [0, 0, 0, 1, 1, 1], slots
                # placement is random: not the same pattern in every batch
                patterns = {tuple(it[2] for it in items[b * 6:(b + 1) * 6]) for b in range(full_batches)}
                assert len(patterns) > 1
                sampler.set_epoch(epoch, start=12)
                assert list(sampler) == items[12:]  # a resume sees the same indices and speeds


def test_sampler_speed_slot_sets_the_query_speed() -> None:
    ds, *_ = toy_dataset()
    for slot, speed in ((0, 1), (1, 2)):
        for i in range(len(ds)):
            item = ds[(0, i, slot)]
            assert item["speed"] == speed and item["neg_speed"] != speed


@pytest.mark.parametrize("shared", [False, True])
def test_shared_colour_gives_the_keys_the_querys_colour_draw_and_keeps_the_geometry(shared: bool) -> None:
    """pretrain.shared_colour: one colour draw for query and keys; crops and the item's other draws unchanged."""
    manifest = make_manifest([40, 60, 33])
    plan = make_plan(manifest, CLIPS.anchors_per_video, CLIPS.span)
    aug = ClipAugment(MODEL.input_size, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.5, grayscale_p=0.5)
    make = lambda s: PretrainClipDataset(manifest, plan, XCache(), MODEL, CLIPS, seed=5, reader=FakeReader(),  # noqa: E731
                                          augment=aug, augment_device="gpu", shared_colour=s)
    ds, ref = make(shared), make(False)
    same = []
    for i in range(3):
        for epoch in range(4):
            item, base = ds[(epoch, i)], ref[(epoch, i)]
            same.append(torch.equal(item["query_colour"], item["key_colour"]))
            assert torch.equal(item["query_colour"], base["query_colour"])
            assert torch.equal(item["key_pos"], base["key_pos"]) and torch.equal(item["query_box"], base["query_box"])
    assert all(same) if shared else not any(same)


def test_colour_keys_reach_the_augmentation_and_are_checked() -> None:
    from pipeline.core.config import ConfigError, load_config

    cfg = load_config(overrides=["pretrain.jitter=[0.1, 0.2, 0.3, 0.05]", "pretrain.jitter_p=0.0",
                                 "pretrain.grayscale_p=0.0", "pretrain.shared_colour=true"])
    assert cfg.pretrain.jitter == [0.1, 0.2, 0.3, 0.05] and cfg.pretrain.shared_colour
    with pytest.raises(ConfigError, match="pretrain.jitter"):
        load_config(overrides=["pretrain.jitter=[0.4, 0.4, 0.4, 0.6]"])
    with pytest.raises(ConfigError, match="jitter_p"):
        load_config(overrides=["pretrain.jitter_p=1.5"])


@pytest.mark.parametrize("shared", [False, True])
def test_avid_key_is_key_pos_with_the_keys_own_colour_draw(shared: bool) -> None:
    """pretrain.avid_own_colour: with shared_colour the item carries the A-VID key, exactly key_pos as an item
    without shared_colour draws it (same window, crop and flip, the key's own colour); the CPU and GPU paths agree.
    Without shared_colour the keys already have their own draw and there is no extra clip."""
    from student.gpu_augment import avid_key_clip

    manifest = make_manifest([40, 60, 33])
    plan = make_plan(manifest, CLIPS.anchors_per_video, CLIPS.span)
    aug = ClipAugment(MODEL.input_size, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.3)
    make = lambda dev, s, own: PretrainClipDataset(manifest, plan, XCache(), MODEL, CLIPS, seed=5,  # noqa: E731
                                                    reader=FakeReader(), augment=aug, augment_device=dev,
                                                    shared_colour=s, avid_own_colour=own)
    cpu, gpu, ref = make("cpu", shared, True), make("gpu", shared, True), make("cpu", False, False)
    plain = make("cpu", shared, False)  # the same items without the A-VID key: key_pos must not change
    for i in range(3):
        for epoch in range(3):
            item, gitem, base = cpu[(epoch, i)], gpu[(epoch, i)], ref[(epoch, i)]
            assert torch.equal(item["key_pos"], plain[(epoch, i)]["key_pos"])
            if not shared:
                assert "key_avid" not in item and "avid_colour" not in gitem
                assert avid_key_clip(default_collate([gitem]), torch.device("cpu"), "gpu") is None
                continue
            assert torch.equal(item["key_avid"], base["key_pos"])
            assert torch.equal(item["query"], base["query"])  # the item's other draws are unchanged
            from_gpu = avid_key_clip(default_collate([gitem]), torch.device("cpu"), "gpu")
            from_cpu = avid_key_clip(default_collate([item]), torch.device("cpu"), "cpu")
            torch.testing.assert_close(from_gpu, from_cpu, atol=2e-5, rtol=0)
